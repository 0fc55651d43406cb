//! Given/when/then tests of governance: legal entities, maker-checker thresholds and
//! approvals, period close and reopen. Figures written out.

use ledger::events::*;
use ledger::values::*;
use serde_json::json;

use crate::command::Command;
use crate::decide::{Decision, Rejection, code};
use crate::decide_tests::{World, command, refusal, types};
use crate::governance::{period_events, threshold_in_force};

fn by(actor: &str, at: &str, kind: &str, data: serde_json::Value) -> Command {
    let mut c = command(kind, data, at);
    c.actor.id = ActorId::new(actor).unwrap();
    c
}

const JAN: &str = "2011-01-10T09:00:00Z";

fn gbp(amount: &str) -> serde_json::Value {
    json!({"amount": amount, "currency": "GBP"})
}

/// The world of `decide_tests` with UK01 defined (GBP, GB) and 100 of A at WH1.
fn governed() -> World {
    let mut w = World::purchasing();
    w.act(&by(
        "controller-1",
        JAN,
        "legal_entity.define",
        json!({"name": "Gifts UK Ltd", "currency": "GBP", "country": "GB"}),
    ))
    .unwrap();
    w.act(&by(
        "clerk-1",
        JAN,
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": 100, "unit_cost": gbp("2.00")}),
    ))
    .unwrap();
    w
}

fn threshold(w: &mut World, kind: &str, limit: serde_json::Value) {
    w.act(&by(
        "controller-1",
        JAN,
        "policy.set_threshold",
        json!({"command_type": kind, "limit": limit}),
    ))
    .unwrap();
}

fn request_of(d: &Decision) -> String {
    match &d[0].1 {
        Event::ApprovalRequested(r) => r.request.clone(),
        other => panic!("expected an approval request, got {other:?}"),
    }
}

fn approve(w: &mut World, actor: &str, request: &str) -> Result<Decision, Rejection> {
    w.act(&by(
        actor,
        JAN,
        "approval.approve",
        json!({"request": request}),
    ))
}

#[test]
fn legal_entities_once_defined_are_required_and_keep_their_currency() {
    let mut w = World::new();
    // Nothing defined yet: commands for any entity pass, as before entities existed...
    w.act(&by(
        "clerk-1",
        JAN,
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": 1, "unit_cost": gbp("1")}),
    ))
    .unwrap();
    // ...but governance needs its entity defined.
    let r = refusal(w.act(&by(
        "controller-1",
        JAN,
        "policy.set_threshold",
        json!({"command_type": "stock.adjust", "limit": {"Quantity": 5}}),
    )));
    assert_eq!(r.code, code::UNKNOWN_LEGAL_ENTITY);
    assert!(r.message.contains("legal_entity.define"), "{}", r.message);

    let d = w
        .act(&by(
            "controller-1",
            JAN,
            "legal_entity.define",
            json!({"name": "Gifts UK Ltd", "currency": "GBP", "country": "GB"}),
        ))
        .unwrap();
    assert_eq!(
        d[0],
        (
            ledger::Subject::LegalEntity(EntityId::new("UK01").unwrap()),
            Event::LegalEntityDefined(LegalEntityDefined {
                entity: EntityId::new("UK01").unwrap(),
                name: "Gifts UK Ltd".into(),
                currency: Currency::new("GBP").unwrap(),
                country: "GB".into(),
            })
        )
    );
    // Now one is defined: another entity's command is refused until it is defined too.
    let mut de = by(
        "clerk-1",
        JAN,
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": 1, "unit_cost": gbp("1")}),
    );
    de.legal_entity = EntityId::new("DE01").unwrap();
    let r = refusal(w.act(&de));
    assert_eq!(r.code, code::UNKNOWN_LEGAL_ENTITY);
    assert!(r.message.contains("DE01"), "{}", r.message);
    // The functional currency never changes; the name and country may.
    let r = refusal(w.act(&by(
        "controller-1",
        JAN,
        "legal_entity.define",
        json!({"name": "Gifts UK Ltd", "currency": "EUR", "country": "GB"}),
    )));
    assert_eq!(r.code, code::INVALID_TRANSITION);
    assert!(
        r.message.contains("GBP") && r.message.contains("EUR"),
        "{}",
        r.message
    );
    w.act(&by(
        "controller-1",
        JAN,
        "legal_entity.define",
        json!({"name": "Gifts UK plc", "currency": "GBP", "country": "GB"}),
    ))
    .unwrap();
}

