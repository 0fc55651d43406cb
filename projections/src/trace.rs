//! Lot traceability: for each lot, where it came from (receipts, purchase orders, suppliers)
//! and where it went (the orders it was picked for, shipped on and returned from); for each
//! order, the lots of its lines. Built, as every view, from events alone, so a replay to any
//! point of either timeline (`erp trace --as-of-seq / --as-effective`) answers as of then.
//!
//! Keys: `lot.<sku>.<lot>` (tokens escaped as subjects are).

use std::collections::{BTreeMap, BTreeSet};

use ledger::RecordedEvent;
use ledger::events::Event;
use ledger::subject::escape_token;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::key::{self, KeyShape};
use crate::view::{Answer, Model, QueryError, View, page, page_limit};

/// Where one lot came from and went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LotTrace {
    pub sku: String,
    pub lot: String,
    /// `YYYY-MM-DD`, from its first receipt.
    pub expires_on: Option<String>,
    pub receipts: Vec<LotReceipt>,
    /// The orders it was picked for, by order id.
    pub orders: BTreeMap<String, LotOrder>,
    /// Units picked, shipped and returned over all orders.
    pub picked: i64,
    pub shipped: i64,
    pub returned: i64,
    /// The ledger sequence of the last event that changed this row.
    pub seq: u64,
}

/// One receipt into a lot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LotReceipt {
    pub seq: u64,
    pub effective_at: String,
    pub location: String,
    pub qty: i64,
    pub purchase_order: Option<String>,
    pub supplier: Option<String>,
}

/// What one order took of a lot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LotOrder {
    pub order: String,
    pub channel: String,
    /// The order's id in the channel or upstream system.
    pub external_ref: String,
    pub picked: i64,
    pub shipped: i64,
    pub returned: i64,
    /// Business time of the first shipment with units of the lot.
    pub first_shipped_at: Option<String>,
}

/// Units of one lot picked for an order line, and how many of them have shipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LinePick {
    key: String,
    picked: i64,
    shipped: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OrderRef {
    channel: String,
    external_ref: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// By key `lot.<sku>.<lot>`.
    lots: BTreeMap<String, LotTrace>,
    /// Every order as placed: what a trace prints of it.
    orders: BTreeMap<String, OrderRef>,
    /// Purchase order -> supplier.
    suppliers: BTreeMap<String, String>,
    /// Order -> line -> the lots picked for it, in pick order.
    picks: BTreeMap<String, BTreeMap<u32, Vec<LinePick>>>,
}

/// Queries of `view.trace.<op>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum TraceQuery {
    /// Forward: where a lot went (the orders and their external refs), and where it came from.
    Lot { sku: String, lot: String },
    /// Backward: the lots of each line of an order, with the receipts and suppliers they
    /// came from.
    Order { order: String },
    /// The lots of a SKU, a page at a time.
    Lots {
        sku: String,
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
}

fn lot_key(sku: &str, lot: &str) -> String {
    key::key("lot", &[sku, lot])
}

/// The row of a lot, made on first mention.
fn lot_mut<'a>(
    lots: &'a mut BTreeMap<String, LotTrace>,
    sku: &str,
    lot: &str,
) -> (&'a mut LotTrace, String) {
    let key = lot_key(sku, lot);
    let row = lots.entry(key.clone()).or_insert_with(|| LotTrace {
        sku: sku.to_owned(),
        lot: lot.to_owned(),
        ..LotTrace::default()
    });
    (row, key)
}

impl Trace {
    fn order_of<'a>(
        orders: &BTreeMap<String, OrderRef>,
        row: &'a mut LotTrace,
        order: &str,
    ) -> &'a mut LotOrder {
        row.orders.entry(order.to_owned()).or_insert_with(|| {
            let placed = orders.get(order).cloned().unwrap_or_default();
            LotOrder {
                order: order.to_owned(),
                channel: placed.channel,
                external_ref: placed.external_ref,
                ..LotOrder::default()
            }
        })
    }

    /// Spreads `qty` shipped units of an order line over the lots picked for it, first
    /// picked first.
    fn ship(
        &mut self,
        order: &str,
        line: u32,
        qty: i64,
        at: &str,
        seq: u64,
        changed: &mut BTreeSet<String>,
    ) {
        let Some(picks) = self.picks.get_mut(order).and_then(|l| l.get_mut(&line)) else {
            return;
        };
        let mut left = qty;
        for pick in picks.iter_mut() {
            let take = (pick.picked - pick.shipped).min(left);
            if take <= 0 {
                continue;
            }
            left -= take;
            pick.shipped += take;
            if let Some(row) = self.lots.get_mut(&pick.key) {
                row.shipped += take;
                row.seq = seq;
                let o = Self::order_of(&self.orders, row, order);
                o.shipped += take;
                o.first_shipped_at.get_or_insert_with(|| at.to_owned());
                changed.insert(pick.key.clone());
            }
            if left == 0 {
                break;
            }
        }
    }

    fn backward(&self, order: &str) -> Option<serde_json::Value> {
        let lines = self.picks.get(order)?;
        let placed = self.orders.get(order).cloned().unwrap_or_default();
        let lines: Vec<serde_json::Value> = lines
            .iter()
            .map(|(line, picks)| {
                let lots: Vec<serde_json::Value> = picks
                    .iter()
                    .filter_map(|p| {
                        let row = self.lots.get(&p.key)?;
                        Some(json!({
                            "sku": row.sku,
                            "lot": row.lot,
                            "expires_on": row.expires_on,
                            "picked": p.picked,
                            "shipped": p.shipped,
                            "receipts": row.receipts,
                        }))
                    })
                    .collect();
                json!({"line": line, "lots": lots})
            })
            .collect();
        Some(json!({
            "order": order,
            "channel": placed.channel,
            "external_ref": placed.external_ref,
            "lines": lines,
        }))
    }
}

