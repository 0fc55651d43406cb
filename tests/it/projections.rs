//! Projectors against a real ledger: crash recovery of a projector process, agreement with the
//! write model, KV change feeds, read-your-writes queries, refusal of a broken chain, and
//! rebuild with swap.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use commands::Outcome;
use futures::StreamExt;
use ledger::jetstream::JetStreamLog;
use ledger::values::{LocationId, Sku};
use ledger::{EventLog, Head, LogCursor, LogRecord, ReadFrom, ReadUntil};
use projections::allocation::Allocation;
use projections::ats::Ats;
use projections::client::ViewClient;
use projections::{Mode, Projector, ProjectorConfig, RunEnd};
use serde_json::{Value, json};

use crate::harness::{TestNats, TestProcessor, command_client, ledger_config, scratch_config};

/// A projector of view `V` on the test's ledger.
async fn projector<V: projections::View>(nats: &TestNats, mode: Mode) -> Projector<V> {
    Projector::<V>::open(
        nats.open(ledger_config()).await,
        mode,
        ProjectorConfig::default(),
    )
    .await
    .unwrap()
}

pub(crate) fn uci_bodies(days: usize) -> Vec<Bytes> {
    let dataset = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(commands::demo::DATASET);
    let (all, _) = commands::demo::uci_commands(&dataset, Some(days)).unwrap();
    all.iter()
        .map(|c| Bytes::from(serde_json::to_vec(c).unwrap()))
        .collect()
}

/// Submits commands in order; returns the ledger sequence of the last outcome.
pub(crate) async fn submit(nats: &TestNats, bodies: Vec<Bytes>) -> u64 {
    let client = command_client(nats).await;
    let mut last = 0;
    client
        .submit_all(bodies, 256, |_, o| match o.expect("an answer") {
            Outcome::Accepted { outcome_seq, .. }
            | Outcome::Rejected {
                outcome_seq: Some(outcome_seq),
                ..
            } => last = last.max(outcome_seq),
            other => panic!("{other:?}"),
        })
        .await;
    last
}

/// Every key and value of a KV bucket, except the status key.
async fn bucket_contents(
    js: &async_nats::jetstream::Context,
    bucket: &str,
) -> BTreeMap<String, Bytes> {
    let kv = js.get_key_value(bucket).await.unwrap();
    let mut keys: Vec<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
    keys.retain(|k| k != "_status");
    let mut contents = BTreeMap::new();
    for key in keys {
        contents.insert(key.clone(), kv.get(&key).await.unwrap().unwrap());
    }
    contents
}

pub(crate) fn projector_process(nats: &TestNats, view: &str) -> std::process::Child {
    projector_process_snapshotting(nats, view, 5000)
}

