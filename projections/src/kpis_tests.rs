//! KPIs given/when/then: orders placed, filled, shipped, delivered late, returned; receipts
//! early and late.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::books_tests::{gbp, order, recorded_on};
use crate::kpis::{Kpis, periods};
use crate::view::Model;

struct Given {
    view: Kpis,
    seq: u64,
}

impl Given {
    fn new() -> Given {
        Given {
            view: Kpis::default(),
            seq: 0,
        }
    }

    /// `event` at `at`, of command `command` (events of one command share it).
    fn at(&mut self, command: u128, at: &str, event: Value) -> &mut Given {
        self.seq += 1;
        let mut e = recorded_on(self.seq, at, event);
        e.envelope.command_id = uuid::Uuid::from_u128(command);
        self.view.apply(&e, &mut BTreeSet::new());
        self
    }

    fn row(&self, period: &str, dimension: &str, value: &str) -> Value {
        let key = crate::key::key("kpi", &[period, dimension, value]);
        self.view
            .value(&key)
            .unwrap_or_else(|| panic!("no row {key}"))
    }
}

fn allocated(order: &str, line: u32, qty: i64) -> Value {
    json!({"type": "order.line_allocated", "data": {"order": order, "line": line, "location": "WH1", "qty": qty}})
}

fn shipped(order: &str, package: &str, lines: Value) -> Value {
    json!({"type": "order.shipped", "data": {"order": order, "package": package, "carrier": "DPD",
        "tracking": "", "freight_cost": gbp("0.00"), "lines": lines}})
}

fn promised(mut placed: Value, date: &str) -> Value {
    placed["data"]["promise_date"] = json!(date);
    placed
}

#[test]
fn periods_are_the_day_the_iso_week_and_the_month() {
    let at = ledger::values::Timestamp::parse("2011-01-02T10:00:00Z").unwrap();
    assert_eq!(periods(at), ["2011-01-02", "2010-W52", "2011-01"]);
}

#[test]
fn first_time_fill_backorders_in_full_on_time_cycle_time_and_perfect_orders() {
    let mut g = Given::new();
    // K1: 3 units promised for the 5th, allocated in full by its placing command, shipped the
    // next day: in full, on time, 24 hours.
    g.at(
        1,
        "2011-01-03T10:00:00Z",
        promised(order("K1", 3), "2011-01-05"),
    )
    .at(1, "2011-01-03T10:00:00Z", allocated("K1", 1, 3))
    .at(
        2,
        "2011-01-04T10:00:00Z",
        shipped("K1", "P1", json!([{"line": 1, "qty": 3}])),
    );
    // K2: 4 units, 1 allocated and 3 backordered at placement; 3 more allocated later by
    // another command (not first time); 1 cancelled, 3 shipped: not in full.
    g.at(3, "2011-01-03T11:00:00Z", promised(order("K2", 4), "2011-01-05"))
        .at(3, "2011-01-03T11:00:00Z", allocated("K2", 1, 1))
        .at(
            3,
            "2011-01-03T11:00:00Z",
            json!({"type": "order.line_backordered", "data": {"order": "K2", "line": 1, "qty": 3}}),
        )
        .at(4, "2011-01-04T09:00:00Z", allocated("K2", 1, 2))
        .at(
            5,
            "2011-01-04T12:00:00Z",
            json!({"type": "order.lines_cancelled", "data": {"order": "K2", "lines": [{"line": 1, "qty": 1}], "reason": "customer"}}),
        )
        .at(6, "2011-01-04T13:00:00Z", shipped("K2", "P1", json!([{"line": 1, "qty": 3}])));
    let placed = g.row("2011-01-03", "all", "-");
    assert_eq!(placed["orders_placed"], 2);
    assert_eq!(placed["units_ordered"], 7);
    assert_eq!(placed["units_filled_first_time"], 4);
    assert_eq!(placed["orders_filled_first_time"], 1);
    assert_eq!(placed["lines_backordered"], 1);
    assert_eq!(placed["kpis"]["fill_rate_first_time"]["units"], "0.5714");
    assert_eq!(placed["kpis"]["fill_rate_first_time"]["orders"], "0.5");
    let done = g.row("2011-01-04", "all", "-");
    assert_eq!(done["orders_completed"], 2);
    assert_eq!(done["orders_in_full"], 1);
    assert_eq!(done["orders_on_time"], 2);
    assert_eq!(done["orders_on_time_in_full"], 1);
    assert_eq!(done["orders_perfect"], 1);
    assert_eq!(done["cycle_hours"], json!({"24": 1, "26": 1}));
    assert_eq!(done["kpis"]["cycle_time_hours"]["p50"], 24);
    assert_eq!(done["kpis"]["cycle_time_hours"]["p90"], 26);
    assert_eq!(done["kpis"]["otif"], "0.5");
    // The same figures in the week and the month, and per channel and entity.
    assert_eq!(g.row("2011-01", "all", "-")["orders_completed"], 2);
    assert_eq!(g.row("2011-W01", "channel", "web")["orders_on_time"], 2);
    assert_eq!(g.row("2011-01", "entity", "UK01")["orders_placed"], 2);

    // K1's carrier confirms delivery on the 6th: late after all. Its completion day is
    // corrected.
    g.at(
        7,
        "2011-01-06T09:00:00Z",
        json!({"type": "order.delivered", "data": {"order": "K1", "package": "P1", "proof": ""}}),
    );
    let done = g.row("2011-01-04", "all", "-");
    assert_eq!(done["orders_on_time"], 1);
    assert_eq!(done["orders_perfect"], 0);
    assert_eq!(done["orders_completed"], 2);
}

