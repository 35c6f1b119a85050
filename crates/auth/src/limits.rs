//! Limits on who may ask for codes and try them: token buckets, pure.
//!
//! The per-phone limits of `codes.rs` stop a flood at one number; these stop
//! a flood across numbers (SMS pumping: every code sent costs money and may
//! pay the attacker a share) and guessing across numbers. Time is passed in,
//! decisions come out; the auth actor and the session are the shells.
//!
//! A code request must pass, in order:
//! - its connection's bucket (kept by the session, which closes the
//!   connection when it is empty);
//! - its source address's bucket, and the bucket of the address's /24
//!   (IPv4) or /64 (IPv6), so that a host or a small network cannot spread
//!   a flood over many connections or addresses;
//! - the node-wide bucket, the bill's ceiling;
//! - the bucket of the number's country calling code, so that a flood to
//!   expensive destinations is capped without stopping the rest.
//!
//! Tokens are taken only when every bucket has one, from all of them at
//! once when the request is admitted (`check_code` then `issued`), before
//! the number's own limits are read: requests in flight at once must not
//! pass on the same tokens, so a request the per-phone limit then refuses
//! still counts. Verify attempts go through their own connection, address
//! and subnet buckets.
//!
//! Memory: a bucket that has refilled is the same as no bucket, so
//! [`CodeLimiter::prune`] drops it. Address and subnet buckets are created
//! only when a token is taken, so refused requests (however many sources
//! they come from) never grow the maps, and code buckets are bounded by the
//! node-wide rate. Country buckets are made at the check, one per calling
//! code, so bounded by the codes that exist.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proto::PhoneNumber;
use serde::{Deserialize, Serialize};

/// The size and refill rate of a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Tokens a full bucket holds: requests allowed at once.
    pub burst: u32,
    /// Tokens added per hour: the sustained rate.
    pub per_hour: u32,
}

impl BucketConfig {
    /// A bucket of `burst` tokens refilled at `per_hour`.
    pub const fn new(burst: u32, per_hour: u32) -> Self {
        Self { burst, per_hour }
    }
}

/// A token bucket. Pure: `now_ms` is passed in.
///
/// Kept as the time at which it would be full again (the "theoretical
/// arrival time" of GCRA), in whole milliseconds: exact, no float drift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    /// Milliseconds per token.
    interval_ms: u64,
    /// How far ahead of now `full_at_ms` may run: (burst - 1) intervals.
    tolerance_ms: u64,
    /// When the bucket is full again.
    full_at_ms: u64,
    /// The latest time seen, so that a clock going back changes nothing.
    now_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(config: BucketConfig, now_ms: u64) -> Self {
        let interval_ms = (3_600_000 / u64::from(config.per_hour.max(1))).max(1);
        Self {
            interval_ms,
            tolerance_ms: interval_ms.saturating_mul(u64::from(config.burst.max(1)) - 1),
            full_at_ms: now_ms,
            now_ms,
        }
    }

    fn advance(&mut self, now_ms: u64) -> u64 {
        self.now_ms = self.now_ms.max(now_ms);
        self.now_ms
    }

    /// Whether a token is there at `now_ms`; `Err` holds the milliseconds
    /// until one will be. Takes nothing.
    pub fn check(&mut self, now_ms: u64) -> Result<(), u64> {
        let now = self.advance(now_ms);
        let ahead = self.full_at_ms.saturating_sub(now);
        if ahead <= self.tolerance_ms {
            Ok(())
        } else {
            Err(ahead - self.tolerance_ms)
        }
    }

    /// Takes a token at `now_ms` if there is one; `Err` holds the
    /// milliseconds until there will be (nothing is taken then).
    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        self.check(now_ms)?;
        self.full_at_ms = self.full_at_ms.max(self.now_ms) + self.interval_ms;
        Ok(())
    }

    /// Whether the bucket is full at `now_ms` (and so may be forgotten).
    fn is_full(&mut self, now_ms: u64) -> bool {
        let now = self.advance(now_ms);
        self.full_at_ms <= now
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// The per-phone resend interval or hourly cap (`codes.rs`).
    Phone,
    /// The connection's bucket.
    Connection,
    /// The source address's bucket.
    Address,
    /// The bucket of the source's /24 (IPv4) or /64 (IPv6).
    Subnet,
    /// The node-wide bucket.
    Node,
    /// The bucket of the number's country calling code.
    Country,
}

