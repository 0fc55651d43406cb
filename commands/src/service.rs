//! The processor as a NATS service.
//!
//! Commands arrive two ways, into one bounded queue:
//! - request/reply on `rpc.cmd.<entity>` (queue group `processor`): the reply is the outcome;
//! - the durable `COMMANDS` stream (`cmd.<entity>`), read by the durable consumer `processor`:
//!   the message is acknowledged only once its outcome is stored in the ledger, so a crash
//!   before that redelivers it (and the ledger's outcome record makes the retry harmless).
//!   If the message has an `Erp-Reply-To` header, the outcome is published there.
//!
//! `rpc.outcome` answers "what became of command <id>?" from the recorded outcomes;
//! `rpc.status` reports the processor's state (position, foreign messages passed over,
//! commands recorded `internal_error`).
//!
//! The subject says which legal entity a command is for, and, on a server with credentials,
//! which user sent it (`rpc.cmd.<entity>.<user>`; `ledger::subject::commands`). The body must
//! agree with the subject, and the sender's principal (`crate::access`) bounds what it may
//! claim. Answers never go to a subject a stream captures (`ledger::guard`).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use ledger::guard::ReplyGuard;
use ledger::jetstream::{JetStreamLog, provision_commands};
use ledger::subject::commands as subjects;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::command::Command;
use crate::decide::code;
use crate::latency::Histogram;
use crate::processor::{Outcome, Processor, ProcessorError, Recovered, Ticket};
use crate::snapshot;
use crate::state::State;
use std::collections::HashMap;