#[test]
fn returns_by_reason_and_their_recovery_and_a_defect_spoils_a_perfect_order() {
    let mut g = Given::new();
    g.at(1, "2011-01-03T10:00:00Z", promised(order("K1", 3), "2011-01-05"))
        .at(1, "2011-01-03T10:00:00Z", allocated("K1", 1, 3))
        .at(2, "2011-01-04T10:00:00Z", shipped("K1", "P1", json!([{"line": 1, "qty": 3}])))
        .at(
            2,
            "2011-01-04T10:00:00Z",
            json!({"type": "stock.shipped", "data": {"sku": "LAMP", "order": "K1", "line": 1, "location": "WH1", "qty": 3}}),
        );
    assert_eq!(g.row("2011-01-04", "all", "-")["orders_perfect"], 1);
    g.at(
        3,
        "2011-01-10T10:00:00Z",
        json!({"type": "order.return_authorised", "data": {"order": "K1", "return_id": "R1",
            "lines": [{"line": 1, "qty": 2}], "reason": "Defective", "note": ""}}),
    )
    .at(
        4,
        "2011-01-12T10:00:00Z",
        json!({"type": "stock.return_dispositioned", "data": {"sku": "LAMP", "return_id": "R1",
            "location": "WH1", "qty": 1, "disposition": "Restock"}}),
    );
    let month = g.row("2011-01", "all", "-");
    assert_eq!(month["units_shipped"], 3);
    assert_eq!(month["units_returned"], 2);
    assert_eq!(month["returned_by_reason"], json!({"Defective": 2}));
    assert_eq!(
        month["returned_value_by_reason"],
        json!({"Defective": "40.00"})
    );
    assert_eq!(
        month["recovered_value_by_reason"],
        json!({"Defective": "20.00"})
    );
    assert_eq!(month["kpis"]["return_rate_units"], "0.6667");
    assert_eq!(month["kpis"]["recovery_rate_by_reason"]["Defective"], "0.5");
    // Returned as defective: no longer a perfect order, in the day it was completed.
    assert_eq!(g.row("2011-01-04", "all", "-")["orders_perfect"], 0);
    assert_eq!(g.row("2011-01-04", "location", "WH1")["units_shipped"], 3);
}

