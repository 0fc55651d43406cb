//! The ledger's base: domain values, the event catalogue, the envelope and its codec, subject
//! naming, the `EventLog` trait with its JetStream implementation, hash-chain verification and
//! the local nats-server runner.
//!
//! Only this crate knows how events look as bytes (`codec`) and how subjects are spelled
//! (`subject`). Nothing here decides business rules.

pub mod auth;
pub mod chain;
pub mod codec;
pub mod effects;
pub mod entities;
pub mod envelope;
pub mod events;
pub mod guard;
pub mod jetstream;
pub mod log;
pub mod objects;
pub mod server;
pub mod subject;
pub mod upcast;
pub mod values;
pub mod walk;

#[cfg(test)]
mod golden;

pub use envelope::{Envelope, EventDraft, EventHash, RecordedEvent};
pub use events::{Event, EventType};
pub use log::{
    AppendBatch, AppendError, Appended, EventLog, Expectation, Extended, ForeignReason,
    ForeignRecord, Head, LogCursor, LogRecord, PendingAppend, ReadError, ReadFrom, ReadUntil,
};
pub use subject::Subject;
pub use walk::{Batch, BatchMarker, WalkError, WalkUntil, Walked, Walker};
