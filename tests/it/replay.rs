//! Replay and verification against a real ledger: live snapshots equal replays to the same
//! sequence, the two timelines of a back-dated receipt, and tampering named by sequence.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use commands::Outcome;
use futures::StreamExt;
use ledger::EventLog;
use ledger::jetstream::JetStreamLog;
use ledger::jetstream::LogConfig;
use projections::allocation::Allocation;
use projections::ats::Ats;
use replay::verify::{Digest, Divergence, VerifyOptions};
use replay::{Point, Resolved, WriteModel};
use serde_json::{Value, json};

use crate::harness::{TestNats, TestProcessor, command_client, ledger_config, scratch_config};
use crate::projections::{projector_process_snapshotting, stop, submit, uci_bodies};

async fn replay_to<V: projections::View>(log: &JetStreamLog, seq: u64) -> V {
    let mut replayed = replay::replay::<_, V>(log, &[Resolved::at_seq(seq)], |_| {})
        .await
        .unwrap();
    replayed.built.remove(0).model
}

/// Reads the view's served snapshot every 75 ms until a little after `finished`, keeping one
/// serialised copy per checkpoint sequence.
pub(crate) async fn sample_snapshots<V: projections::View>(
    js: async_nats::jetstream::Context,
    mut finished: tokio::sync::watch::Receiver<bool>,
) -> BTreeMap<u64, Vec<u8>> {
    let mut snapshots = BTreeMap::new();
    // Keep sampling a little after the load, so the last snapshots are taken too.
    let mut after = 0;
    while after < 20 {
        if *finished.borrow_and_update() {
            after += 1;
        }
        tokio::time::sleep(Duration::from_millis(75)).await;
        if let Some(bucket) = projections::runtime::served_bucket(&js, V::NAME)
            .await
            .unwrap()
            && let Some((view, at)) = projections::runtime::read_snapshot::<V>(&js, &bucket)
                .await
                .unwrap()
        {
            snapshots
                .entry(at)
                .or_insert_with(|| serde_json::to_vec(&view).unwrap());
        }
    }
    snapshots
}

