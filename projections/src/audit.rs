//! Audit: per entity (SKU, location, order, purchase order, channel, supplier, actor), every
//! event and every refused command about it, with who, when (effective and recorded), which
//! command and which approval.
//!
//! The view keeps, per entity key, the ledger sequences that concern it (delta-encoded in its
//! snapshot); a query reads those events back from the ledger, so the answer shows exactly
//! what was recorded. Keys `ent.<kind>.<id token>` hold each entity's event count and last
//! sequence (a change feed per entity).

use std::collections::{BTreeMap, BTreeSet};

use ledger::RecordedEvent;
use ledger::events::Event;
use ledger::subject::escape_token;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::json;

use crate::view::{EventsQuery, QueryError, TimeRange, View, field};

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
}

/// `sku:85123A` -> `ent.sku.85123A` (KV keys cannot hold `:`; ids are escaped).
fn kv_key(entity: &str) -> String {
    let (kind, id) = entity.split_once(':').unwrap_or(("other", entity));
    format!("ent.{kind}.{}", escape_token(id))
}

fn entities_of(event: &RecordedEvent) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    keys.insert(ledger::entities::actor(&event.envelope.actor.id));
    match &event.envelope.event {
        Event::CommandRejected(r) => keys.extend(r.targets.iter().cloned()),
        // Acceptances are found through the command's own events.
        Event::CommandAccepted(_) => return BTreeSet::new(),
        other => {
            let json = serde_json::to_value(other).expect("events serialise");
            keys.extend(ledger::entities::mentioned(&json["data"]));
        }
    }
    keys
}

impl View for Audit {
    const NAME: &'static str = "audit";
    const VERSION: u32 = 1;

    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        for entity in entities_of(event) {
            changed.insert(kv_key(&entity));
            self.entities.entry(entity).or_default().0.push(event.seq);
        }
    }

    fn value(&self, key: &str) -> Option<serde_json::Value> {
        let (kind, token) = key.strip_prefix("ent.")?.split_once('.')?;
        let entity = format!("{kind}:{}", ledger::subject::unescape_token(token).ok()?);
        let seqs = self.entities.get(&entity)?;
        Some(json!({"entity": entity, "events": seqs.0.len(), "last_seq": seqs.0.last()}))
    }

    fn query(&self, op: &str, _body: &serde_json::Value) -> Result<serde_json::Value, QueryError> {
        match op {
            "entities" => Ok(json!({"count": self.entities.len()})),
            other => Err(QueryError::bad_query(format!(
                "unknown query `{other}`; expected entity or entities"
            ))),
        }
    }

    fn events(
        &self,
        op: &str,
        body: &serde_json::Value,
    ) -> Option<Result<EventsQuery, QueryError>> {
        if op != "entity" {
            return None;
        }
        Some((|| {
            let entity = field(body, "entity")?;
            if !entity.contains(':') {
                return Err(QueryError::bad_query(
                    "entity: expected kind:id, e.g. sku:85123A or actor:clerk-7",
                ));
            }
            let after = body.get("after_seq").and_then(|v| v.as_u64()).unwrap_or(0);
            let seqs = self
                .entities
                .get(entity)
                .map(|s| s.0.iter().copied().filter(|&s| s > after).collect())
                .unwrap_or_default();
            Ok(EventsQuery {
                seqs,
                range: TimeRange::from_body(body)?,
                limit: body
                    .get("limit")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(100)
                    .min(1000) as usize,
            })
        })())
    }
}

impl Audit {
    /// Sequences recorded for an entity (tests and exports).
    pub fn sequences(&self, entity: &str) -> &[u64] {
        self.entities.get(entity).map_or(&[], |s| &s.0)
    }
}
