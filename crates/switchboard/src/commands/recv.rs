//! `switchboard recv`: print received messages and receipts, then ack them.
//!
//! Each batch of events is written and flushed to stdout before it is
//! acknowledged, so a message is acked only once it has been handed on: a
//! crash in between means a redelivery, never a loss.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use client::{Event, GroupChange, GroupId, MessageId, ReceiptKind};
use serde::Serialize;
use tokio::time::Instant;

/// Arguments of `switchboard recv`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Profile file written by `switchboard verify`.
    #[arg(long, value_name = "FILE", env = "SWITCHBOARD_PROFILE")]
    pub(crate) profile: PathBuf,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep receiving for this many seconds; without it, stop once the
    /// mailbox backlog is drained (nothing new for --idle-ms).
    #[arg(long, value_name = "SECS")]
    pub(crate) wait: Option<f64>,
    /// Without --wait: the quiet time that means the backlog is drained.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub(crate) idle_ms: u64,
}

/// A message as printed by `--json`.
#[derive(Debug, Serialize)]
struct JsonMessage<'a> {
    from: &'a str,
    id: MessageId,
    text: &'a str,
    server_ts: u64,
    client_msg_id: u64,
}

/// A group message as printed by `--json`: a message with its group.
#[derive(Debug, Serialize)]
struct JsonGroupMessage<'a> {
    group: GroupId,
    position: u64,
    #[serde(flatten)]
    message: JsonMessage<'a>,
}

/// A group's change as printed by `--json`.
#[derive(Debug, Serialize)]
struct JsonGroupEvent<'a> {
    group: GroupId,
    position: u64,
    by: &'a str,
    id: MessageId,
    event: String,
    ts: u64,
}

/// A group change in words ("added +1555…, +1555…").
pub(crate) fn change_words(change: &GroupChange) -> String {
    let list = |members: &[client::PhoneNumber]| {
        members
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match change {
        GroupChange::Created { name, members } => {
            format!("created {name:?} with {}", list(members))
        }
        GroupChange::Added { members } => format!("added {}", list(members)),
        GroupChange::Removed { members } => format!("removed {}", list(members)),
        GroupChange::Promoted { member } => format!("made {member} an admin"),
        GroupChange::Demoted { member } => format!("made {member} a member"),
        GroupChange::Renamed { name } => format!("renamed the group {name:?}"),
        GroupChange::Left { new_admin: None } => "left".to_owned(),
        GroupChange::Left {
            new_admin: Some(admin),
        } => format!("left; {admin} is the admin now"),
    }
}

/// A receipt as printed by `--json`.
#[derive(Debug, Serialize)]
struct JsonReceipt<'a> {
    receipt: &'a str,
    by: &'a str,
    msg_ids: &'a [MessageId],
}

/// A group receipt as printed by `--json`: every member has received or
/// read this user's messages `msg_ids` (their send acks' ids).
#[derive(Debug, Serialize)]
struct JsonGroupReceipt<'a> {
    group: GroupId,
    receipt: &'a str,
    msg_ids: &'a [MessageId],
}

fn receipt_word(kind: ReceiptKind) -> &'static str {
    match kind {
        ReceiptKind::Delivered => "delivered",
        ReceiptKind::Read => "read",
    }
}

