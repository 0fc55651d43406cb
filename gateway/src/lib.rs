//! `erp gateway`: the ledger over HTTP and JSON, for systems and people that do not speak
//! NATS. A thin layer: commands go to the processor and queries to the views exactly as a
//! NATS client sends them (as the token's user, so the server, not the body, says who acts);
//! the ledger is served as a JSON event feed in CloudEvents form; health, readiness and
//! Prometheus metrics for operators. Routes and their contracts: docs/HTTP.md.

pub mod contracts;
pub mod events;
pub mod metrics;
pub mod replays;
pub mod tls;
pub mod tokens;
pub mod views;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use commands::Outcome;
use commands::access::AuthDir;
use commands::client::{ClientError, CommandClient};
use ledger::jetstream::{JetStreamLog, LogConfig};
use serde_json::{Value, json};

pub use tokens::Tokens;

/// Commands one batch request may hold.
pub const BATCH_COMMANDS_MAX: usize = 5_000;

/// How a gateway reaches the system.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The NATS server (or cluster URLs, comma-separated).
    pub nats_url: String,
    /// With credentials: the users and tokens of this directory; every request needs a token.
    /// Without: open to anyone who can reach the listener (keep it on loopback).
    pub auth: Option<std::path::PathBuf>,
    /// Copies of the ledger (to open the reader the event feed walks).
    pub replicas: usize,
    /// How long a command waits for its outcome before the answer is 503 (sending it again
    /// with the same id is safe).
    pub command_timeout: Duration,
    /// How long a command that got no answer, no processor or `unavailable` is sent again
    /// (same id, growing pauses) before the answer is 503: a processor restart or a failover
    /// is ridden through instead of handed to every client.
    pub retry_for: Duration,
    /// How long a view query may wait (with `min_seq`, for the view to reach it).
    pub view_timeout: Duration,
    /// `/readyz` says ready while the processor and every view are at most this many records
    /// behind the ledger's end.
    pub ready_lag: u64,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            nats_url: "nats://127.0.0.1:4222".into(),
            auth: None,
            replicas: 1,
            command_timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(5),
            view_timeout: Duration::from_secs(10),
            ready_lag: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("reading the credentials in {dir}: {detail}")]
    Auth { dir: String, detail: String },
    #[error("connecting to NATS at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("opening the ledger for reading: {0}")]
    Ledger(String),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// Who may use the gateway, when it runs with credentials.
#[derive(Debug)]
struct Access {
    dir: AuthDir,
    tokens: tokens::LiveTokens,
}

/// A gateway's shared state.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GatewayConfig,
    access: Option<Access>,
    /// Connections per NATS user (senders, and the projector's for the view buckets), opened
    /// when first needed.
    connections: tokio::sync::Mutex<HashMap<String, async_nats::Client>>,
    /// The connection that reads: the auditor's with credentials (its account holds the
    /// auditors' mirror, and may ask views and the processor's status).
    reader: async_nats::Client,
    /// The ledger as the event feed reads it.
    log: JetStreamLog,
    metrics: metrics::Metrics,
    replays: replays::Replays,
}

/// The user a request acts as: `None` on a gateway without credentials.
type Caller = Option<String>;

