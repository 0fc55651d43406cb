//! The JetStream event log against a real nats-server: atomic batches, optimistic
//! concurrency, fencing, reads, the hash chain, stream protection and restarts.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use ledger::chain::ChainVerifier;
use ledger::events::{Event, StockAdjusted};
use ledger::jetstream::{JetStreamLog, OpenError};
use ledger::values::{
    Actor, ActorId, EntityId, LocationId, QtyDelta, ReasonCode, Role, Sku, Timestamp,
};
use ledger::{
    AppendBatch, AppendError, EventDraft, EventLog, Expectation, Extended, Head, LogCursor,
    LogRecord, ReadFrom, ReadUntil, RecordedEvent, Subject,
};
use uuid::Uuid;

use crate::harness::{TestNats, ledger_config, scratch_config};

pub(crate) fn stock(code: &str) -> Subject {
    Subject::Stock(Sku::new(code).unwrap())
}

fn adjustment(subject: &Subject, delta: i64) -> EventDraft {
    let Subject::Stock(sku) = subject else {
        panic!("stock subjects only")
    };
    EventDraft {
        event_id: Uuid::now_v7(),
        subject: subject.clone(),
        command_id: Uuid::now_v7(),
        correlation_id: Uuid::now_v7(),
        actor: Actor {
            id: ActorId::new("tester").unwrap(),
            role: Role::new("clerk").unwrap(),
        },
        legal_entity: EntityId::new("UK01").unwrap(),
        effective_at: Timestamp::parse("2011-06-30T12:00:00Z").unwrap(),
        event: Event::StockAdjusted(StockAdjusted {
            sku: sku.clone(),
            location: LocationId::new("WH1").unwrap(),
            lot: None,
            delta: QtyDelta::new(delta).unwrap(),
            reason: ReasonCode::new("found").unwrap(),
            note: String::new(),
            approved_by: None,
        }),
    }
}

fn batch(expectations: &[(&Subject, Head)], events: Vec<EventDraft>) -> AppendBatch {
    AppendBatch {
        expected_last_seq: None,
        expectations: expectations
            .iter()
            .map(|(s, head)| Expectation {
                subject: (*s).clone(),
                head: *head,
            })
            .collect(),
        events,
    }
}

/// Appends one event to `subject` at its current head.
async fn append_one(
    log: &JetStreamLog,
    subject: &Subject,
    delta: i64,
) -> Result<ledger::Appended, AppendError> {
    let head = log.head(subject).await.unwrap().unwrap_or(Head::EMPTY);
    log.append(batch(&[(subject, head)], vec![adjustment(subject, delta)]))
        .await
}

async fn read_all(log: &JetStreamLog, from: ReadFrom) -> Vec<LogRecord> {
    let mut cursor = log.read(from, ReadUntil::CaughtUp).await.unwrap();
    let mut records = Vec::new();
    while let Some(record) = cursor.next().await {
        records.push(record.unwrap());
    }
    records
}

