//! What a link may carry: the stream handed to ractor_cluster, with a guard
//! on everything the peer sends.
//!
//! ractor_cluster trusts the name a peer claims in its handshake and tells
//! the receiving actor nothing about which link a message came through. So
//! the guard reads ractor_cluster's frames as they arrive (an 8-byte
//! big-endian length, then a protobuf `NetworkMessage`) before ractor_cluster
//! does:
//! - the name the peer claims (`NameMessage` from a peer that dialed us,
//!   `Challenge` from one we dialed) must be a name its certificate is valid
//!   for; otherwise the link fails before ractor_cluster sees the claim;
//! - a cast whose envelope names another sender than the link's peer, and a
//!   process-group join of another node's inbox group, are dropped.
//!
//! In `insecure_plaintext` mode there is no certificate: the first name the
//! peer claims is its name for the rest of the link.
//!
//! [`LinkFilter`] is the pure core (bytes in, bytes out); [`Link`] is the
//! stream ractor_cluster gets.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use prost::Message as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, ReadBuf};

use crate::membership::inbox_group;
use crate::wire;
use log_limit::LogLimiter;

/// Who the peer has proven to be.
#[derive(Debug, Clone)]
pub enum Identity {
    /// The peer's certificate, verified against the cluster CA: the name
    /// it claims must be one this certificate is valid for.
    Certificate(CertificateDer<'static>),
    /// No certificate (plaintext links): the first claim is believed.
    Unverified,
}

/// Why a link is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The peer claims a name its certificate is not valid for.
    #[error("peer claims to be {claimed:?}, which its certificate does not name")]
    CertificateName {
        /// The claimed name.
        claimed: String,
    },
    /// The peer claimed a second, different name.
    #[error("peer claimed {first:?}, then {then:?}")]
    NameChanged {
        /// The first claim.
        first: String,
        /// The next.
        then: String,
    },
    /// A frame longer than ractor_cluster accepts.
    #[error("frame of {len} bytes (at most {max})")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
}

impl Violation {
    /// The `cause` label of the refusal metric.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::CertificateName { .. } | Self::NameChanged { .. } => "certificate_name",
            Self::FrameTooLarge { .. } => "frame_too_large",
        }
    }
}

/// A frame the guard kept from ractor_cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// A cast whose envelope names another sender.
    ForeignSender {
        /// The name in the envelope.
        from: String,
    },
    /// A join of a Switchboard inbox group that is not the peer's.
    ForeignInbox {
        /// The group.
        group: String,
    },
    /// A cast or join before the peer said who it is.
    BeforeName,
}

impl Dropped {
    /// The `kind` label of the drop metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ForeignSender { .. } => "foreign_sender",
            Self::ForeignInbox { .. } => "foreign_inbox",
            Self::BeforeName => "before_name",
        }
    }
}

const INBOX_PREFIX: &str = "switchboard.inbox.";
const LENGTH: usize = std::mem::size_of::<u64>();

/// The guard's pure core: takes the bytes a peer sends, gives back those
/// ractor_cluster may read (whole frames, some left out).
#[derive(Debug)]
pub struct LinkFilter {
    identity: Identity,
    peer: Option<String>,
    buf: Vec<u8>,
    max_frame: u64,
}

impl LinkFilter {
    /// A filter for a link whose peer proved `identity`; frames longer than
    /// `max_frame` fail the link.
    pub fn new(identity: Identity, max_frame: u64) -> Self {
        Self {
            identity,
            peer: None,
            buf: Vec::new(),
            max_frame,
        }
    }

    /// The peer's name, once it has claimed one that holds.
    pub fn peer(&self) -> Option<&str> {
        self.peer.as_deref()
    }

    /// Takes `input`, appends every complete frame that may pass to `out`,
    /// and says which were dropped. A partial frame waits for more bytes
    /// (growing only as they arrive).
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Vec<Dropped>, Violation> {
        self.buf.extend_from_slice(input);
        let mut dropped = Vec::new();
        let mut start = 0;
        let result = loop {
            let rest = &self.buf[start..];
            let Some(header) = rest.first_chunk::<LENGTH>() else {
                break Ok(());
            };
            let len = u64::from_be_bytes(*header);
            if len > self.max_frame {
                break Err(Violation::FrameTooLarge {
                    len,
                    max: self.max_frame,
                });
            }
            // At most `max_frame`, which is a buffer size: fits a usize.
            let total = LENGTH + len as usize;
            if rest.len() < total {
                break Ok(());
            }
            match judge(&self.identity, &mut self.peer, &rest[LENGTH..total]) {
                Ok(None) => out.extend_from_slice(&rest[..total]),
                Ok(Some(drop)) => dropped.push(drop),
                Err(violation) => break Err(violation),
            }
            start += total;
        };
        self.buf.drain(..start);
        result.map(|()| dropped)
    }
}

