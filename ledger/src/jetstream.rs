//! The event log on NATS JetStream: stream provisioning, fenced atomic appends, reads.
//!
//! Append protocol (one atomic batch per append; measured in shared notes §5):
//! - messages 1..n-1 are the events, sent by core publish with `Nats-Batch-Id` and
//!   `Nats-Batch-Sequence`; message 1 also carries `Nats-Expected-Last-Sequence` = the
//!   stream's last sequence as this writer knows it (the stream-wide fence), and the first
//!   event of each subject carries `Nats-Expected-Last-Subject-Sequence` (optimistic
//!   concurrency per subject);
//! - message n is the writer's chain marker on `<prefix>.w.<instance>`, sent by JetStream
//!   publish with `Nats-Batch-Commit: 1` and the expected last sequence of that chain subject.
//!   That second check closes the hole where a foreign writer appends exactly as many messages
//!   as a failed batch held and the stream-wide count matches again.
//! - the ack must report the predicted last sequence and batch size, or the writer stops.

use std::time::Duration;

use async_nats::header::{
    self, HeaderMap, NATS_BATCH_COMMIT, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
    NATS_EXPECTED_LAST_SEQUENCE, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::codec::{self, WriterMarker};
use crate::envelope::{EventHash, RecordedEvent};
use crate::log::{
    AppendBatch, AppendError, Appended, AppendedEvent, EventLog, Extended, ForeignReason,
    ForeignRecord, Head, LogCursor, LogRecord, PendingAppend, ReadError, ReadFrom, ReadUntil,
    SealedEvent, seal_batch,
};
use crate::server::Version;
use crate::subject::{Subject, SubjectSpace};
use crate::values::Timestamp;

/// The NATS client crate, for callers that connect and hand the client to `JetStreamLog::open`.
pub use async_nats as nats;

/// Oldest server with atomic batch publish. Older servers accept the stream setting and ignore
/// it, which would turn every batch into partial writes, so they are refused.
pub const SERVER_VERSION_MIN: Version = Version::new(2, 12, 0);

/// Server error codes that mean "an expected sequence did not match". 10164 is the batch form
/// (async-nats reports it as `Other`), so errors are classified by code, never by kind.
const CONFLICT_CODES: [u64; 2] = [10071, 10164];

/// Where the ledger lives and how its stream is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub stream: String,
    pub subjects: SubjectSpace,
    pub replicas: usize,
    /// `deny_delete` and `deny_purge`. Only scratch streams in tests turn this off.
    pub protected: bool,
    /// JetStream's own dedup window. Idempotency of commands does not depend on it.
    pub duplicate_window: Duration,
    /// How long to wait for a batch's acknowledgement before its outcome is unknown (the
    /// writer then catches up from the log and decides again). After a stream leader is lost
    /// this bounds how late the writer notices (the new leader's election, announced by an
    /// advisory, is what it then waits for: `EventLog::leader_elected`). 2 s: a batch of
    /// 1,000 messages with fsync on every one is acknowledged well within it on these
    /// machines; an acknowledgement that comes later is not lost, only resolved from the log.
    pub ack_timeout: Duration,
    /// How long JetStream API calls (stream info, consumers, reads) may take. 3 s; the
    /// writer's catch-up after a failed append gives each read 2 s to make progress.
    pub api_timeout: Duration,
    /// Read a mirror of the ledger kept in this account (readers outside the ledger's account;
    /// `crate::auth`) instead of the ledger itself. Appends are refused.
    pub mirror: Option<crate::auth::MirrorFeed>,
}

impl LogConfig {
    /// The production ledger: stream `LEDGER`, subjects `led.>`.
    pub fn ledger() -> LogConfig {
        LogConfig {
            stream: "LEDGER".into(),
            subjects: SubjectSpace::new("led").expect("valid prefix"),
            replicas: 1,
            protected: true,
            duplicate_window: Duration::from_secs(120),
            ack_timeout: Duration::from_secs(2),
            api_timeout: Duration::from_secs(3),
            mirror: None,
        }
    }

    /// The ledger as readers in another account see it: through the mirror `feed` of it.
    pub fn mirror(feed: crate::auth::MirrorFeed) -> LogConfig {
        LogConfig {
            stream: feed.stream.into(),
            mirror: Some(feed),
            ..LogConfig::ledger()
        }
    }
}

