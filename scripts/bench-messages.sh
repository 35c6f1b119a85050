#!/usr/bin/env bash
# Starts a fresh release node with test users enabled, runs one
# `switchboard bench messages` against it, and stops the node.
# Usage: scripts/bench-messages.sh RATE [DURATION] [USERS] [extra bench flags...]
# BENCH_MODE=groups runs `bench groups` instead (add --groups, --members).
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:?rate}; duration=${2:-10}; users=${3:-1000}; shift $(( $# < 3 ? $# : 3 ))
sb=target/release/switchboard
[ -x "$sb" ] || cargo build --release -p switchboard
# BENCH_NODE_BIN runs another build of the node (e.g. one built with
# --no-default-features) under the same generator.
node_bin=${BENCH_NODE_BIN:-$sb}
# NODE_CPUS / GEN_CPUS (taskset lists, e.g. 0 and 1) pin the node and the
# generator to their own cores, for quoting a capacity.
node_pin=(); gen_pin=()
[ -n "${NODE_CPUS:-}" ] && node_pin=(taskset -c "$NODE_CPUS")
[ -n "${GEN_CPUS:-}" ] && gen_pin=(taskset -c "$GEN_CPUS")
data=$(mktemp -d)
secret=bench-secret-0123456789
SWITCHBOARD_ADMIN__MINT_TEST_USERS=true SWITCHBOARD_ADMIN__SECRET=$secret RUST_LOG=${NODE_LOG:-warn} \
    "${node_pin[@]}" "$node_bin" node --listen 127.0.0.1:0 --data-dir "$data" > "$data/node.out" 2> "$data/node.err" &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; [ -n "${KEEP_NODE_LOG:-}" ] && cat "$data/node.out" "$data/node.err" > "$KEEP_NODE_LOG"; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$data/node.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.* listening on \([^ ]*\) .*/\1/p' "$data/node.out")
"${gen_pin[@]}" "$sb" bench "${BENCH_MODE:-messages}" --server "$addr" --ca "$data/tls/cert.pem" --admin-secret "$secret" \
    --users "$users" --rate "$rate" --duration "$duration" --server-pid "$node" "$@"
# The node's CPU time over the whole run (minting, logins and messages):
# steadier than latency on a shared machine for comparing two builds.
awk -v hz="$(getconf CLK_TCK)" '{printf "node CPU: %.2f s (user %.2f, system %.2f)\n", ($14+$15)/hz, $14/hz, $15/hz}' "/proc/$node/stat"