#[test]
fn supplier_on_time_units_and_lead_time_from_receipts() {
    let mut g = Given::new();
    g.at(
        1,
        "2011-01-01T09:00:00Z",
        json!({"type": "purchase.order_created", "data": {"purchase_order": "PO1", "supplier": "S1",
            "currency": "GBP", "lines": [{"line": 1, "sku": "LAMP", "location": "WH1", "qty": 100,
            "unit_cost": gbp("4.00")}], "expected_on": "2011-01-10"}}),
    );
    let matched = |received: i64| {
        json!({"type": "purchase.receipt_matched", "data": {"purchase_order": "PO1", "line": 1,
            "qty_received": received, "qty_ordered": 100, "variance": received - 100}})
    };
    // 60 on the 9th (8 days, on time), 40 on the 13th (12 days, late).
    g.at(2, "2011-01-09T09:00:00Z", matched(60))
        .at(3, "2011-01-13T09:00:00Z", matched(100));
    let s = g.row("2011-01", "supplier", "S1");
    assert_eq!(s["units_received"], 100);
    assert_eq!(s["units_received_on_time"], 60);
    assert_eq!(s["kpis"]["supplier_on_time_units"], "0.6");
    assert_eq!(s["kpis"]["lead_time"]["mean_days"], "10");
    assert_eq!(s["kpis"]["lead_time"]["std_dev_days"], "2.00");
}

