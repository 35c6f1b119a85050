//! Encode and decode of typical frames with the wire codec
//! (`encode_frame_into`, `decode_frame`: 4-byte length prefix + postcard).
//!
//! Frames: a `Send` request with a 100-byte and with a 1 KiB payload, a
//! `Deliver` push with a 100-byte payload, and an `Ack` request with 64
//! message ids (fragment in the top 16 bits, so each id is an 8-byte varint).
//! Throughput is reported in bytes of encoded frame, length prefix included.
//! Encoding reuses one output buffer, as the session writer does; decoding
//! reads from a slice holding exactly one frame.
//!
//! Run: `cargo bench -p proto --bench codec`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use proto::{
    ClientFrame, DEFAULT_MAX_FRAME_BYTES, PhoneNumber, Request, ServerFrame, decode_frame,
    encode_frame_into,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

const MAX: u32 = DEFAULT_MAX_FRAME_BYTES;

fn phone(s: &str) -> PhoneNumber {
    PhoneNumber::parse(s).expect("valid phone")
}

/// A message id as a fragment assigns it: fragment 7, sequence `seq`.
fn msg_id(seq: u64) -> u64 {
    (7 << 48) | seq
}

fn send(payload_len: usize) -> ClientFrame {
    ClientFrame::Request {
        id: 4711,
        request: Request::Send {
            to: phone("+15551234567"),
            client_msg_id: 1_717_000_000_123,
            payload: vec![0xa5; payload_len],
        },
    }
}

fn deliver() -> ServerFrame {
    ServerFrame::Deliver {
        msg_id: msg_id(1_000_000),
        from: phone("+447700900123"),
        client_msg_id: 1_717_000_000_123,
        server_ts: 1_760_000_000_000,
        payload: vec![0xa5; 100],
    }
}

fn ack_64() -> ClientFrame {
    ClientFrame::Ack {
        ids: (0..64).map(|i| msg_id(1_000_000 + i)).collect(),
    }
}

fn encoded<T: Serialize>(frame: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_into(frame, MAX, &mut out).expect("encode");
    out
}

fn bench_frame<T: Serialize + DeserializeOwned>(c: &mut Criterion, name: &str, frame: &T) {
    let bytes = encoded(frame);
    let len = bytes.len() as u64;

    let mut group = c.benchmark_group("codec");
    group
        .throughput(Throughput::Bytes(len))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let mut out = Vec::with_capacity(bytes.len());
    group.bench_function(BenchmarkId::new("encode", name), |b| {
        b.iter(|| {
            out.clear();
            encode_frame_into(black_box(frame), MAX, &mut out).expect("encode");
            black_box(out.len())
        })
    });
    group.bench_function(BenchmarkId::new("decode", name), |b| {
        b.iter(|| {
            let decoded = decode_frame::<T>(black_box(&bytes), MAX)
                .expect("decode")
                .expect("whole frame");
            black_box(decoded)
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_frame(c, "send_100B", &send(100));
    bench_frame(c, "send_1KiB", &send(1024));
    bench_frame(c, "deliver_100B", &deliver());
    bench_frame(c, "ack_64_ids", &ack_64());
}

criterion_group!(benches, codec);
criterion_main!(benches);
