//! A local cluster of real node processes on 127.0.0.x, linked over TLS
//! with certificates made by `switchboard admin cluster-certs`.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{NodeProcess, binary};

/// One member: how to (re)start it, and the process while it runs.
pub struct Member {
    pub name: String,
    /// The port of its cluster listener.
    pub cluster_port: u16,
    /// The client-facing certificate all members share.
    pub client_cert: PathBuf,
    pub ip: String,
    pub client_addr: String,
    pub metrics_addr: String,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub process: Option<NodeProcess>,
}

/// The `admin.secret` of test clusters (for `bench steady`'s test users).
pub const ADMIN_SECRET: &str = "local-test-cluster-admin";

/// Nodes `n1..nN` on 127.0.0.1..N.
pub struct LocalCluster {
    pub members: Vec<Member>,
    pub dir: tempfile::TempDir,
}

pub use test_support::free_port;

impl LocalCluster {
    /// Writes certificates and configs for `count` nodes in `islands` (pairs
    /// of 1-based node numbers) and starts them all.
    pub fn start(count: usize, islands: &[(usize, usize)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let names: Vec<String> = (1..=count).map(|i| format!("n{i}")).collect();
        let certs = dir.path().join("certs");
        let status = Command::new(binary())
            .args(["admin", "cluster-certs", "--out"])
            .arg(&certs)
            .args(&names)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run cluster-certs");
        assert!(status.success(), "cluster-certs failed");
        // One client-facing certificate for every node, so that a client
        // trusting it can fail over from node to node.
        let pair = test_support::self_signed(&["localhost"]);
        let client_cert = certs.join("client-facing.pem");
        let client_key = certs.join("client-facing-key.pem");
        std::fs::write(&client_cert, pair.cert_pem).expect("write cert");
        std::fs::write(&client_key, pair.key_pem).expect("write key");

        let ips: Vec<String> = (1..=count).map(|i| format!("127.0.0.{i}")).collect();
        let cluster_addrs: Vec<String> = ips
            .iter()
            .map(|ip| format!("{ip}:{}", free_port(ip)))
            .collect();
        let nodes_toml: Vec<String> = names
            .iter()
            .zip(&cluster_addrs)
            .map(|(n, a)| format!("{{ name = \"{n}\", addr = \"{a}\" }}"))
            .collect();
        let islands_toml: Vec<String> = islands
            .iter()
            .map(|(a, b)| format!("[\"n{a}\", \"n{b}\"]"))
            .collect();

        let mut members = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ip = &ips[i];
            let data_dir = dir.path().join(name);
            std::fs::create_dir_all(&data_dir).expect("data dir");
            let client_addr = format!("{ip}:{}", free_port(ip));
            let metrics_addr = format!("{ip}:{}", free_port(ip));
            let config = format!(
                r#"name = "{name}"
listen = "{client_addr}"
data_dir = "{data}"
fragments = 16

[tls]
cert = "{client_cert}"
key = "{client_key}"

[metrics]
listen = "{metrics_addr}"

[auth]
token_key = "local-test-cluster-token-key-of-32+-chars"
# Lets a test verify one number twice within seconds.
resend_interval_secs = 1

[admin]
mint_test_users = true
secret = "{ADMIN_SECRET}"

[cluster]
listen = "{cluster_addr}"
cookie = "local-test-cluster-cookie"
nodes = [{nodes}]
islands = [{islands}]

[cluster.tls]
cert = "{certs}/{name}.pem"
key = "{certs}/{name}-key.pem"
ca = "{certs}/ca.pem"
"#,
                data = data_dir.display(),
                cluster_addr = cluster_addrs[i],
                nodes = nodes_toml.join(", "),
                islands = islands_toml.join(", "),
                certs = certs.display(),
                client_cert = client_cert.display(),
                ADMIN_SECRET = ADMIN_SECRET,
                client_key = client_key.display(),
            );
            let config_path = dir.path().join(format!("{name}.toml"));
            std::fs::write(&config_path, config).expect("write config");
            let cluster_port = cluster_addrs[i]
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("port");
            members.push(Member {
                name: name.clone(),
                cluster_port,
                client_cert: client_cert.clone(),
                ip: ip.clone(),
                client_addr,
                metrics_addr,
                config_path,
                data_dir,
                process: None,
            });
        }
        let mut cluster = Self { members, dir };
        for i in 0..count {
            cluster.start_member(i);
        }
        cluster
    }

    /// Starts (or restarts) member `i` (0-based) with its config and data.
    pub fn start_member(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut process =
            NodeProcess::start_with_config(&m.config_path, &m.data_dir, &m.client_addr);
        process.ca_path = m.client_cert.clone();
        m.process = Some(process);
    }

