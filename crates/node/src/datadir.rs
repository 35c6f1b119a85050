//! The data directory's permissions: it holds the database (every mailbox,
//! account and token), the TLS key and the development code log, so only
//! the node's own user may enter it (0700) or read its files (0600). Set on
//! creation and tightened on every start if looser (logged), since a
//! directory restored from a backup or made by hand often is.

use std::path::Path;

use crate::{NodeError, Result};

/// Mode of the data directory and its `tls` subdirectory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files in them.
pub const FILE_MODE: u32 = 0o600;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Creates `dir` (0700) if missing, and tightens it, its `tls` and
/// `journal` subdirectories and the files directly in them to 0700 / 0600.
pub fn prepare(dir: &Path) -> Result<()> {
    create_private_dir(dir)?;
    tighten_tree(dir)?;
    for sub in ["tls", "journal"] {
        let sub = dir.join(sub);
        if sub.is_dir() {
            tighten_tree(&sub)?;
        }
    }
    Ok(())
}

/// Creates `file` empty with mode 0600 if it does not exist, so that a file
/// another library creates there (redb's) is never readable by others.
pub fn create_private_file(file: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options.open(file).map(drop).map_err(io(file))
}

/// Creates `dir` (and missing parents) with mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir).map_err(io(dir))
}

#[cfg(unix)]
fn tighten_tree(dir: &Path) -> Result<()> {
    tighten(dir, DIR_MODE)?;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        // Symbolic links are left alone: what they point to is not ours.
        let kind = entry.file_type().map_err(io(&entry.path()))?;
        if kind.is_file() {
            tighten(&entry.path(), FILE_MODE)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten_tree(_: &Path) -> Result<()> {
    Ok(())
}

/// Removes group and other bits beyond `mode` from `path`, logging it.
#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode()
        & 0o7777;
    let wanted = current & mode;
    if current != wanted {
        tracing::warn!(path = %path.display(), was = format!("{current:o}"),
            now = format!("{wanted:o}"), "tightened the permissions of a data file");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))
            .map_err(io(path))?;
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn creates_private_and_tightens_what_is_looser() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        prepare(&dir).expect("prepare");
        assert_eq!(mode(&dir), 0o700);
        create_private_file(&dir.join("db")).expect("create");
        assert_eq!(mode(&dir.join("db")), 0o600);

        // Loosened by hand (or restored from a backup): tightened on start,
        // an owner-only file left as it is.
        std::fs::create_dir(dir.join("tls")).expect("tls");
        for (path, loose) in [
            (dir.clone(), 0o755),
            (dir.join("tls"), 0o777),
            (dir.join("db"), 0o644),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).expect("chmod");
        }
        std::fs::write(dir.join("tls/key.pem"), "k").expect("key");
        std::fs::set_permissions(
            dir.join("tls/key.pem"),
            std::fs::Permissions::from_mode(0o640),
        )
        .expect("chmod");
        std::fs::write(dir.join("owner-only"), "x").expect("file");
        std::fs::set_permissions(
            dir.join("owner-only"),
            std::fs::Permissions::from_mode(0o400),
        )
        .expect("chmod");
        prepare(&dir).expect("prepare again");
        for (path, want) in [
            (dir.clone(), 0o700),
            (dir.join("tls"), 0o700),
            (dir.join("db"), 0o600),
            (dir.join("tls/key.pem"), 0o600),
            (dir.join("owner-only"), 0o400),
        ] {
            assert_eq!(mode(&path), want, "{}", path.display());
        }
    }
}