#[test]
fn legal_entity_fields_are_checked_on_the_way_in() {
    let bad = |data: serde_json::Value| {
        let json = json!({
            "command_id": uuid::Uuid::now_v7(), "actor": {"id": "c", "role": "controller"},
            "legal_entity": "UK01", "effective_at": JAN, "type": "legal_entity.define", "data": data,
        });
        crate::command::decode(json.to_string().as_bytes()).unwrap_err()
    };
    let e = bad(json!({"currency": "GBP", "country": "gb"}));
    assert_eq!(e.field, "data.country");
    let e = bad(json!({"currency": "XAU", "country": "GB"}));
    assert_eq!(e.field, "data.currency");
    let e = bad(json!({"currency": "GBP"}));
    assert!(e.message.contains("country"), "{e}");
}

#[test]
fn an_adjustment_above_its_threshold_waits_for_a_second_person() {
    let mut w = governed();
    threshold(&mut w, "stock.adjust", json!({"Quantity": 10}));
    let adjust =
        |delta: i64| json!({"sku": "A", "location": "WH1", "delta": delta, "reason": "damaged"});

    // Within the threshold: it passes, and its outcome names the threshold in force.
    let small = by("clerk-1", JAN, "stock.adjust", adjust(-5));
    let d = w.act(&small).unwrap();
    assert_eq!(types(&d), ["stock.adjusted"]);
    assert_eq!(
        threshold_in_force(&w.state, &small, &d),
        Some(ThresholdApplied {
            command_type: "stock.adjust".into(),
            limit: Measure::Quantity(Qty::new(10).unwrap()),
            measured: Measure::Quantity(Qty::new(5).unwrap()),
            set_by: ActorId::new("controller-1").unwrap(),
            set_at: Timestamp::parse(JAN).unwrap(),
        })
    );
    assert_eq!(w.balance("A", "WH1").on_hand, 95);

    // Above it: nothing moves; the command is kept whole for approval.
    let big = by("clerk-1", JAN, "stock.adjust", adjust(-12));
    let d = w.act(&big).unwrap();
    assert_eq!(types(&d), ["approval.requested"]);
    assert_eq!(threshold_in_force(&w.state, &big, &d), None);
    let Event::ApprovalRequested(asked) = &d[0].1 else {
        unreachable!()
    };
    assert_eq!(asked.requester.as_str(), "clerk-1");
    assert_eq!(
        asked.threshold.as_ref().unwrap().measured,
        Measure::Quantity(Qty::new(12).unwrap())
    );
    assert_eq!(w.balance("A", "WH1").on_hand, 95);
    let request = request_of(&d);

    // Not by the person who asked.
    assert_eq!(
        refusal(approve(&mut w, "clerk-1", &request)).code,
        code::APPROVER_IS_REQUESTER
    );
    // A second person: the adjustment is decided now, with the approver on it.
    let d = approve(&mut w, "controller-1", &request).unwrap();
    assert_eq!(types(&d), ["approval.granted", "stock.adjusted"]);
    let Event::StockAdjusted(adjusted) = &d[1].1 else {
        unreachable!()
    };
    assert_eq!(adjusted.delta.get(), -12);
    assert_eq!(
        adjusted.approved_by.as_ref().unwrap().as_str(),
        "controller-1"
    );
    assert_eq!(w.balance("A", "WH1").on_hand, 83);
    // Once only.
    assert_eq!(
        refusal(approve(&mut w, "controller-2", &request)).code,
        code::UNKNOWN_APPROVAL
    );
    // Removing the threshold lets anything through again.
    threshold(&mut w, "stock.adjust", json!(null));
    assert_eq!(
        types(
            &w.act(&by("clerk-1", JAN, "stock.adjust", adjust(-50)))
                .unwrap()
        ),
        ["stock.adjusted"]
    );
}

