//! Loads the UCI Online Retail year through the processor into a fresh ledger, then measures,
//! in the same run on the same stream:
//! - raw JetStream ordered consumption (push ordered consumer, messages counted, nothing decoded),
//! - decoded reads through `EventLog::read` (decode + hash of every event),
//! - ATS and allocation rebuilds from sequence 1 (`Projector::catch_up`: decode, chain check,
//!   apply, KV publish, final snapshot),
//!
//! - replays to the log's end (`replay::replay`: read, chain check, apply; no KV, no snapshot)
//!   of the ATS view and of the write model, and `replay::verify`,
//!
//! It prints the rates and their ratios to the raw rate.
//!
//! Run: `cargo bench --bench rebuild` (all days) or `ERP_BENCH_DAYS=60 cargo bench --bench rebuild`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use commands::Outcome;
use ledger::jetstream::{JetStreamLog, LogConfig};
use ledger::{EventLog, LogCursor, ReadFrom, ReadUntil};
use projections::allocation::Allocation;
use projections::ats::Ats;
use projections::{Mode, Projector, ProjectorConfig};

fn main() {
    common::block_on(run());
}

async fn decoded_read(log: &JetStreamLog) -> f64 {
    let started = Instant::now();
    let mut cursor = log
        .read(ReadFrom::Start, ReadUntil::CaughtUp)
        .await
        .expect("read");
    let mut count = 0u64;
    while let Some(record) = cursor.next().await {
        record.expect("record");
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

async fn rebuild<V: projections::View>(url: &str) -> f64 {
    let log = JetStreamLog::open(
        async_nats::connect(url).await.expect("connect"),
        LogConfig::ledger(),
    )
    .await
    .expect("log");
    let mut projector = Projector::<V>::open(log, Mode::Rebuild, ProjectorConfig::default())
        .await
        .expect("projector");
    let started = Instant::now();
    let events = projector.catch_up().await.expect("catch up");
    events as f64 / started.elapsed().as_secs_f64()
}

async fn replayed<M: replay::Model>(log: &JetStreamLog, last: u64) -> f64 {
    let started = Instant::now();
    let replayed = replay::replay::<_, M>(log, &[replay::Resolved::at_seq(last)], |_| {})
        .await
        .expect("replay");
    replayed.records as f64 / started.elapsed().as_secs_f64()
}

async fn verified(log: &JetStreamLog) -> f64 {
    let started = Instant::now();
    let report = replay::verify::verify(log, &replay::VerifyOptions::default(), |_| {})
        .await
        .expect("verify");
    report.last_seq as f64 / started.elapsed().as_secs_f64()
}

async fn run() {
    let days = std::env::var("ERP_BENCH_DAYS")
        .ok()
        .and_then(|d| d.parse().ok());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bench = common::start_server();
    let version = bench.version.clone();
    let url = bench.server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    let processor = common::start_processor(&client).await;

    let (commands, _) =
        commands::demo::uci_commands(&root.join(commands::demo::DATASET), days).expect("data set");
    let bodies: Vec<Bytes> = commands
        .iter()
        .map(|c| Bytes::from(serde_json::to_vec(c).expect("json")))
        .collect();
    let sender = commands::client::CommandClient::new(client.clone(), Duration::from_secs(120));
    let mut events = 0u64;
    let total = bodies.len();
    let started = Instant::now();
    sender
        .submit_all(bodies, 512, |_, outcome| {
            if let Ok(Outcome::Accepted { event_count, .. }) = outcome {
                events += u64::from(event_count);
            }
        })
        .await;
    let load_secs = started.elapsed().as_secs_f64();
    processor.abort();

    let log = JetStreamLog::open(client.clone(), LogConfig::ledger())
        .await
        .expect("log");
    let last = log.last_sequence().await.expect("last");
    let raw = (common::raw_read(&log, last).await + common::raw_read(&log, last).await) / 2.0;
    let decoded = decoded_read(&log).await;
    let replay_ats = replayed::<Ats>(&log, last).await;
    let replay_state = replayed::<replay::WriteModel>(&log, last).await;
    let verify = verified(&log).await;
    let raw_after = common::raw_read(&log, last).await;
    let ats = rebuild::<Ats>(&url).await;
    let allocation = rebuild::<Allocation>(&url).await;

    println!(
        "nats-server {version}, sync_interval always, R1 file storage; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "UCI data set, {} days: {total} commands, {events} events accepted, {last} stream messages",
        days.map_or("all".into(), |d: usize| d.to_string())
    );
    println!();
    println!("| measure | rate | ratio to raw read |");
    println!("|---|---|---|");
    println!(
        "| load through the processor (window 512) | {:.0} commands/s, {:.0} events/s | |",
        total as f64 / load_secs,
        events as f64 / load_secs
    );
    println!("| raw ordered push consumer read (mean of 2) | {raw:.0} msgs/s | 1.00 |");
    println!(
        "| raw read again, after the replays | {raw_after:.0} msgs/s | {:.2} |",
        raw_after / raw
    );
    println!(
        "| replay of ATS to the end (`erp replay ats`) | {replay_ats:.0} msgs/s | {:.2} |",
        replay_ats / raw
    );
    println!(
        "| replay of the write model to the end (`erp replay state`) | {replay_state:.0} msgs/s | {:.2} |",
        replay_state / raw
    );
    println!(
        "| verify (`erp verify`: chains, batches, invariants, digest) | {verify:.0} msgs/s | {:.2} |",
        verify / raw
    );
    println!(
        "| decoded read (`EventLog::read`) | {decoded:.0} msgs/s | {:.2} |",
        decoded / raw
    );
    println!(
        "| ATS rebuild from sequence 1 | {ats:.0} msgs/s | {:.2} |",
        ats / raw
    );
    println!(
        "| allocation rebuild from sequence 1 | {allocation:.0} msgs/s | {:.2} |",
        allocation / raw
    );
    drop(bench);
}
