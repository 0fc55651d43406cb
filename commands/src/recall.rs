//! Reading archived orders and command records back from the log (`state::Archive`): a
//! finished order or a recorded command leaves memory once the log holds all of it, and comes
//! back from its own subject when a command names it again (a return, a repeat).
//!
//! What comes back is exactly what a model that never let it go would hold: the order is
//! rebuilt from the chain of events that ends at its archived head (followed backwards by
//! hash, so a message that is not one of the writer's is never applied), the record is the
//! outcome event stored at its archived sequence.

use std::collections::HashMap;

use ledger::values::OrderId;
use ledger::{EventHash, EventLog, Head, LogRecord, ReadError, RecordedEvent, Subject};
use uuid::Uuid;

use crate::state::{CommandRecord, OrderState, State};

/// Why an archived entry could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecallError {
    #[error("{0}")]
    Read(#[from] ReadError),
    /// The log does not hold what the archive says it does: an integrity fault.
    #[error("{0}")]
    Broken(String),
}

/// The order `id` as its subject holds it up to the archived head at one of `seqs` (several
/// when ids share an archive key): `None` if none of them is on this order's subject.
pub async fn order<L: EventLog>(
    log: &L,
    id: &OrderId,
    seqs: &[u64],
) -> Result<Option<OrderState>, RecallError> {
    let subject = Subject::Order(id.clone());
    let events = log.read_subject(&subject).await?;
    let Some(head) = events.iter().find(|e| seqs.contains(&e.seq)) else {
        return Ok(None);
    };
    let chain = chain_ending_at(&events, head).map_err(|missing| {
        RecallError::Broken(format!(
            "order {id}: the event before sequence {missing} on its subject is not in the ledger"
        ))
    })?;
    let order = OrderState::from_history(chain.iter().map(|e| {
        (
            &e.envelope,
            Head {
                seq: e.seq,
                hash: e.hash,
            },
        )
    }))
    .ok_or_else(|| {
        RecallError::Broken(format!(
            "order {id}: its events up to sequence {} hold no placement",
            head.seq
        ))
    })?;
    if !order.finished() {
        return Err(RecallError::Broken(format!(
            "order {id}: archived as finished at sequence {}, but its events leave it open",
            head.seq
        )));
    }
    Ok(Some(order))
}

/// The events of one subject that chain back from `head` to the subject's first, in order.
/// `Err(seq)`: the event at `seq` names a previous hash no event of the subject has.
fn chain_ending_at<'a>(
    events: &'a [RecordedEvent],
    head: &'a RecordedEvent,
) -> Result<Vec<&'a RecordedEvent>, u64> {
    let by_hash: HashMap<EventHash, &RecordedEvent> = events
        .iter()
        .filter(|e| e.seq <= head.seq)
        .map(|e| (e.hash, e))
        .collect();
    let mut chain = vec![head];
    let mut at = head;
    // Bounded: every step goes to an earlier sequence.
    while at.envelope.prev_hash != EventHash::GENESIS {
        match by_hash.get(&at.envelope.prev_hash) {
            Some(prev) if prev.seq < at.seq => {
                chain.push(prev);
                at = prev;
            }
            _ => return Err(at.seq),
        }
    }
    chain.reverse();
    Ok(chain)
}

/// The outcome record of command `id` stored at one of `seqs`: `None` if none of them is.
pub async fn command<L: EventLog>(
    log: &L,
    id: Uuid,
    seqs: &[u64],
) -> Result<Option<CommandRecord>, RecallError> {
    let subject = Subject::Command(id);
    for &seq in seqs {
        let Some(LogRecord::Event(e)) = log.record(seq).await? else {
            continue;
        };
        if e.envelope.subject != subject {
            continue;
        }
        let head = Head { seq, hash: e.hash };
        return CommandRecord::of(&e.envelope.event, Some(head))
            .map(Some)
            .ok_or_else(|| {
                RecallError::Broken(format!(
                    "command {id}: the record at sequence {seq} is a {}, not an outcome",
                    e.envelope.event.event_type().name()
                ))
            });
    }
    Ok(None)
}

/// Brings order `id` back into `state` if it is archived; says whether it did.
pub async fn restore_order<L: EventLog>(
    log: &L,
    state: &mut State,
    id: &OrderId,
) -> Result<bool, RecallError> {
    if state.orders.contains_key(id) {
        return Ok(false);
    }
    let seqs = state.archive.order_seqs(id);
    if seqs.is_empty() {
        return Ok(false);
    }
    match order(log, id, &seqs).await? {
        Some(order) => {
            state.restore_order(id.clone(), order);
            Ok(true)
        }
        None => Ok(false),
    }
}
