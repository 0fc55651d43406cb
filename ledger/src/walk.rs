//! The one way to read the ledger in order: every reader (the processor's recovery, the
//! projectors, replay, verify, the journal) walks it with `Walker`.
//!
//! A walk checks that sequences follow each other (nothing removed), decodes every message,
//! groups events into the batches the writer committed, and optionally verifies every
//! subject's hash chain. It yields two things:
//! - `Walked::Batch`: the events of one writer batch, in order, with the marker that commits
//!   them; these are the ledger's facts;
//! - `Walked::Foreign`: a stored message the writer did not write (it does not decode, sits on
//!   the wrong subject, or no marker commits it). It is never applied; readers report it and
//!   go on. One stray message therefore never halts a reader.
//!
//! Why framing by markers works: the writer appends each batch atomically, its events followed
//! by its marker (`<prefix>.w.<instance>`, counting them), so a batch is always stored whole
//! and contiguous. Whatever lies between one marker and the events the next marker counts was
//! written by someone else.
//!
//! The end of a bounded read needs care: JetStream makes a stored batch visible message by
//! message, so a read bounded by the stream's last sequence, taken while a batch is being
//! stored, can end between its events and its marker. A walk that ends with events after the
//! last marker therefore reads on (`LogCursor::extend`) while the log grows, and calls that
//! tail foreign only once the log has stood still for a while (`TAIL_SETTLE`): a batch being
//! stored is finished within milliseconds; a tail that stays unterminated was written by
//! someone else.

use std::collections::VecDeque;

use crate::chain::{ChainBreak, ChainVerifier};
use crate::envelope::{EventHash, RecordedEvent};
use crate::log::{
    EventLog, Extended, ForeignReason, ForeignRecord, LogCursor, LogRecord, ReadError, ReadFrom,
    ReadUntil,
};
use crate::values::Timestamp;

/// A writer's batch commit marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMarker {
    pub seq: u64,
    pub recorded_at: Timestamp,
    pub hash: EventHash,
}

/// The events of one committed batch and the marker that commits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// In stream order; may be empty (a marker committing no events).
    pub events: Vec<RecordedEvent>,
    pub marker: BatchMarker,
}

/// What a walk yields, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walked {
    Batch(Batch),
    Foreign(ForeignRecord),
}

impl Walked {
    /// The last sequence this item covers (a batch's marker).
    pub fn last_seq(&self) -> u64 {
        match self {
            Walked::Batch(b) => b.marker.seq,
            Walked::Foreign(f) => f.seq,
        }
    }
}

