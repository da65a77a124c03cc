"""Push between real node processes on 127.0.0.1, driven through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.common import api_request, host_port
from tests.conftest import ROOT

from .cluster import grapevine, nodes, poll


@pytest.fixture
def three(tmp_path: Path):
    directory = tmp_path / "cluster"
    result = grapevine("cluster", "up", "3", "--dir", str(directory), "--base-port", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    yield directory
    grapevine("cluster", "down", "--dir", str(directory))


def presence(api: str, user: str) -> dict:
    return api_request(host_port(api), "GET", f"/v1/users/{user}", timeout=2.0)


def test_listen_on_c_send_through_a_and_fail_over_when_c_dies(three: Path) -> None:
    listed = {n["name"]: n for n in nodes(three)}
    a, b, c = listed["node-1"], listed["node-2"], listed["node-3"]
    token = grapevine("cluster", "token", "alice", "--dir", str(three)).stdout.strip()
    listen = subprocess.Popen(
        [sys.executable, "-m", "cli", "listen", "--client", c["client"], "--client",
         b["client"], "--token", token, "--count", "2", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert poll(lambda: presence(a["api"], "alice")["nodes"] == ["node-3"], 20) is not None
        sent = grapevine("send", "--api", a["api"], "--to", "alice", "first")
        assert sent.returncode == 0, sent.stderr
        first_id = sent.stdout.strip()
        assert grapevine("cluster", "kill", "node-3", "--dir", str(three)).returncode == 0
        # the listener notices, moves to node-2 and registers there
        assert poll(lambda: presence(a["api"], "alice")["nodes"] == ["node-2"], 30) is not None
        sent = grapevine("send", "--api", a["api"], "--to", "alice", "second")
        assert sent.returncode == 0, sent.stderr
        out, err = listen.communicate(timeout=30)
    finally:
        listen.kill()
    assert listen.returncode == 0, err
    messages = [json.loads(line) for line in out.splitlines()]
    assert [m["body"] for m in messages] == ["first", "second"]
    assert messages[0]["id"] == first_id
    assert "connected to node-3" in err and "connected to node-2" in err


def test_bad_sends_and_listens_say_why(three: Path) -> None:
    api = nodes(three)[0]["api"]
    refused = grapevine("send", "--api", api, "--to", "", "x")
    assert refused.returncode == 1 and "to:" in refused.stderr
    stored = grapevine("send", "--api", api, "--to", "alice", "--qos", "1", "--json", "x")
    assert stored.returncode == 0 and json.loads(stored.stdout)["seq"] > 0
    client = nodes(three)[0]["client"]
    bad = grapevine("listen", "--client", client, "--token", "nope", "--timeout", "10")
    assert bad.returncode == 1 and "refused" in bad.stderr
    usage = grapevine("listen", "--client", client)
    assert usage.returncode == 2 and len(usage.stderr.splitlines()) == 1


def status(api: str) -> dict:
    return api_request(host_port(api), "GET", "/v1/status", timeout=2.0)


def test_publish_broadcast_and_kick_through_the_cli(three: Path) -> None:
    listed = {n["name"]: n for n in nodes(three)}
    token = grapevine("cluster", "token", "bo", "--dir", str(three)).stdout.strip()
    listen = subprocess.Popen(
        [sys.executable, "-m", "cli", "listen", "--client", listed["node-2"]["client"],
         "--token", token, "--sub", "news", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        api1, api3 = listed["node-1"]["api"], listed["node-3"]["api"]
        assert poll(lambda: status(listed["node-2"]["api"])["push"]["topics"] == 1, 20)
        assert poll(lambda: presence(api1, "bo")["online"], 20) is not None
        assert grapevine("publish", "--api", api1, "--topic", "news", "headline").returncode == 0
        assert grapevine("broadcast", "--api", api3, "to everyone").returncode == 0
        assert listen.stdout is not None  # both lines before the kick (bounded by --timeout)
        lines = [listen.stdout.readline(), listen.stdout.readline()]
        kicked = grapevine("kick", "--api", api3, "bo", "--reason", "enough")
        assert kicked.returncode == 0 and kicked.stdout.strip() == "bo"
        out, err = listen.communicate(timeout=30)
    finally:
        listen.kill()
    assert listen.returncode == 1 and "kicked: enough" in err
    bodies = sorted(json.loads(line)["body"] for line in [*lines, *out.splitlines()])
    assert bodies == ["headline", "to everyone"]