impl Model for Trace {
    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        let seq = event.seq;
        let at = event.envelope.effective_at.to_string();
        match (&event.envelope.subject, &event.envelope.event) {
            (_, Event::OrderPlaced(e)) => {
                self.orders.insert(
                    e.order.to_string(),
                    OrderRef {
                        channel: e.channel.to_string(),
                        external_ref: e.external_ref.clone(),
                    },
                );
            }
            (_, Event::PurchaseOrderCreated(e)) => {
                self.suppliers
                    .insert(e.purchase_order.to_string(), e.supplier.to_string());
            }
            (_, Event::StockReceived(e)) => {
                let Some(lot) = &e.lot else { return };
                let po = e.purchase.as_ref().map(|p| p.purchase_order.to_string());
                let supplier = po.as_ref().and_then(|po| self.suppliers.get(po)).cloned();
                let (row, key) = lot_mut(&mut self.lots, e.sku.as_str(), lot.as_str());
                if row.expires_on.is_none() {
                    row.expires_on = e.expires_on.map(|d| d.get().to_string());
                }
                row.receipts.push(LotReceipt {
                    seq,
                    effective_at: at,
                    location: e.location.to_string(),
                    qty: e.qty.get(),
                    purchase_order: po,
                    supplier,
                });
                row.seq = seq;
                changed.insert(key);
            }
            (_, Event::StockPicked(e)) => {
                let Some(lot) = &e.lot else { return };
                let order = e.order.to_string();
                let (row, key) = lot_mut(&mut self.lots, e.sku.as_str(), lot.as_str());
                row.picked += e.qty.get();
                row.seq = seq;
                Self::order_of(&self.orders, row, &order).picked += e.qty.get();
                let picks = self
                    .picks
                    .entry(order)
                    .or_default()
                    .entry(e.line)
                    .or_default();
                match picks.iter_mut().find(|p| p.key == key) {
                    Some(p) => p.picked += e.qty.get(),
                    None => picks.push(LinePick {
                        key: key.clone(),
                        picked: e.qty.get(),
                        shipped: 0,
                    }),
                }
                changed.insert(key);
            }
            (_, Event::StockShipped(e)) => {
                self.ship(e.order.as_str(), e.line, e.qty.get(), &at, seq, changed);
            }
            (_, Event::ReturnReceived(e)) => {
                let Some(lot) = &e.lot else { return };
                let order = e.order.to_string();
                let (row, key) = lot_mut(&mut self.lots, e.sku.as_str(), lot.as_str());
                row.returned += e.qty.get();
                row.seq = seq;
                Self::order_of(&self.orders, row, &order).returned += e.qty.get();
                changed.insert(key);
            }
            _ => {}
        }
    }

    fn value(&self, key: &str) -> Option<serde_json::Value> {
        self.lots
            .get(key)
            .map(|row| serde_json::to_value(row).expect("rows serialise"))
    }
}

impl View for Trace {
    const NAME: &'static str = "trace";
    const VERSION: u32 = 1;
    const KEYS: &'static [KeyShape] = &[KeyShape {
        kind: "lot",
        parts: &["sku", "lot"],
        row: "LotTrace: where a lot came from and went",
    }];
    type Row = LotTrace;
    type Query = TraceQuery;

    fn keys(&self) -> Box<dyn Iterator<Item = String> + '_> {
        Box::new(self.lots.keys().cloned())
    }

    fn answer(&self, query: &TraceQuery) -> Result<Answer, QueryError> {
        match query {
            TraceQuery::Lot { sku, lot } => self
                .lots
                .get(&lot_key(sku, lot))
                .map(|row| Answer::Value(serde_json::to_value(row).expect("rows serialise")))
                .ok_or_else(|| {
                    QueryError::not_found(format!("no lot `{lot}` of {sku} was received or picked"))
                }),
            TraceQuery::Order { order } => {
                self.backward(order).map(Answer::Value).ok_or_else(|| {
                    QueryError::not_found(format!(
                        "no unit of a lot was picked for order `{order}`"
                    ))
                })
            }
            TraceQuery::Lots { sku, after, limit } => {
                let prefix = format!("lot.{}.", escape_token(sku));
                let rows = self
                    .lots
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, r)| {
                        (
                            k.clone(),
                            json!({"lot": r.lot, "expires_on": r.expires_on,
                                   "received": r.receipts.iter().map(|x| x.qty).sum::<i64>(),
                                   "picked": r.picked, "shipped": r.shipped,
                                   "returned": r.returned, "orders": r.orders.len()}),
                        )
                    });
                let (lots, next_after) = page(rows, after.as_deref(), page_limit(*limit)?);
                Ok(Answer::Value(
                    json!({"lots": lots, "next_after": next_after}),
                ))
            }
        }
    }
}
