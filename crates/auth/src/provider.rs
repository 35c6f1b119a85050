//! Code providers: how a verification code reaches the user.
//!
//! A provider is blocking (an HTTP call, a file write); the actor runs it on
//! Tokio's blocking pool, so a provider never needs its own runtime.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proto::PhoneNumber;
use serde::{Deserialize, Serialize};

/// Hands a verification code to the user (SMS gateway, voice call, a file...).
pub trait CodeProvider: Send + Sync + 'static {
    /// Delivers `code` to `phone`; blocks until the provider has taken it.
    /// Must not log the code.
    fn deliver(&self, phone: &PhoneNumber, code: &str) -> Result<(), ProviderError>;

    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// Why a provider could not take a code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// A local file could not be written.
    #[error("cannot write {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        reason: String,
    },
    /// The request did not complete (connection refused, timeout, bad URL...).
    #[error("the provider could not be reached: {0}")]
    Transport(String),
    /// The provider answered with a status other than 2xx.
    #[error("the provider answered HTTP {0}")]
    Status(u16),
    /// Anything else (e.g. the provider panicked).
    #[error("{0}")]
    Other(String),
}

/// Which provider to use, as written in the node's configuration.
///
/// ```toml
/// [auth.provider]
/// kind = "webhook"
/// url = "https://sms-gateway.internal/send"
/// timeout_ms = 3000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderConfig {
    /// Append `PHONE CODE` lines to a file. For development only.
    File {
        /// The file; `<data dir>/verification-codes.log` when absent.
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// POST `{"phone": "+1555...", "code": "123456"}` to a URL.
    Webhook {
        /// Where to POST.
        url: String,
        /// Give up after this long (connect, send and answer together).
        #[serde(default = "default_webhook_timeout_ms")]
        timeout_ms: u64,
    },
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig::File { path: None }
    }
}

fn default_webhook_timeout_ms() -> u64 {
    5_000
}

/// The file the file provider writes when no path is configured.
pub const DEFAULT_CODES_FILE: &str = "verification-codes.log";

/// Builds the configured provider. `data_dir` anchors the file provider's
/// default path.
pub fn build_provider(cfg: &ProviderConfig, data_dir: &Path) -> Arc<dyn CodeProvider> {
    match cfg {
        ProviderConfig::File { path } => {
            let path = path
                .clone()
                .unwrap_or_else(|| data_dir.join(DEFAULT_CODES_FILE));
            tracing::warn!(
                path = %path.display(),
                "verification codes are written to a file: for development only, \
                 configure a webhook provider in production"
            );
            Arc::new(FileProvider::new(path))
        }
        ProviderConfig::Webhook { url, timeout_ms } => Arc::new(WebhookProvider::new(
            url.clone(),
            Duration::from_millis(*timeout_ms),
        )),
    }
}

/// Appends `PHONE CODE` lines to a file, for development: `tail -f` it to
/// read the codes. The file is opened per code in append mode, so it can be
/// rotated or deleted while the node runs.
#[derive(Debug, Clone)]
pub struct FileProvider {
    path: PathBuf,
}

impl FileProvider {
    /// A provider writing to `path` (parent directories are created on use).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, e: &std::io::Error) -> ProviderError {
        ProviderError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

impl CodeProvider for FileProvider {
    fn deliver(&self, phone: &PhoneNumber, code: &str) -> Result<(), ProviderError> {
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| self.io_error(&e))?;
        }
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            // The codes are secrets: readable by the node's user only.
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&self.path).map_err(|e| self.io_error(&e))?;
        // One write of the whole line: with O_APPEND, concurrent deliveries
        // never interleave inside a line.
        file.write_all(format!("{phone} {code}\n").as_bytes())
            .map_err(|e| self.io_error(&e))
    }

    fn name(&self) -> &'static str {
        "file"
    }
}

/// POSTs `{"phone": "+1555...", "code": "123456"}` as JSON to a URL (an SMS
/// gateway or a small adapter in front of one). Any 2xx is success; redirects
/// are not followed, so the code only ever goes to the configured URL.
#[derive(Debug, Clone)]
pub struct WebhookProvider {
    url: String,
    agent: ureq::Agent,
}

#[derive(Serialize)]
struct WebhookBody<'a> {
    phone: &'a str,
    code: &'a str,
}

impl WebhookProvider {
    /// A provider posting to `url`, giving up after `timeout`.
    pub fn new(url: impl Into<String>, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("switchboard-auth/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self {
            url: url.into(),
            agent,
        }
    }

    /// The URL posted to.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl CodeProvider for WebhookProvider {
    fn deliver(&self, phone: &PhoneNumber, code: &str) -> Result<(), ProviderError> {
        let body = WebhookBody {
            phone: phone.as_str(),
            code,
        };
        let response = self
            .agent
            .post(&self.url)
            .send_json(&body)
            .map_err(|e| ProviderError::Transport(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(ProviderError::Status(status.as_u16()))
        }
    }

    fn name(&self) -> &'static str {
        "webhook"
    }
}

#[cfg(test)]
mod tests;
