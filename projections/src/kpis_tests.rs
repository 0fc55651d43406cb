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
