"""tunnel-controller: one ip6tnl tunnel and back-route per kube-apiserver that
announces itself over the bond (runs in every vpn-shoot pod)."""
