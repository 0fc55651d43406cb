//! The event log: what every writer and reader of the ledger relies on, independent of where
//! the log lives. `crate::jetstream::JetStreamLog` is the product's implementation.

use std::future::Future;

use crate::codec::CodecError;
use crate::envelope::{EventDraft, EventHash, RecordedEvent};
use crate::subject::Subject;
use crate::values::Timestamp;

/// Most events in one append. JetStream takes at most 1000 messages per atomic batch, and
/// every batch ends with the writer's chain marker.
pub const BATCH_EVENTS_MAX: usize = 999;

/// The last event of a subject: its stream sequence and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: EventHash,
}

impl Head {
    /// The head of a subject that has no events yet.
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: EventHash::GENESIS,
    };
}

/// What the caller's decision assumed about a subject it writes: that the subject's last event
/// is `head` (`Head::EMPTY` for a new subject). If another writer moved the subject on, the
/// whole append fails with `AppendError::Conflict` and nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub subject: Subject,
    pub head: Head,
}

/// Events appended together, atomically: all are stored or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendBatch {
    /// The stream's last sequence the caller's decisions are based on: the append fails with
    /// `Conflict` if anything else was appended since. A caller that decides from a model of
    /// the whole log (the processor) passes the last sequence it applied; `None` leaves the
    /// stream-wide fence to the writer's own record of its appends.
    pub expected_last_seq: Option<u64>,
    /// Exactly one per subject that `events` write.
    pub expectations: Vec<Expectation>,
    /// In order; 1 to `BATCH_EVENTS_MAX`.
    pub events: Vec<EventDraft>,
}

/// Where an appended event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedEvent {
    pub seq: u64,
    pub hash: EventHash,
    pub subject: Subject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// One per event, in the order given.
    pub events: Vec<AppendedEvent>,
    /// The stream's last sequence after the append (the writer's marker follows the events).
    pub last_seq: u64,
}

impl Appended {
    /// The new head of each written subject.
    pub fn heads(&self) -> impl Iterator<Item = (&Subject, Head)> {
        self.events.iter().map(|e| {
            (
                &e.subject,
                Head {
                    seq: e.seq,
                    hash: e.hash,
                },
            )
        })
    }
}

/// Why an append did not happen. Every variant except `OutcomeUnknown` guarantees that
/// nothing of the batch was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("invalid batch: {0}")]
    Invalid(String),
    #[error("could not encode an event: {0}")]
    Encode(#[from] CodecError),
    /// A subject moved on since the decision, or another writer appended to the stream since
    /// this one's last batch. Re-read the subjects, decide again, retry.
    #[error("conflict (JetStream error {code}): {detail}")]
    Conflict { code: u64, detail: String },
    /// An acknowledgement contradicted this writer's prediction: another writer is active in a
    /// way the expected-sequence checks did not stop. The writer refuses all further appends.
    #[error("fencing breach, writer stopped: {0}")]
    FencingBreach(String),
    /// The server refused the batch for another reason (storage full, limits).
    #[error("refused by the server (JetStream error {code}): {detail}")]
    Refused { code: u64, detail: String },
    /// No answer (timeout, connection lost): the batch may or may not be stored. Read the log
    /// (for example the command's outcome subject) to find out; the writer resynchronises
    /// before its next append.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
}

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("log unavailable: {0}")]
    Unavailable(String),
    #[error("event at sequence {seq} on `{subject}` does not decode: {error}")]
    Decode {
        seq: u64,
        subject: String,
        error: CodecError,
    },
    #[error("event at sequence {seq} is stored on `{stored}` but its envelope names `{claimed}`")]
    SubjectMismatch {
        seq: u64,
        stored: String,
        claimed: String,
    },
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    Start,
    /// From this stream sequence on (1 is the first).
    Sequence(u64),
    /// From the first event recorded at or after this time.
    Time(Timestamp),
}

/// Where a read ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadUntil {
    /// At the stream's last sequence as of the start of the read.
    CaughtUp,
    /// At this sequence (inclusive), or at the stream's end if that comes first.
    Sequence(u64),
    /// Never: keep delivering new events as they are appended (a subscription).
    Follow,
}

/// Why a stored message is not one of the writer's: it is never applied by anyone, only
/// reported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ForeignReason {
    /// The bytes are not an envelope (or a marker) this build reads.
    Undecodable { error: String },
    /// It decodes, but is stored on another subject than its envelope names.
    SubjectMismatch { claimed: String },
    /// It decodes, but no writer's batch marker commits it.
    OutsideBatch,
    /// A batch marker whose batch is not whole: it claims `claimed` events, but the records
    /// before it are not that many readable events.
    BrokenBatch { claimed: u32 },
}