/// The NATS client type the service runs on.
pub type NatsClient = async_nats::Client;

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub commands_stream: String,
    pub consumer: String,
    /// Commands waiting to be decided; intake waits when it is full (backpressure).
    pub queue_capacity: usize,
    /// Most commands decided per tick.
    pub tick_commands_max: usize,
    /// How long the COMMANDS stream keeps intake messages.
    pub commands_max_age: Duration,
    /// How often holds are checked for expiry.
    pub hold_expiry_interval: Duration,
    /// Move each legal entity's business clock on by a `clock.tick` when it had no event for
    /// this long of wall time (on whole multiples of it), so time-based exception rules fall
    /// due in a quiet ledger. `None`: the clock moves only with events (a ledger loading
    /// history, whose business time is far behind the wall clock).
    pub clock_tick: Option<Duration>,
    /// Which roles may send which commands.
    pub roles: crate::roles::Roles,
    /// Purchase order approval limit and over-receipt tolerance.
    pub purchase_policy: crate::state::PurchasePolicy,
    /// Who may send commands, when the server authenticates users (`erp auth`): commands
    /// then arrive on subjects naming their user. `None`: no authentication; a command's actor
    /// is taken as stated.
    pub principals: Option<crate::access::Principals>,
    /// Batches in flight and their sizes.
    pub pipeline: crate::processor::PipelineConfig,
    /// Write a snapshot of the write model after this many ledger records (0: never), and
    /// when stopping; a restart loads the latest and replays only what follows.
    pub snapshot_every: u64,
    /// Ignore the stored snapshot at start and replay the whole ledger.
    pub from_scratch: bool,
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        ServiceConfig {
            commands_stream: "COMMANDS".into(),
            consumer: "processor".into(),
            queue_capacity: 8192,
            tick_commands_max: 1000,
            commands_max_age: Duration::from_secs(7 * 24 * 3600),
            hold_expiry_interval: Duration::from_secs(1),
            clock_tick: None,
            roles: crate::roles::Roles::default(),
            purchase_policy: crate::state::PurchasePolicy::default(),
            principals: None,
            pipeline: crate::processor::PipelineConfig::default(),
            snapshot_every: 500_000,
            from_scratch: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    Open(#[from] ledger::jetstream::OpenError),
}

fn nats(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Nats(e.to_string())
}

enum Incoming {
    Rpc {
        subject: async_nats::Subject,
        payload: Bytes,
        reply: Option<async_nats::Subject>,
        received: Instant,
    },
    Stream(jetstream::Message, Instant),
    Query {
        kind: QueryKind,
        payload: Bytes,
        reply: Option<async_nats::Subject>,
    },
}

#[derive(Debug, Clone, Copy)]
enum QueryKind {
    Outcome,
    Status,
}

enum ReplyTo {
    Rpc {
        subject: Option<async_nats::Subject>,
        received: Instant,
    },
    /// A durable command; `user`: its sender with credentials (answers then go only to that
    /// user's answer subjects).
    Stream {
        msg: Box<jetstream::Message>,
        user: Option<String>,
        received: Instant,
    },
}

impl ReplyTo {
    /// When the command arrived.
    fn received(&self) -> Instant {
        match self {
            ReplyTo::Rpc { received, .. } | ReplyTo::Stream { received, .. } => *received,
        }
    }
}

/// A processor that has recovered its state and subscribed to its intake: from here on,
/// commands sent are queued and answered.
pub struct Service {
    client: async_nats::Client,
    processor: Processor<JetStreamLog>,
    config: ServiceConfig,
    rx: mpsc::Receiver<Incoming>,
    intake: Vec<tokio::task::JoinHandle<()>>,
    guard: ReplyGuard,
    snapshots: Snapshots,
    /// Commands' time from arrival to answer, since this process started.
    latency: std::sync::Arc<Histogram>,
}

/// Where the processor's snapshots go, and the one being written.
struct Snapshots {
    store: async_nats::jetstream::object_store::ObjectStore,
    /// The sequence of the latest snapshot written (or loaded).
    seq: u64,
    /// Snapshots this process has started writing.
    written: u64,
    /// Size of the latest snapshot's body (loaded or written).
    bytes: usize,
    writing: Option<tokio::task::JoinHandle<()>>,
}

/// Test hook: in debug builds, `ERP_FAULT_ABORT_SNAPSHOT=<n>` aborts the process (as a
/// kill -9 would) halfway through storing the n-th snapshot it writes (release builds
/// ignore it).
fn fault_abort_snapshot() -> Option<u64> {
    if cfg!(debug_assertions) {
        std::env::var("ERP_FAULT_ABORT_SNAPSHOT")
            .ok()
            .and_then(|n| n.parse().ok())
    } else {
        None
    }
}

/// Stores a snapshot's bytes; with `abort` (the test hook), the process dies once half of
/// them has been handed to the store.
async fn write_snapshot(
    store: &async_nats::jetstream::object_store::ObjectStore,
    bytes: &[u8],
    abort: bool,
) -> Result<(), ledger::objects::ObjectError> {
    if !abort {
        return ledger::objects::write(store, snapshot::OBJECT_NAME, bytes).await;
    }
    struct AbortHalfway<'a> {
        bytes: &'a [u8],
        at: usize,
    }
    impl tokio::io::AsyncRead for AbortHalfway<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let half = self.bytes.len() / 2;
            if self.at >= half {
                tracing::error!("test hook: aborting halfway through writing a snapshot");
                std::process::abort();
            }
            let n = buf.remaining().min(half - self.at);
            let at = self.at;
            buf.put_slice(&self.bytes[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }
    let mut reader = AbortHalfway { bytes, at: 0 };
    ledger::objects::write_from(store, snapshot::OBJECT_NAME, &mut reader).await
}

/// The object store holding the processor's snapshot of the ledger `config` describes.
pub fn snapshot_bucket(config: &ledger::jetstream::LogConfig) -> String {
    format!("{}_snapshots", config.stream)
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("applied_seq", &self.processor.applied_seq())
            .finish()
    }
}

