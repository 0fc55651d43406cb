//! Given/when/then tests of lots and expiry: first expiry first out, expired and short-dated
//! stock leaving what may be promised, lots named by every command that takes units off a
//! shelf, returns back into their lot.

use ledger::events::Event;
use ledger::values::{LocationId, LotId, Sku};
use serde_json::{Value, json};

use crate::decide::{Decision, Rejection, code};
use crate::decide_tests::{World, types};

const DAY1: &str = "2011-01-10T09:00:00Z";
const AFTER_EARLY: &str = "2011-01-21T09:00:00Z";

fn at(w: &mut World, kind: &str, data: Value, when: &str) -> Decision {
    w.given_at(kind, data, when)
}

fn refused(result: Result<Decision, Rejection>) -> Rejection {
    match result {
        Ok(d) => panic!("expected a rejection, got {:?}", types(&d)),
        Err(r) => r,
    }
}

fn receipt(lot: &str, expires_on: &str, qty: i64) -> Value {
    json!({"sku": "FOOD", "location": "WH1", "qty": qty, "lot": lot, "expires_on": expires_on,
           "unit_cost": {"amount": "1.00", "currency": "GBP"}})
}

/// FOOD keeps lots with expiry: L-LATE (5, good through 2011-03-01) received first, then
/// L-EARLY (5, good through 2011-01-20), both at WH1.
fn food() -> World {
    let mut w = World::new();
    w.given(
        "item.define",
        json!({"sku": "FOOD", "tracking": {"lot": true, "serial": false, "expiry": true}}),
    );
    at(
        &mut w,
        "stock.receive",
        receipt("L-LATE", "2011-03-01", 5),
        DAY1,
    );
    at(
        &mut w,
        "stock.receive",
        receipt("L-EARLY", "2011-01-20", 5),
        DAY1,
    );
    w
}

fn place(w: &mut World, order: &str, channel: &str, qty: i64, when: &str) -> Decision {
    at(
        w,
        "order.place",
        json!({"order": order, "channel": channel, "ship_to_region": "UK",
               "lines": [{"line": 1, "sku": "FOOD", "qty": qty,
                          "unit_price": {"amount": "3.00", "currency": "GBP"}}]}),
        when,
    )
}

fn allocated(d: &Decision) -> i64 {
    d.iter()
        .map(|(_, e)| match e {
            Event::StockAllocated(a) => a.qty.get(),
            _ => 0,
        })
        .sum()
}

fn picked_lots(d: &Decision) -> Vec<(String, i64)> {
    d.iter()
        .filter_map(|(_, e)| match e {
            Event::StockPicked(p) => Some((
                p.lot.as_ref().map(|l| l.to_string()).unwrap_or_default(),
                p.qty.get(),
            )),
            _ => None,
        })
        .collect()
}

fn pick(w: &mut World, order: &str, line: Value, when: &str) -> Result<Decision, Rejection> {
    if !w.state.orders[&ledger::values::OrderId::new(order).unwrap()].released_to_pick {
        at(
            w,
            "order.release_to_pick",
            json!({"order": order, "wave": format!("W-{order}")}),
            when,
        );
    }
    w.when_at("order.pick", json!({"order": order, "lines": [line]}), when)
}

fn lot_units(w: &World, lot: &str) -> (i64, i64) {
    let b = w.state.stock[&Sku::new("FOOD").unwrap()].extras().lots[&LotId::new(lot).unwrap()]
        .at(&LocationId::new("WH1").unwrap());
    (b.units, b.held)
}