/// The KPI counts recomputed from a whole log at once, order by order (the view's own
/// bookkeeping is incremental; this is the definition applied to the finished story).
fn recompute(events: &[ledger::RecordedEvent]) -> std::collections::BTreeMap<String, Value> {
    use ledger::events::Event as E;
    use std::collections::BTreeMap;
    type Rows = BTreeMap<String, BTreeMap<String, i64>>;
    let mut rows: Rows = BTreeMap::new();
    let mut add = |at: ledger::values::Timestamp, dims: &[(&str, String)], field: &str, n: i64| {
        for period in periods(at) {
            for (dim, value) in std::iter::once(&("all", "-".to_owned())).chain(dims) {
                let key = crate::key::key("kpi", &[period.as_str(), dim, value.as_str()]);
                *rows
                    .entry(key)
                    .or_default()
                    .entry(field.to_owned())
                    .or_insert(0) += n;
            }
        }
    };
    // Pass 1: each order's whole story.
    #[derive(Default)]
    struct Story {
        placed: Option<(
            ledger::values::Timestamp,
            uuid::Uuid,
            String,
            String,
            Option<ledger::values::Date>,
        )>,
        ordered: BTreeMap<u32, i64>,
        first_alloc: BTreeMap<u32, i64>,
        first_back: BTreeMap<u32, i64>,
        done: BTreeMap<u32, i64>,
        cancelled: i64,
        shipped_at: BTreeMap<String, ledger::values::Timestamp>,
        delivered_at: BTreeMap<String, ledger::values::Timestamp>,
        completed_at: Option<ledger::values::Timestamp>,
        faulty: bool,
    }
    let mut stories: BTreeMap<String, Story> = BTreeMap::new();
    for e in events {
        let at = e.envelope.effective_at;
        match &e.envelope.event {
            E::OrderPlaced(p) => {
                let s = stories.entry(p.order.to_string()).or_default();
                s.placed = Some((
                    at,
                    e.envelope.command_id,
                    e.envelope.legal_entity.to_string(),
                    p.channel.to_string(),
                    p.promise_date,
                ));
                for l in &p.lines {
                    s.ordered.insert(l.line, l.qty.get());
                }
            }
            E::LineAllocated(a) => {
                let s = stories.get_mut(a.order.as_str()).unwrap();
                if s.placed.as_ref().unwrap().1 == e.envelope.command_id {
                    *s.first_alloc.entry(a.line).or_insert(0) += a.qty.get();
                }
            }
            E::LineBackordered(b) => {
                let s = stories.get_mut(b.order.as_str()).unwrap();
                if s.placed.as_ref().unwrap().1 == e.envelope.command_id {
                    *s.first_back.entry(b.line).or_insert(0) += b.qty.get();
                }
            }
            E::OrderShipped(x) => {
                let s = stories.get_mut(x.order.as_str()).unwrap();
                for l in &x.lines {
                    *s.done.entry(l.line).or_insert(0) += l.qty.get();
                }
                s.shipped_at.insert(x.package.to_string(), at);
                if s.completed_at.is_none()
                    && s.ordered.iter().all(|(n, q)| s.done.get(n) == Some(q))
                {
                    s.completed_at = Some(at);
                }
            }
            E::LinesCancelled(c) => {
                let s = stories.get_mut(c.order.as_str()).unwrap();
                for l in &c.lines {
                    *s.done.entry(l.line).or_insert(0) += l.qty.get();
                    s.cancelled += l.qty.get();
                }
                if s.completed_at.is_none()
                    && s.ordered.iter().all(|(n, q)| s.done.get(n) == Some(q))
                {
                    s.completed_at = Some(at);
                }
            }
            E::OrderDelivered(d) => {
                let s = stories.get_mut(d.order.as_str()).unwrap();
                s.delivered_at.insert(d.package.to_string(), at);
            }
            E::ReturnAuthorised(r) => {
                let s = stories.get_mut(r.order.as_str()).unwrap();
                s.faulty |= matches!(
                    r.reason,
                    Some(
                        ledger::events::ReturnReason::Defective
                            | ledger::events::ReturnReason::WrongItem
                            | ledger::events::ReturnReason::NotAsDescribed
                    )
                );
                let units: i64 = r.lines.iter().map(|l| l.qty.get()).sum();
                let (_, _, entity, channel, _) = s.placed.clone().unwrap();
                let dims = [("entity", entity), ("channel", channel)];
                add(at, &dims, "units_returned", units);
                let reason = serde_json::to_value(&r.reason).unwrap();
                let reason = reason.as_str().unwrap_or("Unknown");
                add(at, &dims, &format!("returned_by_reason.{reason}"), units);
                // Every line is priced 20.00: in pence.
                add(
                    at,
                    &dims,
                    &format!("returned_value_by_reason.{reason}"),
                    units * 2000,
                );
            }
            E::StockShipped(x) => {
                let s = &stories[x.order.as_str()];
                let (_, _, entity, channel, _) = s.placed.clone().unwrap();
                add(
                    at,
                    &[
                        ("entity", entity),
                        ("channel", channel),
                        ("location", x.location.to_string()),
                    ],
                    "units_shipped",
                    x.qty.get(),
                );
            }
            _ => {}
        }
    }
    // Pass 2: each order's figures, judged on everything the log says about it.
    for s in stories.values() {
        let Some((placed, _, entity, channel, promise)) = s.placed.clone() else {
            continue;
        };
        let dims = [("entity", entity), ("channel", channel)];
        let lines = s.ordered.len() as i64;
        let units: i64 = s.ordered.values().sum();
        let filled = |n: &u32, q: &i64| s.first_alloc.get(n).copied().unwrap_or(0) >= *q;
        add(placed, &dims, "orders_placed", 1);
        add(placed, &dims, "lines_placed", lines);
        add(placed, &dims, "units_ordered", units);
        add(
            placed,
            &dims,
            "lines_filled_first_time",
            s.ordered.iter().filter(|(n, q)| filled(n, q)).count() as i64,
        );
        add(
            placed,
            &dims,
            "units_filled_first_time",
            s.ordered
                .iter()
                .map(|(n, q)| s.first_alloc.get(n).copied().unwrap_or(0).min(*q))
                .sum(),
        );
        add(
            placed,
            &dims,
            "orders_filled_first_time",
            i64::from(s.ordered.iter().all(|(n, q)| filled(n, q))),
        );
        add(
            placed,
            &dims,
            "lines_backordered",
            s.first_back.values().filter(|b| **b > 0).count() as i64,
        );
        let Some(done) = s.completed_at else { continue };
        let in_full = s.cancelled == 0;
        add(done, &dims, "orders_completed", 1);
        // Placed to the last package shipped, in whole hours (none when nothing shipped).
        if let Some(last) = s.shipped_at.values().max() {
            let hours = (last.as_datetime() - placed.as_datetime()).num_hours();
            add(done, &dims, &format!("cycle_hours.{hours}"), 1);
        }
        add(done, &dims, "orders_in_full", i64::from(in_full));
        if let Some(p) = promise {
            let deadline = ledger::values::Timestamp::new(
                (p.get() + chrono::Duration::days(1))
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
                    .and_utc(),
            );
            let last = s
                .shipped_at
                .iter()
                .map(|(k, t)| s.delivered_at.get(k).copied().unwrap_or(*t))
                .max();
            let on_time = last.is_none_or(|t| t < deadline);
            add(done, &dims, "orders_promised", 1);
            add(done, &dims, "orders_on_time", i64::from(on_time));
            add(
                done,
                &dims,
                "orders_on_time_in_full",
                i64::from(on_time && in_full),
            );
            add(
                done,
                &dims,
                "orders_perfect",
                i64::from(on_time && in_full && !s.faulty),
            );
        }
    }
    rows.into_iter()
        .map(|(k, fields)| (k, json!(fields)))
        .collect()
}