/// Decides one frame: `None` passes it.
fn judge(
    identity: &Identity,
    peer: &mut Option<String>,
    payload: &[u8],
) -> Result<Option<Dropped>, Violation> {
    // Bytes that are not a frame are ractor_cluster's to refuse (it closes
    // the link); nothing in them reaches an actor.
    let Ok(message) = ractor_wire::NetworkMessage::decode(payload) else {
        return Ok(None);
    };
    use ractor_wire::{auth, control, network, node};
    match message.message {
        Some(network::Message::Auth(ractor_wire::AuthenticationMessage {
            msg: Some(auth::Msg::Name(ractor_wire::Named { name })),
        }))
        | Some(network::Message::Auth(ractor_wire::AuthenticationMessage {
            msg: Some(auth::Msg::Challenge(ractor_wire::Named { name })),
        })) => {
            claim(identity, peer, &name)?;
            Ok(None)
        }
        Some(network::Message::Node(ractor_wire::NodeMessage {
            msg: Some(node::Msg::Cast(ractor_wire::Cast { what })),
        })) => Ok(match (peer.as_deref(), wire::sender_of(&what)) {
            (None, _) => Some(Dropped::BeforeName),
            (Some(peer), Some(from)) if from != peer => Some(Dropped::ForeignSender {
                from: from.to_owned(),
            }),
            // A frame this build cannot read is the inbox's to count.
            _ => None,
        }),
        Some(network::Message::Control(ractor_wire::ControlMessage {
            msg: Some(control::Msg::PgJoin(ractor_wire::PgJoin { group })),
        })) if group.starts_with(INBOX_PREFIX) => Ok(match peer.as_deref() {
            None => Some(Dropped::BeforeName),
            Some(peer) if group != inbox_group(peer) => Some(Dropped::ForeignInbox { group }),
            Some(_) => None,
        }),
        _ => Ok(None),
    }
}

/// Takes the peer's claimed name (`name@host` in ractor_cluster).
fn claim(identity: &Identity, peer: &mut Option<String>, full: &str) -> Result<(), Violation> {
    let name = full.split('@').next().unwrap_or(full);
    if let Some(first) = peer.as_deref() {
        return if first == name {
            Ok(())
        } else {
            Err(Violation::NameChanged {
                first: first.to_owned(),
                then: name.to_owned(),
            })
        };
    }
    if let Identity::Certificate(der) = identity {
        let refused = || Violation::CertificateName {
            claimed: name.to_owned(),
        };
        let parsed = rustls::server::ParsedCertificate::try_from(der).map_err(|_| refused())?;
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| refused())?;
        rustls::client::verify_server_name(&parsed, &server_name).map_err(|_| refused())?;
    }
    *peer = Some(name.to_owned());
    Ok(())
}

/// The few fields of ractor_cluster's protobuf messages the guard reads
/// (tags from its `protocol/*.proto`; every other field is skipped).
#[allow(unreachable_pub, missing_docs)]
mod ractor_wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NetworkMessage {
        #[prost(oneof = "network::Message", tags = "1, 2, 3")]
        pub message: Option<network::Message>,
    }

    pub mod network {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Message {
            #[prost(message, tag = "1")]
            Auth(super::AuthenticationMessage),
            #[prost(message, tag = "2")]
            Node(super::NodeMessage),
            #[prost(message, tag = "3")]
            Control(super::ControlMessage),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AuthenticationMessage {
        #[prost(oneof = "auth::Msg", tags = "1, 4")]
        pub msg: Option<auth::Msg>,
    }

    pub mod auth {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Msg {
            /// `NameMessage`: a dialing peer's name.
            #[prost(message, tag = "1")]
            Name(super::Named),
            /// `Challenge`: a dialed peer's name.
            #[prost(message, tag = "4")]
            Challenge(super::Named),
        }
    }

    /// `NameMessage` and `Challenge` both carry the name in field 1.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Named {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeMessage {
        #[prost(oneof = "node::Msg", tags = "1")]
        pub msg: Option<node::Msg>,
    }

    pub mod node {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Msg {
            #[prost(message, tag = "1")]
            Cast(super::Cast),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Cast {
        #[prost(bytes = "vec", tag = "2")]
        pub what: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ControlMessage {
        #[prost(oneof = "control::Msg", tags = "5")]
        pub msg: Option<control::Msg>,
    }

    pub mod control {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Msg {
            #[prost(message, tag = "5")]
            PgJoin(super::PgJoin),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PgJoin {
        #[prost(string, tag = "1")]
        pub group: String,
    }
}

/// Refusals and drops are logged at most once per interval per cause.
static LOGS: LogLimiter = LogLimiter::new();

/// The read half of a link, behind the guard.
struct GuardedRead<R> {
    inner: R,
    filter: LinkFilter,
    /// Frames that passed, not yet read by ractor_cluster.
    out: Vec<u8>,
    out_pos: usize,
    chunk: Box<[u8]>,
    peer_addr: SocketAddr,
}

impl<R: AsyncRead + Unpin> AsyncRead for GuardedRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let got = chunk.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match this.filter.push(got, &mut this.out) {
                Ok(dropped) => {
                    for drop in dropped {
                        metrics::counter!(
                            "switchboard_cluster_frames_dropped_total",
                            "kind" => drop.kind()
                        )
                        .increment(1);
                        if let Some(suppressed) = LOGS.allow(drop.kind()) {
                            tracing::warn!(
                                peer = ?this.filter.peer(),
                                addr = %this.peer_addr,
                                frame = ?drop,
                                suppressed,
                                "cluster frame not from the link's peer dropped"
                            );
                        }
                    }
                }
                Err(violation) => {
                    metrics::counter!(
                        "switchboard_cluster_links_refused_total",
                        "cause" => violation.cause()
                    )
                    .increment(1);
                    if let Some(suppressed) = LOGS.allow(violation.cause()) {
                        tracing::warn!(
                            addr = %this.peer_addr,
                            error = %violation,
                            suppressed,
                            "cluster link closed"
                        );
                    }
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation)));
                }
            }
        }
    }
}

