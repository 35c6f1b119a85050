//! `switchboard chat`: an interactive line-mode chat.
//!
//! Lines typed are sent to the current peer (`/to NUMBER` chooses it) or
//! group (`/group ID`).
//! Incoming messages are printed with their sender and time, acknowledged,
//! and marked read. Own messages are numbered `#n` and followed by their
//! ticks as they come: `✓` when the node stored it, `✓✓` when the peer's
//! device has it, `✓✓ read` when the peer read it.
//!
//! One task owns the screen: sends and acks run in spawned tasks that report
//! back over a channel, so a slow node never blocks typing or incoming lines.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use client::{Client, Event, GroupId, MessageId, PresenceStatus, ReceiptKind, SendAck};
use proto::PhoneNumber;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

/// Arguments of `switchboard chat`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Profile file written by `switchboard verify`.
    #[arg(long, value_name = "FILE", env = "SWITCHBOARD_PROFILE")]
    pub(crate) profile: PathBuf,
    /// Start talking to this number (same as typing `/to NUMBER`).
    #[arg(long)]
    pub(crate) to: Option<PhoneNumber>,
}

/// Reports from spawned tasks to the screen.
enum Report {
    /// A send finished.
    Sent {
        number: u32,
        group: Option<GroupId>,
        result: client::Result<SendAck>,
    },
    /// An ack (and read receipt) finished, with a warning if it failed.
    Acked(Option<String>),
    /// Something went wrong.
    Warn(String),
    /// Something to show as it is.
    Show(String),
}

/// What a typed line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Input {
    Quit,
    Help,
    To(PhoneNumber),
    Group(GroupId),
    /// Who has received and read own group message `#n`.
    Info(u32),
    BadCommand(String),
    Text(String),
    Nothing,
}

fn parse_line(line: &str) -> Input {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Input::Nothing;
    }
    let Some(command) = trimmed.strip_prefix('/') else {
        return Input::Text(line.trim_end_matches(['\r', '\n']).to_owned());
    };
    let mut words = command.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("quit" | "exit" | "q"), None, _) => Input::Quit,
        (Some("help" | "h" | "?"), None, _) => Input::Help,
        (Some("to"), Some(number), None) => match PhoneNumber::parse(number) {
            Ok(peer) => Input::To(peer),
            Err(e) => Input::BadCommand(e.to_string()),
        },
        (Some("to"), _, _) => Input::BadCommand("usage: /to +15551234567".to_owned()),
        (Some("group"), Some(id), None) => match id.parse() {
            Ok(group) => Input::Group(group),
            Err(_) => Input::BadCommand(format!("{id:?} is not a group id")),
        },
        (Some("group"), _, _) => Input::BadCommand("usage: /group ID".to_owned()),
        (Some("info"), Some(number), None) => match number.trim_start_matches('#').parse() {
            Ok(number) => Input::Info(number),
            Err(_) => Input::BadCommand(format!("{number:?} is not a message number")),
        },
        (Some("info"), _, _) => Input::BadCommand("usage: /info N (a group message #N)".to_owned()),
        _ => Input::BadCommand(format!("unknown command {trimmed:?}; /help lists them")),
    }
}

const HELP: &str = "\
  /to NUMBER   talk to NUMBER (E.164, e.g. +15551234567)
  /group ID    talk to group ID (see `switchboard group create`)
  /info N      who has received and read your group message #N
  /quit        leave (also Ctrl-D)
  any other line is sent to the current peer
  ticks: ✓ stored by the node, ✓✓ delivered to the peer, ✓✓ read
  (in a group: once every member has it, or has read it)";

/// What reading a shown message tells: its sender (1:1), or its group
/// up to its position.
enum ReadMark {
    User(PhoneNumber),
    Group(GroupId, client::Position),
}

/// Who typed lines go to.
#[derive(Debug, Clone)]
enum Talk {
    User(PhoneNumber),
    Group(GroupId),
}

impl std::fmt::Display for Talk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Talk::User(peer) => write!(f, "{peer}"),
            Talk::Group(group) => write!(f, "group {group}"),
        }
    }
}

