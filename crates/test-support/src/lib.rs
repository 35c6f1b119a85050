//! Helpers for tests only (every crate takes it as a dev-dependency):
//! phone numbers, registering through a node's development code log, free
//! ports and self-signed certificates. Each panics on failure, as a test
//! helper should.
//!
//! `proto` and `client` cannot use it in their own unit tests (it depends
//! on them); their integration tests can.

use std::path::Path;

use client::ClientConfig;
use proto::PhoneNumber;

/// The file a node's development code provider writes codes to, in its
/// data directory: one "PHONE CODE" line per code sent.
pub const CODE_LOG: &str = "verification-codes.log";

/// A small deterministic generator (xorshift64*) for randomised tests, so
/// that a failure names its seed and replays exactly.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 for `n` = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A phone number from its text.
pub fn phone(s: &str) -> PhoneNumber {
    PhoneNumber::parse(s).expect("valid phone")
}

/// The `n`th test number: `+1555` and `n` in seven digits.
pub fn numbered(n: u64) -> PhoneNumber {
    phone(&format!("+1555{n:07}"))
}

/// The newest code the code log at `file` holds for `phone`.
pub fn code_for(file: &Path, phone: &PhoneNumber) -> String {
    let log = std::fs::read_to_string(file).expect("the code log");
    log.lines()
        .rev()
        .find_map(|line| line.strip_prefix(&format!("{phone} ")))
        .expect("a code for the phone in the log")
        .to_owned()
}

/// Registers `phone` at the node whose data directory is `data_dir`
/// (asks for a code, reads it from the code log, verifies); its token.
pub async fn register(cfg: &ClientConfig, data_dir: &Path, phone: &PhoneNumber) -> String {
    client::request_code(cfg, phone).await.expect("code sent");
    let code = code_for(&data_dir.join(CODE_LOG), phone);
    client::verify(cfg, phone, &code).await.expect("verified").0
}

/// A port free on `ip` now, for a node to listen on later. Taken below
/// the kernel's ephemeral range (32768–60999 by default): a port from that
/// range (what binding port 0 gives) can be taken in between by any
/// outgoing connection of a test running alongside (seen in CI: a node
/// found its cluster port in use). Each test process walks its own stretch
/// of 10,000–32,767, from its pid, and checks that the port binds.
pub fn free_port(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_768;
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + start.wrapping_add(step) % SPAN) as u16;
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} below the ephemeral range");
}

/// A self-signed certificate and its key.
pub struct SelfSigned {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// Its private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

/// A self-signed certificate for `names` (DNS names or IP addresses).
pub fn self_signed(names: &[&str]) -> SelfSigned {
    let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let certified = rcgen::generate_simple_self_signed(names).expect("certificate");
    SelfSigned {
        cert_pem: certified.cert.pem(),
        key_pem: certified.signing_key.serialize_pem(),
        cert_der: certified.cert.der().to_vec(),
        key_der: certified.signing_key.serialize_der(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_phones_are_in_the_test_range() {
        assert_eq!(numbered(42).as_str(), "+15550000042");
        assert_eq!(numbered(1_234_567).as_str(), "+15551234567");
    }

    #[test]
    fn the_newest_code_of_the_phone_is_read() {
        let dir = std::env::temp_dir().join(format!("test-support-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join(CODE_LOG);
        std::fs::write(
            &file,
            "+15550000001 111111\n+15550000002 222222\n+15550000001 333333\n",
        )
        .expect("write");
        assert_eq!(code_for(&file, &numbered(1)), "333333");
        assert_eq!(code_for(&file, &numbered(2)), "222222");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_self_signed_certificate_has_both_encodings() {
        let cert = self_signed(&["localhost", "127.0.0.1"]);
        assert!(cert.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(cert.key_pem.contains("PRIVATE KEY"));
        assert!(!cert.cert_der.is_empty() && !cert.key_der.is_empty());
    }
}