/// The fields `recompute` covers, of every row of the view.
fn view_counts(view: &Kpis) -> std::collections::BTreeMap<String, Value> {
    const FIELDS: [&str; 15] = [
        "orders_placed",
        "lines_placed",
        "units_ordered",
        "lines_filled_first_time",
        "units_filled_first_time",
        "orders_filled_first_time",
        "lines_backordered",
        "orders_completed",
        "orders_in_full",
        "orders_promised",
        "orders_on_time",
        "orders_on_time_in_full",
        "orders_perfect",
        "units_shipped",
        "units_returned",
    ];
    view.rows()
        .iter()
        .map(|(k, r)| {
            let v = serde_json::to_value(r).unwrap();
            let mut fields: std::collections::BTreeMap<String, i64> = FIELDS
                .iter()
                .filter_map(|f| {
                    v[*f]
                        .as_i64()
                        .filter(|n| *n != 0)
                        .map(|n| ((*f).to_owned(), n))
                })
                .collect();
            for (hours, n) in &r.cycle_hours {
                fields.insert(format!("cycle_hours.{hours}"), *n);
            }
            for (reason, n) in &r.returned_by_reason {
                fields.insert(format!("returned_by_reason.{reason}"), *n);
            }
            for (reason, value) in &r.returned_value_by_reason {
                let pence = value * rust_decimal::Decimal::from(100);
                assert!(pence.fract().is_zero(), "{value}: prices are to the penny");
                let pence = rust_decimal::prelude::ToPrimitive::to_i64(&pence).unwrap();
                fields.insert(format!("returned_value_by_reason.{reason}"), pence);
            }
            fields.retain(|_, n| *n != 0);
            (k.clone(), json!(fields))
        })
        .filter(|(_, f)| f.as_object().is_some_and(|o| !o.is_empty()))
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn the_view_equals_a_recomputation_from_the_whole_log(seed in 0u64..u64::MAX) {
        let events = random_story(seed);
        let mut view = Kpis::default();
        for e in &events {
            view.apply(e, &mut BTreeSet::new());
        }
        let expected: std::collections::BTreeMap<String, Value> = recompute(&events)
            .into_iter()
            .map(|(k, v)| {
                let kept: serde_json::Map<String, Value> = v.as_object().unwrap().iter()
                    .filter(|(_, n)| n.as_i64() != Some(0))
                    .map(|(f, n)| (f.clone(), n.clone()))
                    .collect();
                (k, Value::Object(kept))
            })
            .filter(|(_, v)| v.as_object().is_some_and(|o| !o.is_empty()))
            .collect();
        proptest::prop_assert_eq!(view_counts(&view), expected);
    }
}

