"""Layering rules (STYLE.md Part B), enforced on the source like trio's test_exports.

* pure cores never import trio, socket, time, asyncio or sqlite3 (``SHELLS`` and every
  module of ``cli/`` may);
* imports point left only: gossip <- membership <- node <- cli;
* no import circle anywhere in the project (the four packages, tests/ and scripts/);
* inside a package imports are relative (``from .ring import HashRing``), across
  packages absolute (``from membership.member import Member``), and a relative import
  never leaves its package;
* msgpack is imported by the two codecs alone: gossip/codec.py (memberlist's dialect)
  and node/frames.py (our client and peer frames);
* no dead entries: every file these lists name exists and needs its entry.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("gossip", "membership", "node", "cli")
#: modules that own I/O, besides all of cli/
SHELLS = {
    "gossip/transport.py", "membership/service.py", "membership/refusals.py",
    "node/app.py", "node/node.py", "node/peer_link.py",
    "node/store.py", "node/http_api.py", "node/delivery.py", "node/clients.py",
    "node/fanout.py", "node/webhook.py", "node/handover.py",
    "node/resume.py", "node/slices.py", "node/stalls.py", "node/client_accept.py",
    "node/client_conn.py", "node/client_server.py", "node/redelivery.py",
    "node/replication.py", "node/client_out.py", "node/peer_opening.py",
}
#: packages whose every module is a shell
SHELL_PACKAGES = ("cli",)
FORBIDDEN_IN_CORES = {"trio", "socket", "time", "asyncio", "sqlite3"}
#: memberlist's old msgpack dialect, and our own protocols' frames
CODECS = {"gossip/codec.py", "node/frames.py"}
RANK = {name: index for index, name in enumerate(PACKAGES)}


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """The absolute imports of ``path`` (relative ones stay inside its package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported(path)}


def is_shell(relative: str) -> bool:
    return relative in SHELLS or relative.split("/", 1)[0] in SHELL_PACKAGES


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_respects_the_layers(path: Path) -> None:
    relative = str(path.relative_to(ROOT))
    package = relative.split("/", 1)[0]
    names = imported(path)
    if not is_shell(relative):
        forbidden = roots(path) & FORBIDDEN_IN_CORES
        assert not forbidden, f"{relative} is a pure core but imports {forbidden}"
    for name in names:
        root = name.split(".", 1)[0]
        if root in RANK and RANK[root] > RANK[package]:
            raise AssertionError(f"{relative} imports {name}: imports point left only")
    if relative not in CODECS:
        assert "msgpack" not in roots(path), f"{relative} imports msgpack; only {CODECS} may"


def test_modules_stay_small() -> None:
    too_big = {
        str(p.relative_to(ROOT)): n for p in modules()
        if (n := len(p.read_text().splitlines())) > 520
    }
    assert not too_big, f"split these by concern: {too_big}"


# ---- relative inside a package, absolute across ---------------------------------------


def _relative_target(path: Path, level: int, module: str | None) -> str | None:
    """The dotted module a relative import names, or None if it climbs out of the tree."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts = parts[:-1]  # the package the module is in (``__init__`` included)
    if level - 1 > len(parts) - 1:  # climbing above the top-level package
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_inside_a_package_absolute_across(path: Path) -> None:
    relative = str(path.relative_to(ROOT))
    package = relative.split("/", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), relative)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom):
            target = _relative_target(path, node.level, node.module)
            assert target is not None and target.split(".")[0] == package, (
                f"{relative}:{node.lineno} a relative import leaves {package}/: "
                "import other packages absolutely"
            )
            continue
        else:
            continue
        for name in names:
            assert name.split(".")[0] != package, (
                f"{relative}:{node.lineno} imports {name}: inside {package}/ import relatively"
            )


# ---- no import circle ----------------------------------------------------------------
#
# Every import counts: at module level, inside a function, and under ``TYPE_CHECKING``.
# A function-level import only defers a circle to run time, and a type-only one still
# means neither module can be read or changed without the other (issue #18 counted
# app.py <-> http_api.py through the ``Node`` type as one). A package's ``__init__.py``
# is a module of its own (they are empty).


def _project_modules() -> dict[str, Path]:
    """Dotted name -> file, for the packages, tests/ and scripts/ (which run with
    scripts/ on ``sys.path``, so a script is named by its stem)."""
    found: dict[str, Path] = {}
    for top in (*PACKAGES, "tests"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in (ROOT / "scripts").glob("*.py"):
        found[path.stem] = path
    return found


def _imports_of(path: Path) -> Iterator[tuple[str, int]]:
    """(dotted module name as written or resolved, line) for every import in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _relative_target(path, node.level, node.module)
                if base is None:
                    continue
            else:
                base = node.module or ""
            yield base, node.lineno
            for alias in node.names:  # ``from . import lzw`` names the module lzw
                yield f"{base}.{alias.name}", node.lineno


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {project module it imports: line of the import}."""
    project = _project_modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in project.items():
        edges = graph.setdefault(name, {})
        for target, line in _imports_of(path):
            if target in project and target != name:
                edges.setdefault(target, line)
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[module] = min(low[module], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_circles_are_found() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"e": 1}}
    assert circles(graph) == [["a", "b", "c"]]


def test_project_imports_are_seen() -> None:
    graph = import_graph()
    assert "node.config" in graph["node.app"]  # relative, module level
    assert "node.node" in graph["node.http_api"]  # under TYPE_CHECKING
    assert "gossip.lzw" in graph["gossip.codec"]  # ``from . import lzw``
    assert "bench_push" in graph["attack_gossip"]  # scripts/ is on a script's path


def test_no_import_circle() -> None:
    graph = import_graph()
    found = []
    for component in circles(graph):
        found.append("; ".join(
            f"{module} imports " + ", ".join(
                f"{target} (line {line})" for target, line in graph[module].items()
                if target in component
            )
            for module in component
        ))
    assert not found, "import circles:\n" + "\n".join(found)


# ---- no dead entries -------------------------------------------------------------------


@pytest.mark.parametrize("listed", sorted(SHELLS | CODECS))
def test_listed_files_exist(listed: str) -> None:
    assert (ROOT / listed).is_file(), f"{listed} is gone: drop it from tests/test_layering.py"


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_listed_shells_need_it(shell: str) -> None:
    path = ROOT / shell
    assert path.is_file(), f"{shell} is gone: drop it from SHELLS"
    assert roots(path) & FORBIDDEN_IN_CORES, (
        f"{shell} imports none of {sorted(FORBIDDEN_IN_CORES)}: it is a pure core, drop it "
        "from SHELLS"
    )


@pytest.mark.parametrize("package", SHELL_PACKAGES)
def test_shell_packages_need_it(package: str) -> None:
    assert any(roots(p) & FORBIDDEN_IN_CORES for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_listed_codecs_need_it(codec: str) -> None:
    path = ROOT / codec
    assert path.is_file(), f"{codec} is gone: drop it from CODECS"
    assert "msgpack" in roots(path), (
        f"{codec} does not import msgpack: drop it from CODECS"
    )
