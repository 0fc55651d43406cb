//! Purchasing, margin and finance against a real ledger: the approval rule through the
//! processor and the audit view; live margin and finance snapshots equal replays; the books
//! balance at every sequence of a UCI run; `erp journal` exports them.

use bytes::Bytes;
use commands::Outcome;
use ledger::jetstream::JetStreamLog;
use ledger::{EventLog, LogCursor, LogRecord, ReadFrom, ReadUntil};
use projections::ats::Ats;
use projections::audit::Audit;
use projections::finance::Finance;
use projections::margin::Margin;
use replay::Resolved;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::harness::{TestNats, TestProcessor, command_client, ledger_config};
use crate::projections::{projector_process_snapshotting, stop, uci_bodies};
use crate::replay::submit_in_phases;
use crate::replay::{add_last_snapshot, erp, sample_snapshots, snapshots_equal_replays};

fn command(actor: &str, role: &str, kind: &str, data: Value) -> Bytes {
    Bytes::from(
        json!({
            "command_id": uuid::Uuid::now_v7(), "actor": {"id": actor, "role": role},
            "legal_entity": "UK01", "effective_at": "2011-03-01T09:00:00Z",
            "type": kind, "data": data,
        })
        .to_string(),
    )
}

fn po(id: &str, qty: i64, cost: &str) -> Value {
    json!({"purchase_order": id, "supplier": "ACME", "currency": "GBP", "expected_on": "2011-03-15",
           "lines": [{"line": 1, "sku": "LAMP", "location": "WH1", "qty": qty,
                      "unit_cost": {"amount": cost, "currency": "GBP"}}]})
}

