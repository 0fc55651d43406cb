//! The projector runtime: feeds the ledger, in order, to a `View`, publishes the changed keys
//! to the view's KV bucket, answers queries, and keeps a snapshot of the view with the
//! checkpoint it reflects.
//!
//! Exactly-once effect: the view state and its checkpoint are saved together, as one object
//! (`erp_snapshots/<generation>`); a restart loads both and reads the ledger from the
//! checkpoint + 1, so no event is skipped or applied twice, whatever the moment of the crash.
//! KV values are outputs: a crash may leave some newer than the snapshot, and replaying
//! re-publishes the same values. Every sequence must follow the previous one and every event
//! must continue its subject's hash chain, or the projector stops rather than skip.
//!
//! Generations: a view lives in KV bucket `view_<name>_v<version>_<millis>`; the registry
//! (`erp_views`, key `<name>`) names the generation being served. A rebuild builds a new
//! generation from sequence 1 while the old one serves, then swaps the registry entry; the
//! old projector sees the swap and stops.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use ledger::chain::{ChainSnapshot, ChainVerifier};
use ledger::guard::ReplyGuard;
use ledger::jetstream::{
    ATOMIC_BATCH_MAX, BatchMessage, JetStreamLog, allow_atomic_publish, publish_atomic,
};
use ledger::walk::{WalkError, WalkUntil, Walked, Walker, walk};
use ledger::{EventLog, LogRecord, ReadError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::view::{Answer, QueryError, Read, ReadSource, View, page, page_limit, read_query};

/// Registry bucket: which generation of each view is served.
pub const REGISTRY_BUCKET: &str = "erp_views";

/// Object store holding view snapshots.
pub const SNAPSHOT_BUCKET: &str = "erp_snapshots";

#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Publish changed keys at least every this many events...
    pub flush_events: u64,
    /// ...and at least this often.
    pub flush_interval: Duration,
    /// Save a snapshot every this many events...
    pub snapshot_events: u64,
    /// ...or this often, whichever comes first.
    pub snapshot_interval: Duration,
    /// Most records taken from the ledger per turn of the loop.
    pub read_batch: usize,
}

impl Default for ProjectorConfig {
    fn default() -> ProjectorConfig {
        ProjectorConfig {
            flush_events: 50_000,
            flush_interval: Duration::from_millis(200),
            snapshot_events: 500_000,
            snapshot_interval: Duration::from_secs(30),
            read_batch: 2_000,
        }
    }
}

/// Whether to continue the served generation or build a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Continue the served generation from its snapshot (start one if there is none, or if
    /// the served one is of another version: then it is built and swapped in as a rebuild).
    Live,
    /// Build a new generation from sequence 1 while the current one serves, then swap.
    Rebuild,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("reading the ledger: {0}")]
    Read(#[from] ReadError),
    #[error("{0}; refusing to apply what does not verify")]
    Walk(#[from] WalkError),
    #[error("NATS: {0}")]
    Nats(String),
    #[error(
        "snapshot {name}: the read stalled, the object was probably replaced while being read; retry"
    )]
    SnapshotReplaced { name: String },
    #[error("snapshot {name}: {detail}")]
    Snapshot { name: String, detail: String },
}

