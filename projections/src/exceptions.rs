//! Exceptions: what hurts service or margin, raised by rules from the log and worked by
//! people, ranked by what is at stake.
//!
//! Keys: `exc.<kind>.<subject ids...>` (`exc.order_unshipped.581475`,
//! `exc.count_variance.85123A.UK-DC`). Each kind of exception has a condition on what the
//! log says (an order released to pick still has open units `threshold` days later, a count
//! found more than `threshold` percent off, ...). Time-based conditions are judged on the
//! **business clock**: the latest effective time of any event applied, so a replay raises the
//! same exceptions at the same points as the live projector. An exception is raised when its
//! condition starts to hold (stamped with the business time it started: a deadline, or the
//! event's time), clears itself when the condition stops holding (recording which event
//! cleared it), and is worked by `exception.assign`, `exception.resolve` and
//! `exception.snooze`. A resolved exception is not raised again until its condition has
//! stopped holding and starts again (a new occurrence).
//!
//! Queries: `queue` (ranked by priority score, filtered, paged), `exception`, `about` (every
//! exception of one subject), `counts` (by kind, status and age).

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use ledger::events::{
    Event, ExceptionKind, ExceptionRef, ExceptionRule, ExceptionSubject, Resolution, Severity,
};
use ledger::values::{Money, Timestamp};
use ledger::{RecordedEvent, Subject};
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::key::{self, KeyShape};
use crate::view::{Answer, Model, QueryError, View, page_limit};

/// Where an exception stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Snoozed,
    Resolved,
    Cleared,
}

/// What is at stake.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Impact {
    /// Revenue (order kinds, at the order's prices) or cost (purchase and stock kinds, at
    /// the purchase order's or the last receipt's unit cost) at risk; `None` when no price is
    /// known.
    pub value: Option<Money>,
    /// Units concerned.
    pub units: i64,
    /// The order's priority (lower is served first), for order kinds.
    pub customer_priority: Option<u32>,
}

/// Who resolved it, how and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Resolved {
    pub resolution: Resolution,
    pub note: String,
    pub by: String,
    pub at: Timestamp,
    pub seq: u64,
}

/// What cleared it: the event after which its condition no longer held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Cleared {
    pub event_type: String,
    pub at: Timestamp,
    pub seq: u64,
}

/// What a blocking exception asks of its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldAction {
    Hold,
    Release,
}

/// The order hold placed because the exception blocks fulfilment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HoldPlaced {
    pub by: String,
    pub at: Timestamp,
    pub seq: u64,
}

/// One exception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExceptionRow {
    pub kind: ExceptionKind,
    pub on: ExceptionSubject,
    /// The legal entity whose subject it is.
    pub entity: String,
    pub severity: Severity,
    pub status: Status,
    /// Business time the condition started to hold (a deadline passed, or the event's time).
    pub raised_at: Timestamp,
    /// The ledger sequence of the event that raised it (for time-based kinds, the first event
    /// whose effective time passed the deadline).
    pub raised_seq: u64,
    pub impact: Impact,
    pub owner: Option<String>,
    pub snoozed_until: Option<Timestamp>,
    pub resolved: Option<Resolved>,
    pub cleared: Option<Cleared>,
    /// How many times it was raised (a condition that stops and starts again).
    pub occurrences: u32,
    /// Whether the rule in force when it was raised blocks fulfilment: the order is to be
    /// held (`order.hold`, reason `exception.<kind>`) while it is open or snoozed.
    pub blocks: bool,
    /// The hold placed on the order for it, until the order is released.
    pub hold: Option<HoldPlaced>,
    /// Someone released the order while this occurrence was active: it is not held again
    /// for it.
    #[serde(default)]
    pub hold_lifted: bool,
    /// Whether its condition holds now.
    pub condition_holds: bool,
    /// The ledger sequence of the last event that changed it.
    pub seq: u64,
}

impl ExceptionRow {
    fn active(&self) -> bool {
        matches!(self.status, Status::Open | Status::Snoozed)
    }

    /// Days since it was raised, by the business clock; for a resolved or cleared one, the
    /// days it was open.
    fn age_days(&self, clock: Timestamp) -> i64 {
        let end = match (&self.resolved, &self.cleared) {
            (Some(r), _) if self.status == Status::Resolved => r.at,
            (_, Some(c)) if self.status == Status::Cleared => c.at,
            _ => clock,
        };
        (end.as_datetime() - self.raised_at.as_datetime())
            .num_days()
            .max(0)
    }

