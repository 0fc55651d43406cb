//! Hash-chain verification: proof that no event of a subject was altered, removed or
//! reordered. Each envelope names the hash of the previous event on its subject; walking the
//! log in order, every claim must match the hash of the event actually seen before it.

use std::collections::HashMap;

use crate::envelope::{EventHash, RecordedEvent};
use crate::subject::Subject;

/// The first place where the stored log contradicts its own chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "hash chain broken at sequence {seq} on `{subject}`: it names previous hash {claimed_prev}, but {}",
    match previous_seq {
        Some(prev) => format!("the previous event on the subject (sequence {prev}) hashes to {actual_prev}: sequence {prev} was altered (or {seq}'s record of it), or events between them were removed or reordered"),
        None => format!("it is the first event seen on the subject (expected {actual_prev}): an earlier event was removed"),
    }
)]
pub struct ChainBreak {
    pub seq: u64,
    pub subject: Subject,
    /// What the event at `seq` says the previous event hashed to.
    pub claimed_prev: EventHash,
    /// The hash of the previous event actually stored (genesis if none).
    pub actual_prev: EventHash,
    /// Where that previous event is, if there is one. This is the suspect when an event was
    /// altered in place.
    pub previous_seq: Option<u64>,
}

/// Checks events in stream order, from sequence 1.
#[derive(Debug, Default)]
pub struct ChainVerifier {
    heads: HashMap<Subject, (u64, EventHash)>,
    checked: u64,
}

impl ChainVerifier {
    pub fn new() -> ChainVerifier {
        ChainVerifier::default()
    }

    /// Checks the next event. Feed events in increasing sequence order.
    pub fn check(&mut self, event: &RecordedEvent) -> Result<(), ChainBreak> {
        let subject = &event.envelope.subject;
        let (previous_seq, actual_prev) = match self.heads.get(subject) {
            Some(&(seq, hash)) => (Some(seq), hash),
            None => (None, EventHash::GENESIS),
        };
        if event.envelope.prev_hash != actual_prev {
            return Err(ChainBreak {
                seq: event.seq,
                subject: subject.clone(),
                claimed_prev: event.envelope.prev_hash,
                actual_prev,
                previous_seq,
            });
        }
        match self.heads.get_mut(subject) {
            Some(head) => *head = (event.seq, event.hash),
            None => {
                self.heads.insert(subject.clone(), (event.seq, event.hash));
            }
        }
        self.checked += 1;
        Ok(())
    }

    /// Events checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The last verified event of a subject.
    pub fn head(&self, subject: &Subject) -> Option<(u64, EventHash)> {
        self.heads.get(subject).copied()
    }
}

/// The verifier's state, to store with a projection's checkpoint: resuming from it checks the
/// chains across the restart.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ChainSnapshot {
    /// Relative subject -> (sequence, hex hash) of its last verified event.
    pub heads: std::collections::BTreeMap<String, (u64, String)>,
    pub checked: u64,
}

impl ChainVerifier {
    pub fn snapshot(&self) -> ChainSnapshot {
        ChainSnapshot {
            heads: self
                .heads
                .iter()
                .map(|(s, (seq, h))| (s.relative(), (*seq, h.to_hex())))
                .collect(),
            checked: self.checked,
        }
    }

    /// Restores a verifier; `None` if the snapshot does not parse.
    pub fn restore(snapshot: &ChainSnapshot) -> Option<ChainVerifier> {
        let mut heads = HashMap::with_capacity(snapshot.heads.len());
        for (subject, (seq, hash)) in &snapshot.heads {
            let bytes: [u8; 32] = hex::decode(hash).ok()?.try_into().ok()?;
            heads.insert(
                Subject::parse_relative(subject).ok()?,
                (*seq, EventHash(bytes)),
            );
        }
        Some(ChainVerifier {
            heads,
            checked: snapshot.checked,
        })
    }
}
