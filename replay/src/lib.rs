//! Replay for auditors: any view as it stood at any point of either timeline, and proof that
//! the log was not changed.
//!
//! - A [`Point`] names what is known (`as of` a stream sequence, or everything recorded by a
//!   time) and, optionally, a business time (`as effective`): only events whose effective time
//!   is at or before it count. [`point::resolve`] turns it into a sequence the stream itself
//!   vouches for.
//! - [`engine::replay`] reads the log once, in order, from sequence 1 with an ordered consumer,
//!   checks every sequence and hash chain on the way, and builds one model per point (two for a
//!   diff, with the events that explain each difference).
//! - [`verify::verify`] walks the log checking sequences, decoding, hash chains, batch markers,
//!   the write model's invariants at every event, and a running digest an auditor can record
//!   and check later.
//!
//! Snapshots are never read: every replay starts at sequence 1, so its result depends only on
//! the log and the code.

pub mod engine;
pub mod model;
pub mod output;
pub mod point;
pub mod verify;

pub use engine::{Diff, ReplayError, Replayed, replay};
pub use model::{Model, WriteModel};
pub use point::{Knowledge, Point, Resolved};
pub use verify::{Digest, VerifyFailure, VerifyOptions, VerifyReport};

/// How far a long read has got, for progress bars (the projector runtime's own type).
pub use projections::runtime::Progress;

#[cfg(test)]
mod views_tests;