    /// SIGKILL member `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(process) = self.members[i].process.take() {
            process.kill9();
        }
    }

    /// A client config for the given members (0-based), in that order.
    pub fn client_config(&self, order: &[usize]) -> client::ClientConfig {
        let servers = order
            .iter()
            .map(|&i| self.members[i].client_addr.clone())
            .collect();
        let ca = std::fs::read(&self.members[0].client_cert).expect("client cert");
        let mut cfg = client::ClientConfig::new(servers, ca);
        cfg.request_timeout = Duration::from_secs(10);
        cfg
    }

    /// The process of member `i`.
    pub fn process(&self, i: usize) -> &NodeProcess {
        self.members[i].process.as_ref().expect("member running")
    }
}

/// `GET /metrics` from a node, or "" if it does not answer.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ =
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

/// The value of a metric line `name{labels} value` (labels must match
/// exactly as rendered, e.g. `peer="n2"`), if present.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls until `member` reports `peers_up` peers up; returns how long it took.
pub fn wait_for_peers_up(member: &Member, peers_up: usize, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let text = scrape(&member.metrics_addr);
        if metric(&text, "switchboard_cluster_peers_up", "") == Some(peers_up as f64) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{} did not see {peers_up} peers up within {within:?}; metrics:\n{}",
            member.name,
            text.lines()
                .filter(|l| l.contains("cluster"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where a member's data lives.
pub fn data_dir(member: &Member) -> &Path {
    &member.data_dir
}

/// Polls until the members together serve `fragments` fragments (every
/// fragment has a primary), and `member` serves at least `own` of them.
pub fn wait_for_serving(members: &[&Member], fragments: usize, within: Duration) {
    let start = Instant::now();
    loop {
        let serving: Vec<f64> = members
            .iter()
            .map(|m| {
                metric(
                    &scrape(&m.metrics_addr),
                    "switchboard_fragments_serving",
                    "",
                )
                .unwrap_or(0.0)
            })
            .collect();
        if serving.iter().sum::<f64>() == fragments as f64 {
            return;
        }
        assert!(
            start.elapsed() < within,
            "fragments not all served within {within:?}: {serving:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many fragments `member` serves now.
pub fn serving(member: &Member) -> f64 {
    metric(
        &scrape(&member.metrics_addr),
        "switchboard_fragments_serving",
        "",
    )
    .unwrap_or(0.0)
}

/// Phone numbers whose fragment (of `fragments`) has `node` as preferred
/// primary in `islands`.
pub fn phones_owned_by(
    node: &str,
    islands: &[(usize, usize)],
    fragments: u16,
    count: usize,
    start: u64,
) -> Vec<client::PhoneNumber> {
    let placement = router::Placement::new(fragments).expect("placement");
    let islands = router::Islands::new(
        islands
            .iter()
            .map(|(a, b)| [format!("n{a}"), format!("n{b}")])
            .collect(),
    );
    (start..)
        .map(|n| client::PhoneNumber::parse(&format!("+1555{n:07}")).expect("phone"))
        .filter(|p| islands.members(placement.fragment_of(p)).map(|m| m.0) == Some(node))
        .take(count)
        .collect()
}

/// Cuts cluster links by dropping their packets on loopback (iptables).
/// A link is opened by the node with the smaller name, from its own
/// address to the other's cluster port, so one pair of rules cuts exactly
/// one link and nothing else (client connections stay). Removed on drop,
/// also when a test fails.
pub struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// Whether this machine lets the test cut links (root and iptables).
    pub fn available() -> bool {
        Command::new("iptables")
            .args(["-w", "-L", "INPUT", "-n"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Cuts member `i` off from every other member, one link after
    /// another with `gap` between two cuts: member `i` then hears the first
    /// peer declared down while the others, already silent, are not yet.
    pub fn isolate(cluster: &LocalCluster, i: usize, gap: std::time::Duration) -> Self {
        let mut partition = Self { rules: Vec::new() };
        for (j, other) in cluster.members.iter().enumerate() {
            if j != i {
                if !partition.rules.is_empty() {
                    std::thread::sleep(gap);
                }
                partition.cut(&cluster.members[i], other);
            }
        }
        partition
    }

    fn cut(&mut self, a: &Member, b: &Member) {
        let (dialer, dialed) = if a.name < b.name { (a, b) } else { (b, a) };
        let port = dialed.cluster_port.to_string();
        let rules = [
            (&dialer.ip, &dialed.ip, "--dport"),
            (&dialed.ip, &dialer.ip, "--sport"),
        ]
        .map(|(from, to, dir)| {
            [
                "INPUT", "-i", "lo", "-s", from, "-d", to, "-p", "tcp", dir, &port, "-j", "DROP",
            ]
            .map(str::to_owned)
            .to_vec()
        });
        for rule in rules {
            let status = Command::new("iptables")
                .args(["-w", "-I"])
                .args(&rule)
                .status()
                .expect("iptables");
            assert!(status.success(), "iptables -I {rule:?}");
            self.rules.push(rule);
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = Command::new("iptables")
                .args(["-w", "-D"])
                .args(rule)
                .status();
        }
    }
}

/// A counter's value on a member (0 if absent).
pub fn counter(member: &Member, name: &str) -> f64 {
    metric(&scrape(&member.metrics_addr), name, "").unwrap_or(0.0)
}
