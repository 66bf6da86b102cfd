"""Server steering: which OpenVPN server each pod's bond uses, decided by the daemons
from beacons (docs/server-steering.md). Shared by the path-controller and the
tunnel-controller."""
