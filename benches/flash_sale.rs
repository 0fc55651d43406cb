//! Flash sale: the command path against the log's own ceiling, measured in one run on one
//! server that fsyncs every write (`sync_interval: always`), with the processor as its own
//! process (`erp processor`, as deployed) and the clients in this one.
//!
//! In order:
//! 1. raw durable atomic batches of 1,000 envelope-sized messages, one in flight and several
//!    (the ceiling), and one small atomic batch at a time (the idle path's floor);
//! 2. a lone client sending one order at a time (the idle path);
//! 3. the flash sale: one-unit orders from many concurrent clients on 10 SKUs holding
//!    20,000 units (1-line orders);
//! 4. the same kind of orders paced at half the rate step 3 reached (latency without a queue);
//! 5. 3-line orders on 10 hot SKUs, lines in random order, ship-complete (the workload where
//!    row locks deadlock): every order allocated whole or not at all;
//! 6. the ledger replayed: exactly the stock there was is allocated, nothing oversold.
//!
//! CPU time of the processor, nats-server and the clients is read from /proc around steps 3
//! and 5, per 1,000 orders.
//!
//! Run: `cargo bench --bench flash_sale`. `ERP_FLASH_ORDERS` (50,000), `ERP_FLASH_CLIENTS`
//! (200) vary the load; `ERP_FLASH_PROCESSOR_ARGS` passes flags to `erp processor` (say
//! `--in-flight 1`).

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use commands::Outcome;
use ledger::EventLog;
use ledger::jetstream::{JetStreamLog, LogConfig};
use serde_json::json;

const SKUS: usize = 10;
const UNITS_PER_SKU: i64 = 2_000;
/// Stock of the SKUs whose orders must all be served (lone and paced steps).
const AMPLE: i64 = 10_000_000;
const LONE_ORDERS: usize = 1_000;

fn main() {
    common::block_on(run());
}

/// An order for one unit of each of `skus`, lines in the given order.
fn order(id: String, skus: &[String], complete: bool) -> Bytes {
    let lines: Vec<serde_json::Value> = skus
        .iter()
        .enumerate()
        .map(|(i, sku)| {
            json!({"line": i + 1, "sku": sku, "qty": 1,
                   "unit_price": {"amount": "9.99", "currency": "GBP"}})
        })
        .collect();
    let policy = if complete { "ShipComplete" } else { "Partial" };
    common::command(
        "order.place",
        json!({"order": id, "channel": "web", "ship_to_region": "UK", "policy": policy,
               "lines": lines}),
    )
}

/// A small deterministic generator (xorshift64*): the same orders on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// What two scrapes of `/metrics` say happened between them.
struct Scraped {
    latency: commands::latency::LatencyCounts,
    batches: f64,
    batched_commands: f64,
}

impl Scraped {
    fn between(before: &str, after: &str) -> Scraped {
        let histogram = "erp_processor_command_seconds";
        let delta =
            |name: &str| common::scraped_value(after, name) - common::scraped_value(before, name);
        Scraped {
            latency: common::scraped_histogram(after, histogram)
                .since(&common::scraped_histogram(before, histogram)),
            batches: delta("erp_processor_batches_committed_total"),
            batched_commands: delta("erp_processor_batched_commands_total"),
        }
    }
}

/// A histogram bucket in milliseconds, as `(lower, upper]`.
fn bucket(bounds: Option<(f64, f64)>) -> String {
    match bounds {
        Some((lower, upper)) => format!("({}, {}] ms", lower * 1e3, upper * 1e3),
        None => "(nothing counted)".to_string(),
    }
}

/// CPU seconds (user + system, all threads) a process has used so far.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name (which may hold spaces): state is the first, utime the
    // 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU used by the processor, the server and this process (the clients) over one step.
struct CpuMeter {
    pids: [String; 3],
    start: [f64; 3],
}

impl CpuMeter {
    fn start(processor: u32, server: u32) -> CpuMeter {
        let pids = [
            processor.to_string(),
            server.to_string(),
            "self".to_string(),
        ];
        let start = pids.clone().map(|p| cpu_seconds(&p));
        CpuMeter { pids, start }
    }

    /// Milliseconds of CPU per 1,000 orders for each, and the cores busy in all.
    fn per_thousand(&self, orders: usize, wall: f64) -> String {
        let used: Vec<f64> = self
            .pids
            .iter()
            .zip(self.start)
            .map(|(p, s)| cpu_seconds(p) - s)
            .collect();
        let per = |s: f64| s * 1e3 / orders as f64 * 1e3;
        format!(
            "processor {:.0} ms, nats-server {:.0} ms, clients {:.0} ms (cores busy {:.2})",
            per(used[0]),
            per(used[1]),
            per(used[2]),
            used.iter().sum::<f64>() / wall
        )
    }
}

