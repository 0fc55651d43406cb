//! Allocation: per order and line, where it is allocated, in which state, and why.
//! Keys: `ord.<order>`. Queries: `order`, `open`, `backordered`.

use std::collections::{BTreeMap, BTreeSet};

use ledger::events::Event;
use ledger::{RecordedEvent, Subject};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::key::{self, KeyShape};
use crate::view::{Answer, Model, QueryError, View, page, page_limit};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Route {
    pub location: String,
    pub reason: String,
    pub seq: u64,
}

/// `open` while any unit is neither shipped nor cancelled, then `closed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    #[default]
    Open,
    Closed,
}

/// Where a line stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineState {
    #[default]
    Open,
    Allocated,
    Released,
    Backordered,
    Picked,
    Packed,
    Shipped,
    Cancelled,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LineView {
    pub sku: String,
    pub qty: i64,
    /// Allocated and not yet shipped, per location.
    pub allocated: BTreeMap<String, i64>,
    pub backordered: i64,
    /// Picked and not yet shipped.
    pub picked: i64,
    /// Packed and not yet shipped.
    pub packed: i64,
    pub shipped: i64,
    pub cancelled: i64,
    pub routes: Vec<Route>,
    pub state: LineState,
}

impl LineView {
    fn allocated_total(&self) -> i64 {
        self.allocated.values().sum()
    }

