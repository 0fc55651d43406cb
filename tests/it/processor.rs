//! The command processor end to end: real nats-server, real JetStream ledger, commands sent
//! over request/reply and through the COMMANDS stream.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use commands::Outcome;
use commands::client::CommandClient;
use futures::StreamExt;
use ledger::chain::ChainVerifier;
use ledger::jetstream::JetStreamLog;
use ledger::values::Sku;
use ledger::{EventLog, LogCursor, LogRecord, ReadFrom, ReadUntil, Subject};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{TestNats, TestProcessor, command_client, ledger_config};

fn command(kind: &str, data: Value) -> Value {
    json!({
        "command_id": Uuid::now_v7(),
        "actor": {"id": "tester", "role": "clerk"},
        "legal_entity": "UK01",
        "effective_at": "2011-06-30T12:00:00Z",
        "type": kind,
        "data": data,
    })
}

async fn send(client: &CommandClient, command: &Value) -> Outcome {
    client
        .submit_json(Bytes::from(command.to_string()))
        .await
        .expect("an answer")
}

async fn accepted(client: &CommandClient, kind: &str, data: Value) -> Outcome {
    let outcome = send(client, &command(kind, data)).await;
    assert!(outcome.is_accepted(), "{kind}: {outcome:?}");
    outcome
}

/// Location WH1 (UK), channel web, and the given items.
pub(crate) async fn setup(client: &CommandClient, skus: &[&str]) {
    accepted(
        client,
        "location.define",
        json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
    )
    .await;
    accepted(client, "channel.define", json!({"channel": "web"})).await;
    for sku in skus {
        accepted(client, "item.define", json!({"sku": sku})).await;
    }
}

async fn receive(client: &CommandClient, sku: &str, qty: i64) {
    let data = json!({"sku": sku, "location": "WH1", "qty": qty, "unit_cost": {"amount": "1.00", "currency": "GBP"}});
    accepted(client, "stock.receive", data).await;
}

fn place(order: &str, sku: &str, qty: i64) -> Value {
    command(
        "order.place",
        json!({"order": order, "channel": "web", "ship_to_region": "UK",
               "lines": [{"line": 1, "sku": sku, "qty": qty, "unit_price": {"amount": "2.55", "currency": "GBP"}}]}),
    )
}

/// Every event in the ledger, with the chains verified and the sequence checked for gaps.
async fn ledger_events(log: &JetStreamLog) -> Vec<ledger::RecordedEvent> {
    let mut cursor = log
        .read(ReadFrom::Start, ReadUntil::CaughtUp)
        .await
        .unwrap();
    let mut verifier = ChainVerifier::new();
    let mut events = Vec::new();
    let mut expected = 1;
    while let Some(record) = cursor.next().await {
        let record = record.unwrap();
        assert_eq!(record.seq(), expected, "gap in the ledger");
        expected += 1;
        if let LogRecord::Event(e) = record {
            verifier.check(&e).unwrap();
            events.push(e);
        }
    }
    events
}

#[tokio::test]
async fn commands_are_answered_and_a_retry_gets_the_first_outcome_forever() {
    // Goal: accepted and rejected commands return their outcome; sending the same command
    // again returns the same outcome and stores nothing; the same id with another body is
    // refused; the outcome can be looked up by id.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let client = command_client(&nats).await;
    setup(&client, &["A"]).await;
    receive(&client, "A", 5).await;

    let order = place("O1", "A", 3);
    let first = send(&client, &order).await;
    let Outcome::Accepted {
        first_seq,
        event_count,
        outcome_seq,
        ..
    } = first.clone()
    else {
        panic!("{first:?}")
    };
    assert_eq!(
        event_count, 4,
        "placed, routed, stock allocated, line allocated"
    );
    assert_eq!(outcome_seq, first_seq + 4);
    let log = nats.open(ledger_config()).await;
    let last = log.last_sequence().await.unwrap();
    assert_eq!(send(&client, &order).await, first);
    assert_eq!(
        log.last_sequence().await.unwrap(),
        last,
        "a retry stores nothing"
    );

    let too_much = command(
        "stock.place_hold",
        json!({"sku": "A", "hold": "H1", "location": "WH1", "qty": 3, "ttl_seconds": 60}),
    );
    let rejected = send(&client, &too_much).await;
    assert!(
        matches!(&rejected, Outcome::Rejected { code, outcome_seq: Some(_), .. } if code == "insufficient_available"),
        "{rejected:?}"
    );
    assert_eq!(send(&client, &too_much).await, rejected);

    let mut changed = order.clone();
    changed["data"]["lines"][0]["qty"] = json!(1);
    let different = send(&client, &changed).await;
    assert!(
        matches!(&different, Outcome::Rejected { code, outcome_seq: None, .. } if code == "duplicate_with_different_body"),
        "{different:?}"
    );

    let id = Uuid::parse_str(order["command_id"].as_str().unwrap()).unwrap();
    assert_eq!(client.outcome(id).await.unwrap(), Some(first));
    assert_eq!(client.outcome(Uuid::now_v7()).await.unwrap(), None);
    processor.stop().await;
}