#[test]
fn a_count_whose_variance_moved_since_it_was_asked_is_not_approved() {
    let mut w = governed();
    threshold(&mut w, "stock.count", json!({"Quantity": 3}));
    // Within: a variance of 2.
    let d = w
        .act(&by(
            "clerk-1",
            JAN,
            "stock.count",
            json!({"sku": "A", "location": "WH1", "counted": 98}),
        ))
        .unwrap();
    assert_eq!(types(&d), ["stock.counted"]);
    // Beyond: found 88 of 98, a variance of 10.
    let d = w
        .act(&by(
            "clerk-1",
            JAN,
            "stock.count",
            json!({"sku": "A", "location": "WH1", "counted": 88}),
        ))
        .unwrap();
    let request = request_of(&d);
    // Five more arrive before anyone approves: the count no longer says what it said.
    w.act(&by(
        "clerk-1",
        JAN,
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": 5, "unit_cost": gbp("2.00")}),
    ))
    .unwrap();
    let r = refusal(approve(&mut w, "controller-1", &request));
    assert_eq!(r.code, code::STALE_APPROVAL);
    assert!(
        r.message.contains("10 units") && r.message.contains("15 units"),
        "{}",
        r.message
    );
    let reject = |reason: &str| {
        by(
            "controller-1",
            JAN,
            "approval.reject",
            json!({"request": request, "reason": reason}),
        )
    };
    assert_eq!(refusal(w.act(&reject(" "))).code, code::REASON_REQUIRED);
    assert_eq!(
        types(&w.act(&reject("count again after the delivery")).unwrap()),
        ["approval.rejected"]
    );
    assert_eq!(
        refusal(approve(&mut w, "controller-1", &request)).code,
        code::UNKNOWN_APPROVAL
    );
    assert_eq!(w.balance("A", "WH1").on_hand, 103);
}

#[test]
fn scrap_refunds_and_purchase_orders_have_thresholds_too() {
    let mut w = governed();
    threshold(&mut w, "stock.scrap", json!({"Quantity": 0}));
    let d = w
        .act(&by(
            "clerk-1",
            JAN,
            "stock.scrap",
            json!({"sku": "A", "location": "WH1", "qty": 1, "reason": "broken"}),
        ))
        .unwrap();
    let request = request_of(&d);
    let d = approve(&mut w, "controller-1", &request).unwrap();
    assert_eq!(types(&d), ["approval.granted", "stock.scrapped"]);

    // Purchase orders: the limit comes from the threshold, not the processor's configuration.
    threshold(
        &mut w,
        "purchase.create_order",
        json!({"Value": gbp("100.00")}),
    );
    let po = |id: &str, qty: i64| {
        json!({"purchase_order": id, "supplier": "ACME", "currency": "GBP",
        "lines": [{"line": 1, "sku": "A", "location": "WH1", "qty": qty, "unit_cost": gbp("2.00")}],
        "expected_on": "2011-01-20"})
    };
    let within = by("buyer-1", JAN, "purchase.create_order", po("PO1", 50));
    let d = w.act(&within).unwrap();
    assert_eq!(
        types(&d),
        ["purchase.order_created", "purchase.order_approved"]
    );
    let applied = threshold_in_force(&w.state, &within, &d).unwrap();
    assert_eq!(
        applied.measured,
        Measure::Value(Money::parse("100.00", "GBP").unwrap())
    );
    let d = w
        .act(&by("buyer-1", JAN, "purchase.create_order", po("PO2", 51)))
        .unwrap();
    assert_eq!(
        types(&d),
        ["purchase.order_created"],
        "102.00 GBP waits for purchase.approve"
    );

    // Refunds, by value: one of 5.10 against a limit of 5.00 waits.
    threshold(&mut w, "order.refund", json!({"Value": gbp("5.00")}));
    let mut step = |kind: &str, data: serde_json::Value| {
        w.act(&by("clerk-1", JAN, kind, data))
            .unwrap_or_else(|r| panic!("{kind}: {r}"))
    };
    step(
        "order.place",
        json!({"order": "O1", "channel": "web", "ship_to_region": "UK",
        "lines": [{"line": 1, "sku": "A", "qty": 2, "unit_price": gbp("2.55")}]}),
    );
    step(
        "order.release_to_pick",
        json!({"order": "O1", "wave": "W1"}),
    );
    step(
        "order.pick",
        json!({"order": "O1", "lines": [{"line": 1, "qty": 2}]}),
    );
    step(
        "order.pack",
        json!({"order": "O1", "package": "P1", "lines": [{"line": 1, "qty": 2}]}),
    );
    step(
        "order.ship",
        json!({"order": "O1", "package": "P1", "carrier": "RM", "tracking": "T", "freight_cost": gbp("3")}),
    );
    step(
        "order.authorise_return",
        json!({"order": "O1", "return_id": "R1", "lines": [{"line": 1, "qty": 2}], "reason": "Defective"}),
    );
    step(
        "stock.receive_return",
        json!({"sku": "A", "return_id": "R1", "order": "O1", "line": 1, "location": "WH1", "qty": 2}),
    );
    step(
        "stock.disposition_return",
        json!({"sku": "A", "return_id": "R1", "qty": 2, "disposition": "Restock"}),
    );
    let d = step(
        "order.refund",
        json!({"order": "O1", "return_id": "R1", "amount": gbp("5.10")}),
    );
    let request = request_of(&d);
    assert_eq!(
        refusal(approve(&mut w, "clerk-1", &request)).code,
        code::APPROVER_IS_REQUESTER
    );
    let d = approve(&mut w, "controller-1", &request).unwrap();
    assert_eq!(types(&d), ["approval.granted", "order.refunded"]);
}