/// A random week of orders: placements allocating or backordering some units in the placing
/// command, later allocations, shipments in packages, cancellations, deliveries (some before
/// and some after the order completes, some never), returns with random reasons.
fn random_story(seed: u64) -> Vec<ledger::RecordedEvent> {
    let mut next = crate::books_tests::xorshift(seed);
    const REASONS: [&str; 4] = ["Colour", "Defective", "WrongItem", "Unwanted"];
    // (minute offset, command, event)
    let mut story: Vec<(u64, u128, Value)> = Vec::new();
    let orders = 1 + next(8);
    let mut command = 100u128;
    for o in 0..orders {
        let id = format!("O{o}");
        let placed = next(6 * 24 * 60);
        command += 1;
        let lines = 1 + next(3);
        let mut placed_event = order(&id, 1);
        let mut line_list = Vec::new();
        let mut qty = Vec::new();
        for l in 1..=lines {
            let q = 1 + next(5) as i64;
            qty.push(q);
            line_list.push(
                json!({"line": l, "sku": "LAMP", "qty": q, "unit_price": gbp("20.00"),
                "discount": gbp("0.00"), "tax": gbp("0.00"), "fees": gbp("0.00")}),
            );
        }
        placed_event["data"]["lines"] = json!(line_list);
        if next(3) > 0 {
            let day = 1 + next(9);
            placed_event["data"]["promise_date"] = json!(format!("2011-01-{day:02}"));
        }
        story.push((placed, command, placed_event));
        let placing = command;
        let mut t = placed;
        let mut package = 0;
        for (i, q) in qty.iter().enumerate() {
            let line = i as u32 + 1;
            let first = next(*q as u64 + 1) as i64;
            if first > 0 {
                story.push((placed, placing, allocated(&id, line, first)));
            }
            if first < *q {
                story.push((placed, placing, json!({"type": "order.line_backordered", "data": {"order": id, "line": line, "qty": q - first}})));
            }
            // The line's units end shipped (in one or two packages) or partly cancelled.
            let cancel = if next(4) == 0 {
                next(*q as u64 + 1) as i64
            } else {
                0
            };
            let ship = q - cancel;
            if cancel > 0 {
                t += 1 + next(600);
                command += 1;
                story.push((t, command, json!({"type": "order.lines_cancelled", "data": {"order": id, "lines": [{"line": line, "qty": cancel}], "reason": "customer"}})));
            }
            if ship > 0 && next(5) > 0 {
                t += 1 + next(3000);
                package += 1;
                command += 1;
                let pkg = format!("P{package}");
                story.push((
                    t,
                    command,
                    shipped(&id, &pkg, json!([{"line": line, "qty": ship}])),
                ));
                story.push((t, command, json!({"type": "stock.shipped", "data": {"sku": "LAMP", "order": id, "line": line, "location": "WH1", "qty": ship}})));
                if next(3) > 0 {
                    command += 1;
                    story.push((t + 1 + next(5000), command, json!({"type": "order.delivered", "data": {"order": id, "package": pkg, "proof": ""}})));
                }
                if next(4) == 0 {
                    command += 1;
                    let reason = REASONS[next(4) as usize];
                    let back = 1 + next(ship as u64) as i64;
                    story.push((t + 1 + next(8000), command, json!({"type": "order.return_authorised", "data": {"order": id,
                        "return_id": format!("R{line}"), "lines": [{"line": line, "qty": back}], "reason": reason, "note": ""}})));
                }
            }
        }
    }
    // In business-time order (an order's own facts keep their order: placement first).
    story.sort_by_key(|(t, c, _)| (*t, *c));
    story
        .into_iter()
        .enumerate()
        .map(|(i, (minutes, command, event))| {
            let at = ledger::values::Timestamp::parse("2011-01-01T00:00:00Z")
                .unwrap()
                .as_datetime()
                + chrono::Duration::minutes(minutes as i64);
            let mut e = recorded_on(i as u64 + 1, &at.to_rfc3339(), event);
            e.envelope.command_id = uuid::Uuid::from_u128(command);
            e
        })
        .collect()
}

fn location() -> Value {
    json!({"type": "location.defined", "data": {"location": "WH1", "name": "", "kind": "Warehouse",
        "region": "UK", "capacity": null, "routing_priority": 1}})
}

fn sold(g: &mut Given, command: u128, at: &str, order_id: &str, qty: i64) {
    g.at(command, at, order(order_id, qty))
        .at(command + 1, at, crate::books_tests::shipment(order_id, qty))
        .at(
            command + 1,
            at,
            shipped(order_id, "P1", json!([{"line": 1, "qty": qty}])),
        );
}