/// A link (accepted or dialed) as ractor_cluster gets it.
pub(crate) struct Link<S> {
    pub(crate) stream: S,
    pub(crate) peer: SocketAddr,
    pub(crate) local: Option<SocketAddr>,
    pub(crate) identity: Identity,
}

impl<S> ractor_cluster::ClusterBidiStream for Link<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    fn split(self: Box<Self>) -> (ractor_cluster::BoxRead, ractor_cluster::BoxWrite) {
        let (read, write) = tokio::io::split(self.stream);
        let guarded = GuardedRead {
            inner: read,
            filter: LinkFilter::new(
                self.identity,
                ractor_cluster::DEFAULT_MAX_INBOUND_FRAME_SIZE,
            ),
            out: Vec::new(),
            out_pos: 0,
            chunk: vec![0; 16 * 1024].into_boxed_slice(),
            peer_addr: self.peer,
        };
        (Box::new(guarded), Box::new(write))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer.to_string())
    }

    fn local_label(&self) -> Option<String> {
        self.local.map(|a| a.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::ractor_wire::*;
    use super::*;
    use crate::wire::{Body, Frame};

    fn framed(message: NetworkMessage) -> Vec<u8> {
        let payload = message.encode_to_vec();
        let mut bytes = (payload.len() as u64).to_be_bytes().to_vec();
        bytes.extend(payload);
        bytes
    }

    fn auth(msg: auth::Msg) -> Vec<u8> {
        framed(NetworkMessage {
            message: Some(network::Message::Auth(AuthenticationMessage {
                msg: Some(msg),
            })),
        })
    }

    fn name(full: &str) -> Vec<u8> {
        auth(auth::Msg::Name(Named { name: full.into() }))
    }

    fn challenge(full: &str) -> Vec<u8> {
        auth(auth::Msg::Challenge(Named { name: full.into() }))
    }

    fn cast_from(from: &str) -> Vec<u8> {
        let what = Frame {
            from: from.into(),
            body: Body::Ping { seq: 1 },
        }
        .encode()
        .expect("encodes")
        .0;
        framed(NetworkMessage {
            message: Some(network::Message::Node(NodeMessage {
                msg: Some(node::Msg::Cast(Cast { what })),
            })),
        })
    }

    fn join(group: &str) -> Vec<u8> {
        framed(NetworkMessage {
            message: Some(network::Message::Control(ControlMessage {
                msg: Some(control::Msg::PgJoin(PgJoin {
                    group: group.into(),
                })),
            })),
        })
    }

    fn certificate(names: &[&str]) -> Identity {
        Identity::Certificate(test_support::self_signed(names).cert_der.into())
    }

    const MAX: u64 = 1 << 20;

    /// Feeds frames one by one; returns what passed (as frame indexes), what
    /// was dropped, and the violation that ended the link, if any.
    fn run(
        identity: Identity,
        frames: &[Vec<u8>],
    ) -> (Vec<usize>, Vec<Dropped>, Option<Violation>) {
        let mut filter = LinkFilter::new(identity, MAX);
        let (mut passed, mut dropped) = (Vec::new(), Vec::new());
        for (i, frame) in frames.iter().enumerate() {
            let mut out = Vec::new();
            match filter.push(frame, &mut out) {
                Ok(d) => {
                    if !out.is_empty() {
                        assert_eq!(&out, frame, "a frame passes whole and unchanged");
                        passed.push(i);
                    }
                    dropped.extend(d);
                }
                Err(v) => return (passed, dropped, Some(v)),
            }
        }
        (passed, dropped, None)
    }

    #[test]
    fn frames_are_judged_by_the_peers_proven_name() {
        let foreign = |from: &str| Dropped::ForeignSender { from: from.into() };
        type Case = (
            &'static str,
            Identity,
            Vec<Vec<u8>>,
            Vec<usize>,
            Vec<Dropped>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "a dialing peer named by its certificate",
                certificate(&["n2"]),
                vec![
                    name("n2@127.0.0.2"),
                    cast_from("n2"),
                    join("switchboard.inbox.n2"),
                ],
                vec![0, 1, 2],
                vec![],
                None,
            ),
            (
                "a dialed peer named by its certificate (Challenge)",
                certificate(&["n2"]),
                vec![challenge("n2@127.0.0.2"), cast_from("n2")],
                vec![0, 1],
                vec![],
                None,
            ),
            (
                "a certificate for n1 claiming n2",
                certificate(&["n1"]),
                vec![name("n2@127.0.0.2"), cast_from("n2")],
                vec![],
                vec![],
                Some("certificate_name"),
            ),
            (
                "a claim that is not a DNS name",
                certificate(&["n1"]),
                vec![name("not a name@x")],
                vec![],
                vec![],
                Some("certificate_name"),
            ),
            (
                "frames naming another sender, another inbox",
                certificate(&["n2"]),
                vec![
                    name("n2@h"),
                    cast_from("n3"),
                    join("switchboard.inbox.n3"),
                    join("other.group"),
                    cast_from("n2"),
                ],
                vec![0, 3, 4],
                vec![
                    foreign("n3"),
                    Dropped::ForeignInbox {
                        group: "switchboard.inbox.n3".into(),
                    },
                ],
                None,
            ),
            (
                "casts and inbox joins before a name",
                certificate(&["n2"]),
                vec![cast_from("n2"), join("switchboard.inbox.n2"), name("n2@h")],
                vec![2],
                vec![Dropped::BeforeName, Dropped::BeforeName],
                None,
            ),
            (
                "plaintext: the first claim holds for the link",
                Identity::Unverified,
                vec![name("n2@h"), cast_from("n2"), cast_from("n1")],
                vec![0, 1],
                vec![foreign("n1")],
                None,
            ),
            (
                "plaintext: a second, different claim",
                Identity::Unverified,
                vec![name("n2@h"), challenge("n3@h")],
                vec![0],
                vec![],
                Some("certificate_name"),
            ),
        ];
        for (what, identity, frames, passed, dropped, violation) in cases {
            let (p, d, v) = run(identity, &frames);
            assert_eq!(p, passed, "{what}: passed");
            assert_eq!(d, dropped, "{what}: dropped");
            assert_eq!(
                v.as_ref().map(Violation::cause),
                violation,
                "{what}: violation"
            );
        }
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let frames = [name("n2@h"), cast_from("n2"), cast_from("n9"), join("x")];
        let stream: Vec<u8> = frames.concat();
        let expected: Vec<u8> = [&frames[0], &frames[1], &frames[3]]
            .map(|f| f.to_vec())
            .concat();
        for step in [1, 3, 8, 9, 64, stream.len()] {
            let mut filter = LinkFilter::new(certificate(&["n2"]), MAX);
            let mut out = Vec::new();
            let mut dropped = Vec::new();
            for piece in stream.chunks(step) {
                dropped.extend(filter.push(piece, &mut out).expect("no violation"));
            }
            assert_eq!(out, expected, "step {step}");
            assert_eq!(dropped.len(), 1, "step {step}");
        }
    }

    #[test]
    fn an_oversized_frame_fails_before_it_is_buffered() {
        let mut filter = LinkFilter::new(Identity::Unverified, 100);
        let mut out = Vec::new();
        let header = 101u64.to_be_bytes();
        assert_eq!(
            filter.push(&header, &mut out),
            Err(Violation::FrameTooLarge { len: 101, max: 100 })
        );
        // Garbage of an allowed length passes to ractor_cluster, which
        // refuses it itself.
        let mut filter = LinkFilter::new(Identity::Unverified, 100);
        let mut garbage = 3u64.to_be_bytes().to_vec();
        garbage.extend([0xff, 0xff, 0xff]);
        assert_eq!(filter.push(&garbage, &mut out), Ok(vec![]));
        assert_eq!(out, garbage);
    }
}
