//! What a replay builds: any projection view (every `projections::View` is a `Model`), or the
//! processor's write model.

use std::collections::BTreeSet;

use commands::state::{Balance, LineState, OrderState, State};
use ledger::subject::escape_token;
use ledger::{Head, RecordedEvent, Subject};
pub use projections::Model;
use serde_json::{Value, json};

/// The processor's write model (`commands::state::State`), built by the same `apply` the
/// processor uses. Rows: `bal.<sku>.<location>` (stock balances) and `ord.<order>` (order
/// lines and their progress).
#[derive(Debug, Default)]
pub struct WriteModel(pub State);

fn balance_key(sku: &str, location: &str) -> String {
    format!("bal.{}.{}", escape_token(sku), escape_token(location))
}

impl Model for WriteModel {
    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        let envelope = &event.envelope;
        let touched_locations = |state: &State, sku| -> Vec<String> {
            state
                .stock
                .get(sku)
                .map(|s| s.balances.keys().map(|l| l.as_str().to_owned()).collect())
                .unwrap_or_default()
        };
        let before = match &envelope.subject {
            Subject::Stock(sku) => touched_locations(&self.0, sku),
            _ => Vec::new(),
        };
        self.0.apply(
            envelope,
            Some(Head {
                seq: event.seq,
                hash: event.hash,
            }),
        );
        match &envelope.subject {
            Subject::Stock(sku) => {
                let after = touched_locations(&self.0, sku);
                for location in before.iter().chain(&after) {
                    changed.insert(balance_key(sku.as_str(), location));
                }
            }
            Subject::Order(order) => {
                changed.insert(format!("ord.{}", escape_token(order.as_str())));
            }
            _ => {}
        }
    }

    fn value(&self, key: &str) -> Option<Value> {
        let unescape = |t: &str| ledger::subject::unescape_token(t).ok();
        if let Some(rest) = key.strip_prefix("bal.") {
            let (sku, location) = rest.split_once('.')?;
            let (sku, location) = (unescape(sku)?, unescape(location)?);
            let stock = self
                .0
                .stock
                .get(&ledger::values::Sku::new(sku.clone()).ok()?)?;
            let balance = stock
                .balances
                .get(&ledger::values::LocationId::new(location.clone()).ok()?)?;
            return Some(balance_json(&sku, &location, balance));
        }
        if let Some(token) = key.strip_prefix("ord.") {
            let order = unescape(token)?;
            let state = self
                .0
                .orders
                .get(&ledger::values::OrderId::new(order.clone()).ok()?)?;
            return Some(order_json(&order, state));
        }
        None
    }
}

fn balance_json(sku: &str, location: &str, b: &Balance) -> Value {
    json!({
        "sku": sku,
        "location": location,
        "on_hand": b.on_hand,
        "allocated": b.allocated,
        "reserved": b.reserved,
        "quality_hold": b.quality_hold,
        "in_transit": b.in_transit,
        "free": b.free(),
    })
}

fn order_json(order: &str, o: &OrderState) -> Value {
    let line = |(n, l): (&u32, &LineState)| {
        json!({
            "line": n,
            "sku": l.sku.as_ref().map(|s| s.as_str()),
            "qty": l.qty,
            "allocated": l.allocated_total(),
            "backordered": l.backordered,
            "picked": l.picked_total(),
            "packed": l.packed,
            "shipped": l.shipped,
            "cancelled": l.cancelled,
            "return_authorised": l.return_authorised,
        })
    };
    json!({
        "order": order,
        "channel": o.channel.as_str(),
        "placed_at": o.placed_at,
        "held": o.hold.is_some(),
        "hold_reason": o.hold.as_ref().map(|r| r.as_str()),
        "released_to_pick": o.released_to_pick,
        "open_units": o.lines.values().map(LineState::open).sum::<i64>(),
        "lines": o.lines.iter().map(line).collect::<Vec<_>>(),
    })
}
