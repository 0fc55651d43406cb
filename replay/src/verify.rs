//! `erp verify`: proof that the log is whole and consistent, up to a point.
//!
//! Walking the log from sequence 1, every record is checked:
//! - its sequence follows the previous one (nothing removed);
//! - it decodes, and sits on the subject its envelope names;
//! - its envelope names the hash of the previous event on its subject (nothing altered,
//!   removed or reordered within a subject);
//! - batch markers: each writer's commit marker counts the events just before it; anything
//!   else is foreign (not written by the writer), listed with its sequence, and the walk goes
//!   on;
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
use ledger::walk::{Batch, WalkError, WalkUntil, Walked, walk};
use ledger::{EventHash, EventLog, ForeignRecord, Head, RecordedEvent, Subject};
use sha2::{Digest as _, Sha256};

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
    /// Messages no writer's batch commits (they were not applied; `ledger::walk`), in order.
    pub foreign: Vec<ForeignRecord>,
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
    state: State,
    digest: Digest,
    events: u64,
    markers: u64,
    foreign: Vec<ForeignRecord>,
    digest_every: Option<u64>,
    /// Recorded digests still to check, by sequence.
    expect: VecDeque<(u64, Digest)>,
    checkpoints: Vec<(u64, Digest)>,
    last_matched: Option<u64>,
}

type Failed = (u64, Option<String>, Divergence);

impl Walk {
    /// Folds one stored record into the digest; takes the checkpoints asked for at `seq` and
    /// checks a digest recorded for it.
    fn digest(&mut self, seq: u64, stored: &EventHash) -> Result<(), Failed> {
        self.digest = self.digest.next(seq, stored);
        if self
            .digest_every
            .is_some_and(|k| k > 0 && seq.is_multiple_of(k))
        {
            self.checkpoints.push((seq, self.digest));
        }
        while let Some(&(at, expected)) = self.expect.front() {
            if at != seq {
                break;
            }
            self.expect.pop_front();
            if expected != self.digest {
                return Err((
                    seq,
                    None,
                    Divergence::Digest {
                        seq,
                        expected,
                        actual: self.digest,
                        since: self.last_matched,
                    },
                ));
            }
            self.last_matched = Some(seq);
            if !self.checkpoints.iter().any(|(s, _)| *s == seq) {
                self.checkpoints.push((seq, self.digest));
            }
        }
        Ok(())
    }

    /// One committed batch, up to `end`: its events (already chain-checked by the walk), the
    /// outcome records' places, the invariants, then its marker.
    fn batch(&mut self, batch: &Batch, end: u64) -> Result<(), Failed> {
        for (i, event) in batch.events.iter().enumerate() {
            if event.seq > end {
                return Ok(());
            }
            self.digest(event.seq, &event.hash)?;
            self.event(event, &batch.events[..i])?;
        }
        if batch.marker.seq <= end {
            self.digest(batch.marker.seq, &batch.marker.hash)?;
            self.markers += 1;
        }
        Ok(())
    }

    fn event(&mut self, event: &RecordedEvent, before: &[RecordedEvent]) -> Result<(), Failed> {
        let subject = &event.envelope.subject;
        let at = |d: Divergence| (event.seq, Some(subject.relative()), d);
        self.events += 1;
        if let Event::CommandAccepted(accepted) = &event.envelope.event {
            // A command's events and its outcome are appended together, in one batch.
            let command = event.envelope.command_id;
            let count = accepted.event_count as usize;
            let wrong = before
                .iter()
                .rev()
                .take(count)
                .find(|e| e.envelope.command_id != command)
                .map(|e| e.seq);
            if before.len() < count || wrong.is_some() {
                return Err(at(Divergence::Outcome(format!(
                    "command {command} was accepted with {count} events, but {} before its outcome is not one of them",
                    match wrong {
                        Some(s) => format!("sequence {s}"),
                        None => "the start of its batch".into(),
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
        Ok(())
    }
}

/// Walks the log from sequence 1 and checks everything above; the first divergence stops the
/// walk. Foreign messages (`ledger::walk`) do not stop it: they are listed in the report (and
/// folded into the digest, which fixes every stored byte), and the caller says what they mean.
/// Digests asked for are reported as they are passed.
pub async fn verify<L: EventLog>(
    log: &L,
    options: &VerifyOptions,
    mut progress: impl FnMut(Progress),
) -> Result<VerifyReport, VerifyFailure> {
    let started = Instant::now();
    let fail = |seq: u64, subject: Option<String>, divergence: Divergence| VerifyFailure {
        seq,
        subject,
        divergence,
        verified_before: seq.saturating_sub(1),
    };
    let last = log
        .last_sequence()
        .await
        .map_err(|e| fail(0, None, Divergence::Unreadable(e.to_string())))?;
    let end = options.until.unwrap_or(last);
    let mut expect = options.expect.clone();
    expect.sort_by_key(|(seq, _)| *seq);
    if let Some(&(seq, _)) = expect.iter().find(|(s, _)| *s > end) {
        return Err(VerifyFailure {
            verified_before: 0,
            ..fail(
                seq,
                None,
                Divergence::Truncated {
                    expected: seq,
                    found: last,
                },
            )
        });
    }
    let mut w = Walk {
        state: State::default(),
        digest: Digest::default(),
        events: 0,
        markers: 0,
        foreign: Vec::new(),
        digest_every: options.digest_every,
        expect: expect.into(),
        checkpoints: Vec::new(),
        last_matched: None,
    };
    let mut last_report = Instant::now();
    if end > 0 {
        let mut walker = walk(log, 1, WalkUntil::Sequence(end), Some(ChainVerifier::new()))
            .await
            .map_err(|e| fail(1, None, Divergence::Unreadable(e.to_string())))?;
        while let Some(item) = walker.next().await {
            let item = item.map_err(walk_failure)?;
            let folded = match &item {
                Walked::Batch(batch) => w.batch(batch, end),
                Walked::Foreign(f) if f.seq <= end => {
                    w.foreign.push(f.clone());
                    w.digest(f.seq, &f.hash)
                }
                Walked::Foreign(_) => Ok(()),
            };
            folded.map_err(|(seq, subject, divergence)| match divergence {
                Divergence::Digest { since, .. } => VerifyFailure {
                    verified_before: since.unwrap_or(0),
                    ..fail(seq, subject, divergence)
                },
                _ => fail(seq, subject, divergence),
            })?;
            if last_report.elapsed() >= Duration::from_millis(500) {
                last_report = Instant::now();
                progress(Progress::at(item.last_seq().min(end), end, started));
            }
        }
    }
    progress(Progress::at(end, end, started));
    Ok(VerifyReport {
        last_seq: end,
        events: w.events,
        markers: w.markers,
        foreign: w.foreign,
        digest: w.digest,
        checkpoints: w.checkpoints,
        elapsed: started.elapsed(),
    })
}

/// A walk that could not go on, as a verification failure.
fn walk_failure(e: WalkError) -> VerifyFailure {
    let (seq, subject, divergence) = match e {
        WalkError::Gap { expected, found } => {
            (expected, None, Divergence::Missing { expected, found })
        }
        WalkError::Truncated { expected, found } => {
            (found + 1, None, Divergence::Truncated { expected, found })
        }
        WalkError::Chain(b) => (
            b.seq,
            Some(b.subject.relative()),
            Divergence::Chain(b.to_string()),
        ),
        WalkError::Read(e) => (0, None, Divergence::Unreadable(e.to_string())),
    };
    VerifyFailure {
        seq,
        subject,
        divergence,
        verified_before: seq.saturating_sub(1),
    }
}