impl std::fmt::Display for ForeignReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForeignReason::Undecodable { error } => write!(f, "does not decode ({error})"),
            ForeignReason::SubjectMismatch { claimed } => {
                write!(f, "its envelope names another subject, `{claimed}`")
            }
            ForeignReason::OutsideBatch => f.write_str("no writer's batch commits it"),
            ForeignReason::BrokenBatch { claimed } => write!(
                f,
                "a batch marker for {claimed} events that are not all there and readable"
            ),
        }
    }
}

/// A stored message the ledger's writer did not write (or no longer readable as what it
/// wrote): skipped by every reader, reported with its sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignRecord {
    pub seq: u64,
    /// The subject it is stored on: as stored, or, for a readable event, its relative subject
    /// (empty for a marker).
    pub stored_subject: String,
    /// That subject as a ledger subject, when it is one: the writer must still expect it as
    /// the subject's last sequence (JetStream counts it), though nobody applies it.
    pub subject: Option<Subject>,
    pub recorded_at: Timestamp,
    /// SHA-256 of the stored bytes (for digests over the whole log).
    pub hash: EventHash,
    pub reason: ForeignReason,
}

/// One stored message, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    Event(RecordedEvent),
    /// A writer's batch commit marker: not an event, but it holds a sequence, so a reader that
    /// checks for gaps sees every sequence.
    Marker {
        seq: u64,
        /// When the log stored it (the batch's commit time).
        recorded_at: Timestamp,
        /// SHA-256 of the stored bytes (for digests over the whole log).
        hash: EventHash,
        /// Events the writer committed with this marker (the records just before it).
        events: u32,
    },
    /// A message that is not an event or a marker of this ledger (see `ForeignRecord`). Readers
    /// get it as a record, not as an error, so that one stray message never stops them.
    Foreign(ForeignRecord),
}

impl LogRecord {
    /// When the log stored the record (the server's clock).
    pub fn recorded_at(&self) -> Timestamp {
        match self {
            LogRecord::Event(e) => e.recorded_at,
            LogRecord::Marker { recorded_at, .. } => *recorded_at,
            LogRecord::Foreign(f) => f.recorded_at,
        }
    }

    /// SHA-256 of the stored bytes.
    pub fn hash(&self) -> EventHash {
        match self {
            LogRecord::Event(e) => e.hash,
            LogRecord::Marker { hash, .. } => *hash,
            LogRecord::Foreign(f) => f.hash,
        }
    }

    pub fn seq(&self) -> u64 {
        match self {
            LogRecord::Event(e) => e.seq,
            LogRecord::Marker { seq, .. } => *seq,
            LogRecord::Foreign(f) => f.seq,
        }
    }
}

/// A read in progress.
pub trait LogCursor: Send {
    /// The next record, `None` at the end of a bounded read.
    fn next(&mut self) -> impl Future<Output = Option<Result<LogRecord, ReadError>>> + Send;

    /// After `next` returned `None`: moves the bound of the read to the log's end as it is now,
    /// so that `next` yields what was stored since the read began. A log whose appends become
    /// visible at once, whole, never needs this (`Extended::Never`, the default); JetStream
    /// stores an atomic batch message by message, so a read bounded by the stream's last
    /// sequence can end inside a batch being stored.
    fn extend(&mut self) -> impl Future<Output = Result<Extended, ReadError>> + Send {
        async { Ok(Extended::Never) }
    }
}

/// What `LogCursor::extend` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extended {
    /// The log grew: `next` yields more.
    Grown,
    /// The log has not grown since the read began; it may later.
    Unchanged,
    /// This read cannot grow: what it ended with is the whole of what was stored.
    Never,
}

/// An append that was sent and is waiting for its acknowledgement.
pub type PendingAppend =
    std::pin::Pin<Box<dyn Future<Output = Result<Appended, AppendError>> + Send>>;

/// An append-only, hash-chained log of events.
pub trait EventLog: Send + Sync {
    type Cursor: LogCursor;

    /// Sends the batch and returns, without waiting for its acknowledgement, where its events
    /// will land if it is stored (sequences from `expected_last_seq`, which the caller must
    /// give, and hashes) and the acknowledgement to await. Several sent batches may be in
    /// flight; they are stored in the order sent, and each one's checks see the ones before.
    /// If one fails, the ones sent after it fail too (their expected sequences no longer
    /// hold), unless it was in fact stored (an unknown outcome): await every one before
    /// sending again after a failure.
    fn send(
        &self,
        batch: AppendBatch,
    ) -> impl Future<Output = Result<(Appended, PendingAppend), AppendError>> + Send;

    /// Appends the batch atomically, checking every expectation. Returns the sequences and
    /// hashes assigned, in order.
    fn append(
        &self,
        batch: AppendBatch,
    ) -> impl Future<Output = Result<Appended, AppendError>> + Send;