fn mirror_stream_config(config: &LogConfig, feed: &crate::auth::MirrorFeed) -> stream::Config {
    stream::Config {
        name: config.stream.clone(),
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        retention: stream::RetentionPolicy::Limits,
        max_messages: -1,
        max_bytes: -1,
        max_messages_per_subject: -1,
        max_age: Duration::ZERO,
        allow_direct: true,
        deny_delete: true,
        deny_purge: true,
        mirror: Some(stream::Source {
            name: feed.origin.into(),
            external: Some(stream::External {
                api_prefix: feed.api_prefix.into(),
                delivery_prefix: Some(feed.deliver_prefix.into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A mirror must copy the ledger through the expected feed, keep everything, and take no
/// publishes (no subjects of its own).
fn verify_mirror_stream(
    config: &LogConfig,
    feed: &crate::auth::MirrorFeed,
    echoed: &stream::Config,
) -> Result<(), OpenError> {
    let bad = |setting, expected: String, found: String| {
        Err(OpenError::Misconfigured {
            stream: config.stream.clone(),
            setting,
            expected,
            found,
        })
    };
    let source = echoed.mirror.as_ref();
    let api = source
        .and_then(|m| m.external.as_ref())
        .map(|e| e.api_prefix.clone());
    if source.map(|m| m.name.as_str()) != Some(feed.origin)
        || api.as_deref() != Some(feed.api_prefix)
    {
        return bad(
            "mirror",
            format!("a mirror of {} through {}", feed.origin, feed.api_prefix),
            format!("{:?} through {api:?}", source.map(|m| &m.name)),
        );
    }
    if !echoed.subjects.is_empty() {
        return bad("subjects", "none".into(), echoed.subjects.join(","));
    }
    if !echoed.allow_direct || echoed.storage != stream::StorageType::File {
        return bad(
            "allow_direct/storage",
            "true/file".into(),
            format!("{}/{:?}", echoed.allow_direct, echoed.storage),
        );
    }
    if !echoed.max_age.is_zero() || echoed.max_messages > 0 || echoed.max_bytes > 0 {
        return bad("limits", "none".into(), "limits set".into());
    }
    Ok(())
}

/// Why the log could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(
        "nats-server {found} is too old: atomic batch publish needs {SERVER_VERSION_MIN} or newer"
    )]
    ServerTooOld { found: String },
    #[error("nats-server reports an unreadable version `{0}`")]
    ServerVersion(String),
    #[error("could not provision stream {stream}: {detail}")]
    Provision { stream: String, detail: String },
    #[error("could not subscribe to {subject}: {detail}")]
    Subscribe { subject: String, detail: String },
    #[error(
        "stream {stream} is kept on {found} node(s), but this system runs with --replicas {expected}: every stream it uses must have as many copies as the ledger. Start with --replicas {found}, or raise the stream's replicas to {expected} (nats stream edit {stream} --replicas {expected})"
    )]
    Replicas {
        stream: String,
        expected: usize,
        found: usize,
    },
    #[error(
        "stream {stream} is misconfigured: {setting} is {found}, expected {expected}; fix the stream or use another name"
    )]
    Misconfigured {
        stream: String,
        setting: &'static str,
        expected: String,
        found: String,
    },
}

/// Refuses servers older than `SERVER_VERSION_MIN`.
pub fn check_server_version(reported: &str) -> Result<Version, OpenError> {
    let version =
        Version::parse(reported).ok_or_else(|| OpenError::ServerVersion(reported.into()))?;
    if version < SERVER_VERSION_MIN {
        return Err(OpenError::ServerTooOld {
            found: reported.into(),
        });
    }
    Ok(version)
}

/// The replica count a stream must have: every asset of the system is kept on as many nodes
/// as the ledger (`--replicas`), or losing one node loses what only it held.
pub fn check_replicas(
    stream: &str,
    echoed: &stream::Config,
    expected: usize,
) -> Result<(), OpenError> {
    replicas_match(stream, echoed.num_replicas, expected)
}

/// `check_replicas` for a stream that exists (a bucket's, created or opened by its own API).
pub async fn check_stream_replicas(
    js: &jetstream::Context,
    stream: &str,
    expected: usize,
) -> Result<(), OpenError> {
    let provision = |e: &dyn std::fmt::Display| OpenError::Provision {
        stream: stream.into(),
        detail: e.to_string(),
    };
    let mut handle = js.get_stream(stream).await.map_err(|e| provision(&e))?;
    let info = handle.info().await.map_err(|e| provision(&e))?;
    check_replicas(stream, &info.config, expected)
}

fn replicas_match(stream: &str, found: usize, expected: usize) -> Result<(), OpenError> {
    let (found, expected) = (found.max(1), expected.max(1));
    if found != expected {
        return Err(OpenError::Replicas {
            stream: stream.into(),
            expected,
            found,
        });
    }
    Ok(())
}