    /// The priority score: severity weight × value at risk × (1 + whole days since raised).
    /// A kind with no known value counts one unit of money per unit concerned.
    pub fn score(&self, clock: Timestamp) -> Decimal {
        let value = match &self.impact.value {
            Some(v) => v.amount.abs(),
            None => Decimal::from(self.impact.units.abs()),
        };
        Decimal::from(self.severity.weight()) * value * Decimal::from(1 + self.age_days(clock))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LineTrack {
    sku: String,
    qty: i64,
    unit_price: Option<Money>,
    shipped: i64,
    cancelled: i64,
    backordered: i64,
}

impl LineTrack {
    /// A line as ordered (at placement or added later), nothing shipped yet.
    fn ordered(l: &ledger::events::OrderLine) -> LineTrack {
        LineTrack {
            sku: l.sku.to_string(),
            qty: l.qty.get(),
            unit_price: Some(l.unit_price),
            ..LineTrack::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PackageTrack {
    shipped_at: Timestamp,
    lines: Vec<(u32, i64)>,
    delivered: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ReturnTrack {
    /// When the first units arrived.
    received_at: Option<Timestamp>,
    /// Line -> units received.
    received: BTreeMap<u32, i64>,
    dispositioned: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OrderTrack {
    entity: String,
    priority: u32,
    promise_date: Option<ledger::values::Date>,
    released_at: Option<Timestamp>,
    /// Why the order is held, if it is.
    held: Option<String>,
    lines: BTreeMap<u32, LineTrack>,
    packages: BTreeMap<String, PackageTrack>,
    returns: BTreeMap<String, ReturnTrack>,
}

impl OrderTrack {
    fn value_of(&self, units: impl Iterator<Item = (u32, i64)>) -> (Option<Money>, i64) {
        priced(units.map(|(line, n)| (n, self.lines.get(&line).and_then(|l| l.unit_price))))
    }
}

/// Units summed, and their value at each one's price (`None` when no unit has one).
fn priced(items: impl Iterator<Item = (i64, Option<Money>)>) -> (Option<Money>, i64) {
    let mut total: Option<Money> = None;
    let mut count = 0;
    for (n, price) in items {
        count += n;
        if let Some(price) = price {
            let add = price.amount * Decimal::from(n);
            match &mut total {
                Some(t) => t.amount += add,
                None => {
                    total = Some(Money {
                        amount: add,
                        currency: price.currency,
                    })
                }
            }
        }
    }
    (total, count)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PurchaseTrack {
    entity: String,
    expected_on: ledger::values::Date,
    approved: bool,
    closed: bool,
    /// Line -> (ordered, received, unit cost).
    lines: BTreeMap<u32, (i64, i64, Money)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StockTrack {
    free: i64,
    /// The last count's variance and what it expected.
    last_count: Option<(i64, i64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exceptions {
    /// The business clock: the latest effective time applied.
    clock: Option<Timestamp>,
    /// Rules set per legal entity, by kind name (`None`: turned off).
    rules: BTreeMap<String, BTreeMap<String, Option<ExceptionRule>>>,
    orders: BTreeMap<String, OrderTrack>,
    /// Return id -> order id.
    return_orders: BTreeMap<String, String>,
    purchases: BTreeMap<String, PurchaseTrack>,
    /// By key `<sku token>.<location token>`.
    stock: BTreeMap<String, StockTrack>,
    safety: BTreeMap<String, i64>,
    unit_cost: BTreeMap<String, Money>,
    location_entity: BTreeMap<String, String>,
    /// Checks due at a business time: `<sortable micros>|<row key>` -> the exception.
    due: BTreeMap<String, ExceptionRef>,
    /// By key `exc.<kind>.<parts>`.
    rows: BTreeMap<String, ExceptionRow>,
    /// Actions on exceptions that were not open (or never raised) when they arrived.
    actions_not_applied: u64,
    /// Keys of the exceptions whose order is to be held or released (`hold_action`).
    hold_actions: BTreeSet<String>,
    /// The ledger's integrity problems by sequence: which kind, the entity (`-` for a foreign
    /// message), and an unbalanced journal's difference.
    integrity: BTreeMap<u64, (ExceptionKind, String, Option<Money>)>,
    /// The postings of every event, to find one that does not balance.
    books: crate::books::Books,
}

fn row_key(r: &ExceptionRef) -> String {
    let mut parts = vec![r.kind.name().to_owned()];
    parts.extend(r.on.parts());
    key::key("exc", &parts)
}

fn sortable(at: Timestamp) -> String {
    format!("{:020}", (i128::from(at.micros()) + (1i128 << 63)) as u64)
}

fn days(n: u32) -> Duration {
    Duration::days(i64::from(n))
}

fn start_of_day_after(date: ledger::values::Date) -> Timestamp {
    let next = date.get() + Duration::days(1);
    Timestamp::new(next.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
}

impl Exceptions {
    fn rule(&self, entity: &str, kind: &ExceptionKind) -> Option<ExceptionRule> {
        match self.rules.get(entity).and_then(|r| r.get(kind.name())) {
            Some(set) => set.clone(),
            None => Some(kind.default_rule()),
        }
    }

    fn entity_of(&self, on: &ExceptionSubject) -> Option<String> {
        match on {
            ExceptionSubject::Order { order }
            | ExceptionSubject::Shipment { order, .. }
            | ExceptionSubject::Return { order, .. } => {
                self.orders.get(order.as_str()).map(|o| o.entity.clone())
            }
            ExceptionSubject::PurchaseOrder { purchase_order } => self
                .purchases
                .get(purchase_order.as_str())
                .map(|p| p.entity.clone()),
            ExceptionSubject::Stock { location, .. } => {
                self.location_entity.get(location.as_str()).cloned()
            }
            ExceptionSubject::Ledger { seq } => self.integrity.get(seq).map(|i| i.1.clone()),
        }
    }

    /// When a time-based condition starts to hold, if it will.
    fn deadline(&self, r: &ExceptionRef) -> Option<Timestamp> {
        let entity = self.entity_of(&r.on)?;
        let rule = self.rule(&entity, &r.kind)?;
        let after = |t: Timestamp| Timestamp::new(t.as_datetime() + days(rule.threshold));
        match (&r.kind, &r.on) {
            (ExceptionKind::OrderUnshipped, ExceptionSubject::Order { order }) => {
                self.orders.get(order.as_str())?.released_at.map(after)
            }
            (ExceptionKind::BackorderPastPromise, ExceptionSubject::Order { order }) => self
                .orders
                .get(order.as_str())?
                .promise_date
                .map(|d| after(start_of_day_after(d))),
            (ExceptionKind::ShipmentInTransit, ExceptionSubject::Shipment { order, package }) => {
                let o = self.orders.get(order.as_str())?;
                o.packages
                    .get(package.as_str())
                    .map(|p| after(p.shipped_at))
            }
            (ExceptionKind::ReturnNotInspected, ExceptionSubject::Return { order, return_id }) => {
                self.orders
                    .get(order.as_str())?
                    .returns
                    .get(return_id.as_str())?
                    .received_at
                    .map(after)
            }
            (
                ExceptionKind::PurchaseOrderOverdue,
                ExceptionSubject::PurchaseOrder { purchase_order },
            ) => {
                let p = self.purchases.get(purchase_order.as_str())?;
                Some(after(start_of_day_after(p.expected_on)))
            }
            _ => None,
        }
    }

    /// Whether the exception's condition holds at the business clock, with what is at
    /// stake and since when.
    fn condition(&self, r: &ExceptionRef, at: Timestamp) -> Option<(Impact, Timestamp)> {
        let entity = self.entity_of(&r.on)?;
        let rule = self.rule(&entity, &r.kind)?;
        if let ExceptionSubject::Ledger { seq } = &r.on {
            // The ledger's own integrity: holds from the moment it is seen, for good.
            let (kind, _, imbalance) = self.integrity.get(seq)?;
            return (*kind == r.kind).then_some((
                Impact {
                    value: *imbalance,
                    units: 0,
                    customer_priority: None,
                },
                at,
            ));
        }
        let clock = self.clock?;
        let timed = !matches!(
            r.kind,
            ExceptionKind::ReceiptVariance
                | ExceptionKind::CountVariance
                | ExceptionKind::BelowSafetyStock
        );
        let since = match self.deadline(r) {
            Some(deadline) if deadline <= clock => deadline,
            Some(_) => return None,
            // A time-based kind without a deadline (no promise date, never released) never
            // falls due.
            None if timed => return None,
            None => at,
        };
        let order_impact = |o: &OrderTrack, units: Vec<(u32, i64)>| {
            let (value, units) = o.value_of(units.into_iter());
            (units > 0).then_some(Impact {
                value,
                units,
                customer_priority: Some(o.priority),
            })
        };
        let impact = match (&r.kind, &r.on) {
            (ExceptionKind::OrderUnshipped, ExceptionSubject::Order { order }) => {
                let o = self.orders.get(order.as_str())?;
                let open = o
                    .lines
                    .iter()
                    .map(|(n, l)| (*n, (l.qty - l.shipped - l.cancelled).max(0)))
                    .collect();
                order_impact(o, open)?
            }
            (ExceptionKind::BackorderPastPromise, ExceptionSubject::Order { order }) => {
                let o = self.orders.get(order.as_str())?;
                let back = o
                    .lines
                    .iter()
                    .map(|(n, l)| (*n, l.backordered.max(0)))
                    .collect();
                order_impact(o, back)?
            }
            (ExceptionKind::ShipmentInTransit, ExceptionSubject::Shipment { order, package }) => {
                let o = self.orders.get(order.as_str())?;
                let p = o.packages.get(package.as_str())?;
                if p.delivered {
                    return None;
                }
                order_impact(o, p.lines.clone())?
            }
            (ExceptionKind::ReturnNotInspected, ExceptionSubject::Return { order, return_id }) => {
                let o = self.orders.get(order.as_str())?;
                let ret = o.returns.get(return_id.as_str())?;
                // Inspected units are taken from the lines in line order.
                let mut done = ret.dispositioned;
                let waiting = ret
                    .received
                    .iter()
                    .map(|(n, q)| {
                        let d = done.min(*q);
                        done -= d;
                        (*n, q - d)
                    })
                    .collect();
                order_impact(o, waiting)?
            }
            (
                ExceptionKind::PurchaseOrderOverdue,
                ExceptionSubject::PurchaseOrder { purchase_order },
            ) => {
                let p = self.purchases.get(purchase_order.as_str())?;
                if !p.approved || p.closed {
                    return None;
                }
                purchase_impact(p.lines.values().map(|(o, r, c)| ((o - r).max(0), *c)))?
            }
            (
                ExceptionKind::ReceiptVariance,
                ExceptionSubject::PurchaseOrder { purchase_order },
            ) => {
                let p = self.purchases.get(purchase_order.as_str())?;
                let pct = Decimal::from(rule.threshold);
                purchase_impact(p.lines.values().map(|(ordered, received, cost)| {
                    let (o, r) = (Decimal::from(*ordered), Decimal::from(*received));
                    let over = r * Decimal::ONE_HUNDRED > o * (Decimal::ONE_HUNDRED + pct);
                    let short =
                        p.closed && r * Decimal::ONE_HUNDRED < o * (Decimal::ONE_HUNDRED - pct);
                    let units = if over || short {
                        (received - ordered).abs()
                    } else {
                        0
                    };
                    (units, *cost)
                }))?
            }
            (ExceptionKind::CountVariance, ExceptionSubject::Stock { sku, location }) => {
                let s = self
                    .stock
                    .get(&stock_key(sku.as_str(), location.as_str()))?;
                let (variance, expected) = s.last_count?;
                let over = Decimal::from(variance.abs()) * Decimal::ONE_HUNDRED
                    > Decimal::from(expected) * Decimal::from(rule.threshold);
                if variance == 0 || !over {
                    return None;
                }
                self.stock_impact(sku.as_str(), variance.abs())
            }
            (ExceptionKind::BelowSafetyStock, ExceptionSubject::Stock { sku, location }) => {
                let safety = self.safety.get(sku.as_str()).copied().unwrap_or(0);
                let free = self
                    .stock
                    .get(&stock_key(sku.as_str(), location.as_str()))
                    .map_or(0, |s| s.free);
                if safety <= 0 || free >= safety {
                    return None;
                }
                self.stock_impact(sku.as_str(), safety - free)
            }
            _ => return None,
        };
        Some((impact, since))
    }

    fn stock_impact(&self, sku: &str, units: i64) -> Impact {
        Impact {
            value: self.unit_cost.get(sku).map(|c| Money {
                amount: c.amount * Decimal::from(units),
                currency: c.currency,
            }),
            units,
            customer_priority: None,
        }
    }

    /// Raises, updates or clears the exception after `event` (or a clock tick at `seq`).
    fn reconsider(
        &mut self,
        r: &ExceptionRef,
        at: Timestamp,
        seq: u64,
        event_type: &str,
        changed: &mut BTreeSet<String>,
    ) {
        let key = row_key(r);
        let now = self.condition(r, at);
        let entity = self.entity_of(&r.on).unwrap_or_default();
        let (severity, blocks) = self
            .rule(&entity, &r.kind)
            .map_or((Severity::Low, false), |rule| {
                (rule.severity, rule.blocks && r.kind.may_block())
            });
        match (self.rows.get_mut(&key), now) {
            (Some(row), Some((impact, since))) => {
                if row.condition_holds {
                    // The same occurrence: keep its impact current.
                    if row.impact != impact {
                        row.impact = impact;
                        row.seq = seq;
                        changed.insert(key);
                    }
                } else {
                    // It starts to hold again: a new occurrence.
                    *row = ExceptionRow {
                        occurrences: row.occurrences + 1,
                        // A hold still in place carries over to the new occurrence.
                        hold: row.hold.take(),
                        hold_lifted: false,
                        ..new_row(r, entity, (severity, blocks), since, seq, impact)
                    };
                    changed.insert(key);
                }
            }
            (None, Some((impact, since))) => {
                self.rows.insert(
                    key.clone(),
                    new_row(r, entity, (severity, blocks), since, seq, impact),
                );
                changed.insert(key);
            }
            (Some(row), None) if row.condition_holds => {
                row.condition_holds = false;
                if row.active() {
                    row.status = Status::Cleared;
                    row.snoozed_until = None;
                    row.cleared = Some(Cleared {
                        event_type: event_type.to_owned(),
                        at,
                        seq,
                    });
                }
                row.seq = seq;
                changed.insert(key);
            }
            _ => {}
        }
    }

    /// Schedules the check of a time-based exception at its deadline.
    fn schedule(&mut self, r: ExceptionRef) {
        if let Some(deadline) = self.deadline(&r) {
            self.due
                .insert(format!("{}|{}", sortable(deadline), row_key(&r)), r);
        }
    }

    fn schedule_at(&mut self, at: Timestamp, r: ExceptionRef) {
        self.due
            .insert(format!("{}|{}", sortable(at), row_key(&r)), r);
    }

    /// Runs the checks due at or before the business clock.
    fn tick(&mut self, seq: u64, changed: &mut BTreeSet<String>) {
        let Some(clock) = self.clock else { return };
        let limit = format!("{}~", sortable(clock));
        let due: Vec<(String, ExceptionRef)> = self
            .due
            .range(..limit)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        for (k, r) in due {
            self.due.remove(&k);
            let key = row_key(&r);
            // A snooze that ran out: back in the queue if its condition still holds.
            if let Some(row) = self.rows.get_mut(&key)
                && row.status == Status::Snoozed
                && row.snoozed_until.is_some_and(|u| u <= clock)
            {
                row.status = Status::Open;
                row.snoozed_until = None;
                row.seq = seq;
                changed.insert(key.clone());
            }
            self.reconsider(&r, clock, seq, "business_clock", changed);
        }
    }

    fn act(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        let (seq, at) = (event.seq, event.envelope.effective_at);
        let r = match &event.envelope.event {
            Event::ExceptionAssigned(e) => &e.exception,
            Event::ExceptionResolved(e) => &e.exception,
            Event::ExceptionSnoozed(e) => &e.exception,
            _ => return,
        };
        let key = row_key(r);
        let Some(row) = self.rows.get_mut(&key).filter(|row| row.active()) else {
            self.actions_not_applied += 1;
            return;
        };
        match &event.envelope.event {
            Event::ExceptionAssigned(e) => row.owner = Some(e.owner.to_string()),
            Event::ExceptionResolved(e) => {
                row.status = Status::Resolved;
                row.snoozed_until = None;
                row.resolved = Some(Resolved {
                    resolution: e.resolution.clone(),
                    note: e.note.clone(),
                    by: event.envelope.actor.id.to_string(),
                    at,
                    seq,
                });
            }
            Event::ExceptionSnoozed(e) => {
                row.status = Status::Snoozed;
                row.snoozed_until = Some(e.until);
            }
            _ => return,
        }
        row.seq = seq;
        changed.insert(key);
        if let Event::ExceptionSnoozed(e) = &event.envelope.event {
            self.schedule_at(e.until, e.exception.clone());
        }
    }
}

fn purchase_impact(lines: impl Iterator<Item = (i64, Money)>) -> Option<Impact> {
    let (value, units) = priced(lines.filter(|(n, _)| *n > 0).map(|(n, c)| (n, Some(c))));
    (units > 0).then_some(Impact {
        value,
        units,
        customer_priority: None,
    })
}

fn new_row(
    r: &ExceptionRef,
    entity: String,
    (severity, blocks): (Severity, bool),
    since: Timestamp,
    seq: u64,
    impact: Impact,
) -> ExceptionRow {
    ExceptionRow {
        kind: r.kind.clone(),
        on: r.on.clone(),
        entity,
        severity,
        status: Status::Open,
        raised_at: since,
        raised_seq: seq,
        impact,
        owner: None,
        snoozed_until: None,
        resolved: None,
        cleared: None,
        occurrences: 1,
        blocks,
        hold: None,
        hold_lifted: false,
        condition_holds: true,
        seq,
    }
}

fn stock_key(sku: &str, location: &str) -> String {
    key::key("s", &[sku, location])
}

fn order_ref(kind: ExceptionKind, order: &ledger::values::OrderId) -> ExceptionRef {
    ExceptionRef {
        kind,
        on: ExceptionSubject::Order {
            order: order.clone(),
        },
    }
}

fn stock_ref(
    kind: ExceptionKind,
    sku: &ledger::values::Sku,
    location: &ledger::values::LocationId,
) -> ExceptionRef {
    ExceptionRef {
        kind,
        on: ExceptionSubject::Stock {
            sku: sku.clone(),
            location: location.clone(),
        },
    }
}

fn po_ref(kind: ExceptionKind, po: &ledger::values::PurchaseOrderId) -> ExceptionRef {
    ExceptionRef {
        kind,
        on: ExceptionSubject::PurchaseOrder {
            purchase_order: po.clone(),
        },
    }
}

impl Model for Exceptions {
    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        use Event as E;
        let env = &event.envelope;
        let at = env.effective_at;
        let seq = event.seq;
        if self.clock.is_none_or(|c| at > c) {
            self.clock = Some(at);
        }
        // What was due before this event took effect.
        self.tick(seq, changed);
        let mut touched: Vec<ExceptionRef> = Vec::new();
        let posted = self.books.post(event);
        if !crate::books::balanced(&posted.lines) {
            let mut sums: BTreeMap<(&str, &str), Decimal> = BTreeMap::new();
            for l in &posted.lines {
                *sums
                    .entry((l.entity.as_str(), l.currency.as_str()))
                    .or_default() += l.amount;
            }
            let (entity, imbalance) = sums
                .iter()
                .find(|(_, sum)| !sum.is_zero())
                .map(|((e, c), sum)| {
                    (
                        (*e).to_owned(),
                        ledger::values::Currency::new(c).ok().map(|currency| Money {
                            amount: *sum,
                            currency,
                        }),
                    )
                })
                .unwrap_or_else(|| (env.legal_entity.to_string(), None));
            self.integrity
                .insert(seq, (ExceptionKind::UnbalancedJournal, entity, imbalance));
            touched.push(ExceptionRef {
                kind: ExceptionKind::UnbalancedJournal,
                on: ExceptionSubject::Ledger { seq },
            });
        }
        // Keys whose hold action may change without the row changing.
        let mut hold_check: Vec<String> = Vec::new();
        match &env.event {
            E::ExceptionRuleSet(e) => {
                self.rules
                    .entry(env.legal_entity.to_string())
                    .or_default()
                    .insert(e.kind.name().to_owned(), e.rule.clone());
            }
            E::ExceptionAssigned(_) | E::ExceptionResolved(_) | E::ExceptionSnoozed(_) => {
                self.act(event, changed);
            }
            E::LocationDefined(e) => {
                self.location_entity
                    .entry(e.location.to_string())
                    .or_insert_with(|| env.legal_entity.to_string());
            }
            E::ItemDefined(e) | E::ItemChanged(e) => {
                self.safety.insert(e.sku.to_string(), e.safety_stock.get());
            }
            E::OrderPlaced(e) => {
                let lines = e
                    .lines
                    .iter()
                    .map(|l| (l.line, LineTrack::ordered(l)))
                    .collect();
                self.orders.insert(
                    e.order.to_string(),
                    OrderTrack {
                        entity: env.legal_entity.to_string(),
                        priority: e.priority,
                        promise_date: e.promise_date,
                        released_at: None,
                        held: None,
                        lines,
                        packages: BTreeMap::new(),
                        returns: BTreeMap::new(),
                    },
                );
                self.schedule(order_ref(ExceptionKind::BackorderPastPromise, &e.order));
            }
            E::OrderReleasedToPick(e) => {
                if let Some(o) = self.orders.get_mut(e.order.as_str())
                    && o.released_at.is_none()
                {
                    o.released_at = Some(at);
                    self.schedule(order_ref(ExceptionKind::OrderUnshipped, &e.order));
                }
            }
            E::OrderHeld(e) => {
                if let Some(o) = self.orders.get_mut(e.order.as_str()) {
                    o.held = Some(e.reason.to_string());
                }
                for kind in ExceptionKind::ALL.iter().filter(|k| k.may_block()) {
                    let key = row_key(&order_ref(kind.clone(), &e.order));
                    // Held for this exception (reason `exception.<kind>`): recorded on it.
                    if kind.hold_reason() == e.reason
                        && let Some(row) = self.rows.get_mut(&key)
                    {
                        row.hold = Some(HoldPlaced {
                            by: env.actor.id.to_string(),
                            at,
                            seq,
                        });
                        row.seq = seq;
                        changed.insert(key.clone());
                    }
                    hold_check.push(key);
                }
            }
            E::OrderReleased(e) => {
                if let Some(o) = self.orders.get_mut(e.order.as_str()) {
                    o.held = None;
                }
                for kind in ExceptionKind::ALL.iter().filter(|k| k.may_block()) {
                    let key = row_key(&order_ref(kind.clone(), &e.order));
                    if let Some(row) = self.rows.get_mut(&key)
                        && row.hold.take().is_some()
                    {
                        // Released by hand while the exception is still to be dealt with:
                        // not held again for this occurrence.
                        row.hold_lifted = row.active();
                        row.seq = seq;
                        changed.insert(key.clone());
                    }
                    hold_check.push(key);
                }
            }
            E::LineBackordered(e) => {
                if let Some(l) = self.line(&e.order, e.line) {
                    l.backordered += e.qty.get();
                }
                touched.push(order_ref(ExceptionKind::BackorderPastPromise, &e.order));
            }
            E::LineAllocated(e) => {
                if let Some(l) = self.line(&e.order, e.line) {
                    l.backordered = (l.backordered - e.qty.get()).max(0);
                }
                touched.push(order_ref(ExceptionKind::BackorderPastPromise, &e.order));
            }
            E::OrderShipped(e) => {
                if let Some(o) = self.orders.get_mut(e.order.as_str()) {
                    for l in &e.lines {
                        if let Some(line) = o.lines.get_mut(&l.line) {
                            line.shipped += l.qty.get();
                        }
                    }
                    o.packages.insert(
                        e.package.to_string(),
                        PackageTrack {
                            shipped_at: at,
                            lines: e.lines.iter().map(|l| (l.line, l.qty.get())).collect(),
                            delivered: false,
                        },
                    );
                    self.schedule(ExceptionRef {
                        kind: ExceptionKind::ShipmentInTransit,
                        on: ExceptionSubject::Shipment {
                            order: e.order.clone(),
                            package: e.package.clone(),
                        },
                    });
                }
                touched.push(order_ref(ExceptionKind::OrderUnshipped, &e.order));
            }
            E::OrderDelivered(e) => {
                if let Some(p) = self
                    .orders
                    .get_mut(e.order.as_str())
                    .and_then(|o| o.packages.get_mut(e.package.as_str()))
                {
                    p.delivered = true;
                }
                touched.push(ExceptionRef {
                    kind: ExceptionKind::ShipmentInTransit,
                    on: ExceptionSubject::Shipment {
                        order: e.order.clone(),
                        package: e.package.clone(),
                    },
                });
            }
            E::LinesAdded(e) => {
                if let Some(o) = self.orders.get_mut(e.order.as_str()) {
                    for a in &e.lines {
                        o.lines.insert(a.line.line, LineTrack::ordered(&a.line));
                    }
                }
                touched.push(order_ref(ExceptionKind::OrderUnshipped, &e.order));
            }
            E::LinesCancelled(e) => {
                if let Some(o) = self.orders.get_mut(e.order.as_str()) {
                    for l in &e.lines {
                        if let Some(line) = o.lines.get_mut(&l.line) {
                            let n = l.qty.get();
                            line.cancelled += n;
                            line.backordered = (line.backordered - n).max(0);
                        }
                    }
                }
                touched.push(order_ref(ExceptionKind::OrderUnshipped, &e.order));
                touched.push(order_ref(ExceptionKind::BackorderPastPromise, &e.order));
            }
            E::ReturnReceived(e) => {
                self.return_orders
                    .insert(e.return_id.to_string(), e.order.to_string());
                if let Some(o) = self.orders.get_mut(e.order.as_str()) {
                    let r = o.returns.entry(e.return_id.to_string()).or_default();
                    r.received_at.get_or_insert(at);
                    *r.received.entry(e.line).or_insert(0) += e.qty.get();
                    self.schedule(ExceptionRef {
                        kind: ExceptionKind::ReturnNotInspected,
                        on: ExceptionSubject::Return {
                            order: e.order.clone(),
                            return_id: e.return_id.clone(),
                        },
                    });
                }
            }
            E::ReturnDispositioned(e) => {
                if let Some(order) = self.return_orders.get(e.return_id.as_str()).cloned()
                    && let Some(o) = self.orders.get_mut(&order)
                    && let Some(r) = o.returns.get_mut(e.return_id.as_str())
                {
                    r.dispositioned += e.qty.get();
                    if let Ok(order) = ledger::values::OrderId::new(&order) {
                        touched.push(ExceptionRef {
                            kind: ExceptionKind::ReturnNotInspected,
                            on: ExceptionSubject::Return {
                                order,
                                return_id: e.return_id.clone(),
                            },
                        });
                    }
                }
            }
            E::PurchaseOrderCreated(e) => {
                self.purchases.insert(
                    e.purchase_order.to_string(),
                    PurchaseTrack {
                        entity: env.legal_entity.to_string(),
                        expected_on: e.expected_on,
                        approved: false,
                        closed: false,
                        lines: e
                            .lines
                            .iter()
                            .map(|l| (l.line, (l.qty.get(), 0, l.unit_cost)))
                            .collect(),
                    },
                );
            }
            E::PurchaseOrderApproved(e) => {
                if let Some(p) = self.purchases.get_mut(e.purchase_order.as_str()) {
                    p.approved = true;
                    self.schedule(po_ref(
                        ExceptionKind::PurchaseOrderOverdue,
                        &e.purchase_order,
                    ));
                }
            }
            E::PurchaseOrderRejected(e) => {
                touched.push(self.close_purchase(&e.purchase_order));
            }
            E::PurchaseOrderClosed(e) => {
                touched.push(self.close_purchase(&e.purchase_order));
                // Closed short: a receipt variance, if beyond the threshold.
                touched.push(po_ref(ExceptionKind::ReceiptVariance, &e.purchase_order));
            }
            E::ReceiptMatched(e) => {
                if let Some(line) = self
                    .purchases
                    .get_mut(e.purchase_order.as_str())
                    .and_then(|p| p.lines.get_mut(&e.line))
                {
                    line.1 = e.qty_received.get();
                }
                touched.push(po_ref(
                    ExceptionKind::PurchaseOrderOverdue,
                    &e.purchase_order,
                ));
                touched.push(po_ref(ExceptionKind::ReceiptVariance, &e.purchase_order));
            }
            E::StockCounted(e) => {
                self.stock
                    .entry(stock_key(e.sku.as_str(), e.location.as_str()))
                    .or_default()
                    .last_count = Some((e.variance.get(), e.expected.get()));
                touched.push(stock_ref(ExceptionKind::CountVariance, &e.sku, &e.location));
            }
            _ => {}
        }
        if let E::StockReceived(e) = &env.event {
            self.unit_cost.insert(e.sku.to_string(), e.unit_cost);
        }
        if let Subject::Stock(sku) = &env.subject {
            for d in ledger::effects::stock_deltas(&env.event) {
                let s = self
                    .stock
                    .entry(stock_key(sku.as_str(), d.location.as_str()))
                    .or_default();
                s.free += d.on_hand - d.allocated - d.reserved - d.quality_hold;
                touched.push(stock_ref(ExceptionKind::BelowSafetyStock, sku, &d.location));
            }
        }
        if let E::ItemDefined(e) | E::ItemChanged(e) = &env.event {
            let prefix = key::prefix("s", &[e.sku.as_str()]);
            let locations: Vec<String> = self
                .stock
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(k, _)| key::parts(k, "s", 2).map(|p| p[1].clone()))
                .collect();
            for location in locations {
                if let Ok(location) = ledger::values::LocationId::new(&location) {
                    touched.push(stock_ref(
                        ExceptionKind::BelowSafetyStock,
                        &e.sku,
                        &location,
                    ));
                }
            }
        }
        let event_type = env.event.event_type().name();
        for r in touched {
            self.reconsider(&r, at, seq, event_type, changed);
        }
        for key in changed.iter().chain(&hold_check) {
            match self.hold_action(key) {
                Some(_) => self.hold_actions.insert(key.clone()),
                None => self.hold_actions.remove(key),
            };
        }
    }

    fn value(&self, key: &str) -> Option<serde_json::Value> {
        self.rows
            .get(key)
            .map(|r| serde_json::to_value(r).expect("exceptions serialise"))
    }

    /// A message the ledger's writer did not write: a foreign-message exception, raised at
    /// the business clock (or the time it was stored, before any event).
    fn foreign(&mut self, record: &ledger::ForeignRecord, changed: &mut BTreeSet<String>) {
        self.integrity.insert(
            record.seq,
            (ExceptionKind::ForeignMessage, "-".to_owned(), None),
        );
        let at = self.clock.unwrap_or(record.recorded_at);
        self.reconsider(
            &ExceptionRef {
                kind: ExceptionKind::ForeignMessage,
                on: ExceptionSubject::Ledger { seq: record.seq },
            },
            at,
            record.seq,
            "foreign_message",
            changed,
        );
    }
}

impl Exceptions {
    fn line(&mut self, order: &ledger::values::OrderId, line: u32) -> Option<&mut LineTrack> {
        self.orders
            .get_mut(order.as_str())
            .and_then(|o| o.lines.get_mut(&line))
    }

    /// Marks the purchase order closed (or rejected); its overdue exception is to be judged
    /// again.
    fn close_purchase(&mut self, po: &ledger::values::PurchaseOrderId) -> ExceptionRef {
        if let Some(p) = self.purchases.get_mut(po.as_str()) {
            p.closed = true;
        }
        po_ref(ExceptionKind::PurchaseOrderOverdue, po)
    }

    /// What the exception holder is to do about the exception's order: hold it (a blocking
    /// exception, open or snoozed, whose order is not held and was not released by hand
    /// during this occurrence) or release it (the exception cleared itself or was resolved
    /// and its hold is still in place).
    pub fn hold_action(&self, key: &str) -> Option<HoldAction> {
        let row = self.rows.get(key)?;
        match (row.active(), &row.hold) {
            (true, None) if row.blocks && !row.hold_lifted => {
                let ExceptionSubject::Order { order } = &row.on else {
                    return None;
                };
                let held = self.orders.get(order.as_str())?.held.is_some();
                (!held).then_some(HoldAction::Hold)
            }
            (false, Some(_)) => Some(HoldAction::Release),
            _ => None,
        }
    }

    /// The business clock: the latest effective time applied.
    pub fn clock(&self) -> Option<Timestamp> {
        self.clock
    }

    /// Every exception, by key.
    pub fn rows(&self) -> &BTreeMap<String, ExceptionRow> {
        &self.rows
    }

    /// Active exceptions (open, and snoozed if asked), highest priority first.
    pub fn ranked(&self, filter: &Filter) -> Vec<(&String, &ExceptionRow, Decimal)> {
        let clock = self
            .clock
            .unwrap_or_else(|| Timestamp::new(chrono::DateTime::UNIX_EPOCH));
        let mut list: Vec<(&String, &ExceptionRow, Decimal)> = self
            .rows
            .iter()
            .filter(|(_, r)| filter.admits(r))
            .map(|(k, r)| (k, r, r.score(clock)))
            .collect();
        list.sort_by(|a, b| {
            b.1.kind
                .integrity()
                .cmp(&a.1.kind.integrity())
                .then_with(|| b.2.cmp(&a.2))
                .then_with(|| {
                    a.1.impact
                        .customer_priority
                        .unwrap_or(u32::MAX)
                        .cmp(&b.1.impact.customer_priority.unwrap_or(u32::MAX))
                })
                .then_with(|| a.0.cmp(b.0))
        });
        list
    }
}

/// Which exceptions a question is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// A legal entity.
    #[serde(default)]
    pub entity: Option<String>,
    #[serde(default)]
    pub kind: Option<ExceptionKind>,
    /// Default `open`.
    #[serde(default)]
    pub status: Option<Status>,
    #[serde(default)]
    pub owner: Option<String>,
}

impl Filter {
    fn admits(&self, r: &ExceptionRow) -> bool {
        r.status == self.status.unwrap_or(Status::Open)
            && self.entity.as_ref().is_none_or(|e| *e == r.entity)
            && self.kind.as_ref().is_none_or(|k| *k == r.kind)
            && self
                .owner
                .as_ref()
                .is_none_or(|o| r.owner.as_deref() == Some(o.as_str()))
    }
}

/// Queries of `view.exceptions.<op>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExceptionsQuery {
    /// The queue: exceptions of a status (default `open`), highest priority score first, with
    /// filters, a page at a time (`after`: the last key of the previous page).
    Queue {
        #[serde(default)]
        entity: Option<String>,
        #[serde(default)]
        kind: Option<ExceptionKind>,
        #[serde(default)]
        status: Option<Status>,
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// One exception by kind and subject.
    Exception { exception: ExceptionRef },
    /// Every exception (any kind, any status) about one subject.
    About { on: ExceptionSubject },
    /// The orders blocking exceptions are to hold, and those whose exception cleared or was
    /// resolved with its hold still in place, oldest first (what `erp up`'s exception holder
    /// acts on), a page at a time (`after`: the last key of the previous page; a key whose
    /// hold was carried out since still marks the place).
    Holds {
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Counts by kind: per status, and the active ones by age in business days
    /// (`0-1`, `1-3`, `3-7`, `7+`).
    Counts {
        #[serde(default)]
        entity: Option<String>,
    },
}

impl View for Exceptions {
    const NAME: &'static str = "exceptions";
    const VERSION: u32 = 3;
    const KEYS: &'static [KeyShape] = &[KeyShape {
        kind: "exc",
        parts: &[
            "kind",
            "subject ids (order; order, package; purchase order; sku, location; order, return)",
        ],
        row: "ExceptionRow: kind, subject, entity, severity, status, impact, owner, resolution or clearing",
    }];
    type Row = ExceptionRow;
    type Query = ExceptionsQuery;

    fn keys(&self) -> Box<dyn Iterator<Item = String> + '_> {
        Box::new(self.rows.keys().cloned())
    }

    fn answer(&self, query: &ExceptionsQuery) -> Result<Answer, QueryError> {
        let clock = self
            .clock
            .unwrap_or_else(|| Timestamp::new(chrono::DateTime::UNIX_EPOCH));
        let item = |k: &String, r: &ExceptionRow, score: Decimal| {
            let mut v = serde_json::to_value(r).expect("rows serialise");
            v["key"] = json!(k);
            v["score"] = json!(score.round_dp(2).to_string());
            v["age_days"] = json!(r.age_days(clock));
            v
        };
        match query {
            ExceptionsQuery::Queue {
                entity,
                kind,
                status,
                owner,
                after,
                limit,
            } => {
                let limit = page_limit(*limit)?;
                let filter = Filter {
                    entity: entity.clone(),
                    kind: kind.clone(),
                    status: *status,
                    owner: owner.clone(),
                };
                let ranked = self.ranked(&filter);
                let start = match after {
                    Some(a) => {
                        ranked
                            .iter()
                            .position(|(k, _, _)| *k == a)
                            .ok_or_else(|| {
                                QueryError::bad_query(format!(
                                    "after: `{a}` is not in this queue (it changed status, or is not an exception key)"
                                ))
                            })?
                            + 1
                    }
                    None => 0,
                };
                let page: Vec<serde_json::Value> = ranked
                    .iter()
                    .skip(start)
                    .take(limit)
                    .map(|(k, r, s)| item(k, r, *s))
                    .collect();
                let next_after =
                    (start + limit < ranked.len()).then(|| ranked[start + limit - 1].0.clone());
                Ok(Answer::Value(json!({
                    "business_clock": self.clock,
                    "count": ranked.len(),
                    "exceptions": page,
                    "next_after": next_after,
                })))
            }
            ExceptionsQuery::Exception { exception } => {
                let k = row_key(exception);
                self.rows
                    .get(&k)
                    .map(|r| Answer::Value(item(&k, r, r.score(clock))))
                    .ok_or_else(|| {
                        QueryError::not_found(format!(
                            "no {} exception was raised on {}",
                            exception.kind.name(),
                            exception.on.parts().join(" ")
                        ))
                    })
            }
            ExceptionsQuery::Holds { after, limit } => {
                let limit = page_limit(*limit)?;
                let mut list: Vec<(&String, &ExceptionRow)> = self
                    .hold_actions
                    .iter()
                    .filter_map(|k| self.rows.get(k).map(|r| (k, r)))
                    .collect();
                // Oldest first, by when the exception was raised: a hold carried out between
                // two pages leaves the place of every other one where it was.
                list.sort_by_key(|(k, r)| (r.raised_at, *k));
                let start = match after {
                    // Every exception keeps its row, so the place of a key whose hold was
                    // carried out since the previous page is still known.
                    Some(a) => {
                        let row = self.rows.get(a).ok_or_else(|| {
                            QueryError::bad_query(format!(
                                "after: `{a}` is not an exception key (take it from `next_after` or a listed hold's `key`)"
                            ))
                        })?;
                        list.partition_point(|(k, r)| {
                            (r.raised_at, k.as_str()) <= (row.raised_at, a.as_str())
                        })
                    }
                    None => 0,
                };
                let next_after =
                    (start + limit < list.len()).then(|| list[start + limit - 1].0.clone());
                let holds: Vec<serde_json::Value> = list
                    .iter()
                    .skip(start)
                    .take(limit)
                    .filter_map(|(k, r)| {
                        let action = self.hold_action(k)?;
                        let at = match action {
                            HoldAction::Hold => r.raised_at,
                            HoldAction::Release => r
                                .resolved
                                .as_ref()
                                .map(|x| x.at)
                                .or(r.cleared.as_ref().map(|c| c.at))
                                .unwrap_or(r.raised_at),
                        };
                        Some(json!({
                            "key": k,
                            "action": action,
                            "exception": {"kind": r.kind, "on": r.on},
                            "entity": r.entity,
                            "occurrence": r.occurrences,
                            "at": at,
                        }))
                    })
                    .collect();
                Ok(Answer::Value(json!({
                    "count": list.len(),
                    "holds": holds,
                    "next_after": next_after,
                })))
            }
            ExceptionsQuery::About { on } => {
                let list: Vec<serde_json::Value> = ExceptionKind::ALL
                    .iter()
                    .filter(|k| k.subject_shape() == on.shape())
                    .filter_map(|k| {
                        let key = row_key(&ExceptionRef {
                            kind: k.clone(),
                            on: on.clone(),
                        });
                        self.rows.get(&key).map(|r| item(&key, r, r.score(clock)))
                    })
                    .collect();
                Ok(Answer::Value(json!({"exceptions": list})))
            }
            ExceptionsQuery::Counts { entity } => {
                let mut by_kind = serde_json::Map::new();
                for kind in ExceptionKind::ALL {
                    let rows: Vec<&ExceptionRow> = self
                        .rows
                        .values()
                        .filter(|r| r.kind == kind)
                        .filter(|r| entity.as_ref().is_none_or(|e| *e == r.entity))
                        .collect();
                    let status = |s: Status| rows.iter().filter(|r| r.status == s).count();
                    let age = |lo: i64, hi: i64| {
                        rows.iter()
                            .filter(|r| r.active())
                            .filter(|r| (lo..hi).contains(&r.age_days(clock)))
                            .count()
                    };
                    by_kind.insert(
                        kind.name().to_owned(),
                        json!({
                            "open": status(Status::Open),
                            "snoozed": status(Status::Snoozed),
                            "resolved": status(Status::Resolved),
                            "cleared": status(Status::Cleared),
                            "active_by_age_days": {
                                "0-1": age(0, 1), "1-3": age(1, 3), "3-7": age(3, 7), "7+": age(7, i64::MAX),
                            },
                        }),
                    );
                }
                Ok(Answer::Value(json!({
                    "business_clock": self.clock,
                    "kinds": by_kind,
                    "actions_not_applied": self.actions_not_applied,
                })))
            }
        }
    }
}