#[test]
fn turns_days_of_supply_gmroi_sell_through_and_aging_from_the_books() {
    let mut g = Given::new();
    g.at(1, "2011-01-01T08:00:00Z", location())
        .at(2, "2011-01-01T08:00:00Z", crate::books_tests::item("Fifo"))
        .at(
            3,
            "2011-01-05T09:00:00Z",
            crate::books_tests::receipt(10, "5.00", "PO-1"),
        );
    sold(&mut g, 10, "2011-01-10T09:00:00Z", "O1", 4);
    // February: ten more at 6.00, six sold (FIFO: the January units at 5.00).
    g.at(
        20,
        "2011-02-03T09:00:00Z",
        crate::books_tests::receipt(10, "6.00", "PO-2"),
    );
    let jan = g.row("2011-01", "all", "-");
    assert_eq!(jan["inventory_value_open"], json!({}));
    assert_eq!(jan["inventory_value_close"]["GBP"], "30.00");
    assert_eq!(jan["units_on_hand_close"], 6);
    assert_eq!(jan["cogs"]["GBP"], "20.00");
    assert_eq!(jan["net_sales"]["GBP"], "80.00");
    let k = &jan["kpis"];
    // COGS 20 over an average inventory of (0 + 30) / 2.
    assert_eq!(k["inventory_turns"]["GBP"], "1.3333");
    // 30 at close over 20 / 31 a day.
    assert_eq!(k["days_of_supply"]["GBP"], "46.5");
    // (80 - 20) / 15.
    assert_eq!(k["gmroi"]["GBP"], "4");
    // 4 shipped of 0 on hand at open and 10 received.
    assert_eq!(k["sell_through_units"], "0.4");
    // The business clock passed January's end: its six units are 26 days old.
    assert_eq!(jan["aging"]["0-30"]["units"], 6);
    assert_eq!(jan["aging"]["0-30"]["value"]["GBP"], "30.00");
    assert_eq!(
        g.row("2011-01", "location", "WH1")["aging"]["0-30"]["units"],
        6
    );
    sold(&mut g, 30, "2011-02-10T09:00:00Z", "O2", 6);
    let feb = g.row("2011-02", "all", "-");
    assert_eq!(feb["inventory_value_open"]["GBP"], "30.00");
    assert_eq!(feb["units_on_hand_open"], 6);
    assert_eq!(feb["inventory_value_close"]["GBP"], "60.00");
    assert_eq!(feb["cogs"]["GBP"], "30.00");
    assert_eq!(feb["kpis"]["sell_through_units"], "0.375");
    // A receipt dated back into January: January closes higher, and February opens higher.
    g.at(
        40,
        "2011-01-20T09:00:00Z",
        crate::books_tests::receipt(2, "5.00", "PO-3"),
    );
    let jan = g.row("2011-01", "all", "-");
    assert_eq!(jan["inventory_value_close"]["GBP"], "40.00");
    assert_eq!(jan["units_on_hand_close"], 8);
    let feb = g.row("2011-02", "all", "-");
    assert_eq!(feb["inventory_value_open"]["GBP"], "40.00");
    assert_eq!(feb["units_on_hand_open"], 8);
    assert_eq!(feb["inventory_value_close"]["GBP"], "70.00");
    assert_eq!(feb["units_on_hand_close"], 12);
    // The week and the day rows carry their balances the same way.
    let week = g.row("2011-W05", "all", "-");
    assert_eq!(week["inventory_value_open"]["GBP"], "40.00");
    assert_eq!(week["inventory_value_close"]["GBP"], "100.00");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Receipts and shipments at two locations, dated at random over three months and applied
    /// in random order (so many are dated back): every day, week and month row of the whole
    /// business, the entity and each location opens where the sum of all earlier periods'
    /// movements leaves it and closes with its own, in value (recomputed from the books) and
    /// in units.
    #[test]
    fn inventory_balances_equal_a_recomputation_by_period(seed in 0u64..u64::MAX) {
        use rust_decimal::Decimal;
        use std::collections::BTreeMap;
        let mut next = crate::books_tests::xorshift(seed);
        let mut events = vec![
            crate::books_tests::recorded_on(1, "2010-12-01T00:00:00Z", location()),
            crate::books_tests::recorded_on(2, "2010-12-01T00:00:00Z", {
                let mut l = location();
                l["data"]["location"] = json!("WH2");
                l
            }),
            crate::books_tests::recorded_on(3, "2010-12-01T00:00:00Z", crate::books_tests::item("Fifo")),
        ];
        let mut on_hand = [0i64; 2];
        for i in 0..(5 + next(40)) {
            let at = format!("2011-{:02}-{:02}T{:02}:00:00Z", 1 + next(3), 1 + next(28), next(24));
            let w = next(2) as usize;
            let wh = ["WH1", "WH2"][w];
            let mut event = if on_hand[w] > 0 && next(2) == 0 {
                let q = 1 + next(on_hand[w] as u64) as i64;
                on_hand[w] -= q;
                crate::books_tests::shipment("O1", q)
            } else {
                let q = 1 + next(10) as i64;
                on_hand[w] += q;
                crate::books_tests::receipt(q, &format!("{}.{:02}", 1 + next(9), next(100)), "PO-1")
            };
            event["data"]["location"] = json!(wh);
            events.push(crate::books_tests::recorded_on(4 + i, &at, event));
        }
        let mut view = Kpis::default();
        let mut books = crate::books::Books::default();
        // (period, dimension, value) -> (value change, unit change)
        let mut moved: BTreeMap<(String, String, String), (Decimal, i64)> = BTreeMap::new();
        for e in &events {
            view.apply(e, &mut BTreeSet::new());
            let at = e.envelope.effective_at;
            for line in books.post(e).lines {
                if line.account != crate::books::Account::Inventory {
                    continue;
                }
                for p in periods(at) {
                    for dim in [("all", "-".to_owned()), ("entity", line.entity.clone()),
                        ("location", line.location.clone().unwrap())] {
                        moved.entry((p.clone(), dim.0.into(), dim.1)).or_default().0 += line.amount;
                    }
                }
            }
            for d in ledger::effects::stock_deltas(&e.envelope.event) {
                for p in periods(at) {
                    for dim in [("all", "-".to_owned()), ("entity", "UK01".to_owned()),
                        ("location", d.location.to_string())] {
                        moved.entry((p.clone(), dim.0.into(), dim.1)).or_default().1 += d.on_hand;
                    }
                }
            }
        }
        for (period, dim, value) in moved.keys() {
            let granularity = period.len() + usize::from(period.contains('W')) * 100;
            let (mut open, mut units_open) = (Decimal::ZERO, 0);
            for ((p, d, v), (x, u)) in &moved {
                let g = p.len() + usize::from(p.contains('W')) * 100;
                if g == granularity && d == dim && v == value && p < period {
                    open += x;
                    units_open += u;
                }
            }
            let (x, u) = moved[&(period.clone(), dim.clone(), value.clone())];
            let row = &view.rows()[&crate::key::key("kpi", &[period.as_str(), dim, value])];
            let money = |m: &BTreeMap<String, Decimal>| m.get("GBP").copied().unwrap_or_default();
            proptest::prop_assert_eq!(money(&row.inventory_value_open), open, "{} {} {}", period, dim, value);
            proptest::prop_assert_eq!(money(&row.inventory_value_close), open + x);
            proptest::prop_assert_eq!(row.units_on_hand_open, units_open);
            proptest::prop_assert_eq!(row.units_on_hand_close, units_open + u);
        }
    }
}

