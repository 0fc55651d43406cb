//! `erp verify`: proof that the log is whole and consistent, up to a point.
//!
//! Walking the log from sequence 1, every record is checked:
//! - its sequence follows the previous one (nothing removed);
//! - it decodes, and sits on the subject its envelope names;
//! - its envelope names the hash of the previous event on its subject (nothing altered,
//!   removed or reordered within a subject);
//! - batch markers: each writer's commit marker counts the events just before it;
//! - every accepted command's events sit just before its outcome record and carry its id;
//! - the write model, rebuilt by the processor's own `apply`, keeps the stock invariants after
//!   every stock event (nothing negative, nothing committed beyond on hand).
//!
//! And a running digest is kept: `D(0)` is 32 zero bytes and
//! `D(n) = SHA-256(D(n-1) ‖ n as 8 bytes big-endian ‖ SHA-256 of the stored bytes of n)`.
//! `D(n)` fixes every stored byte and every position up to `n`, markers included: an auditor
//! who recorded `D(n)` can later prove the log up to `n` is unchanged, even where a change
//! would leave every hash chain intact (an altered last event of a subject, say).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use commands::state::State;
use ledger::chain::ChainVerifier;
use ledger::events::Event;
use ledger::{EventHash, EventLog, Head, LogCursor, LogRecord, ReadError, ReadFrom, ReadUntil};
use ledger::{RecordedEvent, Subject};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::Progress;

/// The running digest of the log up to a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn next(&self, seq: u64, stored: &EventHash) -> Digest {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(seq.to_be_bytes());
        h.update(stored.0);
        Digest(h.finalize().into())
    }

    pub fn parse(text: &str) -> Result<Digest, String> {
        let bytes = hex::decode(text).map_err(|e| format!("`{text}` is not hex: {e}"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("`{text}` is not 32 bytes (64 hex digits)"))?;
        Ok(Digest(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Stop after this sequence (default: the log's end when the walk starts).
    pub until: Option<u64>,
    /// Also report the digest every this many sequences (an auditor's checkpoints).
    pub digest_every: Option<u64>,
    /// Digests recorded earlier: each must still match.
    pub expect: Vec<(u64, Digest)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The last sequence verified.
    pub last_seq: u64,
    pub events: u64,
    pub markers: u64,
    /// The digest at `last_seq`.
    pub digest: Digest,
    /// Digests at the checkpoints asked for (`digest_every`) and at each expected one.
    pub checkpoints: Vec<(u64, Digest)>,
    pub elapsed: Duration,
}

/// What is wrong, and where it was first seen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Divergence {
    #[error("sequence {expected} is missing: the next stored message is {found}")]
    Missing { expected: u64, found: u64 },
    #[error("the log ends at sequence {found}, before sequence {expected}")]
    Truncated { expected: u64, found: u64 },
    #[error("{0}")]
    Unreadable(String),
    #[error("{0}")]
    Chain(String),
    #[error("batch marker: {0}")]
    Batch(String),
    #[error("command outcome: {0}")]
    Outcome(String),
    #[error("invariant broken: {0}")]
    Invariant(String),
    #[error(
        "the log up to sequence {seq} no longer hashes to the recorded digest {expected} (it hashes to {actual}){}",
        match since { Some(ok) => format!("; it still matched at sequence {ok}, so the change lies in {}..={seq}", ok + 1), None => String::new() }
    )]
    Digest {
        seq: u64,
        expected: Digest,
        actual: Digest,
        since: Option<u64>,
    },
}

/// The first divergence: where, on which subject, and how far the log was fine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("verification failed at sequence {seq}{}: {divergence}", subject.as_ref().map(|s| format!(" on `{s}`")).unwrap_or_default())]
pub struct VerifyFailure {
    pub seq: u64,
    pub subject: Option<String>,
    pub divergence: Divergence,
    /// Every sequence before `seq` passed.
    pub verified_before: u64,
}

struct Walk {
    chain: ChainVerifier,
    state: State,
    digest: Digest,
    /// The records since the last marker: (sequence, command id) of each event.
    batch: Vec<(u64, Uuid)>,
    /// The last records seen, for the outcome check: (sequence, command id; `None` = marker).
    recent: VecDeque<(u64, Option<Uuid>)>,
    events: u64,
    markers: u64,
}

const RECENT: usize = ledger::log::BATCH_EVENTS_MAX + 1;

impl Walk {
    fn record(&mut self, record: &LogRecord) -> Result<(), (Option<String>, Divergence)> {
        self.digest = self.digest.next(record.seq(), &record.hash());
        match record {
            LogRecord::Marker { seq, events, .. } => {
                self.markers += 1;
                let found = self.batch.len();
                if found != *events as usize {
                    return Err((
                        None,
                        Divergence::Batch(format!(
                            "the marker at {seq} commits {events} events, but {found} events precede it since the previous marker"
                        )),
                    ));
                }
                self.batch.clear();
                self.remember(*seq, None);
            }
            LogRecord::Event(event) => self.event(event)?,
        }
        Ok(())
    }

    fn remember(&mut self, seq: u64, command: Option<Uuid>) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, command));
    }

    fn event(&mut self, event: &RecordedEvent) -> Result<(), (Option<String>, Divergence)> {
        let subject = &event.envelope.subject;
        let at = |d: Divergence| (Some(subject.relative()), d);
        self.chain
            .check(event)
            .map_err(|e| at(Divergence::Chain(e.to_string())))?;
        self.events += 1;
        if let Event::CommandAccepted(accepted) = &event.envelope.event {
            let command = event.envelope.command_id;
            let count = accepted.event_count as usize;
            let before: Vec<_> = self.recent.iter().rev().take(count).collect();
            let wrong = before
                .iter()
                .find(|(_, c)| *c != Some(command))
                .map(|(s, _)| *s);
            if before.len() < count || wrong.is_some() {
                return Err(at(Divergence::Outcome(format!(
                    "command {command} was accepted with {count} events, but {} before its outcome is not one of them",
                    match wrong {
                        Some(s) => format!("sequence {s}"),
                        None => "the start of the log".into(),
                    }
                ))));
            }
        }
        self.state.apply(
            &event.envelope,
            Some(Head {
                seq: event.seq,
                hash: event.hash,
            }),
        );
        if let Subject::Stock(sku) = subject
            && let Some(violation) = self.state.invariant_violation(sku)
        {
            return Err(at(Divergence::Invariant(violation)));
        }
        self.batch.push((event.seq, event.envelope.command_id));
        self.remember(event.seq, Some(event.envelope.command_id));
        Ok(())
    }
}

