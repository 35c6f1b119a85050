#!/usr/bin/env bash
# Rolling upgrade of the compose cluster of deploy/docker-compose.yml to
# IMAGE, one node at a time, without losing an acknowledged message:
#
#   scripts/rolling-upgrade.sh IMAGE
#
# For each node: `switchboard admin drain` over its admin socket (it stops
# taking connections, reports not ready and moves its clients to the other
# nodes), wait until its connections are gone, recreate it on IMAGE (its
# data volume is kept; its island partner serves its fragments meanwhile),
# then wait until it is healthy and every node sees the whole mesh again
# before the next. Run it with the environment the cluster was started
# with (compose needs SWITCHBOARD_TOKEN_KEY, SWITCHBOARD_CLUSTER_COOKIE and
# the other settings of deploy/docker-compose.yml, or it would recreate the
# node with others). Environment of its own:
#   COMPOSE_PROJECT  the compose project (default switchboard)
#   NODES            the nodes, in order (default "n1 n2 n3 n4")
#   DRAIN_WAIT       seconds to wait for a drained node's clients (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:?usage: scripts/rolling-upgrade.sh IMAGE}
project=${COMPOSE_PROJECT:-switchboard}
nodes=${NODES:-n1 n2 n3 n4}
drain_wait=${DRAIN_WAIT:-20}
if docker compose version >/dev/null 2>&1; then
    compose() { docker compose -f deploy/docker-compose.yml -p "$project" "$@"; }
else
    compose() { docker-compose -f deploy/docker-compose.yml -p "$project" "$@"; }
fi
count=$(echo "$nodes" | wc -w)

admin() { # node command... -> the node's JSON reply
    docker exec "$(compose ps -q "$1")" /usr/local/bin/switchboard admin "${@:2}" \
        --socket /var/lib/switchboard/admin.sock --json
}
field() { # python expression over the reply `r`
    python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"
}
whole() { # node -> 0 once it is healthy and sees every other node up
    local c health
    c=$(compose ps -q "$1")
    health=$(docker inspect --format '{{.State.Health.Status}}' "$c" 2>/dev/null || echo none)
    [ "$health" = healthy ] || return 1
    local up
    up=$(admin "$1" status 2>/dev/null | field "sum(1 for _, u in r['cluster']['peers'] if u)") || return 1
    [ "$up" = $((count - 1)) ]
}

for n in $nodes; do
    whole "$n" || { echo "rolling-upgrade: $n is not healthy and meshed; stopping" >&2; exit 1; }
done
for n in $nodes; do
    told=$(admin "$n" drain | field "r['sessions_told']")
    echo "rolling-upgrade: $n draining ($told clients told to move)"
    for _ in $(seq $((drain_wait * 5))); do
        left=$(admin "$n" status | field "r['connections']") || left=?
        [ "$left" = 0 ] && break
        sleep 0.2
    done
    echo "rolling-upgrade: $n: ${left} connections left; recreating it on $image"
    SWITCHBOARD_IMAGE=$image compose up -d --no-deps "$n" >/dev/null 2>&1
    ok=0
    for _ in $(seq 300); do
        if whole "$n"; then ok=1; break; fi
        sleep 0.5
    done
    if [ "$ok" != 1 ]; then
        echo "rolling-upgrade: $n did not come back healthy and meshed on $image" >&2
        compose logs --tail 30 "$n" >&2
        exit 1
    fi
    for other in $nodes; do
        for _ in $(seq 300); do whole "$other" && break; sleep 0.5; done
    done
    echo "rolling-upgrade: $n runs $image"
done
echo "rolling-upgrade: all nodes run $image"