impl Gateway {
    /// Connects and opens the ledger's reader.
    pub async fn open(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let access = match &config.auth {
            None => None,
            Some(dir) => {
                let auth_error = |detail: String| GatewayError::Auth {
                    dir: dir.display().to_string(),
                    detail,
                };
                let auth = AuthDir::load(dir).map_err(|e| auth_error(e.to_string()))?;
                let tokens =
                    tokens::LiveTokens::open(dir).map_err(|e| auth_error(e.to_string()))?;
                if tokens.count() == 0 {
                    tracing::warn!(
                        "no token issued in {}: every request will be refused; `erp auth token USER` issues one",
                        dir.display()
                    );
                }
                Some(Access { dir: auth, tokens })
            }
        };
        let reader_user = access.as_ref().map(|_| ledger::auth::AUDITOR);
        let reader = connect(&config.nats_url, access.as_ref(), reader_user).await?;
        let log_config = match access {
            Some(_) => LogConfig {
                replicas: config.replicas,
                ..LogConfig::mirror(ledger::auth::AUDIT_MIRROR)
            },
            None => LogConfig {
                replicas: config.replicas,
                ..LogConfig::ledger()
            },
        };
        let log = JetStreamLog::open(reader.clone(), log_config)
            .await
            .map_err(|e| GatewayError::Ledger(e.to_string()))?;
        Ok(Gateway {
            inner: Arc::new(Inner {
                config,
                access,
                connections: Default::default(),
                reader,
                log,
                metrics: metrics::Metrics::default(),
                replays: replays::Replays::default(),
            }),
        })
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(console))
            .route("/v1/commands", post(submit_command))
            .route("/v1/commands/batch", post(submit_batch))
            .route("/v1/commands/{id}", get(command_outcome))
            .route("/v1/views", get(views::list))
            .route("/v1/views/{view}/changes", get(views::changes))
            .route("/v1/views/{view}/{op}", get(views::query))
            .route("/v1/events", get(events::page))
            .route("/v1/events/stream", get(events::stream))
            .route("/v1/replays", get(replays::list).post(replays::start))
            .route("/v1/replays/{id}", get(replays::get))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics::scrape))
            .route("/v1/openapi.json", get(openapi))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                metrics::count_requests,
            ))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown`; open streams end then. With `tls`, HTTPS.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        match tls {
            None => self.serve_on(listener, shutdown).await,
            Some(acceptor) => {
                let listener =
                    tls::TlsListener::new(listener, acceptor).map_err(GatewayError::Serve)?;
                self.serve_on(listener, shutdown).await
            }
        }
    }

    async fn serve_on<L>(
        &self,
        listener: L,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError>
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(GatewayError::Serve)
    }

    fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// Who the request's bearer token belongs to; on a gateway without credentials, nobody
    /// (and anyone may ask).
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let Some(access) = &self.inner.access else {
            return Ok(None);
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(token) = token else {
            return Err(unauthorized(
                "missing_token",
                "send `Authorization: Bearer <token>`; `erp auth token USER` issues one",
            ));
        };
        let user = access.tokens.user_of(token).map_err(|e| {
            unauthorized(
                "token_file_unreadable",
                &format!("the gateway cannot read its token file, so it accepts no token: {e}"),
            )
        })?;
        match user.as_deref() {
            Some(user) if access.dir.credentials.users.contains_key(user) => {
                Ok(Some(user.to_owned()))
            }
            Some(user) => Err(unauthorized(
                "unknown_user",
                &format!("the token's user `{user}` is no longer in the auth directory"),
            )),
            None => Err(unauthorized(
                "bad_token",
                "the token is not one this gateway issued",
            )),
        }
    }

    /// Whether `caller` may read the ledger itself (the event feed): on a gateway with
    /// credentials, the auditor and users with the `admin` or `auditor` role.
    fn may_read_ledger(&self, caller: &Caller) -> bool {
        let (Some(access), Some(user)) = (&self.inner.access, caller) else {
            return true;
        };
        user == ledger::auth::AUDITOR
            || access.dir.principals.0.get(user).is_some_and(|p| {
                p.roles
                    .iter()
                    .any(|r| matches!(r.to_string().as_str(), "admin" | "auditor"))
            })
    }

    /// The connection `user` acts on (opened on first use). The reader's connection serves
    /// the auditor, and everyone on a gateway without credentials.
    async fn connection(&self, user: Option<&str>) -> Result<async_nats::Client, Refusal> {
        let user = match user {
            None | Some(ledger::auth::AUDITOR) => return Ok(self.inner.reader.clone()),
            Some(user) => user,
        };
        let mut connections = self.inner.connections.lock().await;
        if let Some(client) = connections.get(user) {
            return Ok(client.clone());
        }
        let client = connect(
            &self.config().nats_url,
            self.inner.access.as_ref(),
            Some(user),
        )
        .await
        .map_err(|e| unavailable(&e.to_string()))?;
        connections.insert(user.to_owned(), client.clone());
        Ok(client)
    }

    /// A command client acting as `caller`, or the reason it cannot send commands.
    async fn command_client(&self, caller: &Caller) -> Result<CommandClient, Refusal> {
        if let (Some(access), Some(user)) = (&self.inner.access, caller)
            && !access.dir.principals.0.contains_key(user)
        {
            return Err(error(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("user `{user}` reads; it sends no commands"),
            ));
        }
        let nats = self.connection(caller.as_deref()).await?;
        Ok(CommandClient::new(nats, self.config().command_timeout)
            .retrying(self.config().retry_for)
            .as_user(caller.clone()))
    }

    /// The connection that reaches the view buckets: the projector's with credentials (they
    /// live in its account).
    async fn projector_connection(&self) -> Result<async_nats::Client, Refusal> {
        let user = self.inner.access.as_ref().map(|_| ledger::auth::PROJECTOR);
        self.connection(user).await
    }
}

async fn connect(
    url: &str,
    access: Option<&Access>,
    user: Option<&str>,
) -> Result<async_nats::Client, GatewayError> {
    let url = match (access, user) {
        (Some(access), Some(user)) => access.dir.credentials.url_for(user, url),
        _ => url.to_owned(),
    };
    ledger::auth::connect(&url)
        .await
        .map_err(|e| GatewayError::Connect {
            url: ledger::auth::split_credentials(&url).0,
            detail: e.to_string(),
        })
}

/// A request the gateway answers itself, without asking the system: its status and a JSON
/// body `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"erp\""),
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => retry_after(&mut response),
            _ => {}
        }
        response
    }
}

