//! `switchboard`: the one binary. Parses flags, wires the libraries, reports.
//!
//! `node` runs a node (see `node_cmd`); the client commands (`register`,
//! `verify`, `send`, `recv`, `chat`) live one per module in `commands/` and
//! use the `client` library. Errors print as `switchboard: {err:#}` and exit
//! with status 1; a closed stdout (e.g. `switchboard recv | head`) is success.

#![warn(missing_docs, unreachable_pub)]

mod bench;
mod commands;
mod demo;
// Owned by the node work; its items are `pub` for the day it moves to a library.
#[allow(unreachable_pub)]
mod node_cmd;
mod profile;
mod steady;

use std::process::ExitCode;

// Many small, short-lived allocations per message and per connection: mimalloc
// is faster here than the system allocator and returns freed memory sooner
// (figures in docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// Switchboard: a messaging backend and its command-line client.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    /// Log filter for stderr (e.g. "debug", "client=trace"); default "warn",
    /// "info" for `node`; RUST_LOG is used when this is absent.
    #[arg(long, global = true, value_name = "LEVEL")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node until Ctrl-C or SIGTERM.
    Node(node_cmd::NodeArgs),
    /// A local four-node cluster with simulated users, a node killed and
    /// restarted midway, and the count of lost messages at the end.
    Demo(demo::Args),
    /// Ask for a verification code for a phone number.
    Register(commands::register::Args),
    /// Trade the code for a token and store it in a profile file.
    Verify(commands::verify::Args),
    /// Send one text message; prints its server id once the node acked it.
    Send(commands::send::Args),
    /// Create groups, change their members, roles and names, read them.
    Group(commands::group::Args),
    /// Print (and acknowledge) received messages and receipts.
    Recv(commands::recv::Args),
    /// Interactive terminal chat.
    Chat(commands::chat::Args),
    /// Load generator: connections, messages.
    Bench(bench::Args),
    /// Operator tools (test users for load tests).
    Admin(commands::admin::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The node logs what it does; the demo draws its own view, so only
    // errors; the other commands print their results and warn.
    let default_level = match cli.command {
        Command::Node(_) => "info",
        Command::Demo(_) => "error",
        _ => "warn",
    };
    init_logging(cli.log.as_deref(), default_level);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchboard: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Node(args) => node_cmd::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Register(args) => commands::register::run(args).await,
            Command::Verify(args) => commands::verify::run(args).await,
            Command::Send(args) => commands::send::run(args).await,
            Command::Group(args) => commands::group::run(args).await,
            Command::Recv(args) => commands::recv::run(args).await,
            Command::Chat(args) => commands::chat::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Admin(args) => commands::admin::run(args).await,
        }
    })
}

fn init_logging(level: Option<&str>, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|e| {
            eprintln!("switchboard: bad --log filter {level:?} ({e}); using {default:?}");
            EnvFilter::new(default)
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    // A second initialisation (e.g. by the node) keeps the first.
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "switchboard",
            "--log",
            "debug",
            "send",
            "--profile",
            "p.toml",
            "--to",
            "+15550000002",
            "hello there",
        ])
        .expect("parse");
        assert_eq!(cli.log.as_deref(), Some("debug"));
        let Command::Send(args) = cli.command else {
            panic!("expected send")
        };
        assert_eq!(args.text, "hello there");
        assert_eq!(args.to.as_ref().map(|to| to.as_str()), Some("+15550000002"));
        assert!(
            Cli::try_parse_from(["switchboard", "send", "--profile", "p", "text"]).is_err(),
            "a send names --to or --group"
        );
        let cli = Cli::try_parse_from([
            "switchboard",
            "send",
            "--profile",
            "p",
            "--group",
            "77",
            "hi all",
        ])
        .expect("parse");
        let Command::Send(args) = cli.command else {
            panic!("expected send")
        };
        assert_eq!((args.group, args.to), (Some(77), None));
        let cli = Cli::try_parse_from([
            "switchboard",
            "group",
            "--profile",
            "p",
            "create",
            "team",
            "+15550000002",
        ])
        .expect("parse");
        assert!(matches!(cli.command, Command::Group(_)));

        let cli = Cli::try_parse_from([
            "switchboard",
            "recv",
            "--profile",
            "p.toml",
            "--json",
            "--wait",
            "2.5",
        ])
        .expect("parse");
        let Command::Recv(args) = cli.command else {
            panic!("expected recv")
        };
        assert!(args.json);
        assert_eq!(args.wait, Some(2.5));

        let cli = Cli::try_parse_from([
            "switchboard",
            "register",
            "--server",
            "127.0.0.1:1,127.0.0.1:2",
            "--ca",
            "ca.pem",
            "--phone",
            "+15550000001",
        ])
        .expect("parse");
        let Command::Register(args) = cli.command else {
            panic!("expected register")
        };
        assert_eq!(args.server.servers, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(args.server.server_name, "localhost");

        assert!(
            Cli::try_parse_from([
                "switchboard",
                "register",
                "--server",
                "x:1",
                "--ca",
                "c",
                "--phone",
                "555"
            ])
            .is_err(),
            "phone numbers are checked"
        );
    }
}
