//! `switchboard group`: create groups and change them.

use std::path::PathBuf;

use anyhow::Context;
use client::{GroupCommand, GroupId, GroupRole};
use proto::PhoneNumber;

/// Arguments of `switchboard group`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Profile file written by `switchboard verify`.
    #[arg(long, value_name = "FILE", env = "SWITCHBOARD_PROFILE")]
    pub(crate) profile: PathBuf,
    #[command(subcommand)]
    pub(crate) action: Action,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// Create a group with you as its admin; prints its id.
    Create {
        /// Its name.
        name: String,
        /// The other members.
        members: Vec<PhoneNumber>,
    },
    /// Add members (admins only).
    Add {
        /// The group.
        group: GroupId,
        /// Who.
        #[arg(required = true)]
        members: Vec<PhoneNumber>,
    },
    /// Remove members (admins only).
    Remove {
        /// The group.
        group: GroupId,
        /// Who.
        #[arg(required = true)]
        members: Vec<PhoneNumber>,
    },
    /// Make a member an admin (admins only).
    Promote {
        /// The group.
        group: GroupId,
        /// Who.
        member: PhoneNumber,
    },
    /// Make an admin a member (admins only).
    Demote {
        /// The group.
        group: GroupId,
        /// Who.
        member: PhoneNumber,
    },
    /// Rename the group (admins only).
    Rename {
        /// The group.
        group: GroupId,
        /// The new name.
        name: String,
    },
    /// Leave the group.
    Leave {
        /// The group.
        group: GroupId,
    },
    /// Print the ids of the groups you are in, one a line.
    List,
    /// Print the group's name and members.
    Info {
        /// The group.
        group: GroupId,
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (_profile, client, events) = super::connect(&args.profile).await?;
    // Nothing here reads what the node pushes; the backlog stays in the mailbox.
    drop(events);
    let result = act(&client, args.action).await;
    client.close().await;
    result
}

async fn act(client: &client::Client, action: Action) -> anyhow::Result<()> {
    let (group, command) = match action {
        Action::Create { name, members } => {
            let group = client
                .create_group(&name, members)
                .await
                .with_context(|| format!("cannot create the group {name:?}"))?;
            println!("{group}");
            return Ok(());
        }
        Action::Info { group, json } => {
            let (name, members) = client
                .group_info(group)
                .await
                .with_context(|| format!("cannot read group {group}"))?;
            println!("{}", render_info(group, &name, &members, json)?);
            return Ok(());
        }
        Action::List => {
            let groups = client
                .list_groups()
                .await
                .context("cannot list your groups")?;
            for group in groups {
                println!("{group}");
            }
            return Ok(());
        }
        Action::Add { group, members } => (group, GroupCommand::Add(members)),
        Action::Remove { group, members } => (group, GroupCommand::Remove(members)),
        Action::Promote { group, member } => (group, GroupCommand::Promote(member)),
        Action::Demote { group, member } => (group, GroupCommand::Demote(member)),
        Action::Rename { group, name } => (group, GroupCommand::Rename(name)),
        Action::Leave { group } => (group, GroupCommand::Leave),
    };
    client
        .change_group(group, command)
        .await
        .with_context(|| format!("cannot change group {group}"))
}

fn role_word(role: GroupRole) -> &'static str {
    match role {
        GroupRole::Admin => "admin",
        GroupRole::Member => "member",
    }
}

fn render_info(
    group: GroupId,
    name: &str,
    members: &[(PhoneNumber, GroupRole)],
    json: bool,
) -> anyhow::Result<String> {
    if json {
        let members: Vec<serde_json::Value> = members
            .iter()
            .map(|(phone, role)| serde_json::json!({"phone": phone.as_str(), "role": role_word(*role)}))
            .collect();
        return Ok(serde_json::to_string(
            &serde_json::json!({"group": group, "name": name, "members": members}),
        )?);
    }
    let mut out = format!("group {group} {name:?}, {} members", members.len());
    for (phone, role) in members {
        out.push_str(&format!("\n  {phone} {}", role_word(*role)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::phone;

    #[test]
    fn info_renders_as_text_and_json() {
        let members = vec![
            (phone("+15550000001"), GroupRole::Admin),
            (phone("+15550000002"), GroupRole::Member),
        ];
        let text = render_info(7, "team", &members, false).expect("text");
        assert_eq!(
            text,
            "group 7 \"team\", 2 members\n  +15550000001 admin\n  +15550000002 member"
        );
        let json = render_info(7, "team", &members, true).expect("json");
        let value: serde_json::Value = serde_json::from_str(&json).expect("parse");
        assert_eq!(value["members"][1]["role"], "member");
        assert_eq!(value["group"], 7);
    }
}
