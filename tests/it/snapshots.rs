//! Processor snapshots against real processes: an `erp processor` that dies halfway through
//! storing a snapshot, again and again under load, and one restarted on a damaged snapshot.
//! Each time: nothing acknowledged is lost, every command sent again gets its first answer and
//! appends nothing, and a model loaded from the stored snapshot equals one rebuilt from the
//! whole ledger.

use std::sync::Arc;

use commands::Processor;
use commands::processor::Recovered;
use commands::snapshot::{self, SnapshotError};
use ledger::EventLog;
use ledger::jetstream::JetStreamLog;

use crate::faults::{Supervised, check_ledger_after_recovery, load_until_answered};
use crate::harness::{TestNats, ledger_config};
use crate::projections::uci_bodies;

async fn snapshot_store(log: &JetStreamLog) -> async_nats::jetstream::object_store::ObjectStore {
    let bucket = commands::service::snapshot_bucket(log.config());
    log.jetstream()
        .get_object_store(&bucket)
        .await
        .expect("the processor made its snapshot store")
}

async fn stored_snapshot(log: &JetStreamLog) -> Vec<u8> {
    ledger::objects::read(&snapshot_store(log).await, snapshot::OBJECT_NAME)
        .await
        .unwrap()
        .expect("a snapshot is stored")
}

/// Loads `bytes` as a processor starting on the ledger would, and checks that the model it
/// gets equals the one a full replay builds.
async fn recover_and_compare(nats: &TestNats, bytes: &[u8]) -> Recovered {
    let (restored, recovered) =
        Processor::recover_from(nats.open(ledger_config()).await, Some(bytes))
            .await
            .unwrap();
    let scratch = Processor::recover(nats.open(ledger_config()).await)
        .await
        .unwrap();
    assert_eq!(restored.applied_seq(), scratch.applied_seq());
    assert!(
        restored.state() == scratch.state(),
        "the model loaded from the snapshot ({recovered:?}) differs from a full replay"
    );
    recovered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_while_writing_its_snapshot_comes_back_from_the_last_whole_one() {
    // Goal: a processor process that dies (abort, as kill -9) halfway through storing its
    // second snapshot, every time it runs, under a two-day UCI load: each restart loads the
    // last whole snapshot (the half-written one never replaces it), the client's retries get
    // first answers, nothing is duplicated, and the snapshot left at the end matches the
    // ledger and a full replay.
    let nats = TestNats::start();
    let log = nats.open(ledger_config()).await;
    let url = nats.url();
    let processor = Supervised::run_with_env(
        ["processor", "--nats", &url, "--snapshot-every", "3000"]
            .map(String::from)
            .to_vec(),
        vec![("ERP_FAULT_ABORT_SNAPSHOT".into(), "2".into())],
    );
    let bodies = Arc::new(uci_bodies(2));
    let answers = load_until_answered(url.clone(), bodies.clone()).await;

    // Half-written snapshots left chunks no stored object names: proof the aborts hit
    // mid-write.
    let store = snapshot_store(&log).await;
    let object = store.info(snapshot::OBJECT_NAME).await.unwrap();
    let bucket = commands::service::snapshot_bucket(log.config());
    let mut stream = log
        .jetstream()
        .get_stream(format!("OBJ_{bucket}"))
        .await
        .unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    assert!(
        stored > object.chunks as u64 + 1,
        "no half-written snapshot was left behind ({stored} messages, {} chunks in the object)",
        object.chunks
    );
    let last = log.last_sequence().await.unwrap();
    let body = snapshot::decode(&stored_snapshot(&log).await).unwrap();
    assert!(body.applied_seq > 0 && body.applied_seq <= last);

    check_ledger_after_recovery(&log, &url, &bodies, &answers).await;
    processor.stop();
    let recovered = recover_and_compare(&nats, &stored_snapshot(&log).await).await;
    assert!(
        matches!(recovered, Recovered::FromSnapshot { .. }),
        "{recovered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_foreign_processor_snapshot_is_refused_and_the_ledger_replayed_whole() {
    // Goal: a stored snapshot damaged on purpose, one of another format, and one taken on
    // another ledger are each refused with their reason; a processor process started on the
    // damaged one rebuilds from the whole ledger and answers every command as before; a clean
    // stop then leaves a sound snapshot again.
    let nats = TestNats::start();
    let log = nats.open(ledger_config()).await;
    let url = nats.url();
    let args = ["processor", "--nats", &url].map(String::from).to_vec();
    let processor = Supervised::run(args.clone());
    let bodies = Arc::new(uci_bodies(1));
    let answers = load_until_answered(url.clone(), bodies.clone()).await;
    processor.stop();
    drop(processor);

    // A clean stop wrote a snapshot at the ledger's end, and it loads.
    let sound = stored_snapshot(&log).await;
    let body = snapshot::decode(&sound).unwrap();
    assert_eq!(body.applied_seq, log.last_sequence().await.unwrap());
    let recovered = recover_and_compare(&nats, &sound).await;
    assert_eq!(
        recovered,
        Recovered::FromSnapshot {
            seq: body.applied_seq
        }
    );

    // Damaged in the middle.
    let mut damaged = sound.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    assert_eq!(
        recover_and_compare(&nats, &damaged).await,
        Recovered::SnapshotRefused {
            reason: SnapshotError::Checksum
        }
    );
    // Another format.
    let mut other_format = sound.clone();
    other_format[8..12].copy_from_slice(&(snapshot::FORMAT_VERSION + 1).to_le_bytes());
    assert!(matches!(
        recover_and_compare(&nats, &other_format).await,
        Recovered::SnapshotRefused {
            reason: SnapshotError::Version { .. }
        }
    ));
    // Sound bytes, but taken on another ledger as long as this one.
    let mut foreign = body.clone();
    foreign.record_hash = ledger::EventHash([7; 32]);
    let refused = recover_and_compare(&nats, &snapshot::encode(&foreign).unwrap()).await;
    assert!(
        matches!(&refused, Recovered::SnapshotRefused { reason: SnapshotError::Mismatch(m) } if m.contains(&body.applied_seq.to_string())),
        "{refused:?}"
    );
    // Or further along than this ledger.
    let mut ahead = body.clone();
    ahead.applied_seq += 10;
    assert!(matches!(
        recover_and_compare(&nats, &snapshot::encode(&ahead).unwrap()).await,
        Recovered::SnapshotRefused {
            reason: SnapshotError::Mismatch(_)
        }
    ));

    // A real processor started on the damaged snapshot.
    ledger::objects::write(&snapshot_store(&log).await, snapshot::OBJECT_NAME, &damaged)
        .await
        .unwrap();
    let processor = Supervised::run(args);
    check_ledger_after_recovery(&log, &url, &bodies, &answers).await;
    processor.stop();
    let rewritten = stored_snapshot(&log).await;
    assert_eq!(
        snapshot::decode(&rewritten).unwrap().applied_seq,
        log.last_sequence().await.unwrap()
    );
}
