"""A cluster in network namespaces (root only): separate hosts, a partition, its heal.

The namespaces, veth pairs and the bridge are made by the command under test inside
198.18.0.0/15 and removed by it; the test checks that nothing of them is left.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import netns
from cli.common import CliError, api_request, host_port
from tests.conftest import ROOT

from .cluster import grapevine, nodes

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="network namespaces need root"
)


def test_nodes_in_namespaces_survive_a_partition_and_leave_nothing_behind(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "lab"
    up = grapevine("cluster", "up", "3", "--netns", "--dir", str(directory))
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((directory / "cluster.json").read_text())
    lab = netns.Lab.from_json(state["netns"])
    try:
        listed = {n["name"]: n for n in nodes(directory)}
        hosts = {host_port(n["api"])[0] for n in listed.values()}
        assert len(hosts) == 3  # three hosts, as far as the nodes can tell
        assert all(ipaddress.ip_address(h) in netns.BENCHMARK_NET for h in hosts)
        a_api = host_port(listed["node-1"]["api"])
        key = state["api_key"]
        # beyond loopback the API wants its key
        with pytest.raises(CliError, match="401"):
            api_request(a_api, "GET", "/v1/members", timeout=5)

        cut = grapevine("cluster", "partition", "node-3", "--dir", str(directory))
        assert cut.returncode == 0, cut.stderr
        dead = grapevine("cluster", "wait", "node-3", "dead", "--dir", str(directory),
                         "--timeout", "30")
        assert dead.returncode == 0, dead.stderr
        status = json.loads(grapevine("cluster", "status", "--json", "--dir",
                                      str(directory)).stdout)
        links = {row["name"]: row["link"] for row in status["nodes"]}
        assert links == {"node-1": "up", "node-2": "up", "node-3": "cut"}
        # QoS 1 messages accepted while node-3 is cut off are stored by the others
        sent = [api_request(a_api, "POST", "/v1/send", {"to": f"u{i}", "body": f"m{i}",
                                                        "qos": 1}, api_key=key, timeout=10)
                for i in range(8)]

        healed = grapevine("cluster", "heal", "node-3", "--dir", str(directory))
        assert healed.returncode == 0, healed.stderr
        alive = grapevine("cluster", "wait", "node-3", "alive", "--dir", str(directory),
                          "--timeout", "60")
        assert alive.returncode == 0, alive.stderr
        # every message reaches its user through node-3, whoever owns the user now
        for i, answer in enumerate(sent):
            got = subprocess.run(
                [sys.executable, "-m", "cli", "listen", "--client",
                 listed["node-3"]["client"], "--user", f"u{i}", "--secret",
                 state["token_secret"], "--count", "1", "--timeout", "30"],
                capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
            assert got.returncode == 0, got.stderr
            message = json.loads(got.stdout.splitlines()[0])
            assert (message["id"], message["body"]) == (answer["id"], f"m{i}")
    finally:
        down = grapevine("cluster", "down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    assert netns.leftovers(lab) == []