/// Why a walk stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("reading the ledger: {0}")]
    Read(#[from] ReadError),
    #[error("sequence {expected} is missing: the next stored message is {found}")]
    Gap { expected: u64, found: u64 },
    #[error("the log ended at sequence {found}, before sequence {expected}")]
    Truncated { expected: u64, found: u64 },
    #[error("{0}")]
    Chain(#[from] ChainBreak),
}

/// Groups records into batches, synchronously: feed records in stream order with `push`, take
/// what is complete with `pop`, and call `end_of_log` when no record can follow (the end of a
/// bounded read), so that an uncommitted tail is reported as foreign.
#[derive(Debug, Default)]
pub struct Framer {
    /// Records since the last marker: events (maybe a batch) and foreign records.
    pending: Vec<LogRecord>,
    ready: VecDeque<Walked>,
    chain: Option<ChainVerifier>,
}

impl Framer {
    /// A framer that also verifies every subject's hash chain with `chain`.
    pub fn with_chain(chain: ChainVerifier) -> Framer {
        Framer {
            chain: Some(chain),
            ..Framer::default()
        }
    }

    pub fn chain(&self) -> Option<&ChainVerifier> {
        self.chain.as_ref()
    }

    /// Takes the next one record. A marker completes a batch (or shows that what precedes it
    /// is foreign); events wait for their marker.
    pub fn push(&mut self, record: LogRecord) -> Result<(), ChainBreak> {
        match record {
            LogRecord::Event(_) | LogRecord::Foreign(_) => {
                self.pending.push(record);
                Ok(())
            }
            LogRecord::Marker {
                seq,
                recorded_at,
                hash,
                events,
            } => {
                let marker = BatchMarker {
                    seq,
                    recorded_at,
                    hash,
                };
                self.commit(marker, events)
            }
        }
    }

    fn commit(&mut self, marker: BatchMarker, count: u32) -> Result<(), ChainBreak> {
        let count = count as usize;
        let whole = count <= self.pending.len()
            && self.pending[self.pending.len() - count..]
                .iter()
                .all(|r| matches!(r, LogRecord::Event(_)));
        if !whole {
            // Not a batch this writer committed: everything since the last marker, and the
            // marker itself, is foreign.
            self.flush_foreign(ForeignReason::OutsideBatch);
            self.ready.push_back(Walked::Foreign(ForeignRecord {
                seq: marker.seq,
                stored_subject: String::new(),
                subject: None,
                recorded_at: marker.recorded_at,
                hash: marker.hash,
                reason: ForeignReason::BrokenBatch {
                    claimed: count as u32,
                },
            }));
            return Ok(());
        }
        let batch: Vec<LogRecord> = self.pending.split_off(self.pending.len() - count);
        self.flush_foreign(ForeignReason::OutsideBatch);
        let mut events = Vec::with_capacity(batch.len());
        for record in batch {
            let LogRecord::Event(event) = record else {
                unreachable!("checked above: the batch holds events only");
            };
            if let Some(chain) = self.chain.as_mut() {
                chain.check(&event)?;
            }
            events.push(event);
        }
        self.ready
            .push_back(Walked::Batch(Batch { events, marker }));
        Ok(())
    }

    /// Everything pending becomes foreign (events for `reason`; foreign records keep theirs).
    fn flush_foreign(&mut self, reason: ForeignReason) {
        for record in self.pending.drain(..) {
            let foreign = match record {
                LogRecord::Foreign(f) => f,
                LogRecord::Event(e) => ForeignRecord {
                    seq: e.seq,
                    stored_subject: e.envelope.subject.relative(),
                    subject: Some(e.envelope.subject.clone()),
                    recorded_at: e.recorded_at,
                    hash: e.hash,
                    reason: reason.clone(),
                },
                LogRecord::Marker { .. } => unreachable!("markers are never pending"),
            };
            self.ready.push_back(Walked::Foreign(foreign));
        }
    }

    /// No record follows: an uncommitted tail is foreign (a batch is stored whole, marker
    /// included, so a real one cannot be cut off at the end of what was stored).
    pub fn end_of_log(&mut self) {
        self.flush_foreign(ForeignReason::OutsideBatch);
    }

    /// The next complete item, if any.
    pub fn pop(&mut self) -> Option<Walked> {
        self.ready.pop_front()
    }

    /// Records read but not yet framed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether events wait for a marker (the tail may be a batch still being stored).
    pub fn awaits_marker(&self) -> bool {
        self.pending
            .iter()
            .any(|r| matches!(r, LogRecord::Event(_)))
    }
}

/// How long, in all, a walk that ends with unterminated events waits for the log to grow
/// before it calls them foreign: the pauses between looks at the log's end.
pub const TAIL_SETTLE: [std::time::Duration; 7] = {
    use std::time::Duration;
    [
        Duration::from_millis(0),
        Duration::from_millis(10),
        Duration::from_millis(20),
        Duration::from_millis(50),
        Duration::from_millis(100),
        Duration::from_millis(300),
        Duration::from_millis(1000),
    ]
};

/// Where a walk ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkUntil {
    /// At the stream's end as of the start of the walk.
    CaughtUp,
    /// Once sequence `n` has been framed: the batch holding `n` is read to its marker, so an
    /// item may reach past `n` (callers that stop at `n` look at sequences). The log must
    /// reach `n`.
    Sequence(u64),
    /// Never: keep yielding as the log grows.
    Follow,
}

