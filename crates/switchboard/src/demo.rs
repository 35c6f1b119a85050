//! `switchboard demo`: a four-node cluster in two islands on 127.0.0.1–4,
//! in a temporary folder, with a few hundred simulated users chatting
//! across nodes. Midway one node is killed (its fragments fail over, its
//! users' clients move to other nodes) and later restarted (it catches up
//! and takes its fragments back). It ends with the count of acknowledged
//! messages lost and duplicated.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use client::Tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::bench::mint::mint_users;
use crate::bench::steady::print_outcome;
use crate::steady::{SteadyConfig, SteadyRun};

/// `switchboard demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Sender → receiver pairs of simulated users.
    #[arg(long, default_value_t = 150)]
    pairs: u32,
    /// Messages per second per pair.
    #[arg(long, default_value_t = 3.0)]
    rate: f64,
    /// Seconds of traffic (the kill comes at a third, the restart at 60 %).
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Nodes to kill -9 and restart, one after another (islands taking
    /// turns), spread evenly over the run; the outcome says how long each
    /// left senders without acks.
    #[arg(long, default_value_t = 1)]
    kills: u32,
    /// Keep the temporary folder (configs, data, logs) afterwards.
    #[arg(long)]
    keep: bool,
}

const NODES: usize = 4;
/// Who is killed, in turn: n3, n1, n4, n2 (the islands take turns, so that
/// a restarted node has caught up before its partner dies).
const VICTIMS: [usize; NODES] = [2, 0, 3, 1];

