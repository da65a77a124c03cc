"""The command line: one clear line and the right exit code for every mistake."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.main import build_parser
from cli.node import config_from_args
from node.token import verify
from tests.conftest import ROOT


def grapevine(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, check=False,
        timeout=timeout, cwd=ROOT,
    )


@pytest.mark.parametrize("args", [
    ["node", "--bind", "nonsense"],
    ["node", "--bind", "127.0.0.1:99999"],
    ["node", "--encrypt", "not-a-key"],
    ["node", "--tag", "novalue"],
    ["node", "--join", "host-without-port"],
    ["node", "--profile", "fast"],
    ["node", "--name", "bad name with spaces"],
    ["node", "--api", "0.0.0.0:0"],
    ["node", "--no-such-flag"],
    ["members", "--api", "nope"],
    ["ring", "--api", "nope"],
    ["node", "--name", "n", "--tag", "role=web"],
    ["node", "--name", "n", "--tag", "weight=heavy"],
    ["node", "--name", "n", "--client", "127.0.0.1:0"],
    ["node", "--name", "n", "--client", "nope", "--token-secret", "s"],
    ["node", "--name", "n", "--replicas", "0"],
    ["node", "--name", "n", "--webhook", "ftp://x"],
    ["send", "--to", "u"],
    ["listen", "--client", "127.0.0.1:1", "--user", "u"],
    ["frobnicate"],
])
def test_usage_errors_are_one_line_and_exit_2(args: list[str]) -> None:
    result = grapevine(*args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "error" in result.stderr or "grapevine:" in result.stderr


@pytest.mark.parametrize("variable", ["GRAPEVINE_MAX_TTL", "GRAPEVINE_REPLICAS"])
def test_a_bad_number_in_the_environment_is_one_line_and_exit_2(variable: str) -> None:
    def with_it(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                              text=True, check=False, timeout=20, cwd=ROOT,
                              env={**os.environ, variable: "abc"})
    result = with_it("node", "--name", "x", "--api", "off")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "invalid" in result.stderr and "'abc'" in result.stderr
    # commands that do not read it still work
    assert with_it("token", "--secret", "s", "--user", "u").returncode == 0


def test_an_address_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = grapevine("node", "--name", "x", "--bind", f"127.0.0.1:{port}", "--api", "off")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("grapevine: cannot bind"), result.stderr
    assert "in use" in lines[-1]


@pytest.mark.parametrize("damage", ["not a database", "not readable"])
def test_a_data_dir_whose_mailboxes_cannot_be_opened_is_one_line_and_exit_1(
        tmp_path: Path, damage: str) -> None:
    database = tmp_path / "mailboxes.sqlite3"
    if damage == "not a database":
        database.write_bytes(b"garbage " * 1000)
    else:
        database.mkdir()  # a directory where the file should be
    result = grapevine("node", "--name", "x", "--bind", "127.0.0.1:0", "--api", "off",
                       "--data-dir", str(tmp_path))
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("grapevine: node failed: cannot open the mailboxes"), result.stderr
    assert str(database) in last and "Traceback" not in result.stderr


def test_an_unreachable_api_is_exit_1_with_a_reason() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = grapevine("members", "--api", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.startswith("grapevine: cannot reach the API")


def test_keygen_prints_a_key_serf_accepts() -> None:
    import base64

    result = grapevine("keygen")
    assert result.returncode == 0
    assert len(base64.b64decode(result.stdout.strip())) == 32


def test_flags_build_the_config() -> None:
    args = build_parser().parse_args([
        "node", "--name", "n1", "--bind", "127.0.0.1:7000", "--join", "10.0.0.1:7946",
        "--join", "10.0.0.2:7946", "--api", ":9000", "--profile", "wan", "--tag", "zone=a",
        "--tag", "weight=2", "--encrypt", "T9jncgl9mbLus+baTTa7q7nPSUrXwbDi2dhbtqir37s=",
        "--advertise", "192.0.2.10",
    ])
    config, keyring = config_from_args(args)
    assert config.name == "n1" and (config.bind_addr, config.bind_port) == ("127.0.0.1", 7000)
    assert config.join == ("10.0.0.1:7946", "10.0.0.2:7946")
    assert (config.api_addr, config.api_port) == ("127.0.0.1", 9000)
    assert config.profile == "wan" and config.probe_interval == 5.0
    assert dict(config.tags) == {"zone": "a", "weight": "2"}
    assert config.advertise_addr == "192.0.2.10" and config.advertise_port is None
    assert keyring is not None and len(keyring.keys) == 1


def test_environment_supplies_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPEVINE_NAME", "from-env")
    monkeypatch.setenv("GRAPEVINE_JOIN", "10.0.0.1:1,10.0.0.2:2")
    monkeypatch.setenv("GRAPEVINE_PROFILE", "local")
    config, _ = config_from_args(build_parser().parse_args(["node"]))
    assert config.name == "from-env" and config.join == ("10.0.0.1:1", "10.0.0.2:2")
    assert config.profile == "local"


def test_token_mints_what_a_node_accepts() -> None:
    result = grapevine("token", "--secret", "s3cret", "--user", "alice", "--ttl", "60")
    assert result.returncode == 0, result.stderr
    claims = verify(b"s3cret", result.stdout.strip(), time.time())
    assert claims.user == "alice" and claims.expires is not None
    for bad in (["--user", "alice"], ["--secret", "s", "--user", ""],
                ["--secret", "s", "--user", "a", "--ttl", "-1"]):
        refused = grapevine("token", *bad)
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr


def test_push_flags_reach_the_config() -> None:
    args = build_parser().parse_args([
        "node", "--name", "p", "--client", "127.0.0.1:0", "--token-secret", "s",
        "--replicas", "3", "--webhook", "http://127.0.0.1:9/h", "--broadcast-rate", "50",
        "--resume-window", "5", "--peer", ":0",
    ])
    config, _keyring = config_from_args(args)
    assert (config.replicas, config.webhook, config.broadcast_rate, config.resume_window) == (
        3, "http://127.0.0.1:9/h", 50.0, 5.0)
    assert (config.client_port, config.token_secret, config.peer_port) == (0, "s", 0)


def test_netns_without_root_says_so_and_makes_nothing(tmp_path, monkeypatch, capsys) -> None:
    from cli.main import main

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert main(["cluster", "up", "2", "--netns", "--dir", str(tmp_path / "c")]) == 2
    assert "needs root" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    assert main(["chaos", "--partitions", "--dir", str(tmp_path / "d")]) == 2
    assert "--partitions needs --netns" in capsys.readouterr().err


def test_partition_of_a_cluster_without_namespaces_is_refused(tmp_path, capsys) -> None:
    from cli.main import main

    (tmp_path / "cluster.json").write_text(
        '{"nodes": [{"name": "node-1", "index": 0}], "base_port": 0}')
    assert main(["cluster", "partition", "node-1", "--dir", str(tmp_path)]) == 2
    assert "not started with --netns" in capsys.readouterr().err


def test_made_secrets_can_follow_a_flag() -> None:
    # a token secret or API key from `cluster up` is pasted into `listen --secret S`;
    # one starting with "-" is taken for an option (a url-safe one did, 1 time in 64)
    from cli.cluster import new_secret

    made = {new_secret() for _ in range(2000)}
    assert len(made) == 2000
    parser = build_parser()
    for secret in made:
        args = parser.parse_args(
            ["listen", "--client", "127.0.0.1:1", "--user", "u", "--secret", secret])
        assert args.secret == secret


def test_commands_import_only_what_they_run() -> None:
    """`grapevine --help` and `send` cost argparse, not the node: building every
    command's parser leaves trio, the node, hypercorn and the HTTP client unimported."""
    probe = (
        "import sys; from cli.main import build_parser; build_parser(); "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('trio', 'hypercorn', 'http', 'cryptography', 'msgpack', 'node', 'gossip', "
        "'membership', 'sqlite3', 'trio_websocket'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    # the profiles' names come from membership/config.py, standard library only
    assert done.stdout.split() == ["membership", "membership.config"]
