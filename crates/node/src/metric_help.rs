//! HELP text for every metric the node exports, so that a scrape (and
//! Grafana, and whoever reads an alert) says what each number is. A test
//! reads the workspace's sources and fails on a metric missing here.

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric: name, kind, HELP text.
#[rustfmt::skip]
pub(crate) const METRICS: &[(&str, Kind, &str)] = &[
    // Connections and sessions.
    ("switchboard_connections", Gauge, "Client connections held now (TLS and WebSocket)."),
    ("switchboard_connections_refused_total", Counter, "Connections refused at accept, by reason (the connection limit, per-address limits, draining)."),
    ("switchboard_sessions_opened_total", Counter, "Client sessions started."),
    ("switchboard_sessions_revoked_total", Counter, "Sessions closed because their token was revoked."),
    ("switchboard_online_users", Gauge, "Users attached to the fragments this node serves."),
    ("switchboard_guest_deadlines_total", Counter, "Connections closed for not saying hello or logging in in time, by stage."),
    ("switchboard_protocol_errors_total", Counter, "Frames refused as malformed or out of place; the connection is closed or told."),
    ("switchboard_slow_consumer_disconnects_total", Counter, "Connections closed because the client did not read fast enough."),
    ("switchboard_frames_shed_total", Counter, "Presence and typing frames dropped because the client's queue was full."),
    ("switchboard_session_queue_length", Gauge, "Messages waiting in the client sessions' actor queues: the longest (quantile=max) and the 99th percentile."),
    ("switchboard_session_queued_messages", Gauge, "Messages waiting in all client sessions' actor queues."),
    ("switchboard_actor_queue_length", Gauge, "Messages waiting in a long-lived actor's queue (services, fragments, supervisors, extensions), by actor."),
    ("switchboard_fragment_queue_length_max", Gauge, "The longest queue of this node's fragment actors."),
    // Messages.
    ("switchboard_durable_acks_total", Counter, "Sends acknowledged to their sender once durable (the first tick)."),
    ("switchboard_send_ack_seconds", Histogram, "Time from a send reaching its session to its server ack (storing, committing and replicating it)."),
    ("switchboard_sends_refused_total", Counter, "Sends refused, by reason."),
    ("switchboard_sends_refused_mailbox_full_total", Counter, "Sends refused because the recipient's mailbox is at its cap."),
    ("switchboard_sends_paced_total", Counter, "Sends delayed by the sender's rate limit."),
    ("switchboard_acks_paced_total", Counter, "Ack frames read more slowly because of the client's ack rate limit."),
    ("switchboard_acks_ignored_total", Counter, "Acked ids that named no entry of the user (already acked, or never theirs)."),
    ("switchboard_entries_pushed_total", Counter, "Mailbox entries pushed to sessions."),
    ("switchboard_entries_acked_total", Counter, "Mailbox entries acknowledged by clients."),
    ("switchboard_entries_expired_total", Counter, "Mailbox entries deleted undelivered at their expiry."),
    ("switchboard_entries_undeliverable_total", Counter, "Mailbox entries a session could not encode for its client (dropped)."),
    ("switchboard_read_receipt_ids_refused_total", Counter, "Read-receipt ids refused because the reader did not receive them from that sender."),
    ("switchboard_presence_requests_total", Counter, "Presence requests (subscribe, typing, settings) by kind."),
    // Groups.
    ("switchboard_groups_created_total", Counter, "Groups created."),
    ("switchboard_group_requests_refused_total", Counter, "Group requests refused, by reason."),
    ("switchboard_group_fanout_batches_total", Counter, "Group fan-out batches sent to destination fragments."),
    ("switchboard_group_fanout_resent_total", Counter, "Group fan-out batches sent again (unanswered, or after a failover)."),
    ("switchboard_group_fanout_gaps_total", Counter, "Fan-out batches that jumped positions of an older era, recorded as gaps."),
    ("switchboard_group_gap_items_stored_total", Counter, "Group items stored into recorded gaps."),
    ("switchboard_group_receipts_total", Counter, "Group receipts (delivered to all, read by all) logged."),
    ("switchboard_group_ticks_given_up_total", Counter, "Group messages whose ticks were given up (beyond the tracked window or expired)."),
    ("switchboard_group_writes_not_merged_total", Counter, "Group record changes made apart from the owner and dropped at a merge."),
    // Fragments and replication.
    ("switchboard_fragments_serving", Gauge, "Fragments this node serves now."),
    ("switchboard_fragments_unavailable", Gauge, "Fragment actors that did not answer the last sample."),
    ("switchboard_fragment_pending_commits", Gauge, "Fragment writes waiting for their commit."),
    ("switchboard_fragment_cached_entries", Gauge, "Mailbox entries held in memory for online users."),
    ("switchboard_fragment_failovers_total", Counter, "Fragments this node took over from a partner that went silent."),
    ("switchboard_fragment_partner_timeouts_total", Counter, "Writes that waited too long for the island partner."),
    ("switchboard_fragment_merged_writes_total", Counter, "Writes made apart (during a partition) merged into the owner's log."),
    ("switchboard_fragment_uncommitted_dropped_total", Counter, "Replicated writes forgotten because the owner confirmed no commits for too long."),
    // Health.
    ("switchboard_ready", Gauge, "Whether /readyz passes (1) or not (0)."),
    ("switchboard_draining", Gauge, "Whether the node is draining (1): not ready on purpose."),
    ("switchboard_fragments_configured", Gauge, "Fragments in the cluster's configuration."),
    ("switchboard_island_partner_up", Gauge, "Whether this node's island partner is linked (1) or not (0)."),
    // Cluster.
    ("switchboard_cluster_peers_up", Gauge, "Peers this node is linked to now."),
    ("switchboard_cluster_peer_up", Gauge, "Whether the link to a peer is up (1) or not (0), by peer."),
    ("switchboard_cluster_peer_up_total", Counter, "Times a peer's link came up."),
    ("switchboard_cluster_peer_down_total", Counter, "Times a peer was marked down."),
    ("switchboard_cluster_handshakes_total", Counter, "Node link handshakes, by outcome."),
    ("switchboard_cluster_layout_refused_total", Counter, "Peers refused because their cluster layout differs from this node's."),
    ("switchboard_cluster_frames_dropped_total", Counter, "Frames on a node link not from the link's peer (dropped), by kind."),
    ("switchboard_cluster_links_refused_total", Counter, "Node links closed for breaking the link protocol, by cause."),
    ("switchboard_cluster_undecodable_total", Counter, "Frames from peers that could not be decoded (dropped)."),
    ("switchboard_cluster_withdrawn_total", Counter, "Times this node left its cluster (a broken store)."),
    // Storage.
    ("switchboard_storage_queue_depth", Gauge, "Changes waiting for the storage writer."),
    ("switchboard_storage_commits", Gauge, "Group commits since start."),
    ("switchboard_storage_changes", Gauge, "Changes committed since start."),
    ("switchboard_storage_busy_seconds", Gauge, "Seconds the storage writer spent committing since start."),
    ("switchboard_storage_commit_seconds", Histogram, "Time one group commit took (writing and syncing the journal or the database)."),
    ("switchboard_storage_journaled_commits", Gauge, "Group commits made durable by the journal since start."),
    ("switchboard_storage_checkpoints", Gauge, "Journal checkpoints into the database since start."),
    ("switchboard_storage_staged_entries", Gauge, "Mailbox rows staged in memory, not yet written into the database."),
    ("switchboard_storage_free_bytes", Gauge, "Free bytes on the data directory's filesystem."),
    ("switchboard_storage_size_bytes", Gauge, "Size of the data directory's filesystem."),
    ("switchboard_storage_failures_total", Counter, "Fragment writes that failed to commit."),
    ("switchboard_storage_broken_total", Counter, "Times the store broke on an I/O error (the node leaves its cluster and restarts)."),
    // Accounts.
    ("switchboard_auth_codes_total", Counter, "Verification codes requested, by outcome."),
    ("switchboard_auth_verifies_total", Counter, "Code verifications, by outcome."),
    ("switchboard_auth_logins_total", Counter, "Token logins, by outcome."),
    ("switchboard_auth_account_conflicts_total", Counter, "Account writes retried after a concurrent change."),
    ("switchboard_auth_limit_buckets", Gauge, "Rate-limit buckets the auth service keeps."),
    // Operators.
    ("switchboard_admin_mint_total", Counter, "Test-user mint requests, by outcome."),
    ("switchboard_admin_requests_total", Counter, "Admin channel requests, by command and outcome."),
    ("switchboard_admin_refused_total", Counter, "Admin channel connections refused (another user's process)."),
];

