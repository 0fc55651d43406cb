//! One ordered pass over the log that builds a model at one or two points.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ledger::chain::{ChainBreak, ChainVerifier};
use ledger::{EventLog, LogCursor, LogRecord, ReadError, ReadFrom, ReadUntil};
use serde::Serialize;
use serde_json::Value;

use crate::Progress;
use crate::model::Model;
use crate::point::Resolved;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading the ledger: {0}")]
    Read(#[from] ReadError),
    #[error("sequence {seq} is beyond the log's end (its last sequence is {last})")]
    BeyondEnd { seq: u64, last: u64 },
    #[error(
        "recorded times are not monotonic at sequence {seq} ({detail}): the point in time is ambiguous; use --as-of-seq"
    )]
    ClockNotMonotonic { seq: u64, detail: String },
    #[error("sequence {expected} is missing: the next stored message is {found}")]
    Gap { expected: u64, found: u64 },
    #[error("{0}")]
    Chain(#[from] ChainBreak),
    #[error("the log ended at sequence {found}, before sequence {expected}")]
    Truncated { expected: u64, found: u64 },
}

/// A model built to a point.
#[derive(Debug)]
pub struct Built<M> {
    pub point: Resolved,
    pub model: M,
    /// Every row key any applied event touched.
    pub keys: BTreeSet<String>,
    /// Events applied.
    pub applied: u64,
}

/// The result of one replay pass.
#[derive(Debug)]
pub struct Replayed<M> {
    /// One per requested point, in the order given.
    pub built: Vec<Built<M>>,
    /// With two points: for each row key, the events counted at one point and not the other
    /// that changed it (the explanation of a diff).
    pub explained_by: BTreeMap<String, Vec<u64>>,
    /// Records read (events and batch markers).
    pub records: u64,
    pub elapsed: Duration,
}

/// Replays the log from sequence 1 up to the furthest point, building a fresh model for each
/// point. Every sequence must follow the previous one and every event must continue its
/// subject's hash chain, or the replay stops naming the place.
pub async fn replay<L: EventLog, M: Model>(
    log: &L,
    points: &[Resolved],
    mut progress: impl FnMut(Progress),
) -> Result<Replayed<M>, ReplayError> {
    let started = Instant::now();
    let end = points.iter().map(|p| p.seq).max().unwrap_or(0);
    let mut built: Vec<Built<M>> = points
        .iter()
        .map(|p| Built {
            point: p.clone(),
            model: M::default(),
            keys: BTreeSet::new(),
            applied: 0,
        })
        .collect();
    let mut explained_by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut chain = ChainVerifier::new();
    let mut next = 1;
    let mut changed = BTreeSet::new();
    let mut last_report = Instant::now();
    if end > 0 {
        let mut cursor = log
            .read(ReadFrom::Sequence(1), ReadUntil::Sequence(end))
            .await?;

        while let Some(record) = cursor.next().await {
            let record = record?;
            let seq = record.seq();
            if seq != next {
                return Err(ReplayError::Gap {
                    expected: next,
                    found: seq,
                });
            }
            next += 1;
            if let LogRecord::Event(event) = &record {
                chain.check(event)?;
                let mut included = [false; 2];
                for (i, b) in built.iter_mut().enumerate() {
                    if !b.point.includes(seq, event.envelope.effective_at) {
                        continue;
                    }
                    changed.clear();
                    b.model.apply(event, &mut changed);
                    b.applied += 1;
                    for key in &changed {
                        if !b.keys.contains(key) {
                            b.keys.insert(key.clone());
                        }
                    }
                    if let Some(flag) = included.get_mut(i) {
                        *flag = true;
                    }
                }
                // An event in exactly one of two points explains the rows it changed there.
                if built.len() == 2 && included[0] != included[1] {
                    for key in &changed {
                        explained_by.entry(key.clone()).or_default().push(seq);
                    }
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
        return Err(ReplayError::Truncated {
            expected: end,
            found: next - 1,
        });
    }
    progress(Progress::at(end, end, started));
    Ok(Replayed {
        built,
        explained_by,
        records: end,
        elapsed: started.elapsed(),
    })
}

/// One row that differs between two points.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diff {
    pub key: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// The events behind the change (in one point and not the other), ascending.
    pub events: Vec<u64>,
}

impl<M: Model> Replayed<M> {
    /// Rows that differ from the first point to the second, by key.
    pub fn diff(&self) -> Vec<Diff> {
        let [a, b] = &self.built[..] else {
            return Vec::new();
        };
        a.keys
            .union(&b.keys)
            .filter_map(|key| {
                let before = a.model.value(key);
                let after = b.model.value(key);
                (before != after).then(|| Diff {
                    key: key.clone(),
                    before,
                    after,
                    events: self.explained_by.get(key).cloned().unwrap_or_default(),
                })
            })
            .collect()
    }
}
