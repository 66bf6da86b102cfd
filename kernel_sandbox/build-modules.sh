#!/usr/bin/env bash
# Builds the netfilter modules the connection pinning needs for Debian's
# User-Mode Linux kernel and installs a private module tree (Debian's UML
# modules with these swapped in) in a cache outside the repository, which
# kernel_sandbox binds into the guest. Does nothing when that tree exists.
#
# Why: linux.uml is built without NF_TABLES_INET/IPV4/IPV6, so nf_tables.ko
# refuses inet, ip and ip6 tables (EOPNOTSUPP). Those options are compiled
# into nf_tables.ko (and, for nft NAT chains as iptables-nft makes them, into
# nf_nat.ko), so both are rebuilt from the exact source of linux.uml, with
# nft_reject_inet and nft_chain_nat, which the options make possible.
# INET_DIAG_DESTROY (SOCK_DESTROY) cannot be added here: tcp_diag is built
# into linux.uml (CONFIG_INET_DIAG=y).
#
# The tree's name carries the kernel release and a hash of this file, so a
# changed recipe builds a new tree; kernel_sandbox.modules computes the same
# name. Run as root (apt packages, /var/cache).
set -euo pipefail

me=$(readlink -f "$0")
cache_root=${HAVPN_CACHE_DIR:-/var/cache/ha-vpn-dataplane}
release=$(linux.uml --version)
recipe=$(sha256sum "$me" | cut -c1-12)
tree="$cache_root/uml-modules-$release-$recipe"
[ -e "$tree/.complete" ] && exit 0

# The modules that differ from Debian's once the options are on (all in net/netfilter).
rebuilt=(nf_tables nf_nat nft_reject_inet nft_chain_nat)

fail() {
    echo "build-modules: $*" >&2
    exit 1
}

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
[ -e "$tree/.complete" ] && exit 0  # built by a concurrent run
started=$(date +%s)

# The source of exactly this kernel: user-mode-linux names it in Built-Using.
source_version=$(dpkg-query -W -f='${Built-Using}' user-mode-linux | sed -n 's/.*linux (= \([^)]*\)).*/\1/p')
case "$source_version" in
    "$release"-*) ;;
    *) fail "linux.uml is $release but user-mode-linux was built from linux ${source_version:-(unknown)}: no matching source to build its modules" ;;
esac
installed() {  # package [exact version]
    local status
    status=$(dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null) || return 1
    [ "${status% *}" = "install ok installed" ] && { [ -z "${2:-}" ] || [ "${status##* }" = "$2" ]; }
}
missing=()
installed linux-source-6.1 "$source_version" || missing+=("linux-source-6.1=$source_version")
for pkg in gcc make bc flex bison libelf-dev xz-utils kmod; do
    installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]} (to build the UML netfilter modules)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        fail "cannot install ${missing[*]}: linux-source-6.1 $source_version (the source of linux.uml $release) must come from apt"
fi

echo "== building the UML netfilter modules (${rebuilt[*]}) for $release into $tree"
work=$(mktemp -d "$cache_root/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log="$work/build.log"
tar -xf /usr/src/linux-source-6.1.tar.xz -C "$work"
src="$work/linux-source-6.1"
version=$(make -s -C "$src" kernelversion)
[ "$version" = "$release" ] || fail "linux-source-6.1 $source_version unpacks as $version, not $release"

build() {
    (cd "$src" && "$@") >>"$log" 2>&1 || { tail -20 "$log" >&2; fail "'$*' failed (log above)"; }
}
linux.uml --showconfig >"$src/.config"
build scripts/config --enable NF_TABLES_INET --enable NF_TABLES_IPV4 --enable NF_TABLES_IPV6 \
    --module NFT_REJECT_INET --module NFT_NAT
build make ARCH=um olddefconfig
for option in NF_TABLES_INET=y NF_TABLES_IPV4=y NF_TABLES_IPV6=y NFT_REJECT_INET=m NFT_NAT=m; do
    grep -qx "CONFIG_$option" "$src/.config" || fail "the kernel configuration refused CONFIG_$option"
done
build make ARCH=um -j"$(nproc)" modules_prepare
# Only these modules: a Kbuild file takes precedence over the directory's Makefile.
cat >"$src/net/netfilter/Kbuild" <<EOF
include \$(srctree)/net/netfilter/Makefile
obj-m := \$(filter $(printf '%s.o ' "${rebuilt[@]}"),\$(obj-m))
obj-y :=
EOF
# No Module.symvers without building vmlinux: references into the kernel stay unresolved at
# build time (the kernel has no MODVERSIONS; they resolve by name when loaded).
build make ARCH=um -j"$(nproc)" KBUILD_MODPOST_WARN=1 M=net/netfilter modules

stock="/usr/lib/uml/modules/$release"
root="$work/root"
mkdir -p "$root/lib/modules"
cp -al "$stock" "$root/lib/modules/" 2>/dev/null || cp -a "$stock" "$root/lib/modules/"
for module in "${rebuilt[@]}"; do
    built="$src/net/netfilter/$module.ko"
    [ "$(modinfo -F vermagic "$built")" = "$(modinfo -F vermagic "$stock/kernel/net/netfilter/nf_tables.ko")" ] ||
        fail "$module.ko does not match linux.uml (vermagic $(modinfo -F vermagic "$built"))"
    rm -f "$root/lib/modules/$release/kernel/net/netfilter/$module.ko"  # a hard link to Debian's file
    install -m 0644 "$built" "$root/lib/modules/$release/kernel/net/netfilter/$module.ko"
done
depmod -b "$root" "$release"
touch "$root/lib/modules/.complete"
rm -rf "$tree"
mv "$root/lib/modules" "$tree"
rm -rf "$work"
trap - EXIT
echo "== built the UML netfilter modules in $(($(date +%s) - started)) s"
