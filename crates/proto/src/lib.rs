//! Switchboard's client wire protocol.
//!
//! # Layout
//! - [`frame`]: the frames a client and a node exchange ([`ClientFrame`],
//!   [`ServerFrame`]) and the types inside them.
//! - [`phone`]: [`PhoneNumber`], an E.164 number validated on every construction
//!   and every decode, so no invalid identity crosses a crate boundary.
//! - [`codec`]: bytes ↔ frames. A frame is a 4-byte big-endian length followed by
//!   that many bytes of postcard. Decoding works on a byte slice with no I/O, so
//!   it is tested without sockets and reused by every transport.
//!
//! This crate has no Tokio and no clock: it is the small shared crate that the
//! node, the client library and clients in other languages agree on. The frames
//! are documented one by one in `docs/protocol.md`.

pub mod clock;
pub mod codec;
pub mod frame;
pub mod phone;
pub mod source;

pub use codec::{
    CodecError, DEFAULT_MAX_FRAME_BYTES, LENGTH_PREFIX_BYTES, decode_frame, encode_frame,
    encode_frame_into, recover_request_id,
};
pub use frame::*;
pub use phone::{PhoneError, PhoneNumber};
pub use source::source_of;

/// The protocol version this build speaks. A client sends it in
/// [`ClientFrame::Hello`]; a node refuses versions it does not know with
/// [`ErrorCode::UnsupportedVersion`]. Version 2 added [`ClientFrame::Ack`].
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version a node still serves: a node welcomes a
/// client in the client's own version, from this one up to
/// [`PROTOCOL_VERSION`], so clients in the field keep working across an
/// upgrade of the nodes. (Versions only append variants.)
pub const MIN_PROTOCOL_VERSION: u16 = 1;