/// An ordered, checked read of the log.
#[derive(Debug)]
pub struct Walker<C> {
    cursor: Option<C>,
    framer: Framer,
    next_seq: u64,
    until: WalkUntil,
}

impl<C: LogCursor> Walker<C> {
    /// Walks `cursor`, which must deliver the log from `from` on. `chain`: verify hash chains,
    /// continuing from that verifier's heads.
    pub fn new(cursor: C, from: u64, until: WalkUntil, chain: Option<ChainVerifier>) -> Walker<C> {
        Walker {
            cursor: Some(cursor),
            framer: Framer {
                chain,
                ..Framer::default()
            },
            next_seq: from.max(1),
            until,
        }
    }

    /// The chain verifier, with every batch yielded so far checked in.
    pub fn chain(&self) -> Option<&ChainVerifier> {
        self.framer.chain()
    }

    pub fn into_chain(self) -> Option<ChainVerifier> {
        self.framer.chain
    }

    /// The sequence the walk reads next.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The next batch or foreign record; `None` at the end of a bounded walk. Cancel-safe: it
    /// waits only for the cursor, and a record taken from it is framed before anything else
    /// can happen.
    pub async fn next(&mut self) -> Option<Result<Walked, WalkError>> {
        loop {
            if let Some(item) = self.framer.pop() {
                return Some(Ok(item));
            }
            if let WalkUntil::Sequence(n) = self.until
                && self.next_seq > n
                && self.framer.pending() == 0
            {
                self.cursor = None;
            }
            let cursor = self.cursor.as_mut()?;
            match cursor.next().await {
                None => {
                    if self.framer.awaits_marker() && self.until != WalkUntil::Follow {
                        match self.settle().await {
                            Ok(true) => {
                                // Read on only to the end of the batch the read ended in: a
                                // walk to the end must end even while the log keeps growing.
                                if self.until == WalkUntil::CaughtUp {
                                    self.until = WalkUntil::Sequence(self.next_seq - 1);
                                }
                                continue;
                            }
                            Ok(false) => {}
                            Err(e) => return Some(Err(e.into())),
                        }
                    }
                    self.cursor = None;
                    self.framer.end_of_log();
                    if let WalkUntil::Sequence(n) = self.until
                        && self.next_seq <= n
                    {
                        return Some(Err(WalkError::Truncated {
                            expected: n,
                            found: self.next_seq - 1,
                        }));
                    }
                    return self.framer.pop().map(Ok);
                }
                Some(Err(e)) => return Some(Err(e.into())),
                Some(Ok(record)) => {
                    let seq = record.seq();
                    if seq != self.next_seq {
                        return Some(Err(WalkError::Gap {
                            expected: self.next_seq,
                            found: seq,
                        }));
                    }
                    self.next_seq += 1;
                    if let Err(e) = self.framer.push(record) {
                        return Some(Err(e.into()));
                    }
                }
            }
        }
    }

    /// At the end of a bounded read with events after the last marker: true once the log has
    /// grown (read on), false if it stood still through every pause of `TAIL_SETTLE`.
    /// Cancel-safe: the cursor's bound only moves forward, and a later call looks again.
    async fn settle(&mut self) -> Result<bool, ReadError> {
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(false);
        };
        for pause in TAIL_SETTLE {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            match cursor.extend().await? {
                Extended::Grown => {
                    tracing::debug!(
                        next_seq = self.next_seq,
                        "the read ended inside a batch being stored: reading on to its marker"
                    );
                    return Ok(true);
                }
                Extended::Unchanged => {}
                Extended::Never => return Ok(false),
            }
        }
        Ok(false)
    }
}

/// Opens a walk of `log` from sequence `from`.
pub async fn walk<L: EventLog>(
    log: &L,
    from: u64,
    until: WalkUntil,
    chain: Option<ChainVerifier>,
) -> Result<Walker<L::Cursor>, ReadError> {
    let read_until = match until {
        // Read on to the stream's end: the batch holding `n` may end after it.
        WalkUntil::CaughtUp | WalkUntil::Sequence(_) => ReadUntil::CaughtUp,
        WalkUntil::Follow => ReadUntil::Follow,
    };
    let cursor = log
        .read(ReadFrom::Sequence(from.max(1)), read_until)
        .await?;
    Ok(Walker::new(cursor, from, until, chain))
}

