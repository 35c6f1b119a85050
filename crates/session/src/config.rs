//! Limits and timeouts of client connections.

use std::time::Duration;

/// The numbers test users may have by default: +1 555 0xx xxxx. In the
/// North American plan a central-office code (the three digits after the
/// area code) never starts with 0 or 1, so no subscriber anywhere has a
/// number in this range; it holds a million numbers.
pub const DEFAULT_TEST_NUMBER_PREFIX: &str = "+15550";

/// Settings shared by every client connection of a node.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest frame accepted or sent, length prefix excluded.
    pub max_frame_bytes: u32,
    /// A connection silent this long is closed (clients ping at a third).
    pub idle_timeout: Duration,
    /// Frames queued for one client before it counts as a slow consumer and
    /// is disconnected (it resumes from its mailbox: nothing is lost).
    pub outbound_capacity: usize,
    /// Requests one client may have in flight; the reader waits beyond it.
    pub max_in_flight_requests: usize,
    /// Connections the node accepts at once, on all its listeners.
    pub max_connections: usize,
    /// Of those, connections not logged in yet.
    pub max_guests: usize,
    /// Connections from one source (an IPv4 address or an IPv6 /64).
    pub max_connections_per_source: usize,
    /// Guests from one source.
    pub max_guests_per_source: usize,
    /// Time a new connection has to say hello.
    pub hello_timeout: Duration,
    /// Time a new connection has to log in.
    pub login_timeout: Duration,
    /// Time to finish a frame once its first byte arrived.
    pub frame_timeout: Duration,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for one socket write before the client is dropped.
    pub write_timeout: Duration,
    /// Time allowed for a request to a service (fragment, auth, extension).
    pub request_timeout: Duration,
    /// The secret that enables `MintTestUsers`; `None` refuses it.
    pub admin_secret: Option<String>,
    /// `MintTestUsers` mints only numbers that start with this prefix (see
    /// [`DEFAULT_TEST_NUMBER_PREFIX`]).
    pub test_number_prefix: String,
    /// Messages per second one connection may send; beyond it the session
    /// reads more slowly (see [`crate::pacing`]).
    pub send_rate: f64,
    /// Messages a connection may send in a burst above the rate.
    pub send_burst: f64,
    /// Ack and read-receipt frames per second one connection may send;
    /// beyond it the session reads more slowly, like [`Self::send_rate`].
    pub ack_rate: f64,
    /// Ack and read-receipt frames a connection may send in a burst.
    pub ack_burst: f64,
    /// Presence requests (subscribe, set contacts, set privacy) per second
    /// one connection may send; beyond it they are refused as
    /// `RateLimited` (see [`crate::pacing::Pacer::try_take`]).
    pub presence_rate: f64,
    /// Presence requests a connection may send in a burst.
    pub presence_burst: f64,
    /// Most users in one `SubscribePresence` (a longer list is refused).
    pub max_watched: usize,
    /// Most contacts in one `SetContacts` (a longer list is refused).
    pub max_contacts: usize,
}

impl SessionConfig {
    /// The connection caps, for [`crate::admission::Admission`].
    pub fn admission_limits(&self) -> crate::admission::AdmissionLimits {
        crate::admission::AdmissionLimits {
            max_connections: self.max_connections,
            max_guests: self.max_guests,
            max_per_source: self.max_connections_per_source,
            max_guests_per_source: self.max_guests_per_source,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: proto::DEFAULT_MAX_FRAME_BYTES,
            idle_timeout: Duration::from_secs(180),
            outbound_capacity: 1024,
            max_in_flight_requests: 256,
            max_connections: 100_000,
            max_guests: 10_000,
            max_connections_per_source: 10_000,
            max_guests_per_source: 1_000,
            hello_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(10),
            admin_secret: None,
            test_number_prefix: DEFAULT_TEST_NUMBER_PREFIX.to_owned(),
            send_rate: 500.0,
            send_burst: 1000.0,
            ack_rate: 200.0,
            ack_burst: 400.0,
            presence_rate: 1.0,
            presence_burst: 20.0,
            max_watched: 1000,
            max_contacts: 2000,
        }
    }
}
