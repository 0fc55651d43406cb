//! Exceptions and KPIs against a real ledger: the live projectors equal replays, exceptions
//! are worked through the real processor and the `erp` commands.

use std::time::Duration;

use commands::Outcome;
use ledger::EventLog;
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
    let row = views
        .ask(
            "exceptions",
            "exception",
            json!({"exception": exception}),
            Some(outcome_seq),
            Duration::from_secs(30),
        )
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