fn nats(e: impl std::fmt::Display) -> ProjectorError {
    ProjectorError::Nats(e.to_string())
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Shutdown,
    /// Another generation was swapped in.
    Superseded {
        by: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Generation {
    bucket: String,
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct Snapshot<V> {
    view: V,
    checkpoint: u64,
    chain: ChainSnapshot,
    /// Sequences of the foreign messages passed over so far (never part of the view).
    #[serde(default)]
    foreign: Vec<u64>,
    version: u32,
    written_by: String,
}

/// Reads the view saved in a generation's snapshot, with its checkpoint (for audits and tests:
/// the snapshot is what a restart resumes from).
pub async fn read_snapshot<V: View>(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<Option<(V, u64)>, ProjectorError> {
    // A reader: it looks, it creates nothing.
    let Ok(store) = js.get_object_store(SNAPSHOT_BUCKET).await else {
        return Ok(None);
    };
    let mut attempts = 0;
    loop {
        match fetch_snapshot::<V>(&store, bucket).await {
            Err(ProjectorError::SnapshotReplaced { .. }) if attempts < 3 => attempts += 1,
            other => return Ok(other?.map(|s| (s.view, s.checkpoint))),
        }
    }
}

async fn fetch_snapshot<V: View>(
    store: &object_store::ObjectStore,
    name: &str,
) -> Result<Option<Snapshot<V>>, ProjectorError> {
    let failed = |detail: String| ProjectorError::Snapshot {
        name: name.into(),
        detail,
    };
    let bytes = match ledger::objects::read(store, name).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(ledger::objects::ObjectError::Replaced { .. }) => {
            return Err(ProjectorError::SnapshotReplaced { name: name.into() });
        }
        Err(e) => return Err(failed(e.to_string())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| failed(e.to_string()))
}

/// Where a rebuild in progress answers how far it is (`RebuildProgress`). Outside
/// `view.<name>.>`, which the generation being served answers; within `view.>`, which every
/// user that may ask views may ask.
pub fn rebuild_subject(view: &str) -> String {
    format!("view._rebuild.{view}")
}

/// How far a rebuild is: records of the ledger read into the new generation of the total it
/// must read before it is swapped in.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RebuildProgress {
    pub generation: String,
    #[serde(flatten)]
    pub progress: Progress,
}

/// Answers requests on `rebuild_subject(view)` with `progress` until dropped.
async fn answer_rebuild_progress(
    client: &async_nats::Client,
    view: &str,
    progress: std::sync::Arc<std::sync::Mutex<RebuildProgress>>,
) -> Result<AbortOnDrop, ProjectorError> {
    let mut requests = client
        .subscribe(rebuild_subject(view))
        .await
        .map_err(nats)?;
    let client = client.clone();
    Ok(AbortOnDrop(tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply else { continue };
            let body = serde_json::to_vec(&*progress.lock().expect("progress lock"))
                .expect("progress serialises");
            let _ = client.publish(reply, body.into()).await;
        }
    })))
}

/// A task stopped when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Progress of a catch-up, for `erp project --rebuild` and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub events_per_second: f64,
    pub eta_seconds: f64,
}

impl Progress {
    /// `done` of `total` after running since `started`, with the rate and time left.
    pub fn at(done: u64, total: u64, started: Instant) -> Progress {
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        Progress {
            done,
            total,
            events_per_second: rate,
            eta_seconds: total.saturating_sub(done) as f64 / rate.max(1e-9),
        }
    }
}

struct Parked {
    deadline: Instant,
    min_seq: u64,
    op: String,
    body: serde_json::Value,
    reply: async_nats::Subject,
}

/// A projector for view `V`.
pub struct Projector<V: View> {
    log: JetStreamLog,
    config: ProjectorConfig,
    registry: kv::Store,
    snapshots: object_store::ObjectStore,
    generation: Generation,
    /// Swap the registry to this generation once caught up.
    swap_when_caught_up: bool,
    view: V,
    checkpoint: u64,
    chain: ChainVerifier,
    /// Foreign messages passed over (`ledger::walk`): never applied, never explained.
    foreign: BTreeSet<u64>,
    pending: BTreeSet<String>,
    since_flush: u64,
    since_snapshot: u64,
    last_flush: Instant,
    last_snapshot: Instant,
    parked: Vec<Parked>,
    guard: ReplyGuard,
    progress: Option<Box<dyn FnMut(Progress) + Send + Sync>>,
    health: Health,
}

/// Lag and rate, sampled every 10 seconds while following the ledger.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Health {
    ledger_last_seq: u64,
    lag: u64,
    events_per_second: f64,
    #[serde(skip)]
    sampled_at: Option<Instant>,
    #[serde(skip)]
    checkpoint_then: u64,
}

impl<V: View> std::fmt::Debug for Projector<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("view", &V::NAME)
            .field("generation", &self.generation.bucket)
            .field("checkpoint", &self.checkpoint)
            .finish()
    }
}

