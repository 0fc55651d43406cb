//! Exceptions and KPIs against a real ledger: the live projectors equal replays, exceptions
//! are worked through the real processor and the `erp` commands.

use std::time::Duration;

use commands::Outcome;
use ledger::{EventLog, LogCursor};
use projections::client::ViewClient;
use projections::exceptions::Exceptions;
use projections::kpis::Kpis;
use serde_json::json;

use crate::governance::command;
use crate::harness::{TestNats, TestProcessor, command_client, ledger_config};
use crate::projections::{projector_process_snapshotting, stop, uci_bodies};
use crate::replay::{
    add_last_snapshot, erp, sample_snapshots, snapshots_equal_replays, submit_in_phases,
};

#[tokio::test]
async fn exceptions_and_kpis_equal_replays_and_are_worked_by_command() {
    // Two projector processes under a UCI load: not beside a leader-kill test on two cores.
    let _heavy = crate::harness::heavy().await;
    // Goal: during 8 UCI days (orders shipped within hours, some days late, deliveries and
    // returns), the live exceptions and KPI projector processes snapshot when their timing
    // allows; each snapshot equals a replay to its checkpoint, byte for byte. Exceptions are
    // raised; the first of the queue is assigned and resolved by command, with the resolver
    // recorded, a malformed action is refused naming what was wrong, and `erp exceptions`
    // and `erp kpis` print them.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let mut children = [
        projector_process_snapshotting(&nats, "exceptions", 2_000),
        projector_process_snapshotting(&nats, "kpis", 2_000),
    ];
    let log = nats.open(ledger_config()).await;
    let (done, finished) = tokio::sync::watch::channel(false);
    let exceptions = tokio::spawn(sample_snapshots::<Exceptions>(
        log.jetstream().clone(),
        finished.clone(),
    ));
    let kpis = tokio::spawn(sample_snapshots::<Kpis>(log.jetstream().clone(), finished));
    let (phase_exceptions, phase_kpis) =
        submit_in_phases::<Exceptions, Kpis>(&nats, &log, uci_bodies(8), 4).await;
    done.send(true).unwrap();
    let (mut exceptions, mut kpis) = (exceptions.await.unwrap(), kpis.await.unwrap());
    exceptions.extend(phase_exceptions);
    kpis.extend(phase_kpis);

    // Work the queue's first exception through the processor.
    let client = command_client(&nats).await;
    let views = ViewClient::new(nats.connect().await);
    let last = log.last_sequence().await.unwrap();
    let queue = views
        .ask(
            "exceptions",
            "queue",
            json!({"limit": 5}),
            Some(last),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .result;
    assert!(queue["count"].as_u64().unwrap() > 0, "{queue}");
    let first = &queue["exceptions"][0];
    let exception = json!({"kind": first["kind"], "on": first["on"]});
    let at = "2010-12-13T09:00:00Z";
    let resolved = client
        .submit_json(command(
            "ops-lead",
            "clerk",
            at,
            "exception.resolve",
            json!({"exception": exception, "resolution": "CustomerContacted", "note": "agreed to wait"}),
        ))
        .await
        .unwrap();
    let Outcome::Accepted { outcome_seq, .. } = resolved else {
        panic!("{resolved:?}")
    };
    let row = exception_row(&views, &exception, Some(outcome_seq))
        .await
        .unwrap()
        .result;
    assert_eq!(row["status"], "resolved", "{row}");
    assert_eq!(row["resolved"]["by"], "ops-lead");
    // A kind with a subject of another shape changes nothing and says why.
    let refused = client
        .submit_json(command(
            "ops-lead",
            "clerk",
            at,
            "exception.assign",
            json!({"exception": {"kind": "CountVariance", "on": first["on"]}, "owner": "x"}),
        ))
        .await
        .unwrap();
    assert!(
        matches!(&refused, Outcome::Rejected { code, .. } if code == "invalid_exception"),
        "{refused:?}"
    );
    // The terminal views of both.
    let url = nats.url();
    let printed = tokio::task::spawn_blocking(move || {
        (
            erp(&url, &["exceptions", "--limit", "3"]),
            erp(&url, &["exceptions", "--counts"]),
            erp(&url, &["kpis", "--period", "2010-12"]),
            erp(&url, &["kpis", "--period", "2010-13"]),
        )
    })
    .await
    .unwrap();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(printed.0.status.success(), "{printed:?}");
    assert!(text(&printed.0).contains("highest priority first"));
    assert!(text(&printed.1).contains("order_unshipped"));
    assert!(text(&printed.2).contains("all -"), "{}", text(&printed.2));
    assert!(!printed.3.status.success());
    assert!(String::from_utf8_lossy(&printed.3.stderr).contains("expected a month"));

    for child in &mut children {
        stop(child);
    }
    add_last_snapshot::<Exceptions>(log.jetstream(), &mut exceptions).await;
    add_last_snapshot::<Kpis>(log.jetstream(), &mut kpis).await;
    processor.stop().await;
    snapshots_equal_replays::<Exceptions>(&log, &exceptions, 4).await;
    snapshots_equal_replays::<Kpis>(&log, &kpis, 4).await;
}

