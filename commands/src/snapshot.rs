//! Processor snapshots: the write model at a ledger sequence, so that a restart replays only
//! what follows instead of the whole history.
//!
//! Bytes: the mark `ERPSNAP\0`, the format version (u32, little-endian), SHA-256 of the body
//! (32 bytes), the body (`ledger::codec::encode_snapshot` of `Body`). A snapshot decides
//! nothing: it is the state a replay to `applied_seq` builds, and a restart takes it only if
//! it decodes whole, is of this format, and matches the ledger it is loaded against (the
//! record at `applied_seq`, and the heads of a sample of subjects). Anything else is a full
//! replay.

use ledger::{EventHash, EventLog, Head, Subject};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::processor::ForeignSeen;
use crate::state::State;

/// The snapshot format this build writes and reads. Bump it whenever `State` (or anything it
/// holds) changes shape: an older snapshot is then replaced by a full replay, never misread.
pub const FORMAT_VERSION: u32 = 12;
/// The processor's object in the snapshot store (`ledger::objects`).
pub const OBJECT_NAME: &str = "processor";
const MARK: [u8; 8] = *b"ERPSNAP\0";
const HEADER_BYTES: usize = 8 + 4 + 32;
/// How many subjects' heads are checked against the ledger when a snapshot is loaded.
const HEADS_CHECKED: usize = 64;

/// What a snapshot holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Body {
    /// Every ledger record up to here is in `state` (or was foreign and passed over).
    pub applied_seq: u64,
    /// SHA-256 of the record stored at `applied_seq` (zero when it is 0): ties the snapshot to
    /// one ledger, not another one that happens to be as long.
    pub record_hash: EventHash,
    pub state: State,
    pub foreign: ForeignSeen,
    /// The program that wrote it (`erp <version>`), for the logs.
    pub written_by: String,
}

/// `Body` as written, borrowing the model (same fields, same order, same bytes).
#[derive(Serialize)]
struct BodyRef<'a> {
    applied_seq: u64,
    record_hash: EventHash,
    state: &'a State,
    foreign: &'a ForeignSeen,
    written_by: &'a str,
}

/// Encodes the model where it stands, without copying it: a snapshot body for `frame`.
/// `capacity`: bytes to reserve at the start (the previous snapshot's size).
pub fn encode_body(
    applied_seq: u64,
    record_hash: EventHash,
    state: &State,
    foreign: &ForeignSeen,
    capacity: usize,
) -> Result<Vec<u8>, SnapshotError> {
    ledger::codec::encode_snapshot_sized(
        &BodyRef {
            applied_seq,
            record_hash,
            state,
            foreign,
            written_by: concat!("erp ", env!("CARGO_PKG_VERSION")),
        },
        capacity,
    )
    .map_err(|e| SnapshotError::Encode(e.to_string()))
}

/// A snapshot's bytes around an encoded body: mark, format, checksum.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + body.len());
    bytes.extend_from_slice(&MARK);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&Sha256::digest(body));
    bytes.extend_from_slice(body);
    bytes
}

/// Why a snapshot was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("it is not a processor snapshot (no snapshot mark at its start)")]
    NotASnapshot,
    #[error("it is of snapshot format {found}; this processor reads format {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("its checksum does not match its contents (the object is damaged)")]
    Checksum,
    #[error("it does not decode: {0}")]
    Malformed(String),
    #[error("it does not match this ledger: {0}")]
    Mismatch(String),
    #[error("the ledger could not be read to check it: {0}")]
    Read(String),
    #[error("it could not be encoded: {0}")]
    Encode(String),
}

/// The bytes of a snapshot of `body`.
pub fn encode(body: &Body) -> Result<Vec<u8>, SnapshotError> {
    let encoded =
        ledger::codec::encode_snapshot(body).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    Ok(frame(&encoded))
}

/// Reads a snapshot's bytes back, checking mark, format and checksum.
pub fn decode(bytes: &[u8]) -> Result<Body, SnapshotError> {
    if bytes.len() < HEADER_BYTES || bytes[..8] != MARK {
        return Err(SnapshotError::NotASnapshot);
    }
    let found = u32::from_le_bytes(bytes[8..12].try_into().expect("four bytes"));
    if found != FORMAT_VERSION {
        return Err(SnapshotError::Version { found });
    }
    let body = &bytes[HEADER_BYTES..];
    if Sha256::digest(body).as_slice() != &bytes[12..HEADER_BYTES] {
        return Err(SnapshotError::Checksum);
    }
    ledger::codec::decode_snapshot(body).map_err(|e| SnapshotError::Malformed(e.to_string()))
}

/// SHA-256 of the record stored at `seq` (zero for 0).
pub async fn record_hash<L: EventLog>(log: &L, seq: u64) -> Result<EventHash, SnapshotError> {
    if seq == 0 {
        return Ok(EventHash::GENESIS);
    }
    match log.record(seq).await {
        Ok(Some(record)) => Ok(record.hash()),
        Ok(None) => Err(SnapshotError::Mismatch(format!(
            "the ledger has no record at sequence {seq}"
        ))),
        Err(e) => Err(SnapshotError::Read(e.to_string())),
    }
}

