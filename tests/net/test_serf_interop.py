"""Interoperability with Debian's serf agent on 127.0.0.1 (skipped when serf is absent).

serf and grapevine nodes share one cluster, joined either way: each lists the other as
alive, kill -9 of either is seen as failed by the other, and with --encrypt both speak
the same key. Both run the ``local`` profile so detection takes seconds.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT

from .cluster import members, poll

pytestmark = [
    pytest.mark.serf,
    pytest.mark.skipif(shutil.which("serf") is None, reason="Debian's serf is not installed"),
]
KEY = "T9jncgl9mbLus+baTTa7q7nPSUrXwbDi2dhbtqir37s="


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@contextmanager
def serf_agent(name: str, log: Path, join: str | None = None, encrypt: str | None = None):
    port, rpc = free_port(), free_port()
    command = [
        "serf", "agent", f"-node={name}", f"-bind=127.0.0.1:{port}", f"-rpc-addr=127.0.0.1:{rpc}",
        "-profile=local", "-log-level=debug",
    ]
    if join:
        command.append(f"-join={join}")
    if encrypt:
        command.append(f"-encrypt={encrypt}")
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process, f"127.0.0.1:{port}", f"127.0.0.1:{rpc}"
    finally:
        process.kill()
        process.wait(10)


def serf_members(rpc: str) -> dict[str, str]:
    result = subprocess.run(
        ["serf", "members", f"-rpc-addr={rpc}", "-format=json"], capture_output=True,
        text=True, check=False, timeout=10,
    )
    if result.returncode != 0:
        return {}
    return {m["name"]: m["status"] for m in json.loads(result.stdout)["members"]}


@contextmanager
def grapevine_node(
    name: str, log: Path, join: str | None = None, encrypt: str | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    port, api = free_port(), free_port()
    command = [
        sys.executable, "-m", "cli", "node", "--name", name, "--bind", f"127.0.0.1:{port}",
        "--api", f"127.0.0.1:{api}", "--profile", "local",
    ]
    if join:
        command += ["--join", join]
    if encrypt:
        command += ["--encrypt", encrypt]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        assert poll(lambda: members(f"127.0.0.1:{api}") is not None, 20) is not None
        yield process, f"127.0.0.1:{port}", f"127.0.0.1:{api}"
    finally:
        process.kill()
        process.wait(10)


def test_grapevine_joins_serf_and_each_sees_the_others_failure(tmp_path: Path) -> None:
    with serf_agent("serf-a", tmp_path / "serf.log") as (_serf, serf_gossip, rpc):
        assert poll(lambda: serf_members(rpc).get("serf-a") == "alive", 20) is not None
        with grapevine_node("gv-a", tmp_path / "gv.log", join=serf_gossip) as (gv, _g, api):
            both = poll(lambda: serf_members(rpc).get("gv-a") == "alive"
                        and members(api).get("serf-a") == "alive", 20)
            assert both is not None, (serf_members(rpc), members(api))
            gv.kill()
            failed = poll(lambda: serf_members(rpc).get("gv-a") == "failed", 30)
            assert failed is not None, serf_members(rpc)


def test_serf_joins_grapevine_and_grapevine_sees_serf_die(tmp_path: Path) -> None:
    with grapevine_node("gv-b", tmp_path / "gv.log") as (_gv, gv_gossip, api), serf_agent(
        "serf-b", tmp_path / "serf.log", join=gv_gossip
    ) as (serf, _s, rpc):
        both = poll(lambda: serf_members(rpc).get("gv-b") == "alive"
                    and members(api).get("serf-b") == "alive", 20)
        assert both is not None, (serf_members(rpc), members(api))
        serf.kill()
        dead = poll(lambda: members(api).get("serf-b") == "dead", 30)
        assert dead is not None, members(api)


def test_encrypted_cluster_with_serf(tmp_path: Path) -> None:
    with serf_agent("serf-c", tmp_path / "serf.log", encrypt=KEY) as (_serf, serf_gossip, rpc):
        assert poll(lambda: serf_members(rpc).get("serf-c") == "alive", 20) is not None
        with grapevine_node("gv-c", tmp_path / "gv.log", join=serf_gossip, encrypt=KEY) as (
            _gv, _g, api,
        ):
            both = poll(lambda: serf_members(rpc).get("gv-c") == "alive"
                        and members(api).get("serf-c") == "alive", 20)
            assert both is not None, (serf_members(rpc), members(api))
        other = "8bFZ6xZ0mnhb7LDpi06fJXRfsN7qaGEzs7R5PRGNHHM="
        with grapevine_node("gv-wrong", tmp_path / "gv2.log", join=serf_gossip, encrypt=other) as (
            _gv, _g, api,
        ):
            assert poll(lambda: "gv-wrong" in serf_members(rpc), 3) is None
            assert "serf-c" not in members(api)