/// One small atomic batch at a time (as many messages as a one-line order stores): the
/// latency of each, sorted.
async fn raw_lone(
    client: &async_nats::Client,
    size: usize,
    batch: usize,
    count: usize,
) -> Vec<Duration> {
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "LONE".into(),
        subjects: vec!["lone.>".into()],
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await
    .expect("lone stream");
    let payload = Bytes::from(vec![7u8; size]);
    let mut latencies = Vec::with_capacity(count);
    for b in 0..count {
        let messages = (0..batch)
            .map(|i| ledger::jetstream::BatchMessage {
                subject: format!("lone.s{}", (b * batch + i) % 5000),
                headers: async_nats::HeaderMap::new(),
                payload: payload.clone(),
            })
            .collect();
        let sent = Instant::now();
        ledger::jetstream::publish_atomic(client, &js, messages)
            .await
            .expect("atomic batch");
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    latencies
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
    let mut acks = VecDeque::new();
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

/// What a step produced: every command-to-reply latency (sorted), events stored, seconds.
struct Step {
    latencies: Vec<Duration>,
    events: u64,
    secs: f64,
}

impl Step {
    fn orders(&self) -> usize {
        self.latencies.len()
    }

    fn rate(&self) -> f64 {
        self.orders() as f64 / self.secs
    }

    fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies, p)
    }

    fn latency(&self) -> String {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms, max {:.1} ms",
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(0.999),
            self.percentile(1.0)
        )
    }
}

/// Milliseconds at quantile `p` of sorted latencies.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

/// `clients` concurrent clients each sending `per_client` orders (`make(client, n)`) one
/// after another, or one every `pace`; every order must be accepted.
async fn sale(
    connections: &[async_nats::Client],
    clients: usize,
    per_client: usize,
    pace: Option<Duration>,
    make: impl Fn(usize, usize) -> Bytes + Send + Sync + Clone + 'static,
) -> Step {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let nats = connections[c % connections.len()].clone();
        let make = make.clone();
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
            for n in 0..per_client {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                }
                let body = make(c, n);
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
    latencies.sort();
    Step {
        latencies,
        events,
        secs: started.elapsed().as_secs_f64(),
    }
}

fn skus(prefix: &str) -> Vec<String> {
    (0..SKUS).map(|s| format!("{prefix}{s}")).collect()
}

async fn stock_up(client: &async_nats::Client) {
    let setup = commands::client::CommandClient::new(client.clone(), Duration::from_secs(30));
    let mut bodies = vec![
        common::command(
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ),
        common::command("channel.define", json!({"channel": "web"})),
    ];
    let mut stock = vec![("SOLO".to_string(), AMPLE)];
    for (prefix, units) in [
        ("HOT", UNITS_PER_SKU),
        ("TRI", UNITS_PER_SKU),
        ("HALF", AMPLE),
    ] {
        stock.extend(skus(prefix).into_iter().map(|s| (s, units)));
    }
    for (sku, units) in stock {
        bodies.push(common::command("item.define", json!({"sku": sku})));
        bodies.push(common::command(
            "stock.receive",
            json!({"sku": sku, "location": "WH1", "qty": units,
                   "unit_cost": {"amount": "5.00", "currency": "GBP"}}),
        ));
    }
    setup
        .submit_all(bodies, 64, |_, o| {
            assert!(o.expect("an answer").is_accepted(), "setup refused");
        })
        .await;
}

/// What the ledger says was allocated: per SKU, and per order the number of lines
/// allocated in full.
struct Allocated {
    by_sku: BTreeMap<String, i64>,
    /// Lines with anything allocated, lines allocated in full, lines.
    by_order: BTreeMap<String, (usize, usize, usize)>,
}

async fn allocated(client: &async_nats::Client) -> Allocated {
    let log = JetStreamLog::open(client.clone(), LogConfig::ledger())
        .await
        .expect("log");
    let last = log.last_sequence().await.expect("last");
    let replayed =
        replay::replay::<_, replay::WriteModel>(&log, &[replay::Resolved::at_seq(last)], |_| {})
            .await
            .expect("replay");
    let state = &replayed.built[0].model.0;
    let by_sku = state
        .stock
        .iter()
        .map(|(sku, s)| {
            (
                sku.as_str().to_string(),
                s.balances.values().map(|b| b.allocated).sum(),
            )
        })
        .collect();
    let by_order = state
        .orders
        .iter()
        .map(|(id, o)| {
            let whole = o
                .lines
                .values()
                .filter(|l| l.allocated_total() == l.qty)
                .count();
            let some = o.lines.values().filter(|l| l.allocated_total() > 0).count();
            (id.as_str().to_string(), (some, whole, o.lines.len()))
        })
        .collect();
    Allocated { by_sku, by_order }
}

