"""Record what Debian's serf agent sends to a memberlist peer, as golden test data.

Plays a minimal peer on 127.0.0.1 (plain sockets, our codec for the replies), starts a
``serf agent`` that joins it, and saves the first bytes serf sends:

* ``serf_push_pull_join.bin``      the TCP push-pull of serf's join (LZW-compressed)
* ``serf_udp_<n>.bin``             UDP datagrams serf sends us afterwards (pings, gossip)
* ``serf_enc_push_pull_join.bin``  the same join with ``-encrypt`` (key in ``KEY.txt``)
* ``serf_enc_udp_<n>.bin``         encrypted datagrams

Usage: ``python scripts/capture_serf.py tests/data/wire`` (needs ``serf`` on PATH).
Everything binds 127.0.0.1 and every process it starts is stopped at the end.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gossip.codec import Envelope, ip_to_bytes
from gossip.stream import StreamReader, encode_push_pull, encode_stream
from gossip.keyring import Keyring
from gossip.wire import PushNodeState, PushPull

KEY = base64.b64decode("T9jncgl9mbLus+baTTa7q7nPSUrXwbDi2dhbtqir37s=")
VSN = bytes((1, 5, 2, 2, 5, 5))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def capture(out: Path, prefix: str, keyring: Keyring | None) -> None:
    port = _free_port()
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", port))
    tcp.listen(4)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    serf_port, rpc_port = _free_port(), _free_port()
    command = [
        "serf", "agent", "-node=alpha", f"-bind=127.0.0.1:{serf_port}",
        f"-rpc-addr=127.0.0.1:{rpc_port}", f"-join=127.0.0.1:{port}", "-tag", "role=web",
    ]
    if keyring is not None:
        command.append(f"-encrypt={base64.b64encode(KEY).decode()}")
    agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    envelope = Envelope(keyring)
    try:
        tcp.settimeout(10)
        connection, _ = tcp.accept()
        reader = StreamReader(envelope)
        raw = b""
        message = None
        connection.settimeout(5)
        while message is None:
            chunk = connection.recv(65536)
            if not chunk:
                raise SystemExit("serf closed the join stream early")
            raw += chunk
            message = reader.feed(chunk)
        (out / f"{prefix}push_pull_join.bin").write_bytes(raw)
        me = PushNodeState("capture", ip_to_bytes("127.0.0.1"), port, b"\xff\x80", 1, 0, VSN)
        reply = encode_stream(encode_push_pull(PushPull(True, (me,))), envelope)
        connection.sendall(reply)
        connection.close()
        udp.settimeout(5)
        for index in range(4):
            data, _src = udp.recvfrom(65536)
            (out / f"{prefix}udp_{index}.bin").write_bytes(data)
    finally:
        agent.terminate()
        agent.wait(10)
        tcp.close()
        udp.close()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/wire")
    out.mkdir(parents=True, exist_ok=True)
    version = subprocess.run(["serf", "version"], capture_output=True, text=True, check=True).stdout
    capture(out, "serf_", None)
    capture(out, "serf_enc_", Keyring([KEY], os.urandom))
    (out / "KEY.txt").write_text(base64.b64encode(KEY).decode() + "\n")
    (out / "SERF_VERSION.txt").write_text(version)
    print(f"captured into {out}: {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
    main()
