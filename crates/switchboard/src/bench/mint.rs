//! Bulk test users through the node's admin request.

use anyhow::{Context, bail};
use client::{Connection, Tls};
use proto::{MAX_MINT_PER_REQUEST, PhoneNumber, Request, Response};

use super::{AGENT, REQUEST_TIMEOUT};

/// Mints `count` users numbered from `first`; returns them with their tokens.
pub(crate) async fn mint_users(
    server: &str,
    tls: &Tls,
    secret: &str,
    first: &PhoneNumber,
    count: u32,
) -> anyhow::Result<Vec<(PhoneNumber, String)>> {
    let (conn, _pushes) = Connection::connect(server, tls, AGENT, REQUEST_TIMEOUT)
        .await
        .with_context(|| format!("connecting to {server} to mint test users"))?;
    let mut users = Vec::with_capacity(count as usize);
    let batches: Vec<(u32, u32)> = (0..count)
        .step_by(MAX_MINT_PER_REQUEST as usize)
        .map(|start| (start, MAX_MINT_PER_REQUEST.min(count - start)))
        .collect();
    // A few requests in flight share the node's group commits.
    for group in batches.chunks(4) {
        let requests = group.iter().map(|&(start, n)| {
            let first = first.offset(u64::from(start));
            let conn = &conn;
            async move {
                let Some(first) = first else {
                    bail!("test user numbers run past a valid phone number");
                };
                let answer = conn
                    .request(Request::MintTestUsers {
                        secret: secret.to_owned(),
                        first: first.clone(),
                        count: n,
                    })
                    .await
                    .context("minting test users (is admin.mint_test_users on?)")?;
                let Response::TestUsers { tokens } = answer else {
                    bail!("unexpected answer to MintTestUsers: {answer:?}");
                };
                let phones = (0..u64::from(n)).map(|i| first.offset(i));
                phones
                    .zip(tokens)
                    .map(|(p, t)| p.map(|p| (p, t)).context("phone number overflow"))
                    .collect::<anyhow::Result<Vec<_>>>()
            }
        });
        for batch in futures::future::join_all(requests).await {
            users.extend(batch?);
        }
    }
    conn.close();
    Ok(users)
}