/// The exception's row once `ready` holds for it, or as it last was after 30 s.
async fn row_once(
    views: &ViewClient,
    exception: &serde_json::Value,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut row = json!(null);
    for _ in 0..300 {
        row = exception_row(views, exception, None)
            .await
            .map(|a| a.result)
            .unwrap_or(json!(null));
        if ready(&row) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    row
}

/// The commands (role, type, data) that leave `order` (2 LAMP from WH1, which has 10)
/// released to pick.
fn one_order_released(order: &str) -> Vec<(&'static str, &'static str, serde_json::Value)> {
    vec![
        (
            "clerk",
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ),
        ("clerk", "channel.define", json!({"channel": "web"})),
        ("clerk", "item.define", json!({"sku": "LAMP"})),
        (
            "clerk",
            "stock.receive",
            json!({"sku": "LAMP", "location": "WH1", "qty": 10,
            "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
        ),
        (
            "upstream",
            "order.place",
            json!({"order": order, "channel": "web", "ship_to_region": "UK",
            "lines": [{"line": 1, "sku": "LAMP", "qty": 2, "unit_price": {"amount": "9.00", "currency": "GBP"}}]}),
        ),
        (
            "warehouse",
            "order.release_to_pick",
            json!({"order": order, "wave": "W1"}),
        ),
    ]
}

/// One exception as the view shows it, once it has applied `min_seq`.
async fn exception_row(
    views: &ViewClient,
    exception: &serde_json::Value,
    min_seq: Option<u64>,
) -> Result<projections::client::Answer, projections::client::ViewError> {
    views
        .ask(
            "exceptions",
            "exception",
            json!({"exception": exception}),
            min_seq,
            Duration::from_secs(30),
        )
        .await
}

#[tokio::test]
async fn a_blocking_exception_holds_its_order_until_it_is_resolved() {
    // Goal: a controller makes `order_unshipped` block fulfilment; an order released to pick
    // and left unshipped past the threshold is held by the exception holder (`erp
    // exception-holder`, a separate process) through the processor, recorded on the
    // exception; the held order cannot be picked; resolving the exception releases the
    // hold in the same batch, and the order is picked. A second holder started afterwards
    // sends the same command ids and holds nothing twice.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let mut projector = crate::projections::projector_process(&nats, "exceptions");
    let holder = || {
        crate::harness::erp_command()
            .args(["exception-holder", "--nats", &nats.url()])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("erp exception-holder starts")
    };
    let mut first_holder = holder();
    let client = command_client(&nats).await;
    let views = ViewClient::new(nats.connect().await);
    let send =
        |actor: &'static str, role: &'static str, at: &'static str, kind: &'static str, data| {
            let client = &client;
            async move {
                client
                    .submit_json(command(actor, role, at, kind, data))
                    .await
                    .unwrap()
            }
        };
    let day1 = "2011-03-01T09:00:00Z";
    let rule = (
        "controller",
        "exception.set_rule",
        json!({"kind": "OrderUnshipped",
        "rule": {"threshold": 1, "severity": "Critical", "blocks": true}}),
    );
    for (role, kind, data) in std::iter::once(rule).chain(one_order_released("B1")) {
        let outcome = send(role, role, day1, kind, data).await;
        assert!(outcome.is_accepted(), "{kind}: {outcome:?}");
    }
    // Two days later, something else happens: the business clock passes the deadline.
    let outcome = send(
        "clerk",
        "clerk",
        "2011-03-03T09:00:00Z",
        "stock.receive",
        json!({"sku": "LAMP", "location": "WH1", "qty": 1, "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
    )
    .await;
    assert!(outcome.is_accepted(), "{outcome:?}");
    let exception = json!({"kind": "OrderUnshipped", "on": {"Order": {"order": "B1"}}});
    let row = row_once(&views, &exception, |row| !row["hold"].is_null()).await;
    assert_eq!(row["blocks"], true, "{row}");
    assert_eq!(row["hold"]["by"], "exceptions", "{row}");
    assert_eq!(row["status"], "open");
    // Held: it cannot be picked.
    let pick = json!({"order": "B1", "lines": [{"line": 1, "qty": 2}]});
    let refused = send(
        "wh",
        "warehouse",
        "2011-03-03T10:00:00Z",
        "order.pick",
        pick.clone(),
    )
    .await;
    assert!(
        matches!(&refused, Outcome::Rejected { code, .. } if code == "invalid_transition"),
        "{refused:?}"
    );
    // A second holder (and the first, still running) send nothing new.
    let mut second_holder = holder();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = views
        .ask(
            "exceptions",
            "holds",
            json!({}),
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        .result;
    assert_eq!(before["count"], 0, "{before}");
    // Resolved: released in the same batch, and the pick goes through.
    let resolved = send(
        "lead",
        "clerk",
        "2011-03-03T11:00:00Z",
        "exception.resolve",
        json!({"exception": exception, "resolution": "Expedited", "note": "picked by hand"}),
    )
    .await;
    let Outcome::Accepted {
        event_count,
        outcome_seq,
        ..
    } = resolved
    else {
        panic!("{resolved:?}")
    };
    assert_eq!(event_count, 2, "exception.resolved and order.released");
    let picked = send(
        "wh",
        "warehouse",
        "2011-03-03T12:00:00Z",
        "order.pick",
        pick,
    )
    .await;
    assert!(picked.is_accepted(), "{picked:?}");
    let row = exception_row(&views, &exception, Some(outcome_seq))
        .await
        .unwrap()
        .result;
    assert_eq!(row["status"], "resolved", "{row}");
    assert!(row["hold"].is_null(), "{row}");
    // Exactly one hold was ever recorded.
    let log = nats.open(ledger_config()).await;
    let mut cursor = log
        .read(ledger::ReadFrom::Start, ledger::ReadUntil::CaughtUp)
        .await
        .unwrap();
    let mut holds = 0;
    while let Some(record) = cursor.next().await {
        if let ledger::LogRecord::Event(e) = record.unwrap()
            && matches!(e.envelope.event, ledger::Event::OrderHeld(_))
        {
            assert_eq!(e.envelope.actor.id.as_str(), "exceptions");
            assert_eq!(e.envelope.effective_at.to_string(), "2011-03-02T09:00:00Z");
            holds += 1;
        }
    }
    assert_eq!(holds, 1);
    for child in [&mut first_holder, &mut second_holder, &mut projector] {
        stop(child);
    }
    processor.stop().await;
}

#[tokio::test]
async fn in_a_quiet_ledger_the_processors_clock_tick_raises_what_fell_due() {
    // Goal: an order released to pick three days ago (by its effective time) and never
    // shipped, with nothing else happening, is raised as `order_unshipped` because the
    // processor moves the entity's business clock on by `clock.tick` (here every second of
    // wall time); the ticks are on whole seconds, each names the clock it moved on from, and
    // an entity whose events are dated in the future is not ticked back.
    let nats = TestNats::start();
    let processor = TestProcessor::start_with(
        &nats,
        commands::service::ServiceConfig {
            clock_tick: Some(Duration::from_secs(1)),
            hold_expiry_interval: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await;
    let mut projector = crate::projections::projector_process(&nats, "exceptions");
    let client = command_client(&nats).await;
    let views = ViewClient::new(nats.connect().await);
    let ago = (chrono::Utc::now() - chrono::Duration::days(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (role, kind, data) in one_order_released("Q1") {
        let outcome = client
            .submit_json(command("someone", role, &ago, kind, data))
            .await
            .unwrap();
        assert!(outcome.is_accepted(), "{kind}: {outcome:?}");
    }
    // Another entity's only event is dated tomorrow: its clock is ahead of the wall clock.
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let future = json!({
        "command_id": uuid::Uuid::now_v7(), "actor": {"id": "someone", "role": "clerk"},
        "legal_entity": "FR01", "effective_at": tomorrow, "type": "channel.define",
        "data": {"channel": "fr-web"},
    });
    let outcome = client
        .submit_json(bytes::Bytes::from(future.to_string()))
        .await
        .unwrap();
    assert!(outcome.is_accepted(), "{outcome:?}");

    let exception = json!({"kind": "OrderUnshipped", "on": {"Order": {"order": "Q1"}}});
    let row = row_once(&views, &exception, |row| row["status"] == "open").await;
    assert_eq!(row["status"], "open", "{row}");
    // Stamped with its deadline (two days after the release), not with the tick.
    let release = ledger::values::Timestamp::parse(&ago).unwrap();
    let deadline =
        ledger::values::Timestamp::from_micros(release.micros() + 2 * 24 * 3600 * 1_000_000)
            .unwrap();
    assert_eq!(row["raised_at"], json!(deadline), "{row}");

    // The ticks in the ledger: UK01's on whole seconds, each from the one before; none for FR01.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = nats.open(ledger_config()).await;
    let last = log.last_sequence().await.unwrap();
    let mut ticks = Vec::new();
    for seq in 1..=last {
        if let Some(ledger::LogRecord::Event(e)) = log.get(seq).await.unwrap()
            && let ledger::Event::ClockTicked(t) = &e.envelope.event
        {
            assert_eq!(e.envelope.legal_entity.as_str(), "UK01", "{e:?}");
            assert_eq!(e.envelope.subject.to_string(), "ent.UK01");
            assert_eq!(e.envelope.effective_at.micros() % 1_000_000, 0, "{e:?}");
            ticks.push((t.previous, e.envelope.effective_at));
        }
    }
    assert!(ticks.len() >= 2, "{ticks:?}");
    assert_eq!(ticks[0].0, release);
    for pair in ticks.windows(2) {
        assert_eq!(pair[1].0, pair[0].1, "{ticks:?}");
        assert!(pair[1].1 > pair[0].1, "{ticks:?}");
    }
    stop(&mut projector);
    processor.stop().await;
}

#[tokio::test]
async fn an_order_amended_through_the_processor_substitutes_and_adds_lines_atomically() {
    // Goal: through the real processor, a substitution without the customer's consent is
    // refused and changes nothing; with it, line 1 (2 LAMP) gives way to line 2 (3 SHADE) and
    // a line 3 (1 LAMP) is added, in one batch; the allocation projector shows every line's
    // state, LAMP's freed units are allocated to line 3, and `erp verify` passes.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let mut projector = crate::projections::projector_process(&nats, "allocation");
    let client = command_client(&nats).await;
    let views = ViewClient::new(nats.connect().await);
    let at = "2011-03-01T09:00:00Z";
    let price = json!({"amount": "9.00", "currency": "GBP"});
    for (role, kind, data) in [
        (
            "clerk",
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ),
        ("clerk", "channel.define", json!({"channel": "web"})),
        ("clerk", "item.define", json!({"sku": "LAMP"})),
        ("clerk", "item.define", json!({"sku": "SHADE"})),
        (
            "clerk",
            "stock.receive",
            json!({"sku": "LAMP", "location": "WH1", "qty": 2, "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
        ),
        (
            "clerk",
            "stock.receive",
            json!({"sku": "SHADE", "location": "WH1", "qty": 5, "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
        ),
        (
            "upstream",
            "order.place",
            json!({"order": "C1", "channel": "web", "ship_to_region": "UK",
            "lines": [{"line": 1, "sku": "LAMP", "qty": 2, "unit_price": price}]}),
        ),
    ] {
        let outcome = client
            .submit_json(command("someone", role, at, kind, data))
            .await
            .unwrap();
        assert!(outcome.is_accepted(), "{kind}: {outcome:?}");
    }
    let amend = |consent: serde_json::Value| {
        json!({"order": "C1", "reason": "out_of_stock",
            "replace": [{"line": 1, "consent": consent,
                "by": {"line": 2, "sku": "SHADE", "qty": 3, "unit_price": price}}],
            "add": [{"line": 3, "sku": "LAMP", "qty": 1, "unit_price": price}]})
    };
    let refused = client
        .submit_json(command(
            "shop",
            "upstream",
            at,
            "order.amend",
            amend(json!(null)),
        ))
        .await
        .unwrap();
    assert!(
        matches!(&refused, Outcome::Rejected { code, message, .. }
            if code == "reason_required" && message.contains("replace[0].consent")),
        "{refused:?}"
    );
    let accepted = client
        .submit_json(command(
            "shop",
            "upstream",
            at,
            "order.amend",
            amend(json!("customer agreed in chat 4411")),
        ))
        .await
        .unwrap();
    let Outcome::Accepted { outcome_seq, .. } = accepted else {
        panic!("{accepted:?}")
    };
    let order = views
        .ask(
            "allocation",
            "order",
            json!({"order": "C1"}),
            Some(outcome_seq),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .result;
    let lines = &order["lines"];
    assert_eq!(lines["1"]["cancelled"], 2, "{order}");
    assert_eq!(lines["1"]["allocated"], json!({}), "{order}");
    assert_eq!(lines["2"]["sku"], "SHADE", "{order}");
    assert_eq!(lines["2"]["allocated"]["WH1"], 3, "{order}");
    assert_eq!(lines["3"]["sku"], "LAMP", "{order}");
    assert_eq!(lines["3"]["allocated"]["WH1"], 1, "{order}");
    let url = nats.url();
    let verify = tokio::task::spawn_blocking(move || erp(&url, &["verify", "--quiet"]))
        .await
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    stop(&mut projector);
    processor.stop().await;
}