fn events(records: &[LogRecord]) -> Vec<&RecordedEvent> {
    records
        .iter()
        .filter_map(|r| match r {
            LogRecord::Event(e) => Some(e),
            LogRecord::Marker { .. } | LogRecord::Foreign(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn atomic_batch_is_all_or_nothing_when_one_subject_is_stale() {
    // Goal: a batch whose expectation for one subject is stale stores nothing at all, not even
    // the events on subjects whose expectations were right.
    let nats = TestNats::start();
    let log = nats.open(ledger_config()).await;
    let (a, b) = (stock("A"), stock("B"));
    append_one(&log, &a, 5).await.unwrap();
    let before = log.last_sequence().await.unwrap();

    let stale = batch(
        &[(&b, Head::EMPTY), (&a, Head::EMPTY)],
        vec![adjustment(&b, 1), adjustment(&a, 1)],
    );
    let err = log.append(stale).await.unwrap_err();
    assert!(matches!(err, AppendError::Conflict { .. }), "{err:?}");

    assert_eq!(log.last_sequence().await.unwrap(), before);
    assert!(log.read_subject(&b).await.unwrap().is_empty());
    assert_eq!(log.read_subject(&a).await.unwrap().len(), 1);
    // The writer recovers: the same batch with the right expectation commits.
    let head_a = log.head(&a).await.unwrap().unwrap();
    let fresh = batch(
        &[(&b, Head::EMPTY), (&a, head_a)],
        vec![adjustment(&b, 1), adjustment(&a, 1)],
    );
    let appended = log.append(fresh).await.unwrap();
    assert_eq!(appended.events.len(), 2);
}

#[tokio::test]
async fn two_concurrent_writers_on_one_subject_exactly_one_wins() {
    // Goal: two writers (as in a failover) that decided on the same head of a subject race;
    // exactly one append is stored, the other gets Conflict, every round.
    let nats = TestNats::start();
    let first = nats.open(ledger_config()).await;
    let second = nats.open(ledger_config()).await;
    race_on_one_subject(&first, &second, 20).await;
    assert_eq!(first.read_subject(&stock("HOT")).await.unwrap().len(), 20);
}

/// `rounds` times, two writers append to subject `HOT` on the same head at once: exactly one
/// is stored, the other gets `Conflict`.
pub(crate) async fn race_on_one_subject(
    first: &JetStreamLog,
    second: &JetStreamLog,
    rounds: usize,
) {
    let subject = stock("HOT");
    for round in 0..rounds {
        let head = first.head(&subject).await.unwrap().unwrap_or(Head::EMPTY);
        let (r1, r2) = tokio::join!(
            first.append(batch(&[(&subject, head)], vec![adjustment(&subject, 1)])),
            second.append(batch(&[(&subject, head)], vec![adjustment(&subject, 1)])),
        );
        let wins = [&r1, &r2].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {r1:?} / {r2:?}");
        for r in [r1, r2] {
            if let Err(e) = r {
                assert!(
                    matches!(e, AppendError::Conflict { .. }),
                    "round {round}: {e:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_second_writer_fences_out_the_first_even_on_other_subjects() {
    // Goal: after another writer appended anything, this writer's next batch fails even if its
    // own subject expectations are right (stream-wide fence), and succeeds after resync.
    let nats = TestNats::start();
    let first = nats.open(ledger_config()).await;
    let second = nats.open(ledger_config()).await;
    append_one(&first, &stock("A"), 1).await.unwrap();
    append_one(&second, &stock("B"), 1).await.unwrap();

    let c = stock("C");
    let err = first
        .append(batch(&[(&c, Head::EMPTY)], vec![adjustment(&c, 1)]))
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::Conflict { .. }), "{err:?}");
    assert!(first.read_subject(&c).await.unwrap().is_empty());

    let appended = first
        .append(batch(&[(&c, Head::EMPTY)], vec![adjustment(&c, 1)]))
        .await
        .unwrap();
    // 2 batches of (1 event + 1 marker) came before it.
    assert_eq!(appended.events[0].seq, 5);
}

#[tokio::test]
async fn interleaved_writers_never_store_a_partial_or_misplaced_batch() {
    // Goal: two writers appending multi-event batches at the same time, each retrying on
    // conflict, leave a stream of whole batches whose chains all verify.
    let nats = TestNats::start();
    let first = nats.open(ledger_config()).await;
    let second = nats.open(ledger_config()).await;
    async fn run(log: &JetStreamLog, name: &str) -> usize {
        let subjects: Vec<Subject> = (0..4).map(|i| stock(&format!("{name}{i}"))).collect();
        let mut committed = 0;
        for _ in 0..25 {
            for _attempt in 0..50 {
                let mut expectations = Vec::new();
                for s in &subjects {
                    expectations.push((s, log.head(s).await.unwrap().unwrap_or(Head::EMPTY)));
                }
                let drafts = subjects
                    .iter()
                    .flat_map(|s| [adjustment(s, 1), adjustment(s, 2)])
                    .collect();
                match log.append(batch(&expectations, drafts)).await {
                    Ok(_) => {
                        committed += 1;
                        break;
                    }
                    Err(AppendError::Conflict { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        committed
    }
    let (n1, n2) = tokio::join!(run(&first, "X"), run(&second, "Y"));
    assert_eq!((n1, n2), (25, 25));

    let records = read_all(&first, ReadFrom::Start).await;
    let seqs: Vec<u64> = records.iter().map(LogRecord::seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gaps");
    assert_eq!(records.len(), 50 * 9, "50 batches of 8 events and a marker");
    // Each batch's 8 events sit together, followed by its marker.
    for chunk in records.chunks(9) {
        assert!(matches!(chunk[8], LogRecord::Marker { .. }));
        // Subjects are `sku.X<n>` or `sku.Y<n>`: the letter names the writer.
        let writers: std::collections::HashSet<_> = events(chunk)
            .iter()
            .map(|e| e.envelope.subject.to_string()[4..5].to_owned())
            .collect();
        assert_eq!(writers.len(), 1, "a batch mixes two writers");
    }
    let mut verifier = ChainVerifier::new();
    for e in events(&records) {
        verifier.check(e).unwrap();
    }
}

#[tokio::test]
async fn reading_back_yields_the_same_envelopes() {
    // Goal: what is appended is what every read path returns: whole-log reads from the start,
    // from a sequence and from a time, and per-subject reads, with the sequences and hashes
    // the append reported.
    let nats = TestNats::start();
    let log = nats.open(ledger_config()).await;
    let (a, b) = (stock("BANK CHARGES"), stock("15056bl"));
    let mut appended = Vec::new();
    let mut drafts = Vec::new();
    for round in 0..3 {
        let heads = (
            log.head(&a).await.unwrap().unwrap_or(Head::EMPTY),
            log.head(&b).await.unwrap().unwrap_or(Head::EMPTY),
        );
        let batch_drafts = vec![
            adjustment(&a, round),
            adjustment(&b, -round),
            adjustment(&a, 10 + round),
        ];
        drafts.extend(batch_drafts.clone());
        let result = log
            .append(batch(&[(&a, heads.0), (&b, heads.1)], batch_drafts))
            .await
            .unwrap();
        appended.extend(result.events);
    }
    let records = read_all(&log, ReadFrom::Start).await;
    let read = events(&records);
    assert_eq!(read.len(), drafts.len());
    for ((event, draft), placed) in read.iter().zip(&drafts).zip(&appended) {
        assert_eq!(event.seq, placed.seq);
        assert_eq!(event.hash, placed.hash);
        assert_eq!(event.envelope.event, draft.event);
        assert_eq!(event.envelope.event_id, draft.event_id);
        assert_eq!(event.envelope.subject, draft.subject);
        assert_eq!(event.envelope.effective_at, draft.effective_at);
        assert_eq!(event.stored_version, 1);
    }
    let subject_a = log.read_subject(&a).await.unwrap();
    assert_eq!(subject_a.len(), 6);
    assert!(subject_a.iter().all(|e| e.envelope.subject == a));

    let from_fifth = read_all(&log, ReadFrom::Sequence(5)).await;
    assert_eq!(from_fifth.first().map(LogRecord::seq), Some(5));
    assert_eq!(
        from_fifth.last().map(LogRecord::seq),
        records.last().map(LogRecord::seq)
    );

    let mark = Timestamp::new(chrono::Utc::now());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = append_one(&log, &a, 99).await.unwrap();
    let after_mark = read_all(&log, ReadFrom::Time(mark)).await;
    assert_eq!(events(&after_mark).len(), 1);
    assert_eq!(events(&after_mark)[0].seq, late.events[0].seq);

    let mut bounded = log
        .read(ReadFrom::Start, ReadUntil::Sequence(3))
        .await
        .unwrap();
    let mut count = 0;
    while let Some(r) = bounded.next().await {
        assert!(r.unwrap().seq() <= 3);
        count += 1;
    }
    assert_eq!(count, 3);
}

#[tokio::test]
async fn a_read_to_the_end_reads_on_when_asked_and_the_log_has_grown() {
    // Goal: a read bounded by the stream's end can move its bound (`extend`), so a walk that
    // ended inside a batch being stored reads the rest of it; it says when nothing was added.
    let nats = TestNats::start();
    let log = nats.open(ledger_config()).await;
    let a = stock("A");
    append_one(&log, &a, 1).await.unwrap();
    let mut cursor = log
        .read(ReadFrom::Start, ReadUntil::CaughtUp)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(record) = cursor.next().await {
        seen.push(record.unwrap().seq());
    }
    assert_eq!(seen, vec![1, 2]);
    assert_eq!(cursor.extend().await.unwrap(), Extended::Unchanged);
    assert!(cursor.next().await.is_none());

    append_one(&log, &a, 2).await.unwrap();
    assert_eq!(cursor.extend().await.unwrap(), Extended::Grown);
    while let Some(record) = cursor.next().await {
        seen.push(record.unwrap().seq());
    }
    assert_eq!(seen, vec![1, 2, 3, 4]);
    assert_eq!(cursor.extend().await.unwrap(), Extended::Unchanged);

    // A read that follows the log has no bound to move.
    let mut follow = log.read(ReadFrom::Start, ReadUntil::Follow).await.unwrap();
    assert_eq!(follow.extend().await.unwrap(), Extended::Never);
}

#[tokio::test]
async fn a_subscription_delivers_events_appended_after_it_started() {
    // Goal: `ReadUntil::Follow` keeps delivering new events from a checkpoint.
    let nats = TestNats::start();
    let log = nats.open(ledger_config()).await;
    let a = stock("A");
    append_one(&log, &a, 1).await.unwrap();
    let mut cursor = log
        .read(ReadFrom::Sequence(3), ReadUntil::Follow)
        .await
        .unwrap();
    append_one(&log, &a, 2).await.unwrap();
    let record = tokio::time::timeout(Duration::from_secs(5), cursor.next())
        .await
        .expect("delivered within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(record.seq(), 3);
}

/// Copies every stored message of `from` into the scratch stream `to`, passing each through
/// `edit` (which may alter, drop or reorder them), as a tamperer with disk access could.
async fn copy_messages(
    js: &jetstream::Context,
    from: &str,
    to_prefix: &str,
    last: u64,
    edit: impl Fn(Vec<(String, Bytes)>) -> Vec<(String, Bytes)>,
) {
    let source = js.get_stream(from).await.unwrap();
    let mut messages = Vec::new();
    for seq in 1..=last {
        let msg = source.direct_get(seq).await.unwrap();
        let relative = msg.subject.split_once('.').unwrap().1.to_owned();
        messages.push((relative, msg.payload));
    }
    for (relative, payload) in edit(messages) {
        js.publish(format!("{to_prefix}.{relative}"), payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

async fn verify(log: &JetStreamLog) -> Result<u64, ledger::chain::ChainBreak> {
    let mut verifier = ChainVerifier::new();
    for record in read_all(log, ReadFrom::Start).await {
        if let LogRecord::Event(e) = record {
            verifier.check(&e)?;
        }
    }
    Ok(verifier.checked())
}

#[tokio::test]
async fn hash_chain_verifies_and_names_an_altered_removed_or_reordered_event() {
    // Goal: the chain of an untouched log verifies; a copy with one event altered, one removed
    // or two swapped fails verification, naming the exact sequence that was tampered with.
    let nats = TestNats::start();
    let log = nats.open(scratch_config("ORIGINAL", "orig")).await;
    let (a, b) = (stock("A"), stock("B"));
    for i in 0..4 {
        append_one(&log, &a, i + 1).await.unwrap();
        append_one(&log, &b, i + 1).await.unwrap();
    }
    assert_eq!(verify(&log).await.unwrap(), 8);
    let last = log.last_sequence().await.unwrap();
    let js = log.jetstream().clone();
    // Layout: each append is (event, marker): events at 1,3,5,...; A at 1,5,9,13; B at 3,7,11,15.

    let altered = nats.open(scratch_config("ALTERED", "alt")).await;
    copy_messages(&js, "ORIGINAL", "alt", last, |mut msgs| {
        // Flip one byte inside the payload of the event at sequence 5 (A's second event).
        let mut bytes = msgs[4].1.to_vec();
        let end = bytes.len() - 1;
        bytes[end - 3] ^= 0x01;
        msgs[4].1 = Bytes::from(bytes);
        msgs
    })
    .await;
    let err = verify(&altered).await.unwrap_err();
    assert_eq!((err.seq, err.previous_seq), (9, Some(5)), "{err}");
    assert!(err.to_string().contains("sequence 5 was altered"), "{err}");

    let removed = nats.open(scratch_config("REMOVED", "rem")).await;
    copy_messages(&js, "ORIGINAL", "rem", last, |mut msgs| {
        msgs.remove(6); // B's second event (sequence 7)
        msgs
    })
    .await;
    let err = verify(&removed).await.unwrap_err();
    // B's third event, originally at 11, is now at 10 and names the removed event's hash.
    assert_eq!((err.seq, err.previous_seq), (10, Some(3)), "{err}");

    let reordered = nats.open(scratch_config("REORDERED", "reo")).await;
    copy_messages(&js, "ORIGINAL", "reo", last, |mut msgs| {
        msgs.swap(0, 4); // A's first and second events
        msgs
    })
    .await;
    let err = verify(&reordered).await.unwrap_err();
    assert_eq!((err.seq, err.previous_seq), (1, None), "{err}");
}

#[tokio::test]
async fn opening_refuses_a_stream_that_lacks_atomic_publish() {
    // Goal: a stream created without atomic batches (as a 2.9 server silently does) is refused
    // at start-up, naming the setting.
    let nats = TestNats::start();
    let client = nats.connect().await;
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "LEDGER".into(),
        subjects: vec!["led.>".into()],
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = JetStreamLog::open(client, ledger_config())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            OpenError::Misconfigured {
                setting: "allow_atomic_publish",
                ..
            }
        ),
        "{err}"
    );
    assert!(ledger::jetstream::check_server_version("2.9.10").is_err());
    assert!(ledger::jetstream::check_server_version("2.12.0").is_ok());
}

#[tokio::test]
async fn the_ledger_stream_refuses_deletes_and_purges() {
    // Goal: nobody can remove history from the production stream configuration.
    let nats = TestNats::start();
    let log = nats.open(ledger_config()).await;
    append_one(&log, &stock("A"), 1).await.unwrap();
    let stream = log.jetstream().get_stream("LEDGER").await.unwrap();
    assert!(stream.delete_message(1).await.is_err());
    assert!(stream.purge().await.is_err());
    assert_eq!(log.last_sequence().await.unwrap(), 2);
}

#[tokio::test]
async fn batch_size_limits_are_enforced_before_sending() {
    // Goal: 999 events fit in one atomic append; 1000 and 0 are refused with a clear error and
    // nothing is stored.
    let nats = TestNats::start();
    let log = nats.open(ledger_config()).await;
    let subjects: Vec<Subject> = (0..999).map(|i| stock(&format!("S{i}"))).collect();
    let full = batch(
        &subjects
            .iter()
            .map(|s| (s, Head::EMPTY))
            .collect::<Vec<_>>(),
        subjects.iter().map(|s| adjustment(s, 1)).collect(),
    );
    let appended = log.append(full).await.unwrap();
    assert_eq!(appended.last_seq, 1000);

    let extra = stock("EXTRA");
    let mut too_many: Vec<EventDraft> = (0..1000).map(|_| adjustment(&extra, 1)).collect();
    let err = log
        .append(batch(&[(&extra, Head::EMPTY)], too_many.clone()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 999"), "{err}");
    too_many.clear();
    let err = log.append(batch(&[], too_many)).await.unwrap_err();
    assert!(err.to_string().contains("at least one event"), "{err}");
    assert_eq!(log.last_sequence().await.unwrap(), 1000);
}

#[tokio::test]
async fn acknowledged_events_survive_a_server_kill_and_the_writer_resumes() {
    // Goal: kill -9 the server after acknowledged appends; after a restart every acknowledged
    // event is there, the chain verifies, and the same writer appends again.
    let mut nats = TestNats::start();
    let log = nats
        .open(ledger::jetstream::LogConfig {
            ack_timeout: Duration::from_secs(2),
            ..ledger_config()
        })
        .await;
    let a = stock("A");
    for i in 0..10 {
        append_one(&log, &a, i).await.unwrap();
    }
    nats.server.kill();
    nats.server.restart().unwrap();
    let mut resumed = None;
    for _ in 0..100 {
        // While the client reconnects, reads and appends fail; retry both.
        if let Ok(Some(head)) = log.head(&a).await
            && let Ok(appended) = log
                .append(batch(&[(&a, head)], vec![adjustment(&a, 100)]))
                .await
        {
            resumed = Some(appended);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = resumed.expect("the writer appends again after the restart");
    // An attempt whose answer was lost in the restart may have committed too, so the resumed
    // event is the 11th or a later one; every event is whole and chained either way.
    assert!(resumed.events[0].seq >= 21);
    assert_eq!(
        verify(&log).await.unwrap(),
        resumed.events[0].seq.div_ceil(2)
    );
}

/// Appends `batches` batches of `per_batch` adjustments to `subject`; its head after them.
async fn fill(log: &JetStreamLog, subject: &Subject, batches: usize, per_batch: usize) -> Head {
    let mut head = Head::EMPTY;
    for _ in 0..batches {
        let events = (0..per_batch).map(|_| adjustment(subject, 1)).collect();
        let appended = log.append(batch(&[(subject, head)], events)).await.unwrap();
        let last = appended.events.last().unwrap();
        head = Head {
            seq: last.seq,
            hash: last.hash,
        };
    }
    head
}

#[tokio::test]
async fn a_subject_read_whose_server_stops_answering_fails_instead_of_waiting_for_ever() {
    // Goal: the processor reads a subject on its command path (an archived order called
    // back); when the stream stops answering halfway through (a lost leader, a paused server)
    // the read ends with an error after the API timeout, so the command is answered
    // `unavailable` and the processor goes on, instead of waiting for ever.
    let nats = TestNats::start();
    let log = nats.open(ledger_config()).await;
    let subject = stock("LONG");
    let head = fill(&log, &subject, 20, 100).await;
    let mut read = log.subject_events(&subject, 0, head.seq).await.unwrap();
    assert!(read.next().await.unwrap().is_some());
    nats.server.pause(true);
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match read.next().await {
                Ok(Some(_)) => {}
                other => return other,
            }
        }
    })
    .await;
    nats.server.pause(false);
    let ended = ended.expect("the read still waits a minute after its server stopped answering");
    let error = ended.expect_err("2,000 events were stored; the read cannot end cleanly");
    assert!(error.to_string().contains("no event"), "{error}");
    eprintln!("the stalled read failed after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_bounded_read_whose_server_stops_answering_fails_instead_of_waiting_for_ever() {
    // Goal: a read up to the log's end (the processor's catch-up at start, `erp verify`, a
    // replay) whose server stops answering partway ends with an error after four API timeouts
    // instead of waiting for ever; the messages it already has are still given first.
    let nats = TestNats::start();
    let log = nats
        .open(ledger::jetstream::LogConfig {
            api_timeout: Duration::from_secs(1),
            ..ledger_config()
        })
        .await;
    let subject = stock("LONG");
    // More messages than a subscription buffers (65,536), so the rest must come from the
    // server.
    let head = fill(&log, &subject, 90, 900).await;
    let mut read = log
        .read(ReadFrom::Start, ReadUntil::CaughtUp)
        .await
        .unwrap();
    assert!(read.next().await.unwrap().is_ok());
    nats.server.pause(true);
    let started = std::time::Instant::now();
    let (mut records, mut ended) = (1u64, None);
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(next) = read.next().await {
            match next {
                Ok(_) => records += 1,
                Err(e) => {
                    ended = Some(e);
                    break;
                }
            }
        }
    })
    .await;
    nats.server.pause(false);
    waited.expect("the read still waits a minute after its server stopped answering");
    let error = ended.unwrap_or_else(|| {
        panic!(
            "{records} of {} records read, then the read ended cleanly",
            head.seq
        )
    });
    assert!(records < head.seq, "{records}");
    assert!(
        error.to_string().contains("no message of the log arrived"),
        "{error}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    eprintln!(
        "the stalled read failed after {:?}, {records} records in",
        started.elapsed()
    );
}
