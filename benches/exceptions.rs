//! How long an exception takes to become visible: from the ledger storing the event that
//! raised it (for a time-based rule, the first event whose business time passed the deadline)
//! to the exception's row arriving at a watcher of the `exceptions` view's KV bucket, while the
//! UCI demo load runs through the processor. The projector is `erp project exceptions`, its own
//! process, as deployed. For reference, the same run measures raw JetStream: a KV put to its
//! delivery to a watcher of the same server.
//!
//! Run: `cargo bench --bench exceptions` (`ERP_BENCH_DAYS`, default 20 UCI days).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use ledger::EventLog;
use ledger::jetstream::{JetStreamLog, LogConfig};

fn main() {
    common::block_on(run());
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Raw JetStream: milliseconds from a KV put to its delivery to a watcher, 1,000 times.
async fn raw_kv_latency(js: &async_nats::jetstream::Context) -> Vec<f64> {
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "bench_raw_latency".into(),
            ..Default::default()
        })
        .await
        .expect("bucket");
    let mut watch = kv.watch_all().await.expect("watch");
    let mut out = Vec::new();
    for i in 0..1000u32 {
        let sent = Instant::now();
        kv.put(format!("k{i}"), Bytes::from_static(b"{}"))
            .await
            .expect("put");
        watch.next().await.expect("entry").expect("entry");
        out.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(f64::total_cmp);
    out
}

async fn run() {
    let days = common::env("ERP_BENCH_DAYS", 20);
    let server = common::start_server();
    let url = server.server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    let processor = common::start_processor(&client).await;
    common::wait_for_processor(&client).await;
    let log = JetStreamLog::open(client.clone(), LogConfig::ledger())
        .await
        .expect("log");
    let js = log.jetstream().clone();
    let raw = raw_kv_latency(&js).await;
    let projector = common::ErpProcess::start(&["project", "exceptions", "--nats", &url]);
    let bucket = loop {
        if let Some(bucket) = projections::runtime::served_bucket(&js, "exceptions")
            .await
            .expect("registry")
        {
            break bucket;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let kv = js.get_key_value(&bucket).await.expect("bucket");
    // Each exception's first arrival at the watcher: (wall time, the sequence that raised it).
    let seen: Arc<Mutex<BTreeMap<String, (SystemTime, u64)>>> = Arc::default();
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut watch = kv.watch_all().await.expect("watch");
            while let Some(Ok(entry)) = watch.next().await {
                let now = SystemTime::now();
                if !entry.key.starts_with("exc.") {
                    continue;
                }
                let Ok(row) = serde_json::from_slice::<serde_json::Value>(&entry.value) else {
                    continue;
                };
                if let Some(seq) = row["raised_seq"].as_u64() {
                    seen.lock()
                        .expect("lock")
                        .entry(entry.key.clone())
                        .or_insert((now, seq));
                }
            }
        })
    };
    let dataset = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(commands::demo::DATASET);
    let (commands, _) = commands::demo::uci_commands(&dataset, Some(days)).expect("data set");
    let bodies: Vec<Bytes> = commands
        .iter()
        .map(|c| Bytes::from(serde_json::to_vec(c).expect("json")))
        .collect();
    let sender = commands::client::CommandClient::new(client.clone(), Duration::from_secs(30));
    let started = Instant::now();
    let total = bodies.len();
    sender.submit_all(bodies, 200, |_, _| {}).await;
    let load_secs = started.elapsed().as_secs_f64();
    // Let the projector catch up, then stop watching.
    let last = log.last_sequence().await.expect("last");
    let views = projections::client::ViewClient::new(client.clone());
    views
        .ask(
            "exceptions",
            "status",
            serde_json::json!({}),
            Some(last),
            Duration::from_secs(60),
        )
        .await
        .expect("caught up");
    tokio::time::sleep(Duration::from_secs(1)).await;
    watcher.abort();
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    let mut latencies = Vec::new();
    for (seen_at, seq) in seen.values() {
        if let Some(ledger::LogRecord::Event(event)) = log.get(*seq).await.expect("get") {
            let stored = SystemTime::UNIX_EPOCH
                + Duration::from_micros(event.recorded_at.micros().max(0) as u64);
            if let Ok(d) = seen_at.duration_since(stored) {
                latencies.push(d.as_secs_f64() * 1000.0);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    projector.interrupt();
    processor.abort();
    println!("{total} commands in {load_secs:.1} s");
    println!(
        "exceptions view: {} exceptions raised; event stored -> row at a KV watcher: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "raw JetStream KV put -> watcher (same server, idle): p50 {:.2} ms, p99 {:.2} ms",
        quantile(&raw, 0.5),
        quantile(&raw, 0.99)
    );
}