#[test]
fn thresholds_are_checked_for_kind_and_measure() {
    let mut w = governed();
    let set = |kind: &str, limit: serde_json::Value| {
        by(
            "controller-1",
            JAN,
            "policy.set_threshold",
            json!({"command_type": kind, "limit": limit}),
        )
    };
    let r = refusal(w.act(&set("order.place", json!({"Quantity": 1}))));
    assert_eq!(r.code, code::INVALID_THRESHOLD);
    assert!(r.message.contains("stock.adjust"), "{}", r.message);
    assert_eq!(
        refusal(w.act(&set("stock.adjust", json!({"Value": gbp("1")})))).code,
        code::INVALID_THRESHOLD
    );
    assert_eq!(
        refusal(w.act(&set("order.refund", json!({"Quantity": 1})))).code,
        code::INVALID_THRESHOLD
    );
    assert_eq!(
        refusal(w.act(&set("order.refund", json!({"Value": gbp("-1")})))).code,
        code::NEGATIVE_AMOUNT
    );
    // An amount in another currency than the limit's cannot be compared without a rate: held.
    assert!(crate::governance::exceeds(
        &Measure::Value(Money::parse("1000", "GBP").unwrap()),
        &Measure::Value(Money::parse("1", "EUR").unwrap()),
    ));
}

fn close(at: &str, period: &str, events: u64, debits: &str, credits: &str, sha: &str) -> Command {
    by(
        "controller-1",
        at,
        "period.close",
        json!({"period": period, "events": events, "trial_balance_sha256": sha,
               "totals": [{"debits": gbp(debits), "credits": gbp(credits)}]}),
    )
}