#[tokio::test]
async fn malformed_commands_are_refused_naming_the_field_and_nothing_is_appended() {
    // Goal: bad input of every kind gets a specific answer naming the field, and the ledger
    // does not change (domain rejections store only their outcome record, never stock events).
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let client = command_client(&nats).await;
    setup(&client, &["A"]).await;
    receive(&client, "A", 5).await;
    let log = nats.open(ledger_config()).await;
    let before = log.last_sequence().await.unwrap();

    let valid = place("O1", "A", 1);
    let with = |path: &[&str], value: Value| {
        let mut c = valid.clone();
        let mut target = &mut c;
        for key in &path[..path.len() - 1] {
            target = if let Ok(i) = key.parse::<usize>() {
                &mut target[i]
            } else {
                &mut target[*key]
            };
        }
        target[path[path.len() - 1]] = value;
        c.to_string().into_bytes()
    };
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"{not json".to_vec(), "command"),
        ("invalid UTF-8", vec![b'{', 0xff, 0xfe, b'}'], "command"),
        ("deep nesting", deep, "command"),
        (
            "deep nesting in data",
            with(
                &["data"],
                serde_json::from_str(&format!("{}{}", "[".repeat(100), "]".repeat(100))).unwrap(),
            ),
            "data",
        ),
        (
            "deeper than the parser allows",
            format!(
                "{{\"command_id\": {}{}}}",
                "[".repeat(3000),
                "]".repeat(3000)
            )
            .into_bytes(),
            "command_id",
        ),
        (
            "huge payload",
            format!("{{\"pad\": \"{}\"}}", "x".repeat(300_000)).into_bytes(),
            "command",
        ),
        ("unknown top field", with(&["extra"], json!(1)), "extra"),
        (
            "unknown data field",
            with(&["data", "colour"], json!("red")),
            "data.colour",
        ),
        (
            "wrong type",
            with(&["data", "lines", "0", "qty"], json!("three")),
            "data.lines[0].qty",
        ),
        (
            "negative quantity",
            with(&["data", "lines", "0", "qty"], json!(-2)),
            "data.lines[0].qty",
        ),
        (
            "empty sku",
            with(&["data", "lines", "0", "sku"], json!("")),
            "data.lines[0].sku",
        ),
        (
            "control char in id",
            with(&["data", "order"], json!("O\u{7}1")),
            "data.order",
        ),
        (
            "float money",
            with(&["data", "lines", "0", "unit_price", "amount"], json!(2.55)),
            "data.lines[0].unit_price.amount",
        ),
        (
            "bad currency",
            with(
                &["data", "lines", "0", "unit_price", "currency"],
                json!("gbp"),
            ),
            "data.lines[0].unit_price.currency",
        ),
        (
            "unknown type",
            with(&["type"], json!("order.teleport")),
            "type",
        ),
        (
            "bad command id",
            with(&["command_id"], json!("not-a-uuid")),
            "command_id",
        ),
        (
            "bad time",
            with(&["effective_at"], json!("yesterday")),
            "effective_at",
        ),
        (
            "missing field",
            with(&["data", "channel"], Value::Null),
            "data.channel",
        ),
    ];
    for (name, bytes, field) in cases {
        let outcome = client
            .submit_json(Bytes::from(bytes))
            .await
            .expect("an answer");
        match outcome {
            Outcome::Invalid {
                field: got,
                message,
                code,
                ..
            } => {
                assert_eq!(code, "invalid_command", "{name}");
                assert_eq!(got, field, "{name}: {message}");
                assert!(!message.is_empty());
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(
        log.last_sequence().await.unwrap(),
        before,
        "invalid commands append nothing"
    );

    // Valid commands that break business rules: only their outcome record is stored.
    let stock_before = log
        .read_subject(&Subject::Stock(Sku::new("A").unwrap()))
        .await
        .unwrap()
        .len();
    for (kind, data, code) in [
        (
            "order.place",
            place("O2", "NOPE", 1)["data"].clone(),
            "unknown_sku",
        ),
        (
            "stock.adjust",
            json!({"sku": "A", "location": "WH1", "delta": -50, "reason": "lost"}),
            "insufficient_stock",
        ),
        (
            "stock.receive",
            json!({"sku": "A.B*C>", "location": "WH1", "qty": 1, "unit_cost": {"amount": "1", "currency": "GBP"}}),
            "unknown_sku",
        ),
    ] {
        let outcome = send(&client, &command(kind, data)).await;
        assert!(
            matches!(&outcome, Outcome::Rejected { code: c, .. } if c == code),
            "{outcome:?}"
        );
    }
    assert_eq!(
        log.read_subject(&Subject::Stock(Sku::new("A").unwrap()))
            .await
            .unwrap()
            .len(),
        stock_before
    );
    let events = ledger_events(&log).await;
    let after: Vec<_> = events.iter().filter(|e| e.seq > before).collect();
    assert_eq!(after.len(), 3);
    assert!(
        after
            .iter()
            .all(|e| matches!(e.envelope.subject, Subject::Command(_)))
    );
    processor.stop().await;
}

#[tokio::test]
async fn commands_sent_through_the_stream_are_acknowledged_once_decided() {
    // Goal: a command published durably to the COMMANDS stream is decided, its outcome is
    // published to the Erp-Reply-To subject, and the message is acknowledged.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let client = command_client(&nats).await;
    setup(&client, &["A"]).await;
    let nats_client = nats.connect().await;
    let inbox = nats_client.new_inbox();
    let mut outcomes = nats_client.subscribe(inbox.clone()).await.unwrap();
    let js = async_nats::jetstream::new(nats_client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ledger::subject::commands::REPLY_TO_HEADER, inbox.as_str());
    let receipt = command(
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": 7, "unit_cost": {"amount": "1", "currency": "GBP"}}),
    );
    let ack = js
        .publish_with_headers("cmd.UK01", headers, Bytes::from(receipt.to_string()))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "COMMANDS");
    let msg = tokio::time::timeout(Duration::from_secs(10), outcomes.next())
        .await
        .unwrap()
        .unwrap();
    let outcome: Outcome = serde_json::from_slice(&msg.payload).unwrap();
    assert!(outcome.is_accepted(), "{outcome:?}");
    let stream = js.get_stream("COMMANDS").await.unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("processor").await.unwrap();
    let mut pending = u64::MAX;
    for _ in 0..50 {
        let info = consumer.info().await.unwrap();
        pending = info.num_ack_pending as u64 + info.num_pending;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending, 0, "the command message was acknowledged");
    processor.stop().await;
}

#[tokio::test]
async fn two_processors_at_once_allocate_exactly_the_stock_there_is() {
    // Goal: two processors running against one ledger (as during a failover), 1,000 concurrent
    // one-unit orders on the same SKUs holding 100 units: every order is answered exactly once,
    // exactly 100 units are allocated, and no event is lost or duplicated.
    let nats = TestNats::start();
    let first = TestProcessor::start(&nats).await;
    let second = TestProcessor::start(&nats).await;
    let client = command_client(&nats).await;
    let skus = ["H0", "H1", "H2", "H3", "H4"];
    setup(&client, &skus).await;
    for sku in skus {
        receive(&client, sku, 20).await;
    }
    let mut tasks = Vec::new();
    for worker in 0..20 {
        let client = command_client(&nats).await;
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..50 {
                let order = place(
                    &format!("W{worker}-{i}"),
                    ["H0", "H1", "H2", "H3", "H4"][(worker + i) % 5],
                    1,
                );
                let id = order["command_id"].as_str().unwrap().to_owned();
                // A processor may answer `unavailable` under contention: retrying is safe.
                let mut outcome = send(&client, &order).await;
                for _ in 0..20 {
                    if !matches!(outcome, Outcome::Unavailable { .. }) {
                        break;
                    }
                    outcome = send(&client, &order).await;
                }
                outcomes.push((id, outcome));
            }
            outcomes
        }));
    }
    let mut answered = HashMap::new();
    for task in tasks {
        for (id, outcome) in task.await.unwrap() {
            assert!(outcome.is_accepted(), "{outcome:?}");
            assert!(answered.insert(id, outcome).is_none());
        }
    }
    assert_eq!(answered.len(), 1000);
    first.stop().await;
    second.stop().await;

    // Rebuild the write model from the ledger alone and count.
    let log = nats.open(ledger_config()).await;
    let events = ledger_events(&log).await;
    let rebuilt = commands::Processor::recover(log).await.unwrap();
    let state = rebuilt.state();
    let allocated: i64 = skus
        .iter()
        .map(|s| {
            state.stock[&Sku::new(*s).unwrap()]
                .balances
                .values()
                .map(|b| b.allocated)
                .sum::<i64>()
        })
        .sum();
    assert_eq!(allocated, 100);
    let placed = events
        .iter()
        .filter(|e| e.envelope.event.event_type() == ledger::EventType::OrderPlaced)
        .count();
    assert_eq!(placed, 1000, "every order placed exactly once");
    // Each command has exactly one outcome record, and its events are where it says.
    let mut outcome_records = HashSet::new();
    for e in &events {
        if let Subject::Command(id) = e.envelope.subject {
            assert!(outcome_records.insert(id), "two outcome records for {id}");
        }
    }
    for (id, outcome) in &answered {
        let Outcome::Accepted {
            first_seq,
            event_count,
            outcome_seq,
            ..
        } = outcome
        else {
            unreachable!()
        };
        let id = Uuid::parse_str(id).unwrap();
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.envelope.command_id == id)
            .collect();
        assert_eq!(mine.len() as u32, event_count + 1);
        assert_eq!(mine[0].seq, *first_seq);
        assert_eq!(mine.last().unwrap().seq, *outcome_seq);
    }
}

