//! Governance through the real processor, the finance projector and the `erp` binary: a
//! threshold set by command holds a clerk's large adjustment until a controller approves it;
//! `erp period close` closes January on the finance view's trial balance; a receipt
//! back-dated into January is refused until `erp period reopen` is approved by a second
//! person; the audit view shows the threshold in force next to each decision.

use bytes::Bytes;
use commands::Outcome;
use ledger::jetstream::JetStreamLog;
use ledger::{EventLog, LogRecord};
use projections::audit::Audit;
use projections::finance::Finance;
use replay::Resolved;
use serde_json::{Value, json};

use crate::harness::{TestNats, TestProcessor, command_client, ledger_config};
use crate::projections::{projector_process_snapshotting, stop};

/// `erp` with `args`, off the test's runtime (the processor runs on it).
async fn erp(url: &str, args: &[&str]) -> std::process::Output {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::replay::erp(&url, &args)
    })
    .await
    .unwrap()
}

pub(crate) fn command(actor: &str, role: &str, at: &str, kind: &str, data: Value) -> Bytes {
    Bytes::from(
        json!({
            "command_id": uuid::Uuid::now_v7(), "actor": {"id": actor, "role": role},
            "legal_entity": "UK01", "effective_at": at, "type": kind, "data": data,
        })
        .to_string(),
    )
}

const JAN: &str = "2011-01-10T09:00:00Z";
const FEB: &str = "2011-02-01T09:00:00Z";

fn receipt(qty: i64) -> Value {
    json!({"sku": "LAMP", "location": "WH1", "qty": qty,
           "unit_cost": {"amount": "2.50", "currency": "GBP"}})
}

/// The event at `seq` (`None` for a batch marker).
async fn event_at(log: &JetStreamLog, seq: u64) -> Option<ledger::Event> {
    match log.get(seq).await.unwrap() {
        Some(LogRecord::Event(e)) => Some(e.envelope.event),
        _ => None,
    }
}