#[test]
fn a_closed_period_refuses_back_dated_commands_until_an_approved_reopen() {
    let mut w = governed();
    let sha = "ab".repeat(32);
    let jan = Period::of(Timestamp::parse(JAN).unwrap());
    let probe = by(
        "controller-1",
        JAN,
        "period.close",
        json!({"period": "2011-01", "events": 0, "totals": [], "trial_balance_sha256": sha}),
    );
    let n = period_events(&w.state, &probe, jan);
    assert!(n > 0);

    // Not before the month ends.
    let r = refusal(w.act(&close(
        "2011-01-31T23:59:59Z",
        "2011-01",
        n,
        "200.00",
        "200.00",
        &sha,
    )));
    assert_eq!(r.code, code::INVALID_TRANSITION);
    assert!(r.message.contains("2011-02-01T00:00:00Z"), "{}", r.message);
    let feb = "2011-02-01T09:00:00Z";
    // Not on a trial balance that missed an event, or does not balance, or has no digest.
    let r = refusal(w.act(&close(feb, "2011-01", n - 1, "200.00", "200.00", &sha)));
    assert_eq!(r.code, code::PERIOD_CHANGED);
    assert!(r.message.contains(&format!("{n} events")), "{}", r.message);
    let r = refusal(w.act(&close(feb, "2011-01", n, "200.00", "199.99", &sha)));
    assert_eq!(r.code, code::UNBALANCED);
    assert!(r.message.contains("0.01"), "{}", r.message);
    assert_eq!(
        refusal(w.act(&close(feb, "2011-01", n, "200.00", "200.00", "xyz"))).code,
        code::INVALID_TRIAL_BALANCE
    );

    let d = w
        .act(&close(feb, "2011-01", n, "200.00", "200.00", &sha))
        .unwrap();
    assert_eq!(types(&d), ["period.closed"]);
    assert_eq!(
        refusal(w.act(&close(feb, "2011-01", n, "200.00", "200.00", &sha))).code,
        code::INVALID_TRANSITION
    );

    // A receipt back-dated into January is refused; one in February passes; master data is
    // not dated by periods.
    let receipt = |at: &str| {
        by(
            "clerk-1",
            at,
            "stock.receive",
            json!({"sku": "A", "location": "WH1", "qty": 1, "unit_cost": gbp("2.00")}),
        )
    };
    let r = refusal(w.act(&receipt("2011-01-15T12:00:00Z")));
    assert_eq!(r.code, code::PERIOD_CLOSED);
    assert!(
        r.message.contains("2011-01") && r.message.contains("period.reopen"),
        "{}",
        r.message
    );
    w.act(&receipt(feb)).unwrap();
    w.act(&by(
        "clerk-1",
        "2011-01-15T12:00:00Z",
        "item.define",
        json!({"sku": "NEW"}),
    ))
    .unwrap();

    // Reopening takes a reason and a second person.
    let reopen = |reason: &str| {
        by(
            "clerk-1",
            feb,
            "period.reopen",
            json!({"period": "2011-01", "reason": reason}),
        )
    };
    assert_eq!(refusal(w.act(&reopen(""))).code, code::REASON_REQUIRED);
    let d = w
        .act(&reopen("supplier credit note dated 2011-01-15"))
        .unwrap();
    assert_eq!(types(&d), ["approval.requested"]);
    let request = request_of(&d);
    assert_eq!(
        refusal(w.act(&receipt("2011-01-15T12:00:00Z"))).code,
        code::PERIOD_CLOSED,
        "not open until approved"
    );
    assert_eq!(
        refusal(approve(&mut w, "clerk-1", &request)).code,
        code::APPROVER_IS_REQUESTER
    );
    let d = approve(&mut w, "controller-1", &request).unwrap();
    assert_eq!(types(&d), ["approval.granted", "period.reopened"]);
    let Event::PeriodReopened(reopened) = &d[1].1 else {
        unreachable!()
    };
    assert_eq!(
        (reopened.requester.as_str(), reopened.approver.as_str()),
        ("clerk-1", "controller-1")
    );
    w.act(&receipt("2011-01-15T12:00:00Z")).unwrap();
    assert_eq!(
        refusal(w.act(&reopen("again"))).code,
        code::INVALID_TRANSITION
    );
    // Closing again needs a trial balance with the new item and receipt in it (every event
    // effective in the month counts, master data too).
    assert_eq!(period_events(&w.state, &probe, jan), n + 2);
    assert_eq!(
        refusal(w.act(&close(feb, "2011-01", n, "200.00", "200.00", &sha))).code,
        code::PERIOD_CHANGED
    );
    w.act(&close(feb, "2011-01", n + 2, "202.00", "202.00", &sha))
        .unwrap();
}

