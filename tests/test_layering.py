"""Layering rules (STYLE.md Part B), enforced on the source like trio's test_exports.

* pure cores never import trio, socket, time, asyncio or sqlite3;
* imports point left only: gossip <- membership <- node <- cli;
* msgpack is imported by the two codecs alone: gossip/codec.py (memberlist's dialect)
  and node/frames.py (our client and peer frames).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("gossip", "membership", "node", "cli")
SHELLS = {
    "gossip/transport.py", "membership/service.py", "membership/refusals.py",
    "node/app.py", "node/node.py", "node/peer_link.py",
    "node/store.py", "node/http_api.py", "node/delivery.py", "node/clients.py",
    "node/fanout.py", "node/webhook.py", "node/store_requests.py", "node/handover.py",
    "node/resume.py", "node/slices.py", "node/stalls.py", "node/client_accept.py",
    "node/client_conn.py", "node/redelivery.py", "node/replication.py",
    "node/client_out.py", "node/peer_opening.py",
}
SHELL_PATTERNS = ("node/", "cli/")  # node/*_server.py and everything in cli/
FORBIDDEN_IN_CORES = {"trio", "socket", "time", "asyncio", "sqlite3"}
#: memberlist's old msgpack dialect, and our own protocols' frames
CODECS = {"gossip/codec.py", "node/frames.py"}
RANK = {name: index for index, name in enumerate(PACKAGES)}


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def is_shell(relative: str) -> bool:
    if relative in SHELLS or relative.startswith("cli/"):
        return True
    return relative.startswith("node/") and relative.endswith("_server.py")


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_respects_the_layers(path: Path) -> None:
    relative = str(path.relative_to(ROOT))
    package = relative.split("/", 1)[0]
    names = imported(path)
    roots = {name.split(".")[0] for name in names}
    if not is_shell(relative):
        forbidden = roots & FORBIDDEN_IN_CORES
        assert not forbidden, f"{relative} is a pure core but imports {forbidden}"
    for name in names:
        root = name.split(".", 1)[0]
        if root in RANK and RANK[root] > RANK[package]:
            raise AssertionError(f"{relative} imports {name}: imports point left only")
    if relative not in CODECS:
        assert "msgpack" not in roots, f"{relative} imports msgpack; only {CODECS} may"


def test_modules_stay_small() -> None:
    too_big = {
        str(p.relative_to(ROOT)): n for p in modules()
        if (n := len(p.read_text().splitlines())) > 520
    }
    assert not too_big, f"split these by concern: {too_big}"