fn ledger_stream_config(config: &LogConfig) -> stream::Config {
    stream::Config {
        name: config.stream.clone(),
        subjects: vec![config.subjects.all()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        retention: stream::RetentionPolicy::Limits,
        max_messages: -1,
        max_bytes: -1,
        max_messages_per_subject: -1,
        max_age: Duration::ZERO,
        duplicate_window: config.duplicate_window,
        allow_direct: true,
        allow_atomic_publish: true,
        allow_rollup: false,
        deny_delete: config.protected,
        deny_purge: config.protected,
        ..Default::default()
    }
}

/// Checks the stream's echoed configuration: a server or an earlier operator may have created
/// it differently, and a server that does not know a setting silently drops it.
fn verify_ledger_stream(config: &LogConfig, echoed: &stream::Config) -> Result<(), OpenError> {
    let bad = |setting, expected: &dyn ToString, found: &dyn ToString| {
        Err(OpenError::Misconfigured {
            stream: config.stream.clone(),
            setting,
            expected: expected.to_string(),
            found: found.to_string(),
        })
    };
    if !echoed.allow_atomic_publish {
        return bad("allow_atomic_publish", &true, &false);
    }
    if !echoed.allow_direct {
        return bad("allow_direct", &true, &false);
    }
    if echoed.storage != stream::StorageType::File {
        return bad("storage", &"file", &format!("{:?}", echoed.storage));
    }
    if echoed.allow_rollup {
        return bad("allow_rollup", &false, &true);
    }
    if config.protected && !(echoed.deny_delete && echoed.deny_purge) {
        return bad(
            "deny_delete/deny_purge",
            &"true/true",
            &format!("{}/{}", echoed.deny_delete, echoed.deny_purge),
        );
    }
    if !echoed.max_age.is_zero()
        || echoed.max_messages > 0
        || echoed.max_bytes > 0
        || echoed.max_messages_per_subject > 0
    {
        return bad(
            "limits",
            &"none (a ledger never expires events)",
            &format!(
                "max_age={:?} max_msgs={} max_bytes={} max_msgs_per_subject={}",
                echoed.max_age,
                echoed.max_messages,
                echoed.max_bytes,
                echoed.max_messages_per_subject
            ),
        );
    }
    if !echoed.subjects.contains(&config.subjects.all()) {
        return bad(
            "subjects",
            &config.subjects.all(),
            &echoed.subjects.join(","),
        );
    }
    Ok(())
}

/// Provisions the `COMMANDS` intake stream: durable, deduplicated by command id within the
/// window, and kept for `max_age` (the outcome of every command is kept forever in the ledger).
/// Kept on `replicas` nodes, as the ledger: unprocessed commands survive the loss of a node.
pub async fn provision_commands(
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<stream::Stream, OpenError> {
    let config = stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        retention: stream::RetentionPolicy::Limits,
        max_age,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        ..Default::default()
    };
    let (stream, echoed) = provision_stream(js, config).await?;
    check_replicas(name, &echoed, replicas)?;
    Ok(stream)
}

/// Creates the stream if it is missing and returns it with its configuration as the server
/// echoes it (a server or an earlier operator may have made it differently).
async fn provision_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(stream::Stream, stream::Config), OpenError> {
    let name = config.name.clone();
    let provision = |e: &dyn std::fmt::Display| OpenError::Provision {
        stream: name.clone(),
        detail: e.to_string(),
    };
    let mut stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| provision(&e))?;
    let echoed = stream
        .info()
        .await
        .map_err(|e| provision(&e))?
        .config
        .clone();
    Ok((stream, echoed))
}