impl Service {
    /// Rebuilds the write model from the ledger and subscribes to the intake.
    pub async fn start(
        client: async_nats::Client,
        mut log: JetStreamLog,
        config: ServiceConfig,
    ) -> Result<Service, ServiceError> {
        let started = std::time::Instant::now();
        log.check_replicas()?;
        log.watch_leader_elections().await?;
        let snapshots = ledger::objects::bucket(
            log.jetstream(),
            &snapshot_bucket(log.config()),
            log.config().replicas,
        )
        .await
        .map_err(|e| ServiceError::Nats(e.to_string()))?;
        let stored = if config.from_scratch {
            tracing::info!("not loading the snapshot (--from-scratch): replaying the whole ledger");
            None
        } else {
            match ledger::objects::read(&snapshots, snapshot::OBJECT_NAME).await {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::warn!(error = %e, "the processor snapshot could not be read: replaying the whole ledger");
                    None
                }
            }
        };
        let snapshot_bytes = stored.as_ref().map_or(0, Vec::len);
        let (mut processor, recovered) = Processor::recover_from(log, stored.as_deref()).await?;
        drop(stored);
        processor.set_roles(config.roles.clone());
        processor.set_purchase_policy(config.purchase_policy.clone());
        processor.set_pipeline(config.pipeline.clone());
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let applied_seq = processor.applied_seq();
        let commands = processor.state().commands_recorded();
        match &recovered {
            Recovered::FromScratch => tracing::info!(
                applied_seq,
                commands,
                elapsed_ms,
                "processor recovered its state from the whole ledger (no snapshot)"
            ),
            Recovered::FromSnapshot { seq } => tracing::info!(
                applied_seq,
                commands,
                elapsed_ms,
                snapshot_seq = seq,
                "processor recovered its state from its snapshot and the ledger after it"
            ),
            Recovered::SnapshotRefused { reason } => tracing::warn!(
                applied_seq, commands, elapsed_ms, %reason,
                "the processor snapshot was not used; recovered from the whole ledger instead"
            ),
        }
        let snapshot_seq = match recovered {
            Recovered::FromSnapshot { seq } => seq,
            _ => 0,
        };
        match &config.principals {
            Some(p) => tracing::info!(
                users = p.0.len(),
                "commands are accepted from the users of the principal table only, as themselves"
            ),
            None => tracing::warn!(
                "no principal table: commands act as whatever actor they state (a development setup; see `erp auth init`)"
            ),
        }
        let (tx, rx) = mpsc::channel::<Incoming>(config.queue_capacity);
        let guard = ReplyGuard::load(processor.log().jetstream()).await;
        let latency = std::sync::Arc::new(Histogram::default());
        let intake = spawn_intake(
            &client,
            processor.log().jetstream(),
            processor.log().config().replicas,
            &config,
            tx,
            (guard.clone(), latency.clone()),
        )
        .await?;
        Ok(Service {
            client,
            processor,
            config,
            rx,
            intake,
            guard,
            latency,
            snapshots: Snapshots {
                store: snapshots,
                seq: snapshot_seq,
                written: 0,
                bytes: snapshot_bytes,
                writing: None,
            },
        })
    }

    /// Decides commands until `shutdown` resolves: batches go out as soon as the previous
    /// ones allow (`Processor::wants_to_send`), answers leave as their batches settle, in the
    /// order the commands arrived. On shutdown, what is in flight settles and is answered;
    /// what was not yet sent is answered `unavailable` (a durable command is delivered again).
    pub async fn serve(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServiceError> {
        tokio::pin!(shutdown);
        let mut clock = tokio::time::interval(self.config.hold_expiry_interval);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut waiting = Waiting::default();
        loop {
            if self.snapshot_due() && self.processor.in_flight() == 0 {
                self.start_snapshot().await;
            }
            // A snapshot due waits for what is in flight to settle; nothing more goes first.
            while !self.snapshot_due() && self.processor.wants_to_send() {
                self.processor.send_next().await;
            }
            let room = self.processor.queued() < self.config.queue_capacity;
            tokio::select! {
                _ = &mut shutdown => break,
                // Only the wait is raced (it is cancel-safe); settling runs to its end.
                () = self.processor.wait_for_oldest(), if self.processor.in_flight() > 0 => {
                    let settled = self.processor.settle_next().await;
                    let answers = Answers { client: &self.client, guard: &self.guard, latency: &self.latency };
                    for (ticket, outcome) in settled {
                        waiting.settle(answers, ticket, &outcome).await;
                    }
                }
                incoming = self.rx.recv(), if room => {
                    let Some(incoming) = incoming else { break };
                    let answers = Answers { client: &self.client, guard: &self.guard, latency: &self.latency };
                    take(answers, &mut self.processor, &self.config, &mut waiting, incoming).await;
                    // Whatever else already waits joins the same batch.
                    for _ in 0..self.config.tick_commands_max {
                        if self.processor.queued() >= self.config.queue_capacity {
                            break;
                        }
                        match self.rx.try_recv() {
                            Ok(incoming) => {
                                take(answers, &mut self.processor, &self.config, &mut waiting, incoming)
                                    .await;
                            }
                            Err(_) => break,
                        }
                    }
                }
                _ = clock.tick() => {
                    self.expire_holds(&mut waiting);
                    self.guard.refresh_if_stale(self.processor.log().jetstream());
                }
            }
        }
        for task in &self.intake {
            task.abort();
        }
        // Settle what is in flight; what never went out is not stored.
        let answers = Answers {
            client: &self.client,
            guard: &self.guard,
            latency: &self.latency,
        };
        while self.processor.in_flight() > 0 {
            for (ticket, outcome) in self.processor.settle_next().await {
                waiting.settle(answers, ticket, &outcome).await;
            }
        }
        for (ticket, command_id) in self.processor.drain_queue() {
            let outcome = Outcome::Unavailable {
                command_id,
                message: "the processor is stopping; send it again".into(),
            };
            waiting.settle(answers, ticket, &outcome).await;
        }
        if let Some(writing) = self.snapshots.writing.take() {
            let _ = writing.await;
        }
        if self.config.snapshot_every > 0 && self.processor.applied_seq() > self.snapshots.seq {
            tracing::info!(
                applied_seq = self.processor.applied_seq(),
                "writing a snapshot before stopping"
            );
            self.start_snapshot().await;
            if let Some(writing) = self.snapshots.writing.take() {
                let _ = writing.await;
            }
        }
        Ok(())
    }
}