impl Limit {
    /// The label in metrics (`rate_limited_<this>`) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Phone => "phone",
            Limit::Connection => "connection",
            Limit::Address => "address",
            Limit::Subnet => "subnet",
            Limit::Node => "node",
            Limit::Country => "country",
        }
    }

    /// Whether a client refused by this limit is disconnected: the limits
    /// of what it sends itself. The per-phone, node-wide and country limits
    /// may refuse a client that did nothing wrong; it is answered, not cut.
    pub fn closes_connection(self) -> bool {
        matches!(self, Limit::Connection | Limit::Address | Limit::Subnet)
    }
}

/// A refusal: which limit, and when a retry can pass it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The limit that refused.
    pub limit: Limit,
    /// Milliseconds until it has a token again.
    pub retry_after_ms: u64,
}

/// The limits of the `[auth.limits]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Code requests per connection; beyond it the connection is closed.
    pub codes_per_connection: BucketConfig,
    /// Code requests per source address; beyond it the connection is closed.
    pub codes_per_address: BucketConfig,
    /// Code requests per /24 (IPv4) or /64 (IPv6) of source addresses.
    pub codes_per_subnet: BucketConfig,
    /// Codes sent by the node as a whole.
    pub codes_per_node: BucketConfig,
    /// Codes per hour to one country calling code (node-wide), unless
    /// overridden in `country_overrides`.
    pub codes_per_country_per_hour: u32,
    /// Per-country caps by calling code without the plus, e.g.
    /// `{ "1" = 2000, "44" = 300 }`.
    pub country_overrides: BTreeMap<String, u32>,
    /// Verify attempts per connection; beyond it the connection is closed.
    pub verifies_per_connection: BucketConfig,
    /// Verify attempts per source address.
    pub verifies_per_address: BucketConfig,
    /// Verify attempts per /24 (IPv4) or /64 (IPv6) of source addresses.
    pub verifies_per_subnet: BucketConfig,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            codes_per_connection: BucketConfig::new(3, 10),
            codes_per_address: BucketConfig::new(20, 60),
            codes_per_subnet: BucketConfig::new(50, 300),
            codes_per_node: BucketConfig::new(100, 3_600),
            codes_per_country_per_hour: 500,
            country_overrides: BTreeMap::new(),
            verifies_per_connection: BucketConfig::new(10, 30),
            verifies_per_address: BucketConfig::new(30, 120),
            verifies_per_subnet: BucketConfig::new(100, 600),
        }
    }
}

impl LimitsConfig {
    /// Why these limits cannot work, if they cannot.
    pub fn problem(&self) -> Option<String> {
        let buckets = [
            ("codes_per_connection", self.codes_per_connection),
            ("codes_per_address", self.codes_per_address),
            ("codes_per_subnet", self.codes_per_subnet),
            ("codes_per_node", self.codes_per_node),
            ("verifies_per_connection", self.verifies_per_connection),
            ("verifies_per_address", self.verifies_per_address),
            ("verifies_per_subnet", self.verifies_per_subnet),
        ];
        for (name, bucket) in buckets {
            if bucket.burst == 0 || bucket.per_hour == 0 {
                return Some(format!(
                    "limits.{name}: burst and per_hour must be at least 1"
                ));
            }
        }
        if self.codes_per_country_per_hour == 0 {
            return Some("limits.codes_per_country_per_hour must be at least 1".into());
        }
        for (code, cap) in &self.country_overrides {
            let digits = code.strip_prefix('+').unwrap_or(code);
            if digits.is_empty()
                || digits.len() > 3
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || digits.starts_with('0')
            {
                return Some(format!(
                    "limits.country_overrides: {code:?} is not a calling code (1 to 3 digits)"
                ));
            }
            if *cap == 0 {
                return Some(format!(
                    "limits.country_overrides: the cap for {code:?} must be at least 1"
                ));
            }
        }
        None
    }

    fn country_cap(&self, country: u16) -> u32 {
        self.country_overrides
            .iter()
            .find(|(code, _)| {
                code.strip_prefix('+')
                    .unwrap_or(code)
                    .parse::<u16>()
                    .is_ok_and(|c| c == country)
            })
            .map_or(self.codes_per_country_per_hour, |(_, cap)| *cap)
    }
}

/// The two-digit country calling codes (ITU-T E.164). With the one-digit
/// codes 1 and 7 they are the only codes shorter than three digits; calling
/// codes are prefix-free, so any other number's code is its first three.
const TWO_DIGIT_CODES: &[u16] = &[
    20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55, 56,
    57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
];

