//! Audit: per entity (SKU, location, order, purchase order, channel, supplier, actor, legal
//! entity, approval request), every event and every refused command about it, with who, when
//! (effective and recorded), which command and which approval. An accepted command that a
//! maker-checker threshold let through shows its outcome record (with the threshold, what it
//! measured, who set it and when) in the trails of what its events concern.
//!
//! The view keeps, per entity key, the ledger sequences that concern it (delta-encoded in its
//! snapshot); a query reads those events back from the ledger, so the answer shows exactly
//! what was recorded. Keys `ent.<kind>.<id token>` hold each entity's event count and last
//! sequence (a change feed per entity).

use std::collections::{BTreeMap, BTreeSet};

use ledger::RecordedEvent;
use ledger::events::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::json;

use crate::key::{self, KeyShape};
use crate::view::{
    Answer, Model, QueryError, Read, ReadSource, TimeBasis, TimeRange, View, page, page_limit,
};

/// Ascending sequences, stored as gaps so a year of history stays small.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seqs(Vec<u64>);

impl Serialize for Seqs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut previous = 0;
        let gaps: Vec<u64> = self
            .0
            .iter()
            .map(|&seq| {
                let gap = seq - previous;
                previous = seq;
                gap
            })
            .collect();
        gaps.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Seqs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let gaps = Vec::<u64>::deserialize(d)?;
        let mut seq = 0;
        Ok(Seqs(
            gaps.into_iter()
                .map(|gap| {
                    seq += gap;
                    seq
                })
                .collect(),
        ))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    entities: BTreeMap<String, Seqs>,
    /// The command whose events came last and what they concern: its outcome record, when it
    /// names the maker-checker threshold in force, goes in the same trails (a command's
    /// events and its outcome are stored together, outcome last).
    #[serde(default)]
    last_command: Option<(uuid::Uuid, BTreeSet<String>)>,
}

/// `sku:85123A` -> `ent.sku.85123A` (KV keys cannot hold `:`; ids are escaped).
fn kv_key(entity: &str) -> String {
    let (kind, id) = entity.split_once(':').unwrap_or(("other", entity));
    key::key("ent", &[kind, id])
}

/// An entity's row: how many events concern it, and the last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct EntityRow {
    /// `kind:id`, e.g. `sku:85123A`, `actor:clerk-7`.
    pub entity: String,
    pub events: usize,
    pub last_seq: Option<u64>,
}

/// Queries of `view.audit.<op>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuditQuery {
    /// The events and refused commands that concern an entity (`kind:id`), read back from the
    /// ledger, oldest first, a page at a time, optionally within a time window.
    Entity {
        entity: String,
        #[serde(default)]
        after_seq: Option<u64>,
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        time: TimeBasis,
        #[serde(default)]
        from: Option<ledger::values::Timestamp>,
        #[serde(default)]
        to: Option<ledger::values::Timestamp>,
    },
    /// The entities the trail knows, with their counts, a page at a time.
    Entities {
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
}

impl Audit {
    fn entities_of(&mut self, event: &RecordedEvent) -> BTreeSet<String> {
        let e = &event.envelope;
        let mut keys = BTreeSet::new();
        keys.insert(ledger::entities::actor(&e.actor.id));
        if let ledger::Subject::LegalEntity(id) = &e.subject {
            keys.insert(format!("legal_entity:{id}"));
        }
        match &e.event {
            Event::CommandRejected(r) => keys.extend(r.targets.iter().cloned()),
            // Acceptances are found through the command's own events, unless they name the
            // threshold that let the command through.
            Event::CommandAccepted(a) => {
                let last = self.last_command.take();
                if a.threshold.is_none() {
                    return BTreeSet::new();
                }
                keys.insert(format!("legal_entity:{}", e.legal_entity));
                if let Some((id, concerned)) = last
                    && id == e.command_id
                {
                    keys.extend(concerned);
                }
            }
            other => {
                let json = serde_json::to_value(other).expect("events serialise");
                keys.extend(ledger::entities::mentioned(&json["data"]));
                match other {
                    // A waiting command shows in the trails of what it names, and under its
                    // request; requesters and approvers under their own names.
                    Event::ApprovalRequested(r) => {
                        keys.insert(format!("approval:{}", r.request));
                        keys.insert(ledger::entities::actor(&r.requester));
                        if let Ok(held) = serde_json::from_str::<serde_json::Value>(&r.command) {
                            keys.extend(ledger::entities::mentioned(&held["data"]));
                        }
                    }
                    Event::ApprovalGranted(ledger::events::ApprovalGranted {
                        request,
                        requester,
                        approver,
                        ..
                    })
                    | Event::ApprovalRejected(ledger::events::ApprovalRejected {
                        request,
                        requester,
                        approver,
                        ..
                    }) => {
                        keys.insert(format!("approval:{request}"));
                        keys.insert(ledger::entities::actor(requester));
                        keys.insert(ledger::entities::actor(approver));
                    }
                    _ => {}
                }
                match &mut self.last_command {
                    Some((id, concerned)) if *id == e.command_id => {
                        concerned.extend(keys.iter().cloned());
                    }
                    last => *last = Some((e.command_id, keys.clone())),
                }
            }
        }
        keys
    }
}