/// Where each queued command's answer goes, and answers held back so that answers leave in
/// the order their commands arrived.
#[derive(Default)]
struct Waiting {
    replies: HashMap<Ticket, ReplyTo>,
    /// The latest ticket handed out, while its command is not settled.
    last: Option<Ticket>,
    /// Answers known at once (an invalid command) that wait for the ticket before them.
    held: std::collections::BTreeMap<Ticket, Vec<(ReplyTo, Outcome)>>,
    /// Hold-expiry commands queued and not yet settled (by command id).
    expiring: std::collections::HashSet<Uuid>,
    expiring_tickets: HashMap<Ticket, Uuid>,
}

impl Waiting {
    fn queued(&mut self, ticket: Ticket, reply: ReplyTo) {
        self.replies.insert(ticket, reply);
        self.last = Some(ticket);
    }

    /// An answer known now, sent after every command that arrived before it.
    async fn answer_now(&mut self, answers: Answers<'_>, reply: ReplyTo, outcome: Outcome) {
        match self.last {
            Some(ticket) => self.held.entry(ticket).or_default().push((reply, outcome)),
            None => answer(answers, reply, &outcome).await,
        }
    }

    async fn settle(&mut self, answers: Answers<'_>, ticket: Ticket, outcome: &Outcome) {
        if let Some(id) = self.expiring_tickets.remove(&ticket) {
            self.expiring.remove(&id);
        }
        if let Some(reply) = self.replies.remove(&ticket) {
            answer(answers, reply, outcome).await;
        }
        if self.last == Some(ticket) {
            self.last = None;
        }
        if let Some(held) = self.held.remove(&ticket) {
            for (reply, outcome) in held {
                answer(answers, reply, &outcome).await;
            }
        }
    }
}

impl Service {
    /// Queues the expiry of holds whose time has passed: the clock enters here, as the
    /// effective time of the expiry commands, never inside a decider.
    /// Whether a snapshot should be taken now: enough records since the last one, and none
    /// being written.
    fn snapshot_due(&self) -> bool {
        self.config.snapshot_every > 0
            && self
                .snapshots
                .writing
                .as_ref()
                .is_none_or(|w| w.is_finished())
            && self.processor.applied_seq() >= self.snapshots.seq + self.config.snapshot_every
    }