#[tokio::test]
async fn approval_above_the_limit_by_the_requester_is_refused_and_both_paths_are_audited() {
    // Goal: with the default limit (5,000), a small order is approved when created (by the
    // policy, recorded as such) and a large one waits; its requester's approval is refused
    // `approver_is_requester`, another buyer's is accepted; the audit view shows all of it.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let client = command_client(&nats).await;
    let send = |actor: &'static str, role: &'static str, kind: &'static str, data: Value| {
        let client = &client;
        async move {
            client
                .submit_json(command(actor, role, kind, data))
                .await
                .unwrap()
        }
    };
    for (kind, data) in [
        (
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ),
        ("item.define", json!({"sku": "LAMP"})),
        (
            "supplier.define",
            json!({"supplier": "ACME", "currency": "GBP"}),
        ),
    ] {
        assert!(send("admin-1", "admin", kind, data).await.is_accepted());
    }
    let small = send(
        "buyer-1",
        "buyer",
        "purchase.create_order",
        po("PO-SMALL", 100, "2.50"),
    )
    .await;
    let Outcome::Accepted {
        first_seq,
        event_count: 2,
        ..
    } = small
    else {
        panic!("created and approved: {small:?}")
    };
    let big = send(
        "buyer-1",
        "buyer",
        "purchase.create_order",
        po("PO-BIG", 1000, "6.00"),
    )
    .await;
    let Outcome::Accepted { event_count: 1, .. } = big else {
        panic!("created, waiting for approval: {big:?}")
    };
    let own = send(
        "buyer-1",
        "buyer",
        "purchase.approve",
        json!({"purchase_order": "PO-BIG"}),
    )
    .await;
    let Outcome::Rejected {
        code,
        message,
        outcome_seq: Some(refusal),
        ..
    } = own
    else {
        panic!("the requester's approval must be refused: {own:?}")
    };
    assert_eq!(code, "approver_is_requester");
    assert!(
        message.contains("buyer-1") && message.contains("PO-BIG"),
        "{message}"
    );
    let other = send(
        "manager-1",
        "buyer",
        "purchase.approve",
        json!({"purchase_order": "PO-BIG"}),
    )
    .await;
    let Outcome::Accepted {
        first_seq: approval,
        ..
    } = other
    else {
        panic!("another buyer approves: {other:?}")
    };
    // Inbound: both orders are approved (1,100 units expected); 400 arrive against PO-BIG;
    // the small order's remainder is cancelled.
    let receipt = json!({"sku": "LAMP", "location": "WH1", "qty": 400,
        "unit_cost": {"amount": "6.00", "currency": "GBP"},
        "purchase": {"purchase_order": "PO-BIG", "line": 1}});
    assert!(
        send("goods-in", "warehouse", "stock.receive", receipt)
            .await
            .is_accepted()
    );
    let cancel = json!({"purchase_order": "PO-SMALL", "reason": "not needed"});
    assert!(
        send("buyer-1", "buyer", "purchase.cancel_remaining", cancel)
            .await
            .is_accepted()
    );
    // An upstream (shop) integration may not buy.
    let shop = send(
        "shop",
        "upstream",
        "purchase.create_order",
        po("PO-SHOP", 1, "1.00"),
    )
    .await;
    assert!(
        matches!(&shop, Outcome::Rejected { code, .. } if code == "forbidden"),
        "{shop:?}"
    );
    processor.stop().await;

    let log = nats.open(ledger_config()).await;
    let last = log.last_sequence().await.unwrap();
    let mut replayed = replay::replay::<_, Audit>(&log, &[Resolved::at_seq(last)], |_| {})
        .await
        .unwrap();
    let audit = replayed.built.remove(0).model;
    let small_trail = audit.sequences("purchase_order:PO-SMALL");
    assert!(
        small_trail.contains(&first_seq) && small_trail.contains(&(first_seq + 1)),
        "created and auto-approved at {first_seq}, {}: {small_trail:?}",
        first_seq + 1
    );
    let big_trail = audit.sequences("purchase_order:PO-BIG");
    assert!(
        big_trail.contains(&refusal),
        "refusal {refusal} in {big_trail:?}"
    );
    assert!(
        big_trail.contains(&approval),
        "approval {approval} in {big_trail:?}"
    );
    assert!(audit.sequences("actor:buyer-1").contains(&refusal));
    // The approver on record: the policy for the small order, the manager for the big one.
    let approver = |seq: u64| {
        let log = &log;
        async move {
            match log.get(seq).await.unwrap() {
                Some(LogRecord::Event(e)) => match e.envelope.event {
                    ledger::Event::PurchaseOrderApproved(a) => a.approver.to_string(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(
        approver(first_seq + 1).await,
        commands::purchase::AUTO_APPROVER
    );
    assert_eq!(approver(approval).await, "manager-1");
    let mut replayed = replay::replay::<_, Ats>(&log, &[Resolved::at_seq(last)], |_| {})
        .await
        .unwrap();
    let row = replay::Model::value(&replayed.built.remove(0).model, "loc.LAMP.WH1").unwrap();
    assert_eq!(row["on_hand"], 400);
    assert_eq!(row["inbound"], 600, "{row}");
    assert_eq!(row["inbound_by_date"], json!({"2011-03-15": 600}));
    let before_cancel = replay::replay::<_, Ats>(&log, &[Resolved::at_seq(approval)], |_| {})
        .await
        .unwrap();
    let row = replay::Model::value(&before_cancel.built[0].model, "loc.LAMP.WH1").unwrap();
    assert_eq!(row["inbound"], 1100, "{row}");
}

/// Posts every event of the log through the books: each event balances, and the running
/// totals balance after every sequence. Returns (events posted, total debits).
async fn books_balance_at_every_sequence(log: &JetStreamLog) -> (u64, Decimal) {
    let mut cursor = log
        .read(ReadFrom::Start, ReadUntil::CaughtUp)
        .await
        .unwrap();
    let mut books = projections::books::Books::default();
    let mut translator = projections::translate::Translator::default();
    // Per entity and currency (transaction books), and per entity in its functional currency:
    // debits less credits, which must be zero after every event.
    let mut open: std::collections::BTreeMap<(String, String, bool), Decimal> =
        std::collections::BTreeMap::new();
    let (mut debits, mut posted) = (Decimal::ZERO, 0u64);
    while let Some(record) = cursor.next().await {
        let LogRecord::Event(event) = record.unwrap() else {
            continue;
        };
        translator.observe(&event);
        let lines = books.post(&event).lines;
        assert!(
            projections::books::balanced(&lines),
            "event {} does not balance: {lines:?}",
            event.seq
        );
        posted += u64::from(!lines.is_empty());
        for l in &lines {
            debits += l.debit();
            *open
                .entry((l.entity.clone(), l.currency.clone(), false))
                .or_default() += l.amount;
        }
        for translation in translator.translate(&event, &lines) {
            match translation {
                projections::translate::Translation::Done {
                    entity,
                    currency,
                    lines,
                } => {
                    for l in lines {
                        *open
                            .entry((entity.clone(), currency.clone(), true))
                            .or_default() += l.amount;
                    }
                }
                projections::translate::Translation::NoRate { entity, currency } => {
                    panic!("event {}: {entity} has no rate for {currency}", event.seq)
                }
            }
        }
        for (books, left) in &open {
            assert!(
                left.is_zero(),
                "{books:?} off by {left} after {}",
                event.seq
            );
        }
    }
    assert!(
        open.keys()
            .any(|(entity, _, functional)| entity == "EU01" && *functional),
        "{open:?}"
    );
    (posted, debits)
}

#[tokio::test]
async fn margin_and_finance_snapshots_equal_replays_and_the_uci_books_balance() {
    // Goal: during a 2-day UCI load, the live margin and finance projector processes snapshot
    // (every 1,000 events, when their own timing allows); each equals a replay to its
    // checkpoint. Afterwards
    // every event balances, each entity's books balance at every sequence in every currency
    // and in its functional currency (UK01 in GBP, EU01 in EUR), the live finance check says
    // so, and `erp journal` exports the same lines.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let mut children = [
        projector_process_snapshotting(&nats, "margin", 1_000),
        projector_process_snapshotting(&nats, "finance", 1_000),
    ];
    let log = nats.open(ledger_config()).await;
    let (done, finished) = tokio::sync::watch::channel(false);
    let margin = tokio::spawn(sample_snapshots::<Margin>(
        log.jetstream().clone(),
        finished.clone(),
    ));
    let finance = tokio::spawn(sample_snapshots::<Finance>(
        log.jetstream().clone(),
        finished,
    ));
    let (phase_margin, phase_finance) =
        submit_in_phases::<Margin, Finance>(&nats, &log, uci_bodies(2), 3).await;
    done.send(true).unwrap();
    let (mut margin, mut finance) = (margin.await.unwrap(), finance.await.unwrap());
    margin.extend(phase_margin);
    finance.extend(phase_finance);
    for child in &mut children {
        stop(child);
    }
    // A stopped projector saves a last snapshot at its checkpoint.
    add_last_snapshot::<Margin>(log.jetstream(), &mut margin).await;
    add_last_snapshot::<Finance>(log.jetstream(), &mut finance).await;
    processor.stop().await;
    snapshots_equal_replays::<Margin>(&log, &margin, 3).await;
    snapshots_equal_replays::<Finance>(&log, &finance, 3).await;

    let (posted, debits) = books_balance_at_every_sequence(&log).await;
    // Two days of orders, the second day's partly still waiting to ship: about 4,800.
    assert!(posted > 4_000, "{posted} events posted");
    let last = log.last_sequence().await.unwrap();
    let mut replayed = replay::replay::<_, Finance>(&log, &[Resolved::at_seq(last)], |_| {})
        .await
        .unwrap();
    let finance = replayed.built.remove(0).model;
    assert!(finance.check().unbalanced.is_empty());
    assert_eq!(finance.check().debits, debits);
    // Both entities of the demo (UK01 in GBP, EU01 in EUR, which buys in GBP) balance in their
    // functional currency, with every event translated.
    let check = replay::Model::value(&finance, "check").unwrap();
    let functional: Vec<(String, bool)> = check["functional"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                format!(
                    "{} {}",
                    t["entity"].as_str().unwrap(),
                    t["currency"].as_str().unwrap()
                ),
                t["balanced"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        functional,
        [("EU01 EUR".to_owned(), true), ("UK01 GBP".to_owned(), true)],
        "{check}"
    );
    assert_eq!(check["untranslated_events"], json!([]), "{check}");
    let eu_gbp_inventory = replay::Model::value(&finance, "acct.EU01.GBP.inventory");
    assert!(eu_gbp_inventory.is_some(), "EU01 buys in GBP");
    assert!(replay::Model::value(&finance, "acct.EU01.EUR.revenue").is_some());
    // Each month's trial balance balances and counts the events the processor counts (the
    // figure `period.close` is checked against).
    let mut replayed =
        replay::replay::<_, replay::WriteModel>(&log, &[Resolved::at_seq(last)], |_| {})
            .await
            .unwrap();
    let state = replayed.built.remove(0).model.0;
    let mut months = 0;
    for books in finance.periods() {
        let period: ledger::values::Period = books.period.parse().unwrap();
        let entity = ledger::values::EntityId::new(&books.entity).unwrap();
        assert_eq!(
            state.period_events[&entity].get(&period.index()).copied(),
            Some(books.events),
            "{} {}",
            books.entity,
            books.period
        );
        let row = replay::Model::value(
            &finance,
            &format!("period.{}.{}", books.entity, books.period),
        )
        .unwrap();
        assert_eq!(row["balanced"], json!(true), "{row}");
        months += 1;
    }
    assert_eq!(
        months,
        state.period_events.values().map(|m| m.len()).sum::<usize>()
    );
    // Revenue was earned and stock consumed: the margin view has COGS for shipped SKUs.
    let mut replayed = replay::replay::<_, Margin>(&log, &[Resolved::at_seq(last)], |_| {})
        .await
        .unwrap();
    let margin = replayed.built.remove(0).model;
    let web = margin.row("channel.web.GBP").expect("web channel margin");
    assert!(
        web.revenue > Decimal::ZERO && web.cogs > Decimal::ZERO,
        "{web:?}"
    );

    let out = erp(&nats.url(), &["journal"]);
    assert!(out.status.success(), "{out:?}");
    let csv = String::from_utf8(out.stdout).unwrap();
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some(
            "seq,recorded_at,effective_at,event_type,entity,currency,account,debit,credit,sku,location,order,channel,period,tax_jurisdiction,tax_rate,functional_currency,functional_debit,functional_credit,counterparty"
        )
    );
    let (mut d, mut c) = (Decimal::ZERO, Decimal::ZERO);
    let mut count = 0u64;
    for row in rows {
        let fields: Vec<&str> = row.split(',').collect();
        d += fields[7].parse::<Decimal>().unwrap();
        c += fields[8].parse::<Decimal>().unwrap();
        // The translation's own lines (rounding, realised differences) are not the books'.
        count += u64::from(!fields[6].starts_with("fx_"));
    }
    assert_eq!((d, c), (debits, debits));
    assert_eq!(count, finance.check().lines);
}

#[tokio::test]
async fn erp_replenish_lists_what_is_due_and_accepting_creates_the_purchase_order() {
    // Goal: after 15 of 20 lamps ship in a day, the policy says order now, with its numbers;
    // `erp replenish --accept ACME` creates the purchase order (approved: under the limit), and
    // the ATS view then shows the quantity inbound.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let client = command_client(&nats).await;
    let send = |kind: &str, data: Value| {
        let body = command("clerk-1", "clerk", kind, data);
        let client = &client;
        async move {
            let outcome = client.submit_json(body).await.unwrap();
            assert!(outcome.is_accepted(), "{outcome:?}");
        }
    };
    send(
        "location.define",
        json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
    )
    .await;
    send("channel.define", json!({"channel": "web"})).await;
    send("item.define", json!({"sku": "LAMP"})).await;
    send(
        "supplier.define",
        json!({"supplier": "ACME", "currency": "GBP"}),
    )
    .await;
    let cost = json!({"amount": "3.00", "currency": "GBP"});
    send(
        "stock.receive",
        json!({"sku": "LAMP", "location": "WH1", "qty": 20, "unit_cost": cost}),
    )
    .await;
    for o in ["A", "B", "C"] {
        let lines = json!([{"line": 1, "qty": 5}]);
        send(
            "order.place",
            json!({"order": o, "channel": "web", "ship_to_region": "UK",
            "lines": [{"line": 1, "sku": "LAMP", "qty": 5,
                       "unit_price": {"amount": "9.00", "currency": "GBP"}}]}),
        )
        .await;
        send("order.release_to_pick", json!({"order": o, "wave": "W1"})).await;
        send("order.pick", json!({"order": o, "lines": lines})).await;
        send(
            "order.pack",
            json!({"order": o, "package": format!("{o}-1"), "lines": lines}),
        )
        .await;
        send(
            "order.ship",
            json!({"order": o, "package": format!("{o}-1"), "carrier": "RM",
            "tracking": "T", "freight_cost": {"amount": "2.00", "currency": "GBP"}}),
        )
        .await;
    }
    let listed = erp(&nats.url(), &["replenish", "--format", "csv", "--quiet"]);
    assert!(listed.status.success(), "{listed:?}");
    let csv = String::from_utf8(listed.stdout).unwrap();
    assert!(csv.contains("rec.LAMP.WH1"), "{csv}");
    assert!(
        csv.contains("reorder point"),
        "the reason in numbers: {csv}"
    );
    // The processor runs on this test's thread: wait for the process without blocking it.
    let url = nats.url();
    let accepted = tokio::task::spawn_blocking(move || {
        erp(&url, &["replenish", "--accept", "ACME", "--quiet"])
    })
    .await
    .unwrap();
    assert!(accepted.status.success(), "{accepted:?}");
    let said = String::from_utf8(accepted.stderr).unwrap();
    assert!(
        said.contains("REP-2011-03-01-WH1") && said.contains("accepted"),
        "{said}"
    );
    processor.stop().await;
    let log = nats.open(ledger_config()).await;
    let last = log.last_sequence().await.unwrap();
    let mut replayed = replay::replay::<_, Ats>(&log, &[Resolved::at_seq(last)], |_| {})
        .await
        .unwrap();
    let row = replay::Model::value(&replayed.built.remove(0).model, "loc.LAMP.WH1").unwrap();
    assert_eq!(row["on_hand"], 5);
    assert!(row["inbound"].as_i64().unwrap() > 0, "{row}");
}
