//! A view as it stood at a point of either timeline, replayed by the gateway on request (the
//! console's "as of a date"): `POST /v1/replays` resolves the point and starts reading the
//! ledger from sequence 1, exactly as `erp replay` does; `GET /v1/replays/{id}` says how far it
//! is and, once done, returns the rows; `GET /v1/replays` lists the recent ones. Replays read
//! the whole ledger, so only the auditor and users with the admin or auditor role may run
//! them, and at most `RUNNING_MAX` run at once. `/metrics` shows those under way.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ledger::jetstream::JetStreamLog;
use replay::output::{self, Filter};
use replay::point::{self, Knowledge, Point, Resolved};
use replay::{Model, ReplayError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::metrics::Exposition;
use crate::{Gateway, Refusal, error, unavailable};

/// Replays running at once, at most: each reads the whole ledger and holds a model.
pub const RUNNING_MAX: usize = 2;
/// Finished replays kept for `GET` (the oldest go first).
pub const KEPT: usize = 20;
/// Rows a replay returns, at most (and by default).
pub const ROWS_MAX: usize = 10_000;
pub const ROWS_DEFAULT: usize = 1_000;

/// The views a replay can build, and what each holds.
pub const REPLAY_VIEWS: [(&str, &str); 10] = [
    (
        "ats",
        "available to sell per SKU x location and SKU x channel",
    ),
    (
        "allocation",
        "order lines: allocation, backorders, progress",
    ),
    ("audit", "events per entity"),
    (
        "margin",
        "contribution margin by SKU, channel, order and day; inventory value",
    ),
    ("finance", "journal totals per entity x currency x account"),
    (
        "replenishment",
        "purchase recommendations per SKU x location",
    ),
    (
        "exceptions",
        "exceptions raised by the rules, their status, owner and resolution",
    ),
    ("kpis", "operations KPIs by day, week and month"),
    (
        "trace",
        "lots: where each came from and which orders it went to",
    ),
    (
        "state",
        "the processor's write model: stock balances and orders",
    ),
];

/// `POST /v1/replays`: what to build, as of which point.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// One of `ats`, `allocation`, `audit`, `margin`, `finance`, `replenishment`, `exceptions`,
    /// `kpis`, `trace`, `state`.
    pub view: String,
    /// Knowledge: everything the ledger held up to this sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of_seq: Option<u64>,
    /// Knowledge: everything stored by this time (RFC 3339, or a date meaning its end, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_recorded: Option<String>,
    /// Business time: only events effective at or before this time (RFC 3339 or a date),
    /// back-dated ones included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_effective: Option<String>,
    /// Only rows whose key starts with this (e.g. `loc.85123A.` for one SKU in `ats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Only rows whose top-level field has this value: `field=value` each.
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<String>,
    /// Rows returned, at most (default 1,000, at most 10,000); `rows_total` counts them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Where a replay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplayStatus {
    Running,
    Done,
    Failed,
}

/// One row of a replayed view.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReplayRow {
    pub key: String,
    /// The row as the view (or the write model) holds it: its shape is the view's row type
    /// (docs/VIEWS.md, `schemas/views/`).
    #[schemars(schema_with = "any_row")]
    pub value: Value,
}

/// Any JSON value, described (a bare `true` schema is valid JSON Schema, but code generators
/// refuse it).
fn any_row(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "The row as the view holds it; its shape is the view's row type."
    })
}

/// A replay: its request, the point it resolved to, its progress and, once done, its rows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReplayJob {
    pub id: Uuid,
    pub status: ReplayStatus,
    pub request: ReplayRequest,
    /// The point as resolved against the ledger ("as recorded at ... (sequence N)").
    pub point: String,
    /// The last sequence the replay reads.
    pub seq: u64,
    /// Records read so far, of `total`.
    pub done: u64,
    pub total: u64,
    pub records_per_second: f64,
    pub seconds_left: f64,
    pub started_at: String,
    pub elapsed_seconds: f64,
    /// Once done: the rows (at most `limit`), how many there were, and events applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<ReplayRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_applied: Option<u64>,
    /// Once failed: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    started: Instant,
}

/// The gateway's replays: running and recently finished.
#[derive(Debug, Default)]
pub struct Replays {
    jobs: Mutex<VecDeque<ReplayJob>>,
    /// Replays started and finished (done or failed) since the gateway started.
    finished: Mutex<[u64; 2]>,
}

impl Replays {
    fn update(&self, id: Uuid, change: impl FnOnce(&mut ReplayJob)) {
        let mut jobs = self.jobs.lock().expect("replays lock");
        if let Some(job) = jobs.iter_mut().find(|j| j.id == id) {
            change(job);
            job.elapsed_seconds = job.started.elapsed().as_secs_f64();
        }
    }

    fn running(&self) -> usize {
        let jobs = self.jobs.lock().expect("replays lock");
        jobs.iter()
            .filter(|j| j.status == ReplayStatus::Running)
            .count()
    }