pub(crate) fn error(status: StatusCode, code: &'static str, message: &str) -> Refusal {
    Refusal {
        status,
        code,
        message: message.to_owned(),
    }
}

fn unauthorized(code: &'static str, message: &str) -> Refusal {
    error(StatusCode::UNAUTHORIZED, code, message)
}

/// 503 with a hint to retry in a second.
pub(crate) fn unavailable(message: &str) -> Refusal {
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
}

fn retry_after(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
}

async fn not_found() -> Refusal {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see docs/HTTP.md (POST /v1/commands, GET /v1/views/{view}/{op}, GET /v1/events, ...)",
    )
}

/// The HTTP status an outcome is answered with.
pub fn outcome_status(outcome: &Outcome) -> StatusCode {
    match outcome {
        Outcome::Accepted { .. } => StatusCode::OK,
        Outcome::Rejected { code, .. } => match code.as_str() {
            commands::decide::code::FORBIDDEN => StatusCode::FORBIDDEN,
            commands::decide::code::DUPLICATE_WITH_DIFFERENT_BODY => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        },
        Outcome::Invalid { .. } => StatusCode::BAD_REQUEST,
        Outcome::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A command's answer as JSON: its outcome, or, when none came, an `unavailable` outcome
/// saying why (nothing was decided that the caller cannot learn by sending it again).
fn outcome_json(answer: &Result<Outcome, ClientError>, body: &[u8]) -> (StatusCode, Value) {
    match answer {
        Ok(outcome) => (
            outcome_status(outcome),
            serde_json::to_value(outcome).expect("outcomes serialise"),
        ),
        Err(e) => {
            let command_id = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("command_id").cloned())
                .unwrap_or(Value::Null);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "unavailable", "command_id": command_id, "message": e.to_string()}),
            )
        }
    }
}

fn outcome_label(answer: &Result<Outcome, ClientError>) -> &'static str {
    match answer {
        Ok(Outcome::Accepted { .. }) => "accepted",
        Ok(Outcome::Rejected { .. }) => "rejected",
        Ok(Outcome::Invalid { .. }) => "invalid",
        Ok(Outcome::Unavailable { .. }) => "unavailable",
        Err(_) => "no_answer",
    }
}

/// `POST /v1/commands`: one command as JSON; the answer is its outcome, as on NATS.
async fn submit_command(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match gw.caller(&headers) {
        Ok(caller) => caller,
        Err(refusal) => return refusal.into_response(),
    };
    let client = match gw.command_client(&caller).await {
        Ok(client) => client,
        Err(refusal) => return refusal.into_response(),
    };
    let started = Instant::now();
    let mut answer = client.submit_json(body.clone()).await;
    if matches!(
        answer,
        Ok(Outcome::Unavailable { .. })
            | Err(ClientError::Request(_) | ClientError::NoProcessor { .. })
    ) {
        // Nothing was decided: send it again (same id) with pauses, as a batch of one.
        client
            .submit_all([body.clone()], 1, |_, again| answer = again)
            .await;
    }
    gw.metrics()
        .command_answered(outcome_label(&answer), started.elapsed());
    let (status, json) = outcome_json(&answer, &body);
    let mut response = (status, axum::Json(json)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        retry_after(&mut response);
    }
    response
}