    /// Reads the hash of the record the model ends at and encodes the model (the command
    /// path pauses for these), then checksums and stores it on another task.
    async fn start_snapshot(&mut self) {
        if !self.processor.snapshot_ready() {
            return;
        }
        let seq = self.processor.applied_seq();
        self.snapshots.seq = seq;
        let reading = std::time::Instant::now();
        let record_hash = match snapshot::record_hash(self.processor.log(), seq).await {
            Ok(hash) => hash,
            Err(error) => {
                tracing::warn!(seq, %error, "no processor snapshot taken");
                return;
            }
        };
        let read_ms = reading.elapsed().as_millis() as u64;
        let encoding = std::time::Instant::now();
        // A tenth more than last time: the model only grows between two snapshots.
        let capacity = self.snapshots.bytes + self.snapshots.bytes / 10;
        let body = match self.processor.encode_snapshot(record_hash, capacity) {
            Some(Ok(body)) => body,
            Some(Err(error)) => {
                tracing::warn!(seq, %error, "no processor snapshot taken");
                return;
            }
            None => return,
        };
        let encode_ms = encoding.elapsed().as_millis() as u64;
        self.snapshots.bytes = body.len();
        let store = self.snapshots.store.clone();
        self.snapshots.written += 1;
        let abort = fault_abort_snapshot() == Some(self.snapshots.written);
        self.snapshots.writing = Some(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let written = match tokio::task::spawn_blocking(move || snapshot::frame(&body)).await {
                Ok(bytes) => write_snapshot(&store, &bytes, abort)
                    .await
                    .map(|()| bytes.len())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match written {
                Ok(bytes) => tracing::info!(
                    seq,
                    bytes,
                    read_ms,
                    encode_ms,
                    write_ms = started.elapsed().as_millis() as u64,
                    "processor snapshot written"
                ),
                Err(error) => tracing::warn!(
                    seq,
                    %error,
                    "the processor snapshot could not be written; the previous one stays"
                ),
            }
        }));
    }

    fn expire_holds(&mut self, waiting: &mut Waiting) {
        let now = ledger::values::Timestamp::new(chrono::Utc::now());
        let mut due = self.processor.expiry_commands(now);
        if let Some(every) = self.config.clock_tick {
            due.extend(self.processor.clock_ticks(now, every));
        }
        for command in due {
            if waiting.expiring.insert(command.command_id) {
                let id = command.command_id;
                let ticket = self.processor.enqueue(command);
                waiting.expiring_tickets.insert(ticket, id);
            }
        }
    }
}

