//! Bytes ↔ frames: a 4-byte big-endian length, then postcard.
//!
//! Decoding is split like mini-redis's `Frame::check`/`parse`: a buffer that
//! does not yet hold a whole frame is the expected `Ok(None)`, not an error.
//! The length is checked against the limit before anything is buffered, so a
//! hostile prefix cannot make a reader allocate.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::RequestId;

/// Bytes in the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The default largest frame body, length prefix excluded (64 KiB).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 64 * 1024;

/// Why bytes could not become a frame, or a frame could not become bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announces more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// A whole frame arrived but its body is not a valid frame.
    #[error("malformed frame of {len} bytes: {reason}")]
    Malformed {
        /// Body length.
        len: u32,
        /// What postcard reported.
        reason: String,
        /// The request id, when the body could be read that far, so the
        /// error can be answered and the connection kept.
        request_id: Option<RequestId>,
        /// Bytes to skip (prefix and body) to reach the next frame.
        consumed: usize,
    },
    /// A frame to send exceeds the limit (a caller bug or an oversized payload).
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// Appends `frame`, length-prefixed, to `out`. Fails if the body would exceed
/// `max_frame_bytes`, leaving `out` unchanged.
pub fn encode_frame_into<T: Serialize>(
    frame: &T,
    max_frame_bytes: u32,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    let encoded = postcard::to_extend(frame, std::mem::take(out));
    let mut buf = match encoded {
        Ok(buf) => buf,
        Err(e) => return Err(CodecError::Encode(e.to_string())),
    };
    let body_len = buf.len() - start - LENGTH_PREFIX_BYTES;
    if body_len > max_frame_bytes as usize {
        buf.truncate(start);
        *out = buf;
        return Err(CodecError::Encode(format!(
            "frame body of {body_len} bytes exceeds the limit of {max_frame_bytes}"
        )));
    }
    buf[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&(body_len as u32).to_be_bytes());
    *out = buf;
    Ok(())
}

/// Encodes one frame, length-prefixed.
pub fn encode_frame<T: Serialize>(frame: &T, max_frame_bytes: u32) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_frame_into(frame, max_frame_bytes, &mut out)?;
    Ok(out)
}

