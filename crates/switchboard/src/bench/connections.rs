//! `bench connections`: many idle, logged-in connections.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use client::{Connection, Tls};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::report::{cpu_seconds, rss_bytes, slope, write_json};
use super::{AGENT, REQUEST_TIMEOUT, Target, mint::mint_users, raise_file_limit};

/// `bench connections`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: Target,
    /// Connections to open.
    #[arg(long)]
    count: u32,
    /// New connections per second, in total.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Source addresses to spread connections over, as FIRST-LAST
    /// (e.g. 127.0.0.2-127.0.0.40) or a comma-separated list.
    #[arg(long, value_name = "RANGE")]
    source_ips: Option<String>,
    /// Connections per worker process (each process may hold ~20,000 files).
    #[arg(long, default_value_t = 15_000)]
    per_worker: u32,
    /// Seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// The node's process id, to read its resident memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// What a worker is told on its standard input (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
struct WorkerPlan {
    server: String,
    ca: PathBuf,
    server_name: String,
    tokens: Vec<String>,
    sources: Vec<IpAddr>,
    rate: f64,
}

/// What a worker reports on its standard output (JSON lines).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct WorkerProgress {
    established: u64,
    failed: u64,
    closed: u64,
    done: bool,
}

/// The figures of a run (`--json`).
#[derive(Debug, Serialize)]
struct ConnectionsReport {
    requested: u32,
    established: u64,
    failed: u64,
    closed_during_hold: u64,
    workers: usize,
    sources: usize,
    connect_seconds: f64,
    connect_rate_per_s: f64,
    server_rss_baseline_bytes: Option<u64>,
    server_rss_bytes: Option<u64>,
    rss_per_connection_bytes: Option<f64>,
    rss_slope_bytes_per_connection: Option<f64>,
    rss_samples: Vec<(u64, u64)>,
    /// The server's CPU while it only held the connections (heartbeats,
    /// timers), in cores.
    server_cpu_while_held_cores: Option<f64>,
}

fn parse_sources(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    if let Some((first, last)) = spec.split_once('-') {
        let first: Ipv4Addr = first.trim().parse().context("first source address")?;
        let last: Ipv4Addr = last.trim().parse().context("last source address")?;
        let (a, b) = (u32::from(first), u32::from(last));
        if b < a || b - a > 65_536 {
            bail!("source range {spec} is empty or too large");
        }
        return Ok((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))).collect());
    }
    spec.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("source address {s:?}"))
        })
        .collect()
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.count == 0 || args.rate <= 0.0 || args.per_worker == 0 {
        bail!("--count, --rate and --per-worker must be positive");
    }
    let sources = match &args.source_ips {
        Some(spec) => parse_sources(spec)?,
        None => Vec::new(),
    };
    let tls = args.target.tls()?;
    eprintln!("minting {} test users…", args.count);
    let users = mint_users(
        &args.target.server,
        &tls,
        &args.target.admin_secret,
        &args.target.first,
        args.count,
    )
    .await?;
    let baseline = args.server_pid.and_then(rss_bytes);

    let chunks: Vec<Vec<String>> = users
        .chunks(args.per_worker as usize)
        .map(|c| c.iter().map(|(_, t)| t.clone()).collect())
        .collect();
    let workers = chunks.len();
    let exe = std::env::current_exe().context("locating the switchboard binary")?;
    let progress = Arc::new(std::sync::Mutex::new(vec![
        WorkerProgress::default();
        workers
    ]));
    let mut children = Vec::new();
    for (index, tokens) in chunks.into_iter().enumerate() {
        let mut child = tokio::process::Command::new(&exe)
            .args(["bench", "connections-worker"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        // Each worker gets its own slice of the source addresses when there
        // are enough, so no two processes compete for one address's ports.
        let worker_sources = if sources.len() >= workers {
            sources
                .iter()
                .skip(index)
                .step_by(workers)
                .copied()
                .collect()
        } else {
            sources.clone()
        };
        let plan = WorkerPlan {
            server: args.target.server.clone(),
            ca: args.target.ca.clone(),
            server_name: args.target.server_name.clone(),
            tokens,
            sources: worker_sources,
            rate: args.rate / workers as f64,
        };
        let mut line = serde_json::to_vec(&plan)?;
        line.push(b'\n');
        let mut stdin = child.stdin.take().context("worker stdin")?;
        stdin
            .write_all(&line)
            .await
            .context("instructing a worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(p) = serde_json::from_str::<WorkerProgress>(&line)
                    && let Ok(mut all) = progress.lock()
                {
                    all[index] = p;
                }
            }
        });
        children.push((child, stdin));
    }

    let total = |progress: &std::sync::Mutex<Vec<WorkerProgress>>| {
        progress.lock().map_or(WorkerProgress::default(), |all| {
            all.iter()
                .fold(WorkerProgress::default(), |a, p| WorkerProgress {
                    established: a.established + p.established,
                    failed: a.failed + p.failed,
                    closed: a.closed + p.closed,
                    done: false,
                })
        })
    };
    let bar = indicatif::ProgressBar::new(u64::from(args.count));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} connected {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let deadline = started
        + Duration::from_secs_f64(f64::from(args.count) / args.rate * 3.0)
        + REQUEST_TIMEOUT;
    let mut samples: Vec<(u64, u64)> = baseline.map(|b| vec![(0, b)]).unwrap_or_default();
    let step = (u64::from(args.count) / 10).max(1);
    let mut next_sample = step;
    let connected = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = total(&progress);
        bar.set_position(now.established);
        bar.set_message(format!("({} failed)", now.failed));
        if let Some(pid) = args.server_pid
            && now.established >= next_sample
        {
            if let Some(rss) = rss_bytes(pid) {
                samples.push((now.established, rss));
            }
            next_sample = now.established + step;
        }
        if now.established + now.failed >= u64::from(args.count) || Instant::now() > deadline {
            break now;
        }
    };
    let connect_seconds = started.elapsed().as_secs_f64();
    bar.finish();
    eprintln!(
        "holding {} connections for {} s…",
        connected.established, args.hold
    );
    let hold_cpu_start = args.server_pid.and_then(cpu_seconds);
    let hold_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let held_cpu = match (hold_cpu_start, args.server_pid.and_then(cpu_seconds)) {
        (Some(start), Some(end)) => {
            Some((end - start).max(0.0) / hold_started.elapsed().as_secs_f64().max(1e-9))
        }
        _ => None,
    };
    let held = total(&progress);
    let final_rss = args.server_pid.and_then(rss_bytes);
    if let Some(rss) = final_rss {
        samples.push((held.established.saturating_sub(held.closed), rss));
    }
    for (mut child, stdin) in children {
        drop(stdin);
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    let points: Vec<(f64, f64)> = samples.iter().map(|&(c, r)| (c as f64, r as f64)).collect();
    let report = ConnectionsReport {
        requested: args.count,
        established: connected.established,
        failed: connected.failed,
        closed_during_hold: held.closed,
        workers,
        sources: sources.len(),
        connect_seconds,
        connect_rate_per_s: connected.established as f64 / connect_seconds.max(1e-9),
        server_rss_baseline_bytes: baseline,
        server_rss_bytes: final_rss,
        rss_per_connection_bytes: match (baseline, final_rss) {
            (Some(b), Some(f)) if connected.established > 0 => {
                Some((f.saturating_sub(b)) as f64 / connected.established as f64)
            }
            _ => None,
        },
        rss_slope_bytes_per_connection: slope(&points),
        rss_samples: samples,
        server_cpu_while_held_cores: held_cpu,
    };
    println!(
        "connections: {} requested, {} established, {} failed, {} closed while held",
        report.requested, report.established, report.failed, report.closed_during_hold
    );
    println!(
        "connect rate: {:.0}/s over {:.1} s with {} worker(s), {} source address(es)",
        report.connect_rate_per_s,
        report.connect_seconds,
        report.workers,
        report.sources.max(1)
    );
    if let (Some(rss), Some(per)) = (report.server_rss_bytes, report.rss_per_connection_bytes) {
        println!(
            "server RSS: {:.1} MiB, {:.0} bytes per connection (slope {:.0})",
            rss as f64 / 1048576.0,
            per,
            report.rss_slope_bytes_per_connection.unwrap_or(f64::NAN)
        );
    }
    if let Some(cores) = report.server_cpu_while_held_cores {
        println!(
            "server CPU while holding them: {:.2} % of a core",
            cores * 100.0
        );
    }
    if let Some(path) = &args.target.json {
        write_json(path, &report)?;
    }
    if report.established == 0 {
        bail!("no connection could be established");
    }
    Ok(())
}

