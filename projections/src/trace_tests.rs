//! The trace view: a lot received on a purchase order, picked and shipped on several orders,
//! one of them returned; forward and backward, and as of a point before the last shipment.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::books_tests::{gbp, order, recorded_on};
use crate::trace::{Trace, TraceQuery};
use crate::view::{Answer, Model, View};

fn po() -> Value {
    json!({"type": "purchase.order_created", "data": {"purchase_order": "PO1", "supplier": "ACME",
        "currency": "GBP", "expected_on": "2011-01-20", "lines": [{"line": 1, "sku": "LAMP",
        "location": "WH1", "qty": 10, "unit_cost": gbp("5.00")}]}})
}

fn receipt() -> Value {
    json!({"type": "stock.received", "data": {"sku": "LAMP", "location": "WH1", "bin": null,
        "lot": "L1", "expires_on": "2012-01-01", "serials": [], "qty": 10,
        "unit_cost": gbp("5.00"), "purchase": {"purchase_order": "PO1", "line": 1}}})
}

fn picked(order: &str, qty: i64) -> Value {
    json!({"type": "stock.picked", "data": {"sku": "LAMP", "order": order, "line": 1,
        "location": "WH1", "bin": null, "lot": "L1", "qty": qty}})
}

fn shipped(order: &str, qty: i64) -> Value {
    json!({"type": "stock.shipped", "data": {"sku": "LAMP", "order": order, "line": 1,
        "location": "WH1", "qty": qty}})
}

fn answer(t: &Trace, q: TraceQuery) -> Value {
    match t.answer(&q) {
        Ok(Answer::Value(v)) => v,
        other => panic!("{other:?}"),
    }
}

fn build(events: &[(&str, Value)]) -> Trace {
    let mut t = Trace::default();
    for (seq, (at, e)) in events.iter().enumerate() {
        let mut changed = BTreeSet::new();
        t.apply(&recorded_on(seq as u64 + 1, at, e.clone()), &mut changed);
    }
    t
}

#[test]
fn a_lot_is_traced_to_the_orders_it_went_to_and_back_to_its_supplier() {
    let mut o2 = order("O2", 3);
    o2["data"]["external_ref"] = json!("SHOP-1002");
    let events = vec![
        ("2011-01-05T09:00:00Z", po()),
        ("2011-01-10T09:00:00Z", receipt()),
        ("2011-01-11T09:00:00Z", order("O1", 2)),
        ("2011-01-11T09:00:00Z", o2),
        ("2011-01-11T09:00:00Z", order("O3", 1)),
        ("2011-01-12T09:00:00Z", picked("O1", 2)),
        ("2011-01-12T09:00:00Z", picked("O2", 3)),
        ("2011-01-12T10:00:00Z", shipped("O1", 2)),
        ("2011-01-12T10:00:00Z", shipped("O2", 3)),
        (
            "2011-01-14T09:00:00Z",
            json!({"type": "stock.return_received", "data": {"sku": "LAMP", "return_id": "R1",
                "order": "O2", "line": 1, "location": "WH1", "qty": 1, "lot": "L1"}}),
        ),
        ("2011-01-15T09:00:00Z", picked("O3", 1)),
        ("2011-01-15T10:00:00Z", shipped("O3", 1)),
    ];
    let lot = |t: &Trace| {
        answer(
            t,
            TraceQuery::Lot {
                sku: "LAMP".into(),
                lot: "L1".into(),
            },
        )
    };
    let now = lot(&build(&events));
    let orders: Vec<&str> = now["orders"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(orders, ["O1", "O2", "O3"]);
    assert_eq!(now["orders"]["O2"]["external_ref"], "SHOP-1002");
    assert_eq!(now["orders"]["O2"]["returned"], 1);
    assert_eq!(
        now["orders"]["O3"]["first_shipped_at"],
        "2011-01-15T10:00:00Z"
    );
    assert_eq!(
        (now["shipped"].as_i64(), now["returned"].as_i64()),
        (Some(6), Some(1))
    );
    assert_eq!(now["receipts"][0]["supplier"], "ACME");
    assert_eq!(now["expires_on"], "2012-01-01");

    // Before O3 was picked, the lot had gone to O1 and O2 only.
    let before = lot(&build(&events[..10]));
    assert_eq!(before["orders"].as_object().unwrap().len(), 2);

    let back = answer(&build(&events), TraceQuery::Order { order: "O2".into() });
    assert_eq!(back["external_ref"], "SHOP-1002");
    assert_eq!(back["lines"][0]["lots"][0]["lot"], "L1");
    assert_eq!(back["lines"][0]["lots"][0]["shipped"], 3);
    assert_eq!(
        back["lines"][0]["lots"][0]["receipts"][0]["purchase_order"],
        "PO1"
    );
    assert!(
        build(&events)
            .answer(&TraceQuery::Order {
                order: "NONE".into()
            })
            .is_err()
    );
}
