#!/usr/bin/env bash
# Starts a fresh release node with test users enabled, runs one
# `switchboard bench connections` against it, and stops the node.
# Usage: scripts/bench-connections.sh COUNT [extra bench flags...]
# The node is one process: here it can hold at most its open-file limit.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:?count}; shift
sb=target/release/switchboard
[ -x "$sb" ] || cargo build --release -p switchboard
# BENCH_NODE_BIN runs another build of the node (e.g. one built with
# --no-default-features) under the same generator.
node_bin=${BENCH_NODE_BIN:-$sb}
data=$(mktemp -d)
secret=bench-secret-0123456789
ulimit -n "$(ulimit -Hn)"
SWITCHBOARD_ADMIN__MINT_TEST_USERS=true SWITCHBOARD_ADMIN__SECRET=$secret RUST_LOG=warn \
    SWITCHBOARD_LIMITS__MAX_CONNECTIONS=1000000 \
    "$node_bin" node --listen 127.0.0.1:0 --data-dir "$data" > "$data/node.out" 2> "$data/node.err" &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$data/node.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.* listening on \([^ ]*\) .*/\1/p' "$data/node.out")
started=$(awk '{print $14+$15}' "/proc/$node/stat")
"$sb" bench connections --server "$addr" --ca "$data/tls/cert.pem" --admin-secret "$secret" \
    --count "$count" --server-pid "$node" "$@"
# The node's CPU time from start-up on (minting, TLS logins, holding):
# steadier than the connect rate, which the generator paces.
awk -v hz="$(getconf CLK_TCK)" -v started="$started" -v n="$count" \
    '{t = ($14 + $15 - started) / hz; printf "node CPU: %.2f s, %.0f µs per connection\n", t, t / n * 1e6}' \
    "/proc/$node/stat"
