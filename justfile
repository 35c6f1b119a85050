# Switchboard tasks (https://github.com/casey/just). Every recipe is a plain
# cargo command, so nothing here is required.

# Run a node on the embedded defaults.
node:
    cargo run --release -p switchboard -- node

# The whole test suite (what CI runs).
test:
    cargo test --workspace

# Formatting and lints, as required before a commit.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The storage engine comparison behind the choice of redb.
bench-storage:
    cd benches/storage-engines && cargo run --release
