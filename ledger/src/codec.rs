//! The one module that knows how events look as bytes.
//!
//! A stored event is: one format byte (`ENVELOPE_FORMAT`), the envelope header in bincode 2
//! (standard config: little-endian varints), then the payload in bincode 2. The header names
//! the payload's type and version, so old payloads are upcast on read (`crate::upcast`).
//! bincode 2.0.1 is pinned (its next release is a tombstone); swapping it means changing this
//! file and writing a new `ENVELOPE_FORMAT`, nothing else.

use std::borrow::Cow;

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::envelope::{Envelope, EventHash};
use crate::events::{Event, EventType};
use crate::subject::{Subject, SubjectError};
use crate::values::{Actor, ActorId, EntityId, Role, Timestamp};

/// The format byte of envelopes written by this code.
pub const ENVELOPE_FORMAT: u8 = 1;

/// Largest message accepted, the NATS default `max_payload` (1 MiB). Decoding refuses to
/// allocate beyond it, so hostile bytes cannot exhaust memory.
pub const MESSAGE_BYTES_MAX: usize = 1 << 20;

type Config = Configuration<LittleEndian, Varint, Limit<MESSAGE_BYTES_MAX>>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MESSAGE_BYTES_MAX>()
}

/// Why bytes could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty message: expected an envelope format byte")]
    Empty,
    #[error("unknown envelope format {0}; this build reads format {ENVELOPE_FORMAT}")]
    UnknownFormat(u8),
    #[error("malformed bytes: {0}")]
    Malformed(String),
    #[error("{count} unexpected bytes after the {what}")]
    TrailingBytes { what: &'static str, count: usize },
    #[error("unknown event type `{0}`")]
    UnknownEventType(String),
    #[error(
        "event type `{event_type}` version {version} is newer than this build (it reads up to {current}); upgrade before reading this log"
    )]
    FutureVersion {
        event_type: &'static str,
        version: u16,
        current: u16,
    },
    #[error("event type `{event_type}` version {version} has no decoder")]
    UnknownVersion {
        event_type: &'static str,
        version: u16,
    },
    #[error("envelope subject: {0}")]
    Subject(#[from] SubjectError),
    #[error("could not encode: {0}")]
    Encode(String),
    #[error("encoded message is {len} bytes; at most {MESSAGE_BYTES_MAX} fit in one message")]
    TooLarge { len: usize },
}

pub(crate) fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

pub(crate) fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_whole(bytes, config(), "payload")
}

/// Decodes `bytes` with `config`; every byte must be used.
fn decode_whole<T: DeserializeOwned>(
    bytes: &[u8],
    config: impl bincode::config::Config,
    what: &'static str,
) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes {
            what,
            count: bytes.len() - used,
        });
    }
    Ok(value)
}

/// Encodes a snapshot body: the same encoding as events, without the one-message size limit
/// (a write model can be hundreds of megabytes).
pub fn encode_snapshot<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_snapshot_sized(value, 0)
}

/// `encode_snapshot` into a buffer of `capacity` bytes to start with (the last snapshot's
/// size, say: growing a buffer of tens of megabytes step by step costs more than encoding).
pub fn encode_snapshot_sized<T: Serialize>(
    value: &T,
    capacity: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::with_capacity(capacity);
    bincode::serde::encode_into_std_write(value, &mut bytes, bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// Decodes what `encode_snapshot` wrote; every byte must be used.
pub fn decode_snapshot<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_whole(bytes, bincode::config::standard(), "snapshot")
}

/// The envelope header as stored (format 1). Field order is the wire order: never reorder.
#[derive(Serialize, Deserialize)]
struct HeaderV1<'a> {
    event_id: [u8; 16],
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    schema_version: u16,
    #[serde(borrow)]
    subject: Cow<'a, str>,
    command_id: [u8; 16],
    correlation_id: [u8; 16],
    actor_id: ActorId,
    actor_role: Role,
    legal_entity: EntityId,
    effective_at: Timestamp,
    prev_hash: [u8; 32],
}

