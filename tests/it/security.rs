//! Who may write what, enforced by the server (the users of `erp auth init`) and by the
//! processor (the role table).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use commands::Outcome;
use ledger::EventLog;
use ledger::auth::Credentials;
use ledger::jetstream::JetStreamLog;
use projections::audit::Audit;
use projections::{Mode, Projector, ProjectorConfig};
use replay::{Resolved, ViewModel};
use serde_json::json;

use crate::harness::{TestNats, ledger_config};

/// A client for a role that records the server's error reports (permission violations).
async fn connect_as(
    credentials: &Credentials,
    nats: &TestNats,
    role: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let user = &credentials.users[role];
    let client = async_nats::ConnectOptions::with_user_and_password(
        user.user.clone(),
        user.password.clone(),
    )
    .event_callback(move |event| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(event.to_string());
        }
    })
    .connect(nats.url())
    .await
    .unwrap_or_else(|e| panic!("{role} connects: {e}"));
    (client, errors)
}

/// Publishes to a subject through JetStream and expects no acknowledgement: the server drops
/// the message and reports a permissions violation.
async fn refused(client: &async_nats::Client, errors: &Mutex<Vec<String>>, subject: &str) {
    let js = async_nats::jetstream::new(client.clone());
    let ack = tokio::time::timeout(Duration::from_secs(3), async {
        js.publish(subject.to_owned(), Bytes::from_static(b"forged"))
            .await?
            .await
    })
    .await;
    assert!(!matches!(ack, Ok(Ok(_))), "{subject}: stored: {ack:?}");
    for _ in 0..50 {
        if errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.to_lowercase().contains("permissions violation") && e.contains(subject))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no permissions violation reported for {subject}: {:?}",
        errors.lock().unwrap()
    );
}

fn command(role: &str, actor: &str, kind: &str, data: serde_json::Value) -> Bytes {
    Bytes::from(
        json!({
            "command_id": uuid::Uuid::now_v7(), "actor": {"id": actor, "role": role},
            "legal_entity": "UK01", "effective_at": "2011-06-30T12:00:00Z",
            "type": kind, "data": data,
        })
        .to_string(),
    )
}

#[tokio::test]
async fn only_the_processor_appends_and_forbidden_commands_are_refused_and_audited() {
    // Goal: with the generated users, `upstream` can send commands but not publish to a
    // LEDGER subject, the auditor can read but not publish, the projector builds its view;
    // a command whose actor's role may not send it is refused `forbidden`, and the audit view
    // lists the attempt under the actor.
    let dir = tempfile::tempdir().unwrap();
    let credentials = Credentials::generate(dir.path()).unwrap();
    let nats = TestNats::start_with(credentials.server_config());

    // An unauthenticated client is turned away.
    assert!(
        async_nats::ConnectOptions::new()
            .connect(nats.url())
            .await
            .is_err()
    );

    let (processor_client, _) = connect_as(&credentials, &nats, "processor").await;
    let log = JetStreamLog::open(processor_client.clone(), ledger_config())
        .await
        .unwrap();
    let service = commands::service::Service::start(
        processor_client.clone(),
        log,
        commands::service::ServiceConfig::default(),
    )
    .await
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let processor = tokio::spawn(service.serve(async {
        let _ = stopped.await;
    }));

    let (upstream, upstream_errors) = connect_as(&credentials, &nats, "upstream").await;
    let client = commands::client::CommandClient::new(upstream.clone(), Duration::from_secs(10));
    let outcome = client
        .submit_json(command(
            "upstream",
            "shop-1",
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ))
        .await
        .unwrap();
    assert!(outcome.is_accepted(), "{outcome:?}");

    let ledger_log = JetStreamLog::open(processor_client.clone(), ledger_config())
        .await
        .unwrap();
    let before = ledger_log.last_sequence().await.unwrap();
    refused(&upstream, &upstream_errors, "led.sku.A").await;
    let (auditor, auditor_errors) = connect_as(&credentials, &nats, "auditor").await;
    refused(&auditor, &auditor_errors, "led.loc.WH1").await;
    refused(&auditor, &auditor_errors, "cmd.location").await;
    assert_eq!(
        ledger_log.last_sequence().await.unwrap(),
        before,
        "nothing forged was stored"
    );

    // A warehouse actor may not define locations: refused, recorded, audited.
    let outcome = client
        .submit_json(command(
            "warehouse",
            "picker-7",
            "location.define",
            json!({"location": "WH9", "kind": "Warehouse", "region": "UK"}),
        ))
        .await
        .unwrap();
    let Outcome::Rejected {
        code, outcome_seq, ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(code, "forbidden");
    let refusal = outcome_seq.expect("recorded");

    // The auditor reads the ledger and rebuilds the audit view; the projector user builds the
    // live one.
    let auditor_log = JetStreamLog::open(auditor.clone(), ledger_config())
        .await
        .expect("the auditor opens the ledger read-only");
    let last = auditor_log.last_sequence().await.unwrap();
    let mut audit =
        replay::replay::<_, ViewModel<Audit>>(&auditor_log, &[Resolved::at_seq(last)], |_| {})
            .await
            .unwrap();
    let audit = audit.built.remove(0).model.0;
    assert!(audit.sequences("actor:picker-7").contains(&refusal));
    replay::verify::verify(&auditor_log, &replay::VerifyOptions::default(), |_| {})
        .await
        .expect("the auditor verifies the ledger");

    let (projector_client, _) = connect_as(&credentials, &nats, "projector").await;
    let mut projector = Projector::<Audit>::open(
        JetStreamLog::open(projector_client, ledger_config())
            .await
            .unwrap(),
        Mode::Live,
        ProjectorConfig::default(),
    )
    .await
    .expect("the projector user opens its view");
    projector.catch_up().await.unwrap();
    assert!(
        projector
            .view()
            .sequences("actor:picker-7")
            .contains(&refusal)
    );

    let _ = stop.send(());
    processor.await.unwrap().unwrap();
}