#[tokio::test]
async fn retrying_a_whole_run_after_a_restart_changes_nothing() {
    // Goal: 10,000 real commands (UCI data), then a processor restart, then every command sent
    // again with the same ids: each gets its original outcome and the ledger does not grow.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let client = command_client(&nats).await;
    let dataset = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(commands::demo::DATASET);
    let (all, _) = commands::demo::uci_commands(&dataset, Some(9)).unwrap();
    assert!(all.len() >= 10_000, "{} commands", all.len());
    let bodies: Vec<Bytes> = all[..10_000]
        .iter()
        .map(|c| Bytes::from(serde_json::to_vec(c).unwrap()))
        .collect();
    let mut first = Vec::new();
    client
        .submit_all(bodies.clone(), 256, |_, o| {
            first.push(o.expect("an answer"))
        })
        .await;
    assert!(
        first
            .iter()
            .all(|o| !matches!(o, Outcome::Invalid { .. } | Outcome::Unavailable { .. }))
    );
    let accepted = first.iter().filter(|o| o.is_accepted()).count();
    assert!(accepted > 9_000, "{accepted} accepted");
    processor.stop().await;

    let log = nats.open(ledger_config()).await;
    let last = log.last_sequence().await.unwrap();
    let restarted = TestProcessor::start(&nats).await;
    let mut again = Vec::new();
    client
        .submit_all(bodies, 256, |_, o| again.push(o.expect("an answer")))
        .await;
    assert_eq!(again, first);
    assert_eq!(log.last_sequence().await.unwrap(), last);
    restarted.stop().await;
}