#[test]
fn a_pick_takes_the_lot_that_expires_first_and_expired_stock_leaves_what_may_be_promised() {
    let mut w = food();
    let d = place(&mut w, "O1", "web", 3, DAY1);
    assert_eq!(allocated(&d), 3);
    let d = pick(&mut w, "O1", json!({"line": 1, "qty": 3}), DAY1).unwrap();
    assert_eq!(picked_lots(&d), [("L-EARLY".to_string(), 3)]);
    w.apply_at(&d, DAY1);
    assert_eq!(lot_units(&w, "L-EARLY"), (2, 0));

    // After L-EARLY's expiry its 2 shelf units may not be promised: 10 on hand, 3 allocated,
    // 2 expired leave 5.
    let d = place(&mut w, "O2", "web", 8, AFTER_EARLY);
    assert_eq!(allocated(&d), 5, "{:?}", types(&d));
    assert!(types(&d).contains(&"order.line_backordered"));
    // Its pick takes the later lot; the expired one cannot be named.
    let expired = refused(pick(
        &mut w,
        "O2",
        json!({"line": 1, "qty": 1, "lot": "L-EARLY"}),
        AFTER_EARLY,
    ));
    assert_eq!(expired.code, code::LOT_EXPIRED, "{}", expired.message);
    assert!(
        expired.message.contains("2011-01-20"),
        "{}",
        expired.message
    );
    let d = pick(&mut w, "O2", json!({"line": 1, "qty": 5}), AFTER_EARLY).unwrap();
    assert_eq!(picked_lots(&d), [("L-LATE".to_string(), 5)]);
    w.apply_at(&d, AFTER_EARLY);
    // Nothing fresh is left.
    let d = place(&mut w, "O3", "web", 1, AFTER_EARLY);
    assert_eq!(allocated(&d), 0);
}

#[test]
fn one_pick_spans_lots_in_expiry_order_and_names_no_lot_twice_over() {
    let mut w = food();
    place(&mut w, "O1", "web", 7, DAY1);
    let d = pick(&mut w, "O1", json!({"line": 1, "qty": 7}), DAY1).unwrap();
    assert_eq!(
        picked_lots(&d),
        [("L-EARLY".to_string(), 5), ("L-LATE".to_string(), 2)]
    );
    // A named lot must have the units.
    let r = refused(pick(
        &mut w,
        "O1",
        json!({"line": 1, "qty": 6, "lot": "L-LATE"}),
        DAY1,
    ));
    assert_eq!(r.code, code::INSUFFICIENT_STOCK, "{}", r.message);
    let r = refused(pick(
        &mut w,
        "O1",
        json!({"line": 1, "qty": 1, "lot": "L-NONE"}),
        DAY1,
    ));
    assert_eq!(r.code, code::UNKNOWN_LOT);
    // A named lot that is not the first to expire is allowed (the picker's choice).
    let d = pick(
        &mut w,
        "O1",
        json!({"line": 1, "qty": 5, "lot": "L-LATE"}),
        DAY1,
    )
    .unwrap();
    assert_eq!(picked_lots(&d), [("L-LATE".to_string(), 5)]);
}

#[test]
fn a_channel_that_wants_shelf_life_gets_only_lots_that_have_it() {
    let mut w = food();
    at(
        &mut w,
        "channel.set_shelf_life",
        json!({"channel": "amazon", "min_days": 30}),
        DAY1,
    );
    // On 2011-01-10 L-EARLY has 10 days left, L-LATE 50: amazon may have only L-LATE's 5.
    let d = place(&mut w, "AMZ", "amazon", 8, DAY1);
    assert_eq!(allocated(&d), 5);
    let d = pick(&mut w, "AMZ", json!({"line": 1, "qty": 5}), DAY1).unwrap();
    assert_eq!(picked_lots(&d), [("L-LATE".to_string(), 5)]);
    let r = refused(pick(
        &mut w,
        "AMZ",
        json!({"line": 1, "qty": 1, "lot": "L-EARLY"}),
        DAY1,
    ));
    assert_eq!(r.code, code::LOT_EXPIRED);
    assert!(r.message.contains("30 days"), "{}", r.message);
    // The web shop takes what is left, short-dated or not.
    let d = place(&mut w, "WEB", "web", 5, DAY1);
    assert_eq!(allocated(&d), 5);

    for (data, expected) in [
        (
            json!({"channel": "nowhere", "min_days": 3}),
            code::UNKNOWN_CHANNEL,
        ),
        (
            json!({"channel": "web", "min_days": 4000}),
            code::INVALID_QUANTITY,
        ),
    ] {
        assert_eq!(
            refused(w.when("channel.set_shelf_life", data)).code,
            expected
        );
    }
}

