//! One ordered pass over the log that builds a model at one or two points.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ledger::chain::ChainVerifier;
use ledger::walk::{WalkError, WalkUntil, Walked, walk};
use ledger::{EventLog, ReadError, RecordedEvent};
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
    #[error("{0}")]
    Walk(#[from] WalkError),
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
    /// Records read (events, batch markers and foreign messages).
    pub records: u64,
    /// Foreign messages passed over (never applied; `ledger::walk`).
    pub foreign: Vec<ledger::ForeignRecord>,
    pub elapsed: Duration,
}

/// Replays the log from sequence 1 up to the furthest point, building a fresh model for each
/// point. Every sequence must follow the previous one and every event must continue its
/// subject's hash chain, or the replay stops naming the place. Foreign messages are passed
/// over (and listed), exactly as the projectors pass over them.
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
    let mut changed = BTreeSet::new();
    let mut foreign = Vec::new();
    let mut last_report = Instant::now();
    if end > 0 {
        let mut walker = walk(log, 1, WalkUntil::Sequence(end), Some(ChainVerifier::new())).await?;
        while let Some(item) = walker.next().await {
            match item? {
                Walked::Batch(batch) => {
                    for event in batch.events.iter().filter(|e| e.seq <= end) {
                        apply_at_points(event, &mut built, &mut changed, &mut explained_by);
                    }
                }
                Walked::Foreign(f) if f.seq <= end => {
                    // Noted by the models of the points whose sequence includes it (it has no
                    // business time).
                    for b in built.iter_mut().filter(|b| f.seq <= b.point.seq) {
                        changed.clear();
                        b.model.foreign(&f, &mut changed);
                        b.keys.extend(changed.iter().cloned());
                    }
                    foreign.push(f);
                }
                Walked::Foreign(_) => {}
            }
            if last_report.elapsed() >= Duration::from_millis(500) {
                last_report = Instant::now();
                progress(Progress::at(walker.next_seq() - 1, end, started));
            }
        }
    }
    progress(Progress::at(end, end, started));
    Ok(Replayed {
        built,
        explained_by,
        records: end,
        foreign,
        elapsed: started.elapsed(),
    })
}

/// Applies one event to the model of every point that includes it; with two points, an event
/// in exactly one of them explains the rows it changed there.
fn apply_at_points<M: Model>(
    event: &RecordedEvent,
    built: &mut [Built<M>],
    changed: &mut BTreeSet<String>,
    explained_by: &mut BTreeMap<String, Vec<u64>>,
) {
    let mut included = [false; 2];
    for (i, b) in built.iter_mut().enumerate() {
        if !b.point.includes(event.seq, event.envelope.effective_at) {
            continue;
        }
        changed.clear();
        b.model.apply(event, changed);
        b.applied += 1;
        for key in changed.iter() {
            if !b.keys.contains(key) {
                b.keys.insert(key.clone());
            }
        }
        if let Some(flag) = included.get_mut(i) {
            *flag = true;
        }
    }
    if built.len() == 2 && included[0] != included[1] {
        for key in changed.iter() {
            explained_by.entry(key.clone()).or_default().push(event.seq);
        }
    }
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