/// The country calling code of an E.164 number (1 to 3 digits).
pub fn country_code(phone: &PhoneNumber) -> u16 {
    let digits = phone.as_str().trim_start_matches('+').as_bytes();
    let value = |n: usize| {
        digits
            .iter()
            .take(n)
            .fold(0u16, |acc, d| acc * 10 + u16::from(d.saturating_sub(b'0')))
    };
    match digits.first() {
        Some(b'1') | Some(b'7') => value(1),
        _ if TWO_DIGIT_CODES.contains(&value(2)) => value(2),
        _ => value(3),
    }
}

/// Where a request comes from, as the buckets see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    Address(IpAddr),
    /// The /24 (IPv4) or /64 (IPv6), as the masked address.
    Subnet(IpAddr),
}

fn source_keys(source: IpAddr) -> [SourceKey; 2] {
    // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
    let source = source.to_canonical();
    let subnet = match source {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & 0xFFFF_FF00)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
    };
    [SourceKey::Address(source), SourceKey::Subnet(subnet)]
}

/// Buckets by key, created full on first use.
#[derive(Debug)]
struct Buckets<K> {
    config: BucketConfig,
    map: HashMap<K, TokenBucket>,
}

impl<K: std::hash::Hash + Eq + Copy> Buckets<K> {
    fn new(config: BucketConfig) -> Self {
        Self {
            config,
            map: HashMap::new(),
        }
    }

    fn check(&mut self, key: K, now_ms: u64) -> Result<(), u64> {
        match self.map.get_mut(&key) {
            Some(bucket) => bucket.check(now_ms),
            // A missing bucket is a full one (burst is at least 1).
            None => Ok(()),
        }
    }

    fn take(&mut self, key: K, now_ms: u64) {
        let config = self.config;
        let bucket = self
            .map
            .entry(key)
            .or_insert_with(|| TokenBucket::new(config, now_ms));
        let _ = bucket.take(now_ms);
    }

    fn prune(&mut self, now_ms: u64) {
        self.map.retain(|_, bucket| !bucket.is_full(now_ms));
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// The node's shared limits on code requests and verify attempts (the
/// per-connection ones live with each session).
#[derive(Debug)]
pub struct CodeLimiter {
    limits: LimitsConfig,
    code_addresses: Buckets<SourceKey>,
    code_subnets: Buckets<SourceKey>,
    node: TokenBucket,
    countries: HashMap<u16, TokenBucket>,
    verify_addresses: Buckets<SourceKey>,
    verify_subnets: Buckets<SourceKey>,
}

impl CodeLimiter {
    /// Full buckets at `now_ms`.
    pub fn new(limits: LimitsConfig, now_ms: u64) -> Self {
        Self {
            code_addresses: Buckets::new(limits.codes_per_address),
            code_subnets: Buckets::new(limits.codes_per_subnet),
            node: TokenBucket::new(limits.codes_per_node, now_ms),
            countries: HashMap::new(),
            verify_addresses: Buckets::new(limits.verifies_per_address),
            verify_subnets: Buckets::new(limits.verifies_per_subnet),
            limits,
        }
    }

    fn country_bucket(&mut self, country: u16, now_ms: u64) -> &mut TokenBucket {
        let cap = self.limits.country_cap(country);
        self.countries
            .entry(country)
            .or_insert_with(|| TokenBucket::new(BucketConfig::new(cap, cap), now_ms))
    }

    /// Whether a code for `phone` asked from `source` (None: a trusted
    /// caller inside the node) may be issued at `now_ms`. Takes nothing:
    /// call [`CodeLimiter::issued`] to admit it.
    pub fn check_code(
        &mut self,
        source: Option<IpAddr>,
        phone: &PhoneNumber,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let refused = |limit| {
            move |retry_after_ms| Refusal {
                limit,
                retry_after_ms,
            }
        };
        if let Some(source) = source {
            let [address, subnet] = source_keys(source);
            self.code_addresses
                .check(address, now_ms)
                .map_err(refused(Limit::Address))?;
            self.code_subnets
                .check(subnet, now_ms)
                .map_err(refused(Limit::Subnet))?;
        }
        self.node.check(now_ms).map_err(refused(Limit::Node))?;
        self.country_bucket(country_code(phone), now_ms)
            .check(now_ms)
            .map_err(refused(Limit::Country))
    }

    /// Counts a code request for `phone` from `source` admitted at `now_ms`
    /// (after [`CodeLimiter::check_code`] passed).
    pub fn issued(&mut self, source: Option<IpAddr>, phone: &PhoneNumber, now_ms: u64) {
        if let Some(source) = source {
            let [address, subnet] = source_keys(source);
            self.code_addresses.take(address, now_ms);
            self.code_subnets.take(subnet, now_ms);
        }
        let _ = self.node.take(now_ms);
        let _ = self
            .country_bucket(country_code(phone), now_ms)
            .take(now_ms);
    }

    /// Takes a verify attempt from `source`'s buckets at `now_ms`, if both
    /// have a token.
    pub fn verify_attempt(&mut self, source: Option<IpAddr>, now_ms: u64) -> Result<(), Refusal> {
        let Some(source) = source else {
            return Ok(());
        };
        let [address, subnet] = source_keys(source);
        let refused = |limit| {
            move |retry_after_ms| Refusal {
                limit,
                retry_after_ms,
            }
        };
        self.verify_addresses
            .check(address, now_ms)
            .map_err(refused(Limit::Address))?;
        self.verify_subnets
            .check(subnet, now_ms)
            .map_err(refused(Limit::Subnet))?;
        self.verify_addresses.take(address, now_ms);
        self.verify_subnets.take(subnet, now_ms);
        Ok(())
    }

    /// Forgets buckets that have refilled. Returns how many remain.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        self.code_addresses.prune(now_ms);
        self.code_subnets.prune(now_ms);
        self.verify_addresses.prune(now_ms);
        self.verify_subnets.prune(now_ms);
        self.countries.retain(|_, bucket| !bucket.is_full(now_ms));
        self.len()
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.code_addresses.len()
            + self.code_subnets.len()
            + self.verify_addresses.len()
            + self.verify_subnets.len()
            + self.countries.len()
    }

    /// Whether no bucket is held (every source and country is at rest).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_support::phone;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("address"))
    }