    /// Adds a job, dropping the oldest finished ones beyond `KEPT`.
    fn add(&self, job: ReplayJob) {
        let mut jobs = self.jobs.lock().expect("replays lock");
        jobs.push_back(job);
        while jobs.len() > KEPT {
            match jobs.iter().position(|j| j.status != ReplayStatus::Running) {
                Some(i) => {
                    jobs.remove(i);
                }
                None => break,
            }
        }
    }

    fn get(&self, id: Uuid) -> Option<ReplayJob> {
        let jobs = self.jobs.lock().expect("replays lock");
        jobs.iter().find(|j| j.id == id).cloned()
    }
}

fn bad(field: &str, message: String) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_replay",
        message: format!("`{field}`: {message}"),
    }
}

/// Checks a request and resolves its point; `Err` says which field was wrong.
async fn prepare(
    log: &JetStreamLog,
    request: &ReplayRequest,
) -> Result<(Resolved, Filter, usize), Refusal> {
    if !REPLAY_VIEWS.iter().any(|(v, _)| *v == request.view) {
        let known: Vec<&str> = REPLAY_VIEWS.iter().map(|(v, _)| *v).collect();
        return Err(bad(
            "view",
            format!(
                "`{}` is not a view a replay builds; expected one of {}",
                request.view,
                known.join(", ")
            ),
        ));
    }
    let time = |field: &str, text: &Option<String>| {
        text.as_deref()
            .map(point::parse_time)
            .transpose()
            .map_err(|e| bad(field, e))
    };
    let knowledge = match (request.as_of_seq, &request.as_recorded) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "as_recorded",
                "give `as_of_seq` or `as_recorded`, not both".into(),
            ));
        }
        (Some(0), None) => return Err(bad("as_of_seq", "sequences start at 1".into())),
        (Some(seq), None) => Knowledge::Seq(seq),
        (None, Some(_)) => {
            Knowledge::Recorded(time("as_recorded", &request.as_recorded)?.expect("given"))
        }
        (None, None) => Knowledge::Latest,
    };
    let effective = time("as_effective", &request.as_effective)?;
    let limit = request.limit.unwrap_or(ROWS_DEFAULT);
    if limit == 0 || limit > ROWS_MAX {
        return Err(bad(
            "limit",
            format!("{limit} rows: expected 1 to {ROWS_MAX}"),
        ));
    }
    let filter = Filter::new(request.key_prefix.clone(), &request.conditions)
        .map_err(|e| bad("where", e.replace("--where ", "")))?;
    let resolved = point::resolve(
        log,
        Point {
            knowledge,
            effective,
        },
    )
    .await
    .map_err(|e| match e {
        ReplayError::BeyondEnd { .. } => bad("as_of_seq", e.to_string()),
        ReplayError::ClockNotMonotonic { .. } => Refusal {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "ambiguous_point",
            message: e.to_string(),
        },
        other => unavailable(&format!("resolving the point: {other}")),
    })?;
    Ok((resolved, filter, limit))
}

