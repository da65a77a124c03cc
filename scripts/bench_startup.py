"""Start-up and idle cost: what a CLI command and a node cost before they do any work.

Four figures, real processes on 127.0.0.1 (every process started is stopped by pid):

* ``grapevine --help`` against a bare ``python -c pass`` (the median of --runs each,
  alternating; the difference is what the CLI's own imports cost);
* ``grapevine send`` (QoS 0) to a running node, process start to exit;
* a node started (joining that running node, with a fresh data dir, as
  ``grapevine cluster up`` starts one) until its ``/healthz`` answers 200, polled every
  2 ms;
* the CPU of an idle node in a 10-node cluster (profile lan) against a serf agent in a
  10-agent cluster beside it, both settled for --settle seconds, then measured from
  /proc over --idle seconds (mean % of one core per process, and the range).

CLI commands run as ``python -m cli`` from --root (default: this tree), so the figures of
an older tree (``git archive`` into a folder) are taken the same way::

    python scripts/bench_startup.py
    python scripts/bench_startup.py --root /tmp/before --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_membership
from bench_membership import Grapevine, Serf
from bench_push import machine, machine_line

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
#: children may write and then read bytecode, as an installed grapevine does (a session
#: with PYTHONDONTWRITEBYTECODE would otherwise compile every module at every start)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr.decode()[-300:]}")
    return elapsed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def healthz(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return conn.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def start_node(root: Path, name: str, data: Path, join: str | None = None
               ) -> tuple[subprocess.Popen[bytes], int, float]:
    """A node from ``root``; returns it, its API port and the seconds until /healthz."""
    api = free_port()
    argv = [sys.executable, "-m", "cli", "node", "--name", name, "--bind", "127.0.0.1:0",
            "--api", f"127.0.0.1:{api}", "--client", "127.0.0.1:0", "--peer", "127.0.0.1:0",
            "--data-dir", str(data / name)]
    if join:
        argv += ["--join", join]
    env = dict(ENV, GRAPEVINE_TOKEN_SECRET="bench-startup-secret")
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    while not healthz(api):
        if process.poll() is not None or time.perf_counter() - start > 30:
            stop(process)
            raise RuntimeError(f"node {name} did not answer /healthz")
        time.sleep(0.002)
    return process, api, time.perf_counter() - start


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(15)


def gossip_address(data: Path, name: str) -> str:
    return json.loads((data / name / "node.json").read_text())["gossip"]


def cli_figures(root: Path, runs: int) -> dict[str, Any]:
    bare, helps, sends, starts = [], [], [], []
    cli = [sys.executable, "-m", "cli"]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "cli", "gossip", "membership",
                    "node"], cwd=root, env=ENV, check=True)
    for _ in range(runs):
        bare.append(timed([sys.executable, "-c", "pass"], root))
        helps.append(timed([*cli, "--help"], root))
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        data = Path(tmp)
        seed, api, _ = start_node(root, "seed", data)
        try:
            seed_gossip = gossip_address(data, "seed")
            for _ in range(runs):
                sends.append(timed([*cli, "send", "--api", f"127.0.0.1:{api}", "--to", "alice",
                                    "hello"], root))
            for index in range(runs):
                node, _, seconds = start_node(root, f"n{index}", data, join=seed_gossip)
                starts.append(seconds)
                stop(node)
        finally:
            stop(seed)
    median = statistics.median
    return {
        "bare_python_s": round(median(bare), 3),
        "help_s": round(median(helps), 3),
        "help_over_bare_s": round(median(helps) - median(bare), 3),
        "send_s": round(median(sends), 3),
        "node_to_healthz_s": round(median(starts), 3),
        "node_to_healthz_max_s": round(max(starts), 3),
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def idle_figures(root: Path, size: int, settle: float, idle: float) -> dict[str, Any]:
    """Both clusters up at once; each process's CPU over the same ``idle`` seconds."""
    bench_membership.ROOT = root
    logdir = Path(tempfile.mkdtemp(prefix="bench-startup-idle-"))
    agents = [kind(index + offset, "lan", logdir)
              for kind, offset in ((Grapevine, 0), (Serf, 50)) for index in range(size)]
    try:
        for agent in agents:
            agent.start()
        for agent in agents:
            agent.wait_ready(timeout=60)
        for group in (agents[:size], agents[size:]):
            for agent in group[1:]:
                agent.join(group[0].gossip)
        deadline = time.monotonic() + 60
        while not all(len(a.members()) == size for a in agents):
            if time.monotonic() > deadline:
                raise RuntimeError("the clusters did not converge")
            time.sleep(0.2)
        time.sleep(settle)
        before = {a.name: cpu_seconds(a.process.pid) for a in agents}
        started = time.monotonic()
        time.sleep(idle)
        wall = time.monotonic() - started
        used = {a.name: (cpu_seconds(a.process.pid) - before[a.name]) / wall * 100
                for a in agents}
    finally:
        for agent in agents:
            agent.stop()
        shutil.rmtree(logdir, ignore_errors=True)
    figures: dict[str, Any] = {}
    for system, group in (("grapevine", agents[:size]), ("serf", agents[size:])):
        shares = [used[a.name] for a in group]
        figures[f"idle_{system}_pct"] = round(statistics.mean(shares), 2)
        figures[f"idle_{system}_range_pct"] = [round(min(shares), 2), round(max(shares), 2)]
    figures["idle_ratio"] = round(figures["idle_grapevine_pct"] / figures["idle_serf_pct"], 2)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=bench_membership.ROOT,
                        help="the tree whose CLI and node are measured (default: this one)")
    parser.add_argument("--runs", type=int, default=10, help="runs of each CLI figure (10)")
    parser.add_argument("--size", type=int, default=10, help="nodes in the idle cluster (10)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before idle (10)")
    parser.add_argument("--idle", type=float, default=30.0, help="idle seconds measured (30)")
    parser.add_argument("--skip-idle", action="store_true", help="only the CLI and start-up")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    if not args.skip_idle and shutil.which("serf") is None:
        parser.error("serf is not on PATH (apt-get install serf), or give --skip-idle")
    root = args.root.resolve()
    figures = cli_figures(root, args.runs)
    if not args.skip_idle:
        figures.update(idle_figures(root, args.size, args.settle, args.idle))
    if args.json:
        print(json.dumps({"machine": machine(), "root": str(root), **figures}))
        return 0
    print(machine_line(machine()))
    print(f"root: {root}")
    print(f"--help {figures['help_s']:.3f} s, bare python {figures['bare_python_s']:.3f} s: "
          f"+{figures['help_over_bare_s']:.3f} s (median of {args.runs})")
    print(f"send to a running node: {figures['send_s']:.3f} s")
    print(f"node start to /healthz: {figures['node_to_healthz_s']:.3f} s "
          f"(max {figures['node_to_healthz_max_s']:.3f} s)")
    if not args.skip_idle:
        print(f"idle CPU, {args.size}-node clusters over {args.idle:g} s: grapevine "
              f"{figures['idle_grapevine_pct']:.2f} % of a core "
              f"({figures['idle_grapevine_range_pct'][0]:.2f}-"
              f"{figures['idle_grapevine_range_pct'][1]:.2f}), serf "
              f"{figures['idle_serf_pct']:.2f} % ({figures['idle_serf_range_pct'][0]:.2f}-"
              f"{figures['idle_serf_range_pct'][1]:.2f}): {figures['idle_ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
