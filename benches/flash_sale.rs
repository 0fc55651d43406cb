//! Flash sale: 50,000 one-unit orders from 200 concurrent clients on 10 SKUs holding 20,000
//! units in total, through the processor, on a server that fsyncs every write. In the same
//! run, on the same server, raw JetStream: atomic batches of 1,000 envelope-sized messages
//! (the ledger's own append shape), the durable ceiling the command path is compared with.
//!
//! Prints: commands/s, events/s, command-to-reply latency (p50, p99, p999, max), the ratio of
//! events/s to the raw durable rate, and checks that exactly 20,000 units were allocated.
//!
//! Run: `cargo bench --bench flash_sale` (`ERP_FLASH_ORDERS`, `ERP_FLASH_CLIENTS` to vary).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use commands::Outcome;
use ledger::EventLog;
use ledger::jetstream::{BatchMessage, JetStreamLog, LogConfig, publish_atomic};
use serde_json::json;

const SKUS: usize = 10;
const UNITS: u64 = 20_000;

fn main() {
    common::block_on(run());
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn command(kind: &str, data: serde_json::Value) -> Bytes {
    Bytes::from(
        json!({
            "command_id": uuid::Uuid::now_v7(), "actor": {"id": "bench", "role": "upstream"},
            "legal_entity": "UK01", "effective_at": "2011-11-25T09:00:00Z",
            "type": kind, "data": data,
        })
        .to_string(),
    )
}

/// Raw durable appends: atomic batches of 1,000 messages of `size` bytes into a scratch
/// stream, one batch in flight (as the processor does). Messages per second.
async fn raw_atomic(client: &async_nats::Client, size: usize, batches: usize) -> f64 {
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw.>".into()],
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await
    .expect("raw stream");
    let payload = Bytes::from(vec![7u8; size]);
    let started = Instant::now();
    for b in 0..batches {
        let messages = (0..1000)
            .map(|i| BatchMessage {
                subject: format!("raw.s{}", (b * 1000 + i) % 5000),
                headers: async_nats::HeaderMap::new(),
                payload: payload.clone(),
            })
            .collect();
        publish_atomic(client, &js, messages)
            .await
            .expect("atomic batch");
    }
    (batches * 1000) as f64 / started.elapsed().as_secs_f64()
}

/// Raw plain publishes, pipelined (up to 4,096 acks awaited at once), to a stream on a
/// server that does not fsync each write: the reference ceiling without durability.
async fn raw_plain(size: usize, messages: usize) -> f64 {
    let bench = common::start_server_syncing(false);
    let client = async_nats::connect(bench.server.url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "PLAIN".into(),
        subjects: vec!["plain.>".into()],
        ..Default::default()
    })
    .await
    .expect("plain stream");
    let payload = Bytes::from(vec![7u8; size]);
    let started = Instant::now();
    let mut acks = std::collections::VecDeque::new();
    for i in 0..messages {
        let ack = js
            .publish(format!("plain.s{}", i % 5000), payload.clone())
            .await
            .expect("publish");
        acks.push_back(ack);
        if acks.len() == 4096 {
            acks.pop_front().expect("ack").await.expect("stored");
        }
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    messages as f64 / started.elapsed().as_secs_f64()
}

/// `clients` concurrent clients each placing `per_client` one-unit orders one after another,
/// or one every `pace`. Returns every command-to-reply latency and the events stored.
async fn sale(
    connections: &[async_nats::Client],
    prefix: &'static str,
    clients: usize,
    per_client: usize,
    pace: Option<Duration>,
) -> (Vec<Duration>, u64) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let nats = connections[c % connections.len()].clone();
        tasks.push(tokio::spawn(async move {
            let client = commands::client::CommandClient::new(nats, Duration::from_secs(60));
            let mut latencies = Vec::with_capacity(per_client);
            let mut events = 0u64;
            let mut tick = pace.map(|p| {
                let mut t = tokio::time::interval_at(
                    tokio::time::Instant::now() + p.mul_f64(c as f64 / clients as f64),
                    p,
                );
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            for o in 0..per_client {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                }
                let sku = format!("HOT{}", (c * 7 + o) % SKUS);
                let body = command(
                    "order.place",
                    json!({"order": format!("{prefix}{c}-{o}"), "channel": "web", "ship_to_region": "UK",
                           "lines": [{"line": 1, "sku": sku, "qty": 1,
                                      "unit_price": {"amount": "9.99", "currency": "GBP"}}]}),
                );
                let sent = Instant::now();
                let outcome = client.submit_json(body).await.expect("an answer");
                latencies.push(sent.elapsed());
                match outcome {
                    Outcome::Accepted { event_count, .. } => events += u64::from(event_count),
                    other => panic!("order refused: {other:?}"),
                }
            }
            (latencies, events)
        }));
    }
    let mut latencies = Vec::new();
    let mut events = 0;
    for t in tasks {
        let (l, e) = t.await.expect("client");
        latencies.extend(l);
        events += e;
    }
    (latencies, events)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run() {
    let orders = env("ERP_FLASH_ORDERS", 50_000);
    let clients = env("ERP_FLASH_CLIENTS", 200);
    let bench = common::start_server();
    let version = bench.version.clone();
    let url = bench.server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    let processor = common::start_processor(&client).await;

    // Stock: 10 SKUs, 2,000 units each.
    let setup = commands::client::CommandClient::new(client.clone(), Duration::from_secs(30));
    let mut bodies = vec![
        command(
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ),
        command("channel.define", json!({"channel": "web"})),
    ];
    for s in 0..SKUS {
        bodies.push(command("item.define", json!({"sku": format!("HOT{s}")})));
        bodies.push(command(
            "stock.receive",
            json!({"sku": format!("HOT{s}"), "location": "WH1", "qty": UNITS / SKUS as u64,
                   "unit_cost": {"amount": "5.00", "currency": "GBP"}}),
        ));
    }
    setup
        .submit_all(bodies, 64, |_, o| {
            assert!(o.expect("an answer").is_accepted(), "setup refused");
        })
        .await;

    // The sale: each client places its share of orders one after another.
    let connections: Vec<async_nats::Client> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(async_nats::connect(&url).await.expect("connect"));
        }
        v
    };
    let per_client = orders / clients;
    let started = Instant::now();
    let (mut latencies, events) = sale(&connections, "F", clients, per_client, None).await;
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    // The same kind of orders at half the rate just reached, paced: latency without a queue.
    let half_rate = latencies.len() as f64 / secs / 2.0;
    let (mut paced, _) = sale(
        &connections,
        "H",
        clients,
        (half_rate * 3.0) as usize / clients,
        Some(Duration::from_secs_f64(clients as f64 / half_rate)),
    )
    .await;
    paced.sort();
    processor.abort();

    // Exactly the stock there was is allocated: the write model rebuilt from the ledger.
    let log = JetStreamLog::open(client.clone(), LogConfig::ledger())
        .await
        .expect("log");
    let last = log.last_sequence().await.expect("last");
    let replayed =
        replay::replay::<_, replay::WriteModel>(&log, &[replay::Resolved::at_seq(last)], |_| {})
            .await
            .expect("replay");
    let allocated: i64 = replayed.built[0]
        .model
        .0
        .stock
        .values()
        .flat_map(|s| s.balances.values())
        .map(|b| b.allocated)
        .sum();

    let raw = raw_atomic(&client, 300, 60).await;
    drop(bench);
    let plain = raw_plain(300, 300_000).await;
    let done = latencies.len();
    println!(
        "nats-server {version}, sync_interval always, R1 file storage; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "flash sale: {done} one-unit orders, {clients} clients ({per_client} each, one at a time), {SKUS} SKUs, {UNITS} units"
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| orders through the processor | {:.0} commands/s, {:.0} events/s |",
        done as f64 / secs,
        events as f64 / secs
    );
    println!(
        "| command-to-reply latency | p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms, max {:.1} ms |",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 0.999).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
    println!(
        "| latency at half that rate ({:.0} orders/s, paced, {} orders) | p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms |",
        half_rate,
        paced.len(),
        percentile(&paced, 0.5).as_secs_f64() * 1e3,
        percentile(&paced, 0.99).as_secs_f64() * 1e3,
        percentile(&paced, 0.999).as_secs_f64() * 1e3,
    );
    println!("| raw durable atomic batches of 1,000 x 300 B | {raw:.0} msgs/s |");
    println!("| raw plain pipelined publish x 300 B, no fsync (reference) | {plain:.0} msgs/s |");
    println!(
        "| ratio of processor events/s to raw durable msgs/s | {:.2} |",
        events as f64 / secs / raw
    );
    // Every order wants one unit: all are served until the stock runs out, the rest wait.
    let expected = ((done + paced.len()) as u64).min(UNITS) as i64;
    println!("| units allocated (must be {expected}) | {allocated} |");
    assert_eq!(allocated, expected, "oversold or undersold");
}
