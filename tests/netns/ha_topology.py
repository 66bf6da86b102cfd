"""The whole Gardener HA VPN in network namespaces, with real OpenVPN.

    underlay (bridge "ul")           shoot network (bridge "sn")
      |- vpn-seed-server-i: OpenVPN server, dev tap0, client-to-client
      |- kube-apiserver-k: tap0 → server 0, tap1 → server 1, bond0,
      |     bond0-ip6tnl<j>, path-controller; pod IPs on eth0
      |- vpn-shoot-j: tap0/tap1 clients, bond0, tunnel-controller,
                      eth1 ──────────────┘  forwarding + MASQUERADE
                                         shoot-net: node, pod and service
                                         addresses (IPv4 and IPv6)

Every process is a real one (``bonding setup``, OpenVPN, the daemons) started
in its namespace. Failures are injected on the underlay: a server's or a
vpn-shoot's link (``netem``: loss, black hole), or by killing processes.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address, ip_network
from pathlib import Path

from bonding.plan import AddressPlan, seed_client_index_for_pod
from netlink_adapter.ip6tnl import dump_ip6tnl
from netlink_adapter.links import link_by_index, link_by_name, link_facts
from tests.netns import nsutil
from tests.netns.faults import QdiscCounters, root_qdisc_counters
from tests.netns.openvpn import MANAGEMENT_PORT, Pki, client_config, make_pki, server_config, up_script

PLAN = AddressPlan.from_text()
SEED_POD_NETWORK = "10.96.0.0/16"
SHOOT_NETWORKS = {
    "SHOOT_SERVICE_NETWORKS": "100.64.0.0/13,fd00:64::/108",
    "SHOOT_POD_NETWORKS": "100.96.0.0/11,fd00:96::/56",
    "SHOOT_NODE_NETWORKS": "10.250.0.0/16,fd00:250::/64",
}
# Addresses inside the shoot network that apiservers talk to.
SHOOT_NODE = ip_address("10.250.0.1")
SHOOT_NODE6 = ip_address("fd00:250::1")
SHOOT_POD = ip_address("100.96.0.5")
SHOOT_POD6 = ip_address("fd00:96::5")
SHOOT_SERVICE = ip_address("100.64.0.10")
SHOOT_SERVICE6 = ip_address("fd00:64::10")
SHOOT_TARGETS = (SHOOT_NODE, SHOOT_NODE6, SHOOT_POD, SHOOT_POD6, SHOOT_SERVICE, SHOOT_SERVICE6)

# The opt-in bond monitor as scenario 3 and the benchmark run it: NS every 100 ms, down after 3 missed.
NS_MONITOR = {"BOND_MONITOR": "ns", "BOND_NS_INTERVAL_MS": "100", "BOND_NS_MISSED_MAX": "3"}

@dataclass
class Member:
    name: str
    ns: str
    underlay_ip: str
    processes: dict[str, nsutil.Process] = field(default_factory=dict)
    outer: str = ""  # the member's port on the underlay bridge

    def pid(self, role: str) -> int:
        return self.processes[role].popen.pid


@dataclass
class Server(Member):
    index: int = 0

    @property
    def shoot_facing_ip(self) -> str:
        return f"172.16.255.{self.index + 1}"


@dataclass
class ApiServer(Member):
    index: int = 0
    pod_name: str = ""
    pod_ip6: str = ""
    bond_address: IPv6Address | None = None


@dataclass
class Shoot(Member):
    index: int = 0
    bond_address: IPv6Address | None = None


class HaTopology:
    """Build with ``await HaTopology.build(...)``; everything dies with the fixtures."""

    def __init__(self, make_netns, ipr_factory, processes: nsutil.ProcessGroup, workdir: Path, **options):
        self.make_netns = make_netns
        self.ipr_factory = ipr_factory
        self.processes = processes
        self.workdir = workdir
        self.servers: list[Server] = []
        self.apiservers: list[ApiServer] = []
        self.shoots: list[Shoot] = []
        self.options = options
        self.pki: Pki | None = None
        self.underlay = ""
        self.shoot_net = ""
        self._ul_ports = 0
        self._iprs: dict = {}

    # --- construction -----------------------------------------------------

    @classmethod
    async def build(
        cls,
        make_netns,
        ipr_factory,
        processes,
        workdir: Path,
        *,
        apiservers: int = 3,
        shoots: int = 2,
        servers: int = 2,
        pc_env: dict | None = None,
        tc_env: dict | None = None,
        bond_env: dict | None = None,
        start_daemons: bool = True,
    ) -> HaTopology:
        topo = cls(
            make_netns, ipr_factory, processes, workdir,
            pc_env=pc_env or {}, tc_env=tc_env or {}, bond_env=bond_env or {},
            servers=servers, shoots=shoots,
        )
        topo.pki = await asyncio.to_thread(make_pki, workdir / "pki")
        topo.underlay = make_netns("ul")
        nsutil.run_in(topo.underlay, ["sh", "-c", "ip link add ul type bridge && ip link set ul up"])
        topo.shoot_net = make_netns("sn")
        topo._build_shoot_net()
        for i in range(servers):
            topo.servers.append(topo._add_server(i))
        for j in range(shoots):
            topo.shoots.append(await topo._add_shoot(j))
        for k in range(apiservers):
            topo.apiservers.append(await topo._add_apiserver(k))
        if start_daemons:
            for shoot in topo.shoots:
                topo.start_tunnel_controller(shoot)
            for api in topo.apiservers:
                topo.start_path_controller(api)
        return topo

    def _plug(self, ns: str, ip: str, dev: str = "eth0", bridge_ns: str | None = None, bridge: str = "ul") -> str:
        """A veth from ``ns`` (named ``dev``) to ``bridge`` in ``bridge_ns``."""
        bridge_ns = bridge_ns or self.underlay
        self._ul_ports += 1
        outer = f"p{self._ul_ports}"
        nsutil.run_in(
            bridge_ns,
            ["sh", "-c", f"ip link add {outer} type veth peer name {dev} netns {ns} && "
                         f"ip link set {outer} master {bridge} up"],
        )
        nsutil.run_in(ns, ["sh", "-c", f"ip link set {dev} up && ip addr add {ip} dev {dev}"])
        return outer

    def _build_shoot_net(self) -> None:
        ns = self.shoot_net
        commands = [
            "ip link add sn type bridge",
            "ip link set sn up",
            f"ip addr add {SHOOT_NODE}/16 dev sn",
            f"ip addr add {SHOOT_NODE6}/64 dev sn nodad",
            f"ip addr add {SHOOT_POD}/32 dev lo",
            f"ip addr add {SHOOT_POD6}/128 dev lo",
            f"ip addr add {SHOOT_SERVICE}/32 dev lo",
            f"ip addr add {SHOOT_SERVICE6}/128 dev lo",
        ]
        nsutil.run_in(ns, ["sh", "-c", " && ".join(commands)])

    def _add_server(self, i: int) -> Server:
        server = Server(f"vpn-seed-server-{i}", self.make_netns(f"srv{i}"), f"10.96.255.{i + 1}", index=i)
        server.outer = self._plug(server.ns, f"{server.underlay_ip}/16")
        # The address vpn-shoots connect to, in their own subnet of the underlay.
        nsutil.run_in(server.ns, ["ip", "addr", "add", f"{server.shoot_facing_ip}/16", "dev", "eth0"])
        self.start_server(server)
        return server

    def start_server(self, server: Server) -> None:
        config = self.workdir / f"{server.name}.conf"
        config.write_text(server_config(self.pki, "0.0.0.0", up_script(self.workdir)))
        server.processes["openvpn"] = self.processes.start(
            server.ns, ["openvpn", "--config", str(config)], name=server.name
        )

    def _start_clients(self, member: Member, management: bool) -> None:
        for i in range(len(self.servers)):
            self.start_client(member, i)

    def start_client(self, member: Member, i: int) -> None:
        """The member's OpenVPN client to server ``i`` (tap<i>), vpn2's client timing."""
        server = self.servers[i]
        config = self.workdir / f"{member.name}-tap{i}.conf"
        port = MANAGEMENT_PORT + i if isinstance(member, Shoot) else None
        remote = server.shoot_facing_ip if isinstance(member, Shoot) else server.underlay_ip
        config.write_text(client_config(self.pki, f"tap{i}", remote, port))
        member.processes[f"openvpn{i}"] = self.processes.start(
            member.ns, ["openvpn", "--config", str(config)], name=f"{member.name}-tap{i}"
        )

    def set_bond_monitor(self, **monitor) -> None:
        """Re-run bonding setup in every pod with ``monitor`` (BOND_MONITOR=…, or nothing
        for carrier sensing); it converges each bond in place."""
        for member in (*self.apiservers, *self.shoots):
            self.rerun_bonding_setup(member, **monitor)

    def rerun_bonding_setup(self, member: Member, **monitor) -> None:
        """bonding setup again in ``member``, as a restarted pod's init step runs it: it
        converges the bond in place (``primary tap0`` again, whatever was written since)."""
        if member in self.shoots:
            self._bonding_setup(member, IS_SHOOT_CLIENT="true", POD_NAME=member.name, **monitor)
        else:
            self._bonding_setup(member, POD_NAME=member.pod_name, **monitor)

    def _bonding_setup(self, member: Member, **env) -> None:
        values = {"HA_VPN_SERVERS": len(self.servers), "HA_VPN_CLIENTS": self.options["shoots"]}
        values.update(self.options["bond_env"])
        values.update(env)
        result = nsutil.run_in(
            member.ns, [nsutil.PYTHON, "-m", "bonding", "setup"], check=False, env=nsutil.daemon_env(**values)
        )
        if result.returncode != 0:
            raise RuntimeError(f"bonding setup in {member.name} failed: {result.stderr}")

    async def _add_shoot(self, j: int) -> Shoot:
        shoot = Shoot(f"vpn-shoot-{j}", self.make_netns(f"shoot{j}"), f"172.16.0.{j + 1}", index=j)
        shoot.outer = self._plug(shoot.ns, f"{shoot.underlay_ip}/16")
        self._plug(shoot.ns, f"10.250.1.{j + 1}/16", dev="eth1", bridge_ns=self.shoot_net, bridge="sn")
        nsutil.run_in(shoot.ns, ["ip", "-6", "addr", "add", f"fd00:250::1:{j + 1}/64", "dev", "eth1", "nodad"])
        self._bonding_setup(shoot, IS_SHOOT_CLIENT="true", POD_NAME=shoot.name)
        shoot.bond_address = PLAN.shoot_client(j)
        # The shoot side of vpn2: forward from the tunnels, masquerade into the shoot network.
        commands = [
            f"ip route add 100.64.0.0/13 via {SHOOT_NODE}",
            f"ip route add 100.96.0.0/11 via {SHOOT_NODE}",
            f"ip -6 route add fd00:64::/108 via {SHOOT_NODE6}",
            f"ip -6 route add fd00:96::/56 via {SHOOT_NODE6}",
            "iptables-legacy -A FORWARD -i bond0+ -j ACCEPT",
            "iptables-legacy -t nat -A POSTROUTING -o eth1 -j MASQUERADE",
            "ip6tables-legacy -A FORWARD -i bond0+ -j ACCEPT",
            "ip6tables-legacy -t nat -A POSTROUTING -o eth1 -j MASQUERADE",
        ]
        nsutil.run_in(shoot.ns, ["sh", "-c", " && ".join(commands)])
        self._start_clients(shoot, management=True)
        return shoot

    async def _add_apiserver(self, k: int, pod_name: str | None = None, host: int | None = None) -> ApiServer:
        pod_name = pod_name or f"kube-apiserver-7d9f8b6c5d-{k:05d}"
        host = host if host is not None else 10 + k
        api = ApiServer(
            f"kube-apiserver-{host}", self.make_netns(f"api{host}"), f"10.96.0.{host}",
            index=k, pod_name=pod_name, pod_ip6=f"fd00:10::{host:x}",
        )
        api.outer = self._plug(api.ns, f"{api.underlay_ip}/16")
        nsutil.run_in(api.ns, ["ip", "-6", "addr", "add", f"{api.pod_ip6}/64", "dev", "eth0", "nodad"])
        self._bonding_setup(api, POD_NAME=pod_name)
        api.bond_address = PLAN.seed_client(seed_client_index_for_pod(pod_name))
        self._start_clients(api, management=False)
        return api

    # --- daemons ----------------------------------------------------------

    def start_path_controller(self, api: ApiServer, module: str = "path_controller", **env) -> nsutil.Process:
        values = {
            "POD_IP": api.underlay_ip,
            "POD_IPS": f"{api.underlay_ip},{api.pod_ip6}",
            "ANNOUNCE_ALL_POD_IPS": "true",
            "HA_VPN_CLIENTS": self.options["shoots"],
            "SEED_POD_NETWORK": SEED_POD_NETWORK,
            **SHOOT_NETWORKS,
            **self.options["pc_env"],
            **env,
        }
        process = self.processes.start(
            api.ns, [nsutil.PYTHON, "-m", module], env=nsutil.daemon_env(**values), name=f"{api.name}-pc"
        )
        api.processes["path-controller"] = process
        return process

    def start_tunnel_controller(self, shoot: Shoot, **env) -> nsutil.Process:
        values = {"HA_VPN_CLIENTS": self.options["shoots"], "HA_VPN_SERVERS": len(self.servers),
                  **self.options["tc_env"], **env}
        process = self.processes.start(
            shoot.ns, [nsutil.PYTHON, "-m", "tunnel_controller"], env=nsutil.daemon_env(**values),
            name=f"{shoot.name}-tc",
        )
        shoot.processes["tunnel-controller"] = process
        return process

    @staticmethod
    def stop(member: Member, role: str, sig: int = signal.SIGTERM) -> int:
        return member.processes[role].stop(sig)

    # --- state ------------------------------------------------------------

    async def http(self, member: Member, path: str) -> tuple[int, str]:
        return await nsutil.http_get_async(member.ns, 8080, path)

    async def metric(self, member: Member, name: str, **labels) -> float:
        """One sample of the member's /metrics; a name or label it does not export fails."""
        status, body = await self.http(member, "/metrics")
        assert status == 200, f"{member.name}: /metrics answered {status}"
        return nsutil.metric_value(body, name, **labels)

    async def primary_of(self, api: ApiServer) -> int | None:
        value = await self.metric(api, "path_controller_primary_target")
        return None if value < 0 else int(value)

    async def ready(self, member: Member) -> bool:
        try:
            status, _ = await self.http(member, "/readyz")
        except OSError:
            return False
        return status == 200

    async def readiness(self) -> dict[str, str]:
        """/readyz body of every daemon that is not ready (empty when converged)."""
        async def one(member: Member) -> tuple[str, str | None]:
            try:
                status, body = await self.http(member, "/readyz")
            except OSError as exc:
                return member.name, f"no answer: {exc}"
            return member.name, None if status == 200 else body.strip()

        results = await asyncio.gather(*(one(m) for m in (*self.apiservers, *self.shoots)))
        return {name: problem for name, problem in results if problem is not None}

    async def wait_converged(self, timeout: float = 120.0) -> None:
        """Every daemon ready: apiservers route through a healthy vpn-shoot,
        every vpn-shoot has a tunnel to every apiserver."""
        problems: dict[str, str] = {}

        async def converged():
            nonlocal problems
            problems = await self.readiness()
            for shoot in self.shoots:  # a ready tunnel-controller may not have heard every announcement yet
                if shoot.name not in problems:
                    missing = {api.bond_address for api in self.apiservers} - set(await self.shoot_tunnels(shoot))
                    if missing:
                        problems[shoot.name] = f"no tunnel to {', '.join(map(str, sorted(missing)))}"
            return not problems

        try:
            await nsutil.wait_for(converged, timeout=timeout, interval=0.5, message="every daemon ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {problems}") from None

    async def active_tap(self, member: Member) -> str | None:
        """The slave member's bond0 sends on (tap<i>: server i), or None."""
        ipr = await self.ipr(member.ns)
        active = link_facts(await link_by_name(ipr, "bond0")).active_slave
        if not active:
            return None
        return link_facts(await link_by_index(ipr, active)).name

    async def wait_bonds_on(self, server: int, timeout: float = 60.0) -> None:
        """Until every bond uses server ``server``: after a server comes back,
        each bond fails back to tap0 when its own client reconnects, so for a
        few seconds peers sit on different servers and cannot reach each other."""
        members = [*self.apiservers, *self.shoots]

        async def settled():
            taps = await asyncio.gather(*(self.active_tap(m) for m in members))
            return all(tap == f"tap{server}" for tap in taps)

        await nsutil.wait_for(settled, timeout=timeout, interval=0.2, message=f"every bond on tap{server}")

    async def shoot_tunnels(self, shoot: Shoot) -> dict[IPv6Address, str]:
        """remote → device name of the shoot's bond0ip6tnl* devices."""
        ipr = await self.ipr(shoot.ns)
        return {tunnel.remote: tunnel.name for tunnel in await dump_ip6tnl(ipr) if tunnel.name.startswith("bond0ip6tnl")}

    # --- failures ---------------------------------------------------------

    def underlay_netem(self, member: Member, spec: str | None) -> None:
        """netem on both directions of a member's underlay link (None removes it)."""
        for ns, dev in ((self.underlay, member.outer), (member.ns, "eth0")):
            if spec is None:
                nsutil.run_in(ns, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
            else:
                nsutil.run_in(ns, ["tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec.split()])

    def path_netem(self, member: Member, spec: str | None) -> None:
        """netem on the member's VPN path itself: its taps, both directions
        (ingress through an ifb). Loss inside the VPN, with no TCP in between
        to turn it into stalls (as a UDP transport or a lossy L2 would see)."""
        for i in range(len(self.servers)):
            tap, ifb = f"tap{i}", f"ifb{i}"
            if spec is None:
                commands = [f"tc qdisc del dev {tap} root", f"tc qdisc del dev {tap} ingress", f"ip link del {ifb}"]
                nsutil.run_in(member.ns, ["sh", "-c", "; ".join(commands)], check=False)
                continue
            commands = [
                f"ip link add {ifb} type ifb",
                f"ip link set {ifb} up",
                f"tc qdisc add dev {ifb} root netem {spec}",
                f"tc qdisc add dev {tap} handle ffff: ingress",
                f"tc filter add dev {tap} parent ffff: matchall action mirred egress redirect dev {ifb}",
                f"tc qdisc add dev {tap} root netem {spec}",
            ]
            nsutil.run_in(member.ns, ["sh", "-c", " && ".join(commands)])

    def underlay_counters(self, member: Member) -> QdiscCounters:
        """What the netem qdiscs of ``underlay_netem`` passed and dropped, both directions."""
        return root_qdisc_counters(self.underlay, member.outer) + root_qdisc_counters(member.ns, "eth0")

    def blackhole(self, member: Member, on: bool = True) -> None:
        """Drop everything on the member's underlay link; its TCP connections stay open."""
        self.underlay_netem(member, "loss 100%" if on else None)

    def blackhole_outgoing(self, member: Member, on: bool = True) -> None:
        """Drop only what the member sends on the underlay (one direction); it still receives."""
        if on:
            nsutil.run_in(member.ns, ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "loss", "100%"])
        else:
            nsutil.run_in(member.ns, ["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)

    def cut_leg(self, member: Member, server: Server, on: bool = True) -> None:
        """Drop everything between ``member`` and ``server`` (both ways, carrier stays up):
        one pod's own connection to one server black-holed."""
        address = server.shoot_facing_ip if isinstance(member, Shoot) else server.underlay_ip
        action = "-I" if on else "-D"
        for rule in (["OUTPUT", "-d", address], ["INPUT", "-s", address]):
            nsutil.run_in(member.ns, ["iptables-legacy", action, rule[0], rule[1], rule[2], "-j", "DROP"],
                          check=on)

    def leg_drops(self, member: Member, server: Server) -> int:
        """Packets the ``cut_leg`` rules dropped."""
        address = server.shoot_facing_ip if isinstance(member, Shoot) else server.underlay_ip
        listing = nsutil.run_in(member.ns, ["iptables-legacy", "-L", "-n", "-v", "-x"]).stdout
        return sum(int(line.split()[0]) for line in listing.splitlines() if "DROP" in line and address in line)

    def outgoing_counters(self, member: Member) -> QdiscCounters:
        return root_qdisc_counters(member.ns, "eth0")

    async def carrier(self, member: Member, tap: str) -> bool:
        ipr = await self.ipr(member.ns)
        link = await link_by_name(ipr, tap)
        return bool(link is not None and link.get("IFLA_CARRIER"))

    async def wait_carrier(self, members, tap: str, on: bool, timeout: float = 30.0) -> None:
        """Until ``tap`` of every one of ``members`` has (or has lost) carrier."""
        async def reached():
            return all([await self.carrier(m, tap) == on for m in members])
        state = "has carrier" if on else "lost carrier"
        await nsutil.wait_for(reached, timeout=timeout, interval=0.1, message=f"{tap} of every member {state}")

    async def ipr(self, ns: str):
        """One netlink handle per namespace, for the helpers that poll."""
        if ns not in self._iprs:
            self._iprs[ns] = await self.ipr_factory(ns)
        return self._iprs[ns]

    @property
    def members(self) -> list[Member]:
        return [*self.apiservers, *self.shoots]

    def kill(self, member: Member, role: str) -> None:
        member.processes[role].popen.kill()
        member.processes[role].popen.wait(10)

    def kill_shoot(self, shoot: Shoot) -> None:
        """The vpn-shoot pod dies: its OpenVPN clients and tunnel-controller are gone."""
        for role in [r for r in shoot.processes if r.startswith("openvpn") or r == "tunnel-controller"]:
            if shoot.processes[role].popen.poll() is None:
                self.kill(shoot, role)

    def start_shoot_clients(self, shoot: Shoot) -> None:
        self._start_clients(shoot, management=True)

    async def replace_apiserver(self, api: ApiServer, new_pod_name: str, new_host: int) -> ApiServer:
        """The pod is deleted and a new one (new name, pod IP, bond address) takes its place."""
        for role, process in api.processes.items():
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait(10)
        new = await self._add_apiserver(api.index, pod_name=new_pod_name, host=new_host)
        self.start_path_controller(new)
        self.apiservers[self.apiservers.index(api)] = new
        return new


def networks_routed() -> list:
    return [ip_network(n) for v in SHOOT_NETWORKS.values() for n in v.split(",")]