/// Decodes the first frame in `buf`.
///
/// Returns `Ok(Some((frame, consumed)))` for a whole frame, `Ok(None)` when more
/// bytes are needed, and an error for an oversized prefix (close the
/// connection: the stream cannot be resynchronised) or a malformed body
/// (`consumed` says how far to skip).
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max_frame_bytes: u32,
) -> Result<Option<(T, usize)>, CodecError> {
    let Some(prefix) = buf.get(..LENGTH_PREFIX_BYTES) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; LENGTH_PREFIX_BYTES];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len_bytes);
    if len > max_frame_bytes {
        return Err(CodecError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    let end = LENGTH_PREFIX_BYTES + len as usize;
    let Some(body) = buf.get(LENGTH_PREFIX_BYTES..end) else {
        return Ok(None);
    };
    match postcard::from_bytes::<T>(body) {
        Ok(frame) => Ok(Some((frame, end))),
        Err(e) => Err(CodecError::Malformed {
            len,
            reason: e.to_string(),
            request_id: recover_request_id(body),
            consumed: end,
        }),
    }
}

/// Reads the request id from the start of a [`crate::ClientFrame::Request`]
/// body whose request part could not be decoded (e.g. a request variant this
/// node does not know), so the node can answer it with an error.
pub fn recover_request_id(body: &[u8]) -> Option<RequestId> {
    // postcard writes the enum variant index and then the id, both as varints.
    const REQUEST_VARIANT: u32 = 1;
    let (variant, rest) = postcard::take_from_bytes::<u32>(body).ok()?;
    if variant != REQUEST_VARIANT {
        return None;
    }
    let (id, _) = postcard::take_from_bytes::<RequestId>(rest).ok()?;
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientFrame, PhoneNumber, Request, Response, ServerFrame};

    const MAX: u32 = DEFAULT_MAX_FRAME_BYTES;

    fn phone(s: &str) -> PhoneNumber {
        PhoneNumber::parse(s).expect("valid phone")
    }

    fn samples() -> Vec<ClientFrame> {
        vec![
            ClientFrame::Hello {
                version: crate::PROTOCOL_VERSION,
                agent: "test".into(),
            },
            ClientFrame::Request {
                id: 7,
                request: Request::Send {
                    to: phone("+15551234567"),
                    client_msg_id: u64::MAX,
                    payload: vec![0, 1, 2, 255],
                },
            },
            ClientFrame::Request {
                id: u32::MAX,
                request: Request::Ack { ids: vec![1, 2, 3] },
            },
            ClientFrame::Ack {
                ids: vec![u64::MAX, 0],
            },
            ClientFrame::Request {
                id: 8,
                request: Request::SendAfter {
                    to: phone("+15551234567"),
                    client_msg_id: 2,
                    after: 1,
                    payload: vec![9],
                },
            },
        ]
    }

    #[test]
    fn round_trips_each_frame() {
        for frame in samples() {
            let bytes = encode_frame(&frame, MAX).expect("encode");
            let (back, consumed) = decode_frame::<ClientFrame>(&bytes, MAX)
                .expect("decode")
                .expect("whole frame");
            assert_eq!(back, frame);
            assert_eq!(consumed, bytes.len());
        }
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete() {
        let bytes = encode_frame(&samples()[1], MAX).expect("encode");
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_frame::<ClientFrame>(&bytes[..cut], MAX),
                Ok(None),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn back_to_back_frames_decode_in_order() {
        let mut stream = Vec::new();
        for frame in samples() {
            encode_frame_into(&frame, MAX, &mut stream).expect("encode");
        }
        let mut offset = 0;
        let mut decoded = Vec::new();
        while let Some((frame, used)) =
            decode_frame::<ClientFrame>(&stream[offset..], MAX).expect("decode")
        {
            decoded.push(frame);
            offset += used;
        }
        assert_eq!(decoded, samples());
        assert_eq!(offset, stream.len());
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body_arrives() {
        let prefix = (MAX + 1).to_be_bytes();
        assert_eq!(
            decode_frame::<ClientFrame>(&prefix, MAX),
            Err(CodecError::TooLarge {
                len: MAX + 1,
                max: MAX
            })
        );
    }

    #[test]
    fn garbage_body_is_malformed_and_skippable() {
        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        match decode_frame::<ClientFrame>(&bytes, MAX) {
            Err(CodecError::Malformed {
                consumed,
                request_id,
                ..
            }) => {
                assert_eq!(consumed, 7);
                assert_eq!(request_id, None);
            }
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn unknown_request_variant_still_yields_its_id() {
        // variant 1 (Request), id 42 (varint), request variant 200 (unknown).
        let body = [1u8, 42, 200, 1];
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        match decode_frame::<ClientFrame>(&bytes, MAX) {
            Err(CodecError::Malformed { request_id, .. }) => assert_eq!(request_id, Some(42)),
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn payloads_as_byte_strings_keep_the_sequence_wire_format() {
        // Payloads are (de)serialised as byte strings for speed; on the wire
        // that must stay identical to postcard's sequence of u8.
        #[derive(serde::Serialize)]
        struct AsSequence(Vec<u8>);
        #[derive(serde::Serialize)]
        struct AsBytes(#[serde(with = "serde_bytes")] Vec<u8>);
        let data: Vec<u8> = (0..=255).collect();
        assert_eq!(
            postcard::to_stdvec(&AsSequence(data.clone())).expect("encode"),
            postcard::to_stdvec(&AsBytes(data)).expect("encode")
        );
    }

    #[test]
    fn bytes_match_the_example_in_docs_protocol_md() {
        let hello = ClientFrame::Hello {
            version: 1,
            agent: "x".into(),
        };
        assert_eq!(
            encode_frame(&hello, MAX).expect("encode"),
            vec![0, 0, 0, 4, 0, 1, 1, b'x']
        );
    }

    #[test]
    fn encode_refuses_frames_over_the_limit() {
        let frame = ServerFrame::Response {
            id: 1,
            response: Response::Extension { body: vec![0; 100] },
        };
        let mut out = vec![9];
        assert!(encode_frame_into(&frame, 50, &mut out).is_err());
        assert_eq!(out, vec![9], "a failed encode leaves the buffer as it was");
    }

    #[test]
    fn the_largest_mint_answer_fits_a_default_frame() {
        // A signed token: "s1." + hex(8 expiry + 16 nonce + 16 phone bytes)
        // + "." + hex(32-byte MAC) = 148 characters.
        let token = format!("s1.{}.{}", "a".repeat(80), "b".repeat(64));
        assert_eq!(token.len(), 148);
        let frame = crate::ServerFrame::Response {
            id: 1,
            response: crate::Response::TestUsers {
                tokens: vec![token; crate::MAX_MINT_PER_REQUEST as usize],
            },
        };
        assert!(encode_frame(&frame, DEFAULT_MAX_FRAME_BYTES).is_ok());
    }
}
