//! Whether the node is healthy and ready, for `/healthz` and `/readyz`,
//! and the free-disk watch behind the storage threshold.
//!
//! - healthy: the process is alive and its store takes writes (no I/O error
//!   has broken it). An unhealthy node is about to exit for its supervisor
//!   to restart it.
//! - ready: healthy, not draining, the disk above the threshold, and in a
//!   cluster linked to a peer and serving fragments (when it owns any).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use storage::{Refusal, Store};

use crate::config::StorageSettings;

/// How often free disk is sampled: statvfs is one cheap system call, and a
/// burst of large sends must not outrun the check by much.
pub(crate) const DISK_EVERY: Duration = Duration::from_secs(1);

/// The node's health, shared by the metrics listener and the node.
#[derive(Clone)]
pub(crate) struct Health {
    store: Store,
    draining: Arc<AtomicBool>,
    cluster: Option<ClusterReadiness>,
}

/// What readiness needs of a clustered node.
#[derive(Clone)]
pub(crate) struct ClusterReadiness {
    pub(crate) handle: cluster::ClusterHandle,
    /// Peers in the cluster besides this node.
    pub(crate) peers: usize,
    /// Whether this node is in an island (may own fragments).
    pub(crate) owns_fragments: bool,
    /// This node's island partner, if it is in an island.
    pub(crate) partner: Option<String>,
}

/// An answer of a probe: whether it passed, and a line saying why.
pub(crate) type Verdict = (bool, String);

impl Health {
    pub(crate) fn new(store: Store, cluster: Option<ClusterReadiness>) -> Self {
        Self {
            store,
            draining: Arc::default(),
            cluster,
        }
    }

    /// From now on the node is draining (shutting down): not ready.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the node is draining.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether this node's island partner is linked now (`None`: no
    /// partner, a node alone or outside the islands).
    pub(crate) fn partner_up(&self) -> Option<bool> {
        let c = self.cluster.as_ref()?;
        let partner = c.partner.as_ref()?;
        Some(c.handle.view().up.contains(partner))
    }

    /// `/healthz`: alive and the store writable.
    pub(crate) fn healthz(&self) -> Verdict {
        if self.store.is_broken() {
            (false, "unhealthy: the store has failed (I/O error)".into())
        } else {
            (true, "ok".into())
        }
    }

    /// `/readyz`: serving.
    pub(crate) fn readyz(&self) -> Verdict {
        match self.store.refusal() {
            Some(Refusal::Broken) => {
                return (false, "not ready: the store has failed (I/O error)".into());
            }
            Some(Refusal::LowDisk) => {
                return (false, "not ready: free disk below storage.min_free".into());
            }
            None => {}
        }
        if self.draining.load(Ordering::Relaxed) {
            return (false, "not ready: draining".into());
        }
        if let Some(c) = &self.cluster {
            if c.peers > 0 && c.handle.view().up.is_empty() {
                return (false, "not ready: linked to no cluster peer".into());
            }
            if c.owns_fragments && offline_queue::actor::fragments_serving() == 0 {
                return (false, "not ready: serving no fragment yet".into());
            }
        }
        (true, "ok".into())
    }
}

/// Free and total bytes of the filesystem holding `path`.
pub(crate) fn disk_space(path: &Path) -> std::io::Result<(u64, u64)> {
    let stat = rustix::fs::statvfs(path)?;
    let block = stat.f_frsize.max(1);
    Ok((
        stat.f_bavail.saturating_mul(block),
        stat.f_blocks.saturating_mul(block),
    ))
}

/// Whether `free` bytes are below the threshold for a filesystem of
/// `total` bytes.
pub(crate) fn low_on_disk(settings: &StorageSettings, free: u64, total: u64) -> bool {
    free < settings.min_free_bytes(total)
}

/// Samples free disk under `data_dir` every [`DISK_EVERY`]: sets the
/// store's low-disk flag (new messages are refused while it is set) and the
/// `switchboard_storage_free_bytes` gauge. Logs when the state changes only.
pub(crate) fn watch_disk(store: Store, data_dir: PathBuf, settings: StorageSettings) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(DISK_EVERY);
        let mut was_low = false;
        let mut failed_once = false;
        loop {
            tick.tick().await;
            let (free, total) = match disk_space(&data_dir) {
                Ok(space) => space,
                Err(e) => {
                    if !failed_once {
                        tracing::warn!(path = %data_dir.display(), error = %e,
                            "cannot read free disk space; the threshold is not enforced");
                        failed_once = true;
                    }
                    continue;
                }
            };
            metrics::gauge!("switchboard_storage_free_bytes").set(free as f64);
            metrics::gauge!("switchboard_storage_size_bytes").set(total as f64);
            let low = low_on_disk(&settings, free, total);
            if low != was_low {
                if low {
                    tracing::warn!(
                        free,
                        threshold = settings.min_free_bytes(total),
                        "free disk below storage.min_free: refusing new messages"
                    );
                } else {
                    tracing::info!(
                        free,
                        "free disk above storage.min_free again: taking messages"
                    );
                }
                was_low = low;
            }
            store.set_low_disk(low);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_the_smaller_of_the_two_settings() {
        const MIB: u64 = 1024 * 1024;
        let defaults = StorageSettings::default();
        let off = StorageSettings {
            min_free_mib: 0,
            ..StorageSettings::default()
        };
        // (settings, free, total, low)
        let cases = [
            // 5 % of 8 MiB (410 KiB) is below 1 GiB.
            (&defaults, 400 * 1024, 8 * MIB, true),
            (&defaults, 500 * 1024, 8 * MIB, false),
            // 5 % of 1 TiB is above 1 GiB.
            (&defaults, 1023 * MIB, 1024 * 1024 * MIB, true),
            (&defaults, 1025 * MIB, 1024 * 1024 * MIB, false),
            // Turned off.
            (&off, 0, 8 * MIB, false),
        ];
        for (settings, free, total, low) in cases {
            assert_eq!(low_on_disk(settings, free, total), low, "{free} of {total}");
        }
    }

    #[test]
    fn disk_space_reads_a_real_filesystem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (free, total) = disk_space(dir.path()).expect("statvfs");
        assert!(total > 0 && free <= total, "{free} of {total}");
    }
}
