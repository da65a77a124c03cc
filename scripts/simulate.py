"""Simulated clusters: join convergence and crash detection, in virtual and wall time.

    python scripts/simulate.py --sizes 50,200,1000 --seeds 1,2 [--profile lan] [--loss 0.0]

For each size and seed: N nodes start within ``--spread`` seconds, each joining the first;
the run reports when every node lists all N alive (virtual seconds), then crashes one
node and reports when every survivor lists it dead, with the wall time both took and the
datagrams simulated. Deterministic: the same seed prints the same virtual figures and
trace digest.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gossip.simnet import LinkProfile
from membership.config import MembershipConfig
from membership.member import MemberState
from membership.sim import SimCluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="50,200,1000")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--profile", default="lan", choices=["lan", "local", "wan"])
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--spread", type=float, default=2.0, help="start-up spread, seconds")
    parser.add_argument("--timeout", type=float, default=120.0, help="virtual seconds per phase")
    args = parser.parse_args()
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor())
    print(f"machine: cpu={cpu} cores={os.cpu_count()} python={platform.python_version()}")
    print(f"{'N':>5} {'seed':>4} {'converge (virtual s)':>21} {'detect (virtual s)':>19} "
          f"{'wall s':>7} {'datagrams':>10}  digest")
    for n in (int(x) for x in args.sizes.split(",")):
        for seed in (int(x) for x in args.seeds.split(",")):
            started = time.perf_counter()
            cluster = SimCluster(
                n, seed, config=lambda name: MembershipConfig.for_profile(args.profile, name),
                link=LinkProfile(loss=args.loss), start_spread=args.spread,
            )
            check = max(0.05, n / 2000)
            joined = cluster.run_until_true(cluster.converged, args.timeout, check)
            converge = None if joined is None else joined - args.spread
            cluster.run_until(cluster.now + 3)
            victim = n // 2
            crashed = cluster.now
            cluster.crash(victim)
            seen = cluster.run_until_true(
                lambda v=victim, c=cluster: c.everyone_sees(f"node-{v}", [MemberState.DEAD]),
                args.timeout, check,
            )
            detect = None if seen is None else seen - crashed
            wall = time.perf_counter() - started
            print(f"{n:>5} {seed:>4} {_fmt(converge):>21} {_fmt(detect):>19} {wall:>7.1f} "
                  f"{cluster.packets:>10}  {cluster.trace_digest()[:12]}", flush=True)


def _fmt(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
