# Switchboard tasks (https://github.com/casey/just). Every recipe is a plain
# cargo command, so nothing here is required.

# Run a node on the embedded defaults.
node:
    cargo run --release -p switchboard -- node

# The whole test suite (what CI runs).
test:
    cargo test --workspace

# Container tests of the cluster: the compose cluster of deploy/ under
# steady load through a docker kill, a 30 s network disconnect and a
# rolling restart (needs a Docker engine; says SKIPPED without one).
cluster-test:
    CLUSTER_TEST_PROFILE=release scripts/cluster-test.sh

# The local four-node demo.
demo:
    cargo run --release -p switchboard -- demo

# Formatting and lints, as required before a commit.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The storage engine comparison behind the choice of redb.
bench-storage:
    cd benches/storage-engines && cargo run --release

# The load-generator figures in docs/benchmarks.md (release build).
bench:
    cargo build --release -p switchboard
    scripts/bench-connections.sh 19500 --rate 3000 --source-ips 127.0.0.2-127.0.0.20 --hold 10
    scripts/bench-messages.sh 18000 10 1000
    scripts/bench-messages.sh 9000 10 1000

# Criterion micro-benchmarks.
bench-micro:
    cargo bench -p proto --bench codec
    cargo bench -p offline-queue --bench mailbox
    cargo bench -p node --bench send_path
