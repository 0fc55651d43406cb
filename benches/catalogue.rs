//! Large catalogue, memory and growth.
//!
//! 1. **Large catalogue, in process** (`ERP_CAT_SKUS`, default 1,000,000): 3 locations, then
//!    per SKU an `item.define` and a receipt at each location, then `ERP_CAT_ORDERS` (default
//!    the SKU count) random one-line orders. Every command is decoded from JSON, decided
//!    against the write model and its events and outcome record applied (and the record
//!    archived), exactly the processor's own code without the log. Rates, and memory after
//!    each phase in bytes per SKU x location: the heap (bytes allocated and live, counted by
//!    the benches' allocator) and the resident set. Run twice in child processes: once building the write model
//!    alone, once also feeding the ATS view, so the difference is the view's memory.
//! 2. **Growth, end to end**: the same workload scaled to about 10k, 100k and 1M events (or
//!    the sizes given), each on a fresh fsyncing nats-server through `erp processor` as its own
//!    process (window 512): its resident memory after the load, its restart from the snapshot
//!    it writes when stopped and from scratch (time until it answers, and memory), then an ATS
//!    rebuild and a raw ordered read of the same stream: cost per event at each size.
//!
//! Run: `cargo bench --bench catalogue` (`ERP_CAT_SKUS`, `ERP_CAT_ORDERS`,
//! `ERP_CAT_GROWTH=10000,100000,1000000` to vary; `ERP_CAT_GROWTH=` skips part 2).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use commands::{Outcome, State};
use ledger::envelope::{EventHash, RecordedEvent};
use ledger::events::{CommandAccepted, Event};
use ledger::jetstream::{JetStreamLog, LogConfig};
use ledger::log::Head;
use ledger::values::Timestamp;
use ledger::{EventLog, Subject};
use projections::Model;
use projections::ats::Ats;
use serde_json::json;

const LOCATIONS: [&str; 3] = ["DC-NORTH", "DC-SOUTH", "STORE-1"];

/// Deterministic pseudo-random numbers (xorshift), so every run sends the same orders.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn command(n: u64, kind: &str, data: serde_json::Value) -> Bytes {
    Bytes::from(
        json!({
            "command_id": uuid::Uuid::from_u128(0xca7a_0000_0000_0000_0000_0000_0000_0000 | u128::from(n)),
            "actor": {"id": "bench", "role": "upstream"},
            "legal_entity": "UK01", "effective_at": "2011-11-25T09:00:00Z",
            "type": kind, "data": data,
        })
        .to_string(),
    )
}