#[test]
fn a_receipt_into_a_lot_keeps_its_expiry_and_an_expiry_only_item_gets_a_lot_per_date() {
    let mut w = food();
    let r = refused(w.when_at("stock.receive", receipt("L-LATE", "2011-04-01", 1), DAY1));
    assert_eq!(r.code, code::LOT_EXPIRY_MISMATCH);
    assert!(r.message.contains("2011-03-01"), "{}", r.message);
    at(
        &mut w,
        "stock.receive",
        receipt("L-LATE", "2011-03-01", 1),
        DAY1,
    );
    assert_eq!(lot_units(&w, "L-LATE"), (6, 0));

    let d = at(
        &mut w,
        "stock.receive",
        json!({"sku": "EXP", "location": "WH1", "qty": 2, "expires_on": "2011-02-01",
               "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
        DAY1,
    );
    let Event::StockReceived(e) = &d[0].1 else {
        panic!("{:?}", types(&d))
    };
    assert_eq!(e.lot.as_ref().map(|l| l.as_str()), Some("2011-02-01"));
}

#[test]
fn commands_that_take_units_off_a_shelf_name_a_lot_that_has_them() {
    let mut w = food();
    for (kind, data, expected) in [
        (
            "stock.adjust",
            json!({"sku": "FOOD", "location": "WH1", "delta": -1, "reason": "damaged"}),
            code::LOT_REQUIRED,
        ),
        (
            "stock.adjust",
            json!({"sku": "FOOD", "location": "WH1", "delta": 1, "reason": "found", "lot": "L-X"}),
            code::UNKNOWN_LOT,
        ),
        (
            "stock.scrap",
            json!({"sku": "FOOD", "location": "WH1", "qty": 6, "reason": "damaged", "lot": "L-EARLY"}),
            code::INSUFFICIENT_STOCK,
        ),
        (
            "stock.transfer_ship",
            json!({"sku": "FOOD", "transfer": "T1", "from": "WH1", "to": "WH2", "qty": 1}),
            code::LOT_REQUIRED,
        ),
        (
            "stock.count",
            json!({"sku": "FOOD", "location": "WH1", "counted": 3}),
            code::LOT_REQUIRED,
        ),
        (
            "stock.quality_release",
            json!({"sku": "FOOD", "location": "WH1", "qty": 1, "lot": "L-LATE"}),
            code::INSUFFICIENT_STOCK,
        ),
    ] {
        let r = refused(w.when_at(kind, data.clone(), DAY1));
        assert_eq!(r.code, expected, "{kind} {data}: {}", r.message);
        if expected != code::INSUFFICIENT_STOCK {
            assert!(r.message.starts_with("lot:"), "{}", r.message);
        }
    }
    // A count of one lot books the difference against that lot.
    let d = at(
        &mut w,
        "stock.count",
        json!({"sku": "FOOD", "location": "WH1", "counted": 3, "lot": "L-EARLY"}),
        DAY1,
    );
    let Some(Event::StockCounted(c)) = d.last().map(|(_, e)| e) else {
        panic!("{:?}", types(&d))
    };
    assert_eq!((c.expected.get(), c.variance.get()), (5, -2));
    assert_eq!(lot_units(&w, "L-EARLY"), (3, 0));
    assert_eq!(w.balance("FOOD", "WH1").on_hand, 8);
    // A transfer carries its lot to the other end.
    at(
        &mut w,
        "stock.transfer_ship",
        json!({"sku": "FOOD", "transfer": "T1", "from": "WH1", "to": "WH2", "qty": 2, "lot": "L-LATE"}),
        DAY1,
    );
    let d = at(
        &mut w,
        "stock.transfer_receive",
        json!({"sku": "FOOD", "transfer": "T1", "qty": 2}),
        DAY1,
    );
    let Event::TransferReceived(t) = &d[0].1 else {
        panic!()
    };
    assert_eq!(t.lot.as_ref().map(|l| l.as_str()), Some("L-LATE"));
    assert_eq!(lot_units(&w, "L-LATE"), (3, 0));
}

#[test]
fn holding_an_expired_lot_that_orders_count_on_routes_them_again() {
    let mut w = food();
    // Both orders are allocated at WH1 while L-EARLY is good: 8 of the 10 units.
    place(&mut w, "O1", "web", 4, DAY1);
    place(&mut w, "O2", "web", 4, DAY1);
    at(
        &mut w,
        "stock.receive",
        json!({"sku": "FOOD", "location": "WH2", "qty": 3, "lot": "L-LATE", "expires_on": "2011-03-01",
               "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
        DAY1,
    );
    // L-EARLY expired: quarantining its 5 units leaves WH1 with 5 for 8 allocated, so 3 are
    // taken back (the latest placed order first) and routed to WH2.
    let d = at(
        &mut w,
        "stock.quality_hold",
        json!({"sku": "FOOD", "location": "WH1", "qty": 5, "lot": "L-EARLY", "reason": "expired"}),
        AFTER_EARLY,
    );
    let t = types(&d);
    assert_eq!(t.last(), Some(&"stock.quality_held"), "{t:?}");
    assert!(t.contains(&"stock.allocation_released"), "{t:?}");
    assert_eq!(w.balance("FOOD", "WH1").allocated, 5);
    assert_eq!(w.balance("FOOD", "WH2").allocated, 3);
    assert_eq!(lot_units(&w, "L-EARLY"), (5, 5));
    // A count of the lot cannot take units that are in quality hold.
    let r = refused(w.when_at(
        "stock.count",
        json!({"sku": "FOOD", "location": "WH1", "counted": 3, "lot": "L-EARLY"}),
        AFTER_EARLY,
    ));
    assert_eq!(r.code, code::INSUFFICIENT_STOCK, "{}", r.message);
    assert!(r.message.contains("quality hold"), "{}", r.message);
    // Held units may be scrapped from hold, by lot.
    at(
        &mut w,
        "stock.scrap",
        json!({"sku": "FOOD", "location": "WH1", "qty": 5, "lot": "L-EARLY", "reason": "expired", "from_quality_hold": true}),
        AFTER_EARLY,
    );
    assert!(
        !w.state.stock[&Sku::new("FOOD").unwrap()].extras().lots[&LotId::new("L-EARLY").unwrap()]
            .at
            .contains_key(&LocationId::new("WH1").unwrap())
    );
}

#[test]
fn a_return_comes_back_into_the_lot_it_was_picked_from() {
    let mut w = food();
    place(&mut w, "O1", "web", 2, DAY1);
    let d = pick(&mut w, "O1", json!({"line": 1, "qty": 2}), DAY1).unwrap();
    w.apply_at(&d, DAY1);
    at(
        &mut w,
        "order.pack",
        json!({"order": "O1", "package": "P1", "lines": [{"line": 1, "qty": 2}]}),
        DAY1,
    );
    at(
        &mut w,
        "order.ship",
        json!({"order": "O1", "package": "P1", "carrier": "DPD", "tracking": "T1",
               "freight_cost": {"amount": "1.00", "currency": "GBP"}}),
        DAY1,
    );
    at(
        &mut w,
        "order.authorise_return",
        json!({"order": "O1", "return_id": "R1", "reason": "Defective", "lines": [{"line": 1, "qty": 2}]}),
        DAY1,
    );
    let receive = |lot: Option<&str>| {
        let mut data = json!({"sku": "FOOD", "return_id": "R1", "order": "O1", "line": 1,
                              "location": "WH1", "qty": 1});
        if let Some(lot) = lot {
            data["lot"] = json!(lot);
        }
        data
    };
    let r = refused(w.when_at("stock.receive_return", receive(Some("L-LATE")), DAY1));
    assert_eq!(r.code, code::UNKNOWN_LOT, "{}", r.message);
    let d = at(&mut w, "stock.receive_return", receive(None), DAY1);
    let Event::ReturnReceived(e) = &d[0].1 else {
        panic!()
    };
    assert_eq!(e.lot.as_ref().map(|l| l.as_str()), Some("L-EARLY"));
    assert_eq!(lot_units(&w, "L-EARLY"), (4, 1));
    at(
        &mut w,
        "stock.disposition_return",
        json!({"sku": "FOOD", "return_id": "R1", "qty": 1, "disposition": "Restock"}),
        DAY1,
    );
    assert_eq!(lot_units(&w, "L-EARLY"), (4, 0));
}

#[test]
fn whether_stock_is_kept_by_lot_changes_only_with_none_on_hand() {
    let mut w = food();
    let r = refused(w.when(
        "item.define",
        json!({"sku": "FOOD", "tracking": {"lot": false, "serial": false, "expiry": false}}),
    ));
    assert_eq!(r.code, code::INVALID_TRANSITION);
    w.given("item.define", json!({"sku": "NEW"}));
    w.given(
        "item.define",
        json!({"sku": "NEW", "tracking": {"lot": true, "serial": false, "expiry": false}}),
    );
}

#[test]
fn lots_of_two_skus_with_one_id_are_apart_in_one_pick() {
    // Goal: suppliers reuse lot numbers; a pick of two SKUs whose lots share an id takes each
    // SKU's own units (a shared tally once refused the second line).
    let mut w = food();
    w.given(
        "item.define",
        json!({"sku": "DRINK", "tracking": {"lot": true, "serial": false, "expiry": true}}),
    );
    let mut drink = receipt("L-LATE", "2011-03-01", 5);
    drink["sku"] = json!("DRINK");
    at(&mut w, "stock.receive", drink, DAY1);
    at(
        &mut w,
        "order.place",
        json!({"order": "BOTH", "channel": "web", "ship_to_region": "UK", "lines": [
            {"line": 1, "sku": "FOOD", "qty": 5, "unit_price": {"amount": "3.00", "currency": "GBP"}},
            {"line": 2, "sku": "DRINK", "qty": 5, "unit_price": {"amount": "3.00", "currency": "GBP"}}]}),
        DAY1,
    );
    at(
        &mut w,
        "order.release_to_pick",
        json!({"order": "BOTH", "wave": "W1"}),
        DAY1,
    );
    let d = w
        .when_at(
            "order.pick",
            json!({"order": "BOTH", "lines": [
                {"line": 1, "qty": 5, "lot": "L-LATE"}, {"line": 2, "qty": 5, "lot": "L-LATE"}]}),
            DAY1,
        )
        .unwrap();
    assert_eq!(
        picked_lots(&d),
        [("L-LATE".to_string(), 5), ("L-LATE".to_string(), 5)]
    );
}

#[test]
fn good_units_that_orders_count_on_cannot_be_taken_while_expired_ones_can() {
    // Goal: after L-EARLY expires, the 5 units of L-LATE back an order; taking one away
    // (adjust, scrap, transfer) would leave the order short even though 5 expired units make
    // the location's free figure look sufficient.
    let mut w = food();
    let d = place(&mut w, "O1", "web", 5, AFTER_EARLY);
    assert_eq!(allocated(&d), 5);
    for (kind, data) in [
        (
            "stock.adjust",
            json!({"sku": "FOOD", "location": "WH1", "delta": -1, "reason": "damaged", "lot": "L-LATE"}),
        ),
        (
            "stock.scrap",
            json!({"sku": "FOOD", "location": "WH1", "qty": 1, "reason": "damaged", "lot": "L-LATE"}),
        ),
        (
            "stock.transfer_ship",
            json!({"sku": "FOOD", "transfer": "T1", "from": "WH1", "to": "WH2", "qty": 1, "lot": "L-LATE"}),
        ),
    ] {
        let r = refused(w.when_at(kind, data, AFTER_EARLY));
        assert_eq!(r.code, code::INSUFFICIENT_STOCK, "{kind}: {}", r.message);
        assert!(r.message.contains("would leave orders"), "{}", r.message);
    }
    at(
        &mut w,
        "stock.scrap",
        json!({"sku": "FOOD", "location": "WH1", "qty": 5, "reason": "expired", "lot": "L-EARLY"}),
        AFTER_EARLY,
    );
    assert_eq!(lot_units(&w, "L-LATE"), (5, 0));
}