fn check(output: &std::process::Output, what: &str) -> String {
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed: {out}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

#[tokio::test]
async fn thresholds_approvals_and_period_close_through_the_processor_and_the_cli() {
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let mut finance = projector_process_snapshotting(&nats, "finance", 1000);
    let client = command_client(&nats).await;
    let send = |actor: &'static str,
                role: &'static str,
                at: &'static str,
                kind: &'static str,
                data: Value| {
        let client = &client;
        async move {
            client
                .submit_json(command(actor, role, at, kind, data))
                .await
                .unwrap()
        }
    };
    let url = nats.url();
    // A receipt back-dated into January.
    let back_dated_receipt = || {
        send(
            "clerk-1",
            "clerk",
            "2011-01-20T12:00:00Z",
            "stock.receive",
            receipt(5),
        )
    };

    // The entity, by the CLI; everything else of January by commands.
    check(
        &erp(
            &url,
            &[
                "entity",
                "define",
                "--currency",
                "GBP",
                "--country",
                "GB",
                "--name",
                "Gifts UK Ltd",
                "--at",
                JAN,
            ],
        )
        .await,
        "erp entity define",
    );
    for (kind, data) in [
        (
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ),
        ("item.define", json!({"sku": "LAMP"})),
        ("stock.receive", receipt(100)),
    ] {
        let outcome = send("clerk-1", "clerk", JAN, kind, data).await;
        assert!(outcome.is_accepted(), "{kind}: {outcome:?}");
    }
    // Another entity's command is refused now that entities are defined.
    let mut other: Value = serde_json::from_slice(&command(
        "clerk-1",
        "clerk",
        JAN,
        "stock.receive",
        receipt(1),
    ))
    .unwrap();
    other["legal_entity"] = json!("DE01");
    let refused = client
        .submit_json(Bytes::from(other.to_string()))
        .await
        .unwrap();
    assert!(
        matches!(&refused, Outcome::Rejected { code, .. } if code == "unknown_legal_entity"),
        "{refused:?}"
    );

    // Maker-checker on adjustments: at most 10 units on one person's word.
    check(
        &erp(
            &url,
            &[
                "threshold",
                "set",
                "--for",
                "stock.adjust",
                "--quantity",
                "10",
                "--at",
                JAN,
            ],
        )
        .await,
        "erp threshold set",
    );
    let bad = erp(
        &url,
        &[
            "threshold",
            "set",
            "--for",
            "order.place",
            "--quantity",
            "10",
            "--at",
            JAN,
        ],
    )
    .await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid_threshold"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let adjust =
        |delta: i64| json!({"sku": "LAMP", "location": "WH1", "delta": delta, "reason": "damaged"});
    let small = send("clerk-1", "clerk", JAN, "stock.adjust", adjust(-4)).await;
    let Outcome::Accepted {
        outcome_seq: small_outcome,
        ..
    } = small
    else {
        panic!("{small:?}")
    };
    let big = send("clerk-1", "clerk", JAN, "stock.adjust", adjust(-25)).await;
    let Outcome::Accepted {
        command_id: request,
        first_seq,
        event_count: 1,
        ..
    } = big
    else {
        panic!("{big:?}")
    };
    let own = send(
        "clerk-1",
        "controller",
        JAN,
        "approval.approve",
        json!({"request": request}),
    )
    .await;
    assert!(
        matches!(&own, Outcome::Rejected { code, .. } if code == "approver_is_requester"),
        "{own:?}"
    );
    // Not by its requester, whatever role the requester holds; the controller finds it in the
    // queue and approves it.
    let mut listed = String::new();
    for _ in 0..50 {
        let out = erp(&url, &["approval", "list"]).await;
        listed = check(&out, "erp approval list");
        if listed.contains(&request.to_string()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        listed.contains(&request.to_string()) && listed.contains("\"requester\":\"clerk-1\""),
        "{listed}"
    );
    check(
        &erp(
            &url,
            &[
                "approval",
                "approve",
                &request.to_string(),
                "--actor",
                "controller-1",
                "--at",
                JAN,
            ],
        )
        .await,
        "erp approval approve",
    );
    let again = erp(
        &url,
        &[
            "approval",
            "approve",
            &request.to_string(),
            "--actor",
            "controller-1",
            "--at",
            JAN,
        ],
    )
    .await;
    assert!(String::from_utf8_lossy(&again.stderr).contains("unknown_approval"));

    // January closes on the finance view's trial balance, by the CLI.
    check(
        &erp(&url, &["period", "close", "2011-01", "--at", FEB]).await,
        "erp period close",
    );
    let back_dated = back_dated_receipt().await;
    assert!(
        matches!(&back_dated, Outcome::Rejected { code, .. } if code == "period_closed"),
        "{back_dated:?}"
    );
    assert!(
        send("clerk-1", "clerk", FEB, "stock.receive", receipt(5))
            .await
            .is_accepted()
    );
    let show = check(
        &erp(&url, &["period", "show", "2011-01"]).await,
        "erp period show",
    );
    let row: Value = serde_json::from_str(&show).unwrap();
    assert_eq!(row["closed"]["matches"], json!(true), "{row}");
    assert_eq!(row["balanced"], json!(true), "{row}");

    // Reopening: asked by one controller, approved by another.
    check(
        &erp(
            &url,
            &[
                "period",
                "reopen",
                "2011-01",
                "--reason",
                "late delivery note",
                "--actor",
                "controller-2",
                "--role",
                "controller",
                "--at",
                FEB,
            ],
        )
        .await,
        "erp period reopen",
    );
    let still = back_dated_receipt().await;
    assert!(
        matches!(&still, Outcome::Rejected { code, .. } if code == "period_closed"),
        "{still:?}"
    );
    let reopen_request = loop {
        let listed = check(&erp(&url, &["approval", "list"]).await, "erp approval list");
        if let Some(line) = listed.lines().find(|l| l.contains("period.reopen")) {
            let row: Value = serde_json::from_str(line).unwrap();
            break row["request"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    check(
        &erp(
            &url,
            &[
                "approval",
                "approve",
                &reopen_request,
                "--actor",
                "controller-1",
                "--at",
                FEB,
            ],
        )
        .await,
        "erp approval approve (reopen)",
    );
    let late = back_dated_receipt().await;
    assert!(late.is_accepted(), "{late:?}");
    // And it closes again, on a trial balance that holds the late receipt.
    check(
        &erp(&url, &["period", "close", "2011-01", "--at", FEB]).await,
        "erp period close (again)",
    );

    stop(&mut finance);
    processor.stop().await;

    let log = nats.open(ledger_config()).await;
    // The approved adjustment carries its approver.
    let mut adjusted = None;
    for seq in first_seq + 1..=log.last_sequence().await.unwrap() {
        if let Some(ledger::Event::StockAdjusted(a)) = event_at(&log, seq).await {
            adjusted = Some(a);
            break;
        }
    }
    let adjusted = adjusted.expect("the approved adjustment is stored");
    assert_eq!(adjusted.delta.get(), -25);
    assert_eq!(adjusted.approved_by.unwrap().as_str(), "controller-1");
    // The small one's outcome names the threshold in force, and the audit trail of the SKU
    // lists it.
    let Some(ledger::Event::CommandAccepted(accepted)) = event_at(&log, small_outcome).await else {
        unreachable!()
    };
    let threshold = accepted.threshold.expect("threshold recorded");
    assert_eq!(
        threshold.limit,
        ledger::events::Measure::Quantity(ledger::values::Qty::new(10).unwrap())
    );
    assert_eq!(
        threshold.measured,
        ledger::events::Measure::Quantity(ledger::values::Qty::new(4).unwrap())
    );
    let last = log.last_sequence().await.unwrap();
    let mut replayed = replay::replay::<_, Audit>(&log, &[Resolved::at_seq(last)], |_| {})
        .await
        .unwrap();
    let audit = replayed.built.remove(0).model;
    assert!(audit.sequences("sku:LAMP").contains(&small_outcome));
    assert!(audit.sequences(&format!("approval:{request}")).len() >= 2);
    assert!(audit.sequences("legal_entity:UK01").len() >= 6);
    // The finance view as replayed: January closed again, on a trial balance it agrees with.
    let mut replayed = replay::replay::<_, Finance>(&log, &[Resolved::at_seq(last)], |_| {})
        .await
        .unwrap();
    let finance = replayed.built.remove(0).model;
    let row = replay::Model::value(&finance, "period.UK01.2011-01").unwrap();
    assert_eq!(row["closed"]["matches"], json!(true), "{row}");
    assert_eq!(row["reopened"], json!(1), "{row}");
}

#[tokio::test]
async fn a_usd_invoice_paid_at_another_rate_realises_the_difference_in_the_view_and_the_journal() {
    // UK01 keeps GBP books; USD is 0.80 GBP from 3 January, 0.78 from 25 January. 100 lamps
    // bought from a US supplier at 12.50 USD: 1,250.00 USD owed from the invoice on the 10th
    // (1,000.00 GBP); paid on the 26th: 975.00 GBP out of the bank, 25.00 GBP gained.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let client = command_client(&nats).await;
    let usd = |amount: &str| json!({"amount": amount, "currency": "USD"});
    let steps = [
        (
            "controller",
            "2011-01-02T09:00:00Z",
            "legal_entity.define",
            json!({"name": "Gifts UK Ltd", "currency": "GBP", "country": "GB"}),
        ),
        (
            "controller",
            "2011-01-02T09:00:00Z",
            "fx.set_rate",
            json!({"currency": "USD", "rate": "0.80", "from": "2011-01-03", "source": "test"}),
        ),
        (
            "controller",
            "2011-01-02T09:00:00Z",
            "fx.set_rate",
            json!({"currency": "USD", "rate": "0.78", "from": "2011-01-25", "source": "test"}),
        ),
        (
            "clerk",
            "2011-01-03T09:00:00Z",
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ),
        (
            "clerk",
            "2011-01-03T09:00:00Z",
            "item.define",
            json!({"sku": "LAMP"}),
        ),
        (
            "buyer",
            "2011-01-03T09:00:00Z",
            "supplier.define",
            json!({"supplier": "LAMPS-US", "currency": "USD"}),
        ),
        (
            "buyer",
            "2011-01-03T09:00:00Z",
            "purchase.create_order",
            json!({"purchase_order": "PO1", "supplier": "LAMPS-US", "currency": "USD",
                   "expected_on": "2011-01-05", "lines": [{"line": 1, "sku": "LAMP",
                   "location": "WH1", "qty": 100, "unit_cost": usd("12.50")}]}),
        ),
        (
            "clerk",
            "2011-01-05T09:00:00Z",
            "stock.receive",
            json!({"sku": "LAMP", "location": "WH1", "qty": 100, "unit_cost": usd("12.50"),
                   "purchase": {"purchase_order": "PO1", "line": 1}}),
        ),
        (
            "buyer",
            "2011-01-10T09:00:00Z",
            "purchase.record_invoice",
            json!({"purchase_order": "PO1", "invoice": "US-881",
                   "lines": [{"line": 1, "qty": 100, "unit_cost": usd("12.50")}]}),
        ),
    ];
    for (role, at, kind, data) in steps {
        let outcome = client
            .submit_json(command(&format!("{role}-1"), role, at, kind, data))
            .await
            .unwrap();
        assert!(outcome.is_accepted(), "{kind}: {outcome:?}");
    }
    let pay = |amount: &str| {
        command(
            "buyer-1",
            "buyer",
            "2011-01-26T09:00:00Z",
            "purchase.record_payment",
            json!({"purchase_order": "PO1", "invoice": "US-881", "amount": usd(amount),
                   "reference": "WIRE 26/01"}),
        )
    };
    match client.submit_json(pay("1250.01")).await.unwrap() {
        Outcome::Rejected { code, message, .. } => {
            assert_eq!(code, "over_payment", "{message}");
            assert!(message.contains("owes 1250.00 USD"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let outcome = client.submit_json(pay("1250.00")).await.unwrap();
    assert!(outcome.is_accepted(), "{outcome:?}");

    // The finance view, as replayed to the end.
    let log = nats.open(ledger_config()).await;
    let last = log.last_sequence().await.unwrap();
    let mut replayed = replay::replay::<_, Finance>(&log, &[Resolved::at_seq(last)], |_| {})
        .await
        .unwrap();
    let finance = replayed.built.remove(0).model;
    let balance = |key: &str| replay::Model::value(&finance, key).map(|row| row["balance"].clone());
    assert_eq!(balance("fn.UK01.fx_realised"), Some(json!("-25.00")));
    assert_eq!(balance("fn.UK01.bank"), Some(json!("-975.00")));
    assert_eq!(balance("fn.UK01.accounts_payable"), Some(json!("0.00")));
    assert_eq!(balance("acct.UK01.USD.bank"), Some(json!("-1250.00")));

    // `erp journal` carries the functional amounts, with the realised gain as its own line,
    // and both books balance.
    let out = erp(&nats.url(), &["journal"]).await;
    let csv = check(&out, "erp journal");
    let gain: Vec<&str> = csv
        .lines()
        .filter(|l| l.contains(",fx_realised,"))
        .collect();
    assert_eq!(gain.len(), 1, "{csv}");
    assert!(
        gain[0].contains("purchase.payment_recorded,UK01,GBP,fx_realised,0,0,"),
        "{}",
        gain[0]
    );
    assert!(gain[0].ends_with(",GBP,0,25.00,"), "{}", gain[0]);
    let bank: Vec<&str> = csv.lines().filter(|l| l.contains(",bank,")).collect();
    assert!(bank[0].ends_with(",GBP,0,975.00,"), "{}", bank[0]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("UK01 GBP (functional): debits"), "{stderr}");
    drop(processor);
}
