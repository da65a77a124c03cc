"""``grapevine cluster up|status|kill|restart|down``: a local cluster of node processes.

Each node is a ``grapevine node`` process in its own session, with its log, data dir and
``node.json`` under ``DIR/<name>/``; ``DIR/cluster.json`` remembers them. Ports derive
from ``--base-port P`` (node i: gossip P+4i, client P+4i+1, API P+4i+2, peer links
P+4i+3); ``--base-port 0`` lets every node pick free ports and report them in its
``node.json``. Every node gets the cluster's token secret (``--token-secret``, or a
random one kept in ``cluster.json``); ``grapevine cluster token USER`` mints a client
token with it.

``up --netns`` (root only) runs each node in its own network namespace on a bridge
(``netns.py``), so that nodes look like separate hosts: node i listens on
``198.18.K.(10+i)`` with ports P (gossip), P+1 (client), P+2 (API), P+3 (peer links).
Its API is then reachable beyond loopback, so the cluster makes an API key (kept in
``cluster.json``, given to nodes by environment). ``partition NAME`` cuts a node's link,
``heal NAME`` restores it; ``down`` removes the namespaces and the bridge.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from membership.config import PROFILES

from .common import EXIT_OK, CliError, api_request, host_port, print_json, print_table

if TYPE_CHECKING:  # what a command runs is imported when it runs: --help stays cheap
    from . import netns

STATE_FILE = "cluster.json"
DEFAULT_DIR = ".grapevine/cluster"
SIGNALS = ("KILL", "TERM", "INT", "STOP", "CONT")


def new_secret() -> str:
    """A random secret (192 bits) that is safe to paste after a flag: hex, so it never
    starts with "-", which argparse would take for an option (``--secret -x…`` fails)."""
    import secrets

    return secrets.token_hex(24)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cluster", help="run a local cluster of node processes")
    commands = parser.add_subparsers(title="cluster commands", metavar="COMMAND")
    commands.required = True

    up = commands.add_parser("up", help="start N nodes and wait until they converge")
    up.add_argument("n", type=int, metavar="N", help="number of nodes")
    up.add_argument("--base-port", type=int, default=17946, metavar="P",
                    help="node i uses P+4i (gossip), +1 (client), +2 (API), +3 (peer links); "
                    "0 picks free ports")
    up.add_argument("--profile", default="local", choices=PROFILES)
    up.add_argument("--encrypt", metavar="BASE64KEY", help="gossip key for every node")
    up.add_argument("--token-secret", metavar="SECRET",
                    help="client token secret for every node (default: a random one)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for convergence")
    up.add_argument("--netns", action="store_true",
                    help="each node in its own network namespace on a bridge (root only)")
    up.set_defaults(run=run_up)

    status = commands.add_parser("status", help="each node's process and state")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=run_status)

    kill = commands.add_parser("kill", help="send a signal to one node")
    kill.add_argument("name")
    kill.add_argument("--signal", default="KILL", choices=SIGNALS, type=str.upper)
    kill.set_defaults(run=run_kill)

    restart = commands.add_parser("restart", help="stop one node (if running) and start it again")
    restart.add_argument("name")
    restart.set_defaults(run=run_restart)

    partition = commands.add_parser(
        "partition", help="cut NAME's network link (--netns clusters)")
    partition.add_argument("name")
    partition.set_defaults(run=lambda args: _set_link(args, up=False))

    heal = commands.add_parser("heal", help="restore NAME's network link (--netns clusters)")
    heal.add_argument("name")
    heal.set_defaults(run=lambda args: _set_link(args, up=True))

    wait = commands.add_parser("wait", help="wait until every running node sees NAME in STATE")
    wait.add_argument("name")
    wait.add_argument("state", choices=["alive", "suspect", "dead", "left"])
    wait.add_argument("--timeout", type=float, default=60.0)
    wait.set_defaults(run=run_wait)

    down = commands.add_parser("down", help="stop every node (gracefully, then by force)")
    down.set_defaults(run=run_down)

    token = commands.add_parser("token", help="print a client token for USER (1 hour)")
    token.add_argument("user")
    token.set_defaults(run=run_token)

    for command in (up, status, kill, restart, partition, heal, wait, down, token):
        command.add_argument(
            "--dir", default=DEFAULT_DIR, help=f"cluster dir (default {DEFAULT_DIR})"
        )


# ---- state ----------------------------------------------------------------------------


def _load(directory: str) -> dict[str, Any]:
    path = Path(directory, STATE_FILE)
    if not path.exists():
        raise CliError(f"no cluster in {directory} (start one with: grapevine cluster up N)")
    return json.loads(path.read_text())


def _save(directory: str, state: dict[str, Any]) -> None:
    path = Path(directory, STATE_FILE)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=1))
    temporary.replace(path)


def _running(pid: int | None) -> bool:
    """Whether ``pid`` is one of our node processes (not a recycled pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rpartition(")")[2].split()[0] == "Z"
    ours = b"node" in cmdline and (b"cli" in cmdline or b"grapevine" in cmdline)
    return ours and not zombie


def _exited(pid: int) -> str | None:
    """How our child ``pid`` ended (reaping it), or None while it runs. Asked of the
    kernel, not of /proc: a process that is just exec'ing shows an empty cmdline."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (another `cluster` command started it)
        return None if _running(pid) else "exited"
    if done == 0:
        return None
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _node_file(node: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return json.loads(Path(node["dir"], "node.json").read_text())
    except (OSError, ValueError):
        return None


# ---- starting nodes ---------------------------------------------------------------------


def _lab(state: dict[str, Any]) -> netns.Lab | None:
    from . import netns

    return netns.Lab.from_json(state["netns"]) if state.get("netns") else None


def _node_args(state: dict[str, Any], index: int, seeds: list[str]) -> list[str]:
    base, lab = state["base_port"], _lab(state)
    host = lab.address(index) if lab else "127.0.0.1"
    step = 0 if lab else 4 * index  # in namespaces every node has the same ports
    gossip, client, api, peer = (0, 0, 0, 0) if base == 0 else (
        base + step + offset for offset in range(4))
    name = f"node-{index + 1}"
    args = [
        "node", "--name", name, "--bind", f"{host}:{gossip}", "--api", f"{host}:{api}",
        "--client", f"{host}:{client}", "--peer", f"{host}:{peer}",
        "--profile", state["profile"], "--data-dir", str(Path(state["dir"], name)),
    ]
    for seed in seeds:
        args += ["--join", seed]
    if state.get("encrypt"):
        args += ["--encrypt", state["encrypt"]]
    return args


def _spawn(state: dict[str, Any], node: dict[str, Any]) -> None:
    import subprocess

    from . import netns

    Path(node["dir"]).mkdir(parents=True, exist_ok=True)
    Path(node["dir"], "node.json").unlink(missing_ok=True)
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    # secrets go by environment, not argv, so that ps does not show them
    env = dict(os.environ, PYTHONPATH=path, GRAPEVINE_TOKEN_SECRET=state["token_secret"])
    if state.get("api_key"):
        env["GRAPEVINE_API_KEY"] = state["api_key"]
    lab = _lab(state)
    with open(Path(node["dir"], "node.log"), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", *node["args"]], stdin=subprocess.DEVNULL, stdout=log,
            stderr=log, env=env, start_new_session=True,
            # the cluster command runs no threads, so a pre-exec hook is safe here
            preexec_fn=netns.enter(lab, node["index"]) if lab else None,  # noqa: PLW1509
        )
    node["pid"] = process.pid
    node["gossip"] = node["api"] = node["client"] = None


def _wait_ready(node: dict[str, Any], deadline: float) -> None:
    while time.monotonic() < deadline:
        info = _node_file(node)
        if info is not None and info.get("pid") == node["pid"]:
            node["gossip"], node["api"] = info["gossip"], info["api"]
            node["client"] = info.get("client")
            return
        ended = _exited(node["pid"])
        if ended is not None:
            tail = _log_tail(node)
            raise CliError(f"{node['name']} exited during start-up ({ended}); its log ends:"
                           f"\n{tail}")
        time.sleep(0.02)
    raise CliError(f"{node['name']} did not report ready in time (see {node['dir']}/node.log)")


def _log_tail(node: dict[str, Any], lines: int = 5) -> str:
    try:
        text = Path(node["dir"], "node.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def _print_node(node: dict[str, Any]) -> None:
    print(f"{node['name']:<8} up  pid={node['pid']}  gossip={node['gossip']}  "
          f"client={node['client']}  api={node['api']}", flush=True)


def run_up(args: argparse.Namespace) -> int:
    from . import netns

    if args.n < 1:
        raise CliError("N must be at least 1", 2)
    if args.netns:
        netns.require_root()
    state_path = Path(args.dir, STATE_FILE)
    if state_path.exists():
        existing = json.loads(state_path.read_text())
        alive = [n["name"] for n in existing["nodes"] if _running(n.get("pid"))]
        if alive:
            raise CliError(
                f"a cluster is already running in {args.dir} ({len(alive)} nodes up); "
                "stop it with: grapevine cluster down"
            )
        _remove_lab(existing)  # a lab left behind by a cluster that died
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "dir": str(Path(args.dir).resolve()), "profile": args.profile,
        "base_port": args.base_port, "encrypt": args.encrypt,
        "token_secret": args.token_secret or new_secret(), "nodes": [],
    }
    if args.netns:
        lab = netns.plan(args.n)
        state.update(netns=lab.to_json(), api_key=new_secret())
        _save(args.dir, state)  # before building: `down` can clean up whatever happens
        netns.build(lab)
        print(f"netns: bridge {lab.bridge} {lab.gateway}/24, {args.n} namespaces "
              f"gv{lab.tag}-*; API key in {state_path}")
    try:
        _start_all(state, args)
    except BaseException:
        # nothing half-started is left behind: no nodes, no namespaces, no state
        _stop(state["nodes"])
        _remove_lab(state)
        state_path.unlink(missing_ok=True)
        raise
    return EXIT_OK


def _start_all(state: dict[str, Any], args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.timeout
    first = _new_node(state, 0, [])
    _spawn(state, first)
    _save(args.dir, state)
    _wait_ready(first, deadline)
    _print_node(first)
    others = [_new_node(state, i, [first["gossip"]]) for i in range(1, args.n)]
    for node in others:
        _spawn(state, node)
    _save(args.dir, state)
    for node in others:
        _wait_ready(node, deadline)
        _print_node(node)
    _save(args.dir, state)
    started = time.monotonic()
    names = {n["name"] for n in state["nodes"]}
    while not _converged(state, names):
        if time.monotonic() > deadline:
            raise CliError(
                f"not converged after {args.timeout:.0f} s; see: grapevine cluster status"
            )
        time.sleep(0.02)
    print(f"converged: {len(names)}/{len(names)} nodes alive "
          f"({time.monotonic() - started:.2f} s after the last node was up)")


def _remove_lab(state: dict[str, Any]) -> None:
    from . import netns

    lab = _lab(state)
    if lab:
        netns.teardown(lab)


def _members(state: dict[str, Any], node: dict[str, Any]) -> dict[str, str]:
    """NAME -> state as ``node`` sees the cluster (raises CliError when it cannot answer)."""
    data = api_request(host_port(node["api"]), "GET", "/v1/members", timeout=2.0,
                       api_key=state.get("api_key"))
    return {m["name"]: m["state"] for m in data["members"]}


def _new_node(state: dict[str, Any], index: int, seeds: list[str]) -> dict[str, Any]:
    name = f"node-{index + 1}"
    node = {"name": name, "index": index, "dir": str(Path(state["dir"], name)),
            "args": _node_args(state, index, seeds), "pid": None}
    state["nodes"].append(node)
    return node


def _converged(state: dict[str, Any], names: set[str]) -> bool:
    for node in state["nodes"]:
        try:
            view = _members(state, node)
        except CliError:
            return False
        if {name for name, seen in view.items() if seen == "alive"} != names:
            return False
    return True


# ---- inspecting and stopping --------------------------------------------------------------


def _cluster_view(state: dict[str, Any]) -> dict[str, str]:
    for node in state["nodes"]:
        if _running(node.get("pid")) and node.get("api"):
            try:
                return _members(state, node)
            except CliError:
                continue
    return {}


def run_status(args: argparse.Namespace) -> int:
    from . import netns

    state = _load(args.dir)
    view, lab = _cluster_view(state), _lab(state)
    rows = []
    for node in state["nodes"]:
        process = "running" if _running(node.get("pid")) else "stopped"
        row = {"name": node["name"], "pid": node.get("pid"), "process": process,
               "gossip": node.get("gossip"), "client": node.get("client"),
               "api": node.get("api"), "state": view.get(node["name"], "unknown")}
        if lab:
            up = netns.link_up(lab, node["index"])
            row["link"] = "missing" if up is None else "up" if up else "cut"
        rows.append(row)
    if args.json:
        print_json({"nodes": rows})
    else:
        keys = ("name", "pid", "process", "gossip", "client", "api", "state") + (
            ("link",) if lab else ())
        print_table([k.upper() for k in keys], [[str(r[k]) for k in keys] for r in rows])
    return EXIT_OK


def _find(state: dict[str, Any], name: str) -> dict[str, Any]:
    for node in state["nodes"]:
        if node["name"] == name:
            return node
    names = ", ".join(n["name"] for n in state["nodes"])
    raise CliError(f"no node named {name!r} (nodes: {names})", 2)


def run_kill(args: argparse.Namespace) -> int:
    state = _load(args.dir)
    node = _find(state, args.name)
    if not _running(node.get("pid")):
        raise CliError(f"{args.name} is not running")
    os.kill(node["pid"], getattr(signal, f"SIG{args.signal}"))
    print(f"sent SIG{args.signal} to {args.name} (pid {node['pid']})")
    return EXIT_OK


def _stop(nodes: list[dict[str, Any]], grace: float = 10.0) -> None:
    live = [n for n in nodes if _running(n.get("pid"))]
    for node in live:
        os.kill(node["pid"], signal.SIGCONT)
        os.kill(node["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_running(n["pid"]) for n in live) and time.monotonic() < deadline:
        time.sleep(0.05)
    for node in live:
        if _running(node["pid"]):
            os.kill(node["pid"], signal.SIGKILL)


def _set_link(args: argparse.Namespace, *, up: bool) -> int:
    from . import netns

    state = _load(args.dir)
    node = _find(state, args.name)
    lab = _lab(state)
    if lab is None:
        raise CliError("this cluster was not started with --netns: there is no link to "
                       f"{'heal' if up else 'cut'}", 2)
    netns.require_root()
    netns.set_link(lab, node["index"], up)
    print(f"{'healed' if up else 'cut'} the link of {args.name} ({lab.address(node['index'])})")
    return EXIT_OK


def run_restart(args: argparse.Namespace) -> int:
    state = _load(args.dir)
    node = _find(state, args.name)
    _stop([node])
    # back through any running node (node-1 started without seeds: it had none then)
    seeds = [n["gossip"] for n in state["nodes"]
             if n is not node and n.get("gossip") and _running(n.get("pid"))]
    node["args"] = _node_args(state, node["index"], seeds)
    _spawn(state, node)
    _save(args.dir, state)
    _wait_ready(node, time.monotonic() + 30)
    _save(args.dir, state)
    _print_node(node)
    return EXIT_OK


def run_wait(args: argparse.Namespace) -> int:
    state = _load(args.dir)
    _find(state, args.name)
    observers = [n for n in state["nodes"] if n["name"] != args.name and _running(n.get("pid"))]
    started = time.monotonic()
    while True:
        views = {}
        for node in observers:
            try:
                views[node["name"]] = _members(state, node)
            except CliError:
                continue
        if views and all(view.get(args.name) == args.state for view in views.values()):
            took = time.monotonic() - started
            print(f"{len(views)} nodes see {args.name} {args.state} (waited {took:.2f} s)")
            return EXIT_OK
        if time.monotonic() - started > args.timeout:
            seen = {name: view.get(args.name, "absent") for name, view in views.items()}
            raise CliError(
                f"{args.name} not {args.state} everywhere after {args.timeout:.0f} s: {seen}"
            )
        time.sleep(0.05)


def run_down(args: argparse.Namespace) -> int:
    state = _load(args.dir)
    live = [n for n in state["nodes"] if _running(n.get("pid"))]
    _stop(state["nodes"])
    _remove_lab(state)
    Path(args.dir, STATE_FILE).unlink(missing_ok=True)
    print(f"stopped {len(live)} node{'s' if len(live) != 1 else ''} (logs kept in {args.dir})")
    return EXIT_OK


def run_token(args: argparse.Namespace) -> int:
    state = _load(args.dir)
    try:
        from node.token import mint

        print(mint(state["token_secret"].encode(), args.user, time.time()))
    except ValueError as exc:
        raise CliError(f"USER: {exc}", 2) from None
    return EXIT_OK
