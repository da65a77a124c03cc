#!/usr/bin/env bash
# Install grapevine in a virtualenv and run the main job: a local 3-node cluster finds
# itself by gossip; a client (grapevine listen) holds a connection to node-3 as user
# alice; a message sent through node-1 reaches her; node-3 is killed with -9, the cluster
# declares it dead, the client fails over to node-2 and the next message reaches her
# there; node-2 then leaves gracefully. Everything listens on 127.0.0.1 and is stopped
# at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
G=.venv/bin/grapevine
WORK=$(mktemp -d)
DIR=$WORK/cluster
LISTEN_PID=
cleanup() {
  [ -n "$LISTEN_PID" ] && kill "$LISTEN_PID" 2>/dev/null || true
  $G cluster down --dir "$DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT

field() {  # field NODE_INDEX KEY: an address from cluster.json
  .venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['nodes'][int(sys.argv[2])][sys.argv[3]])" "$DIR/cluster.json" "$1" "$2"
}
wait_online_on() {  # wait_online_on NODE: until alice's owner says she is connected there
  for _ in $(seq 200); do
    if $G user alice --api "$API" --json 2>/dev/null | grep -q "\"$1\""; then return 0; fi
    sleep 0.1
  done
  echo "alice never showed up on $1" >&2; return 1
}

echo "== starting 3 nodes (profile local)"
$G cluster up 3 --dir "$DIR" --base-port 0
API=$(field 0 api)

echo; echo "== node-1 sees"
$G members --api "$API"

echo; echo "== alice connects to node-3 (and would fail over to node-2)"
$G listen --client "$(field 2 client)" --client "$(field 1 client)" \
  --token "$($G cluster token alice --dir "$DIR")" --count 2 --timeout 60 \
  > "$WORK/alice.jsonl" 2> "$WORK/alice.log" &
LISTEN_PID=$!
wait_online_on node-3
$G user alice --api "$API"

echo; echo "== send through node-1"
$G send --api "$API" --to alice "hello alice, from node-1"

echo; echo "== kill -9 node-3; waiting until every other node declares it dead"
$G cluster kill node-3 --dir "$DIR"
$G cluster wait node-3 dead --dir "$DIR" --timeout 30
wait_online_on node-2
$G send --api "$API" --to alice "still there? (node-3 is gone)"

wait "$LISTEN_PID"
LISTEN_PID=
echo; echo "== alice's client got (one JSON line per message):"
cat "$WORK/alice.jsonl"
sed 's/^/   /' "$WORK/alice.log"
[ "$(wc -l < "$WORK/alice.jsonl")" -eq 2 ] || { echo "expected 2 messages" >&2; exit 1; }

echo; echo "== SIGTERM node-2: it leaves gracefully"
$G cluster kill node-2 --signal TERM --dir "$DIR"
$G cluster wait node-2 left --dir "$DIR" --timeout 30

echo; echo "== node-1 sees"
$G members --api "$API"
echo; $G cluster status --dir "$DIR"