/// One message of an atomic batch published with `publish_atomic`.
#[derive(Debug, Clone)]
pub struct BatchMessage {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Largest atomic batch the server accepts.
pub const ATOMIC_BATCH_MAX: usize = 1000;

/// Publishes up to 1,000 messages to one stream as one atomic batch (the stream must allow
/// atomic publish): stored all together, or none. Used for derived data (view KV buckets):
/// one batch is fsynced as a group, where single publishes are fsynced one by one.
pub async fn publish_atomic(
    client: &async_nats::Client,
    js: &jetstream::Context,
    messages: Vec<BatchMessage>,
) -> Result<(), AppendError> {
    let n = messages.len();
    if n == 0 || n > ATOMIC_BATCH_MAX {
        return Err(AppendError::Invalid(format!(
            "{n} messages; an atomic batch holds 1 to {ATOMIC_BATCH_MAX}"
        )));
    }
    let batch_id = Uuid::now_v7().simple().to_string();
    let unknown = |e: &dyn std::fmt::Display| AppendError::OutcomeUnknown(e.to_string());
    for (i, mut message) in messages.into_iter().enumerate() {
        message.headers.insert(NATS_BATCH_ID, batch_id.as_str());
        message
            .headers
            .insert(NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
        if i + 1 < n {
            client
                .publish_with_headers(message.subject, message.headers, message.payload)
                .await
                .map_err(|e| unknown(&e))?;
        } else {
            message
                .headers
                .insert(NATS_BATCH_COMMIT, header::NATS_BATCH_COMMIT_FINAL);
            let ack = js
                .publish_with_headers(message.subject, message.headers, message.payload)
                .await
                .map_err(|e| unknown(&e))?
                .await
                .map_err(|e| {
                    let detail = e.to_string();
                    match jetstream_error_code(&e) {
                        Some(code) => AppendError::Refused { code, detail },
                        None => AppendError::OutcomeUnknown(detail),
                    }
                })?;
            if ack.batch_size != Some(n as u64) {
                return Err(AppendError::Refused {
                    code: 0,
                    detail: format!(
                        "batch acknowledged with size {:?}, not {n}: does the stream allow atomic publish?",
                        ack.batch_size
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Lets a stream take atomic batches (for streams created by other APIs, such as KV buckets).
pub async fn allow_atomic_publish(js: &jetstream::Context, stream: &str) -> Result<(), OpenError> {
    let provision = |e: &dyn ToString| OpenError::Provision {
        stream: stream.into(),
        detail: e.to_string(),
    };
    let mut handle = js.get_stream(stream).await.map_err(|e| provision(&e))?;
    let mut config = handle
        .info()
        .await
        .map_err(|e| provision(&e))?
        .config
        .clone();
    if !config.allow_atomic_publish {
        config.allow_atomic_publish = true;
        let echoed = js.update_stream(config).await.map_err(|e| provision(&e))?;
        if !echoed.config.allow_atomic_publish {
            return Err(OpenError::Misconfigured {
                stream: stream.into(),
                setting: "allow_atomic_publish",
                expected: "true".into(),
                found: "false".into(),
            });
        }
    }
    Ok(())
}

/// The single writer's view of the stream.
#[derive(Debug)]
struct Writer {
    instance: Uuid,
    chain_subject: String,
    /// The stream's last sequence as this writer predicts it; `None` until (re)synchronised.
    predicted_last: Option<u64>,
    /// Sequence of this writer's last chain marker (0: none yet).
    prev_marker: u64,
    batches: u64,
    /// Set on a fencing breach: the writer refuses all further appends.
    stopped: Option<String>,
}

/// While a writer waits on a lost leader, how often it asks whether the stream answers again,
/// and how long it waits for each answer.
const LEADER_PROBE_EVERY: Duration = Duration::from_millis(250);
const LEADER_PROBE_WAIT: Duration = Duration::from_millis(750);

/// The ledger on a JetStream stream.
#[derive(Debug)]
pub struct JetStreamLog {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    config: LogConfig,
    /// Copies the stream is kept in, as the server reports it (whatever `config` asked).
    stream_replicas: usize,
    max_payload: usize,
    writer: std::sync::Arc<Mutex<Writer>>,
    /// How many times the stream got a new leader since `watch_leader_elections`.
    elections: Option<tokio::sync::watch::Receiver<u64>>,
}

impl JetStreamLog {
    /// Connects the ledger to `client`: refuses an old server, creates the stream if missing
    /// and verifies its configuration.
    pub async fn open(
        client: async_nats::Client,
        config: LogConfig,
    ) -> Result<JetStreamLog, OpenError> {
        let mut info = client.server_info();
        if info.version.is_empty() {
            // A client that retries its initial connect has no server INFO until it connects.
            let _ = client.flush().await;
            info = client.server_info();
        }
        check_server_version(&info.version)?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.api_timeout)
            // Acks are awaited one batch at a time; keep the client's window well below the
            // level where its backpressure can block a publisher (shared notes §4.5).
            .max_ack_inflight(1024)
            .build(client.clone());
        let wanted = match &config.mirror {
            Some(feed) => mirror_stream_config(&config, feed),
            None => ledger_stream_config(&config),
        };
        let (stream, echoed) = provision_stream(&js, wanted).await?;
        match &config.mirror {
            Some(feed) => verify_mirror_stream(&config, feed, &echoed)?,
            None => verify_ledger_stream(&config, &echoed)?,
        }
        let instance = Uuid::now_v7();
        let writer = Writer {
            instance,
            chain_subject: config.subjects.writer_marker(instance),
            predicted_last: None,
            prev_marker: 0,
            batches: 0,
            stopped: None,
        };
        Ok(JetStreamLog {
            max_payload: info.max_payload,
            client,
            js,
            stream,
            stream_replicas: echoed.num_replicas.max(1),
            config,
            writer: std::sync::Arc::new(Mutex::new(writer)),
            elections: None,
        })
    }

    /// Listens to the server's advisory that the stream has a new leader, so that a writer
    /// waiting out a timeout after losing the old one (`EventLog::leader_elected`) goes on as
    /// soon as the new one is there. For the writer; readers need not.
    pub async fn watch_leader_elections(&mut self) -> Result<(), OpenError> {
        let subject = format!(
            "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{}",
            self.config.stream
        );
        let mut advisories =
            self.client
                .subscribe(subject.clone())
                .await
                .map_err(|e| OpenError::Subscribe {
                    subject,
                    detail: e.to_string(),
                })?;
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let stream = self.config.stream.clone();
        tokio::spawn(async move {
            while futures::StreamExt::next(&mut advisories).await.is_some() {
                tracing::info!(stream = %stream, "the stream has a new leader");
                tx.send_modify(|n| *n += 1);
                if tx.is_closed() {
                    break;
                }
            }
        });
        self.elections = Some(rx);
        Ok(())
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// For the components that create streams and buckets beside the ledger (the processor,
    /// the projectors): the ledger must be kept on as many nodes as they were told
    /// (`--replicas`), since everything they create gets that many copies. Readers need not
    /// know.
    pub fn check_replicas(&self) -> Result<(), OpenError> {
        replicas_match(
            &self.config.stream,
            self.stream_replicas,
            self.config.replicas,
        )
    }

    /// For a mirror: how many messages it is behind the ledger (0 for the ledger itself).
    pub async fn mirror_lag(&self) -> Result<u64, ReadError> {
        if self.config.mirror.is_none() {
            return Ok(0);
        }
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| ReadError::Unavailable(e.to_string()))?;
        Ok(info.mirror.map_or(0, |m| m.lag))
    }

    /// For a mirror: waits until it has copied everything the ledger held when asked (lag 0,
    /// and active), reporting `(copied, lag)` as it goes; gives up when the copy makes no
    /// progress for `stall`. The ledger itself is always caught up.
    pub async fn wait_for_mirror(
        &self,
        stall: Duration,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, ReadError> {
        let mut moved_at = std::time::Instant::now();
        let mut seen = None;
        loop {
            let info = self
                .stream
                .get_info()
                .await
                .map_err(|e| ReadError::Unavailable(e.to_string()))?;
            let last = info.state.last_sequence;
            match info.mirror {
                None => return Ok(last),
                Some(m) if m.lag == 0 && m.active.is_some() => return Ok(last),
                Some(m) => progress(last, m.lag),
            }
            if seen != Some(last) {
                seen = Some(last);
                moved_at = std::time::Instant::now();
            } else if moved_at.elapsed() >= stall {
                return Err(ReadError::Unavailable(format!(
                    "the copy of the ledger in this account ({}) has not moved for {stall:?}, at sequence {last}; is the processor's server reachable, and the account's mirror feed configured (`erp auth`)?",
                    self.config.stream
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Re-reads the stream's last sequence and this writer's last marker. Called before the
    /// first append and after any failed one.
    async fn resync(&self, w: &mut Writer) -> Result<u64, AppendError> {
        let unavailable = |e: &dyn ToString| {
            AppendError::OutcomeUnknown(format!("resynchronising: {}", e.to_string()))
        };
        let info = self.stream.get_info().await.map_err(|e| unavailable(&e))?;
        w.prev_marker = match self
            .stream
            .direct_get_last_for_subject(w.chain_subject.as_str())
            .await
        {
            Ok(msg) => msg.sequence,
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => 0,
            Err(e) => return Err(unavailable(&e)),
        };
        w.predicted_last = Some(info.state.last_sequence);
        Ok(info.state.last_sequence)
    }

    fn check_sizes(&self, sealed: &[SealedEvent]) -> Result<(), AppendError> {
        // Headers and subject take at most about 1 KiB per message.
        let limit = self.max_payload.saturating_sub(1024);
        match sealed.iter().position(|s| s.bytes.len() > limit) {
            Some(i) => Err(AppendError::Invalid(format!(
                "event {i} encodes to {} bytes; the server accepts at most {limit} per event",
                sealed[i].bytes.len()
            ))),
            None => Ok(()),
        }
    }

    async fn send_batch(
        &self,
        w: &Writer,
        predicted_last: u64,
        sealed: &[SealedEvent],
        batch_id: &str,
    ) -> Result<jetstream::context::PublishAckFuture, async_nats::Error> {
        for (i, event) in sealed.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_BATCH_ID, batch_id);
            headers.insert(NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
            if i == 0 {
                headers.insert(
                    NATS_EXPECTED_LAST_SEQUENCE,
                    predicted_last.to_string().as_str(),
                );
            }
            if let Some(expected) = event.expected_subject_seq {
                headers.insert(
                    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    expected.to_string().as_str(),
                );
            }
            let subject = self.config.subjects.full(&event.subject);
            // Non-commit messages go by core publish: with a reply subject the server answers
            // with an empty body, which the JetStream client cannot parse.
            self.client
                .publish_with_headers(subject, headers, Bytes::copy_from_slice(&event.bytes))
                .await?;
        }
        let marker = codec::encode_marker(&WriterMarker {
            instance: *w.instance.as_bytes(),
            batch: w.batches,
            events: sealed.len() as u32,
        })
        .map_err(Box::new)?;
        let mut headers = HeaderMap::new();
        headers.insert(NATS_BATCH_ID, batch_id);
        headers.insert(NATS_BATCH_SEQUENCE, (sealed.len() + 1).to_string().as_str());
        headers.insert(NATS_BATCH_COMMIT, header::NATS_BATCH_COMMIT_FINAL);
        headers.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            w.prev_marker.to_string().as_str(),
        );
        Ok(self
            .js
            .publish_with_headers(w.chain_subject.clone(), headers, Bytes::from(marker))
            .await?)
    }

    /// The first sequence the server stored strictly after recorded time `after`, found with
    /// the stream's own time index (a consumer that starts by time); `None` if every stored
    /// message is at or before it.
    pub async fn first_seq_recorded_after(
        &self,
        after: Timestamp,
    ) -> Result<Option<u64>, ReadError> {
        let unavailable = |e: &dyn std::fmt::Display| ReadError::Unavailable(e.to_string());
        let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(after.micros()) * 1000 + 1000,
        )
        .map_err(|e| unavailable(&e))?;
        let consumer = self
            .stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time },
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(None);
        }
        let mut messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
        match messages.next().await {
            Some(Ok(msg)) => Ok(Some(
                msg.info().map_err(|e| unavailable(&e))?.stream_sequence,
            )),
            Some(Err(e)) => Err(unavailable(&e)),
            None => Ok(None),
        }
    }

    /// The readable events of one subject after `after_seq` and up to `until_seq`, in order,
    /// read as they are asked for (a page of an explanation reads no further than it needs).
    pub async fn subject_events(
        &self,
        subject: &Subject,
        after_seq: u64,
        until_seq: u64,
    ) -> Result<SubjectEvents, ReadError> {
        let unavailable = |e: &dyn std::fmt::Display| ReadError::Unavailable(e.to_string());
        let full = self.config.subjects.full(subject);
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: full,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after_seq + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
        let messages = if consumer.cached_info().num_pending == 0 || after_seq >= until_seq {
            None
        } else {
            Some(consumer.messages().await.map_err(|e| unavailable(&e))?)
        };
        Ok(SubjectEvents {
            messages,
            until_seq,
            space: self.config.subjects.clone(),
            stall: self.config.api_timeout,
        })
    }

    /// Reads and decodes the message at `seq`.
    pub async fn get(&self, seq: u64) -> Result<Option<LogRecord>, ReadError> {
        match self.stream.direct_get(seq).await {
            Ok(msg) => Ok(Some(to_record(
                &self.config.subjects,
                seq,
                &msg.subject,
                &msg.payload,
                msg.time,
            ))),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(ReadError::Unavailable(e.to_string())),
        }
    }
}

/// Turns one stored message into a log record: a writer marker, a decoded event, or, when it
/// is neither, a foreign record (never an error: one stray message must not stop a reader).
fn to_record(
    space: &SubjectSpace,
    seq: u64,
    subject: &str,
    payload: &[u8],
    published: time::OffsetDateTime,
) -> LogRecord {
    let recorded_at = recorded_time(published);
    let hash = EventHash::of(payload);
    let foreign = |reason| {
        LogRecord::Foreign(ForeignRecord {
            seq,
            stored_subject: subject.to_owned(),
            subject: space
                .relative(subject)
                .and_then(|r| Subject::parse_relative(r).ok()),
            recorded_at,
            hash,
            reason,
        })
    };
    if space.is_writer_marker(subject) {
        return match codec::decode_marker(payload) {
            Ok(marker) => LogRecord::Marker {
                seq,
                recorded_at,
                hash,
                events: marker.events,
            },
            Err(error) => foreign(ForeignReason::Undecodable {
                error: error.to_string(),
            }),
        };
    }
    match decode_record(space, seq, subject, payload, published) {
        Ok(event) => LogRecord::Event(event),
        Err(ReadError::SubjectMismatch { claimed, .. }) => {
            foreign(ForeignReason::SubjectMismatch { claimed })
        }
        Err(error) => foreign(ForeignReason::Undecodable {
            error: match error {
                ReadError::Decode { error, .. } => error.to_string(),
                other => other.to_string(),
            },
        }),
    }
}

/// The server's storage time as a ledger timestamp (microseconds).
fn recorded_time(published: time::OffsetDateTime) -> Timestamp {
    let micros = (published.unix_timestamp_nanos() / 1000) as i64;
    Timestamp::from_micros(micros).unwrap_or_else(|| Timestamp::from_micros(0).expect("epoch"))
}

/// Decodes one stored message into a recorded event, checking that it sits on the subject its
/// envelope names.
pub fn decode_record(
    space: &SubjectSpace,
    seq: u64,
    subject: &str,
    payload: &[u8],
    published: time::OffsetDateTime,
) -> Result<RecordedEvent, ReadError> {
    let decoded = codec::decode_envelope(payload).map_err(|error| ReadError::Decode {
        seq,
        subject: subject.into(),
        error,
    })?;
    let claimed = space.full(&decoded.envelope.subject);
    if claimed != subject {
        return Err(ReadError::SubjectMismatch {
            seq,
            stored: subject.into(),
            claimed,
        });
    }
    Ok(RecordedEvent {
        seq,
        recorded_at: recorded_time(published),
        hash: EventHash::of(payload),
        stored_version: decoded.stored_version,
        envelope: decoded.envelope,
    })
}

/// The server's numeric JetStream error code behind a publish error, if it sent one.
fn jetstream_error_code(error: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            return Some(js.error_code().0);
        }
        current = e.source();
    }
    None
}

impl EventLog for JetStreamLog {
    type Cursor = JetStreamCursor;

    async fn send(&self, batch: AppendBatch) -> Result<(Appended, PendingAppend), AppendError> {
        if self.config.mirror.is_some() {
            return Err(AppendError::Invalid(format!(
                "{} here is a read-only copy of the ledger; only the processor appends, to the ledger itself",
                self.config.stream
            )));
        }
        let expected_last_seq = batch.expected_last_seq;
        let sealed = seal_batch(batch)?;
        self.check_sizes(&sealed)?;
        let mut w = self.writer.lock().await;
        if let Some(reason) = &w.stopped {
            return Err(AppendError::FencingBreach(reason.clone()));
        }
        if w.predicted_last.is_none() {
            self.resync(&mut w).await?;
        }
        let predicted_last = expected_last_seq
            .or(w.predicted_last)
            .expect("resynchronised above");
        let batch_id = Uuid::now_v7().simple().to_string();
        let messages = sealed.len() as u64 + 1;
        let predicted_end = predicted_last + messages;
        let ack = match self
            .send_batch(&w, predicted_last, &sealed, &batch_id)
            .await
        {
            Ok(ack) => ack,
            Err(error) => {
                // Part of the batch may be on its way; it cannot commit without its marker.
                w.predicted_last = None;
                return Err(AppendError::OutcomeUnknown(error.to_string()));
            }
        };
        // The next batch is sent on top of this one, before its acknowledgement.
        w.predicted_last = Some(predicted_end);
        w.prev_marker = predicted_end;
        w.batches += 1;
        drop(w);
        let appended = Appended {
            events: sealed
                .into_iter()
                .zip(predicted_last + 1..)
                .map(|(s, seq)| AppendedEvent {
                    seq,
                    hash: s.hash,
                    subject: s.subject,
                })
                .collect(),
            last_seq: predicted_end,
        };
        let writer = self.writer.clone();
        let confirmed = appended.clone();
        let ack_timeout = self.config.ack_timeout;
        let pending = async move {
            let Ok(acked) = tokio::time::timeout(ack_timeout, ack).await else {
                writer.lock().await.predicted_last = None;
                return Err(AppendError::OutcomeUnknown(format!(
                    "no acknowledgement within {ack_timeout:?} (the stream's leader may be gone)"
                )));
            };
            let ack = match acked {
                Ok(ack) => ack,
                Err(error) => {
                    // Any failure may mean another writer moved the stream; re-read before the
                    // next append.
                    writer.lock().await.predicted_last = None;
                    let detail = error.to_string();
                    return Err(match jetstream_error_code(&error) {
                        Some(code) if CONFLICT_CODES.contains(&code) => {
                            AppendError::Conflict { code, detail }
                        }
                        Some(code) => AppendError::Refused { code, detail },
                        None => AppendError::OutcomeUnknown(detail),
                    });
                }
            };
            if ack.sequence != predicted_end || ack.batch_size != Some(messages) {
                let reason = format!(
                    "batch {batch_id} acknowledged at sequence {} with size {:?}; predicted {predicted_end} and {messages}",
                    ack.sequence, ack.batch_size
                );
                tracing::error!(%reason, "fencing breach: another writer is appending to the ledger");
                writer.lock().await.stopped = Some(reason.clone());
                return Err(AppendError::FencingBreach(reason));
            }
            Ok(confirmed)
        };
        Ok((appended, Box::pin(pending)))
    }

    async fn append(&self, batch: AppendBatch) -> Result<Appended, AppendError> {
        let (_, pending) = self.send(batch).await?;
        pending.await
    }

    fn leader_elected(&self) -> impl Future<Output = ()> + Send + 'static {
        let elections = self.elections.clone();
        let mut stream = self.stream.clone();
        async move {
            let Some(mut elections) = elections else {
                return std::future::pending().await;
            };
            elections.borrow_and_update();
            let advisory = async move {
                if elections.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            // The advisory is missed while this client reconnects to another node, so the
            // stream is also probed: answering again after it stopped answering means a
            // leader is back.
            let probe = async move {
                let mut unanswered = false;
                loop {
                    tokio::time::sleep(LEADER_PROBE_EVERY).await;
                    match tokio::time::timeout(LEADER_PROBE_WAIT, stream.info()).await {
                        Ok(Ok(_)) if unanswered => return,
                        Ok(Ok(_)) => {}
                        _ => unanswered = true,
                    }
                }
            };
            tokio::select! {
                () = advisory => {}
                () = probe => {}
            }
        }
    }

    async fn record(&self, seq: u64) -> Result<Option<LogRecord>, ReadError> {
        self.get(seq).await
    }

    fn pipelines(&self) -> bool {
        // What the stream is, not what the caller said it would be.
        self.stream_replicas <= 1
    }

    async fn head(&self, subject: &Subject) -> Result<Option<Head>, ReadError> {
        let full = self.config.subjects.full(subject);
        match self.stream.direct_get_last_for_subject(full.as_str()).await {
            Ok(msg) => Ok(Some(Head {
                seq: msg.sequence,
                hash: EventHash::of(&msg.payload),
            })),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(ReadError::Unavailable(e.to_string())),
        }
    }

    async fn read_subject(&self, subject: &Subject) -> Result<Vec<RecordedEvent>, ReadError> {
        let Some(head) = self.head(subject).await? else {
            return Ok(Vec::new());
        };
        let mut read = self.subject_events(subject, 0, head.seq).await?;
        let mut events = Vec::new();
        while let Some(event) = read.next().await? {
            events.push(event);
        }
        Ok(events)
    }

    async fn read(&self, from: ReadFrom, until: ReadUntil) -> Result<JetStreamCursor, ReadError> {
        let last = self.last_sequence().await?;
        let target = match until {
            ReadUntil::CaughtUp => Some(last),
            ReadUntil::Sequence(n) => Some(n.min(last)),
            ReadUntil::Follow => None,
        };
        let deliver_policy = match from {
            ReadFrom::Start | ReadFrom::Sequence(0) => consumer::DeliverPolicy::All,
            ReadFrom::Sequence(start_sequence) => {
                consumer::DeliverPolicy::ByStartSequence { start_sequence }
            }
            ReadFrom::Time(t) => consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(t.micros()) * 1000,
                )
                .map_err(|e| ReadError::Unavailable(e.to_string()))?,
            },
        };
        let start_seq = match from {
            ReadFrom::Sequence(s) => s.max(1),
            _ => 1,
        };
        if target.is_some_and(|t| t == 0 || t < start_seq) {
            return Ok(JetStreamCursor::empty(self.config.subjects.clone()));
        }
        let consumer = self
            .stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| ReadError::Unavailable(e.to_string()))?;
        tracing::debug!(stream = %self.config.stream, ?from, ?target, pending = consumer.cached_info().num_pending, "reading the log");
        if target.is_some() && consumer.cached_info().num_pending == 0 {
            return Ok(JetStreamCursor::empty(self.config.subjects.clone()));
        }
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ReadError::Unavailable(e.to_string()))?;
        Ok(JetStreamCursor {
            messages: Some(messages),
            target,
            at_target: false,
            held: None,
            stream: target.map(|_| self.stream.clone()),
            space: self.config.subjects.clone(),
            stall: self.config.api_timeout * CURSOR_STALL_API_TIMEOUTS,
        })
    }

    async fn last_sequence(&self) -> Result<u64, ReadError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| ReadError::Unavailable(e.to_string()))?;
        Ok(info.state.last_sequence)
    }
}

/// The events of one subject, read on demand (`JetStreamLog::subject_events`).
pub struct SubjectEvents {
    messages: Option<consumer::pull::Ordered>,
    until_seq: u64,
    space: SubjectSpace,
    /// How long to wait for the next message while more are known to be there. An ordered
    /// consumer whose stream loses its leader can otherwise wait for ever, and the processor
    /// reads subjects on its command path (an archived order called back).
    stall: Duration,
}

impl std::fmt::Debug for SubjectEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectEvents")
            .field("open", &self.messages.is_some())
            .field("until_seq", &self.until_seq)
            .finish()
    }
}