/// Gives every metric its HELP text (call once the recorder is installed).
pub(crate) fn describe_all() {
    for (name, kind, help) in METRICS {
        match kind {
            Counter => metrics::describe_counter!(*name, *help),
            Gauge => metrics::describe_gauge!(*name, *help),
            Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// Names used with `counter!`, `gauge!` or `histogram!` in a source.
    fn names_in(source: &str, found: &mut BTreeSet<(String, &'static str)>) {
        for (mac, kind) in [
            ("counter!(", "counter"),
            ("gauge!(", "gauge"),
            ("histogram!(", "histogram"),
        ] {
            for (at, _) in source.match_indices(mac) {
                let rest = source[at + mac.len()..].trim_start();
                if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next())
                    && name.starts_with("switchboard_")
                {
                    found.insert((name.to_owned(), kind));
                }
            }
        }
    }

    fn walk(dir: &Path, found: &mut BTreeSet<(String, &'static str)>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                names_in(&std::fs::read_to_string(&path).expect("source"), found);
            }
        }
    }

    #[test]
    fn every_metric_in_the_sources_has_help_of_its_kind() {
        let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut found = BTreeSet::new();
        for entry in std::fs::read_dir(&crates).expect("crates").flatten() {
            let src = entry.path().join("src");
            if src.is_dir() {
                walk(&src, &mut found);
            }
        }
        assert!(
            found.len() > 50,
            "the scan found too few metrics: {found:?}"
        );
        let mut missing = Vec::new();
        for (name, kind) in &found {
            let described = METRICS.iter().find(|(n, _, _)| n == name);
            let want = match described.map(|(_, k, _)| *k) {
                Some(Counter) => "counter",
                Some(Gauge) => "gauge",
                Some(Histogram) => "histogram",
                None => "",
            };
            if want != *kind {
                missing.push(format!("{name} ({kind}, described as {want:?})"));
            }
        }
        assert!(
            missing.is_empty(),
            "metrics without matching HELP: {missing:#?}"
        );
    }

    #[test]
    fn names_are_unique_and_counters_end_in_total() {
        let mut seen = BTreeSet::new();
        for (name, kind, help) in METRICS {
            assert!(seen.insert(*name), "{name} twice");
            assert!(!help.is_empty());
            assert_eq!(*kind == Counter, name.ends_with("_total"), "{name}");
        }
    }
}