/// Starts the processor and runs it until `shutdown` resolves.
pub async fn run(
    client: async_nats::Client,
    log: JetStreamLog,
    config: ServiceConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServiceError> {
    Service::start(client, log, config)
        .await?
        .serve(shutdown)
        .await
}

async fn spawn_intake(
    client: &async_nats::Client,
    js: &jetstream::Context,
    replicas: usize,
    config: &ServiceConfig,
    tx: mpsc::Sender<Incoming>,
    (guard, latency): (ReplyGuard, std::sync::Arc<Histogram>),
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServiceError> {
    let mut rpc = client
        .queue_subscribe(subjects::RPC_ALL, "processor".into())
        .await
        .map_err(nats)?;
    let queries = client
        .queue_subscribe(subjects::OUTCOME_QUERY, "processor".into())
        .await
        .map_err(nats)?;
    // Every processor answers for itself: no queue group.
    let status = client
        .subscribe(subjects::STATUS_QUERY)
        .await
        .map_err(nats)?;
    let stream = provision_commands(
        js,
        &config.commands_stream,
        subjects::INTAKE_ALL,
        config.commands_max_age,
        replicas,
    )
    .await?;
    let consumer = stream
        .get_or_create_consumer(
            &config.consumer,
            consumer::pull::Config {
                durable_name: Some(config.consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: config.queue_capacity as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(nats)?;
    let mut messages = consumer.messages().await.map_err(nats)?;
    let rpc_tx = tx.clone();
    let rpc_client = client.clone();
    let capacity = config.queue_capacity;
    let query_tx = tx.clone();
    let status_tx = tx.clone();
    let forward_queries =
        |mut sub: async_nats::Subscriber, kind: QueryKind, tx: mpsc::Sender<Incoming>| {
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let incoming = Incoming::Query {
                        kind,
                        payload: msg.payload,
                        reply: msg.reply,
                    };
                    if tx.send(incoming).await.is_err() {
                        break;
                    }
                }
            })
        };
    Ok(vec![
        tokio::spawn(async move {
            while let Some(msg) = rpc.next().await {
                let incoming = Incoming::Rpc {
                    subject: msg.subject,
                    payload: msg.payload,
                    reply: msg.reply,
                    received: Instant::now(),
                };
                match rpc_tx.try_send(incoming) {
                    Ok(()) => {}
                    // Bounded intake: a request that finds the queue full is answered at once
                    // (nothing stored; sending it again is safe) instead of waiting unseen.
                    Err(mpsc::error::TrySendError::Full(Incoming::Rpc {
                        payload,
                        reply: Some(reply),
                        received,
                        ..
                    })) => {
                        let busy = Outcome::Unavailable {
                            command_id: command_id_hint(&payload).unwrap_or_default(),
                            message: format!(
                                "the processor is busy ({capacity} commands queued); nothing was stored, send it again in a moment"
                            ),
                        };
                        let answers = Answers {
                            client: &rpc_client,
                            guard: &guard,
                            latency: &latency,
                        };
                        let reply = ReplyTo::Rpc {
                            subject: Some(reply),
                            received,
                        };
                        answer(answers, reply, &busy).await;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        }),
        forward_queries(queries, QueryKind::Outcome, query_tx),
        forward_queries(status, QueryKind::Status, status_tx),
        tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                match msg {
                    Ok(msg) => {
                        if tx
                            .send(Incoming::Stream(msg, Instant::now()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "command stream consumer"),
                }
            }
        }),
    ])
}

/// Where answers go out, and what decides whether they may.
#[derive(Clone, Copy)]
struct Answers<'a> {
    client: &'a async_nats::Client,
    guard: &'a ReplyGuard,
    /// Commands' time from arrival to answer.
    latency: &'a Histogram,
}

impl Answers<'_> {
    /// Publishes `body` to `reply` unless the guard refuses the subject.
    async fn send(&self, reply: &str, body: Bytes) {
        if let Err(why) = self.guard.check(reply) {
            tracing::warn!(reply, %why, "not answering onto this subject");
            return;
        }
        if let Err(e) = self.client.publish(reply.to_owned(), body).await {
            tracing::warn!(error = %e, "replying");
        }
    }
}

/// Takes one incoming message: a query is answered, a command queued (or, when it is not
/// valid, answered in its turn).
async fn take<L: ledger::EventLog>(
    answers: Answers<'_>,
    processor: &mut Processor<L>,
    config: &ServiceConfig,
    waiting: &mut Waiting,
    incoming: Incoming,
) {
    let (subject, payload, reply) = match incoming {
        Incoming::Rpc {
            subject,
            payload,
            reply,
            received,
        } => (
            subject.to_string(),
            payload,
            ReplyTo::Rpc {
                subject: reply,
                received,
            },
        ),
        Incoming::Stream(msg, received) => {
            let user = config
                .principals
                .as_ref()
                .and_then(|_| subjects::parse(&msg.subject).ok()?.user);
            (
                msg.subject.to_string(),
                msg.payload.clone(),
                ReplyTo::Stream {
                    msg: Box::new(msg),
                    user,
                    received,
                },
            )
        }
        Incoming::Query {
            kind,
            payload,
            reply,
        } => {
            let answer = match kind {
                QueryKind::Outcome => query(processor.log(), processor.state(), &payload).await,
                QueryKind::Status => {
                    let mut status = processor.status();
                    status.answer_latency = answers.latency.read();
                    serde_json::to_vec(&status).expect("status serialises")
                }
            };
            if let Some(reply) = reply {
                answers.send(&reply, answer.into()).await;
            }
            return;
        }
    };
    match read_command(&subject, &payload, config.principals.as_ref()) {
        Ok(command) => {
            let ticket = processor.enqueue(command);
            waiting.queued(ticket, reply);
        }
        Err(outcome) => waiting.answer_now(answers, reply, outcome).await,
    }
}

/// Reads a command from the subject it arrived on and its body: who sent it (with
/// credentials), and a body that agrees with the subject. `Err` is the `invalid` answer.
fn read_command(
    subject: &str,
    payload: &[u8],
    principals: Option<&crate::access::Principals>,
) -> Result<Command, Outcome> {
    let invalid = |code: &str, field: &str, message: String| Outcome::Invalid {
        command_id: command_id_hint(payload),
        code: code.into(),
        field: field.into(),
        message,
    };
    let addressed = subjects::parse(subject)
        .map_err(|e| invalid(code::INVALID_COMMAND, "subject", e.to_string()))?;
    let sender = match (principals, &addressed.user) {
        (None, None) => None,
        (None, Some(user)) => {
            return Err(invalid(
                code::INVALID_COMMAND,
                "subject",
                format!(
                    "`{subject}` names a user (`{user}`), but this processor runs without credentials; send to `{}`",
                    subjects::rpc(&addressed.entity, None)
                ),
            ));
        }
        (Some(_), None) => {
            return Err(invalid(
                code::INVALID_COMMAND,
                "subject",
                format!(
                    "`{subject}` names no user; with credentials commands go to `<prefix>.<entity>.<your user>`"
                ),
            ));
        }
        (Some(p), Some(user)) => Some(p.sender(user).ok_or_else(|| {
            invalid(
                code::FORBIDDEN,
                "subject",
                format!(
                    "user `{user}` is not in this processor's principal table; add it with `erp auth add-user` and restart the processor"
                ),
            )
        })?),
    };
    let command = crate::command::decode_from(payload, sender.as_ref())
        .map_err(|e| invalid(code::INVALID_COMMAND, &e.field, e.message))?;
    if command.legal_entity != addressed.entity {
        return Err(invalid(
            code::INVALID_COMMAND,
            "legal_entity",
            format!(
                "the command is for `{}`, but it was sent on `{subject}`, the subject of `{}`; send it on the subject of its own legal entity",
                command.legal_entity, addressed.entity
            ),
        ));
    }
    Ok(command)
}

async fn query<L: ledger::EventLog>(log: &L, state: &State, payload: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(payload);
    let value = match Uuid::try_parse(text.trim()) {
        Ok(id) => match crate::processor::outcome_of(log, state, id).await {
            Ok(Some(outcome)) => serde_json::to_value(outcome).expect("outcomes serialise"),
            Ok(None) => serde_json::json!({"status": "unknown", "command_id": id}),
            Err(e) => {
                let outcome = Outcome::Unavailable {
                    command_id: id,
                    message: format!("its record could not be read back from the ledger: {e}"),
                };
                serde_json::to_value(outcome).expect("outcomes serialise")
            }
        },
        Err(_) => {
            serde_json::json!({"status": "invalid", "code": code::INVALID_COMMAND, "field": "command_id", "message": "expected a UUID"})
        }
    };
    serde_json::to_vec(&value).expect("json")
}

/// The command id of an invalid command, if it can be read at all, so the caller can match
/// the answer.
fn command_id_hint(payload: &[u8]) -> Option<Uuid> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Uuid::try_parse(value.get("command_id")?.as_str()?).ok()
}

async fn answer(answers: Answers<'_>, reply: ReplyTo, outcome: &Outcome) {
    let body: Bytes = serde_json::to_vec(outcome)
        .expect("outcomes serialise")
        .into();
    let received = reply.received();
    match reply {
        ReplyTo::Rpc {
            subject: Some(subject),
            ..
        } => answers.send(&subject, body).await,
        ReplyTo::Rpc { subject: None, .. } => {}
        ReplyTo::Stream { msg, user, .. } => {
            if let Some(to) = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(subjects::REPLY_TO_HEADER))
            {
                match &user {
                    Some(user) if !to.as_str().starts_with(&subjects::answers_of(user)) => {
                        tracing::warn!(
                            reply = to.as_str(),
                            user,
                            "not answering: with credentials a durable command's answer goes to the sender's own answer subjects"
                        );
                    }
                    _ => answers.send(to.as_str(), body).await,
                }
            }
            // Nothing stored: let the stream deliver it again later. Anything else is final.
            let ack = match outcome {
                Outcome::Unavailable { .. } => {
                    msg.ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                        .await
                }
                _ => msg.ack().await,
            };
            if let Err(e) = ack {
                tracing::warn!(error = %e, "acknowledging a command message");
            }
        }
    }
    answers.latency.observe(received.elapsed());
}