/// The output line for `event`, if it is one to print (and ack).
fn render(event: &Event, json: bool) -> anyhow::Result<Option<String>> {
    let line = match event {
        Event::Message {
            msg_id,
            from,
            client_msg_id,
            server_ts,
            payload,
        } => {
            let text = String::from_utf8_lossy(payload);
            if json {
                serde_json::to_string(&JsonMessage {
                    from: from.as_str(),
                    id: *msg_id,
                    text: &text,
                    server_ts: *server_ts,
                    client_msg_id: *client_msg_id,
                })?
            } else {
                format!("[{}] {from}: {text}", super::clock(*server_ts))
            }
        }
        Event::Receipt {
            kind,
            by,
            msg_ids,
            ts,
            ..
        } => {
            if json {
                serde_json::to_string(&JsonReceipt {
                    receipt: receipt_word(*kind),
                    by: by.as_str(),
                    msg_ids,
                })?
            } else {
                let ids: Vec<String> = msg_ids.iter().map(u64::to_string).collect();
                format!(
                    "[{}] ✓✓ {} by {by}: {}",
                    super::clock(*ts),
                    receipt_word(*kind),
                    ids.join(", ")
                )
            }
        }
        Event::GroupMessage {
            msg_id,
            group,
            position,
            from,
            client_msg_id,
            server_ts,
            payload,
        } => {
            let text = String::from_utf8_lossy(payload);
            if json {
                serde_json::to_string(&JsonGroupMessage {
                    group: *group,
                    position: *position,
                    message: JsonMessage {
                        from: from.as_str(),
                        id: *msg_id,
                        text: &text,
                        server_ts: *server_ts,
                        client_msg_id: *client_msg_id,
                    },
                })?
            } else {
                format!(
                    "[{}] group {group} {from}: {text}",
                    super::clock(*server_ts)
                )
            }
        }
        Event::GroupEvent {
            msg_id,
            group,
            position,
            by,
            change,
            ts,
        } => {
            if json {
                serde_json::to_string(&JsonGroupEvent {
                    group: *group,
                    position: *position,
                    by: by.as_str(),
                    id: *msg_id,
                    event: change_words(change),
                    ts: *ts,
                })?
            } else {
                format!(
                    "[{}] group {group}: {by} {}",
                    super::clock(*ts),
                    change_words(change)
                )
            }
        }
        Event::GroupReceipt {
            group,
            positions,
            kind,
            ts,
            ..
        } => {
            if json {
                serde_json::to_string(&JsonGroupReceipt {
                    group: *group,
                    receipt: receipt_word(*kind),
                    msg_ids: positions,
                })?
            } else {
                let ids: Vec<String> = positions.iter().map(u64::to_string).collect();
                format!(
                    "[{}] group {group} ✓✓ {} by everyone: {}",
                    super::clock(*ts),
                    receipt_word(*kind),
                    ids.join(", ")
                )
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(line))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let wait = args
        .wait
        .map(Duration::try_from_secs_f64)
        .transpose()
        .context("--wait must be a non-negative number of seconds")?;
    let (_profile, client, mut events) = super::connect(&args.profile).await?;
    let deadline = wait.map(|wait| Instant::now() + wait);
    let idle = Duration::from_millis(args.idle_ms);
    let result = receive(&client, &mut events, args.json, deadline, idle).await;
    client.close().await;
    result
}

async fn receive(
    client: &client::Client,
    events: &mut client::Events,
    json: bool,
    deadline: Option<Instant>,
    idle: Duration,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    loop {
        let until = deadline.unwrap_or_else(|| Instant::now() + idle);
        let first = match tokio::time::timeout_at(until, events.recv()).await {
            Err(_) => return Ok(()),
            Ok(None) => anyhow::bail!("the client stopped"),
            Ok(Some(event)) => event,
        };
        // Take whatever else is ready: one write, one ack for the batch.
        let mut batch = vec![first];
        while batch.len() < 256 {
            match events.try_recv() {
                Some(event) => batch.push(event),
                None => break,
            }
        }
        let mut out = String::new();
        let mut ids = Vec::new();
        for event in &batch {
            match event {
                Event::Disconnected { reason } if reason.is_final() => {
                    anyhow::bail!("disconnected for good: {reason}")
                }
                // The client library logs the reconnect itself.
                Event::Disconnected { reason } => tracing::debug!(%reason, "disconnected"),
                _ => {}
            }
            if let Some(line) = render(event, json)? {
                out.push_str(&line);
                out.push('\n');
                ids.extend(event.ack_id());
            }
        }
        if out.is_empty() {
            continue;
        }
        stdout
            .write_all(out.as_bytes())
            .context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")?;
        client
            .ack(ids)
            .await
            .context("cannot acknowledge the messages printed")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::phone;

    #[test]
    fn messages_render_as_json_objects() {
        let event = Event::Message {
            msg_id: 42,
            from: phone("+15550000001"),
            client_msg_id: 7,
            server_ts: 1_700_000_000_000,
            payload: b"hi \xff".to_vec(),
        };
        let line = render(&event, true).expect("render").expect("a line");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(
            value,
            serde_json::json!({
                "from": "+15550000001",
                "id": 42,
                "text": "hi \u{fffd}",
                "server_ts": 1_700_000_000_000u64,
                "client_msg_id": 7,
            })
        );
        let text = render(&event, false).expect("render").expect("a line");
        assert_eq!(text, "[22:13:20] +15550000001: hi \u{fffd}");
    }

    #[test]
    fn group_messages_and_events_render_with_their_group() {
        let message = Event::GroupMessage {
            msg_id: 5,
            group: 77,
            position: 9,
            from: phone("+15550000001"),
            client_msg_id: 3,
            server_ts: 0,
            payload: b"hello all".to_vec(),
        };
        let line = render(&message, true).expect("render").expect("a line");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["group"], 77);
        assert_eq!(value["position"], 9);
        assert_eq!(value["text"], "hello all");
        let text = render(&message, false).expect("render").expect("a line");
        assert_eq!(text, "[00:00:00] group 77 +15550000001: hello all");
        let event = Event::GroupEvent {
            msg_id: 6,
            group: 77,
            position: 10,
            by: phone("+15550000001"),
            change: GroupChange::Added {
                members: vec![phone("+15550000002")],
            },
            ts: 0,
        };
        let line = render(&event, true).expect("render").expect("a line");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["event"], "added +15550000002");
        assert_eq!(event.ack_id(), Some(6));
    }

    #[test]
    fn receipts_render_and_other_events_do_not() {
        let event = Event::Receipt {
            id: 9,
            kind: ReceiptKind::Read,
            by: phone("+15550000002"),
            msg_ids: vec![1, 2],
            ts: 0,
        };
        let line = render(&event, true).expect("render").expect("a line");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(
            value,
            serde_json::json!({"receipt": "read", "by": "+15550000002", "msg_ids": [1, 2]})
        );
        let group = Event::GroupReceipt {
            msg_id: 10,
            group: 77,
            positions: vec![3, 4],
            kind: ReceiptKind::Delivered,
            ts: 0,
        };
        let line = render(&group, true).expect("render").expect("a line");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(
            value,
            serde_json::json!({"group": 77, "receipt": "delivered", "msg_ids": [3, 4]})
        );
        assert_eq!(group.ack_id(), Some(10));
        assert!(render(&Event::Connected, true).expect("render").is_none());
        let typing = Event::Typing {
            from: phone("+15550000002"),
            active: true,
        };
        assert!(render(&typing, false).expect("render").is_none());
    }
}
