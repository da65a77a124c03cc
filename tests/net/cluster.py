"""Drive ``grapevine cluster`` processes on 127.0.0.1 and read nodes' APIs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.common import CliError, api_request, host_port
from tests.conftest import ROOT


def grapevine(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, check=False,
        timeout=timeout, cwd=ROOT,
    )


def nodes(directory: Path) -> list[dict[str, Any]]:
    return json.loads((directory / "cluster.json").read_text())["nodes"]


def members(api: str) -> dict[str, str]:
    data = api_request(host_port(api), "GET", "/v1/members", timeout=2.0)
    return {m["name"]: m["state"] for m in data["members"]}


def poll(condition: Callable[[], bool], timeout: float, every: float = 0.05) -> float | None:
    """Check ``condition`` until it holds; the time it took, or None at the deadline."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if condition():
                return time.monotonic() - start
        except CliError:
            pass
        time.sleep(every)
    return None