/// The KV bucket, created if missing, kept on `replicas` nodes as the ledger is.
async fn key_value(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store, ProjectorError> {
    let store = match js.get_key_value(bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.into(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(nats)?,
    };
    ledger::jetstream::check_stream_replicas(js, &format!("KV_{bucket}"), replicas)
        .await
        .map_err(nats)?;
    Ok(store)
}

async fn object_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<object_store::ObjectStore, ProjectorError> {
    ledger::objects::bucket(js, SNAPSHOT_BUCKET, replicas)
        .await
        .map_err(nats)
}

/// The bucket of the generation currently served for `name`, if any.
pub async fn served_bucket(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<String>, ProjectorError> {
    let Ok(registry) = js.get_key_value(REGISTRY_BUCKET).await else {
        return Ok(None);
    };
    let entry = registry.get(name).await.map_err(nats)?;
    Ok(entry
        .and_then(|b| serde_json::from_slice::<Generation>(&b).ok())
        .map(|g| g.bucket))
}

impl<V: View> Projector<V> {
    pub async fn open(
        log: JetStreamLog,
        mode: Mode,
        config: ProjectorConfig,
    ) -> Result<Projector<V>, ProjectorError> {
        let js = log.jetstream().clone();
        // Every bucket is kept on as many nodes as the ledger.
        let replicas = log.config().replicas;
        log.check_replicas().map_err(nats)?;
        let registry = key_value(&js, REGISTRY_BUCKET, replicas).await?;
        let snapshots = object_bucket(&js, replicas).await?;
        let served: Option<Generation> = registry
            .get(V::NAME)
            .await
            .map_err(nats)?
            .and_then(|b| serde_json::from_slice(&b).ok());
        let reuse = match (&served, mode) {
            (Some(g), Mode::Live) if g.version == V::VERSION => Some(g.clone()),
            _ => None,
        };
        let swap_when_caught_up = reuse.is_none() && served.is_some();
        let generation = reuse.clone().unwrap_or_else(|| Generation {
            bucket: format!(
                "view_{}_v{}_{}",
                V::NAME,
                V::VERSION,
                chrono::Utc::now().timestamp_millis()
            ),
            version: V::VERSION,
        });
        // Created here; written through atomic batches to `$KV.<bucket>.<key>`.
        key_value(&js, &generation.bucket, replicas).await?;
        allow_atomic_publish(&js, &format!("KV_{}", generation.bucket))
            .await
            .map_err(nats)?;
        let mut projector = Projector {
            log,
            config,
            registry,
            snapshots,
            generation,
            swap_when_caught_up,
            view: V::default(),
            checkpoint: 0,
            chain: ChainVerifier::new(),
            foreign: BTreeSet::new(),
            pending: BTreeSet::new(),
            since_flush: 0,
            since_snapshot: 0,
            last_flush: Instant::now(),
            last_snapshot: Instant::now(),
            parked: Vec::new(),
            guard: ReplyGuard::load(&js).await,
            progress: None,
            health: Health::default(),
        };
        if reuse.is_some() {
            projector.load_snapshot().await?;
        } else if served.is_none() {
            // Nothing is served yet: this generation is it from the start.
            projector.claim().await?;
        }
        tracing::info!(view = V::NAME, generation = %projector.generation.bucket, checkpoint = projector.checkpoint, "projector opened");
        Ok(projector)
    }

    /// Called with progress every 2 seconds while catching up.
    pub fn on_progress(&mut self, report: impl FnMut(Progress) + Send + Sync + 'static) {
        self.progress = Some(Box::new(report));
    }

    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    pub fn view(&self) -> &V {
        &self.view
    }

    pub fn bucket(&self) -> &str {
        &self.generation.bucket
    }

    async fn claim(&mut self) -> Result<(), ProjectorError> {
        let entry = serde_json::to_vec(&self.generation).expect("json");
        self.registry
            .put(V::NAME, entry.into())
            .await
            .map_err(nats)?;
        self.swap_when_caught_up = false;
        tracing::info!(view = V::NAME, generation = %self.generation.bucket, "serving this generation");
        Ok(())
    }

    async fn load_snapshot(&mut self) -> Result<(), ProjectorError> {
        let name = self.generation.bucket.clone();
        let Some(snapshot) = fetch_snapshot::<V>(&self.snapshots, &name).await? else {
            return Ok(());
        };
        let chain =
            ChainVerifier::restore(&snapshot.chain).ok_or_else(|| ProjectorError::Snapshot {
                name: name.clone(),
                detail: "unreadable chain heads".into(),
            })?;
        self.view = snapshot.view;
        self.checkpoint = snapshot.checkpoint;
        self.chain = chain;
        self.foreign = snapshot.foreign.into_iter().collect();
        Ok(())
    }

    /// `flush`, or, if the bucket cannot take it now (its leader is being elected), keep the
    /// keys for the next flush: the view is whole in memory and answers from there.
    async fn flush_or_defer(&mut self) {
        if let Err(error) = self.flush().await {
            tracing::warn!(view = V::NAME, %error, keys = self.pending.len(), "the view's bucket did not take the update; trying again");
        }
    }

    /// A new walk from the checkpoint (after a lost read, or to start), tried for up to a
    /// minute.
    async fn walk_again(
        &mut self,
        until: WalkUntil,
    ) -> Result<Walker<ledger::jetstream::JetStreamCursor>, ProjectorError> {
        let mut pause = Duration::from_millis(100);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.walk(until).await {
                Ok(walker) => return Ok(walker),
                Err(error) if Instant::now() < deadline => {
                    tracing::warn!(view = V::NAME, %error, "reading the ledger again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Saves the view and its checkpoint as one object, with the chain heads of `walking` (a
    /// walk in progress holds them) or the projector's own.
    async fn save_snapshot(
        &mut self,
        walking: Option<&ChainVerifier>,
    ) -> Result<(), ProjectorError> {
        let chain = walking.unwrap_or(&self.chain).snapshot();
        let snapshot = Snapshot {
            view: &self.view,
            checkpoint: self.checkpoint,
            chain,
            foreign: self.foreign.iter().copied().collect(),
            version: V::VERSION,
            written_by: concat!("erp ", env!("CARGO_PKG_VERSION")).into(),
        };
        let bytes = serde_json::to_vec(&snapshot).expect("views serialise");
        let name = self.generation.bucket.clone();
        ledger::objects::write(&self.snapshots, &name, &bytes)
            .await
            .map_err(|e| ProjectorError::Snapshot {
                name,
                detail: e.to_string(),
            })?;
        self.since_snapshot = 0;
        self.last_snapshot = Instant::now();
        Ok(())
    }

    /// Publishes every changed key's current value, and the status key, in atomic batches
    /// of up to 1,000 (fsynced as a group).
    async fn flush(&mut self) -> Result<(), ProjectorError> {
        // Kept until published, to be published again if this flush fails (publishing a key's
        // current value twice is harmless).
        let keys = std::mem::take(&mut self.pending);
        let status = json!({"checkpoint": self.checkpoint, "version": V::VERSION, "updated_at": chrono::Utc::now().to_rfc3339()});
        let mut messages: Vec<BatchMessage> = keys
            .iter()
            .map(|key| {
                let mut headers = async_nats::HeaderMap::new();
                let payload = match self.view.value(key) {
                    Some(value) => Bytes::from(serde_json::to_vec(&value).expect("json")),
                    None => {
                        headers.insert("KV-Operation", "DEL");
                        Bytes::new()
                    }
                };
                BatchMessage {
                    subject: format!("$KV.{}.{key}", self.generation.bucket),
                    headers,
                    payload,
                }
            })
            .collect();
        messages.push(BatchMessage {
            subject: format!("$KV.{}._status", self.generation.bucket),
            headers: async_nats::HeaderMap::new(),
            payload: serde_json::to_vec(&status).expect("json").into(),
        });
        let client = self.log.client().clone();
        let js = self.log.jetstream().clone();
        while !messages.is_empty() {
            let rest = messages.split_off(messages.len().min(ATOMIC_BATCH_MAX));
            if let Err(e) = publish_atomic(&client, &js, messages).await {
                self.pending.extend(keys);
                return Err(nats(e));
            }
            messages = rest;
        }
        self.since_flush = 0;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Applies one committed batch, or passes over (and remembers) a foreign message. The
    /// walk has checked sequences and hash chains.
    fn ingest(&mut self, item: Walked) {
        let last = item.last_seq();
        let records = last - self.checkpoint;
        match item {
            Walked::Batch(batch) => {
                for event in &batch.events {
                    self.view.apply(event, &mut self.pending);
                }
            }
            Walked::Foreign(f) => {
                tracing::warn!(view = V::NAME, seq = f.seq, subject = %f.stored_subject, reason = %f.reason, "a message the ledger's writer did not write: passed over");
                self.view.foreign(&f, &mut self.pending);
                self.foreign.insert(f.seq);
            }
        }
        self.checkpoint = last;
        self.since_flush += records;
        self.since_snapshot += records;
    }

    /// A walk of the ledger from the checkpoint, verifying chains from the saved heads.
    async fn walk(
        &mut self,
        until: WalkUntil,
    ) -> Result<Walker<ledger::jetstream::JetStreamCursor>, ProjectorError> {
        let chain = std::mem::take(&mut self.chain);
        Ok(walk(&self.log, self.checkpoint + 1, until, Some(chain)).await?)
    }

    /// Takes the chain heads back from a finished walk.
    fn end_walk(&mut self, walker: Walker<ledger::jetstream::JetStreamCursor>) {
        self.chain = walker.into_chain().unwrap_or_default();
    }

    /// Reads the ledger up to its current end without serving: the catch-up of a rebuild.
    /// A rebuild answers how far it is on `rebuild_subject` meanwhile.
    pub async fn catch_up(&mut self) -> Result<u64, ProjectorError> {
        let target = self.log.last_sequence().await?;
        let started = Instant::now();
        let from = self.checkpoint;
        let mut last_report = Instant::now();
        let shared = std::sync::Arc::new(std::sync::Mutex::new(RebuildProgress {
            generation: self.generation.bucket.clone(),
            progress: Progress::at(0, target.saturating_sub(from), started),
        }));
        let _answering = match self.swap_when_caught_up {
            true => {
                Some(answer_rebuild_progress(self.log.client(), V::NAME, shared.clone()).await?)
            }
            false => None,
        };
        let mut walker = self.walk_again(WalkUntil::Sequence(target)).await?;
        while let Some(item) = walker.next().await {
            match item {
                Ok(item) => self.ingest(item),
                // A read lost to a node's death or an election: read on from the checkpoint,
                // as a serving projector does. A broken chain or a gap stops the catch-up.
                Err(WalkError::Read(error)) => {
                    tracing::warn!(view = V::NAME, %error, checkpoint = self.checkpoint, "the ledger read was lost while catching up; reading on from the checkpoint");
                    self.end_walk(walker);
                    walker = self.walk_again(WalkUntil::Sequence(target)).await?;
                    continue;
                }
                Err(error) => return Err(error.into()),
            }
            // A generation that is not served yet has no readers: its keys are written once,
            // at the end, rather than at every flush.
            if !self.swap_when_caught_up && self.since_flush >= self.config.flush_events {
                self.flush().await?;
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                self.report(from, target, started, &shared);
            }
        }
        self.end_walk(walker);
        self.flush().await?;
        self.report(from, target, started, &shared);
        self.save_snapshot(None).await?;
        Ok(self.checkpoint - from)
    }

    /// Logs how far a catch-up is, tells whoever asks on the rebuild subject (`shared`), then
    /// the caller's progress report.
    fn report(
        &mut self,
        from: u64,
        target: u64,
        started: Instant,
        shared: &std::sync::Mutex<RebuildProgress>,
    ) {
        let done = self.checkpoint - from;
        let total = target.saturating_sub(from);
        let progress = Progress::at(done, total, started);
        shared.lock().expect("progress lock").progress = progress;
        let rate = progress.events_per_second;
        tracing::info!(
            view = V::NAME,
            done,
            total,
            rate = rate as u64,
            eta_s = progress.eta_seconds as u64,
            "catching up"
        );
        if let Some(report) = self.progress.as_mut() {
            report(progress);
        }
    }

    /// Follows the ledger, publishing and serving, until `shutdown` resolves or another
    /// generation is swapped in. Saves a snapshot on the way out.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<RunEnd, ProjectorError> {
        if self.swap_when_caught_up {
            self.catch_up().await?;
            self.claim().await?;
        }
        let client = self.log.client().clone();
        let mut queries = client
            .queue_subscribe(format!("view.{}.>", V::NAME), format!("view.{}", V::NAME))
            .await
            .map_err(nats)?;
        let mut registry = self.registry.watch(V::NAME).await.map_err(nats)?;
        let mut walker = self.walk_again(WalkUntil::Follow).await?;
        let mut tick = tokio::time::interval(self.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let end = loop {
            tokio::select! {
                _ = &mut shutdown => break RunEnd::Shutdown,
                item = walker.next() => {
                    let Some(item) = item else { break RunEnd::Shutdown };
                    let mut failed = None;
                    match item {
                        Ok(item) => self.ingest(item),
                        Err(e) => failed = Some(e),
                    }
                    // Take what is already buffered without yielding, up to a batch.
                    for _ in 1..self.config.read_batch {
                        if failed.is_some() {
                            break;
                        }
                        match walker.next().now_or_never() {
                            Some(Some(Ok(item))) => self.ingest(item),
                            Some(Some(Err(e))) => failed = Some(e),
                            _ => break,
                        }
                    }
                    if let Some(error) = failed {
                        // The read was lost (its node died, the stream is electing a leader):
                        // read on from the checkpoint. A broken chain or a gap is no such thing.
                        let WalkError::Read(_) = error else { return Err(error.into()) };
                        tracing::warn!(view = V::NAME, %error, checkpoint = self.checkpoint, "the ledger read was lost; reading on from the checkpoint");
                        self.end_walk(walker);
                        walker = self.walk_again(WalkUntil::Follow).await?;
                    }
                    if self.since_flush >= self.config.flush_events {
                        self.flush_or_defer().await;
                    }
                    self.answer_parked(&client, false).await;
                }
                query = queries.next() => {
                    if let Some(msg) = query {
                        self.query(&client, msg).await;
                    }
                }
                update = registry.next() => {
                    if let Some(Ok(entry)) = update
                        && let Ok(generation) = serde_json::from_slice::<Generation>(&entry.value)
                        && generation.bucket != self.generation.bucket
                    {
                        break RunEnd::Superseded { by: generation.bucket };
                    }
                }
                _ = tick.tick() => {
                    if !self.pending.is_empty() || self.last_flush.elapsed() >= Duration::from_secs(5) {
                        self.flush_or_defer().await;
                    }
                    if self.since_snapshot >= self.config.snapshot_events
                        || (self.since_snapshot > 0 && self.last_snapshot.elapsed() >= self.config.snapshot_interval)
                    {
                        // A snapshot that cannot be stored now is tried again at the next tick:
                        // the view is whole in memory meanwhile.
                        if let Err(error) = self.save_snapshot(walker.chain()).await {
                            tracing::warn!(view = V::NAME, %error, "the view's snapshot could not be stored; trying again");
                        }
                    }
                    self.answer_parked(&client, true).await;
                    self.sample_health().await;
                    self.guard.refresh_if_stale(self.log.jetstream());
                }
            }
        };
        self.end_walk(walker);
        self.flush().await?;
        self.save_snapshot(None).await?;
        Ok(end)
    }

    /// Every 10 s: the ledger's last sequence, the lag behind it, and the rate since the last
    /// sample, to the log and to the `status` answer.
    async fn sample_health(&mut self) {
        let now = Instant::now();
        if self
            .health
            .sampled_at
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            return;
        }
        let Ok(last) = self.log.last_sequence().await else {
            return;
        };
        let rate = match self.health.sampled_at {
            Some(then) => {
                (self.checkpoint - self.health.checkpoint_then) as f64
                    / now.duration_since(then).as_secs_f64()
            }
            None => 0.0,
        };
        self.health = Health {
            ledger_last_seq: last,
            lag: last.saturating_sub(self.checkpoint),
            events_per_second: rate,
            sampled_at: Some(now),
            checkpoint_then: self.checkpoint,
        };
        tracing::info!(
            view = V::NAME,
            checkpoint = self.checkpoint,
            lag = self.health.lag,
            rate = rate as u64,
            "projector health"
        );
    }

    async fn query(&mut self, client: &async_nats::Client, msg: async_nats::Message) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let op = msg
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let body: serde_json::Value = if msg.payload.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(&msg.payload) {
                Ok(body) => body,
                Err(e) => {
                    let error = QueryError::bad_query(format!("the body is not JSON: {e}"));
                    publish(client, &self.guard, reply, self.answer_error(&error)).await;
                    return;
                }
            }
        };
        let min_seq = body.get("min_seq").and_then(|v| v.as_u64()).unwrap_or(0);
        if min_seq > self.checkpoint {
            let wait = body
                .get("timeout_ms")
                .and_then(|v| v.as_u64())
                .unwrap_or(5_000)
                .min(60_000);
            self.parked.push(Parked {
                deadline: Instant::now() + Duration::from_millis(wait),
                min_seq,
                op,
                body,
                reply,
            });
            return;
        }
        let answer = self.answer(&op, &body).await;
        publish(client, &self.guard, reply, answer).await;
    }

    fn answer_error(&self, error: &QueryError) -> serde_json::Value {
        json!({"seq": self.checkpoint, "error": error})
    }

    async fn answer(&self, op: &str, body: &serde_json::Value) -> serde_json::Value {
        let result = match op {
            "status" => Ok(json!({
                "view": V::NAME,
                "version": V::VERSION,
                "generation": self.generation.bucket,
                "checkpoint": self.checkpoint,
                "ledger_last_seq": self.health.ledger_last_seq.max(self.checkpoint),
                // The ledger's end as last sampled (every 10 s) against the checkpoint now.
                "lag": self.health.ledger_last_seq.saturating_sub(self.checkpoint),
                "events_per_second": self.health.events_per_second,
                "foreign": {"count": self.foreign.len(), "recent": self.foreign.iter().rev().take(20).collect::<Vec<_>>()},
            })),
            "rows" => self.rows_page(body),
            op => match read_query::<V>(op, body) {
                Err(e) => Err(QueryError::bad_query(format!(
                    "{}; every view also answers status and rows",
                    e.message
                ))),
                Ok(query) => match self.view.answer(&query) {
                    Ok(Answer::Value(value)) => Ok(value),
                    Ok(Answer::Read(read)) => self.read_page(&query, &read).await,
                    Err(e) => Err(e),
                },
            },
        };
        match result {
            Ok(value) => json!({"seq": self.checkpoint, "result": value}),
            Err(error) => self.answer_error(&error),
        }
    }

    /// `rows`: every row in key order, a page at a time (`after`, `limit`, `prefix`).
    fn rows_page(&self, body: &serde_json::Value) -> Result<serde_json::Value, QueryError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RowsQuery {
            #[serde(default)]
            after: Option<String>,
            #[serde(default)]
            limit: Option<u32>,
            #[serde(default)]
            prefix: Option<String>,
            #[serde(default)]
            min_seq: Option<u64>,
            #[serde(default)]
            timeout_ms: Option<u64>,
        }
        let q: RowsQuery = serde_json::from_value(body.clone())
            .map_err(|e| QueryError::bad_query(format!("view.{}.rows: {e}", V::NAME)))?;
        let _ = (q.min_seq, q.timeout_ms);
        let prefix = q.prefix.unwrap_or_default();
        let (rows, next_after) = page(
            self.view
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .filter_map(|k| {
                    let value = self.view.value(&k)?;
                    Some((k.clone(), json!({"key": k, "value": value})))
                }),
            q.after.as_deref(),
            page_limit(q.limit)?,
        );
        Ok(json!({"rows": rows, "next_after": next_after}))
    }

    /// Reads events back from the ledger, up to the checkpoint and never a foreign one, and has
    /// the view render them, one page: `{"events": [...], "next_after_seq": N or null}`.
    async fn read_page(
        &self,
        query: &V::Query,
        read: &Read,
    ) -> Result<serde_json::Value, QueryError> {
        let unavailable = |e: ReadError| QueryError {
            code: "unavailable",
            message: e.to_string(),
        };
        let mut page = EventPage::new(read.limit);
        let mut take = |event: &ledger::RecordedEvent| -> bool {
            if self.foreign.contains(&event.seq) || !read.range.contains(event) {
                return true;
            }
            match self.view.render(query, event) {
                Some(row) => page.push(row),
                None => true,
            }
        };
        match &read.from {
            ReadSource::Seqs(seqs) => {
                for &seq in seqs
                    .iter()
                    .filter(|&&s| s > read.after_seq && s <= self.checkpoint)
                {
                    if let Some(LogRecord::Event(event)) =
                        self.log.get(seq).await.map_err(unavailable)?
                        && !take(&event)
                    {
                        break;
                    }
                }
            }
            ReadSource::Subject(subject) => {
                let mut events = self
                    .log
                    .subject_events(subject, read.after_seq, self.checkpoint)
                    .await
                    .map_err(unavailable)?;
                while let Some(event) = events.next().await.map_err(unavailable)? {
                    if !take(&event) {
                        break;
                    }
                }
            }
        }
        let (rows, next) = page.finish();
        Ok(json!({"events": rows, "next_after_seq": next}))
    }

    async fn answer_parked(&mut self, client: &async_nats::Client, check_deadlines: bool) {
        if self.parked.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut still = Vec::new();
        for p in std::mem::take(&mut self.parked) {
            if p.min_seq <= self.checkpoint {
                let answer = self.answer(&p.op, &p.body).await;
                publish(client, &self.guard, p.reply, answer).await;
            } else if check_deadlines && now >= p.deadline {
                let error = QueryError {
                    code: "timeout",
                    message: format!(
                        "the view reached sequence {}, not {} within the timeout",
                        self.checkpoint, p.min_seq
                    ),
                };
                publish(client, &self.guard, p.reply, self.answer_error(&error)).await;
            } else {
                still.push(p);
            }
        }
        self.parked = still;
    }
}

/// Most bytes of events one page of a read-back answer holds: well inside the 1 MiB a NATS
/// message holds by default, whatever `limit` asked for.
const PAGE_BYTES_MAX: usize = 512 * 1024;

/// A page of rendered events, closed at `limit` rows or `PAGE_BYTES_MAX` bytes (at least one
/// row).
struct EventPage {
    rows: Vec<serde_json::Value>,
    bytes: usize,
    limit: usize,
    full: bool,
}

impl EventPage {
    fn new(limit: usize) -> EventPage {
        EventPage {
            rows: Vec::new(),
            bytes: 0,
            limit,
            full: false,
        }
    }

    /// Adds a row; `false` when the page was already full (the row is not on it).
    fn push(&mut self, row: serde_json::Value) -> bool {
        let size = serde_json::to_vec(&row).map_or(0, |b| b.len()) + 1;
        if self.rows.len() == self.limit
            || (!self.rows.is_empty() && self.bytes + size > PAGE_BYTES_MAX)
        {
            self.full = true;
            return false;
        }
        self.bytes += size;
        self.rows.push(row);
        true
    }

    /// The rows, and the sequence to continue after when the page was full.
    fn finish(self) -> (Vec<serde_json::Value>, Option<u64>) {
        let next = if self.full {
            self.rows.last().and_then(|r| r["seq"].as_u64())
        } else {
            None
        };
        (self.rows, next)
    }
}

/// Answers a query, unless the reply subject is one answers never go to (`ReplyGuard`).
async fn publish(
    client: &async_nats::Client,
    guard: &ReplyGuard,
    reply: async_nats::Subject,
    answer: serde_json::Value,
) {
    if let Err(why) = guard.check(&reply) {
        tracing::warn!(reply = %reply, %why, "not answering a view query onto this subject");
        return;
    }
    let mut bytes = serde_json::to_vec(&answer).expect("json");
    let limit = client.server_info().max_payload.saturating_sub(1024);
    if bytes.len() > limit {
        let error = QueryError {
            code: "too_large",
            message: format!(
                "the answer is {} bytes, more than a message holds ({limit}); read the view's KV bucket instead",
                bytes.len()
            ),
        };
        bytes =
            serde_json::to_vec(&json!({"seq": answer.get("seq"), "error": error})).expect("json");
    }
    if let Err(e) = client.publish(reply, bytes.into()).await {
        tracing::warn!(error = %e, "answering a view query");
    }
}

#[cfg(test)]
mod event_page_tests {
    use super::{EventPage, PAGE_BYTES_MAX};
    use serde_json::json;

    #[test]
    fn a_page_closes_at_its_limit_or_its_bytes_whichever_comes_first() {
        // Goal: 1,000 events of 100 KiB each would make a 100 MB answer; the page stops at
        // about 512 KiB and says where to continue.
        let big = "x".repeat(100 * 1024);
        let mut page = EventPage::new(1000);
        let mut seq = 0;
        while page.push(json!({"seq": seq + 1, "data": big})) {
            seq += 1;
        }
        let (rows, next) = page.finish();
        assert_eq!(rows.len(), 5);
        assert_eq!(next, Some(5));
        assert!(serde_json::to_vec(&rows).unwrap().len() <= PAGE_BYTES_MAX);
        // A single event larger than the budget still makes a page of one.
        let mut page = EventPage::new(10);
        assert!(page.push(json!({"seq": 1, "data": "y".repeat(PAGE_BYTES_MAX)})));
        assert!(!page.push(json!({"seq": 2})));
        assert_eq!(page.finish().1, Some(1));
        // Small events: the limit closes the page; with nothing after it, no continuation.
        let mut page = EventPage::new(3);
        for seq in 1..=3 {
            assert!(page.push(json!({"seq": seq})));
        }
        assert_eq!(
            page.finish(),
            (
                vec![json!({"seq": 1}), json!({"seq": 2}), json!({"seq": 3})],
                None
            )
        );
    }
}
