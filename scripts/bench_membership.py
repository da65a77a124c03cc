"""Membership benchmark: grapevine next to Debian's serf, real processes on 127.0.0.1.

For each system (grapevine, serf), profile (local, lan) and size N (5, 10, 20):

* join convergence: N agents start unjoined; every agent is told to join the first at
  the same moment; the time until every agent lists all N alive;
* detection: kill -9 a random agent (not the first); the time until every survivor
  lists it dead/failed; median of --kills runs (the victim is restarted between runs);

  serf is timed by polling its RPC (cheap for a Go agent) every 10 ms (join) or 50 ms
  (detection). Polling a Python node's HTTP API that often would steal the CPU it is
  being timed on, so grapevine is timed from the millisecond timestamps of its own
  ``member_joined``/``member_failed`` log lines, polling only every 250 ms to know when
  to stop;
* gossip bytes per node per second and idle CPU per node, over --idle seconds after the
  cluster has settled (payload bytes of every UDP datagram and TCP segment to or from a
  gossip port, read from a raw socket on lo, so both systems are counted the same way);

and at N=10 per system and profile:

* starvation: one agent SIGSTOPped/SIGCONTed with jitter for --starve seconds (stopped
  200-600 ms, running 50-300 ms); false suspicions = suspicions the agents *originate*
  against any other agent (grapevine: ``member_suspected ... accuser=<self>``; serf:
  memberlist's ``Suspect X has failed, no acks received``), and false deaths;
* loss: 10 % of gossip datagrams dropped on arrival (iptables ``statistic``) for --loss
  seconds; the same counts.

Needs root (raw socket, iptables) and ``serf`` on PATH. Every process it starts is
stopped by pid; every iptables rule it adds is removed. Prints a table and writes JSON.

    python scripts/bench_membership.py --out runs/membership.json
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack  # serf's RPC protocol (the benchmark's client, not our wire codec)
from bench_push import machine as push_machine
from bench_push import machine_line

ROOT = Path(__file__).resolve().parent.parent
PORT_BASE = 23000
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# ---- agents -------------------------------------------------------------------------


class Agent:
    system = ""

    def __init__(self, index: int, profile: str, logdir: Path) -> None:
        self.index = index
        self.name = f"{self.system[:2]}{index}"
        self.profile = profile
        self.gossip_port = PORT_BASE + index
        self.control_port = PORT_BASE + 100 + index
        self.log = logdir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def gossip(self) -> str:
        return f"127.0.0.1:{self.gossip_port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True,
            )

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            os.kill(self.process.pid, sig)
            self.process.wait(15)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICK

    def members(self) -> dict[str, str]:
        raise NotImplementedError

    def join(self, address: str) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.name in self.members():
                    return
            except (OSError, ValueError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not come up; see {self.log}")


class Grapevine(Agent):
    system = "grapevine"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "cli", "node", "--name", self.name, "--bind", self.gossip,
            "--api", f"127.0.0.1:{self.control_port}", "--profile", self.profile,
        ]

    def _request(self, method: str, path: str, body: object = None) -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=5)
        try:
            data = None if body is None else json.dumps(body)
            connection.request(method, path, body=data)
            response = connection.getresponse()
            return json.loads(response.read())
        finally:
            connection.close()

    def members(self) -> dict[str, str]:
        return {m["name"]: m["state"] for m in self._request("GET", "/v1/members")["members"]}

    _EVENT = re.compile(r"^ts=(\S+)Z .* event=member_(\w+) member=(\S+)", re.M)

    def last_event(self, kinds: set[str], members: set[str], since: float) -> float | None:
        """Wall time of the latest ``member_<kind>`` line about one of ``members``."""
        latest = None
        for match in self._EVENT.finditer(self.log.read_text(errors="replace")):
            if match.group(2) in kinds and match.group(3) in members:
                moment = datetime.datetime.fromisoformat(match.group(1) + "+00:00").timestamp()
                if moment >= since and (latest is None or moment > latest):
                    latest = moment
        return latest

    def join(self, address: str) -> None:
        self._request("POST", "/v1/join", {"addresses": [address]})


class Serf(Agent):
    system = "serf"
    _STATE = {"alive": "alive", "failed": "dead", "left": "left", "leaving": "alive"}

    def __init__(self, index: int, profile: str, logdir: Path) -> None:
        super().__init__(index, profile, logdir)
        self._rpc: socket.socket | None = None
        self._unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
        self._seq = 0
        self._lock = threading.Lock()

    def command(self) -> list[str]:
        return [
            "serf", "agent", f"-node={self.name}", f"-bind={self.gossip}",
            f"-rpc-addr=127.0.0.1:{self.control_port}", f"-profile={self.profile}",
            "-log-level=info",
        ]

    def start(self) -> None:
        self._rpc = None
        super().start()

    def _call(self, command: str, body: object | None, has_reply: bool) -> Any:
        with self._lock:
            if self._rpc is None:
                self._rpc = socket.create_connection(("127.0.0.1", self.control_port), timeout=5)
                self._unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
                self._send("handshake", {"Version": 1})
                self._read()
            self._send(command, body)
            header = self._read()
            if header.get("Error"):
                raise OSError(header["Error"])
            return self._read() if has_reply else None

    def _send(self, command: str, body: object | None) -> None:
        assert self._rpc is not None
        self._seq += 1
        data = msgpack.packb({"Command": command, "Seq": self._seq}, use_bin_type=False)
        if body is not None:
            data += msgpack.packb(body, use_bin_type=False)
        self._rpc.sendall(data)

    def _read(self) -> Any:
        assert self._rpc is not None
        while True:
            for item in self._unpacker:
                return item
            chunk = self._rpc.recv(65536)
            if not chunk:
                self._rpc = None
                raise OSError("serf RPC closed")
            self._unpacker.feed(chunk)

    def members(self) -> dict[str, str]:
        try:
            reply = self._call("members", None, True)
        except OSError:
            self._rpc = None
            raise
        return {m["Name"]: self._STATE.get(m["Status"], m["Status"]) for m in reply["Members"]}

    def join(self, address: str) -> None:
        self._call("join", {"Existing": [address], "Replay": False}, True)


# ---- measuring --------------------------------------------------------------------------


def watch(
    agents: list[Agent], done: Callable[[dict[str, str]], bool], timeout: float,
    interval: float = 0.02, start: float | None = None,
) -> dict[str, float | None]:
    """Each agent polled by its own thread until ``done(its members)``; seconds per agent
    since ``start`` (default: now)."""
    start = time.monotonic() if start is None else start
    results: dict[str, float | None] = {}

    def poll(agent: Agent) -> None:
        while time.monotonic() - start < timeout:
            try:
                if done(agent.members()):
                    results[agent.name] = time.monotonic() - start
                    return
            except (OSError, ValueError, http.client.HTTPException):
                pass
            time.sleep(interval)
        results[agent.name] = None

    threads = [threading.Thread(target=poll, args=(agent,)) for agent in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def timed(
    agents: list[Agent], done: Callable[[dict[str, str]], bool], *, kinds: set[str],
    members: set[str], since_wall: float, since_mono: float, interval: float,
) -> list[float | None]:
    """Per agent, seconds from the start until ``done`` held for it.

    Grapevine agents: from their logs (the last matching event), after a lazy watch;
    serf agents: from the watch itself.
    """
    lazy = any(isinstance(agent, Grapevine) for agent in agents)
    seen = watch(agents, done, 60, 0.25 if lazy else interval, since_mono)
    times: list[float | None] = []
    for agent in agents:
        if seen[agent.name] is None:
            times.append(None)
        elif isinstance(agent, Grapevine):
            moment = agent.last_event(kinds, members - {agent.name}, since_wall)
            times.append(None if moment is None else moment - since_wall)
        else:
            times.append(seen[agent.name])
    return times


class Sniffer:
    """Payload bytes of UDP and TCP traffic to or from the gossip ports, on lo."""

    def __init__(self, ports: set[int]) -> None:
        self.ports = ports
        self.bytes = 0
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.counting = False

    def __enter__(self) -> Sniffer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            if address[2] != socket.PACKET_OUTGOING or not self.counting:
                continue
            ip = frame[14:]
            if len(ip) < 20 or ip[0] >> 4 != 4:
                continue
            header = (ip[0] & 0x0F) * 4
            total = struct.unpack_from(">H", ip, 2)[0]
            protocol = ip[9]
            if protocol not in (6, 17) or len(ip) < header + 4:
                continue
            sport, dport = struct.unpack_from(">HH", ip, header)
            if sport not in self.ports and dport not in self.ports:
                continue
            if protocol == 17:
                self.bytes += total - header - 8
            else:
                self.bytes += total - header - (ip[header + 12] >> 4) * 4


SUSPECT_PATTERNS = {
    "grapevine": re.compile(r"event=member_suspected member=(\S+) .*accuser=(\S+)"),
    "serf": re.compile(r"memberlist: Suspect (\S+) has failed"),
}
FAILED_PATTERNS = {
    "grapevine": re.compile(r"event=member_failed member=(\S+)"),
    "serf": re.compile(r"EventMemberFailed: (\S+)"),
}


def accusations(agents: list[Agent], offsets: dict[str, int], spared: str) -> tuple[int, int]:
    """(suspicions originated against others than ``spared``, deaths of others) in logs."""
    suspicions = deaths = 0
    for agent in agents:
        with open(agent.log, "rb") as log:
            log.seek(offsets[agent.name])
            text = log.read().decode(errors="replace")
        for match in SUSPECT_PATTERNS[agent.system].finditer(text):
            own = agent.system == "serf" or match.group(2) == agent.name
            if own and match.group(1) != spared:
                suspicions += 1
        failed = FAILED_PATTERNS[agent.system].finditer(text)
        deaths += sum(1 for match in failed if match.group(1) != spared)
    return suspicions, deaths


def log_offsets(agents: list[Agent]) -> dict[str, int]:
    return {a.name: a.log.stat().st_size if a.log.exists() else 0 for a in agents}


# ---- scenarios ----------------------------------------------------------------------------


def bring_up(kind: type[Agent], profile: str, n: int, logdir: Path) -> tuple[list[Agent], float]:
    agents = [kind(i, profile, logdir) for i in range(n)]
    for agent in agents:
        agent.start()
    for agent in agents:
        agent.wait_ready()
    names = {a.name for a in agents}
    start_wall, start = time.time(), time.monotonic()
    threads = [threading.Thread(target=a.join, args=(agents[0].gossip,)) for a in agents[1:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times = timed(
        agents, lambda m: {k for k, v in m.items() if v == "alive"} == names,
        kinds={"joined", "recovered"}, members=names, since_wall=start_wall, since_mono=start,
        interval=0.01,
    )
    if any(t is None for t in times):
        raise RuntimeError(f"{kind.system} {profile} N={n} did not converge: {times}")
    return agents, max(t for t in times if t is not None)


def idle(agents: list[Agent], seconds: float) -> tuple[float, float]:
    """(gossip bytes per node per second, CPU % of one core per node)."""
    with Sniffer({a.gossip_port for a in agents}) as sniffer:
        cpu0 = [a.cpu_seconds() for a in agents]
        sniffer.counting = True
        time.sleep(seconds)
        sniffer.counting = False
        cpu1 = [a.cpu_seconds() for a in agents]
    n = len(agents)
    per_node_cpu = statistics.mean(b - a for a, b in zip(cpu0, cpu1, strict=True)) / seconds
    return sniffer.bytes / n / seconds, 100 * per_node_cpu


def detection(agents: list[Agent], kills: int, rng: random.Random) -> list[float]:
    names = {a.name for a in agents}
    results = []
    for _ in range(kills):
        victim = rng.choice(agents[1:])
        survivors = [a for a in agents if a is not victim]
        killed_wall, killed = time.time(), time.monotonic()
        victim.stop(signal.SIGKILL)
        times = timed(
            survivors, lambda m, v=victim.name: m.get(v) == "dead", kinds={"failed"},
            members={victim.name}, since_wall=killed_wall, since_mono=killed, interval=0.05,
        )
        done = [t for t in times if t is not None]
        results.append(max(done) if len(done) == len(survivors) else float("nan"))
        victim.start()
        victim.wait_ready()
        victim.join(agents[0].gossip)
        watch(agents, lambda m: {k for k, v in m.items() if v == "alive"} == names, 60, 0.05)
        time.sleep(2.0)  # let the rejoin's gossip settle before the next kill
    return results


def starve(agents: list[Agent], seconds: float, rng: random.Random) -> tuple[int, int]:
    victim = agents[len(agents) // 2]
    offsets = log_offsets(agents)
    assert victim.process is not None
    pid = victim.process.pid
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(rng.uniform(0.2, 0.6))
        os.kill(pid, signal.SIGCONT)
        time.sleep(rng.uniform(0.05, 0.3))
    time.sleep(3.0)
    return accusations(agents, offsets, victim.name)


def lossy(agents: list[Agent], seconds: float, probability: float) -> tuple[int, int]:
    ports = f"{PORT_BASE}:{PORT_BASE + 99}"
    rule = ["INPUT", "-i", "lo", "-p", "udp", "--dport", ports, "-m", "statistic",
            "--mode", "random", "--probability", str(probability), "-j", "DROP"]
    offsets = log_offsets(agents)
    subprocess.run(["iptables", "-A", *rule], check=True)
    try:
        time.sleep(seconds)
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)
    time.sleep(3.0)
    return accusations(agents, offsets, spared="")


# ---- main -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The push benchmark's machine facts, and the serf it compares against."""
    serf = subprocess.run(["serf", "version"], capture_output=True, text=True, check=False)
    return {**push_machine(), "serf": serf.stdout.splitlines()[0] if serf.stdout else "absent"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", default="grapevine,serf")
    parser.add_argument("--profiles", default="local,lan")
    parser.add_argument("--sizes", default="5,10,20")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=32.0)
    parser.add_argument("--starve", type=float, default=60.0)
    parser.add_argument("--loss", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="runs/membership.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    info = machine()
    print(machine_line(info), flush=True)
    kinds = {"grapevine": Grapevine, "serf": Serf}
    results: list[dict[str, Any]] = []
    logroot = Path(tempfile.mkdtemp(prefix="bench-membership-"))
    for profile in args.profiles.split(","):
        for n in (int(x) for x in args.sizes.split(",")):
            for system in args.systems.split(","):
                logdir = logroot / f"{system}-{profile}-{n}"
                logdir.mkdir()
                agents: list[Agent] = []
                try:
                    agents, join_time = bring_up(kinds[system], profile, n, logdir)
                    time.sleep(args.settle)
                    bytes_per_s, cpu = idle(agents, args.idle)
                    detections = detection(agents, args.kills, rng)
                    row: dict[str, Any] = {
                        "system": system, "profile": profile, "n": n, "join_s": join_time,
                        "detect_median_s": statistics.median(detections),
                        "detect_s": detections, "bytes_per_node_s": bytes_per_s,
                        "cpu_pct_per_node": cpu,
                    }
                    if n == 10:
                        row["starve_false_suspicions"], row["starve_false_deaths"] = starve(
                            agents, args.starve, rng
                        )
                        if args.loss > 0:
                            row["loss_false_suspicions"], row["loss_false_deaths"] = lossy(
                                agents, args.loss, 0.10
                            )
                    results.append(row)
                    print(json.dumps(row), flush=True)
                finally:
                    for agent in agents:
                        agent.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    print()
    print(f"{'system':<10} {'profile':<7} {'N':>3} {'join s':>7} {'detect s':>9} "
          f"{'B/s/node':>9} {'CPU %':>6} {'starve susp/dead':>17} {'loss susp/dead':>15}")
    for row in results:
        starve_cell = (f"{row['starve_false_suspicions']}/{row['starve_false_deaths']}"
                       if "starve_false_suspicions" in row else "")
        loss_cell = (f"{row['loss_false_suspicions']}/{row['loss_false_deaths']}"
                     if "loss_false_suspicions" in row else "")
        print(f"{row['system']:<10} {row['profile']:<7} {row['n']:>3} {row['join_s']:>7.2f} "
              f"{row['detect_median_s']:>9.2f} {row['bytes_per_node_s']:>9.0f} "
              f"{row['cpu_pct_per_node']:>6.2f} {starve_cell:>17} {loss_cell:>15}")
    print(f"logs: {logroot}")


if __name__ == "__main__":
    main()
