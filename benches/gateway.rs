//! The HTTP gateway's overhead: the same one-unit orders sent through NATS request/reply and
//! through `erp gateway`, in one run on one server that fsyncs every write, with the processor
//! and the gateway each as their own process (as deployed) and the clients in this one.
//!
//! In order:
//! 1. raw durable atomic batches of 1,000 messages, 4 in flight (the log's ceiling);
//! 2. NATS request/reply, `ERP_GATEWAY_CLIENTS` (200) concurrent clients;
//! 3. HTTP `POST /v1/commands`, the same number of concurrent clients;
//! 4. HTTP `POST /v1/commands/batch`, 1,000 commands a request, 2 requests at a time;
//! 5. one client, one command at a time, through NATS and through HTTP (the idle path);
//! 6. `/metrics` scraped: its command count and latency quantiles beside the clients' own.
//!
//! Run: `cargo bench --bench gateway`. `ERP_GATEWAY_ORDERS` (20,000) per step.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

const SKUS: usize = 10;
const LONE: usize = 500;

fn main() {
    common::block_on(run());
}

fn order(n: usize) -> Bytes {
    common::command(
        "order.place",
        json!({"order": format!("G{n}-{}", uuid::Uuid::now_v7().simple()), "channel": "web",
               "ship_to_region": "UK",
               "lines": [{"line": 1, "sku": format!("S{}", n % SKUS), "qty": 1,
                          "unit_price": {"amount": "9.99", "currency": "GBP"}}]}),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

struct Step {
    name: &'static str,
    latencies: Vec<Duration>,
    commands: usize,
    secs: f64,
}

impl Step {
    fn rate(&self) -> f64 {
        self.commands as f64 / self.secs
    }

    fn line(&self, raw: f64, nats: f64) -> String {
        let latency = if self.latencies.is_empty() {
            " | |".to_owned()
        } else {
            format!(
                " {:.1} | {:.1} |",
                percentile(&self.latencies, 0.5),
                percentile(&self.latencies, 0.99)
            )
        };
        format!(
            "| {} | {:.0} | {:.3} | {:.2} |{latency}",
            self.name,
            self.rate(),
            self.rate() * 2.8 / raw,
            self.rate() / nats
        )
    }
}

/// `clients` concurrent senders of `per_client` orders each, one after another, through `send`.
async fn concurrent<F, Fut>(name: &'static str, clients: usize, per_client: usize, send: F) -> Step
where
    F: Fn(Bytes) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for n in 0..per_client {
                let body = order(c * per_client + n);
                let sent = Instant::now();
                assert!(send(body).await, "an order was not accepted");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("client"));
    }
    latencies.sort();
    Step {
        name,
        commands: latencies.len(),
        latencies,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// Sends one command through the gateway; true if it was accepted.
fn http_sender(
    http: &reqwest::Client,
    base: &str,
) -> impl Fn(Bytes) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
+ Clone
+ Send
+ 'static {
    let (http, url) = (http.clone(), format!("{base}/v1/commands"));
    move |body| {
        let request = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        Box::pin(async move { request.send().await.is_ok_and(|r| r.status() == 200) })
    }
}

/// The histogram's quantile `p` in ms: the upper bound of the bucket it falls in.
fn histogram_quantile(metrics: &str, name: &str, p: f64) -> Option<f64> {
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            Some((bound.parse().unwrap_or(f64::INFINITY), count.parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, count)| *count >= p * total)
        .map(|(bound, _)| bound * 1e3)
}

async fn run() {
    let orders = common::env("ERP_GATEWAY_ORDERS", 20_000);
    let clients = common::env("ERP_GATEWAY_CLIENTS", 200);
    let bench = common::start_server();
    let url = bench.server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    println!(
        "nats-server {}, fsync always; {orders} one-unit orders a step, {clients} clients\n",
        bench.version
    );

    let raw = common::raw_atomic(&client, "RAW4", 300, 1000, 60, 4).await;
    let _processor = common::ErpProcess::start(&["processor", "--nats", &url]);
    common::wait_for_processor(&client).await;
    let (_gateway, base) = common::start_gateway(&url).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");

    // Stock enough for every order of every step.
    let setup = commands::client::CommandClient::new(client.clone(), Duration::from_secs(30));
    let mut bodies = vec![
        common::command(
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ),
        common::command("channel.define", json!({"channel": "web"})),
    ];
    for s in 0..SKUS {
        bodies.push(common::command(
            "item.define",
            json!({"sku": format!("S{s}")}),
        ));
        bodies.push(common::command(
            "stock.receive",
            json!({"sku": format!("S{s}"), "location": "WH1", "qty": 10_000_000,
                   "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
        ));
    }
    for body in bodies {
        assert!(setup.submit_json(body).await.expect("setup").is_accepted());
    }

    let per_client = orders / clients;
    let connections: Vec<async_nats::Client> =
        futures::future::join_all((0..8).map(|_| async_nats::connect(url.clone())))
            .await
            .into_iter()
            .map(|c| c.expect("connect"))
            .collect();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let nats = concurrent("NATS request/reply", clients, per_client, move |body| {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client = commands::client::CommandClient::new(
            connections[n % connections.len()].clone(),
            Duration::from_secs(60),
        );
        async move {
            client
                .submit_json(body)
                .await
                .is_ok_and(|o| o.is_accepted())
        }
    })
    .await;
    let single = concurrent(
        "HTTP POST /v1/commands",
        clients,
        per_client,
        http_sender(&http, &base),
    )
    .await;

    // Batches of 1,000, two requests at a time.
    let started = Instant::now();
    let batches = orders / 1000;
    let mut sent = 0;
    let mut pending = futures::stream::FuturesUnordered::new();
    for k in 0..batches {
        let bodies: Vec<serde_json::Value> = (0..1000)
            .map(|n| serde_json::from_slice(&order(k * 1000 + n)).expect("json"))
            .collect();
        let request = http
            .post(format!("{base}/v1/commands/batch"))
            .json(&bodies)
            .send();
        pending.push(async move {
            let answer: serde_json::Value =
                request.await.expect("batch").json().await.expect("json");
            answer["outcomes"]
                .as_array()
                .expect("outcomes")
                .iter()
                .filter(|o| o["http_status"] == 200)
                .count()
        });
        if pending.len() == 2 {
            use futures::StreamExt;
            sent += pending.next().await.expect("batch");
        }
    }
    use futures::StreamExt;
    while let Some(n) = pending.next().await {
        sent += n;
    }
    assert_eq!(sent, batches * 1000, "every order of the batches accepted");
    let batch = Step {
        name: "HTTP POST /v1/commands/batch (1,000 a request, 2 at a time)",
        latencies: Vec::new(),
        commands: sent,
        secs: started.elapsed().as_secs_f64(),
    };

    let lone_client = commands::client::CommandClient::new(client.clone(), Duration::from_secs(60));
    let lone_nats = concurrent("one at a time, NATS", 1, LONE, move |body| {
        let c = lone_client.clone();
        async move { c.submit_json(body).await.is_ok_and(|o| o.is_accepted()) }
    })
    .await;
    let lone_http = concurrent("one at a time, HTTP", 1, LONE, http_sender(&http, &base)).await;

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");

    println!("raw durable atomic batches, 1,000 x 4 in flight: {raw:.0} msgs/s\n");
    println!(
        "| path | orders/s | messages/s over raw (2.8 a one-line order) | over NATS | p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|---|---|");
    let base_rate = nats.rate();
    for step in [&nats, &single, &batch, &lone_nats, &lone_http] {
        println!("{}", step.line(raw, base_rate));
    }
    let through_gateway = single.commands + batch.commands + lone_http.commands;
    let mut http_latencies: Vec<Duration> = single
        .latencies
        .iter()
        .chain(&lone_http.latencies)
        .copied()
        .collect();
    http_latencies.sort();
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("erp_gateway_commands_total{outcome=\"accepted\"} "))
        .unwrap_or("?");
    println!(
        "\n/metrics: {counted} commands accepted (the clients sent {through_gateway}); single commands gateway-to-processor p50 <= {:.0} ms, p99 <= {:.0} ms (bucket upper bounds) beside the HTTP clients' round trips, both steps: p50 {:.1} ms, p99 {:.1} ms",
        histogram_quantile(&metrics, "erp_gateway_command_seconds", 0.5).unwrap_or(f64::NAN),
        histogram_quantile(&metrics, "erp_gateway_command_seconds", 0.99).unwrap_or(f64::NAN),
        percentile(&http_latencies, 0.5),
        percentile(&http_latencies, 0.99),
    );
}