#[test]
fn supplier_invoices_match_receipts_and_large_price_differences_wait() {
    let mut w = governed();
    let po = json!({"purchase_order": "PO1", "supplier": "ACME", "currency": "GBP",
        "lines": [{"line": 1, "sku": "A", "location": "WH1", "qty": 10, "unit_cost": gbp("2.00")}],
        "expected_on": "2011-01-20"});
    w.act(&by("buyer-1", JAN, "purchase.create_order", po))
        .unwrap();
    w.act(&by(
        "clerk-1",
        JAN,
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": 6,
        "unit_cost": gbp("2.00"), "purchase": {"purchase_order": "PO1", "line": 1}}),
    ))
    .unwrap();
    let invoice = |number: &str, line: u32, qty: i64, cost: serde_json::Value| {
        by(
            "clerk-1",
            JAN,
            "purchase.record_invoice",
            json!({"purchase_order": "PO1",
            "invoice": number, "lines": [{"line": line, "qty": qty, "unit_cost": cost}]}),
        )
    };
    // Three-way match: not more than was received, on the order's lines, in its currency.
    let r = refusal(w.act(&invoice("INV-1", 1, 7, gbp("2.00"))));
    assert_eq!(r.code, code::OVER_INVOICE);
    assert!(r.message.contains("6 received"), "{}", r.message);
    assert_eq!(
        refusal(w.act(&invoice("INV-1", 9, 1, gbp("2.00")))).code,
        code::UNKNOWN_LINE
    );
    assert_eq!(
        refusal(w.act(&invoice(
            "INV-1",
            1,
            1,
            json!({"amount": "2.00", "currency": "USD"})
        )))
        .code,
        code::CURRENCY_MISMATCH
    );
    let d = w.act(&invoice("INV-1", 1, 4, gbp("2.00"))).unwrap();
    let Event::InvoiceRecorded(recorded) = &d[0].1 else {
        panic!("{d:?}")
    };
    assert_eq!(
        recorded.lines[0].po_unit_cost,
        Money::parse("2.00", "GBP").unwrap()
    );
    assert_eq!(
        refusal(w.act(&invoice("INV-1", 1, 1, gbp("2.00")))).code,
        code::ALREADY_EXISTS
    );
    let r = refusal(w.act(&invoice("INV-2", 1, 3, gbp("2.00"))));
    assert_eq!(r.code, code::OVER_INVOICE);
    assert!(r.message.contains("at most 2"), "{}", r.message);

    // A price difference above the entity's threshold waits for a second person: 2 units at
    // 2.60 instead of 2.00 is 1.20 over, above a 1.00 limit.
    threshold(
        &mut w,
        "purchase.record_invoice",
        json!({"Value": gbp("1.00")}),
    );
    let d = w.act(&invoice("INV-2", 1, 2, gbp("2.60"))).unwrap();
    let Event::ApprovalRequested(asked) = &d[0].1 else {
        panic!("{d:?}")
    };
    assert_eq!(
        asked.threshold.as_ref().unwrap().measured,
        Measure::Value(Money::parse("1.20", "GBP").unwrap())
    );
    let d = approve(&mut w, "controller-1", &asked.request.clone()).unwrap();
    assert_eq!(types(&d), ["approval.granted", "purchase.invoice_recorded"]);
    // Within it, an invoice passes with the threshold named.
    w.act(&by(
        "clerk-1",
        JAN,
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": 4,
        "unit_cost": gbp("2.00"), "purchase": {"purchase_order": "PO1", "line": 1}}),
    ))
    .unwrap();
    let small = invoice("INV-3", 1, 4, gbp("2.10"));
    let d = w.act(&small).unwrap();
    assert_eq!(types(&d), ["purchase.invoice_recorded"]);
    assert_eq!(
        threshold_in_force(&w.state, &small, &d).unwrap().measured,
        Measure::Value(Money::parse("0.40", "GBP").unwrap())
    );

    // Payments: of a recorded invoice, in its currency, more than 0 and no more than it
    // still owes (INV-1 charged 4 x 2.00 = 8.00).
    let pay = |number: &str, amount: serde_json::Value| {
        by(
            "buyer-1",
            JAN,
            "purchase.record_payment",
            json!({"purchase_order": "PO1", "invoice": number, "amount": amount,
                "reference": "BACS 1"}),
        )
    };
    assert_eq!(
        refusal(w.act(&pay("INV-9", gbp("1.00")))).code,
        code::UNKNOWN_INVOICE
    );
    assert_eq!(
        refusal(w.act(&pay("INV-1", json!({"amount": "1.00", "currency": "USD"})))).code,
        code::CURRENCY_MISMATCH
    );
    assert_eq!(
        refusal(w.act(&pay("INV-1", gbp("0.00")))).code,
        code::NEGATIVE_AMOUNT
    );
    let r = refusal(w.act(&pay("INV-1", gbp("8.01"))));
    assert_eq!(r.code, code::OVER_PAYMENT);
    assert!(r.message.contains("owes 8.00 GBP"), "{}", r.message);
    let d = w.act(&pay("INV-1", gbp("5.00"))).unwrap();
    assert_eq!(types(&d), ["purchase.payment_recorded"]);
    let r = refusal(w.act(&pay("INV-1", gbp("3.01"))));
    assert!(r.message.contains("owes 3.00 GBP"), "{}", r.message);
    w.act(&pay("INV-1", gbp("3.00"))).unwrap();
    assert_eq!(
        refusal(w.act(&pay("INV-1", gbp("0.01")))).code,
        code::OVER_PAYMENT
    );

    // Charge invoices: freight accrued at 6.00 is cleared by a 7.50 invoice, the 1.50
    // beyond spread over the received line; a second freight invoice finds nothing accrued.
    w.act(&by(
        "buyer-1",
        JAN,
        "purchase.allocate_landed_cost",
        json!({"purchase_order": "PO1", "charge": "Freight", "amount": gbp("6.00"),
               "basis": "Value"}),
    ))
    .unwrap();
    let charge = |number: &str, amount: serde_json::Value| {
        by(
            "buyer-1",
            JAN,
            "purchase.record_charge_invoice",
            json!({"purchase_order": "PO1", "invoice": number, "charge": "Freight",
                   "amount": amount}),
        )
    };
    let d = w.act(&charge("FRT-1", gbp("7.50"))).unwrap();
    let Event::ChargeInvoiceRecorded(recorded) = &d[0].1 else {
        panic!("{d:?}")
    };
    assert_eq!(
        recorded.accrual_cleared,
        Money::parse("6.00", "GBP").unwrap()
    );
    assert_eq!(recorded.shares.len(), 1);
    assert_eq!(
        recorded.shares[0].amount,
        Money::parse("1.50", "GBP").unwrap()
    );
    let d = w.act(&charge("FRT-2", gbp("2.00"))).unwrap();
    let Event::ChargeInvoiceRecorded(second) = &d[0].1 else {
        panic!("{d:?}")
    };
    assert!(second.accrual_cleared.amount.is_zero(), "{second:?}");
    assert_eq!(
        refusal(w.act(&charge("FRT-1", gbp("1.00")))).code,
        code::ALREADY_EXISTS
    );
    assert_eq!(
        refusal(w.act(&charge(
            "FRT-3",
            json!({"amount": "1.00", "currency": "USD"})
        )))
        .code,
        code::CURRENCY_MISMATCH
    );
    // It is paid like any invoice.
    let r = refusal(w.act(&pay("FRT-1", gbp("7.51"))));
    assert_eq!(r.code, code::OVER_PAYMENT);
    w.act(&pay("FRT-1", gbp("7.50"))).unwrap();
}