/// An `erp project` process saving a snapshot every `every` events (or every second).
pub(crate) fn projector_process_snapshotting(
    nats: &TestNats,
    view: &str,
    every: u64,
) -> std::process::Child {
    crate::harness::erp_command()
        .args([
            "project",
            view,
            "--nats",
            &nats.url(),
            "--snapshot-events",
            &every.to_string(),
            "--snapshot-seconds",
            "1",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("erp project starts")
}

/// Every row of a view whose key starts with `prefix`, paged through `rows` once the view has
/// reached `min_seq` (the view must not change meanwhile): (its sequence, key -> value).
pub(crate) async fn all_rows(
    views: &ViewClient,
    view: &str,
    prefix: &str,
    min_seq: u64,
) -> (u64, std::collections::BTreeMap<String, Value>) {
    let mut rows = std::collections::BTreeMap::new();
    let mut after: Option<String> = None;
    let mut seq = None;
    loop {
        let answer = views
            .ask(
                view,
                "rows",
                json!({"prefix": prefix, "after": after, "limit": 1000}),
                Some(min_seq),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(
            seq.is_none_or(|s| s == answer.seq),
            "the view moved while paging"
        );
        seq = Some(answer.seq);
        for row in answer.result["rows"].as_array().unwrap() {
            rows.insert(
                row["key"].as_str().unwrap().to_owned(),
                row["value"].clone(),
            );
        }
        match answer.result["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return (answer.seq, rows),
        }
    }
}

async fn wait_for(views: &ViewClient, view: &str, seq: u64) {
    for _ in 0..60 {
        if views
            .ask(view, "status", json!({}), Some(seq), Duration::from_secs(5))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("view {view} never reached sequence {seq}")
}

/// SIGTERM, so the projector saves its final snapshot, and wait for it to exit.
pub(crate) fn stop(child: &mut std::process::Child) {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_projector_killed_at_random_points_ends_equal_to_a_clean_rebuild() {
    // Goal: kill -9 the ATS and allocation projector processes several times while about
    // 100,000 events are appended; after the last restart their views (state and every KV
    // value) equal, byte for byte, views rebuilt cleanly from sequence 1.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let bodies = uci_bodies(6);
    let mut children = vec![
        projector_process(&nats, "ats"),
        projector_process(&nats, "allocation"),
    ];
    let load = tokio::spawn({
        let url = nats.url();
        async move {
            let client = commands::client::CommandClient::new(
                async_nats::connect(url).await.unwrap(),
                Duration::from_secs(60),
            );
            let mut last = 0;
            client
                .submit_all(bodies, 256, |_, o| {
                    if let Ok(
                        Outcome::Accepted { outcome_seq, .. }
                        | Outcome::Rejected {
                            outcome_seq: Some(outcome_seq),
                            ..
                        },
                    ) = o
                    {
                        last = last.max(outcome_seq);
                    }
                })
                .await;
            last
        }
    });
    let mut kills = 0;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    while !load.is_finished() && kills < 8 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(300 + seed % 900)).await;
        let victim = (seed % 2) as usize;
        children[victim].kill().unwrap(); // SIGKILL
        children[victim].wait().unwrap();
        children[victim] = projector_process(&nats, ["ats", "allocation"][victim]);
        kills += 1;
    }
    let last = load.await.unwrap();
    assert!(kills >= 3, "the load finished before 3 kills ({kills})");
    let log = nats.open(ledger_config()).await;
    let end = log.last_sequence().await.unwrap();
    assert!(end >= 100_000, "{end} events");
    assert!(last > 0);
    let views = ViewClient::new(nats.connect().await);
    wait_for(&views, "ats", end).await;
    wait_for(&views, "allocation", end).await;
    let js = log.jetstream().clone();
    let live_ats_bucket = projections::runtime::served_bucket(&js, "ats")
        .await
        .unwrap()
        .unwrap();
    let live_allocation_bucket = projections::runtime::served_bucket(&js, "allocation")
        .await
        .unwrap()
        .unwrap();
    for child in &mut children {
        stop(child);
    }
    processor.stop().await;
    let (live_ats, ats_at) = projections::runtime::read_snapshot::<Ats>(&js, &live_ats_bucket)
        .await
        .unwrap()
        .unwrap();
    let (live_allocation, _) =
        projections::runtime::read_snapshot::<Allocation>(&js, &live_allocation_bucket)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(ats_at, end);

    let mut clean_ats = projector::<Ats>(&nats, Mode::Rebuild).await;
    clean_ats.catch_up().await.unwrap();
    let mut clean_allocation = projector::<Allocation>(&nats, Mode::Rebuild).await;
    clean_allocation.catch_up().await.unwrap();
    assert_eq!(clean_ats.checkpoint(), end);
    assert_eq!(
        serde_json::to_string(&live_ats).unwrap(),
        serde_json::to_string(clean_ats.view()).unwrap()
    );
    assert_eq!(
        serde_json::to_string(&live_allocation).unwrap(),
        serde_json::to_string(clean_allocation.view()).unwrap()
    );
    assert_eq!(
        bucket_contents(&js, &live_ats_bucket).await,
        bucket_contents(&js, clean_ats.bucket()).await
    );
    assert_eq!(
        bucket_contents(&js, &live_allocation_bucket).await,
        bucket_contents(&js, clean_allocation.bucket()).await
    );
}

/// The write model as of sequence `seq`, rebuilt from the ledger.
async fn write_model_at(log: &JetStreamLog, seq: u64) -> commands::State {
    let mut state = commands::State::default();
    let mut cursor = log
        .read(ReadFrom::Start, ReadUntil::Sequence(seq))
        .await
        .unwrap();
    while let Some(record) = cursor.next().await {
        if let LogRecord::Event(e) = record.unwrap() {
            state.apply(
                &e.envelope,
                Some(Head {
                    seq: e.seq,
                    hash: e.hash,
                }),
            );
        }
    }
    state
}

#[tokio::test]
async fn live_ats_agrees_with_the_write_model_at_every_checkpoint_sampled() {
    // Goal: while commands flow, the ATS view at whatever sequence it has reached shows, for
    // every SKU and location, exactly the write model's figures at that same sequence.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let log = nats.open(ledger_config()).await;
    let ats = projector::<Ats>(&nats, Mode::Live).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let projector = tokio::spawn(ats.run(async {
        let _ = stopped.await;
    }));
    let views = ViewClient::new(nats.connect().await);
    let bodies = uci_bodies(4);
    let mut compared = 0;
    for chunk in bodies.chunks(700) {
        let last = submit(&nats, chunk.to_vec()).await;
        let (seq, rows) = all_rows(&views, "ats", "loc.", last).await;
        let model = write_model_at(&log, seq).await;
        let mut model_rows = 0;
        for (sku, stock) in &model.stock {
            for (location, b) in &stock.balances {
                let key = format!(
                    "loc.{}.{}",
                    ledger::subject::escape_token(sku.as_str()),
                    ledger::subject::escape_token(location.as_str())
                );
                let row = &rows[&key];
                let figures = (
                    row["on_hand"].as_i64(),
                    row["allocated"].as_i64(),
                    row["reserved"].as_i64(),
                    row["quality_hold"].as_i64(),
                    row["in_transit"].as_i64(),
                );
                assert_eq!(
                    figures,
                    (
                        Some(b.on_hand),
                        Some(b.allocated),
                        Some(b.reserved),
                        Some(b.quality_hold),
                        Some(b.in_transit)
                    ),
                    "{key} at {seq}"
                );
                model_rows += 1;
            }
        }
        assert_eq!(
            rows.len(),
            model_rows,
            "the view has rows the write model lacks"
        );
        compared += 1;
    }
    assert!(compared >= 5);
    let _ = stop.send(());
    assert_eq!(projector.await.unwrap().unwrap(), RunEnd::Shutdown);
    processor.stop().await;
}

#[tokio::test]
async fn a_kv_watcher_sees_each_change_and_queries_wait_for_the_callers_write() {
    // Goal: a separate client watching a view key sees every change; a query with
    // wait-for-sequence returns only once the command's events are applied.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let ats = projector::<Ats>(&nats, Mode::Live).await;
    let bucket = ats.bucket().to_owned();
    let projector = tokio::spawn(ats.run(futures::future::pending()));
    let client = command_client(&nats).await;
    crate::processor::setup(&client, &["A"]).await;
    let watcher = nats.connect().await;
    let kv = async_nats::jetstream::new(watcher)
        .get_key_value(&bucket)
        .await
        .unwrap();
    let mut watch = kv.watch("loc.A.WH1").await.unwrap();
    let views = ViewClient::new(nats.connect().await);
    let mut seen = Vec::new();
    for qty in [5, 7, 11] {
        let seq = submit_one(&client, "stock.receive", json!({"sku": "A", "location": "WH1", "qty": qty, "unit_cost": {"amount": "1", "currency": "GBP"}})).await;
        let answer = views
            .ask(
                "ats",
                "get",
                json!({"sku": "A", "location": "WH1"}),
                Some(seq),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(answer.seq >= seq);
        seen.push(answer.result["on_hand"].as_i64().unwrap());
        let entry = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let value: Value = serde_json::from_slice(&entry.value).unwrap();
        assert_eq!(value["on_hand"], json!(seen.last().unwrap()));
    }
    assert_eq!(seen, [5, 12, 23]);
    let status = views
        .ask("ats", "status", json!({}), None, Duration::from_secs(5))
        .await
        .unwrap()
        .result;
    for field in [
        "checkpoint",
        "generation",
        "ledger_last_seq",
        "lag",
        "events_per_second",
    ] {
        assert!(
            status.get(field).is_some(),
            "status lacks {field}: {status}"
        );
    }
    // A sequence the ledger will not reach in time: a clear timeout, not a stale answer.
    let err = views
        .ask(
            "ats",
            "get",
            json!({"sku": "A", "location": "WH1"}),
            Some(1_000_000),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("timeout"), "{err}");
    let err = views
        .ask(
            "ats",
            "get",
            json!({"location": "WH1"}),
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing field `sku`"), "{err}");
    // An unknown operation is named, with the ones there are.
    let err = views
        .ask("ats", "gte", json!({}), None, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown variant `gte`, expected one of `get`, `sku`, `channel`, `explain`"),
        "{err}"
    );
    projector.abort();
    processor.stop().await;
}

async fn submit_one(client: &commands::client::CommandClient, kind: &str, data: Value) -> u64 {
    let command = json!({
        "command_id": uuid::Uuid::now_v7(), "actor": {"id": "t", "role": "clerk"}, "legal_entity": "UK01",
        "effective_at": "2011-06-30T12:00:00Z", "type": kind, "data": data,
    });
    match client
        .submit_json(Bytes::from(command.to_string()))
        .await
        .unwrap()
    {
        Outcome::Accepted { outcome_seq, .. } => outcome_seq,
        other => panic!("{kind}: {other:?}"),
    }
}

#[tokio::test]
async fn a_projector_refuses_a_ledger_whose_chain_is_broken() {
    // Goal: an altered event stops the projector with the sequence named, instead of being
    // projected.
    let nats = TestNats::start();
    let original = nats.open(scratch_config("ORIGINAL", "orig")).await;
    let sku = ledger::Subject::Stock(Sku::new("A").unwrap());
    for qty in 1..=3 {
        let head = original.head(&sku).await.unwrap().unwrap_or(Head::EMPTY);
        let event = ledger::Event::StockReceived(ledger::events::StockReceived {
            sku: Sku::new("A").unwrap(),
            location: LocationId::new("WH1").unwrap(),
            bin: None,
            lot: None,
            expires_on: None,
            serials: vec![],
            qty: ledger::values::Qty::new(qty).unwrap(),
            unit_cost: ledger::values::Money::parse("1", "GBP").unwrap(),
            purchase: None,
        });
        let draft = ledger::EventDraft {
            event_id: uuid::Uuid::now_v7(),
            subject: sku.clone(),
            command_id: uuid::Uuid::now_v7(),
            correlation_id: uuid::Uuid::now_v7(),
            actor: ledger::values::Actor {
                id: ledger::values::ActorId::new("t").unwrap(),
                role: ledger::values::Role::new("clerk").unwrap(),
            },
            legal_entity: ledger::values::EntityId::new("UK01").unwrap(),
            effective_at: ledger::values::Timestamp::parse("2011-01-01T00:00:00Z").unwrap(),
            event,
        };
        original
            .append(ledger::AppendBatch {
                expected_last_seq: None,
                expectations: vec![ledger::Expectation {
                    subject: sku.clone(),
                    head,
                }],
                events: vec![draft],
            })
            .await
            .unwrap();
    }
    // Copy into a stream named like the ledger, altering the second event's payload.
    let js = original.jetstream().clone();
    let tampered = nats.open(ledger_config()).await;
    let source = js.get_stream("ORIGINAL").await.unwrap();
    for seq in 1..=original.last_sequence().await.unwrap() {
        let msg = source.direct_get(seq).await.unwrap();
        let mut payload = msg.payload.to_vec();
        if seq == 3 {
            // The unit cost's amount "1" becomes "0": the event still decodes.
            let n = payload.len();
            payload[n - 6] ^= 1;
        }
        let relative = msg.subject.split_once('.').unwrap().1.to_owned();
        js.publish(format!("led.{relative}"), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut projector = Projector::<Ats>::open(tampered, Mode::Rebuild, ProjectorConfig::default())
        .await
        .unwrap();
    let err = projector.catch_up().await.unwrap_err().to_string();
    assert!(
        err.contains("at sequence 5") && err.contains("sequence 3 was altered"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_swaps_in_a_new_generation_and_the_old_projector_stops() {
    // Goal: while a live projector serves, a rebuild builds a new generation from sequence 1,
    // reports progress (to its caller, and to anyone who asks on the rebuild subject), swaps
    // the registry entry, and the old projector stops serving.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    submit(&nats, uci_bodies(1)).await;
    let live = projector::<Allocation>(&nats, Mode::Live).await;
    let old_bucket = live.bucket().to_owned();
    let old = tokio::spawn(live.run(futures::future::pending()));
    let views = ViewClient::new(nats.connect().await);
    let end = nats
        .open(ledger_config())
        .await
        .last_sequence()
        .await
        .unwrap();
    let before = views
        .ask(
            "allocation",
            "open",
            json!({}),
            Some(end),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let mut rebuild = projector::<Allocation>(&nats, Mode::Rebuild).await;
    let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = reports.clone();
    // At each report, ask the rebuild how far it is, as the gateway's /metrics does.
    let asker = nats.connect().await;
    let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let heard = answers.clone();
    rebuild.on_progress(move |p| {
        sink.lock().unwrap().push(p);
        let asked = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(asker.request(
                projections::runtime::rebuild_subject("allocation"),
                bytes::Bytes::new(),
            ))
        });
        let answer: projections::runtime::RebuildProgress =
            serde_json::from_slice(&asked.expect("the rebuild answers").payload).unwrap();
        heard.lock().unwrap().push((p, answer));
    });
    let new_bucket = rebuild.bucket().to_owned();
    assert_ne!(new_bucket, old_bucket);
    let new = tokio::spawn(rebuild.run(futures::future::pending()));
    let ended = tokio::time::timeout(Duration::from_secs(30), old)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        ended,
        RunEnd::Superseded {
            by: new_bucket.clone()
        }
    );
    let last = *reports
        .lock()
        .unwrap()
        .last()
        .expect("progress was reported");
    assert_eq!(last.done, last.total);
    let heard = answers.lock().unwrap().clone();
    assert!(!heard.is_empty());
    for (reported, answered) in &heard {
        assert_eq!(answered.generation, new_bucket);
        assert_eq!(answered.progress.total, reported.total, "{answered:?}");
        assert_eq!(answered.progress.done, reported.done, "{answered:?}");
    }
    let js = nats.open(ledger_config()).await.jetstream().clone();
    assert_eq!(
        projections::runtime::served_bucket(&js, "allocation")
            .await
            .unwrap(),
        Some(new_bucket)
    );
    let after = views
        .ask(
            "allocation",
            "open",
            json!({}),
            Some(end),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(after.result, before.result);
    new.abort();
    processor.stop().await;
}

#[tokio::test]
async fn the_audit_trail_of_an_entity_lists_its_events_and_refused_commands() {
    // Goal: per SKU, order, location and actor, the audit view lists every event and every
    // refused command about it, with who, both times and the command, filtered by time.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let audit = projector::<projections::audit::Audit>(&nats, Mode::Live).await;
    let projector = tokio::spawn(audit.run(futures::future::pending()));
    let client = command_client(&nats).await;
    crate::processor::setup(&client, &["A"]).await;
    submit_one(&client, "stock.receive", json!({"sku": "A", "location": "WH1", "qty": 2, "unit_cost": {"amount": "1", "currency": "GBP"}})).await;
    let place = json!({
        "command_id": uuid::Uuid::now_v7(), "actor": {"id": "clerk-9", "role": "clerk"}, "legal_entity": "UK01",
        "effective_at": "2011-07-01T09:00:00Z", "type": "stock.adjust",
        "data": {"sku": "A", "location": "WH1", "delta": -5, "reason": "lost"},
    });
    let refused = client
        .submit_json(Bytes::from(place.to_string()))
        .await
        .unwrap();
    let Outcome::Rejected {
        outcome_seq: Some(last),
        ..
    } = refused
    else {
        panic!("{refused:?}")
    };
    let views = ViewClient::new(nats.connect().await);
    let ask = |body: Value| views.ask("audit", "entity", body, Some(last), Duration::from_secs(10));
    let sku = ask(json!({"entity": "sku:A"})).await.unwrap().result;
    let types: Vec<&str> = sku["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["item.defined", "stock.received", "command.rejected"]
    );
    let rejection = &sku["events"][2];
    assert_eq!(rejection["actor"]["id"], "clerk-9");
    assert_eq!(rejection["data"]["code"], "insufficient_stock");
    assert_eq!(rejection["effective_at"], "2011-07-01T09:00:00Z");
    assert!(rejection["recorded_at"].as_str().unwrap().starts_with("20"));
    let clerk = ask(json!({"entity": "actor:clerk-9"}))
        .await
        .unwrap()
        .result;
    assert_eq!(clerk["events"].as_array().unwrap().len(), 1);
    let location = ask(json!({"entity": "location:WH1"})).await.unwrap().result;
    assert_eq!(
        location["events"].as_array().unwrap().len(),
        3,
        "{location}"
    );
    // Business-time window: only the refused adjustment is dated July.
    let july = ask(
        json!({"entity": "sku:A", "from": "2011-07-01T00:00:00Z", "to": "2011-08-01T00:00:00Z"}),
    )
    .await
    .unwrap()
    .result;
    assert_eq!(july["events"].as_array().unwrap().len(), 1);
    // Paging.
    let first = ask(json!({"entity": "sku:A", "limit": 2}))
        .await
        .unwrap()
        .result;
    assert_eq!(first["events"].as_array().unwrap().len(), 2);
    let rest = ask(json!({"entity": "sku:A", "after_seq": first["next_after_seq"]}))
        .await
        .unwrap()
        .result;
    assert_eq!(rest["events"].as_array().unwrap().len(), 1);
    let err = ask(json!({"entity": "A"})).await.unwrap_err();
    assert!(err.to_string().contains("expected kind:id"), "{err}");
    projector.abort();
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_of_a_view_misses_no_change_through_a_rebuild() {
    // Goal: a consumer that watches the ATS view by its name (not a bucket) while a rebuild
    // swaps in a new generation, with commands arriving before, during and after, ends holding
    // exactly the rows the served generation holds: every change reached it, from both
    // generations.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let bodies = uci_bodies(2);
    // The first half holds the master data and the first receipts and orders (rows to watch).
    let (before, rest) = bodies.split_at(bodies.len() / 2);
    let (during, after) = rest.split_at(rest.len() / 2);
    submit(&nats, before.to_vec()).await;
    let live = projector::<Ats>(&nats, Mode::Live).await;
    let old_bucket = live.bucket().to_owned();
    let old = tokio::spawn(live.run(futures::future::pending()));
    let js = nats.open(ledger_config()).await.jetstream().clone();
    let mut watch = projections::client::ViewWatch::start(js.clone(), "ats")
        .await
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new((BTreeMap::new(), BTreeSet::new())));
    let sink = seen.clone();
    let watcher = tokio::spawn(async move {
        while let Some(change) = watch.next().await {
            let change = change.unwrap();
            let mut seen = sink.lock().unwrap();
            seen.1.insert(change.generation.clone());
            match change.value {
                Some(v) => seen.0.insert(change.key, v),
                None => seen.0.remove(&change.key),
            };
        }
    });
    // The watcher is following the old generation before the rebuild starts.
    let mut following = false;
    for _ in 0..100 {
        if seen.lock().unwrap().1.contains(&old_bucket) {
            following = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(following, "the watcher never saw the served generation");
    let load = tokio::spawn({
        let url = nats.url();
        let during = during.to_vec();
        async move {
            let client = commands::client::CommandClient::new(
                ledger::auth::connect(&url).await.unwrap(),
                Duration::from_secs(30),
            );
            client.submit_all(during, 64, |_, o| drop(o.unwrap())).await;
        }
    });
    let rebuild = projector::<Ats>(&nats, Mode::Rebuild).await;
    let new_bucket = rebuild.bucket().to_owned();
    let new = tokio::spawn(rebuild.run(futures::future::pending()));
    load.await.unwrap();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(60), old).await,
        Ok(Ok(Ok(RunEnd::Superseded { .. })))
    ));
    let last = submit(&nats, after.to_vec()).await;
    let views = ViewClient::new(nats.connect().await);
    wait_for(&views, "ats", last).await;
    // The watcher has caught up when it holds what the bucket holds (the projector flushes
    // every 200 ms); give both time.
    let mut served = BTreeMap::new();
    let mut equal = false;
    for _ in 0..100 {
        served.clear();
        for (key, value) in bucket_contents(&js, &new_bucket).await {
            served.insert(key, serde_json::from_slice::<Value>(&value).unwrap());
        }
        if seen.lock().unwrap().0 == served {
            equal = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let extra: Vec<&String> = seen
        .0
        .keys()
        .filter(|k| !served.contains_key(*k))
        .take(5)
        .collect();
    let differ: Vec<&String> = served
        .iter()
        .filter(|(k, v)| seen.0.get(*k) != Some(v))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    assert!(
        equal,
        "the watcher holds {} rows, the served generation {}; extra {extra:?}, differing {differ:?}",
        seen.0.len(),
        served.len()
    );
    assert!(
        seen.1.contains(&old_bucket) && seen.1.contains(&new_bucket),
        "{:?}",
        seen.1
    );
    watcher.abort();
    new.abort();
    processor.stop().await;
}
