#!/usr/bin/env bash
# Install grapevine in a virtualenv and run the main job: a local 3-node cluster that
# finds itself by gossip, lists its members, notices a node killed with -9 and sees a
# graceful leave. Everything listens on 127.0.0.1 and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
G=.venv/bin/grapevine
DIR=$(mktemp -d)/cluster
trap '$G cluster down --dir "$DIR" >/dev/null 2>&1 || true' EXIT

echo "== starting 3 nodes (profile local)"
$G cluster up 3 --dir "$DIR" --base-port 0
API=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['nodes'][0]['api'])" "$DIR/cluster.json")

echo; echo "== node-1 sees"
$G members --api "$API"

echo; echo "== kill -9 node-3; waiting until every other node declares it dead"
$G cluster kill node-3 --dir "$DIR"
$G cluster wait node-3 dead --dir "$DIR" --timeout 30

echo; echo "== SIGTERM node-2: it leaves gracefully"
$G cluster kill node-2 --signal TERM --dir "$DIR"
$G cluster wait node-2 left --dir "$DIR" --timeout 30

echo; echo "== node-1 sees"
$G members --api "$API"
echo; $G cluster status --dir "$DIR"
