//! `/metrics` in Prometheus' text format: what the gateway counted (requests by route and
//! status, commands by outcome, command-to-answer latency as a histogram, view queries) and,
//! asked at scrape time, what the system reports (the ledger's end, the processor's status,
//! each view's checkpoint and lag).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::Gateway;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 21] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1,
    0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// A histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// What the gateway counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (route, status) -> requests.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// outcome -> commands.
    commands: Mutex<BTreeMap<&'static str, u64>>,
    command_latency: Histogram,
    /// Whole batch requests, from the first command sent to the last answer.
    batch_latency: Histogram,
    /// (view, answered) -> queries.
    view_queries: Mutex<BTreeMap<(String, bool), u64>>,
}

impl Metrics {
    pub fn command_answered(&self, outcome: &'static str, elapsed: Duration) {
        *self
            .commands
            .lock()
            .expect("metrics lock")
            .entry(outcome)
            .or_default() += 1;
        self.command_latency.observe(elapsed);
    }

    /// A command of a batch request: counted by outcome; its latency is the batch's.
    pub fn batch_command_answered(&self, outcome: &'static str) {
        *self
            .commands
            .lock()
            .expect("metrics lock")
            .entry(outcome)
            .or_default() += 1;
    }

    pub fn batch_answered(&self, elapsed: Duration) {
        self.batch_latency.observe(elapsed);
    }

    pub fn view_answered(&self, view: &str, answered: bool) {
        *self
            .view_queries
            .lock()
            .expect("metrics lock")
            .entry((view.to_owned(), answered))
            .or_default() += 1;
    }

    fn request(&self, route: String, status: u16) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((route, status))
            .or_default() += 1;
    }
}

/// Counts every request by its route pattern (not its path: ids would make a series each)
/// and status.
pub async fn count_requests(State(gw): State<Gateway>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    gw.metrics().request(route, response.status().as_u16());
    response
}

/// The processor's report, as far as the gateway uses it.
#[derive(Debug, Clone)]
pub struct ProcessorReport {
    pub applied_seq: u64,
    pub raw: Value,
}

/// A view's report.
#[derive(Debug, Clone)]
pub struct ViewReport {
    pub checkpoint: u64,
    pub lag: u64,
}

