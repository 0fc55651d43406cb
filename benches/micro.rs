//! Micro-benches of the pure parts of the command path, on real UCI commands and events:
//! - `decide_apply`: every command of the first UCI days decided against the write model and
//!   its events applied (what the processor does per command, without the log);
//! - `apply`: the same events applied to a fresh write model;
//! - `codec`: envelope encode and decode (bincode behind `ledger::codec`) and the SHA-256 hash
//!   taken of every stored event;
//! - `subject`: escaping ids into subject tokens, plain and hostile.
//!
//! Run: `cargo bench --bench micro` (`ERP_MICRO_DAYS` days of UCI commands, default 3).

mod common;

use std::path::Path;

use commands::{Command, State, decide};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ledger::envelope::{Envelope, EventHash};
use ledger::subject::{SubjectSpace, escape_token};

fn uci_commands() -> Vec<Command> {
    let days = std::env::var("ERP_MICRO_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    commands::demo::uci_commands(&root.join(commands::demo::DATASET), Some(days))
        .expect("data set")
        .0
}

/// Decides every command against `state` and applies the accepted ones' events, as the
/// processor does; returns the envelopes.
fn decide_and_apply(state: &mut State, commands: &[Command]) -> Vec<Envelope> {
    let mut envelopes = Vec::new();
    for command in commands {
        let Ok(events) = decide(state, command) else {
            continue;
        };
        for (subject, event) in events {
            let envelope = common::envelope(command, subject, event);
            state.apply(&envelope, None);
            envelopes.push(envelope);
        }
    }
    envelopes
}

fn write_model(c: &mut Criterion) {
    let commands = uci_commands();
    let envelopes = decide_and_apply(&mut State::default(), &commands);
    let mut group = c.benchmark_group("write_model");
    group.sample_size(10);
    group.throughput(Throughput::Elements(commands.len() as u64));
    group.bench_function("decide_apply_uci_commands", |b| {
        b.iter_batched(
            State::default,
            |mut state| decide_and_apply(&mut state, &commands).len(),
            BatchSize::LargeInput,
        )
    });
    group.throughput(Throughput::Elements(envelopes.len() as u64));
    group.bench_function("apply_uci_events", |b| {
        b.iter_batched(
            State::default,
            |mut state| {
                for envelope in &envelopes {
                    state.apply(envelope, None);
                }
                state
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let commands = uci_commands();
    let envelopes = decide_and_apply(&mut State::default(), &commands);
    let encoded: Vec<Vec<u8>> = envelopes
        .iter()
        .map(|e| ledger::codec::encode_envelope(e).expect("encode"))
        .collect();
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    println!(
        "codec: {} UCI events, {:.0} bytes each on average",
        envelopes.len(),
        bytes as f64 / envelopes.len() as f64
    );
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(envelopes.len() as u64));
    group.sample_size(20);
    group.bench_function("encode_envelope", |b| {
        b.iter(|| {
            envelopes
                .iter()
                .map(|e| ledger::codec::encode_envelope(e).expect("encode").len())
                .sum::<usize>()
        })
    });
    group.bench_function("decode_envelope", |b| {
        b.iter(|| {
            encoded
                .iter()
                .map(|bytes| ledger::codec::decode_envelope(bytes).is_ok() as usize)
                .sum::<usize>()
        })
    });
    group.bench_function("hash_stored_bytes", |b| {
        b.iter(|| {
            encoded
                .iter()
                .map(|bytes| EventHash::of(bytes).to_hex().len())
                .sum::<usize>()
        })
    });
    group.finish();
}

fn subject(c: &mut Criterion) {
    let plain: Vec<String> = (0..1000).map(|i| format!("85123A-{i}")).collect();
    let hostile: Vec<String> = (0..1000)
        .map(|i| format!("a.b*c>d e\t{i}%~é/\u{0}"))
        .collect();
    let space = SubjectSpace::new("led").expect("prefix");
    let subjects: Vec<ledger::subject::Subject> = plain
        .iter()
        .map(|s| ledger::subject::Subject::Stock(ledger::values::Sku::new(s).expect("sku")))
        .collect();
    let mut group = c.benchmark_group("subject");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("escape_plain_ids", |b| {
        b.iter(|| plain.iter().map(|s| escape_token(s).len()).sum::<usize>())
    });
    group.bench_function("escape_hostile_ids", |b| {
        b.iter(|| hostile.iter().map(|s| escape_token(s).len()).sum::<usize>())
    });
    group.bench_function("full_subject", |b| {
        b.iter(|| subjects.iter().map(|s| space.full(s).len()).sum::<usize>())
    });
    group.finish();
}

criterion_group!(benches, write_model, codec, subject);
criterion_main!(benches);