    #[test]
    fn bucket_by_table() {
        // 3 at once, then one every 20 minutes (3 per hour).
        let mut bucket = TokenBucket::new(BucketConfig::new(3, 3), 0);
        let steps: &[(u64, Result<(), u64>)] = &[
            (0, Ok(())),
            (0, Ok(())),
            (0, Ok(())),
            (0, Err(1_200_000)),
            (600_000, Err(600_000)),
            // A refused take takes nothing.
            (1_199_999, Err(1)),
            (1_200_000, Ok(())),
            (1_200_000, Err(1_200_000)),
            // Refill stops at the burst.
            (100 * 3_600_000, Ok(())),
            (100 * 3_600_000, Ok(())),
            (100 * 3_600_000, Ok(())),
            (100 * 3_600_000, Err(1_200_000)),
            // Time going back is ignored.
            (0, Err(1_200_000)),
        ];
        for (i, (now, want)) in steps.iter().enumerate() {
            assert_eq!(bucket.take(*now), *want, "step {i} at {now} ms");
        }
    }

    #[test]
    fn country_codes_by_table() {
        let cases: &[(&str, u16)] = &[
            ("+15551234567", 1),
            ("+74951234567", 7),
            ("+447911123456", 44),
            ("+4915112345678", 49),
            ("+201001234567", 20),
            ("+27821234567", 27),
            ("+33612345678", 33),
            ("+8613812345678", 86),
            ("+919812345678", 91),
            ("+35312345678", 353),
            ("+380501234567", 380),
            ("+420601123456", 420),
            ("+212612345678", 212),
            ("+9715012345678", 971),
            ("+882123456789", 882),
            ("+99912345678", 999),
        ];
        for (number, want) in cases {
            assert_eq!(country_code(&phone(number)), *want, "{number}");
        }
    }

    /// A step of a limiter table.
    #[derive(Debug)]
    enum Step {
        /// A code for a phone from a source at a time: check, and on success
        /// count it issued.
        Code(Option<&'static str>, &'static str, u64, Result<(), Limit>),
        /// A verify attempt from a source at a time.
        Verify(&'static str, u64, Result<(), Limit>),
        /// Prune at a time; buckets left.
        Prune(u64, usize),
    }
    use Step::*;