/// `POST /v1/replays`: starts a replay; 202 with the job and its `Location`.
pub async fn start(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match start_replay(&gw, &headers, &body).await {
        Ok(job) => {
            let location = format!("/v1/replays/{}", job.id);
            let mut response = (StatusCode::ACCEPTED, axum::Json(job)).into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Err(refusal) => refusal.into_response(),
    }
}

async fn start_replay(
    gw: &Gateway,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ReplayJob, Refusal> {
    crate::events::ledger_reader(gw, headers)?;
    let request: ReplayRequest = serde_json::from_slice(body).map_err(|e| {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_replay",
            message: format!(
                "the body is not a replay request: {e}; expected {{\"view\": \"ats\", \"as_recorded\": \"2011-03-01\", ...}}"
            ),
        }
    })?;
    let replays = &gw.inner.replays;
    if replays.running() >= RUNNING_MAX {
        return Err(Refusal {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "busy",
            message: format!(
                "{RUNNING_MAX} replays are running; each reads the whole ledger. Try again when one is done"
            ),
        });
    }
    let (resolved, filter, limit) = prepare(&gw.inner.log, &request).await?;
    let id = Uuid::now_v7();
    let job = ReplayJob {
        id,
        status: ReplayStatus::Running,
        request: request.clone(),
        point: resolved.to_string(),
        seq: resolved.seq,
        done: 0,
        total: resolved.seq,
        records_per_second: 0.0,
        seconds_left: 0.0,
        started_at: chrono::Utc::now().to_rfc3339(),
        elapsed_seconds: 0.0,
        rows: None,
        rows_total: None,
        events_applied: None,
        error: None,
        started: Instant::now(),
    };
    replays.add(job.clone());
    tracing::info!(%id, view = request.view, point = %resolved, "replay started");
    let gw = gw.clone();
    tokio::spawn(async move {
        let log = &gw.inner.log;
        let points = [resolved];
        let built = match request.view.as_str() {
            "ats" => run::<projections::ats::Ats>(&gw, id, log, &points, &filter).await,
            "allocation" => {
                run::<projections::allocation::Allocation>(&gw, id, log, &points, &filter).await
            }
            "audit" => run::<projections::audit::Audit>(&gw, id, log, &points, &filter).await,
            "margin" => run::<projections::margin::Margin>(&gw, id, log, &points, &filter).await,
            "finance" => run::<projections::finance::Finance>(&gw, id, log, &points, &filter).await,
            "replenishment" => {
                run::<projections::replenish::Replenishment>(&gw, id, log, &points, &filter).await
            }
            "exceptions" => {
                run::<projections::exceptions::Exceptions>(&gw, id, log, &points, &filter).await
            }
            "kpis" => run::<projections::kpis::Kpis>(&gw, id, log, &points, &filter).await,
            "trace" => run::<projections::trace::Trace>(&gw, id, log, &points, &filter).await,
            _ => run::<replay::WriteModel>(&gw, id, log, &points, &filter).await,
        };
        let replays = &gw.inner.replays;
        let outcome = match built {
            Ok((rows, applied)) => {
                tracing::info!(%id, rows = rows.len(), "replay done");
                let total = rows.len();
                replays.update(id, |job| {
                    job.status = ReplayStatus::Done;
                    job.done = job.total;
                    job.seconds_left = 0.0;
                    job.rows_total = Some(total);
                    job.events_applied = Some(applied);
                    job.rows = Some(
                        rows.into_iter()
                            .take(limit)
                            .map(|(key, value)| ReplayRow { key, value })
                            .collect(),
                    );
                });
                0
            }
            Err(e) => {
                tracing::warn!(%id, error = %e, "replay failed");
                replays.update(id, |job| {
                    job.status = ReplayStatus::Failed;
                    job.error = Some(e.to_string());
                });
                1
            }
        };
        replays.finished.lock().expect("replays lock")[outcome] += 1;
    });
    Ok(job)
}

/// Replays model `M` to the point, reporting progress on job `id`: its rows, filtered, and
/// the events applied.
async fn run<M: Model>(
    gw: &Gateway,
    id: Uuid,
    log: &JetStreamLog,
    points: &[Resolved],
    filter: &Filter,
) -> Result<(Vec<(String, Value)>, u64), ReplayError> {
    let replays = &gw.inner.replays;
    let replayed = replay::replay::<_, M>(log, points, |p| {
        replays.update(id, |job| {
            job.done = p.done;
            job.total = p.total;
            job.records_per_second = p.events_per_second;
            job.seconds_left = p.eta_seconds;
        });
    })
    .await?;
    let built = &replayed.built[0];
    Ok((output::rows(built, filter), built.applied))
}

/// `GET /v1/replays/{id}`.
pub async fn get(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<ReplayJob>, Refusal> {
    crate::events::ledger_reader(&gw, &headers)?;
    let id = Uuid::try_parse(&id).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_id",
            &format!("`{id}` is not a replay id (a UUID)"),
        )
    })?;
    gw.inner.replays.get(id).map(axum::Json).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!(
                "no replay {id} here: the gateway keeps the last {KEPT}, and forgets them when it restarts"
            ),
        )
    })
}

/// `GET /v1/replays`: the recent replays, newest first, without their rows.
pub async fn list(
    State(gw): State<Gateway>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, Refusal> {
    crate::events::ledger_reader(&gw, &headers)?;
    let jobs = gw.inner.replays.jobs.lock().expect("replays lock");
    let list: Vec<ReplayJob> = jobs
        .iter()
        .rev()
        .map(|j| ReplayJob {
            rows: None,
            ..j.clone()
        })
        .collect();
    let views: Vec<Value> = REPLAY_VIEWS
        .iter()
        .map(|(view, holds)| serde_json::json!({"view": view, "holds": holds}))
        .collect();
    Ok(axum::Json(
        serde_json::json!({"replays": list, "views": views}),
    ))
}

/// The replays' figures for `/metrics`.
pub(crate) fn expose(gw: &Gateway, out: &mut Exposition) {
    let replays = &gw.inner.replays;
    let jobs: Vec<ReplayJob> = {
        let jobs = replays.jobs.lock().expect("replays lock");
        jobs.iter()
            .filter(|j| j.status == ReplayStatus::Running)
            .cloned()
            .collect()
    };
    let [done, failed] = *replays.finished.lock().expect("replays lock");
    out.family(
        "erp_replays_finished_total",
        "counter",
        "Replays finished since the gateway started, by status.",
        [
            ("{status=\"done\"}".to_owned(), done),
            ("{status=\"failed\"}".to_owned(), failed),
        ],
    );
    out.family(
        "erp_replays_running",
        "gauge",
        "Replays under way.",
        crate::metrics::one(jobs.len()),
    );
    out.progress(
        "erp_replay",
        "A replay under way",
        jobs.iter().map(|j| {
            (
                format!("{{replay=\"{}\",view=\"{}\"}}", j.id, j.request.view),
                projections::runtime::Progress {
                    done: j.done,
                    total: j.total,
                    events_per_second: j.records_per_second,
                    eta_seconds: j.seconds_left,
                },
            )
        }),
    );
}