    /// Resolves when the log's storage gets a new leader after the call (a replicated
    /// JetStream stream's election; never for a log without leaders). A writer catching up
    /// after a lost leader tries again at once instead of waiting out a timeout.
    fn leader_elected(&self) -> impl Future<Output = ()> + Send + 'static {
        std::future::pending()
    }

    /// Whether several batches may be in flight with per-subject checks (not on a replicated
    /// stream, where a subject written by a batch not yet applied cannot be checked).
    fn pipelines(&self) -> bool {
        true
    }

    /// The last event of a subject, `None` if it has none.
    fn head(
        &self,
        subject: &Subject,
    ) -> impl Future<Output = Result<Option<Head>, ReadError>> + Send;

    /// Every readable event of one subject, in order (unreadable messages are skipped; a
    /// reader that must know which events a batch committed walks the whole log instead).
    fn read_subject(
        &self,
        subject: &Subject,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, ReadError>> + Send;

    /// Reads the whole log in order.
    fn read(
        &self,
        from: ReadFrom,
        until: ReadUntil,
    ) -> impl Future<Output = Result<Self::Cursor, ReadError>> + Send;

    /// The stream's last sequence (0 when empty).
    fn last_sequence(&self) -> impl Future<Output = Result<u64, ReadError>> + Send;

    /// The record stored at `seq`, `None` if there is none (by default through a read from
    /// there; a log that can fetch one message directly does).
    fn record(
        &self,
        seq: u64,
    ) -> impl Future<Output = Result<Option<LogRecord>, ReadError>> + Send {
        async move {
            let mut cursor = self
                .read(ReadFrom::Sequence(seq), ReadUntil::CaughtUp)
                .await?;
            match cursor.next().await {
                Some(Ok(record)) if record.seq() == seq => Ok(Some(record)),
                Some(Ok(_)) | None => Ok(None),
                Some(Err(e)) => Err(e),
            }
        }
    }
}

/// An event ready to store: its final envelope bytes and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEvent {
    pub subject: Subject,
    pub bytes: Vec<u8>,
    pub hash: EventHash,
    /// Set on the first event of each subject in the batch: the subject's expected last
    /// sequence. Later events of the same subject carry none (JetStream refuses a second check
    /// on one subject inside a batch).
    pub expected_subject_seq: Option<u64>,
}

/// Validates a batch, chains every event to the previous one on its subject, and encodes it.
/// Pure: the same batch always seals to the same bytes.
pub fn seal_batch(batch: AppendBatch) -> Result<Vec<SealedEvent>, AppendError> {
    use std::collections::HashMap;

    let AppendBatch {
        expectations,
        events,
        ..
    } = batch;
    if events.is_empty() {
        return Err(AppendError::Invalid(
            "a batch needs at least one event".into(),
        ));
    }
    if events.len() > BATCH_EVENTS_MAX {
        return Err(AppendError::Invalid(format!(
            "{} events in one batch; at most {BATCH_EVENTS_MAX} fit in one atomic append",
            events.len()
        )));
    }
    // Per subject: (expected seq still to be checked, hash of the latest event so far).
    let mut chain: HashMap<Subject, (Option<u64>, EventHash)> =
        HashMap::with_capacity(expectations.len());
    for e in expectations {
        if e.head.seq == 0 && e.head.hash != EventHash::GENESIS {
            return Err(AppendError::Invalid(format!(
                "expectation for `{}`: a subject with no events has the genesis hash",
                e.subject
            )));
        }
        if chain
            .insert(e.subject.clone(), (Some(e.head.seq), e.head.hash))
            .is_some()
        {
            return Err(AppendError::Invalid(format!(
                "two expectations for `{}`",
                e.subject
            )));
        }
    }
    let mut sealed = Vec::with_capacity(events.len());
    for draft in events {
        let Some((expected, prev_hash)) = chain.get_mut(&draft.subject) else {
            return Err(AppendError::Invalid(format!(
                "event {} writes `{}` without an expectation for it",
                draft.event.event_type().name(),
                draft.subject
            )));
        };
        let subject = draft.subject.clone();
        let envelope = crate::envelope::Envelope::from_draft(draft, *prev_hash);
        let bytes = crate::codec::encode_envelope(&envelope)?;
        let hash = EventHash::of(&bytes);
        *prev_hash = hash;
        sealed.push(SealedEvent {
            subject,
            bytes,
            hash,
            expected_subject_seq: expected.take(),
        });
    }
    if let Some((subject, _)) = chain.iter().find(|(_, (expected, _))| expected.is_some()) {
        return Err(AppendError::Invalid(format!(
            "expectation for `{subject}`, which no event in the batch writes"
        )));
    }
    Ok(sealed)
}