impl SubjectEvents {
    /// The next readable event, `None` after `until_seq` or at the subject's end.
    pub async fn next(&mut self) -> Result<Option<RecordedEvent>, ReadError> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                return Ok(None);
            };
            let Ok(next) = tokio::time::timeout(self.stall, messages.next()).await else {
                self.messages = None;
                return Err(ReadError::Unavailable(format!(
                    "no event of the subject arrived within {:?} although more are stored (the stream may be electing a leader)",
                    self.stall
                )));
            };
            let Some(msg) = next else {
                self.messages = None;
                return Ok(None);
            };
            let msg = msg.map_err(|e| ReadError::Unavailable(e.to_string()))?;
            let info = msg
                .info()
                .map_err(|e| ReadError::Unavailable(e.to_string()))?;
            let (seq, pending, published) = (info.stream_sequence, info.pending, info.published);
            if seq > self.until_seq {
                self.messages = None;
                return Ok(None);
            }
            if pending == 0 || seq == self.until_seq {
                self.messages = None;
            }
            // A message that is not a readable event is foreign: never part of a subject's
            // history.
            if let Ok(event) =
                decode_record(&self.space, seq, &msg.subject, &msg.payload, published)
            {
                return Ok(Some(event));
            }
        }
    }
}

/// How many API timeouts a bounded read may go without a message before it fails: longer
/// than one call, as a message of a long read may wait behind the reader's own work.
const CURSOR_STALL_API_TIMEOUTS: u32 = 4;

