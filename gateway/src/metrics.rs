//! `/metrics` in Prometheus' text format: what the gateway counted (requests by route and
//! status, commands by outcome, command-to-answer latency as a histogram, view queries) and,
//! asked at scrape time, what the system reports (the ledger's end, the processor's status,
//! each view's checkpoint and lag).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use commands::latency::{Histogram, LATENCY_BUCKETS, LatencyCounts};
use projections::runtime::{Progress, RebuildProgress};
use serde_json::Value;

use crate::Gateway;

/// A latency histogram's counts as the exposition takes them: buckets (upper bound, count in
/// it; not cumulative), sum in seconds and count.
fn latency(counts: &LatencyCounts) -> (Vec<(String, u64)>, f64, u64) {
    let buckets = LATENCY_BUCKETS
        .iter()
        .zip(&counts.buckets)
        .map(|(bound, n)| (bound.to_string(), *n))
        .collect();
    (buckets, counts.sum_micros as f64 / 1e6, counts.count)
}

/// Prometheus' text exposition format, a metric family at a time.
#[derive(Debug, Default)]
pub(crate) struct Exposition(String);

impl Exposition {
    /// A family and its samples: (labels, value), labels as `{k="v",...}` or empty.
    pub(crate) fn family<V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (String, V)>,
    ) {
        let out = &mut self.0;
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    }

    /// A histogram from its buckets (upper bound, count in it; not cumulative), sum and count.
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        (buckets, sum, count): (Vec<(String, u64)>, impl std::fmt::Display, u64),
    ) {
        self.family::<u64>(name, "histogram", help, []);
        let out = &mut self.0;
        let mut cumulative = 0;
        for (bound, n) in buckets {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

impl Exposition {
    /// Work under way, one sample each (labels, progress): `<prefix>_records_done`,
    /// `<prefix>_records_total` and `<prefix>_seconds_left`; `what` begins their help.
    pub(crate) fn progress(
        &mut self,
        prefix: &str,
        what: &str,
        samples: impl IntoIterator<Item = (String, Progress)>,
    ) {
        let samples: Vec<(String, Progress)> = samples.into_iter().collect();
        type Figure = fn(&Progress) -> f64;
        let figures: [(&str, &str, Figure); 3] = [
            ("records_done", "ledger records read", |p| p.done as f64),
            ("records_total", "records it reads in all", |p| {
                p.total as f64
            }),
            ("seconds_left", "the time left at its rate so far", |p| {
                p.eta_seconds
            }),
        ];
        for (suffix, help, figure) in figures {
            self.family(
                &format!("{prefix}_{suffix}"),
                "gauge",
                &format!("{what}: {help}."),
                samples
                    .iter()
                    .map(|(labels, p)| (labels.clone(), figure(p))),
            );
        }
    }
}

/// A sample without labels.
pub(crate) fn one<V>(value: V) -> [(String, V); 1] {
    [(String::new(), value)]
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
        self.batch_command_answered(outcome);
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
    /// Rebuilds under way: each answers how far it is.
    pub rebuilds: Vec<(&'static str, RebuildProgress)>,
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
    let rebuilds = futures::future::join_all(crate::views::VIEWS.iter().map(|(view, _)| async {
        let asked = tokio::time::timeout(
            Duration::from_millis(500),
            reader.request(projections::runtime::rebuild_subject(view), Bytes::new()),
        )
        .await;
        let progress = asked
            .ok()?
            .ok()
            .and_then(|msg| serde_json::from_slice::<RebuildProgress>(&msg.payload).ok())?;
        Some((*view, progress))
    }));
    let (ledger, processor, views, rebuilds) = tokio::join!(ledger, processor, views, rebuilds);
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
        rebuilds: rebuilds.into_iter().flatten().collect(),
    }
}

/// The processor's figures from its status: (JSON pointer, name, kind, help).
const PROCESSOR_FIGURES: [(&str, &str, &str, &str); 13] = [
    (
        "/applied_seq",
        "erp_processor_applied_sequence",
        "gauge",
        "The last ledger sequence the processor has applied.",
    ),
    (
        "/commands_recorded",
        "erp_processor_commands_recorded",
        "gauge",
        "Command outcomes recorded in the ledger.",
    ),
    (
        "/internal_errors",
        "erp_processor_internal_errors_total",
        "counter",
        "Commands recorded internal_error since the processor started.",
    ),
    (
        "/orders_in_memory",
        "erp_processor_orders_in_memory",
        "gauge",
        "Orders the processor holds in memory.",
    ),
    (
        "/orders_archived",
        "erp_processor_orders_archived",
        "gauge",
        "Finished orders out of memory, read back when named.",
    ),
    (
        "/recalled",
        "erp_processor_recalled_total",
        "counter",
        "Orders and command records read back from the ledger since the processor started.",
    ),
    (
        "/foreign/count",
        "erp_processor_foreign_messages_total",
        "counter",
        "Foreign messages the processor passed over in the ledger.",
    ),
    (
        "/batches/committed",
        "erp_processor_batches_committed_total",
        "counter",
        "Batches the ledger acknowledged since the processor started.",
    ),
    (
        "/batches/commands",
        "erp_processor_batched_commands_total",
        "counter",
        "Commands in those batches.",
    ),
    (
        "/batches/events",
        "erp_processor_batched_events_total",
        "counter",
        "Events in those batches.",
    ),
    (
        "/batches/rollbacks",
        "erp_processor_rollbacks_total",
        "counter",
        "Failures that rolled batches back (conflict, refusal, lost acknowledgement).",
    ),
    (
        "/batches/rolled_back_batches",
        "erp_processor_rolled_back_batches_total",
        "counter",
        "Batches those failures took with them (decided again).",
    ),
    (
        "/in_flight",
        "erp_processor_batches_in_flight",
        "gauge",
        "Batches sent and not yet acknowledged.",
    ),
];

/// `GET /metrics`.
pub async fn scrape(State(gw): State<Gateway>) -> Response {
    let started = Instant::now();
    let report = system_report(&gw).await;
    let metrics = gw.metrics();
    let mut out = Exposition::default();
    let requests = metrics.requests.lock().expect("metrics lock").clone();
    out.family(
        "erp_gateway_requests_total",
        "counter",
        "HTTP requests by route and status.",
        requests
            .into_iter()
            .map(|((route, status), n)| (format!("{{route=\"{route}\",status=\"{status}\"}}"), n)),
    );
    let commands = metrics.commands.lock().expect("metrics lock").clone();
    out.family(
        "erp_gateway_commands_total",
        "counter",
        "Commands answered through the gateway, by outcome (no_answer: none came in time).",
        commands
            .into_iter()
            .map(|(outcome, n)| (format!("{{outcome=\"{outcome}\"}}"), n)),
    );
    out.histogram(
        "erp_gateway_command_seconds",
        "From sending a command (POST /v1/commands) to the processor to its answer.",
        latency(&metrics.command_latency.read()),
    );
    out.histogram(
        "erp_gateway_batch_seconds",
        "From sending a batch request's first command to its last answer.",
        latency(&metrics.batch_latency.read()),
    );
    let queries = metrics.view_queries.lock().expect("metrics lock").clone();
    out.family(
        "erp_gateway_view_queries_total",
        "counter",
        "View queries by view and whether the view answered (a refusal is an answer).",
        queries.into_iter().map(|((view, answered), n)| {
            (format!("{{view=\"{view}\",answered=\"{answered}\"}}"), n)
        }),
    );
    if let Some(last) = report.ledger_last_seq {
        out.family(
            "erp_ledger_last_sequence",
            "gauge",
            "The ledger's last stored sequence.",
            one(last),
        );
    }
    out.family(
        "erp_processor_up",
        "gauge",
        "1 if the processor answered its status query within a second.",
        one(u8::from(report.processor.is_some())),
    );
    if let Some(p) = &report.processor {
        for (pointer, name, kind, help) in PROCESSOR_FIGURES {
            if let Some(value) = p.raw.pointer(pointer).and_then(Value::as_u64) {
                out.family(name, kind, help, one(value));
            }
        }
        if let Ok(counts) = serde_json::from_value::<LatencyCounts>(p.raw["answer_latency"].clone())
        {
            out.histogram(
                "erp_processor_command_seconds",
                "From a command's arrival at the processor to its answer (every command, from every sender).",
                latency(&counts),
            );
        }
        let batches = &p.raw["batches"];
        if let Some(counts) = batches["commands_per_batch"].as_array() {
            let buckets = commands::processor::BATCH_SIZE_BUCKETS
                .iter()
                .zip(counts)
                .map(|(bound, n)| (bound.to_string(), n.as_u64().unwrap_or(0)))
                .collect();
            out.histogram(
                "erp_processor_batch_commands",
                "Commands per committed batch.",
                (
                    buckets,
                    batches["commands"].as_u64().unwrap_or(0),
                    batches["committed"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    let per_view = |figure: fn(&ViewReport) -> u64| {
        report.views.iter().filter_map(move |(view, r)| {
            Some((format!("{{view=\"{view}\"}}"), figure(r.as_ref()?)))
        })
    };
    out.family(
        "erp_view_up",
        "gauge",
        "1 if the view's projector answered its status query within a second.",
        report
            .views
            .iter()
            .map(|(view, r)| (format!("{{view=\"{view}\"}}"), u8::from(r.is_some()))),
    );
    out.family(
        "erp_view_checkpoint",
        "gauge",
        "The last ledger sequence the view has applied.",
        per_view(|r| r.checkpoint),
    );
    out.family(
        "erp_view_lag_records",
        "gauge",
        "Ledger records the view has yet to apply.",
        per_view(|r| r.lag),
    );
    out.progress(
        "erp_view_rebuild",
        "A rebuild under way (into a new generation)",
        report.rebuilds.iter().map(|(view, p)| {
            (
                format!("{{view=\"{view}\",generation=\"{}\"}}", p.generation),
                p.progress,
            )
        }),
    );
    crate::replays::expose(&gw, &mut out);
    out.family(
        "erp_gateway_scrape_seconds",
        "gauge",
        "How long this scrape took to ask the system.",
        one(started.elapsed().as_secs_f64()),
    );
    let mut response = (StatusCode::OK, out.0).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