impl Model for Audit {
    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        for entity in self.entities_of(event) {
            changed.insert(kv_key(&entity));
            self.entities.entry(entity).or_default().0.push(event.seq);
        }
    }

    fn value(&self, key: &str) -> Option<serde_json::Value> {
        let [kind, id]: [String; 2] = key::parts(key, "ent", 2)?.try_into().ok()?;
        let row = self.row(&format!("{kind}:{id}"))?;
        Some(serde_json::to_value(row).expect("rows serialise"))
    }
}

impl View for Audit {
    const NAME: &'static str = "audit";
    /// 2: legal entities, approvals and the thresholds in force in the trails.
    const VERSION: u32 = 2;
    const KEYS: &'static [KeyShape] = &[KeyShape {
        kind: "ent",
        parts: &["kind", "id"],
        row: "EntityRow: how many events concern an entity, and the last",
    }];
    type Row = EntityRow;
    type Query = AuditQuery;

    fn keys(&self) -> Box<dyn Iterator<Item = String> + '_> {
        let mut keys: Vec<String> = self.entities.keys().map(|e| kv_key(e)).collect();
        keys.sort();
        Box::new(keys.into_iter())
    }

    fn answer(&self, query: &AuditQuery) -> Result<Answer, QueryError> {
        match query {
            AuditQuery::Entity {
                entity,
                after_seq,
                limit,
                time,
                from,
                to,
            } => {
                if !entity.contains(':') {
                    return Err(QueryError::bad_query(
                        "entity: expected kind:id, e.g. sku:85123A or actor:clerk-7",
                    ));
                }
                Ok(Answer::Read(Read {
                    from: ReadSource::Seqs(self.sequences(entity).to_vec()),
                    after_seq: after_seq.unwrap_or(0),
                    limit: page_limit(*limit)?,
                    range: TimeRange {
                        time: *time,
                        from: *from,
                        to: *to,
                    },
                }))
            }
            AuditQuery::Entities { after, limit } => {
                let (rows, next_after) = page(
                    self.entities
                        .keys()
                        .filter_map(|e| Some((e.clone(), self.row(e)?))),
                    after.as_deref(),
                    page_limit(*limit)?,
                );
                Ok(Answer::Value(json!({
                    "count": self.entities.len(), "entities": rows, "next_after": next_after
                })))
            }
        }
    }

    /// One event as the audit trail shows it: who, when (both times), under which command,
    /// and the event's data (approvals included, where the event has them).
    fn render(&self, _query: &AuditQuery, event: &RecordedEvent) -> Option<serde_json::Value> {
        let e = &event.envelope;
        let data = serde_json::to_value(&e.event).expect("events serialise");
        Some(json!({
            "seq": event.seq,
            "type": e.event.event_type().name(),
            "subject": e.subject.relative(),
            "effective_at": e.effective_at.to_string(),
            "recorded_at": event.recorded_at.to_string(),
            "actor": {"id": e.actor.id.to_string(), "role": e.actor.role.to_string()},
            "command_id": e.command_id,
            "correlation_id": e.correlation_id,
            "legal_entity": e.legal_entity.to_string(),
            "data": data["data"],
        }))
    }
}

impl Audit {
    /// Sequences recorded for an entity (tests and exports).
    pub fn sequences(&self, entity: &str) -> &[u64] {
        self.entities.get(entity).map_or(&[], |s| &s.0)
    }

    fn row(&self, entity: &str) -> Option<EntityRow> {
        let seqs = self.entities.get(entity)?;
        Some(EntityRow {
            entity: entity.to_owned(),
            events: seqs.0.len(),
            last_seq: seqs.0.last().copied(),
        })
    }
}
