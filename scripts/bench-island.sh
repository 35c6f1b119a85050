#!/usr/bin/env bash
# The cost of replication: a fresh two-node island (n1 on 127.0.0.1, n2 on
# 127.0.0.2, release build) with every test user connected to n1, so that
# half of the mailboxes are owned by n2 (forwarded) and every write is
# copied to the partner before its ack. Runs one `bench messages` against
# n1. Compare with scripts/bench-messages.sh (one node) at the same rate.
# Usage: scripts/bench-island.sh RATE [DURATION] [USERS] [ACK_POLICY] [extra bench flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:?rate}; duration=${2:-10}; users=${3:-1000}; policy=${4:-replicated}
shift $(( $# < 4 ? $# : 4 ))
sb=target/release/switchboard
[ -x "$sb" ] || cargo build --release -p switchboard
dir=$(mktemp -d)
secret=bench-secret-0123456789
"$sb" admin cluster-certs --out "$dir/certs" n1 n2 >/dev/null
port() { python3 -c "import socket; s=socket.socket(); s.bind(('$1', 0)); print(s.getsockname()[1])"; }
c1=127.0.0.1:$(port 127.0.0.1); c2=127.0.0.2:$(port 127.0.0.2)
for i in 1 2; do
    cluster_addr=$([ $i = 1 ] && echo "$c1" || echo "$c2")
    cat > "$dir/n$i.toml" <<TOML
name = "n$i"
listen = "127.0.0.$i:0"
data_dir = "$dir/n$i"
[auth]
token_key = "bench-island-token-key-0123456789abcdef"
[admin]
mint_test_users = true
secret = "$secret"
[cluster]
listen = "$cluster_addr"
cookie = "bench-island-cookie-0123"
ack_policy = "$policy"
nodes = [{ name = "n1", addr = "$c1" }, { name = "n2", addr = "$c2" }]
islands = [["n1", "n2"]]
[cluster.tls]
cert = "$dir/certs/n$i.pem"
key = "$dir/certs/n$i-key.pem"
ca = "$dir/certs/ca.pem"
TOML
done
RUST_LOG=warn "$sb" node --config "$dir/n1.toml" > "$dir/n1.out" 2> "$dir/n1.err" &
n1=$!
RUST_LOG=warn "$sb" node --config "$dir/n2.toml" > "$dir/n2.out" 2> "$dir/n2.err" &
n2=$!
trap 'kill $n1 $n2 2>/dev/null; wait $n1 $n2 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$dir/n1.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.* listening on \([^ ]*\) .*/\1/p' "$dir/n1.out")
# The island members wait for each other before serving.
sleep 2
"$sb" bench messages --server "$addr" --ca "$dir/n1/tls/cert.pem" --admin-secret "$secret" \
    --users "$users" --rate "$rate" --duration "$duration" --server-pid "$n1" "$@"