struct DemoNode {
    name: String,
    client_addr: String,
    metrics_addr: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

fn free_port(ip: &str) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl DemoNode {
    async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(&self.log)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("node")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// Writes certificates and configs for the four nodes into `dir`.
fn prepare(dir: &Path) -> anyhow::Result<(Vec<DemoNode>, PathBuf, String)> {
    let names: Vec<String> = (1..=NODES).map(|i| format!("n{i}")).collect();
    let certs = dir.join("certs");
    cluster::tls::generate(&certs, &names)?;
    let client_tls = node::tls::ensure_certificate(&Default::default(), &certs)?;
    let cookie = random_secret();
    let token_key = random_secret();
    let admin_secret = random_secret();
    let ips: Vec<String> = (1..=NODES).map(|i| format!("127.0.0.{i}")).collect();
    let mut cluster_addrs = Vec::new();
    for ip in &ips {
        cluster_addrs.push(format!("{ip}:{}", free_port(ip)?));
    }
    let nodes_toml = names
        .iter()
        .zip(&cluster_addrs)
        .map(|(n, a)| format!("{{ name = \"{n}\", addr = \"{a}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let ip = &ips[i];
        let client_addr = format!("{ip}:{}", free_port(ip)?);
        let metrics_addr = format!("{ip}:{}", free_port(ip)?);
        let data = dir.join(name);
        let config = format!(
            r#"name = "{name}"
listen = "{client_addr}"
data_dir = "{data}"
fragments = 64

[tls]
cert = "{cert}"
key = "{key}"

[auth]
token_key = "{token_key}"

[admin]
mint_test_users = true
secret = "{admin_secret}"

[metrics]
listen = "{metrics_addr}"

[cluster]
listen = "{cluster_addr}"
cookie = "{cookie}"
nodes = [{nodes_toml}]
islands = [["n1", "n2"], ["n3", "n4"]]

[cluster.tls]
cert = "{certs}/{name}.pem"
key = "{certs}/{name}-key.pem"
ca = "{certs}/ca.pem"
"#,
            data = data.display(),
            cert = client_tls.cert_path.display(),
            key = client_tls.key_path.display(),
            cluster_addr = cluster_addrs[i],
            certs = certs.display(),
        );
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config)?;
        nodes.push(DemoNode {
            name: name.clone(),
            client_addr,
            metrics_addr,
            config: config_path,
            log: dir.join(format!("{name}.log")),
            child: None,
        });
    }
    Ok((nodes, client_tls.cert_path, admin_secret))
}

/// `GET /metrics` of a node ("" if it does not answer).
async fn scrape(addr: &str) -> String {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        std::io::Result::Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(1), fetch)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Fragments served and peers seen, per node (None: not answering).
async fn cluster_state(nodes: &[DemoNode]) -> Vec<Option<(u32, u32)>> {
    let mut states = Vec::new();
    for node in nodes {
        let text = scrape(&node.metrics_addr).await;
        let serving = gauge(&text, "switchboard_fragments_serving");
        let peers = gauge(&text, "switchboard_cluster_peers_up");
        states.push(serving.map(|s| (s as u32, peers.unwrap_or(0.0) as u32)));
    }
    states
}

fn state_line(nodes: &[DemoNode], states: &[Option<(u32, u32)>]) -> String {
    nodes
        .iter()
        .zip(states)
        .map(|(node, state)| match state {
            Some((fragments, peers)) => format!("{} {:>2}f {}p", node.name, fragments, peers),
            None => format!("{}  down ", node.name),
        })
        .collect::<Vec<_>>()
        .join(" │ ")
}

async fn wait_for_mesh(nodes: &[DemoNode], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let states = cluster_state(nodes).await;
        let formed = states
            .iter()
            .all(|s| s.is_some_and(|(_, peers)| peers as usize == NODES - 1));
        let served: u32 = states.iter().flatten().map(|(f, _)| f).sum();
        if formed && served == 64 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster did not form in {within:?}: {}",
            state_line(nodes, &states)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("switchboard-demo-")
        .tempdir()?;
    println!("Switchboard demo: 4 nodes, islands [n1 n2] [n3 n4], 64 fragments");
    println!("  configs, data and node logs in {}", dir.path().display());
    let (mut nodes, ca, admin_secret) = prepare(dir.path())?;
    for node in &mut nodes {
        node.start().await?;
    }
    wait_for_mesh(&nodes, Duration::from_secs(30)).await?;
    println!(
        "  mesh formed: {}",
        state_line(&nodes, &cluster_state(&nodes).await)
    );

    let servers: Vec<String> = nodes.iter().map(|n| n.client_addr.clone()).collect();
    let tls = Tls::from_ca_file(&ca, client::DEFAULT_SERVER_NAME)?;
    let first = proto::PhoneNumber::parse("+15550900000")?;
    let users = mint_users(&servers[0], &tls, &admin_secret, &first, args.pairs * 2).await?;
    let run = SteadyRun::start(SteadyConfig {
        servers,
        ca_pem: std::fs::read(&ca)?,
        server_name: client::DEFAULT_SERVER_NAME.to_owned(),
        users,
        rate_per_pair: args.rate,
        window: 8,
        group_pairs: 0,
    })
    .await?;
    println!(
        "  {} users online, spread over the nodes; {} pairs chatting at {}/s each\n",
        args.pairs * 2,
        args.pairs,
        args.rate
    );
    println!("  time │ msg/s │ ack p99 │    acked │ per node: fragments served, peers up");

    // (kill at, restart at, victim), in seconds from the start.
    let schedule: Vec<(f64, f64, usize)> = if args.kills <= 1 {
        vec![(args.duration / 3.0, args.duration * 0.6, VICTIMS[0])]
    } else {
        let period = args.duration / f64::from(args.kills);
        (0..args.kills as usize)
            .map(|k| {
                let kill = period * (k as f64 + 0.3);
                (kill, kill + period * 0.4, VICTIMS[k % NODES])
            })
            .collect()
    };
    let (mut kills_done, mut restarts_done) = (0, 0);
    let mut last = run.snapshot();
    let end = Instant::now() + Duration::from_secs_f64(args.duration);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = run.snapshot();
        let t = now.elapsed.as_secs_f64();
        if let Some(&(at, _, victim)) = schedule.get(kills_done)
            && t >= at
        {
            kills_done += 1;
            nodes[victim].kill().await;
            println!(
                "  ── kill -9 {}: its island partner takes its fragments over, its users' clients move to other nodes",
                nodes[victim].name
            );
        }
        if let Some(&(_, at, victim)) = schedule.get(restarts_done)
            && restarts_done < kills_done
            && t >= at
        {
            restarts_done += 1;
            nodes[victim].start().await?;
            println!(
                "  ── restart {}: it waits for its partner, catches up from a copy, then gets its fragments back",
                nodes[victim].name
            );
        }
        if (now.elapsed - last.elapsed) < Duration::from_secs(1) {
            continue;
        }
        let rate = (now.acked - last.acked) as f64 / (now.elapsed - last.elapsed).as_secs_f64();
        let states = cluster_state(&nodes).await;
        println!(
            "  {:>4.0}s │ {:>5.0} │ {:>5.0}ms │ {:>8} │ {}",
            t,
            rate,
            now.ack_p99_ms,
            now.acked,
            state_line(&nodes, &states)
        );
        last = now;
    }
    println!("\n  stopping the senders; waiting for every acknowledged message to arrive…");
    let outcome = run.finish(Duration::from_secs(30)).await;
    println!();
    print_outcome(&outcome);
    println!(
        "\n  acknowledged messages lost: {} · duplicated: {}",
        outcome.lost, outcome.duplicated
    );
    for node in &mut nodes {
        node.kill().await;
    }
    if args.keep {
        let kept = dir.keep();
        println!("  kept {}", kept.display());
    }
    anyhow::ensure!(
        outcome.lost == 0 && outcome.duplicated == 0 && outcome.out_of_order == 0,
        "the demo found lost, duplicated or reordered messages"
    );
    Ok(())
}
