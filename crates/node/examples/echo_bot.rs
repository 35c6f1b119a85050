//! An extension that is a user: whatever is sent to the bot's number comes
//! back from it prefixed with "echo: ", and requests in the `echo` namespace
//! are answered with their own bytes.
//!
//! Run a node with the bot: `cargo run -p node --example echo_bot`
//! (same defaults and `SWITCHBOARD_*` variables as `switchboard node`); then
//! `switchboard send --profile me.toml --to +19990000000 hello`.

use std::time::Duration;

use node::{ExtensionContext, ExtensionMsg, NodeBuilder, NodeConfig};
use offline_queue::{Endpoint, EntryBody, FragmentMsg, NewMessage, Push};
use proto::PhoneNumber;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};

/// The bot's phone number.
const BOT_NUMBER: &str = "+19990000000";

/// The echo bot actor.
struct EchoBot;

/// Its state.
struct EchoState {
    ctx: ExtensionContext,
    user: PhoneNumber,
}

impl Actor for EchoBot {
    type Msg = ExtensionMsg;
    type State = EchoState;
    type Arguments = (ExtensionContext, PhoneNumber);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (ctx, user): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(EchoState { ctx, user })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Attach like a session: the bot's mailbox is pushed to this actor.
        let fragment = state.ctx.fragments.for_user(&state.user)?;
        let endpoint = Endpoint {
            session_id: u64::from(std::process::id()) << 32 | 0xb07,
            token_generation: None,
            target: myself.get_derived(),
        };
        let user = state.user.clone();
        ractor::call_t!(
            fragment,
            |reply| FragmentMsg::Attach {
                user,
                endpoint,
                reply
            },
            5000
        )??;
        tracing::info!(bot = %state.user, "echo bot attached");
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ExtensionMsg::Request(request) => {
                let _ = request.reply.send(Ok(request.body));
            }
            ExtensionMsg::Mailbox(Push::Entries(entries)) => {
                let fragments = state.ctx.fragments.clone();
                let bot = state.user.clone();
                // Answer each message, then ack the batch once every answer is
                // durable; a crash in between redelivers and the entry id as
                // client_msg_id makes the answer a deduplicated resend.
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for entry in entries {
                        ids.push(entry.id);
                        let EntryBody::Message { from, payload, .. } = entry.body else {
                            continue;
                        };
                        let mut echo = b"echo: ".to_vec();
                        echo.extend_from_slice(&payload);
                        let Ok(fragment) = fragments.for_user(&from) else {
                            return;
                        };
                        let stored = ractor::call_t!(
                            fragment,
                            |reply| FragmentMsg::Append {
                                message: NewMessage {
                                    to: from,
                                    from: bot.clone(),
                                    client_msg_id: entry.id,
                                    after: None,
                                    payload: echo,
                                },
                                reply
                            },
                            10_000
                        );
                        if !matches!(stored, Ok(Ok(_))) {
                            tracing::warn!("echo not stored; the message will be redelivered");
                            return;
                        }
                    }
                    if let Ok(fragment) = fragments.for_user(&bot) {
                        let _ = fragment.send_message(FragmentMsg::Ack { user: bot, ids });
                    }
                });
            }
            ExtensionMsg::Mailbox(Push::Replaced | Push::Revoked) | ExtensionMsg::Custom(_) => {}
        }
        Ok(())
    }
}

/// Registers the echo bot with a node builder.
fn with_echo_bot(builder: NodeBuilder) -> NodeBuilder {
    builder.extension("echo", |ctx: ExtensionContext, sup: ActorCell| async move {
        let user = PhoneNumber::parse(BOT_NUMBER)
            .map_err(|e| SpawnErr::StartupFailed(e.to_string().into()))?;
        let name = ctx.actor_name.clone();
        let (actor, _) = Actor::spawn_linked(Some(name), EchoBot, (ctx, user), sup).await?;
        Ok(actor.get_cell())
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = NodeConfig::load(None)?;
    let node = with_echo_bot(NodeBuilder::new(config)).start().await?;
    println!(
        "node with echo bot {BOT_NUMBER} on {} (CA: {})",
        node.local_addr(),
        node.certificate().cert_path.display()
    );
    tokio::signal::ctrl_c().await?;
    tokio::time::timeout(Duration::from_secs(30), node.shutdown()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_support::register;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bot_answers_messages_and_extension_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = NodeConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().to_path_buf(),
            fragments: 8,
            ..NodeConfig::default()
        };
        let node = with_echo_bot(NodeBuilder::new(config))
            .start()
            .await
            .expect("node starts");
        let ca = std::fs::read(&node.certificate().cert_path).expect("ca");
        let cfg = client::ClientConfig::new(vec![node.local_addr().to_string()], ca);
        let me = PhoneNumber::parse("+15550001111").expect("phone");
        let token = register(&cfg, dir.path(), &me).await;
        let (client, mut events) = client::Client::connect(cfg, token).await.expect("login");

        let bot = PhoneNumber::parse(BOT_NUMBER).expect("phone");
        client.send(&bot, b"hello".to_vec()).await.expect("acked");
        let echoed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.recv().await {
                    Some(client::Event::Message {
                        from,
                        payload,
                        msg_id,
                        ..
                    }) => {
                        client.ack(vec![msg_id]).await.expect("ack");
                        break (from, payload);
                    }
                    Some(_) => continue,
                    None => panic!("events ended"),
                }
            }
        })
        .await
        .expect("echo arrives");
        assert_eq!(echoed.0, bot);
        assert_eq!(echoed.1, b"echo: hello".to_vec());

        let answer = client
            .extension("echo", b"ping".to_vec())
            .await
            .expect("extension answers");
        assert_eq!(answer, b"ping".to_vec());
        let unknown = client.extension("nope", vec![]).await;
        assert!(unknown.is_err());

        client.close().await;
        node.shutdown().await;
    }
}
