"""A TCP client for the pinning tests that must run as its own process (another group: envoy's).

``python -m tests.netns.pinning_client TARGET SECONDS``: exchanges a line
with the echo server every 50 ms for SECONDS, prints ``<unix time> <vpn-shoot>``
per echo, then ``END ok`` or ``END <error>``.
"""

import socket
import sys
import time

from tests.netns.pinning_lab import PORT, via_of


def main(target: str, seconds: float) -> None:
    try:
        with socket.create_connection((target, PORT), timeout=3) as sock, sock.makefile("rwb") as stream:
            end = time.time() + seconds
            seq = 0
            while True:
                stream.write(b"%d\n" % seq)
                stream.flush()
                line = stream.readline()
                if not line:
                    raise ConnectionError("closed by the far side")
                print(time.time(), via_of(line.split()[0].decode()), flush=True)
                seq += 1
                if time.time() >= end:
                    break
                time.sleep(0.05)
        print("END ok", flush=True)
    except OSError as exc:
        print("END", repr(exc), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