#[test]
fn exchange_rates_are_set_per_entity_into_its_functional_currency() {
    let mut w = governed();
    let rate = |currency: &str, source: &str| {
        by(
            "controller-1",
            JAN,
            "fx.set_rate",
            json!({"currency": currency, "rate": "0.7921",
            "from": "2011-01-03", "source": source}),
        )
    };
    let d = w.act(&rate("USD", "Bank of England spot")).unwrap();
    let Event::RateSet(set) = &d[0].1 else {
        panic!("{d:?}")
    };
    assert_eq!(set.functional.as_str(), "GBP");
    assert_eq!(set.rate, Rate::parse("0.7921").unwrap());
    let r = refusal(w.act(&rate("GBP", "x")));
    assert_eq!(r.code, code::CURRENCY_MISMATCH);
    assert!(r.message.contains("functional"), "{}", r.message);
    assert_eq!(
        refusal(w.act(&rate("EUR", " "))).code,
        code::REASON_REQUIRED
    );
    // A rate of zero or below is not a rate.
    let bad = json!({
        "command_id": uuid::Uuid::now_v7(), "actor": {"id": "c", "role": "controller"},
        "legal_entity": "UK01", "effective_at": JAN, "type": "fx.set_rate",
        "data": {"currency": "USD", "rate": "0", "from": "2011-01-03", "source": "x"},
    });
    let e = crate::command::decode(bad.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.field, "data.rate");
}