/// `POST /v1/commands/batch`: a JSON array of commands, sent in order with many awaiting an
/// answer at once; the answer is every outcome, in the same order, each with its status.
async fn submit_batch(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match gw.caller(&headers) {
        Ok(caller) => caller,
        Err(refusal) => return refusal.into_response(),
    };
    let commands = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(commands)) => commands,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_batch",
                "expected a JSON array of commands",
            )
            .into_response();
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_batch",
                &format!("the body is not JSON: {e}"),
            )
            .into_response();
        }
    };
    if commands.len() > BATCH_COMMANDS_MAX {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_commands",
            &format!(
                "{} commands; at most {BATCH_COMMANDS_MAX} in one request",
                commands.len()
            ),
        )
        .into_response();
    }
    let client = match gw.command_client(&caller).await {
        Ok(client) => client,
        Err(refusal) => return refusal.into_response(),
    };
    let bodies: Vec<Bytes> = commands
        .iter()
        .map(|c| serde_json::to_vec(c).expect("json").into())
        .collect();
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(bodies.len());
    let metrics = gw.metrics();
    client
        .submit_all(bodies.iter().cloned(), 256, |i, answer| {
            metrics.batch_command_answered(outcome_label(&answer));
            let (status, json) = outcome_json(&answer, &bodies[i]);
            outcomes.push(json!({"http_status": status.as_u16(), "outcome": json}));
        })
        .await;
    metrics.batch_answered(started.elapsed());
    (StatusCode::OK, axum::Json(json!({"outcomes": outcomes}))).into_response()
}

/// `GET /v1/commands/{id}`: the recorded outcome of a command, 404 if there is none.
async fn command_outcome(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let caller = match gw.caller(&headers) {
        Ok(caller) => caller,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_command_id",
            &format!("`{id}` is not a UUID"),
        )
        .into_response();
    };
    let nats = match gw.connection(caller.as_deref()).await {
        Ok(nats) => nats,
        Err(refusal) => return refusal.into_response(),
    };
    let client = CommandClient::new(nats, gw.config().command_timeout).as_user(caller);
    match client.outcome(id).await {
        Ok(Some(outcome)) => (StatusCode::OK, axum::Json(outcome)).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"status": "unknown", "command_id": id})),
        )
            .into_response(),
        Err(e) => unavailable(&e.to_string()).into_response(),
    }
}

/// `GET /`: the web console, one page that asks the gateway's own routes (the token it
/// needs is typed into the page and kept in the browser's local storage).
async fn console() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("console.html"))
}

/// `GET /v1/openapi.json`.
async fn openapi() -> Response {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(contracts::openapi);
    (StatusCode::OK, axum::Json(document.clone())).into_response()
}

/// `GET /healthz`: the gateway process answers.
async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

/// `GET /readyz`: 200 when the processor answers and it and every view are within
/// `ready_lag` records of the ledger's end; 503 with what is not, otherwise.
async fn readyz(State(gw): State<Gateway>) -> Response {
    let report = metrics::system_report(&gw).await;
    let lag_max = gw.config().ready_lag;
    let mut not_ready = Vec::new();
    match (&report.processor, report.ledger_last_seq) {
        (None, _) => not_ready.push("the processor is not answering".to_owned()),
        (Some(p), Some(last)) if last.saturating_sub(p.applied_seq) > lag_max => not_ready.push(
            format!("the processor is {} records behind", last - p.applied_seq),
        ),
        _ => {}
    }
    if report.ledger_last_seq.is_none() {
        not_ready.push("the ledger cannot be read".to_owned());
    }
    for (view, status) in &report.views {
        match status {
            None => not_ready.push(format!("view {view} is not answering")),
            Some(v) if v.lag > lag_max => {
                not_ready.push(format!("view {view} is {} records behind", v.lag))
            }
            Some(_) => {}
        }
    }
    let body = json!({
        "ready": not_ready.is_empty(),
        "not_ready": not_ready,
        "ledger_last_seq": report.ledger_last_seq,
        "processor_applied_seq": report.processor.as_ref().map(|p| p.applied_seq),
        "views": report.views.iter().map(|(v, s)| (v.to_string(), json!(s.as_ref().map(|s| json!({"checkpoint": s.checkpoint, "lag": s.lag}))))).collect::<serde_json::Map<_, _>>(),
    });
    let status = if not_ready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}