/// A read over an ordered push consumer: the fastest way to stream a JetStream log in order.
pub struct JetStreamCursor {
    messages: Option<consumer::push::Ordered>,
    /// The last sequence a bounded read yields (`None`: follow).
    target: Option<u64>,
    /// The bound was reached: `next` yields nothing until `extend` moves it.
    at_target: bool,
    /// A message past the bound, kept for when the bound moves.
    held: Option<LogRecord>,
    /// To look up the stream's end when the bound moves.
    stream: Option<jetstream::stream::Stream>,
    space: SubjectSpace,
    /// A bounded read gives up when no message arrives for this long while its bound is not
    /// reached (a stream that lost its leader can leave an ordered consumer waiting for ever);
    /// a read that follows the log waits as long as the log is quiet.
    stall: Duration,
}

impl std::fmt::Debug for JetStreamCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamCursor")
            .field("open", &self.messages.is_some())
            .field("target", &self.target)
            .finish()
    }
}

impl JetStreamCursor {
    fn empty(space: SubjectSpace) -> JetStreamCursor {
        JetStreamCursor {
            messages: None,
            target: None,
            at_target: true,
            held: None,
            stream: None,
            space,
            stall: Duration::MAX,
        }
    }
}

impl LogCursor for JetStreamCursor {
    async fn next(&mut self) -> Option<Result<LogRecord, ReadError>> {
        if self.at_target {
            return None;
        }
        if let Some(record) = self
            .held
            .take_if(|r| self.target.is_none_or(|t| r.seq() <= t))
        {
            self.at_target = self.target == Some(record.seq());
            return Some(Ok(record));
        }
        let messages = self.messages.as_mut()?;
        let next = match self.target {
            Some(target) => match tokio::time::timeout(self.stall, messages.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return Some(Err(ReadError::Unavailable(format!(
                        "no message of the log arrived for {:?} while reading up to sequence {target}; is its server up and its stream led?",
                        self.stall
                    ))));
                }
            },
            None => messages.next().await,
        };
        let msg = match next? {
            Ok(msg) => msg,
            Err(e) => return Some(Err(ReadError::Unavailable(e.to_string()))),
        };
        let info = match msg.info() {
            Ok(info) => (info.stream_sequence, info.published),
            Err(e) => return Some(Err(ReadError::Unavailable(e.to_string()))),
        };
        let (seq, published) = info;
        let record = to_record(&self.space, seq, &msg.subject, &msg.payload, published);
        match self.target {
            Some(t) if seq > t => {
                self.at_target = true;
                self.held = Some(record);
                None
            }
            Some(t) => {
                self.at_target = seq == t;
                Some(Ok(record))
            }
            None => Some(Ok(record)),
        }
    }

    async fn extend(&mut self) -> Result<Extended, ReadError> {
        let (Some(stream), Some(target)) = (self.stream.as_mut(), self.target) else {
            return Ok(Extended::Never);
        };
        if self.messages.is_none() {
            return Ok(Extended::Never);
        }
        let last = stream
            .info()
            .await
            .map_err(|e| ReadError::Unavailable(e.to_string()))?
            .state
            .last_sequence;
        if last <= target {
            return Ok(Extended::Unchanged);
        }
        self.target = Some(last);
        self.at_target = false;
        Ok(Extended::Grown)
    }
}