    fn restate(&mut self, released: bool) {
        let open = self.qty - self.shipped - self.cancelled;
        self.state = if self.cancelled == self.qty {
            LineState::Cancelled
        } else if open == 0 {
            LineState::Shipped
        } else if self.packed > 0 {
            LineState::Packed
        } else if self.picked > 0 {
            LineState::Picked
        } else if self.backordered > 0 {
            LineState::Backordered
        } else if released && self.allocated_total() > 0 {
            LineState::Released
        } else if self.allocated_total() > 0 {
            LineState::Allocated
        } else {
            LineState::Open
        };
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderView {
    pub order: String,
    pub channel: String,
    pub ship_to_region: String,
    pub priority: u32,
    pub placed_at: String,
    pub held: bool,
    pub released_to_pick: bool,
    pub lines: BTreeMap<u32, LineView>,
    /// `open` while any unit is neither shipped nor cancelled, then `closed`.
    pub status: OrderStatus,
    pub seq: u64,
}

impl OrderView {
    fn restate(&mut self) {
        for line in self.lines.values_mut() {
            line.restate(self.released_to_pick);
        }
        let open = self
            .lines
            .values()
            .any(|l| l.qty - l.shipped - l.cancelled > 0);
        self.status = if open {
            OrderStatus::Open
        } else {
            OrderStatus::Closed
        };
    }

    fn backordered(&self) -> bool {
        self.lines.values().any(|l| l.backordered > 0)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// By key `ord.<order token>`.
    orders: BTreeMap<String, OrderView>,
    open: BTreeSet<String>,
    backordered: BTreeSet<String>,
}

fn take(map: &mut BTreeMap<String, i64>, location: &str, qty: i64) {
    let entry = map.entry(location.to_owned()).or_insert(0);
    *entry -= qty;
    if *entry <= 0 {
        map.remove(location);
    }
}

fn line(o: &mut OrderView, n: u32) -> &mut LineView {
    o.lines.entry(n).or_default()
}

fn apply_order_event(o: &mut OrderView, event: &Event, seq: u64) {
    use Event as E;
    match event {
        E::OrderHeld(_) => o.held = true,
        E::OrderReleased(_) => o.held = false,
        E::LineRouted(e) => line(o, e.line).routes.push(Route {
            location: e.location.to_string(),
            reason: e.reason.clone(),
            seq,
        }),
        E::LineAllocated(e) => {
            let l = line(o, e.line);
            *l.allocated.entry(e.location.to_string()).or_insert(0) += e.qty.get();
            l.backordered = (l.backordered - e.qty.get()).max(0);
        }
        E::LineBackordered(e) => line(o, e.line).backordered += e.qty.get(),
        E::LinesAdded(e) => {
            for a in &e.lines {
                let l = line(o, a.line.line);
                l.sku = a.line.sku.to_string();
                l.qty = a.line.qty.get();
            }
        }
        E::LineUnallocated(e) => take(
            &mut line(o, e.line).allocated,
            e.location.as_str(),
            e.qty.get(),
        ),
        E::OrderReleasedToPick(_) => o.released_to_pick = true,
        E::LinePicked(e) => line(o, e.line).picked += e.qty.get(),
        E::OrderPacked(e) => {
            for l in &e.lines {
                let v = line(o, l.line);
                v.packed += l.qty.get();
            }
        }
        E::OrderShipped(e) => {
            for l in &e.lines {
                let v = line(o, l.line);
                let qty = l.qty.get();
                v.shipped += qty;
                v.packed -= qty;
                v.picked -= qty;
                // Shipped units leave the allocation, first location first (as the write model).
                let mut left = qty;
                for (location, allocated) in v.allocated.clone() {
                    let n = allocated.min(left);
                    take(&mut v.allocated, &location, n);
                    left -= n;
                }
            }
        }
        E::LinesCancelled(e) => {
            for l in &e.lines {
                let v = line(o, l.line);
                let mut left = l.qty.get();
                let from_backorder = left.min(v.backordered);
                v.backordered -= from_backorder;
                left -= from_backorder;
                for (location, allocated) in v.allocated.clone() {
                    let n = allocated.min(left);
                    take(&mut v.allocated, &location, n);
                    left -= n;
                }
                v.cancelled += l.qty.get();
            }
        }
        _ => {}
    }
}

impl Model for Allocation {
    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        let Subject::Order(order) = &event.envelope.subject else {
            return;
        };
        let key = key::key("ord", &[order.as_str()]);
        let view = match &event.envelope.event {
            Event::OrderPlaced(p) => {
                let lines = p
                    .lines
                    .iter()
                    .map(|l| {
                        (
                            l.line,
                            LineView {
                                sku: l.sku.to_string(),
                                qty: l.qty.get(),
                                ..LineView::default()
                            },
                        )
                    })
                    .collect();
                self.orders.insert(
                    key.clone(),
                    OrderView {
                        order: order.to_string(),
                        channel: p.channel.to_string(),
                        ship_to_region: p.ship_to_region.clone(),
                        priority: p.priority,
                        placed_at: event.envelope.effective_at.to_string(),
                        ..OrderView::default()
                    },
                );
                let view = self.orders.get_mut(&key).expect("inserted");
                view.lines = lines;
                view
            }
            other => match self.orders.get_mut(&key) {
                Some(view) => {
                    apply_order_event(view, other, event.seq);
                    view
                }
                None => return,
            },
        };
        view.seq = event.seq;
        view.restate();
        let (open, backordered) = (view.status == OrderStatus::Open, view.backordered());
        if open {
            self.open.insert(key.clone())
        } else {
            self.open.remove(&key)
        };
        if backordered {
            self.backordered.insert(key.clone())
        } else {
            self.backordered.remove(&key)
        };
        changed.insert(key);
    }

    fn value(&self, key: &str) -> Option<serde_json::Value> {
        self.orders
            .get(key)
            .map(|o| serde_json::to_value(o).expect("orders serialise"))
    }
}

/// Queries of `view.allocation.<op>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AllocationQuery {
    /// One order, its lines, where each is allocated and why.
    Order { order: String },
    /// Orders with units neither shipped nor cancelled, in key order, a page at a time.
    Open {
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Orders with a backordered line, a page at a time.
    Backordered {
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
}

impl View for Allocation {
    const NAME: &'static str = "allocation";
    const VERSION: u32 = 1;
    const KEYS: &'static [KeyShape] = &[KeyShape {
        kind: "ord",
        parts: &["order"],
        row: "OrderView: an order's lines, their state, allocations and routing reasons",
    }];
    type Row = OrderView;
    type Query = AllocationQuery;

    fn keys(&self) -> Box<dyn Iterator<Item = String> + '_> {
        Box::new(self.orders.keys().cloned())
    }

    fn answer(&self, query: &AllocationQuery) -> Result<Answer, QueryError> {
        let list = |set: &BTreeSet<String>, after: &Option<String>, limit: Option<u32>| {
            let (orders, next_after) = page(
                set.iter()
                    .filter_map(|k| self.orders.get(k).map(|o| (k.clone(), o.order.as_str()))),
                after.as_deref(),
                page_limit(limit)?,
            );
            Ok(Answer::Value(
                json!({"count": set.len(), "orders": orders, "next_after": next_after}),
            ))
        };
        match query {
            AllocationQuery::Order { order } => {
                let key = key::key("ord", &[order]);
                self.value(&key)
                    .map(Answer::Value)
                    .ok_or_else(|| QueryError::not_found(format!("no order {order}")))
            }
            AllocationQuery::Open { after, limit } => list(&self.open, after, *limit),
            AllocationQuery::Backordered { after, limit } => list(&self.backordered, after, *limit),
        }
    }
}
