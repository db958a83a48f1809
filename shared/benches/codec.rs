//! Encode + decode of one 16 KiB DATA frame, v2 binary vs v1 JSON/base64.
//! `scripts/bench-codec.sh` runs this and prints the v2/v1 throughput ratio.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nowconnect_shared::{binary, Frame, Limits, V1Decoder, V1Encoder};
use std::hint::black_box;

const PAYLOAD: usize = 16 * 1024;

fn codecs(c: &mut Criterion) {
    let limits = Limits::default();
    let payload: Bytes = (0..PAYLOAD)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let frame = Frame::Data { id: 7, payload };

    let mut group = c.benchmark_group("data_16k_encode_decode");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    let mut buf = BytesMut::with_capacity(PAYLOAD + 16);
    group.bench_function("v2", |b| {
        b.iter(|| {
            buf.clear();
            binary::encode(black_box(&frame), &limits, &mut buf).expect("encodes");
            // A received message owns its buffer; model that with one split, as the relay does.
            let wire = buf.split().freeze();
            let decoded = binary::decode(&wire, &limits).expect("decodes");
            black_box(decoded);
        })
    });
    let (mut tx, mut rx) = (V1Encoder::new(limits), V1Decoder::new(limits));
    rx.open(7).expect("room");
    group.bench_function("v1", |b| {
        b.iter(|| {
            let text = tx.encode(black_box(&frame)).expect("encodes");
            let decoded = rx.decode(&text).expect("decodes");
            black_box(decoded);
        })
    });
    group.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
