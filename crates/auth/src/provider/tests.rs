//! Providers against a real file and a real local HTTP server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::thread;

use super::*;

use test_support::phone;

#[test]
fn file_provider_appends_lines_and_creates_dirs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested").join("deeper").join("codes.log");
    let provider = FileProvider::new(&path);
    provider
        .deliver(&phone("+15551234567"), "012345")
        .expect("first");
    provider
        .deliver(&phone("+447911123456"), "999999")
        .expect("second");
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text, "+15551234567 012345\n+447911123456 999999\n");
    assert_eq!(provider.name(), "file");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "codes file must not be group/world readable"
        );
    }
}

#[test]
fn file_provider_reports_io_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory where the file should be: opening it for append fails.
    let provider = FileProvider::new(dir.path());
    let err = provider
        .deliver(&phone("+15551234567"), "123456")
        .expect_err("a directory is not a file");
    assert!(matches!(err, ProviderError::Io { .. }), "{err:?}");
}

#[test]
fn build_provider_defaults_to_a_file_in_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = build_provider(&ProviderConfig::default(), dir.path());
    assert_eq!(provider.name(), "file");
    provider
        .deliver(&phone("+15551234567"), "424242")
        .expect("deliver");
    let text = std::fs::read_to_string(dir.path().join(DEFAULT_CODES_FILE)).expect("read");
    assert_eq!(text, "+15551234567 424242\n");

    let explicit = dir.path().join("elsewhere.log");
    let provider = build_provider(
        &ProviderConfig::File {
            path: Some(explicit.clone()),
        },
        dir.path(),
    );
    provider
        .deliver(&phone("+15551234567"), "000001")
        .expect("deliver");
    assert!(explicit.exists());

    let webhook = build_provider(
        &ProviderConfig::Webhook {
            url: "http://127.0.0.1:1/".into(),
            timeout_ms: 100,
        },
        dir.path(),
    );
    assert_eq!(webhook.name(), "webhook");
}

#[test]
fn provider_config_reads_from_json() {
    let cases: &[(&str, ProviderConfig)] = &[
        (r#"{"kind": "file"}"#, ProviderConfig::File { path: None }),
        (
            r#"{"kind": "file", "path": "/tmp/x.log"}"#,
            ProviderConfig::File {
                path: Some("/tmp/x.log".into()),
            },
        ),
        (
            r#"{"kind": "webhook", "url": "http://gw/send"}"#,
            ProviderConfig::Webhook {
                url: "http://gw/send".into(),
                timeout_ms: 5_000,
            },
        ),
        (
            r#"{"kind": "webhook", "url": "http://gw/send", "timeout_ms": 250}"#,
            ProviderConfig::Webhook {
                url: "http://gw/send".into(),
                timeout_ms: 250,
            },
        ),
    ];
    for (json, want) in cases {
        let got: ProviderConfig = serde_json::from_str(json).expect(json);
        assert_eq!(&got, want, "{json}");
    }
    assert!(serde_json::from_str::<ProviderConfig>(r#"{"kind": "sms"}"#).is_err());
    assert!(serde_json::from_str::<ProviderConfig>(r#"{"kind": "webhook"}"#).is_err());
}

/// What the test server saw of one request.
#[derive(Debug)]
struct SeenRequest {
    request_line: String,
    content_type: Option<String>,
    body: serde_json::Value,
}

/// Serves exactly one HTTP request on 127.0.0.1:0 with `status_line` (e.g.
/// `"200 OK"`), and reports what it received.
fn one_shot_server(status_line: &'static str) -> (SocketAddr, mpsc::Receiver<SeenRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut request_line = String::new();
        reader.read_line(&mut request_line).expect("request line");
        let mut content_length = 0usize;
        let mut content_type = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header has a colon");
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().expect("content length");
            } else if name.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.to_owned());
            }
        }
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body).expect("body");
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status_line}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .expect("answer");
        stream.flush().expect("flush");
        let body = serde_json::from_slice(&body).expect("body is JSON");
        let _ = tx.send(SeenRequest {
            request_line: request_line.trim_end().to_owned(),
            content_type,
            body,
        });
    });
    (addr, rx)
}

#[test]
fn webhook_posts_json_and_succeeds_on_2xx() {
    for status in ["200 OK", "204 No Content"] {
        let (addr, seen) = one_shot_server(status);
        let provider = WebhookProvider::new(format!("http://{addr}/send"), Duration::from_secs(5));
        provider
            .deliver(&phone("+15551234567"), "012345")
            .expect("2xx is success");
        let seen = seen
            .recv_timeout(Duration::from_secs(5))
            .expect("server saw it");
        assert_eq!(seen.request_line, "POST /send HTTP/1.1");
        assert!(
            seen.content_type
                .as_deref()
                .is_some_and(|t| t.starts_with("application/json")),
            "{seen:?}"
        );
        assert_eq!(
            seen.body,
            serde_json::json!({"phone": "+15551234567", "code": "012345"})
        );
    }
}

#[test]
fn webhook_fails_on_500() {
    let (addr, seen) = one_shot_server("500 Internal Server Error");
    let provider = WebhookProvider::new(format!("http://{addr}/send"), Duration::from_secs(5));
    let err = provider
        .deliver(&phone("+15551234567"), "123456")
        .expect_err("500 is a failure");
    assert_eq!(err, ProviderError::Status(500));
    let seen = seen
        .recv_timeout(Duration::from_secs(5))
        .expect("server saw it");
    assert_eq!(seen.body["code"], "123456");
}

#[test]
fn webhook_does_not_follow_redirects() {
    let (addr, _seen) = one_shot_server("302 Found\r\nlocation: http://127.0.0.1:1/");
    let provider = WebhookProvider::new(format!("http://{addr}/send"), Duration::from_secs(5));
    let err = provider
        .deliver(&phone("+15551234567"), "123456")
        .expect_err("a redirect is a failure");
    assert_eq!(err, ProviderError::Status(302));
}

#[test]
fn webhook_times_out_on_a_silent_server() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accept and hold the connection without answering.
    let holder = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        thread::sleep(Duration::from_secs(1));
        drop(stream);
    });
    let provider = WebhookProvider::new(format!("http://{addr}/send"), Duration::from_millis(200));
    let started = std::time::Instant::now();
    let err = provider
        .deliver(&phone("+15551234567"), "123456")
        .expect_err("no answer");
    assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the timeout applied"
    );
    holder.join().expect("holder");
}

#[test]
fn webhook_reports_connection_refused() {
    // Bind then drop to find a port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let provider = WebhookProvider::new(format!("http://{addr}/send"), Duration::from_secs(2));
    let err = provider
        .deliver(&phone("+15551234567"), "123456")
        .expect_err("nobody listens");
    assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
}