    fn small() -> LimitsConfig {
        LimitsConfig {
            codes_per_connection: BucketConfig::new(1, 1),
            codes_per_address: BucketConfig::new(2, 2),
            codes_per_subnet: BucketConfig::new(3, 3),
            codes_per_node: BucketConfig::new(6, 6),
            codes_per_country_per_hour: 4,
            country_overrides: BTreeMap::from([("44".to_owned(), 1), ("+7".to_owned(), 2)]),
            verifies_per_connection: BucketConfig::new(1, 1),
            verifies_per_address: BucketConfig::new(2, 2),
            verifies_per_subnet: BucketConfig::new(3, 3),
        }
    }

    fn run(name: &str, steps: &[Step]) {
        let mut limiter = CodeLimiter::new(small(), 0);
        for (i, step) in steps.iter().enumerate() {
            match step {
                Code(source, number, now, want) => {
                    let source = source.and_then(ip);
                    let got = limiter.check_code(source, &phone(number), *now);
                    if got.is_ok() {
                        limiter.issued(source, &phone(number), *now);
                    }
                    assert_eq!(
                        got.map_err(|r| r.limit),
                        *want,
                        "{name}: step {i}: {step:?}"
                    );
                }
                Verify(source, now, want) => {
                    let got = limiter.verify_attempt(ip(source), *now);
                    assert_eq!(
                        got.map_err(|r| r.limit),
                        *want,
                        "{name}: step {i}: {step:?}"
                    );
                }
                Prune(now, left) => {
                    assert_eq!(limiter.prune(*now), *left, "{name}: step {i}: {step:?}");
                }
            }
        }
    }

    const H: u64 = 3_600_000;

    #[test]
    fn limiter_tables() {
        let tables: &[(&str, &[Step])] = &[
            (
                "one address: two codes, then refused for any number",
                &[
                    Code(Some("10.0.0.1"), "+15550000001", 0, Ok(())),
                    Code(Some("10.0.0.1"), "+15550000002", 0, Ok(())),
                    Code(Some("10.0.0.1"), "+15550000003", 0, Err(Limit::Address)),
                    // Another address of another subnet is not affected.
                    Code(Some("10.0.1.1"), "+15550000004", 0, Ok(())),
                    // Half an hour refills one token of 2 per hour.
                    Code(Some("10.0.0.1"), "+15550000003", H / 2, Ok(())),
                ],
            ),
            (
                "one /24 from many addresses: three, then the subnet refuses",
                &[
                    Code(Some("10.0.0.1"), "+15550000001", 0, Ok(())),
                    Code(Some("10.0.0.2"), "+15550000002", 0, Ok(())),
                    Code(Some("10.0.0.3"), "+15550000003", 0, Ok(())),
                    Code(Some("10.0.0.4"), "+15550000004", 0, Err(Limit::Subnet)),
                    Code(Some("10.0.0.250"), "+15550000004", 0, Err(Limit::Subnet)),
                    Code(Some("10.0.1.4"), "+15550000004", 0, Ok(())),
                ],
            ),
            (
                "IPv6: one /64 is one subnet, another /64 is not",
                &[
                    Code(Some("2001:db8:0:1::1"), "+15550000001", 0, Ok(())),
                    Code(Some("2001:db8:0:1::2"), "+15550000002", 0, Ok(())),
                    Code(Some("2001:db8:0:1:ffff::3"), "+15550000003", 0, Ok(())),
                    Code(
                        Some("2001:db8:0:1::4"),
                        "+15550000004",
                        0,
                        Err(Limit::Subnet),
                    ),
                    Code(Some("2001:db8:0:2::4"), "+15550000004", 0, Ok(())),
                ],
            ),
            (
                "an IPv4-mapped IPv6 source is its IPv4 address",
                &[
                    Code(Some("::ffff:10.0.0.1"), "+15550000001", 0, Ok(())),
                    Code(Some("10.0.0.1"), "+15550000002", 0, Ok(())),
                    Code(
                        Some("::ffff:10.0.0.1"),
                        "+15550000003",
                        0,
                        Err(Limit::Address),
                    ),
                ],
            ),
            (
                "node-wide: six codes from anywhere, then refused for all",
                &[
                    Code(Some("10.0.1.1"), "+15550000001", 0, Ok(())),
                    Code(Some("10.0.2.1"), "+15550000002", 0, Ok(())),
                    Code(Some("10.0.3.1"), "+15550000003", 0, Ok(())),
                    Code(Some("10.0.4.1"), "+15550000004", 0, Ok(())),
                    Code(Some("10.0.5.1"), "+33600000005", 0, Ok(())),
                    Code(None, "+33600000006", 0, Ok(())),
                    Code(Some("10.0.6.1"), "+33600000007", 0, Err(Limit::Node)),
                    Code(None, "+33600000007", 0, Err(Limit::Node)),
                    Code(None, "+33600000007", H / 6, Ok(())),
                ],
            ),
            (
                "country caps: default 4, +44 overridden to 1, +7 to 2",
                &[
                    Code(None, "+15550000001", 0, Ok(())),
                    Code(None, "+15550000002", 0, Ok(())),
                    Code(None, "+15550000003", 0, Ok(())),
                    Code(None, "+15550000004", 0, Ok(())),
                    Code(None, "+15550000005", 0, Err(Limit::Country)),
                    Code(None, "+447911000001", 0, Ok(())),
                    Code(None, "+447911000002", 0, Err(Limit::Country)),
                    // The refused ones took no node token: this is the 6th.
                    Code(None, "+74950000001", 0, Ok(())),
                    Code(None, "+74950000002", 0, Err(Limit::Node)),
                ],
            ),
            (
                "a refusal takes no token from the buckets that had one",
                &[
                    Code(Some("10.0.0.1"), "+447911000001", 0, Ok(())),
                    Code(Some("10.0.0.2"), "+447911000002", 0, Err(Limit::Country)),
                    Code(Some("10.0.0.2"), "+15550000001", 0, Ok(())),
                    Code(Some("10.0.0.2"), "+15550000002", 0, Ok(())),
                    Code(Some("10.0.0.3"), "+15550000003", 0, Err(Limit::Subnet)),
                ],
            ),
            (
                "verify attempts: per address, then per subnet",
                &[
                    Verify("10.0.0.1", 0, Ok(())),
                    Verify("10.0.0.1", 0, Ok(())),
                    Verify("10.0.0.1", 0, Err(Limit::Address)),
                    Verify("10.0.0.2", 0, Ok(())),
                    Verify("10.0.0.3", 0, Err(Limit::Subnet)),
                    Verify("10.0.9.3", 0, Ok(())),
                    // Code buckets are separate.
                    Code(Some("10.0.0.1"), "+15550000001", 0, Ok(())),
                ],
            ),
            (
                "prune forgets buckets once refilled",
                &[
                    Code(Some("10.0.0.1"), "+15550000001", 0, Ok(())),
                    Verify("10.0.0.1", 0, Ok(())),
                    // Address, subnet (code), address, subnet (verify), +1.
                    Prune(0, 5),
                    // +1 (4 per hour) refills its token in 15 min.
                    Prune(H / 4, 4),
                    // The subnet buckets (3 per hour) in 20 min.
                    Prune(H / 3, 2),
                    Prune(H, 0),
                ],
            ),
        ];
        for (name, steps) in tables {
            run(name, steps);
        }
    }

