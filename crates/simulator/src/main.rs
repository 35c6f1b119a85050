//! Runs many seeds of the simulator: `cargo run --release -p simulator --
//! [SEEDS] [FIRST]` (or `SIM_SEEDS`). Prints the first failing seed with
//! the trace of its last steps and exits 1.

use std::time::Instant;

fn main() {
    // `RUST_LOG=offline_queue=debug` shows the cores' own log lines.
    if std::env::var("RUST_LOG").is_ok() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    let mut args = std::env::args().skip(1);
    let seeds: u64 = args
        .next()
        .or_else(|| std::env::var("SIM_SEEDS").ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let first: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut options = simulator::Options::default();
    if let Some(senders) = std::env::var("SIM_GROUP_SENDERS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        options.group_senders = senders;
    }
    if std::env::var("SIM_PAIR_CUTS").is_ok_and(|v| v == "0") {
        options.pair_cuts = false;
    }
    if let Some(chance) = std::env::var("SIM_MID_COPY_CRASH")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        options.mid_copy_crash = chance;
    }
    if let Some(chance) = std::env::var("SIM_DISK_STALL")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        options.disk_stall = chance;
    }
    if let Some(rows) = std::env::var("SIM_COPY_CHUNK_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        options.copy_chunk_rows = rows;
    }
    if let Some(lines) = std::env::var("SIM_TRACE").ok().and_then(|s| s.parse().ok()) {
        options.trace_lines = lines;
    }
    // SIM_TRACE_WIRE=1: trace every fragment message delivered too.
    options.trace_wire = std::env::var("SIM_TRACE_WIRE").is_ok_and(|v| v == "1");
    // SIM_KEEP_GOING=1: count the failing seeds instead of stopping.
    let keep_going = std::env::var("SIM_KEEP_GOING").is_ok_and(|v| v == "1");
    let mut failed = 0u64;
    let start = Instant::now();
    let mut steps = 0;
    let mut second_copies = 0;
    let mut reordered = 0;
    for seed in first..first + seeds {
        match simulator::run(seed, &options) {
            Ok(summary) => {
                steps += summary.steps;
                second_copies += summary.second_copies;
                reordered += summary.reordered_by_splits;
            }
            Err(failure) if keep_going => {
                eprintln!("seed {seed}: {}", failure.what.lines().next().unwrap_or(""));
                failed += 1;
            }
            Err(failure) => {
                eprintln!("{failure}");
                std::process::exit(1);
            }
        }
        if (seed - first + 1).is_multiple_of(1_000) {
            eprintln!(
                "{} seeds passed ({steps} steps, {:.0?})",
                seed - first + 1,
                start.elapsed()
            );
        }
    }
    if failed > 0 {
        println!("{failed} of {seeds} seeds failed");
        std::process::exit(1);
    }
    println!(
        "{seeds} seeds from {first} passed: {steps} steps in {:.1?}; \
         {second_copies} messages pushed again under a second id (hidden by the client); \
         {reordered} arrived after a later one (acked alone before a take-over)",
        start.elapsed()
    );
}