struct Screen {
    me: PhoneNumber,
    peer: Option<Talk>,
    /// Everyone talked to in this run: they may see this user's presence
    /// and typing (uploaded as the contact list).
    contacts: std::collections::BTreeSet<PhoneNumber>,
    next_number: u32,
    /// Own messages by server id → their number on screen and, for a
    /// group message, its group.
    numbers: HashMap<MessageId, (u32, Option<GroupId>)>,
    /// Sends and acks not finished yet; waited for on the way out.
    in_flight: usize,
    /// Whether the first `Connected` (the login of `connect`) was seen.
    logged_in_before: bool,
    client: Client,
    reports: mpsc::UnboundedSender<Report>,
}

fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (_profile, client, mut events) = super::connect(&args.profile).await?;
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let mut screen = Screen {
        me: client.user().clone(),
        peer: None,
        contacts: std::collections::BTreeSet::new(),
        next_number: 1,
        numbers: HashMap::new(),
        in_flight: 0,
        logged_in_before: false,
        client: client.clone(),
        reports: reports_tx,
    };
    say(format_args!(
        "Logged in as {}. /to NUMBER chooses who to talk to, /help for more.",
        screen.me
    ));
    if let Some(peer) = args.to {
        screen.choose(peer);
    }

    let (lines_tx, mut lines) = mpsc::channel::<String>(16);
    tokio::spawn(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            if lines_tx.send(line).await.is_err() {
                break;
            }
        }
    });

    let outcome = loop {
        tokio::select! {
            line = lines.recv() => match line.as_deref().map(parse_line) {
                None | Some(Input::Quit) => break Ok(()),
                Some(input) => screen.input(input),
            },
            event = events.recv() => match event {
                Some(event) => {
                    if let Some(reason) = screen.event(event) {
                        break Err(anyhow::anyhow!("disconnected for good: {reason}"));
                    }
                }
                None => break Err(anyhow::anyhow!("the client stopped")),
            },
            Some(report) = reports.recv() => screen.report(report),
        }
    };

    // Let the messages already typed reach the node (bounded).
    if screen.in_flight > 0 && outcome.is_ok() {
        say("… finishing sends and acknowledgements");
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while screen.in_flight > 0 {
                match reports.recv().await {
                    Some(report) => screen.report(report),
                    None => break,
                }
            }
        })
        .await;
        if waited.is_err() {
            say("… gave up waiting; what was not acknowledged will come again");
        }
    }
    client.close().await;
    outcome
}

impl Screen {
    fn choose(&mut self, peer: PhoneNumber) {
        say(format_args!("— now talking to {peer}"));
        self.contacts.insert(peer.clone());
        self.peer = Some(Talk::User(peer));
        self.subscribe();
    }

    fn choose_group(&mut self, group: GroupId) {
        say(format_args!("— now talking to group {group}"));
        self.peer = Some(Talk::Group(group));
    }