    #[test]
    fn refused_floods_from_many_sources_hold_no_memory() {
        let mut limiter = CodeLimiter::new(small(), 0);
        // Drain the node bucket, then flood from 10,000 addresses.
        for i in 0..6 {
            let country = if i < 3 { "+4930" } else { "+3361" };
            let p = phone(&format!("{country}0000000{i}"));
            limiter
                .check_code(None, &p, 0)
                .expect("within the node's burst");
            limiter.issued(None, &p, 0);
        }
        for i in 0..10_000u32 {
            let source = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + (i << 8)));
            let refused = limiter.check_code(Some(source), &phone("+4930000001"), 1);
            assert_eq!(refused.map_err(|r| r.limit), Err(Limit::Node));
        }
        assert_eq!(limiter.len(), 2, "only the +49 and +33 buckets");
    }

    #[test]
    fn limits_config_problems() {
        assert_eq!(LimitsConfig::default().problem(), None);
        let mut bad = LimitsConfig::default();
        bad.codes_per_node.per_hour = 0;
        assert!(bad.problem().is_some_and(|p| p.contains("codes_per_node")));
        for code in ["", "+", "1234", "4a", "04"] {
            let mut bad = LimitsConfig::default();
            bad.country_overrides.insert(code.to_owned(), 5);
            assert!(bad.problem().is_some(), "{code:?}");
        }
        let mut ok = LimitsConfig::default();
        ok.country_overrides.insert("+44".to_owned(), 5);
        ok.country_overrides.insert("1".to_owned(), 5);
        assert_eq!(ok.problem(), None);
    }
}
