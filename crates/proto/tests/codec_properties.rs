//! Property tests of the codec against hostile bytes: random and mutated
//! frames never panic the decoder, never make it read past what it was
//! given, and a length prefix over the limit is refused before its body
//! arrives (so nothing is buffered for it).

use proptest::prelude::*;
use proto::{
    ClientFrame, CodecError, LENGTH_PREFIX_BYTES, PhoneNumber, Request, ServerFrame, decode_frame,
    encode_frame,
};

const MAX: u32 = 4096;

/// Valid frames of every kind, the seeds that mutations start from.
fn seeds() -> Vec<Vec<u8>> {
    let phone = PhoneNumber::parse("+15550001234").expect("phone");
    let frames = [
        ClientFrame::Hello {
            version: 2,
            agent: "prop".into(),
        },
        ClientFrame::Ack {
            ids: vec![1, 2, u64::MAX],
        },
        ClientFrame::Request {
            id: 7,
            request: Request::Send {
                to: phone.clone(),
                client_msg_id: 9,
                payload: vec![0xAB; 100],
            },
        },
        ClientFrame::Request {
            id: 8,
            request: Request::Read {
                sender: phone.clone(),
                ids: vec![5; 20],
            },
        },
        ClientFrame::Request {
            id: 9,
            request: Request::Login {
                token: "t".repeat(40),
            },
        },
        ClientFrame::Request {
            id: 10,
            request: Request::SubscribePresence {
                users: vec![phone; 3],
            },
        },
    ];
    frames
        .iter()
        .map(|f| encode_frame(f, MAX).expect("encodes"))
        .collect()
}

/// Decodes like a reader does: frame after frame until more bytes are
/// needed or an error closes the connection. Checks what every answer
/// promises.
fn decode_all(bytes: &[u8]) {
    let mut offset = 0;
    while offset < bytes.len() {
        match decode_frame::<ClientFrame>(&bytes[offset..], MAX) {
            Ok(Some((_, used))) => {
                assert!(used > LENGTH_PREFIX_BYTES && used <= bytes.len() - offset);
                offset += used;
            }
            Ok(None) => {
                // Waiting for more: the prefix it read must be within the limit.
                let rest = &bytes[offset..];
                if rest.len() >= LENGTH_PREFIX_BYTES {
                    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    assert!(len <= MAX, "waits for a body over the limit ({len})");
                }
                return;
            }
            Err(CodecError::TooLarge { len, max }) => {
                assert!(len > max);
                return;
            }
            Err(CodecError::Malformed { consumed, .. }) => {
                assert!(consumed <= bytes.len() - offset);
                if consumed == 0 {
                    return;
                }
                offset += consumed;
            }
            Err(CodecError::Encode(_)) => panic!("decoding never reports an encode error"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_all(&bytes);
        // The node's frames are decoded by clients with the same code.
        let _ = decode_frame::<ServerFrame>(&bytes, MAX);
    }

    #[test]
    fn mutated_frames_never_panic(
        seed in 0usize..6,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = seeds()[seed].clone();
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        bytes.extend(tail);
        decode_all(&bytes);
    }

    #[test]
    fn valid_frames_round_trip_in_any_split(seed in 0usize..6, split in any::<usize>()) {
        let bytes = seeds()[seed].clone();
        let split = split % bytes.len();
        // A prefix alone is never a frame, never an error.
        prop_assert!(matches!(decode_frame::<ClientFrame>(&bytes[..split], MAX), Ok(None)));
        let (frame, used) = decode_frame::<ClientFrame>(&bytes, MAX)
            .expect("valid")
            .expect("whole");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(encode_frame(&frame, MAX).expect("encodes"), bytes);
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_its_body(len in (MAX + 1)..=u32::MAX) {
        let prefix = len.to_be_bytes();
        prop_assert_eq!(
            decode_frame::<ClientFrame>(&prefix, MAX),
            Err(CodecError::TooLarge { len, max: MAX })
        );
    }
}
