//! The envelope every event travels in, and the record of where the log put it.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::events::Event;
use crate::subject::Subject;
use crate::values::{Actor, EntityId, Timestamp};

/// SHA-256 of an event's stored bytes. Each envelope carries the hash of the previous event on
/// its subject, so the events of a subject form a chain that cannot be altered, removed or
/// reordered without a break that `chain::verify` reports.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct EventHash(pub [u8; 32]);

impl EventHash {
    /// The `prev_hash` of a subject's first event.
    pub const GENESIS: EventHash = EventHash([0; 32]);

    pub fn of(bytes: &[u8]) -> EventHash {
        EventHash(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventHash({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
impl proptest::arbitrary::Arbitrary for EventHash {
    type Parameters = ();
    type Strategy = proptest::strategy::BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        use proptest::strategy::Strategy;
        proptest::arbitrary::any::<[u8; 32]>()
            .prop_map(EventHash)
            .boxed()
    }
}

/// What the writer of an event states about it. The log adds the rest (`Recorded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDraft {
    /// UUID v7, chosen by whoever creates the event.
    pub event_id: Uuid,
    pub subject: Subject,
    /// The command that caused the event.
    pub command_id: Uuid,
    /// Ties together the commands of one business flow (an order's life, a PO's life).
    pub correlation_id: Uuid,
    pub actor: Actor,
    pub legal_entity: EntityId,
    /// Business time: when the fact happened, as the command says. Not when it was recorded.
    pub effective_at: Timestamp,
    pub event: Event,
}

/// A complete envelope: the draft plus the hash of the previous event on its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub event_id: Uuid,
    pub subject: Subject,
    pub command_id: Uuid,
    pub correlation_id: Uuid,
    pub actor: Actor,
    pub legal_entity: EntityId,
    pub effective_at: Timestamp,
    pub prev_hash: EventHash,
    pub event: Event,
}

impl Envelope {
    pub fn from_draft(draft: EventDraft, prev_hash: EventHash) -> Envelope {
        let EventDraft {
            event_id,
            subject,
            command_id,
            correlation_id,
            actor,
            legal_entity,
            effective_at,
            event,
        } = draft;
        Envelope {
            event_id,
            subject,
            command_id,
            correlation_id,
            actor,
            legal_entity,
            effective_at,
            prev_hash,
            event,
        }
    }
}

/// An event as the log holds it: the envelope, its position and recorded time, and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Stream sequence: the recorded position.
    pub seq: u64,
    /// When the log stored it (the server's clock), as opposed to `envelope.effective_at`.
    pub recorded_at: Timestamp,
    /// SHA-256 of the stored bytes.
    pub hash: EventHash,
    /// The version the bytes were written at, before any upcasting.
    pub stored_version: u16,
    pub envelope: Envelope,
}