#[test]
fn a_location_belongs_to_its_entity_and_orders_are_routed_within_their_entity() {
    let mut w = governed();
    let eu = |c: Command| {
        let mut c = c;
        c.legal_entity = EntityId::new("EU01").unwrap();
        c
    };
    w.act(&eu(by(
        "controller-1",
        JAN,
        "legal_entity.define",
        json!({"name": "Gifts Europe", "currency": "EUR", "country": "IE"}),
    )))
    .unwrap();
    w.act(&eu(by(
        "clerk-1",
        JAN,
        "location.define",
        json!({"location": "EU-DC", "kind": "Warehouse", "region": "Ireland"}),
    )))
    .unwrap();
    // UK01 cannot receive into, adjust, or redefine EU01's location.
    for (kind, data) in [
        (
            "stock.receive",
            json!({"sku": "A", "location": "EU-DC", "qty": 5, "unit_cost": gbp("2.00")}),
        ),
        (
            "stock.adjust",
            json!({"sku": "A", "location": "EU-DC", "delta": 1, "reason": "found"}),
        ),
        (
            "location.define",
            json!({"location": "EU-DC", "kind": "Warehouse", "region": "UK"}),
        ),
    ] {
        let r = refusal(w.act(&by("clerk-1", JAN, kind, data)));
        assert_eq!(r.code, code::OTHER_ENTITY, "{kind}");
        assert!(
            r.message.contains("belongs to legal entity EU01"),
            "{}",
            r.message
        );
    }
    w.act(&eu(by(
        "clerk-1",
        JAN,
        "stock.receive",
        json!({"sku": "A", "location": "EU-DC", "qty": 50,
               "unit_cost": {"amount": "2.30", "currency": "EUR"}}),
    )))
    .unwrap();
    let order = |id: &str, qty: i64, currency: &str| {
        json!({"order": id, "channel": "web", "ship_to_region": "Ireland",
               "lines": [{"line": 1, "sku": "A", "qty": qty,
                          "unit_price": {"amount": "9.00", "currency": currency}}]})
    };
    // An EU01 order for 60 takes the 50 at EU-DC, never UK01's 100 at WH1: 10 wait.
    let d = w
        .act(&eu(by("shop", JAN, "order.place", order("E1", 60, "EUR"))))
        .unwrap();
    let allocated: Vec<String> = d
        .iter()
        .filter_map(|(_, e)| match e {
            Event::StockAllocated(a) => Some(format!("{}:{}", a.location, a.qty.get())),
            _ => None,
        })
        .collect();
    assert_eq!(allocated, ["EU-DC:50"]);
    assert!(
        types(&d).contains(&"order.line_backordered"),
        "{:?}",
        types(&d)
    );
    // A UK01 receipt at WH1 does not fill the EU01 backorder.
    let d = w
        .act(&by(
            "clerk-1",
            JAN,
            "stock.receive",
            json!({"sku": "A", "location": "WH1", "qty": 10, "unit_cost": gbp("2.00")}),
        ))
        .unwrap();
    assert_eq!(types(&d), ["stock.received"]);
    // UK01 may ship a transfer to EU-DC (intercompany); only EU01 may receive it there.
    w.act(&by(
        "clerk-1",
        JAN,
        "stock.transfer_ship",
        json!({"sku": "A", "transfer": "IC1", "from": "WH1", "to": "EU-DC", "qty": 3}),
    ))
    .unwrap();
    let receive = json!({"sku": "A", "transfer": "IC1", "qty": 3});
    let r = refusal(w.act(&by(
        "clerk-1",
        JAN,
        "stock.transfer_receive",
        receive.clone(),
    )));
    assert_eq!(r.code, code::OTHER_ENTITY);
    let d = w
        .act(&eu(by("clerk-1", JAN, "stock.transfer_receive", receive)))
        .unwrap();
    assert_eq!(types(&d)[0], "stock.transfer_received");
    // A UK01 order is served from WH1 only.
    let d = w
        .act(&by("shop", JAN, "order.place", order("U1", 5, "GBP")))
        .unwrap();
    assert!(
        d.iter()
            .any(|(_, e)| matches!(e, Event::StockAllocated(a) if a.location.as_str() == "WH1")),
        "{d:?}"
    );
}