/// Waits until the view's projector has saved a snapshot at `seq` or later (an idle projector
/// does within a second of catching up) and adds it.
async fn add_snapshot_at<V: projections::View>(
    js: &async_nats::jetstream::Context,
    seq: u64,
    snapshots: &mut BTreeMap<u64, Vec<u8>>,
) {
    for _ in 0..600 {
        if let Some(bucket) = projections::runtime::served_bucket(js, V::NAME)
            .await
            .unwrap()
            && let Some((view, at)) = projections::runtime::read_snapshot::<V>(js, &bucket)
                .await
                .unwrap()
            && at >= seq
        {
            snapshots.insert(at, serde_json::to_vec(&view).unwrap());
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never saved a snapshot at {seq} or later", V::NAME);
}

/// Sends `bodies` in `phases` ordered chunks; after each, waits for both views' projectors to
/// snapshot at the log's end and keeps those snapshots. With the snapshots the projectors take
/// while a chunk is loading (sampled separately), every run compares at least `phases` points
/// per view, however busy the machine.
pub(crate) async fn submit_in_phases<A: projections::View, B: projections::View>(
    nats: &TestNats,
    log: &JetStreamLog,
    bodies: Vec<Bytes>,
    phases: usize,
) -> (BTreeMap<u64, Vec<u8>>, BTreeMap<u64, Vec<u8>>) {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    let size = bodies.len().div_ceil(phases);
    for chunk in bodies.chunks(size) {
        submit(nats, chunk.to_vec()).await;
        let last = log.last_sequence().await.unwrap();
        add_snapshot_at::<A>(log.jetstream(), last, &mut a).await;
        add_snapshot_at::<B>(log.jetstream(), last, &mut b).await;
    }
    (a, b)
}

/// Adds the view's served snapshot as it is now (after its projector stopped: the final one).
pub(crate) async fn add_last_snapshot<V: projections::View>(
    js: &async_nats::jetstream::Context,
    snapshots: &mut BTreeMap<u64, Vec<u8>>,
) {
    let bucket = projections::runtime::served_bucket(js, V::NAME)
        .await
        .unwrap()
        .expect("a served generation");
    let (view, at) = projections::runtime::read_snapshot::<V>(js, &bucket)
        .await
        .unwrap()
        .expect("a final snapshot");
    snapshots.insert(at, serde_json::to_vec(&view).unwrap());
}

/// Each snapshot equals, byte for byte, a replay from sequence 1 to its checkpoint; at least
/// `min` were taken.
pub(crate) async fn snapshots_equal_replays<V: projections::View>(
    log: &JetStreamLog,
    snapshots: &BTreeMap<u64, Vec<u8>>,
    min: usize,
) {
    assert!(
        snapshots.len() >= min,
        "too few {} snapshots: at {:?}",
        V::NAME,
        snapshots.keys()
    );
    for (&at, bytes) in snapshots {
        let replayed = replay_to::<V>(log, at).await;
        assert!(
            serde_json::to_vec(&replayed).unwrap() == *bytes,
            "{} snapshot at {at} differs from the replay to {at}",
            V::NAME
        );
    }
    eprintln!("compared {} at {:?}", V::NAME, snapshots.keys());
}

#[tokio::test]
async fn live_snapshots_taken_at_many_points_equal_replays_to_the_same_sequence() {
    // Goal: while a UCI load runs, the live ATS and allocation projectors (the real `erp
    // project` processes) save snapshots at sequences chosen by their own timing; each
    // snapshot's view equals, byte for byte, a replay from sequence 1 to its checkpoint.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let mut children = [
        projector_process_snapshotting(&nats, "ats", 2_000),
        projector_process_snapshotting(&nats, "allocation", 2_000),
    ];
    let log = nats.open(ledger_config()).await;
    let (done, finished) = tokio::sync::watch::channel(false);
    let ats = tokio::spawn(sample_snapshots::<Ats>(
        log.jetstream().clone(),
        finished.clone(),
    ));
    let allocation = tokio::spawn(sample_snapshots::<Allocation>(
        log.jetstream().clone(),
        finished,
    ));
    let (phase_ats, phase_allocation) =
        submit_in_phases::<Ats, Allocation>(&nats, &log, uci_bodies(3), 5).await;
    done.send(true).unwrap();
    let (mut ats, mut allocation) = (ats.await.unwrap(), allocation.await.unwrap());
    ats.extend(phase_ats);
    allocation.extend(phase_allocation);
    for child in &mut children {
        stop(child);
    }
    add_last_snapshot::<Ats>(log.jetstream(), &mut ats).await;
    add_last_snapshot::<Allocation>(log.jetstream(), &mut allocation).await;
    processor.stop().await;
    let end = log.last_sequence().await.unwrap();
    assert!(end > 30_000, "{end} events");
    snapshots_equal_replays::<Ats>(&log, &ats, 5).await;
    snapshots_equal_replays::<Allocation>(&log, &allocation, 5).await;
}

async fn accepted_seq(client: &commands::client::CommandClient, command: Value) -> u64 {
    match client
        .submit_json(Bytes::from(command.to_string()))
        .await
        .unwrap()
    {
        Outcome::Accepted { outcome_seq, .. } => outcome_seq,
        other => panic!("{command}: {other:?}"),
    }
}

fn receipt(qty: i64, effective_at: &str) -> Value {
    json!({
        "command_id": uuid::Uuid::now_v7(), "actor": {"id": "clerk-1", "role": "clerk"},
        "legal_entity": "UK01", "effective_at": effective_at, "type": "stock.receive",
        "data": {"sku": "A", "location": "WH1", "qty": qty,
                 "unit_cost": {"amount": "1.00", "currency": "GBP"}},
    })
}

async fn on_hand(log: &JetStreamLog, point: Point) -> (i64, Resolved) {
    let resolved = replay::point::resolve(log, point).await.unwrap();
    let replayed = replay::replay::<_, Ats>(log, std::slice::from_ref(&resolved), |_| {})
        .await
        .unwrap();
    let value = replay::Model::value(&replayed.built[0].model, "loc.A.WH1");
    let qty = value.map_or(0, |v| v["on_hand"].as_i64().unwrap());
    (qty, resolved)
}

fn at(text: &str) -> ledger::values::Timestamp {
    replay::point::parse_time(text).unwrap()
}

#[tokio::test]
async fn a_back_dated_receipt_counts_as_effective_but_not_as_recorded_before_it() {
    // Goal: 10 units received effective 1 March, then (recorded later) 7 units back-dated to
    // 15 February. As recorded between the two, the back-dated receipt is not there; as
    // effective on 20 February (knowing everything now) it is, and the March receipt is not;
    // what we believed between the two recordings about 20 February was: nothing.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let client = command_client(&nats).await;
    crate::processor::setup(&client, &["A"]).await;
    let march = accepted_seq(&client, receipt(10, "2011-03-01T09:00:00Z")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = ledger::values::Timestamp::new(chrono::Utc::now());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let back_dated = accepted_seq(&client, receipt(7, "2011-02-15T09:00:00Z")).await;
    processor.stop().await;
    let log = nats.open(ledger_config()).await;

    let (recorded_between, resolved) = on_hand(&log, Point::recorded(between)).await;
    assert_eq!(recorded_between, 10, "{resolved}");
    // The point is the end of the March receipt's batch: its outcome record.
    assert_eq!(resolved.seq, march + 1, "{resolved}");
    let (effective_feb_20, _) = on_hand(&log, Point::latest().effective(at("2011-02-20"))).await;
    assert_eq!(effective_feb_20, 7);
    let (believed, _) = on_hand(&log, Point::recorded(between).effective(at("2011-02-20"))).await;
    assert_eq!(believed, 0);
    let (now, _) = on_hand(&log, Point::latest()).await;
    assert_eq!(now, 17);

    // The diff between what was believed and what is known names the back-dated receipt.
    let points = [
        replay::point::resolve(&log, Point::recorded(between).effective(at("2011-02-20")))
            .await
            .unwrap(),
        replay::point::resolve(&log, Point::latest().effective(at("2011-02-20")))
            .await
            .unwrap(),
    ];
    let replayed = replay::replay::<_, Ats>(&log, &points, |_| {})
        .await
        .unwrap();
    let diff = replayed.diff();
    let row = diff.iter().find(|d| d.key == "loc.A.WH1").expect("a diff");
    assert_eq!(row.before, None);
    assert_eq!(row.after.as_ref().unwrap()["on_hand"], 7);
    // The receipt's stock event comes just before its outcome record.
    assert!(row.events.iter().all(|&s| s < back_dated), "{row:?}");
    assert!(!row.events.is_empty());

    // The same through the command line, as an auditor runs it.
    let out = erp(
        &nats.url(),
        &[
            "replay",
            "state",
            "--as-recorded",
            &between.to_string(),
            "--as-effective",
            "2011-02-20",
            "--diff",
            "--to-seq",
            &back_dated.to_string(),
            "--format",
            "csv",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(csv.starts_with("key,field,before,after,events\n"), "{csv}");
    assert!(csv.contains("bal.A.WH1,*,(none),"), "{csv}");
}

pub(crate) fn erp(url: &str, args: &[&str]) -> std::process::Output {
    crate::harness::erp_command()
        .args(args)
        .env("ERP_NATS_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("erp runs")
}

/// Every stored message of a stream, in order: (subject without its prefix, payload).
async fn stored_messages(log: &JetStreamLog) -> Vec<(String, Vec<u8>)> {
    let stream = log
        .jetstream()
        .get_stream(&log.config().stream)
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
            deliver_subject: log.client().new_inbox(),
            ..Default::default()
        })
        .await
        .unwrap();
    let last = log.last_sequence().await.unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < last {
        let msg = messages.next().await.unwrap().unwrap();
        let relative = msg.subject.split_once('.').unwrap().1.to_owned();
        out.push((relative, msg.payload.to_vec()));
    }
    out
}

/// Writes messages into a fresh stream (deletes allowed), pipelining the publishes.
async fn write_copy(
    nats: &TestNats,
    config: LogConfig,
    messages: &[(String, Vec<u8>)],
) -> JetStreamLog {
    let prefix = config.subjects.prefix().to_owned();
    let log = nats.open(config).await;
    let js = log.jetstream().clone();
    for chunk in messages.chunks(500) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (subject, payload) in chunk {
            acks.push(
                js.publish(format!("{prefix}.{subject}"), payload.clone().into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    assert_eq!(log.last_sequence().await.unwrap(), messages.len() as u64);
    log
}

/// Decodes the stored event at index `i` (sequence `i + 1`).
fn decoded(messages: &[(String, Vec<u8>)], i: usize) -> Option<ledger::Envelope> {
    ledger::codec::decode_envelope(&messages[i].1)
        .ok()
        .map(|d| d.envelope)
}

async fn verify_fails(log: &JetStreamLog, options: &VerifyOptions) -> replay::VerifyFailure {
    replay::verify::verify(log, options, |_| {})
        .await
        .unwrap_err()
}

#[tokio::test]
async fn verify_names_the_sequence_of_an_altered_removed_or_reordered_event() {
    // Goal: a UCI ledger copied into scratch streams, with one event altered, one removed and
    // two reordered (one tampering per copy): `verify` names the exact sequence each time; an
    // alteration that leaves every chain intact (a subject's last event) is caught by the
    // digest an auditor recorded; `erp verify` exits non-zero naming the place.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    submit(&nats, uci_bodies(1)).await;
    processor.stop().await;
    let original = nats.open(ledger_config()).await;
    let report = replay::verify::verify(&original, &VerifyOptions::default(), |_| {})
        .await
        .unwrap();
    let messages = stored_messages(&original).await;
    assert_eq!(report.last_seq, messages.len() as u64);
    assert!(report.last_seq > 10_000, "{report:?}");

    // Pick events: the subject of each, and the index of the next event on it.
    let events: Vec<(usize, ledger::Envelope)> = (0..messages.len())
        .filter_map(|i| decoded(&messages, i).map(|e| (i, e)))
        .collect();
    let next_on_subject = |i: usize| {
        let subject = &decoded(&messages, i).unwrap().subject;
        events
            .iter()
            .find(|(j, e)| *j > i && &e.subject == subject)
            .map(|(j, _)| *j)
    };
    let stock_events: Vec<usize> = events
        .iter()
        .filter(|(_, e)| matches!(e.subject, ledger::Subject::Stock(_)))
        .map(|(i, _)| *i)
        .collect();
    let middle = stock_events[stock_events.len() / 2];
    let following = next_on_subject(middle).expect("a later event on the SKU");

    // Altered: the event's effective time moved by a second, re-encoded so it still decodes.
    let mut altered = messages.clone();
    let mut envelope = decoded(&messages, middle).unwrap();
    envelope.effective_at =
        ledger::values::Timestamp::from_micros(envelope.effective_at.micros() + 1_000_000).unwrap();
    altered[middle].1 = ledger::codec::encode_envelope(&envelope).unwrap();
    let log = write_copy(&nats, scratch_config("ALTERED", "alt"), &altered).await;
    let failure = verify_fails(&log, &VerifyOptions::default()).await;
    assert_eq!(failure.seq, following as u64 + 1, "{failure}");
    assert!(
        failure
            .to_string()
            .contains(&format!("sequence {} was altered", middle + 1)),
        "{failure}"
    );

    // Removed: the event deleted from the stream.
    let log = write_copy(&nats, scratch_config("REMOVED", "rem"), &messages).await;
    let stream = log.jetstream().get_stream("REMOVED").await.unwrap();
    assert!(stream.delete_message(middle as u64 + 1).await.unwrap());
    let failure = verify_fails(&log, &VerifyOptions::default()).await;
    assert_eq!(failure.seq, middle as u64 + 1, "{failure}");
    assert!(
        matches!(failure.divergence, Divergence::Missing { .. }),
        "{failure}"
    );

    // Reordered: two events of one subject swapped.
    let mut reordered = messages.clone();
    reordered.swap(middle, following);
    let log = write_copy(&nats, scratch_config("REORDERED", "reo"), &reordered).await;
    let failure = verify_fails(&log, &VerifyOptions::default()).await;
    assert_eq!(failure.seq, middle as u64 + 1, "{failure}");
    assert!(
        matches!(failure.divergence, Divergence::Chain(_)),
        "{failure}"
    );

    // Altered in place of a subject's last event: every chain still holds, so only the digest
    // recorded earlier shows it, and checkpoints narrow it down.
    let last_of_subject = stock_events
        .iter()
        .copied()
        .rev()
        .find(|&i| next_on_subject(i).is_none())
        .unwrap();
    let mut quiet = messages.clone();
    let mut envelope = decoded(&messages, last_of_subject).unwrap();
    envelope.effective_at =
        ledger::values::Timestamp::from_micros(envelope.effective_at.micros() + 1).unwrap();
    quiet[last_of_subject].1 = ledger::codec::encode_envelope(&envelope).unwrap();
    let log = write_copy(&nats, scratch_config("QUIET", "qui"), &quiet).await;
    replay::verify::verify(&log, &VerifyOptions::default(), |_| {})
        .await
        .expect("the chains alone cannot see this");
    let every = 1_000;
    let recorded = replay::verify::verify(
        &original,
        &VerifyOptions {
            digest_every: Some(every),
            ..VerifyOptions::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    // The auditor's record: the checkpoints and the digest at the end.
    let mut expect = recorded.checkpoints.clone();
    expect.push((recorded.last_seq, recorded.digest));
    let failure = verify_fails(
        &log,
        &VerifyOptions {
            expect,
            ..VerifyOptions::default()
        },
    )
    .await;
    let seq = last_of_subject as u64 + 1;
    let checkpoint = (seq.div_ceil(every) * every).min(recorded.last_seq);
    assert_eq!(failure.seq, checkpoint, "{failure}");
    let Divergence::Digest { since, .. } = failure.divergence else {
        panic!("{failure}")
    };
    assert_eq!(since, (seq > every).then_some((seq - 1) / every * every));
    assert!(Digest::parse(&recorded.digest.to_string()).is_ok());

    // `erp verify` on a tampered ledger: the copy with the reordered events, as `LEDGER` on a
    // second server.
    let other = TestNats::start();
    let tampered_ledger = write_copy(&other, ledger_config(), &reordered).await;
    drop(tampered_ledger);
    let out = erp(&other.url(), &["verify", "--quiet"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("verification failed at sequence {}", middle + 1)),
        "{stderr}"
    );
    let out = erp(
        &nats.url(),
        &[
            "verify",
            "--quiet",
            "--expect",
            &format!("{}:{}", report.last_seq, report.digest),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&report.digest.to_string()));
}

#[tokio::test]
async fn the_write_model_replays_to_any_sequence_and_points_are_checked() {
    // Goal: `state` replays agree with the processor's own recovery at the same sequence;
    // points beyond the log's end are refused with the log's end named.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let client = command_client(&nats).await;
    crate::processor::setup(&client, &["A"]).await;
    let first = accepted_seq(&client, receipt(5, "2011-03-01T09:00:00Z")).await;
    accepted_seq(&client, receipt(6, "2011-03-02T09:00:00Z")).await;
    processor.stop().await;
    let log = nats.open(ledger_config()).await;
    let replayed = replay::replay::<_, WriteModel>(&log, &[Resolved::at_seq(first)], |_| {})
        .await
        .unwrap();
    let row = replay::Model::value(&replayed.built[0].model, "bal.A.WH1").unwrap();
    assert_eq!(row["on_hand"], 5);
    let last = log.last_sequence().await.unwrap();
    let err = replay::point::resolve(&log, Point::seq(last + 1))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("last sequence is {last}")),
        "{err}"
    );
    let out = erp(
        &nats.url(),
        &["replay", "ats", "--as-effective", "March 1st"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--as-effective: `March 1st` is not a time")
    );
}