/// Checks that `body` describes the ledger `log` holds: the record at its sequence is the one
/// it saw, and a sample of subjects end where it says (or later, after its sequence).
pub async fn verify<L: EventLog>(log: &L, body: &Body) -> Result<(), SnapshotError> {
    let last = log
        .last_sequence()
        .await
        .map_err(|e| SnapshotError::Read(e.to_string()))?;
    if last < body.applied_seq {
        return Err(SnapshotError::Mismatch(format!(
            "the ledger ends at sequence {last}, before the snapshot's {}",
            body.applied_seq
        )));
    }
    let found = record_hash(log, body.applied_seq).await?;
    if found != body.record_hash {
        return Err(SnapshotError::Mismatch(format!(
            "the record at sequence {} is not the one the snapshot was taken after",
            body.applied_seq
        )));
    }
    for subject in sample_subjects(&body.state) {
        let expected = body.state.head(&subject);
        let stored = log
            .head(&subject)
            .await
            .map_err(|e| SnapshotError::Read(e.to_string()))?
            .unwrap_or(Head::EMPTY);
        let foreign_after = body.state.expected_head(&subject).seq;
        let fits = if stored.seq == expected.seq {
            stored.hash == expected.hash
        } else if stored.seq <= body.applied_seq {
            // Only a foreign message the snapshot knows of may sit after its last event.
            stored.seq == foreign_after
        } else {
            // Appended after the snapshot.
            stored.seq > expected.seq
        };
        if !fits {
            return Err(SnapshotError::Mismatch(format!(
                "subject {subject} ends at sequence {} in the ledger, at {} in the snapshot",
                stored.seq, expected.seq
            )));
        }
    }
    Ok(())
}

/// Up to `HEADS_CHECKED` subjects with a head: the first and last orders and command records,
/// and some SKUs.
fn sample_subjects(state: &State) -> Vec<Subject> {
    let quarter = HEADS_CHECKED / 4;
    let mut subjects: Vec<Subject> = Vec::with_capacity(HEADS_CHECKED);
    subjects.extend(
        state
            .stock
            .keys()
            .take(quarter)
            .map(|s| Subject::Stock(s.clone())),
    );
    subjects.extend(
        state
            .orders
            .keys()
            .take(quarter / 2)
            .chain(state.orders.keys().rev().take(quarter / 2))
            .map(|o| Subject::Order(o.clone())),
    );
    subjects.extend(
        state
            .commands
            .keys()
            .take(quarter)
            .chain(state.commands.keys().rev().take(quarter))
            .map(|c| Subject::Command(*c)),
    );
    subjects.sort();
    subjects.dedup();
    subjects.retain(|s| state.head(s) != Head::EMPTY);
    subjects
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Body {
        let mut state = State::default();
        state.entities.insert(
            ledger::values::EntityId::new("UK01").unwrap(),
            crate::state::EntityState {
                head: Some(Head {
                    seq: 7,
                    hash: EventHash([9; 32]),
                }),
                ..Default::default()
            },
        );
        Body {
            applied_seq: 8,
            record_hash: EventHash([1; 32]),
            state,
            foreign: ForeignSeen::default(),
            written_by: "test".into(),
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let bytes = encode(&body()).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back.applied_seq, 8);
        assert_eq!(back.record_hash, EventHash([1; 32]));
        assert_eq!(back.state.entities, body().state.entities);
    }

    #[test]
    fn the_model_encoded_in_place_reads_back_as_a_body() {
        let b = body();
        let framed =
            frame(&encode_body(b.applied_seq, b.record_hash, &b.state, &b.foreign, 16).unwrap());
        let back = decode(&framed).unwrap();
        assert_eq!(back.applied_seq, b.applied_seq);
        assert_eq!(back.record_hash, b.record_hash);
        assert!(back.state == b.state);
        assert_eq!(back.written_by, concat!("erp ", env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn damaged_truncated_foreign_and_other_format_snapshots_are_refused() {
        let bytes = encode(&body()).unwrap();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(decode(&flipped).unwrap_err(), SnapshotError::Checksum);
        assert_eq!(
            decode(&bytes[..bytes.len() - 3]).unwrap_err(),
            SnapshotError::Checksum
        );
        assert_eq!(
            decode(&bytes[..5]).unwrap_err(),
            SnapshotError::NotASnapshot
        );
        assert_eq!(
            decode(b"{\"view\": 1}").unwrap_err(),
            SnapshotError::NotASnapshot
        );
        let mut other = bytes.clone();
        let older = FORMAT_VERSION - 1;
        other[8..12].copy_from_slice(&older.to_le_bytes());
        assert_eq!(
            decode(&other).unwrap_err(),
            SnapshotError::Version { found: older }
        );
        // A body that hashes right but is not a snapshot body.
        let mut forged = bytes[..12].to_vec();
        forged.extend_from_slice(&Sha256::digest(b"xyz"));
        forged.extend_from_slice(b"xyz");
        assert!(matches!(
            decode(&forged).unwrap_err(),
            SnapshotError::Malformed(_)
        ));
    }
}