/// The catalogue workload's commands, phase by phase: setup, then per SKU a definition and
/// three receipts, then the orders.
fn workload(skus: u64, orders: u64) -> (Vec<Bytes>, Vec<Bytes>) {
    let mut n = 0u64;
    let mut next = |kind: &str, data: serde_json::Value| {
        n += 1;
        command(n, kind, data)
    };
    let mut catalogue = Vec::with_capacity((skus * 4 + 4) as usize);
    for (i, location) in LOCATIONS.iter().enumerate() {
        catalogue.push(next(
            "location.define",
            json!({"location": location, "kind": "Warehouse", "region": "UK", "routing_priority": i + 1}),
        ));
    }
    catalogue.push(next(
        "channel.define",
        json!({"channel": "web", "name": "Online shop"}),
    ));
    for s in 0..skus {
        let sku = format!("SKU{s:07}");
        catalogue.push(next("item.define", json!({"sku": sku})));
        for location in LOCATIONS {
            catalogue.push(next(
                "stock.receive",
                json!({"sku": sku, "location": location, "qty": 10,
                       "unit_cost": {"amount": "2.50", "currency": "GBP"}}),
            ));
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let order_commands = (0..orders)
        .map(|o| {
            let sku = format!("SKU{:07}", rng.below(skus));
            let qty = 1 + rng.below(3);
            next(
                "order.place",
                json!({"order": format!("O{o}"), "channel": "web", "ship_to_region": "UK",
                       "lines": [{"line": 1, "sku": sku, "qty": qty,
                                  "unit_price": {"amount": "9.99", "currency": "GBP"}}]}),
            )
        })
        .collect();
    (catalogue, order_commands)
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    common::rss_of("self")
}

/// The write model (and the ATS view, when given) fed the processor's way.
struct InProcess {
    state: State,
    ats: Option<Ats>,
    seq: u64,
    events: u64,
    at: Timestamp,
}

impl InProcess {
    fn store(&mut self, command: &commands::Command, subject: Subject, event: Event) {
        self.seq += 1;
        let envelope = common::envelope(command, subject, event);
        let head = Head {
            seq: self.seq,
            hash: EventHash::GENESIS,
        };
        self.state.apply(&envelope, Some(head));
        if let Some(ats) = self.ats.as_mut() {
            let recorded = RecordedEvent {
                seq: self.seq,
                recorded_at: self.at,
                hash: EventHash::GENESIS,
                stored_version: 1,
                envelope,
            };
            ats.apply(&recorded, &mut Default::default());
        }
    }

    fn run(&mut self, bodies: &[Bytes]) {
        for body in bodies {
            let command = commands::decode(body).expect("valid command");
            let events = commands::decide(&self.state, &command).expect("accepted");
            let count = events.len() as u32;
            self.events += u64::from(count) + 1;
            for (subject, event) in events {
                self.store(&command, subject, event);
            }
            let outcome = Event::CommandAccepted(CommandAccepted {
                command_type: command.body.type_name().to_owned(),
                body_sha256: command.body_sha256(),
                event_count: count,
                on_behalf_of: None,
                threshold: None,
            });
            let subject = Subject::Command(command.command_id);
            self.store(&command, subject.clone(), outcome);
            // Stored: the record leaves memory for the archive, as the processor's does once
            // the log acknowledges its batch.
            self.state.retire(&subject, self.seq);
        }
    }
}

/// Part 1 in a child process: prints `name=value` lines.
fn child(with_ats: bool) {
    let skus = common::env("ERP_CAT_SKUS", 1_000_000) as u64;
    let orders = common::env("ERP_CAT_ORDERS", skus as usize) as u64;
    let (catalogue, order_commands) = workload(skus, orders);
    let base = rss();
    let heap_base = common::heap_bytes();
    let mut p = InProcess {
        state: State::default(),
        ats: with_ats.then(Ats::default),
        seq: 0,
        events: 0,
        at: Timestamp::new(chrono::Utc::now()),
    };
    let started = Instant::now();
    p.run(&catalogue);
    let catalogue_secs = started.elapsed().as_secs_f64();
    let catalogue_events = p.events;
    let after_catalogue = rss();
    let heap_catalogue = common::heap_bytes();
    // The command records: those in memory, and the archive's entries of those that left.
    drop(std::mem::take(&mut p.state.commands));
    drop(std::mem::take(&mut p.state.archive));
    let heap_without_records = common::heap_bytes();
    let without_records = rss();
    let started = Instant::now();
    p.run(&order_commands);
    let orders_secs = started.elapsed().as_secs_f64();
    let after_orders = rss();
    println!("catalogue_commands={}", catalogue.len());
    println!("catalogue_events={catalogue_events}");
    println!("catalogue_secs={catalogue_secs}");
    println!("orders_events={}", p.events - catalogue_events);
    println!("orders_secs={orders_secs}");
    println!("base={base}");
    println!("heap_base={heap_base}");
    println!("heap_catalogue={heap_catalogue}");
    println!("heap_without_records={heap_without_records}");
    println!("after_catalogue={after_catalogue}");
    println!("without_records={without_records}");
    println!("after_orders={after_orders}");
}

fn run_child(mode: &str) -> std::collections::HashMap<String, f64> {
    let output = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env("ERP_CAT_CHILD", mode)
        .output()
        .expect("child runs");
    assert!(
        output.status.success(),
        "{mode}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().expect("number")))
        .collect()
}

fn in_process() {
    let skus = common::env("ERP_CAT_SKUS", 1_000_000);
    let orders = common::env("ERP_CAT_ORDERS", skus);
    let state = run_child("state");
    let with_ats = run_child("ats");
    let cells = (skus * LOCATIONS.len()) as f64;
    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "Large catalogue in process: {skus} SKUs x {} locations, {orders} orders",
        LOCATIONS.len()
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| catalogue: define + 3 receipts per SKU (decode, decide, apply) | {:.0} commands/s, {:.0} events/s |",
        state["catalogue_commands"] / state["catalogue_secs"],
        state["catalogue_events"] / state["catalogue_secs"]
    );
    println!(
        "| random one-line orders | {:.0} orders/s, {:.0} events/s |",
        orders as f64 / state["orders_secs"],
        state["orders_events"] / state["orders_secs"]
    );
    let heap_model = state["heap_without_records"] - state["heap_base"];
    let heap_records = state["heap_catalogue"] - state["heap_without_records"];
    println!(
        "| write model after the catalogue, without command records: heap | {:.0} MiB, **{:.0} bytes per SKU x location** |",
        mib(heap_model),
        heap_model / cells
    );
    let model = state["without_records"] - state["base"];
    println!(
        "| same, resident (RSS, with what the allocator keeps after frees) | {:.0} MiB, {:.0} bytes per SKU x location |",
        mib(model),
        model / cells
    );
    println!(
        "| command records (in memory and archived entries): heap | {:.0} MiB, {:.0} bytes per command |",
        mib(heap_records),
        heap_records / state["catalogue_commands"]
    );
    println!(
        "| write model with its command records: heap | {:.0} bytes per SKU x location |",
        (heap_model + heap_records) / cells
    );
    let orders_bytes = state["after_orders"] - state["without_records"];
    println!(
        "| orders and their command records | {:.0} MiB, {:.0} bytes per order |",
        mib(orders_bytes),
        orders_bytes / orders as f64
    );
    let ats = with_ats["heap_without_records"] - state["heap_without_records"];
    println!(
        "| ATS view (fed beside the model; its heap) | {:.0} MiB, {:.0} bytes per SKU x location |",
        mib(ats),
        ats / cells
    );
}

/// `erp processor` on `url` once it answers (`extra`: its flags), and how long it took to.
async fn processor_up(
    url: &str,
    client: &async_nats::Client,
    extra: &[&str],
) -> (common::ErpProcess, f64) {
    let started = Instant::now();
    let processor = common::ErpProcess::start(&[&["processor", "--nats", url][..], extra].concat());
    common::wait_for_processor(client).await;
    (processor, started.elapsed().as_secs_f64())
}

/// One size of the growth series on a fresh server: the load through `erp processor` (its own
/// process, as deployed), its resident memory, restarts from its snapshot and from scratch,
/// then an ATS rebuild and a raw read of the same stream.
async fn growth_step(target_events: u64) -> String {
    // About 8 events per SKU (4 commands, each with an outcome record) and 4 per order.
    let skus = (target_events / 12).max(1);
    let (mut bodies, orders) = workload(skus, skus);
    bodies.extend(orders);
    let bench = common::start_server();
    let url = bench.server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    let (processor, _) = processor_up(&url, &client, &[]).await;
    let sender = commands::client::CommandClient::new(client.clone(), Duration::from_secs(120));
    let total = bodies.len();
    let mut events = 0u64;
    let started = Instant::now();
    sender
        .submit_all(bodies, 512, |_, outcome| match outcome {
            Ok(Outcome::Accepted { event_count, .. }) => events += u64::from(event_count),
            other => panic!("refused: {other:?}"),
        })
        .await;
    let load = started.elapsed().as_secs_f64();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let loaded_rss = processor.rss();
    processor.interrupt();
    let (processor, from_snapshot) = processor_up(&url, &client, &[]).await;
    let snapshot_rss = processor.rss();
    processor.interrupt();
    let (processor, from_scratch) = processor_up(&url, &client, &["--from-scratch"]).await;
    let scratch_rss = processor.rss();
    processor.interrupt();
    let log = JetStreamLog::open(client.clone(), LogConfig::ledger())
        .await
        .expect("log");
    let last = log.last_sequence().await.expect("last");
    let raw = common::raw_read(&log, last).await;
    let mut projector = projections::Projector::<Ats>::open(
        log,
        projections::Mode::Rebuild,
        projections::ProjectorConfig::default(),
    )
    .await
    .expect("projector");
    let started = Instant::now();
    let rebuilt = projector.catch_up().await.expect("catch up");
    let rebuild = started.elapsed().as_secs_f64();
    drop(bench);
    format!(
        "| {last} | {total} | {:.0} | {:.1} | {:.0} MiB | {from_snapshot:.2} s, {:.0} MiB | {from_scratch:.1} s, {:.0} MiB | {:.1} | {:.0} | {:.2} |",
        events as f64 / load,
        load * 1e6 / last as f64,
        mib(loaded_rss),
        mib(snapshot_rss),
        mib(scratch_rss),
        rebuild * 1e6 / rebuilt as f64,
        raw,
        (rebuilt as f64 / rebuild) / raw,
    )
}

fn main() {
    if let Ok(mode) = std::env::var("ERP_CAT_CHILD") {
        child(mode == "ats");
        return;
    }
    in_process();
    let sizes: Vec<u64> = std::env::var("ERP_CAT_GROWTH")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .expect("ERP_CAT_GROWTH: comma-separated event counts")
        })
        .collect();
    if sizes.is_empty() {
        return;
    }
    let (_, version) = common::nats_server();
    println!();
    println!(
        "Growth, end to end (nats-server {version}, fsync always, `erp processor` as its own process, window 512):"
    );
    println!();
    println!(
        "| stream messages | commands | load events/s | load µs per message | processor RSS after the load | restart from its snapshot (to answering; RSS) | restart from scratch (RSS) | ATS rebuild µs per message | raw read msgs/s | rebuild / raw |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    common::block_on(async {
        for size in sizes {
            println!("{}", growth_step(size).await);
        }
    });
}
