//! The profile file: where a user's node is and the token to log in with.
//!
//! TOML, written by `switchboard verify` with mode 0600 (it holds a bearer
//! token), read by `send`, `recv` and `chat`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use proto::PhoneNumber;
use serde::{Deserialize, Serialize};

/// What a client command needs to log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Profile {
    /// Node addresses, tried in order.
    pub(crate) servers: Vec<String>,
    /// The CA (or node certificate) PEM file to trust.
    pub(crate) ca: PathBuf,
    /// The name expected in the node's certificate.
    #[serde(default = "default_server_name")]
    pub(crate) server_name: String,
    /// The user.
    pub(crate) phone: PhoneNumber,
    /// The bearer token from `verify`.
    pub(crate) token: String,
    /// When the token expires (ms since the Unix epoch), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token_expires_at_ms: Option<u64>,
}

fn default_server_name() -> String {
    client::DEFAULT_SERVER_NAME.to_owned()
}

impl Profile {
    /// Reads and parses the profile at `path`.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Profile> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the profile {} (`switchboard register` and \
                     `switchboard verify` create one)",
                path.display()
            )
        })?;
        let profile: Profile = toml::from_str(&text)
            .with_context(|| format!("cannot parse the profile {}", path.display()))?;
        anyhow::ensure!(
            !profile.servers.is_empty(),
            "the profile {} names no server",
            path.display()
        );
        Ok(profile)
    }

    /// Writes the profile to `path` with mode 0600, replacing it atomically.
    pub(crate) fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string(self).context("cannot encode the profile")?;
        let file_name = path
            .file_name()
            .with_context(|| format!("{} is not a file path", path.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let written = (|| -> std::io::Result<()> {
            let mut file = options.open(&tmp)?;
            #[cfg(unix)]
            {
                // `mode` applies only to new files; an old temp file keeps its own.
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.with_context(|| format!("cannot write the profile {}", path.display()))
    }

    /// The client configuration this profile describes.
    pub(crate) fn client_config(&self) -> anyhow::Result<client::ClientConfig> {
        let ca_pem = client::ClientConfig::read_ca_file(&self.ca)?;
        let mut cfg = client::ClientConfig::new(self.servers.clone(), ca_pem);
        cfg.server_name = self.server_name.clone();
        cfg.agent = crate::commands::AGENT.to_owned();
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Profile {
        Profile {
            servers: vec!["127.0.0.1:7443".into(), "127.0.0.1:7444".into()],
            ca: PathBuf::from("/etc/switchboard/ca.pem"),
            server_name: "localhost".into(),
            phone: PhoneNumber::parse("+15550000001").expect("phone"),
            token: "secret".into(),
            token_expires_at_ms: Some(123),
        }
    }

    #[test]
    fn round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("alice.toml");
        sample().save(&path).expect("save");
        assert_eq!(Profile::load(&path).expect("load"), sample());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Overwriting keeps the mode and leaves no temp file behind.
        let mut changed = sample();
        changed.token = "other".into();
        changed.save(&path).expect("save again");
        assert_eq!(Profile::load(&path).expect("load").token, "other");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }

    #[test]
    fn server_name_defaults_and_bad_files_say_which() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "servers = [\"h:1\"]\nca = \"ca.pem\"\nphone = \"+15550000001\"\ntoken = \"t\"\n",
        )
        .expect("write");
        let profile = Profile::load(&path).expect("load");
        assert_eq!(profile.server_name, "localhost");
        assert_eq!(profile.token_expires_at_ms, None);

        std::fs::write(&path, "phone = \"12\"").expect("write");
        let err = Profile::load(&path).expect_err("bad");
        assert!(format!("{err:#}").contains("p.toml"), "{err:#}");
        let missing = Profile::load(&dir.path().join("none.toml")).expect_err("missing");
        assert!(
            format!("{missing:#}").contains("switchboard verify"),
            "{missing:#}"
        );
    }
}