/// Walks the log from sequence 1 and checks everything above; the first divergence stops the
/// walk. Digests asked for are reported as they are passed.
pub async fn verify<L: EventLog>(
    log: &L,
    options: &VerifyOptions,
    mut progress: impl FnMut(Progress),
) -> Result<VerifyReport, VerifyFailure> {
    let started = Instant::now();
    let unreadable = |seq: u64, e: ReadError| VerifyFailure {
        seq,
        subject: None,
        divergence: Divergence::Unreadable(e.to_string()),
        verified_before: seq.saturating_sub(1),
    };
    let last = log.last_sequence().await.map_err(|e| unreadable(0, e))?;
    let end = options.until.unwrap_or(last);
    let mut expect = options.expect.clone();
    expect.sort_by_key(|(seq, _)| *seq);
    if let Some(&(seq, _)) = expect.iter().find(|(s, _)| *s > end) {
        return Err(VerifyFailure {
            seq,
            subject: None,
            divergence: Divergence::Truncated {
                expected: seq,
                found: last,
            },
            verified_before: 0,
        });
    }
    let mut walk = Walk {
        chain: ChainVerifier::new(),
        state: State::default(),
        digest: Digest::default(),
        batch: Vec::new(),
        recent: VecDeque::with_capacity(RECENT),
        events: 0,
        markers: 0,
    };
    let mut checkpoints = Vec::new();
    let mut last_matched = None;
    let mut next = 1;
    let mut last_report = Instant::now();
    if end > 0 {
        let mut cursor = log
            .read(ReadFrom::Sequence(1), ReadUntil::Sequence(end))
            .await
            .map_err(|e| unreadable(1, e))?;
        while let Some(record) = cursor.next().await {
            let record = record.map_err(|e| {
                let seq = match &e {
                    ReadError::Decode { seq, .. } | ReadError::SubjectMismatch { seq, .. } => *seq,
                    ReadError::Unavailable(_) => next,
                };
                unreadable(seq, e)
            })?;
            let seq = record.seq();
            if seq != next {
                return Err(VerifyFailure {
                    seq: next,
                    subject: None,
                    divergence: Divergence::Missing {
                        expected: next,
                        found: seq,
                    },
                    verified_before: next - 1,
                });
            }
            next += 1;
            walk.record(&record)
                .map_err(|(subject, divergence)| VerifyFailure {
                    seq,
                    subject,
                    divergence,
                    verified_before: seq - 1,
                })?;
            if options.digest_every.is_some_and(|k| k > 0 && seq % k == 0) {
                checkpoints.push((seq, walk.digest));
            }
            while let Some(&(at, expected)) = expect.first() {
                if at != seq {
                    break;
                }
                expect.remove(0);
                if expected != walk.digest {
                    return Err(VerifyFailure {
                        seq,
                        subject: None,
                        divergence: Divergence::Digest {
                            seq,
                            expected,
                            actual: walk.digest,
                            since: last_matched,
                        },
                        verified_before: last_matched.unwrap_or(0),
                    });
                }
                last_matched = Some(seq);
                if !checkpoints.iter().any(|(s, _)| *s == seq) {
                    checkpoints.push((seq, walk.digest));
                }
            }
            if last_report.elapsed() >= Duration::from_millis(500) {
                last_report = Instant::now();
                progress(Progress::at(seq, end, started));
            }
            if seq >= end {
                break;
            }
        }
    }
    if next <= end {
        return Err(VerifyFailure {
            seq: next,
            subject: None,
            divergence: Divergence::Truncated {
                expected: end,
                found: next - 1,
            },
            verified_before: next - 1,
        });
    }
    // A marker-less tail: events appended outside any batch. Not an error of the log itself,
    // but every product writer commits with a marker, so it is reported.
    if let Some(&(seq, _)) = walk.batch.first() {
        return Err(VerifyFailure {
            seq,
            subject: None,
            divergence: Divergence::Batch(format!(
                "{} events from sequence {seq} on are not committed by any writer's marker",
                walk.batch.len()
            )),
            verified_before: seq - 1,
        });
    }
    progress(Progress::at(end, end, started));
    Ok(VerifyReport {
        last_seq: end,
        events: walk.events,
        markers: walk.markers,
        digest: walk.digest,
        checkpoints,
        elapsed: started.elapsed(),
    })
}