#[cfg(test)]
mod tests {
    //! Goal: the framer reports exactly the records no marker commits as foreign, keeps every
    //! committed batch, and never loses or reorders a sequence.
    use super::*;
    use crate::envelope::{Envelope, EventDraft};
    use crate::events::{Event, LocationDefined, LocationKind};
    use crate::subject::Subject;
    use crate::values::{Actor, ActorId, EntityId, LocationId, Role};

    pub(super) fn event(seq: u64) -> LogRecord {
        let location = LocationId::new(format!("L{seq}")).unwrap();
        let draft = EventDraft {
            event_id: uuid::Uuid::from_u128(seq as u128),
            subject: Subject::Location(location.clone()),
            command_id: uuid::Uuid::nil(),
            correlation_id: uuid::Uuid::nil(),
            actor: Actor {
                id: ActorId::new("t").unwrap(),
                role: Role::new("admin").unwrap(),
            },
            legal_entity: EntityId::new("UK01").unwrap(),
            effective_at: Timestamp::from_micros(0).unwrap(),
            event: Event::LocationDefined(LocationDefined {
                location,
                name: String::new(),
                kind: LocationKind::Warehouse,
                region: "UK".into(),
                capacity: None,
                routing_priority: 1,
            }),
        };
        let envelope = Envelope::from_draft(draft, EventHash::GENESIS);
        let bytes = crate::codec::encode_envelope(&envelope).unwrap();
        LogRecord::Event(RecordedEvent {
            seq,
            recorded_at: Timestamp::from_micros(seq as i64).unwrap(),
            hash: EventHash::of(&bytes),
            stored_version: 1,
            envelope,
        })
    }

    pub(super) fn marker(seq: u64, events: u32) -> LogRecord {
        LogRecord::Marker {
            seq,
            recorded_at: Timestamp::from_micros(seq as i64).unwrap(),
            hash: EventHash::of(&seq.to_be_bytes()),
            events,
        }
    }

    fn garbage(seq: u64) -> LogRecord {
        LogRecord::Foreign(ForeignRecord {
            seq,
            stored_subject: "led.sku.X".into(),
            subject: None,
            recorded_at: Timestamp::from_micros(seq as i64).unwrap(),
            hash: EventHash::of(b"x"),
            reason: ForeignReason::Undecodable {
                error: "test".into(),
            },
        })
    }

    /// (batches as their event sequences, foreign sequences) after framing `records`.
    fn frame(records: Vec<LogRecord>) -> (Vec<Vec<u64>>, Vec<u64>) {
        let mut framer = Framer::with_chain(ChainVerifier::new());
        let mut seen = Vec::new();
        for r in records {
            framer.push(r).unwrap();
        }
        framer.end_of_log();
        let (mut batches, mut foreign) = (Vec::new(), Vec::new());
        while let Some(item) = framer.pop() {
            seen.push(item.last_seq());
            match item {
                Walked::Batch(b) => batches.push(b.events.iter().map(|e| e.seq).collect()),
                Walked::Foreign(f) => foreign.push(f.seq),
            }
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
        (batches, foreign)
    }

    #[test]
    fn stray_messages_between_batches_are_foreign_and_batches_are_kept() {
        let (batches, foreign) = frame(vec![
            event(1),
            event(2),
            marker(3, 2),
            garbage(4),
            event(5), // decodes, but no marker counts it
            event(6),
            marker(7, 1),
            event(8), // an uncommitted tail
        ]);
        assert_eq!(batches, vec![vec![1, 2], vec![6]]);
        assert_eq!(foreign, vec![4, 5, 8]);
    }

    #[test]
    fn a_marker_claiming_more_than_is_there_is_foreign_with_what_precedes_it() {
        let (batches, foreign) = frame(vec![garbage(1), event(2), marker(3, 2), marker(4, 0)]);
        assert_eq!(batches, vec![Vec::<u64>::new()]);
        assert_eq!(foreign, vec![1, 2, 3]);
    }
}

#[cfg(test)]
mod tail_tests {
    //! Goal: a bounded walk that ends inside a batch still being stored reads on and yields
    //! the batch whole; a tail that never gets its marker is foreign, after the settle pauses.
    use super::tests::{event, marker};
    use super::*;

