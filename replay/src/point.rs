//! Points in time, and how they become stream sequences.
//!
//! Recorded time is the server's storage time of each message, never a time an event claims
//! for itself. To find "everything recorded by T", the stream's own time index answers which
//! message is the first stored after T (a consumer that starts by time); the point is the
//! sequence before it. The neighbours' stored times are then read back and checked (the one
//! at the point is at or before T, the next one after T): if the server's clock ever stepped
//! back around T the answer would be ambiguous, and resolution refuses rather than guess.
//! Finally the point is moved back to the end of the last whole batch: batches are atomic, so
//! the log never held part of one.

use std::fmt;

use ledger::jetstream::JetStreamLog;
use ledger::log::BATCH_EVENTS_MAX;
use ledger::values::Timestamp;
use ledger::{EventLog, LogRecord};
use serde::Serialize;

use crate::engine::ReplayError;

/// What is known: the log up to a point of the recorded timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knowledge {
    /// Everything the log holds now.
    Latest,
    /// Everything up to and including this stream sequence.
    Seq(u64),
    /// Everything the server had stored by this time.
    Recorded(Timestamp),
}

/// A point to replay to: what is known, and optionally the business time of interest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub knowledge: Knowledge,
    /// Only events effective at or before this time count (back-dated and late events
    /// included, if they are known).
    pub effective: Option<Timestamp>,
}

impl Point {
    pub fn latest() -> Point {
        Point {
            knowledge: Knowledge::Latest,
            effective: None,
        }
    }

    pub fn seq(seq: u64) -> Point {
        Point {
            knowledge: Knowledge::Seq(seq),
            effective: None,
        }
    }

    pub fn recorded(at: Timestamp) -> Point {
        Point {
            knowledge: Knowledge::Recorded(at),
            effective: None,
        }
    }

    pub fn effective(self, at: Timestamp) -> Point {
        Point {
            effective: Some(at),
            ..self
        }
    }
}

/// A point tied to the stream: replay includes sequences `1..=seq` (those effective by
/// `effective`, if set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub seq: u64,
    pub effective: Option<Timestamp>,
    /// How the point was found, for the report.
    pub how: String,
}

impl Resolved {
    /// A point at a known sequence (tests, and replays of a log that is not a JetStream one).
    pub fn at_seq(seq: u64) -> Resolved {
        Resolved {
            seq,
            effective: None,
            how: format!("as of sequence {seq}"),
        }
    }

    /// Whether an event at `seq` with business time `effective_at` belongs to this point.
    pub fn includes(&self, seq: u64, effective_at: Timestamp) -> bool {
        seq <= self.seq && self.effective.is_none_or(|t| effective_at <= t)
    }
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.how)?;
        if let Some(t) = self.effective {
            write!(f, ", effective at or before {t}")?;
        }
        Ok(())
    }
}

/// Parses a time given on the command line: RFC 3339, or a bare date `YYYY-MM-DD` meaning
/// the end of that day (UTC), so "on date D" includes all of D.
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let end = date
            .and_hms_micro_opt(23, 59, 59, 999_999)
            .expect("valid time of day")
            .and_utc();
        return Ok(Timestamp::new(end));
    }
    Timestamp::parse(text).map_err(|_| {
        format!("`{text}` is not a time: expected RFC 3339 (2011-03-01T12:00:00Z) or a date (2011-03-01, meaning its end)")
    })
}

/// Ties a point to the stream's sequences.
pub async fn resolve(log: &JetStreamLog, point: Point) -> Result<Resolved, ReplayError> {
    let last = log.last_sequence().await?;
    let (seq, how) = match point.knowledge {
        Knowledge::Latest => (last, format!("as of the log's end (sequence {last})")),
        Knowledge::Seq(seq) if seq > last => {
            return Err(ReplayError::BeyondEnd { seq, last });
        }
        Knowledge::Seq(seq) => (seq, format!("as of sequence {seq}")),
        Knowledge::Recorded(at) => {
            let seq = recorded_by(log, at, last).await?;
            (seq, format!("as recorded at {at} (sequence {seq})"))
        }
    };
    Ok(Resolved {
        seq,
        effective: point.effective,
        how,
    })
}

async fn recorded_at(log: &JetStreamLog, seq: u64) -> Result<Option<LogRecord>, ReplayError> {
    Ok(log.get(seq).await?)
}

/// The last sequence of the last whole batch the server had stored by `at`.
async fn recorded_by(log: &JetStreamLog, at: Timestamp, last: u64) -> Result<u64, ReplayError> {
    let candidate = match log.first_seq_recorded_after(at).await? {
        Some(first_after) => first_after - 1,
        None => last,
    };
    // Check the neighbours against the stored times.
    if candidate > 0
        && let Some(record) = recorded_at(log, candidate).await?
        && record.recorded_at() > at
    {
        return Err(ReplayError::ClockNotMonotonic {
            seq: candidate,
            detail: format!("stored at {}, after {at}", record.recorded_at()),
        });
    }
    if candidate < last
        && let Some(record) = recorded_at(log, candidate + 1).await?
        && record.recorded_at() <= at
    {
        return Err(ReplayError::ClockNotMonotonic {
            seq: candidate + 1,
            detail: format!(
                "stored at {}, not after {at}, yet the stream's time index starts after it",
                record.recorded_at()
            ),
        });
    }
    // Back to the end of the last whole batch: every batch ends with its writer's marker.
    let mut seq = candidate;
    for _ in 0..=BATCH_EVENTS_MAX {
        if seq == 0 {
            return Ok(0);
        }
        match recorded_at(log, seq).await? {
            Some(LogRecord::Marker { .. }) => return Ok(seq),
            _ => seq -= 1,
        }
    }
    // No marker within a batch's length: the messages were not written in batches; take the
    // time index's answer as it is.
    Ok(candidate)
}
