//! Lots and expiry through the real processor, the ATS and trace projector processes and
//! `erp trace`: first expiry first out, expired stock leaving available to sell, and a recall
//! that lists exactly the orders a lot went to, now and as of an earlier business date.

use std::time::Duration;

use commands::Outcome;
use projections::client::ViewClient;
use serde_json::{Value, json};

use crate::governance::command;
use crate::harness::{TestNats, TestProcessor, command_client};
use crate::projections::{projector_process, stop};
use crate::replay::erp;

fn cost() -> Value {
    json!({"amount": "1.00", "currency": "GBP"})
}

/// The lots `stock.picked` events of `order` name, from the allocation-free source: the
/// trace view's backward answer.
fn lots_of(back: &Value) -> Vec<(String, i64)> {
    back["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["lots"].as_array().cloned().unwrap_or_default())
        .map(|l| {
            (
                l["lot"].as_str().unwrap().to_owned(),
                l["picked"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_lot_is_picked_first_expiry_first_leaves_available_when_expired_and_is_traced_to_its_orders()
 {
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let mut projectors = [
        projector_process(&nats, "ats"),
        projector_process(&nats, "trace"),
    ];
    let client = command_client(&nats).await;
    let views = ViewClient::new(nats.connect().await);
    let submit = |at: &'static str, role: &'static str, kind: &'static str, data: Value| {
        let client = client.clone();
        async move {
            client
                .submit_json(command("tester", role, at, kind, data))
                .await
                .unwrap()
        }
    };
    let accepted = |outcome: Outcome, what: &str| match outcome {
        Outcome::Accepted { outcome_seq, .. } => outcome_seq,
        other => panic!("{what}: {other:?}"),
    };
    let price = json!({"amount": "4.00", "currency": "GBP"});
    const D10: &str = "2011-01-10T09:00:00Z";
    for (kind, data) in [
        (
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ),
        ("channel.define", json!({"channel": "web"})),
        (
            "item.define",
            json!({"sku": "FOOD", "tracking": {"lot": true, "serial": false, "expiry": true}}),
        ),
        (
            "stock.receive",
            json!({"sku": "FOOD", "location": "WH1", "qty": 5, "lot": "L-LATE",
                   "expires_on": "2011-03-01", "unit_cost": cost()}),
        ),
        (
            "stock.receive",
            json!({"sku": "FOOD", "location": "WH1", "qty": 5, "lot": "L-EARLY",
                   "expires_on": "2011-01-20", "unit_cost": cost()}),
        ),
    ] {
        accepted(submit(D10, "clerk", kind, data).await, kind);
    }
    // A receipt without its lot is refused, naming the field.
    let refused = submit(
        D10,
        "clerk",
        "stock.receive",
        json!({"sku": "FOOD", "location": "WH1", "qty": 1, "expires_on": "2011-05-01", "unit_cost": cost()}),
    )
    .await;
    assert!(
        matches!(&refused, Outcome::Rejected { code, message, .. } if code == "lot_required" && message.contains("lot")),
        "{refused:?}"
    );

    // Three orders over a week: each placed, picked without naming a lot, packed and shipped.
    let sell = |order: &'static str, qty: i64, placed: &'static str, shipped: &'static str| {
        let submit = &submit;
        let price = price.clone();
        async move {
            accepted(
                submit(
                    placed,
                    "upstream",
                    "order.place",
                    json!({"order": order, "channel": "web", "ship_to_region": "UK",
                           "external_ref": format!("SHOP-{order}"),
                           "lines": [{"line": 1, "sku": "FOOD", "qty": qty, "unit_price": price}]}),
                )
                .await,
                "place",
            );
            for (kind, data) in [
                (
                    "order.release_to_pick",
                    json!({"order": order, "wave": "W1"}),
                ),
                (
                    "order.pick",
                    json!({"order": order, "lines": [{"line": 1, "qty": qty}]}),
                ),
                (
                    "order.pack",
                    json!({"order": order, "package": "P1", "lines": [{"line": 1, "qty": qty}]}),
                ),
                (
                    "order.ship",
                    json!({"order": order, "package": "P1", "carrier": "DPD", "tracking": order,
                           "freight_cost": cost()}),
                ),
            ] {
                accepted(submit(shipped, "warehouse", kind, data).await, kind);
            }
        }
    };
    sell("O1", 2, D10, "2011-01-11T10:00:00Z").await;
    sell("O2", 2, "2011-01-12T09:00:00Z", "2011-01-12T15:00:00Z").await;
    // O1 sends one unit back; it returns into L-EARLY, into quality hold.
    accepted(
        submit(
            "2011-01-13T09:00:00Z",
            "upstream",
            "order.authorise_return",
            json!({"order": "O1", "return_id": "R1", "reason": "Unwanted", "lines": [{"line": 1, "qty": 1}]}),
        )
        .await,
        "authorise",
    );
    accepted(
        submit(
            "2011-01-13T10:00:00Z",
            "warehouse",
            "stock.receive_return",
            json!({"sku": "FOOD", "return_id": "R1", "order": "O1", "line": 1, "location": "WH1", "qty": 1}),
        )
        .await,
        "receive return",
    );
    // After L-EARLY's last day, its one unit left on the shelf is not available to sell, and
    // the next order takes L-LATE.
    sell("O3", 3, "2011-01-21T09:00:00Z", "2011-01-21T15:00:00Z").await;
    let last = accepted(
        submit(
            "2011-01-21T16:00:00Z",
            "upstream",
            "order.place",
            json!({"order": "O4", "channel": "web", "ship_to_region": "UK",
                   "lines": [{"line": 1, "sku": "FOOD", "qty": 9, "unit_price": price}]}),
        )
        .await,
        "O4",
    );
    let ats = views
        .ask(
            "ats",
            "get",
            json!({"sku": "FOOD", "location": "WH1"}),
            Some(last),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .result;
    // On hand 10 - 2 - 2 - 3 + 1 returned = 4: L-LATE 2 (allocated to O4), L-EARLY 1 on the
    // shelf (expired) and 1 in quality hold.
    assert_eq!(ats["on_hand"], 4, "{ats}");
    assert_eq!(ats["expired"], 1, "{ats}");
    assert_eq!(ats["quality_hold"], 1, "{ats}");
    assert_eq!(ats["allocated"], 2, "{ats}");
    assert_eq!(ats["available"], 0, "{ats}");
    assert_eq!(ats["lots"]["L-EARLY"]["units"], 2, "{ats}");
    assert_eq!(ats["lots"]["L-EARLY"]["expires_on"], "2011-01-20", "{ats}");

    let back = |order: &'static str| {
        let views = &views;
        async move {
            views
                .ask(
                    "trace",
                    "order",
                    json!({"order": order}),
                    Some(last),
                    Duration::from_secs(30),
                )
                .await
                .unwrap()
                .result
        }
    };
    assert_eq!(lots_of(&back("O1").await), [("L-EARLY".to_owned(), 2)]);
    assert_eq!(lots_of(&back("O3").await), [("L-LATE".to_owned(), 3)]);

    // The recall: L-EARLY went to O1 (one unit back) and O2; as of the 11th, only to O1.
    let url = nats.url();
    let runs = tokio::task::spawn_blocking(move || {
        let trace = |extra: &[&str]| {
            let mut args = vec!["trace", "--quiet", "--sku", "FOOD", "--lot", "L-EARLY"];
            args.extend_from_slice(extra);
            erp(&url, &args)
        };
        (
            trace(&["--format", "json"]),
            trace(&["--format", "json", "--as-effective", "2011-01-11"]),
            trace(&[]),
            erp(
                &url,
                &["trace", "--quiet", "--sku", "FOOD", "--lot", "L-NONE"],
            ),
            erp(&url, &["trace", "--quiet", "--sku", "FOOD"]),
            erp(&url, &["verify", "--quiet"]),
        )
    })
    .await
    .unwrap();
    let (now, before, table, unknown, half, verify) = runs;
    assert!(now.status.success(), "{}", text(&now));
    let now: Value = serde_json::from_slice(&now.stdout).unwrap();
    let orders = |v: &Value| -> Vec<(String, i64, i64)> {
        v["trace"]["orders"]
            .as_object()
            .unwrap()
            .values()
            .map(|o| {
                (
                    o["external_ref"].as_str().unwrap().to_owned(),
                    o["shipped"].as_i64().unwrap(),
                    o["returned"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        orders(&now),
        [("SHOP-O1".to_owned(), 2, 1), ("SHOP-O2".to_owned(), 2, 0)]
    );
    assert!(before.status.success(), "{}", text(&before));
    let before: Value = serde_json::from_slice(&before.stdout).unwrap();
    assert_eq!(orders(&before), [("SHOP-O1".to_owned(), 2, 0)]);
    let table = text(&table);
    assert!(table.contains("went to 2 orders"), "{table}");
    assert!(table.contains("SHOP-O2"), "{table}");
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no lot `L-NONE` of FOOD"),
        "{}",
        text(&unknown)
    );
    assert!(!half.status.success());
    assert!(text(&half).contains("--lot"), "{}", text(&half));
    assert!(verify.status.success(), "{}", text(&verify));
    // The live trace view says what the replay says.
    let live = views
        .ask(
            "trace",
            "lot",
            json!({"sku": "FOOD", "lot": "L-EARLY"}),
            Some(last),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .result;
    assert_eq!(live, now["trace"]);
    for p in &mut projectors {
        stop(p);
    }
    processor.stop().await;
}
