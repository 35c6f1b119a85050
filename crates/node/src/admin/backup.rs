//! `switchboard admin backup` (while the node serves) and `restore` (into
//! a data directory no node is using).
//!
//! A backup is a folder: `switchboard.redb`, a consistent copy of the
//! database made by the storage writer between two commits (so it holds
//! every acknowledged change up to then, staged rows included; the journal
//! is not needed), the node's generated TLS pair if it has one, and
//! `BACKUP.json`, which says whose it is and in which data format.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The database's file name in a data directory and in a backup.
const DATABASE: &str = "switchboard.redb";
/// The manifest's file name in a backup.
const MANIFEST: &str = "BACKUP.json";
/// The node's generated TLS pair, under `tls/` in both.
const TLS_FILES: [&str; 2] = ["cert.pem", "key.pem"];

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// The node it was taken of.
    pub node: String,
    /// When (ms since the epoch).
    pub taken_at_ms: u64,
    /// The data format of the database ([`offline_queue::store::DATA_FORMAT`]
    /// of the build that took it).
    pub data_format: u64,
    /// The cluster's fragment count, which the data is placed by.
    pub fragments: u16,
    /// The database copy's size.
    pub database_bytes: u64,
}

/// Takes a backup of the serving node into `dir`, a new folder (its parent
/// must exist). Returns the manifest written.
pub(crate) async fn backup(
    store: &storage::Store,
    data_dir: &Path,
    node: &str,
    fragments: u16,
    dir: &Path,
) -> Result<BackupManifest, String> {
    if !dir.is_absolute() {
        return Err(format!("{} is not an absolute path", dir.display()));
    }
    create_private_dir(dir)?;
    let database_bytes = store
        .snapshot_to(dir.join(DATABASE))
        .await
        .map_err(|e| format!("copying the database: {e}"))?;
    copy_tls(data_dir, dir)?;
    let manifest = BackupManifest {
        node: node.to_owned(),
        taken_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        data_format: offline_queue::store::DATA_FORMAT,
        fragments,
        database_bytes,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    write_private(&dir.join(MANIFEST), &text)?;
    tracing::info!(dir = %dir.display(), database_bytes, "backup taken");
    Ok(manifest)
}

/// Restores the backup in `from` into `data_dir`, which must hold no
/// database (stop the node and move its data away first). Refuses a backup
/// of a data format newer than this build reads.
pub fn restore(from: &Path, data_dir: &Path) -> Result<BackupManifest, String> {
    let manifest_path = from.join(MANIFEST);
    let text = std::fs::read(&manifest_path)
        .map_err(|e| format!("{}: {e} (not a backup folder?)", manifest_path.display()))?;
    let manifest: BackupManifest = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: unreadable: {e}", manifest_path.display()))?;
    if manifest.data_format > offline_queue::store::DATA_FORMAT {
        return Err(format!(
            "the backup holds data format {}, newer than this build reads ({}): restore it with the build that took it",
            manifest.data_format,
            offline_queue::store::DATA_FORMAT
        ));
    }
    let database = from.join(DATABASE);
    let size = std::fs::metadata(&database)
        .map_err(|e| format!("{}: {e}", database.display()))?
        .len();
    if size != manifest.database_bytes {
        return Err(format!(
            "{} is {size} bytes, the manifest says {}: the backup is incomplete",
            database.display(),
            manifest.database_bytes
        ));
    }
    if data_dir.join(DATABASE).exists() || data_dir.join("journal").exists() {
        return Err(format!(
            "{} already holds a database or a journal: stop its node and move them away first",
            data_dir.display()
        ));
    }
    crate::datadir::create_private_dir(data_dir).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&database).map_err(|e| format!("{}: {e}", database.display()))?;
    write_private(&data_dir.join(DATABASE), &bytes)?;
    // A data directory with its own TLS pair keeps it.
    if !data_dir.join("tls").join(TLS_FILES[0]).exists() {
        copy_tls(from, data_dir)?;
    }
    Ok(manifest)
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| format!("creating {}: {e} (it must not exist yet)", dir.display()))
}

/// Writes `bytes` to the new file `path` (0600) and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Copies the generated TLS pair from `from/tls` to `to/tls`, if there is one.
fn copy_tls(from: &Path, to: &Path) -> Result<(), String> {
    let (source, target) = (from.join("tls"), to.join("tls"));
    if !TLS_FILES.iter().all(|f| source.join(f).is_file()) {
        return Ok(());
    }
    if !target.exists() {
        create_private_dir(&target)?;
    }
    for file in TLS_FILES {
        let bytes = std::fs::read(source.join(file))
            .map_err(|e| format!("{}: {e}", source.join(file).display()))?;
        write_private(&target.join(file), &bytes)?;
    }
    Ok(())
}