/// A worker process: reads its plan from stdin, opens and holds connections,
/// reports progress on stdout, and closes everything when stdin closes.
pub(crate) async fn worker() -> anyhow::Result<()> {
    let limit = raise_file_limit();
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .await
        .context("reading the plan")?;
    let plan: WorkerPlan = serde_json::from_str(&line).context("parsing the plan")?;
    if plan.tokens.len() as u64 + 64 > limit {
        tracing::warn!(
            limit,
            wanted = plan.tokens.len(),
            "open-file limit below the plan"
        );
    }
    let tls = Tls::from_ca_file(&plan.ca, &plan.server_name)?;
    let established = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel::<Connection>();

    let opener = {
        let (established, failed) = (Arc::clone(&established), Arc::clone(&failed));
        tokio::spawn(async move {
            let interval = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
            let started = tokio::time::Instant::now();
            for (i, token) in plan.tokens.into_iter().enumerate() {
                tokio::time::sleep_until(started + interval.mul_f64(i as f64)).await;
                let source =
                    (!plan.sources.is_empty()).then(|| plan.sources[i % plan.sources.len()]);
                let (server, tls, held) = (plan.server.clone(), tls.clone(), held_tx.clone());
                let (established, failed) = (Arc::clone(&established), Arc::clone(&failed));
                tokio::spawn(async move {
                    let opened =
                        Connection::connect_from(&server, source, &tls, AGENT, REQUEST_TIMEOUT)
                            .await;
                    let login = match opened {
                        Ok((conn, _pushes)) => conn.login(&token).await.map(|_| conn),
                        Err(e) => Err(e),
                    };
                    match login {
                        Ok(conn) => {
                            established.fetch_add(1, Ordering::Relaxed);
                            let _ = held.send(conn);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "connection failed");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        })
    };

    let mut held: Vec<Connection> = Vec::new();
    let mut report = tokio::time::interval(Duration::from_millis(250));
    let mut done_reading = String::new();
    let mut stdout = tokio::io::stdout();
    loop {
        tokio::select! {
            Some(conn) = held_rx.recv() => held.push(conn),
            _ = report.tick() => {
                let progress = WorkerProgress {
                    established: established.load(Ordering::Relaxed),
                    failed: failed.load(Ordering::Relaxed),
                    closed: held.iter().filter(|c| c.disconnect_reason().is_some()).count() as u64,
                    done: false,
                };
                let mut line = serde_json::to_vec(&progress)?;
                line.push(b'\n');
                if stdout.write_all(&line).await.is_err() {
                    break;
                }
                let _ = stdout.flush().await;
            }
            read = stdin.read_line(&mut done_reading) => {
                if matches!(read, Ok(0) | Err(_)) {
                    break;
                }
            }
        }
    }
    opener.abort();
    for conn in &held {
        conn.close();
    }
    Ok(())
}