/// What the system reports, asked now (each part within a second; `None`: no answer).
#[derive(Debug)]
pub struct SystemReport {
    pub ledger_last_seq: Option<u64>,
    pub processor: Option<ProcessorReport>,
    pub views: Vec<(&'static str, Option<ViewReport>)>,
}

pub async fn system_report(gw: &Gateway) -> SystemReport {
    let wait = Duration::from_secs(1);
    let reader = &gw.inner.reader;
    let ledger = tokio::time::timeout(wait, ledger::log::EventLog::last_sequence(&gw.inner.log));
    let processor = tokio::time::timeout(
        wait,
        reader.request(ledger::subject::commands::STATUS_QUERY, Bytes::new()),
    );
    let views = futures::future::join_all(crate::views::VIEWS.iter().map(|(view, _)| async {
        let answer = projections::client::ViewClient::new(reader.clone())
            .ask(view, "status", serde_json::json!({}), None, wait)
            .await
            .ok();
        let report = answer.map(|a| ViewReport {
            checkpoint: a.result["checkpoint"].as_u64().unwrap_or(0),
            lag: a.result["lag"].as_u64().unwrap_or(0),
        });
        (*view, report)
    }));
    let (ledger, processor, views) = tokio::join!(ledger, processor, views);
    let processor = processor
        .ok()
        .and_then(|r| r.ok())
        .and_then(|msg| serde_json::from_slice::<Value>(&msg.payload).ok())
        .and_then(|raw| {
            Some(ProcessorReport {
                applied_seq: raw.get("applied_seq")?.as_u64()?,
                raw,
            })
        });
    SystemReport {
        ledger_last_seq: ledger.ok().and_then(|r| r.ok()),
        processor,
        views,
    }
}

/// The processor's batches: counters, the batches in flight, and commands per batch as a
/// histogram (its buckets are the processor's `BATCH_SIZE_BUCKETS`).
fn write_batches(out: &mut String, raw: &Value, family: &dyn Fn(&mut String, &str, &str, &str)) {
    let batches = &raw["batches"];
    let counters = [
        (
            "committed",
            "erp_processor_batches_committed_total",
            "Batches the ledger acknowledged since the processor started.",
        ),
        (
            "commands",
            "erp_processor_batched_commands_total",
            "Commands in those batches.",
        ),
        (
            "events",
            "erp_processor_batched_events_total",
            "Events in those batches.",
        ),
        (
            "rollbacks",
            "erp_processor_rollbacks_total",
            "Failures that rolled batches back (conflict, refusal, lost acknowledgement).",
        ),
        (
            "rolled_back_batches",
            "erp_processor_rolled_back_batches_total",
            "Batches those failures took with them (decided again).",
        ),
    ];
    for (field, name, help) in counters {
        if let Some(value) = batches[field].as_u64() {
            family(out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    if let Some(value) = raw["in_flight"].as_u64() {
        let name = "erp_processor_batches_in_flight";
        family(out, name, "gauge", "Batches sent and not yet acknowledged.");
        let _ = writeln!(out, "{name} {value}");
    }
    if let Some(counts) = batches["commands_per_batch"].as_array() {
        let name = "erp_processor_batch_commands";
        family(out, name, "histogram", "Commands per committed batch.");
        let mut cumulative = 0;
        for (bound, count) in commands::processor::BATCH_SIZE_BUCKETS.iter().zip(counts) {
            cumulative += count.as_u64().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            batches["commands"].as_u64().unwrap_or(0)
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// `GET /metrics`.
pub async fn scrape(State(gw): State<Gateway>) -> Response {
    let started = Instant::now();
    let report = system_report(&gw).await;
    let metrics = gw.metrics();
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "erp_gateway_requests_total",
        "counter",
        "HTTP requests by route and status.",
    );
    for ((route, status), n) in metrics.requests.lock().expect("metrics lock").iter() {
        let _ = writeln!(
            out,
            "erp_gateway_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    family(
        &mut out,
        "erp_gateway_commands_total",
        "counter",
        "Commands answered through the gateway, by outcome (no_answer: none came in time).",
    );
    for (outcome, n) in metrics.commands.lock().expect("metrics lock").iter() {
        let _ = writeln!(
            out,
            "erp_gateway_commands_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    family(
        &mut out,
        "erp_gateway_command_seconds",
        "histogram",
        "From sending a command (POST /v1/commands) to the processor to its answer.",
    );
    metrics
        .command_latency
        .write(&mut out, "erp_gateway_command_seconds");
    family(
        &mut out,
        "erp_gateway_batch_seconds",
        "histogram",
        "From sending a batch request's first command to its last answer.",
    );
    metrics
        .batch_latency
        .write(&mut out, "erp_gateway_batch_seconds");
    family(
        &mut out,
        "erp_gateway_view_queries_total",
        "counter",
        "View queries by view and whether the view answered (a refusal is an answer).",
    );
    for ((view, answered), n) in metrics.view_queries.lock().expect("metrics lock").iter() {
        let _ = writeln!(
            out,
            "erp_gateway_view_queries_total{{view=\"{view}\",answered=\"{answered}\"}} {n}"
        );
    }
    if let Some(last) = report.ledger_last_seq {
        family(
            &mut out,
            "erp_ledger_last_sequence",
            "gauge",
            "The ledger's last stored sequence.",
        );
        let _ = writeln!(out, "erp_ledger_last_sequence {last}");
    }
    family(
        &mut out,
        "erp_processor_up",
        "gauge",
        "1 if the processor answered its status query within a second.",
    );
    let _ = writeln!(
        out,
        "erp_processor_up {}",
        u8::from(report.processor.is_some())
    );
    if let Some(p) = &report.processor {
        let gauges: [(&str, &str, &str, &str); 7] = [
            (
                "applied_seq",
                "erp_processor_applied_sequence",
                "gauge",
                "The last ledger sequence the processor has applied.",
            ),
            (
                "commands_recorded",
                "erp_processor_commands_recorded",
                "gauge",
                "Command outcomes recorded in the ledger.",
            ),
            (
                "internal_errors",
                "erp_processor_internal_errors_total",
                "counter",
                "Commands recorded internal_error since the processor started.",
            ),
            (
                "orders_in_memory",
                "erp_processor_orders_in_memory",
                "gauge",
                "Orders the processor holds in memory.",
            ),
            (
                "orders_archived",
                "erp_processor_orders_archived",
                "gauge",
                "Finished orders out of memory, read back when named.",
            ),
            (
                "recalled",
                "erp_processor_recalled_total",
                "counter",
                "Orders and command records read back from the ledger since the processor started.",
            ),
            (
                "foreign",
                "erp_processor_foreign_messages_total",
                "counter",
                "Foreign messages the processor passed over in the ledger.",
            ),
        ];
        for (field, name, kind, help) in gauges {
            let value = match field {
                "foreign" => p.raw["foreign"]["count"].as_u64(),
                _ => p.raw[field].as_u64(),
            };
            if let Some(value) = value {
                family(&mut out, name, kind, help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
        write_batches(&mut out, &p.raw, &family);
    }
    family(
        &mut out,
        "erp_view_up",
        "gauge",
        "1 if the view's projector answered its status query within a second.",
    );
    for (view, r) in &report.views {
        let _ = writeln!(
            out,
            "erp_view_up{{view=\"{view}\"}} {}",
            u8::from(r.is_some())
        );
    }
    family(
        &mut out,
        "erp_view_checkpoint",
        "gauge",
        "The last ledger sequence the view has applied.",
    );
    for (view, r) in &report.views {
        if let Some(r) = r {
            let _ = writeln!(
                out,
                "erp_view_checkpoint{{view=\"{view}\"}} {}",
                r.checkpoint
            );
        }
    }
    family(
        &mut out,
        "erp_view_lag_records",
        "gauge",
        "Ledger records the view has yet to apply.",
    );
    for (view, r) in &report.views {
        if let Some(r) = r {
            let _ = writeln!(out, "erp_view_lag_records{{view=\"{view}\"}} {}", r.lag);
        }
    }
    family(
        &mut out,
        "erp_gateway_scrape_seconds",
        "gauge",
        "How long this scrape took to ask the system.",
    );
    let _ = writeln!(
        out,
        "erp_gateway_scrape_seconds {}",
        started.elapsed().as_secs_f64()
    );
    let mut response = (StatusCode::OK, out).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
