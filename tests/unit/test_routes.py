"""Desired routes, NAT mapping as vpn2, and the add-before-delete diff."""

from ipaddress import ip_address, ip_network

from path_controller.routes import Route, map_into, overlaps, plan_routes, route_changes

net = ip_network


def test_no_overlap_routes_networks_as_they_are():
    plan = plan_routes(
        [net("100.64.0.0/13"), net("fd00:64::/108")], [net("100.96.0.0/11")], [net("10.250.0.0/16")],
        net("10.1.0.0/16"), [ip_address("10.1.2.3")],
    )
    assert plan.networks == (net("100.64.0.0/13"), net("fd00:64::/108"), net("100.96.0.0/11"), net("10.250.0.0/16"))
    assert plan.announced_ips == (ip_address("10.1.2.3"),)
    assert not plan.mapped


def test_overlap_maps_ipv4_networks_and_pod_ip_like_vpn2():
    plan = plan_routes(
        [net("10.0.0.0/16"), net("fd00:64::/108")], [net("10.1.0.0/16"), net("10.2.0.0/16")], [net("10.250.0.0/16")],
        net("10.1.0.0/16"), [ip_address("10.1.2.3"), ip_address("fd00:1::5")],
    )
    assert plan.mapped
    # services 243/8, pods 244/8 (once), nodes 242/8; IPv6 untouched
    assert plan.networks == (net("243.0.0.0/8"), net("fd00:64::/108"), net("244.0.0.0/8"), net("242.0.0.0/8"))
    assert plan.announced_ips == (ip_address("241.1.2.3"), ip_address("fd00:1::5"))


def test_overlap_rules():
    assert overlaps(net("10.0.0.0/8"), [net("10.96.0.0/11")])
    assert overlaps(net("10.96.1.0/24"), [net("10.96.0.0/11")])
    assert not overlaps(net("10.0.0.0/16"), [net("100.64.0.0/13")])
    assert not overlaps(None, [net("10.0.0.0/8")])
    assert not overlaps(net("fd00::/64"), [net("10.0.0.0/8")])


def test_map_into_keeps_host_bits():
    assert map_into(ip_address("10.96.3.17"), net("241.0.0.0/8")) == ip_address("241.96.3.17")


def test_changes_replace_what_differs_and_remove_stale_ours_last():
    desired = [net("100.64.0.0/13"), net("100.96.0.0/11"), net("fd00::/108")]
    present = {
        net("100.64.0.0/13"): Route(7, 118),  # already right
        net("100.96.0.0/11"): Route(8, 118),  # other tunnel
        net("10.99.0.0/16"): Route(7, 118),  # ours, no longer wanted
        # fd00::/108 missing
    }
    changes = route_changes(desired, 7, 118, present)
    assert changes.replace == (net("100.96.0.0/11"), net("fd00::/108"))
    assert changes.remove == (net("10.99.0.0/16"),)


def test_routes_of_others_are_re_marked_but_never_removed():
    desired = [net("100.64.0.0/13")]
    present = {net("100.64.0.0/13"): Route(7, 4), net("192.168.0.0/16"): Route(3, 4)}  # vpn2's "static"
    changes = route_changes(desired, 7, 118, present)
    assert changes.replace == (net("100.64.0.0/13"),)
    assert changes.remove == ()