async fn run() {
    let orders = common::env("ERP_FLASH_ORDERS", 50_000);
    let clients = common::env("ERP_FLASH_CLIENTS", 200);
    let processor_args: Vec<String> = std::env::var("ERP_FLASH_PROCESSOR_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let bench = common::start_server();
    let version = bench.version.clone();
    let url = bench.server.url();
    let server_pid = bench.server.pid().expect("server pid");
    let client = async_nats::connect(&url).await.expect("connect");

    // 1. The ceiling, before anything else loads the server.
    let raw_one = common::raw_atomic(&client, "RAW1", 300, 1000, 60, 1).await;
    let raw_four = common::raw_atomic(&client, "RAW4", 300, 1000, 60, 4).await;
    let raw_eight = common::raw_atomic(&client, "RAW8", 300, 1000, 60, 8).await;
    let raw_several = raw_four.max(raw_eight);
    let lone_raw = raw_lone(&client, 300, 4, LONE_ORDERS).await;

    let processor = common::ErpProcess::start(
        &[
            &["processor", "--nats", &url][..],
            &processor_args
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ]
        .concat(),
    );
    common::wait_for_processor(&client).await;
    // A gateway, for `/metrics` scraped around the flash sale.
    let (_gateway, gateway) = common::start_gateway(&url).await;
    stock_up(&client).await;
    let connections: Vec<async_nats::Client> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(async_nats::connect(&url).await.expect("connect"));
        }
        v
    };

    // 2. The idle path: one client, one order at a time.
    let lone = sale(&connections, 1, LONE_ORDERS, None, |_, n| {
        order(format!("L{n}"), &["SOLO".to_string()], false)
    })
    .await;

    // 3. The flash sale, 1-line orders.
    let per_client = orders / clients;
    let hot = skus("HOT");
    let meter = CpuMeter::start(processor.pid(), server_pid);
    let scraped_before = common::scrape(&gateway).await;
    let one_line = sale(&connections, clients, per_client, None, move |c, n| {
        order(
            format!("F{c}-{n}"),
            &[hot[(c * 7 + n) % SKUS].clone()],
            false,
        )
    })
    .await;
    let one_line_cpu = meter.per_thousand(one_line.orders(), one_line.secs);
    let scraped = Scraped::between(&scraped_before, &common::scrape(&gateway).await);

    // 4. Half that rate, paced, on SKUs that never run out.
    let half_rate = one_line.rate() / 2.0;
    let half = skus("HALF");
    let paced = sale(
        &connections,
        clients,
        ((half_rate * 3.0) as usize / clients).max(1),
        Some(Duration::from_secs_f64(clients as f64 / half_rate)),
        move |c, n| {
            order(
                format!("H{c}-{n}"),
                &[half[(c * 7 + n) % SKUS].clone()],
                false,
            )
        },
    )
    .await;

    // 5. 3-line orders on the hot SKUs, lines in random order, ship-complete.
    let tri = skus("TRI");
    let meter = CpuMeter::start(processor.pid(), server_pid);
    let three_line = sale(&connections, clients, per_client, None, move |c, n| {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((c as u64) << 32 | n as u64));
        let mut picked: Vec<String> = Vec::with_capacity(3);
        while picked.len() < 3 {
            let sku = &tri[rng.below(SKUS)];
            if !picked.contains(sku) {
                picked.push(sku.clone());
            }
        }
        order(format!("T{c}-{n}"), &picked, true)
    })
    .await;
    let three_line_cpu = meter.per_thousand(three_line.orders(), three_line.secs);
    drop(processor);

    // 6. What the ledger says.
    let allocated = allocated(&client).await;
    let sum = |prefix: &str| -> i64 {
        allocated
            .by_sku
            .iter()
            .filter(|(s, _)| s.starts_with(prefix) && s[prefix.len()..].parse::<u32>().is_ok())
            .map(|(_, a)| a)
            .sum()
    };
    let hot_expected = (one_line.orders() as i64).min(UNITS_PER_SKU * SKUS as i64);
    let hot_allocated = sum("HOT");
    let half_allocated = sum("HALF");
    let solo_allocated = allocated.by_sku.get("SOLO").copied().unwrap_or(0);
    let mut whole = 0usize;
    let mut none = 0usize;
    let mut partial = Vec::new();
    for (id, &(some, full, lines)) in allocated
        .by_order
        .iter()
        .filter(|(id, _)| id.starts_with('T'))
    {
        if some == 0 {
            none += 1;
        } else if full == lines {
            whole += 1;
        } else {
            partial.push(id.clone());
        }
    }
    let tri_over: Vec<(&String, &i64)> = allocated
        .by_sku
        .iter()
        .filter(|(s, a)| s.starts_with("TRI") && **a > UNITS_PER_SKU)
        .collect();
    let tri_allocated = sum("TRI");
    drop(bench);
    let plain = raw_plain(300, 300_000).await;

    println!(
        "nats-server {version}, sync_interval always, R1 file storage; {} cores; erp processor {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if processor_args.is_empty() {
            "(defaults)".to_string()
        } else {
            processor_args.join(" ")
        }
    );
    println!(
        "{clients} clients ({per_client} orders each, one at a time), {SKUS} hot SKUs x {UNITS_PER_SKU} units"
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| raw durable atomic batches of 1,000 x 300 B, 1 in flight | {raw_one:.0} msgs/s |");
    println!(
        "| raw durable atomic batches of 1,000 x 300 B, 4 / 8 in flight | {raw_four:.0} / {raw_eight:.0} msgs/s |"
    );
    println!(
        "| raw atomic batch of 4 x 300 B, one at a time | p50 {:.2} ms, p99 {:.2} ms |",
        percentile(&lone_raw, 0.5),
        percentile(&lone_raw, 0.99)
    );
    println!(
        "| lone client, one 1-line order at a time ({} orders) | p50 {:.2} ms, p99 {:.2} ms ({:.2}x the raw batch p50) |",
        lone.orders(),
        lone.percentile(0.5),
        lone.percentile(0.99),
        lone.percentile(0.5) / percentile(&lone_raw, 0.5)
    );
    for (name, step, cpu) in [
        ("1-line orders", &one_line, &one_line_cpu),
        (
            "3-line hot orders, random line order",
            &three_line,
            &three_line_cpu,
        ),
    ] {
        println!(
            "| {name}: {} orders | {:.0} orders/s, {:.0} events/s = {:.2} of raw with several in flight; {:.1}x the SQL baseline's best ({} orders/s) |",
            step.orders(),
            step.rate(),
            step.events as f64 / step.secs,
            step.events as f64 / step.secs / raw_several,
            step.rate()
                / if name.starts_with('1') {
                    4292.0
                } else {
                    2172.0
                },
            if name.starts_with('1') { 4292 } else { 2172 },
        );
        println!("| {name}: command-to-reply latency | {} |", step.latency());
        println!("| {name}: CPU per 1,000 orders | {cpu} |");
    }
    println!(
        "| 1-line orders paced at half that rate ({half_rate:.0}/s, {} orders) | {} |",
        paced.orders(),
        paced.latency()
    );
    println!(
        "| 3-line orders/s over 1-line orders/s | {:.2} |",
        three_line.rate() / one_line.rate()
    );
    println!(
        "| `/metrics` scraped around the 1-line sale: `erp_processor_command_seconds` | {} commands answered = {:.0}/s; p50 in {}, p99 in {}; mean {:.1} ms (bench: {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, mean {:.1} ms) |",
        scraped.latency.count,
        scraped.latency.count as f64 / one_line.secs,
        bucket(scraped.latency.quantile_bucket(0.5)),
        bucket(scraped.latency.quantile_bucket(0.99)),
        scraped.latency.sum_micros as f64 / scraped.latency.count.max(1) as f64 / 1e3,
        one_line.rate(),
        one_line.percentile(0.5),
        one_line.percentile(0.99),
        one_line.latencies.iter().sum::<Duration>().as_secs_f64() * 1e3 / one_line.orders() as f64,
    );
    println!(
        "| `/metrics` scraped around the 1-line sale: batches | {:.0} batches committed, {:.0} commands in them ({:.1} a batch) |",
        scraped.batches,
        scraped.batched_commands,
        scraped.batched_commands / scraped.batches.max(1.0)
    );
    println!("| raw plain pipelined publish x 300 B, no fsync (reference) | {plain:.0} msgs/s |");
    println!("| 1-line hot units allocated (must be {hot_expected}) | {hot_allocated} |");
    println!(
        "| 3-line orders allocated whole / not at all / partly (must be 0) | {whole} / {none} / {} |",
        partial.len()
    );
    println!(
        "| 3-line hot units allocated (must be 3 x {whole}, at most {UNITS_PER_SKU} per SKU) | {tri_allocated} |"
    );
    assert_eq!(hot_allocated, hot_expected, "1-line: oversold or undersold");
    assert_eq!(
        half_allocated,
        paced.orders() as i64,
        "paced orders not all served"
    );
    assert_eq!(
        solo_allocated,
        lone.orders() as i64,
        "lone orders not all served"
    );
    assert!(
        partial.is_empty(),
        "ship-complete orders allocated in part: {partial:?}"
    );
    assert!(tri_over.is_empty(), "oversold: {tri_over:?}");
    assert_eq!(
        tri_allocated,
        3 * whole as i64,
        "3-line units and orders disagree"
    );
    assert_eq!(whole + none, three_line.orders(), "3-line orders missing");
}
