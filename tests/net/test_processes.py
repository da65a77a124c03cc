"""Real node processes on 127.0.0.1, started through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .cluster import grapevine, members, nodes, poll


@pytest.fixture
def five(tmp_path: Path):
    directory = tmp_path / "cluster"
    result = grapevine("cluster", "up", "5", "--dir", str(directory), "--base-port", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "converged: 5/5" in result.stdout
    yield directory
    grapevine("cluster", "down", "--dir", str(directory))


def ring_of(api: str, key: str | None = None) -> str:
    """``grapevine ring --json`` as printed (with ``--key`` when given)."""
    result = grapevine("ring", "--api", api, "--json", *(["--key", key] if key else []))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_five_processes_converge_kill_9_is_dead_and_sigterm_is_left(five: Path) -> None:
    listed = nodes(five)
    apis = {n["name"]: n["api"] for n in listed}
    for api in apis.values():
        assert set(members(api).values()) == {"alive"}
    took = poll(lambda: len({ring_of(api, "alice") for api in apis.values()}) == 1, 10)
    assert took is not None, {name: ring_of(api, "alice") for name, api in apis.items()}
    owner, *replicas = json.loads(ring_of(apis["node-1"], "alice"))["replicas"]
    assert owner in apis and len(replicas) == 1 and replicas[0] in apis
    assert grapevine("cluster", "kill", "node-3", "--dir", str(five)).returncode == 0
    survivors = [name for name in apis if name != "node-3"]
    took = poll(lambda: all(members(apis[n]).get("node-3") == "dead" for n in survivors), 30)
    assert took is not None, {n: members(apis[n]) for n in survivors}
    took = poll(lambda: all("node-3" not in ring_of(apis[n]) for n in survivors), 10)
    assert took is not None
    result = grapevine("cluster", "kill", "node-5", "--signal", "TERM", "--dir", str(five))
    assert result.returncode == 0
    remaining = [n for n in survivors if n != "node-5"]
    took = poll(lambda: all(members(apis[n]).get("node-5") == "left" for n in remaining), 15)
    assert took is not None, {n: members(apis[n]) for n in remaining}
    status = grapevine("cluster", "status", "--dir", str(five), "--json")
    assert status.returncode == 0
    assert '"process": "stopped"' in status.stdout


def test_a_second_up_on_a_running_dir_refuses(five: Path) -> None:
    result = grapevine("cluster", "up", "2", "--dir", str(five), "--base-port", "0")
    assert result.returncode == 1
    assert "already running" in result.stderr


def test_restart_rejoins_with_a_higher_incarnation(five: Path) -> None:
    assert grapevine("cluster", "kill", "node-2", "--dir", str(five)).returncode == 0
    assert grapevine("cluster", "restart", "node-2", "--dir", str(five)).returncode == 0
    apis = {n["name"]: n["api"] for n in nodes(five)}
    took = poll(lambda: all(set(members(api).values()) == {"alive"} for api in apis.values()), 30)
    assert took is not None


def test_a_node_shows_as_grapevine_node_in_ps(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    result = grapevine("cluster", "up", "1", "--dir", str(directory), "--base-port", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        [node] = nodes(directory)
        proc = Path(f"/proc/{node['pid']}")
        args = (proc / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert args[:4] == [b"grapevine", b"node", b"--name", b"node-1"]
        assert (proc / "comm").read_text().strip() == "grapevine"
        status = grapevine("cluster", "status", "--dir", str(directory))
        assert "running" in status.stdout  # cluster still knows its node by its new title
    finally:
        grapevine("cluster", "down", "--dir", str(directory))
