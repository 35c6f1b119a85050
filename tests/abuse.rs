//! Attacks by hostile clients and peers, each against real node processes
//! over real TLS, while a victim or a control pair keeps working. Every test
//! asserts that the victim is unharmed (its messages delivered, its sends not
//! slowed beyond a generous bound, the cluster linked), not only that the
//! attacker was refused. One module per attack family (issue 13).

mod common;

#[path = "abuse/receipts.rs"]
mod receipts;

#[path = "abuse/auth.rs"]
mod auth;

#[path = "abuse/cluster.rs"]
mod cluster;

#[path = "abuse/guests.rs"]
mod guests;

#[path = "abuse/storage.rs"]
mod storage;

#[path = "abuse/tokens.rs"]
mod tokens;

#[path = "abuse/store.rs"]
mod store;

#[path = "abuse/presence.rs"]
mod presence;