#[tokio::test]
async fn holds_expire_when_their_time_passes() {
    // Goal: a hold placed with a TTL gives its stock back once the TTL has passed, without any
    // client asking: the processor issues the expiry itself.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let client = command_client(&nats).await;
    setup(&client, &["A"]).await;
    receive(&client, "A", 5).await;
    let now = chrono::Utc::now().to_rfc3339();
    let hold = |id: &str, qty: i64| {
        let mut c = command(
            "stock.place_hold",
            json!({"sku": "A", "hold": id, "location": "WH1", "qty": qty, "ttl_seconds": 1}),
        );
        c["effective_at"] = json!(now);
        c
    };
    assert!(send(&client, &hold("H1", 5)).await.is_accepted());
    let refused = send(&client, &hold("H2", 1)).await;
    assert!(
        matches!(&refused, Outcome::Rejected { code, .. } if code == "insufficient_available"),
        "{refused:?}"
    );
    let mut later = None;
    for attempt in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let outcome = send(&client, &hold(&format!("H3-{attempt}"), 5)).await;
        if outcome.is_accepted() {
            later = Some(outcome);
            break;
        }
    }
    assert!(later.is_some(), "the first hold never expired");
    let log = nats.open(ledger_config()).await;
    let expired = ledger_events(&log)
        .await
        .into_iter()
        .filter(|e| e.envelope.event.event_type() == ledger::EventType::ReservationExpired)
        .count();
    assert_eq!(expired, 1);
    processor.stop().await;
}