#[test]
fn a_line_replaced_by_amendment_is_not_a_cancellation_and_the_order_completes_with_its_new_line() {
    let mut g = Given::new();
    g.at(1, "2011-01-03T10:00:00Z", order("A1", 2)).at(
        1,
        "2011-01-03T10:00:00Z",
        allocated("A1", 1, 2),
    );
    // The customer wants 3: line 2 replaces line 1 (added first, then line 1's 2 cancelled).
    g.at(
        2,
        "2011-01-03T12:00:00Z",
        json!({"type": "order.lines_added", "data": {"order": "A1", "reason": "customer_request",
            "lines": [{"line": {"line": 2, "sku": "LAMP", "qty": 3, "unit_price": gbp("20.00"),
                "discount": gbp("0.00"), "tax": gbp("0.00"), "fees": gbp("0.00")},
                "replaces": 1, "consent": null}]}}),
    )
    .at(
        2,
        "2011-01-03T12:00:00Z",
        json!({"type": "order.lines_cancelled", "data": {"order": "A1",
            "lines": [{"line": 1, "qty": 2}], "reason": "customer_request"}}),
    );
    // Not complete: line 2 is open.
    assert_eq!(g.row("2011-01", "all", "-")["orders_completed"], 0);
    g.at(
        3,
        "2011-01-04T10:00:00Z",
        shipped("A1", "P1", json!([{"line": 2, "qty": 3}])),
    );
    let row = g.row("2011-01-04", "all", "-");
    assert_eq!(row["orders_completed"], 1);
    assert_eq!(row["orders_in_full"], 1, "{row}");
    // The placement figures are the placement's.
    let placed = g.row("2011-01-03", "all", "-");
    assert_eq!(
        (
            placed["lines_placed"].as_i64(),
            placed["units_ordered"].as_i64()
        ),
        (Some(1), Some(2))
    );
}