    /// Shares this user's presence with its contacts, then watches the
    /// peer's (shown if the peer shares it with this user).
    fn subscribe(&self) {
        let Some(Talk::User(peer)) = self.peer.clone() else {
            return;
        };
        let client = self.client.clone();
        let reports = self.reports.clone();
        let contacts: Vec<PhoneNumber> = self.contacts.iter().cloned().collect();
        tokio::spawn(async move {
            if let Err(e) = client.set_contacts(contacts).await {
                let _ = reports.send(Report::Warn(format!("contacts not shared: {e}")));
            }
            if let Err(e) = client.subscribe_presence(vec![peer]).await {
                let _ = reports.send(Report::Warn(format!("presence unavailable: {e}")));
            }
        });
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Quit | Input::Nothing => {}
            Input::Help => say(HELP),
            Input::To(peer) => self.choose(peer),
            Input::Group(group) => self.choose_group(group),
            Input::Info(number) => self.info(number),
            Input::BadCommand(message) => say(format_args!("! {message}")),
            Input::Text(text) => {
                let Some(peer) = self.peer.clone() else {
                    say("! choose someone first: /to +15551234567");
                    return;
                };
                let number = self.next_number;
                self.next_number += 1;
                self.in_flight += 1;
                say(format_args!("  #{number} → {peer}"));
                let client = self.client.clone();
                let reports = self.reports.clone();
                tokio::spawn(async move {
                    let (result, group) = match peer {
                        Talk::User(peer) => (client.send(&peer, text.into_bytes()).await, None),
                        Talk::Group(group) => (
                            client.send_group(group, text.into_bytes()).await,
                            Some(group),
                        ),
                    };
                    let _ = reports.send(Report::Sent {
                        number,
                        group,
                        result,
                    });
                });
            }
        }
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Sent {
                number,
                group,
                result,
            } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                match result {
                    Ok(ack) => {
                        self.numbers.insert(ack.msg_id, (number, group));
                        say(format_args!("  #{number} ✓"));
                    }
                    Err(e) => say(format_args!("! #{number} not sent: {e}")),
                }
            }
            Report::Acked(warning) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                if let Some(message) = warning {
                    say(format_args!("! {message}"));
                }
            }
            Report::Warn(message) => say(format_args!("! {message}")),
            Report::Show(text) => say(text),
        }
    }

    /// Asks who has received and read own group message `#number`.
    fn info(&mut self, number: u32) {
        let Some((msg_id, group)) = self
            .numbers
            .iter()
            .find(|(_, sent)| sent.0 == number)
            .and_then(|(msg_id, sent)| Some((*msg_id, sent.1?)))
        else {
            say(format_args!(
                "! #{number} is not a group message sent in this chat"
            ));
            return;
        };
        let client = self.client.clone();
        let reports = self.reports.clone();
        tokio::spawn(async move {
            let text = match client.group_message_info(group, msg_id).await {
                Ok(members) if members.is_empty() => format!("  #{number}: read by everyone"),
                Ok(members) => {
                    let mut text = format!("  #{number}:");
                    for (member, state) in members {
                        let state = match state {
                            None => "✓",
                            Some(ReceiptKind::Delivered) => "✓✓",
                            Some(ReceiptKind::Read) => "✓✓ read",
                        };
                        text.push_str(&format!("\n    {member} {state}"));
                    }
                    text
                }
                Err(e) => format!("! no info for #{number}: {e}"),
            };
            let _ = reports.send(Report::Show(text));
        });
    }

    /// Acknowledges a shown message and marks it read, in the background.
    fn acknowledge_read(&mut self, msg_id: MessageId, mark: ReadMark) {
        let client = self.client.clone();
        let reports = self.reports.clone();
        self.in_flight += 1;
        tokio::spawn(async move {
            let done = async {
                client.ack(vec![msg_id]).await?;
                match mark {
                    ReadMark::User(from) => client.read(&from, vec![msg_id]).await,
                    ReadMark::Group(group, position) => client.read_group(group, position).await,
                }
            };
            let warning = done.await.err().map(|e| format!("cannot acknowledge: {e}"));
            let _ = reports.send(Report::Acked(warning));
        });
    }

    /// Acknowledges a shown entry in the background.
    fn acknowledge(&mut self, id: MessageId) {
        let client = self.client.clone();
        let reports = self.reports.clone();
        self.in_flight += 1;
        tokio::spawn(async move {
            let warning = client
                .ack(vec![id])
                .await
                .err()
                .map(|e| format!("cannot acknowledge: {e}"));
            let _ = reports.send(Report::Acked(warning));
        });
    }

    /// Shows `event`; returns a reason when the session is over for good.
    fn event(&mut self, event: Event) -> Option<client::DisconnectReason> {
        match event {
            Event::Message {
                msg_id,
                from,
                server_ts,
                payload,
                ..
            } => {
                say(format_args!(
                    "[{}] {from}: {}",
                    super::clock(server_ts),
                    String::from_utf8_lossy(&payload)
                ));
                // Shown: acknowledge it and tell the sender it was read.
                self.acknowledge_read(msg_id, ReadMark::User(from));
            }
            Event::Receipt {
                id,
                kind,
                by,
                msg_ids,
                ..
            } => {
                let label = match kind {
                    ReceiptKind::Delivered => "✓✓",
                    ReceiptKind::Read => "✓✓ read",
                };
                for msg_id in msg_ids {
                    match self.numbers.get(&msg_id) {
                        Some((number, _)) => say(format_args!("  #{number} {label}")),
                        None => say(format_args!("  message {msg_id} to {by} {label}")),
                    }
                }
                self.acknowledge(id);
            }
            Event::GroupMessage {
                msg_id,
                group,
                position,
                from,
                server_ts,
                payload,
                ..
            } => {
                say(format_args!(
                    "[{}] group {group} {from}: {}",
                    super::clock(server_ts),
                    String::from_utf8_lossy(&payload)
                ));
                // Shown: acknowledge it and mark the group read up to it.
                self.acknowledge_read(msg_id, ReadMark::Group(group, position));
            }
            Event::GroupReceipt {
                msg_id,
                group,
                positions,
                kind,
                ..
            } => {
                let label = match kind {
                    ReceiptKind::Delivered => "✓✓ (everyone)",
                    ReceiptKind::Read => "✓✓ read by everyone",
                };
                for position in positions {
                    match self.numbers.get(&position) {
                        Some((number, _)) => say(format_args!("  #{number} {label}")),
                        None => say(format_args!(
                            "  message {position} to group {group} {label}"
                        )),
                    }
                }
                self.acknowledge(msg_id);
            }
            Event::GroupEvent {
                msg_id,
                group,
                by,
                change,
                ts,
                ..
            } => {
                say(format_args!(
                    "[{}] group {group}: {by} {}",
                    super::clock(ts),
                    super::recv::change_words(&change)
                ));
                self.acknowledge(msg_id);
            }
            Event::Typing { from, active } => {
                if active {
                    say(format_args!("  … {from} is typing"));
                }
            }
            Event::Presence { user, status } => match status {
                PresenceStatus::Online => say(format_args!("  ● {user} is online")),
                PresenceStatus::Offline {
                    last_seen_ms: Some(ms),
                } => say(format_args!(
                    "  ○ {user} is offline, last seen {} UTC",
                    super::clock(ms)
                )),
                PresenceStatus::Offline { last_seen_ms: None } => {
                    say(format_args!("  ○ {user} is offline"));
                }
            },
            Event::Extension { namespace, .. } => {
                tracing::debug!(namespace, "extension push ignored");
            }
            Event::Connected => {
                // After a reconnect: the presence subscription was per connection.
                if self.logged_in_before {
                    say("— reconnected");
                    self.subscribe();
                }
                self.logged_in_before = true;
            }
            Event::Disconnected { reason } => {
                if reason.is_final() {
                    return Some(reason);
                }
                say(format_args!("! connection lost ({reason}); reconnecting…"));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_by_table() {
        let peer = PhoneNumber::parse("+15551234567").expect("phone");
        let cases: Vec<(&str, Input)> = vec![
            ("/quit", Input::Quit),
            ("  /q  ", Input::Quit),
            ("/help", Input::Help),
            ("/to +15551234567", Input::To(peer)),
            ("/group 42", Input::Group(42)),
            ("/info #3", Input::Info(3)),
            ("/info 3", Input::Info(3)),
            ("", Input::Nothing),
            ("   ", Input::Nothing),
            ("hello there  ", Input::Text("hello there  ".into())),
            (" hi", Input::Text(" hi".into())),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_line(line), expected, "{line:?}");
        }
        assert!(matches!(parse_line("/to 555"), Input::BadCommand(_)));
        assert!(matches!(parse_line("/to"), Input::BadCommand(_)));
        assert!(matches!(parse_line("/group x"), Input::BadCommand(_)));
        assert!(matches!(parse_line("/info"), Input::BadCommand(_)));
        assert!(matches!(parse_line("/dance"), Input::BadCommand(_)));
    }
}