/// Encodes an envelope as it will be stored.
pub fn encode_envelope(envelope: &Envelope) -> Result<Vec<u8>, CodecError> {
    let event_type = envelope.event.event_type();
    encode_parts(
        envelope,
        event_type.current_version(),
        &envelope.event.encode_payload()?,
    )
}

/// Encodes an envelope around an already-encoded payload of `version`. Used to write golden
/// fixtures of old versions.
pub fn encode_parts(
    envelope: &Envelope,
    version: u16,
    payload: &[u8],
) -> Result<Vec<u8>, CodecError> {
    let header = HeaderV1 {
        event_id: *envelope.event_id.as_bytes(),
        event_type: Cow::Borrowed(envelope.event.event_type().name()),
        schema_version: version,
        subject: Cow::Owned(envelope.subject.relative()),
        command_id: *envelope.command_id.as_bytes(),
        correlation_id: *envelope.correlation_id.as_bytes(),
        actor_id: envelope.actor.id.clone(),
        actor_role: envelope.actor.role.clone(),
        legal_entity: envelope.legal_entity.clone(),
        effective_at: envelope.effective_at,
        prev_hash: envelope.prev_hash.0,
    };
    let mut bytes = Vec::with_capacity(128 + payload.len());
    bytes.push(ENVELOPE_FORMAT);
    bincode::serde::encode_into_std_write(&header, &mut bytes, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    bytes.extend_from_slice(payload);
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(CodecError::TooLarge { len: bytes.len() });
    }
    Ok(bytes)
}

/// An envelope read back, with the version its payload was stored at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub envelope: Envelope,
    pub stored_version: u16,
}

/// Decodes stored bytes, upcasting old payload versions to the current ones.
pub fn decode_envelope(bytes: &[u8]) -> Result<Decoded, CodecError> {
    let (&format, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != ENVELOPE_FORMAT {
        return Err(CodecError::UnknownFormat(format));
    }
    let (header, used): (HeaderV1<'_>, usize) =
        bincode::serde::borrow_decode_from_slice(rest, config())
            .map_err(|e| CodecError::Malformed(format!("envelope header: {e}")))?;
    let payload = &rest[used..];
    let event_type = EventType::from_name(&header.event_type)
        .ok_or_else(|| CodecError::UnknownEventType(header.event_type.to_string()))?;
    let current = event_type.current_version();
    let event = match header.schema_version {
        v if v == current => Event::decode_current(event_type, payload)?,
        v if v > current => {
            return Err(CodecError::FutureVersion {
                event_type: event_type.name(),
                version: v,
                current,
            });
        }
        v => crate::upcast::decode_old(event_type, v, payload)?,
    };
    let envelope = Envelope {
        event_id: Uuid::from_bytes(header.event_id),
        subject: Subject::parse_relative(&header.subject)?,
        command_id: Uuid::from_bytes(header.command_id),
        correlation_id: Uuid::from_bytes(header.correlation_id),
        actor: Actor {
            id: header.actor_id,
            role: header.actor_role,
        },
        legal_entity: header.legal_entity,
        effective_at: header.effective_at,
        prev_hash: EventHash(header.prev_hash),
        event,
    };
    Ok(Decoded {
        envelope,
        stored_version: header.schema_version,
    })
}

/// The commit message of every batch: written on the writer's own chain subject so that the
/// next batch can prove this one landed where the writer predicted (fencing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterMarker {
    pub instance: [u8; 16],
    /// Batches this writer instance has committed before this one.
    pub batch: u64,
    /// Events in the batch, not counting this marker.
    pub events: u32,
}

pub fn encode_marker(marker: &WriterMarker) -> Result<Vec<u8>, CodecError> {
    let mut bytes = vec![ENVELOPE_FORMAT];
    bytes.extend(to_bytes(marker)?);
    Ok(bytes)
}

pub fn decode_marker(bytes: &[u8]) -> Result<WriterMarker, CodecError> {
    let (&format, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != ENVELOPE_FORMAT {
        return Err(CodecError::UnknownFormat(format));
    }
    from_bytes(rest)
}