    /// A read that shows `shown`, then `rest` once extended; `growth` says what `extend`
    /// answers when there is no rest.
    struct TornCursor {
        shown: std::vec::IntoIter<LogRecord>,
        rest: Vec<LogRecord>,
        growth: Extended,
        extends: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl LogCursor for TornCursor {
        async fn next(&mut self) -> Option<Result<LogRecord, ReadError>> {
            self.shown.next().map(Ok)
        }

        async fn extend(&mut self) -> Result<Extended, ReadError> {
            self.extends
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.rest.is_empty() {
                return Ok(self.growth);
            }
            self.shown = std::mem::take(&mut self.rest).into_iter();
            Ok(Extended::Grown)
        }
    }

    async fn walk_torn(
        shown: Vec<LogRecord>,
        rest: Vec<LogRecord>,
        growth: Extended,
    ) -> (Vec<Vec<u64>>, Vec<u64>, usize) {
        let extends = std::sync::Arc::default();
        let cursor = TornCursor {
            shown: shown.into_iter(),
            rest,
            growth,
            extends: std::sync::Arc::clone(&extends),
        };
        let mut walker = Walker::new(cursor, 1, WalkUntil::CaughtUp, None);
        let (mut batches, mut foreign) = (Vec::new(), Vec::new());
        while let Some(item) = walker.next().await {
            match item.unwrap() {
                Walked::Batch(b) => batches.push(b.events.iter().map(|e| e.seq).collect()),
                Walked::Foreign(f) => foreign.push(f.seq),
            }
        }
        (
            batches,
            foreign,
            extends.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    #[tokio::test]
    async fn a_batch_cut_off_by_the_end_of_the_read_is_read_to_its_marker() {
        let (batches, foreign, _) = walk_torn(
            vec![event(1), marker(2, 1), event(3), event(4)],
            vec![event(5), marker(6, 3)],
            Extended::Unchanged,
        )
        .await;
        assert_eq!(batches, vec![vec![1], vec![3, 4, 5]]);
        assert!(foreign.is_empty(), "{foreign:?}");
    }

    #[tokio::test]
    async fn reading_on_stops_at_the_marker_of_the_batch_the_read_ended_in() {
        // The log grew by two batches since the read began: the walk reads the first (the one
        // it ended in) and stops, as a walk to the end must while the log keeps growing.
        let (batches, foreign, _) = walk_torn(
            vec![event(1), marker(2, 1), event(3)],
            vec![event(4), marker(5, 2), event(6), marker(7, 1)],
            Extended::Unchanged,
        )
        .await;
        assert_eq!(batches, vec![vec![1], vec![3, 4]]);
        assert!(foreign.is_empty(), "{foreign:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tail_that_never_gets_its_marker_is_foreign_once_the_log_stood_still() {
        let (batches, foreign, extends) = walk_torn(
            vec![event(1), marker(2, 1), event(3), event(4)],
            Vec::new(),
            Extended::Unchanged,
        )
        .await;
        assert_eq!(batches, vec![vec![1]]);
        assert_eq!(foreign, vec![3, 4]);
        // It looked at the log's end once per settle pause (the test clock is paused, so the
        // pauses take no time).
        assert_eq!(extends, TAIL_SETTLE.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_that_cannot_grow_calls_its_tail_foreign_at_once() {
        let (_, foreign, extends) = walk_torn(
            vec![event(1), marker(2, 1), event(3)],
            Vec::new(),
            Extended::Never,
        )
        .await;
        assert_eq!(foreign, vec![3]);
        assert_eq!(extends, 1);
    }
}
