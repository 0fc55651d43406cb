//! The HTTP gateway against a real system: a nats-server, the processor and the ATS
//! projector, with the gateway serving on a loopback port and driven by an HTTP client.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use ledger::EventLog;
use ledger::walk::{WalkUntil, Walked, walk};
use projections::ats::Ats;
use projections::{Mode, Projector, ProjectorConfig};
use serde_json::{Value, json};

use crate::harness::{TestNats, TestProcessor, command_client, ledger_config};

/// A gateway serving in the test, stopped when dropped.
pub(crate) struct TestGateway {
    base: String,
    task: tokio::task::JoinHandle<()>,
}

impl TestGateway {
    pub(crate) async fn start(nats_url: String, auth: Option<std::path::PathBuf>) -> TestGateway {
        TestGateway::start_tls(nats_url, auth, None).await
    }

    /// With `tls`, serving HTTPS.
    async fn start_tls(
        nats_url: String,
        auth: Option<std::path::PathBuf>,
        tls: Option<gateway::tls::TlsAcceptor>,
    ) -> TestGateway {
        let gw = gateway::Gateway::open(gateway::GatewayConfig {
            nats_url,
            auth,
            command_timeout: Duration::from_secs(5),
            view_timeout: Duration::from_secs(5),
            ..gateway::GatewayConfig::default()
        })
        .await
        .expect("the gateway opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            gw.serve(listener, tls, futures::future::pending())
                .await
                .unwrap();
        });
        TestGateway { base, task }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn command(kind: &str, data: Value) -> Value {
    json!({
        "command_id": uuid::Uuid::now_v7(), "actor": {"id": "t", "role": "admin"}, "legal_entity": "UK01",
        "effective_at": "2011-06-30T12:00:00Z", "type": kind, "data": data,
    })
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = http.post(url).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// `GET /metrics` as text.
async fn scrape(http: &reqwest::Client, gw: &TestGateway) -> String {
    let response = http.get(gw.url("/metrics")).send().await.unwrap();
    response.text().await.unwrap()
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A projector of view `V` running in the test.
pub(crate) async fn live_projector<V: projections::View>(
    nats: &TestNats,
) -> tokio::task::JoinHandle<()> {
    let projector = Projector::<V>::open(
        nats.open(ledger_config()).await,
        Mode::Live,
        ProjectorConfig::default(),
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = projector.run(futures::future::pending()).await;
    })
}

/// A processor, an ATS projector and a gateway, all running in the test.
async fn system(nats: &TestNats) -> (TestProcessor, tokio::task::JoinHandle<()>, TestGateway) {
    let processor = TestProcessor::start(nats).await;
    let projector = live_projector::<Ats>(nats).await;
    let gw = TestGateway::start(nats.url(), None).await;
    (processor, projector, gw)
}

#[tokio::test]
async fn every_outcome_has_its_status_code_and_the_body_nats_answers() {
    // Goal: a command over HTTP is decided exactly as over NATS, its outcome maps to one
    // status consistently, a repeat answers the first outcome, and a system without a
    // processor answers 503 with Retry-After, never a hang or a 500.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let gw = TestGateway::start(nats.url(), None).await;
    let http = http();
    let nats_client = command_client(&nats).await;
    crate::processor::setup(&nats_client, &["A"]).await;

    let receive = command(
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": 5, "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
    );
    let (status, first) = post(&http, &gw.url("/v1/commands"), &receive).await;
    assert_eq!(
        (status, first["status"].as_str()),
        (200, Some("accepted")),
        "{first}"
    );
    // The same command again: the same outcome, byte for byte, and nothing new stored.
    let (status, again) = post(&http, &gw.url("/v1/commands"), &receive).await;
    assert_eq!((status, &again), (200, &first));
    // And the same through NATS.
    let over_nats = nats_client
        .submit_json(receive.to_string().into())
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(&over_nats).unwrap(), first);
    let id = receive["command_id"].as_str().unwrap();
    let (status, recorded) = get(&http, &gw.url(&format!("/v1/commands/{id}"))).await;
    assert_eq!((status, &recorded), (200, &first));
    let (status, unknown) = get(
        &http,
        &gw.url(&format!("/v1/commands/{}", uuid::Uuid::now_v7())),
    )
    .await;
    assert_eq!((status, unknown["status"].as_str()), (404, Some("unknown")));
    let (status, _) = get(&http, &gw.url("/v1/commands/not-a-uuid")).await;
    assert_eq!(status, 400);

    // Invalid: 400, naming the field.
    let mut bad = command(
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": "five"}),
    );
    let (status, invalid) = post(&http, &gw.url("/v1/commands"), &bad).await;
    assert_eq!(
        (status, invalid["status"].as_str()),
        (400, Some("invalid")),
        "{invalid}"
    );
    assert_eq!(invalid["field"], "data.qty", "{invalid}");
    let response = http
        .post(gw.url("/v1/commands"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // Rejected by a business rule: 422 with its code.
    let (status, rejected) = post(
        &http,
        &gw.url("/v1/commands"),
        &command("stock.receive", json!({"sku": "NOPE", "location": "WH1", "qty": 1, "unit_cost": {"amount": "1.00", "currency": "GBP"}})),
    )
    .await;
    assert_eq!(
        (status, rejected["code"].as_str()),
        (422, Some("unknown_sku")),
        "{rejected}"
    );
    // The same id with another body: 409.
    bad = receive.clone();
    bad["data"]["qty"] = json!(6);
    let (status, conflict) = post(&http, &gw.url("/v1/commands"), &bad).await;
    assert_eq!(
        (status, conflict["code"].as_str()),
        (409, Some("duplicate_with_different_body"))
    );

    // A batch: every outcome in order, each with its status.
    let batch = json!([
        command("stock.receive", json!({"sku": "A", "location": "WH1", "qty": 1, "unit_cost": {"amount": "1.00", "currency": "GBP"}})),
        {"command_id": "x"},
        receive,
    ]);
    let (status, answer) = post(&http, &gw.url("/v1/commands/batch"), &batch).await;
    assert_eq!(status, 200);
    let statuses: Vec<u64> = answer["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["http_status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 400, 200]);
    assert_eq!(answer["outcomes"][2]["outcome"], first);
    let (status, _) = post(&http, &gw.url("/v1/commands/batch"), &json!({"a": 1})).await;
    assert_eq!(status, 400);

    // The metrics count what was answered.
    let metrics = scrape(&http, &gw).await;
    for line in [
        "erp_gateway_commands_total{outcome=\"accepted\"} 4",
        "erp_gateway_commands_total{outcome=\"invalid\"} 3",
        "erp_gateway_commands_total{outcome=\"rejected\"} 2",
        "erp_gateway_command_seconds_count 6",
        "erp_gateway_batch_seconds_count 1",
        "erp_processor_up 1",
        "erp_processor_rollbacks_total 0",
        "erp_processor_batches_in_flight 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }

    // The processor's batches: every command the processor stored is in one.
    let committed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("erp_processor_batch_commands_count "))
        .and_then(|v| v.parse().ok())
        .expect("the batch histogram");
    assert!(committed >= 1, "{metrics}");

    // The contract it serves is the one committed under schemas/.
    let (status, served) = get(&http, &gw.url("/v1/openapi.json")).await;
    assert_eq!(status, 200);
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(served, committed);

    // No processor: 503 with a retry hint, and nothing stored.
    processor.stop().await;
    let response = http
        .post(gw.url("/v1/commands"))
        .json(&command("channel.define", json!({"channel": "late"})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable", "{body}");
    let (status, ready) = get(&http, &gw.url("/readyz")).await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["not_ready"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "the processor is not answering"),
        "{ready}"
    );
    // A processor that comes back while a command waits: the gateway sends it again, and the
    // client sees a pause, not an error.
    let late = command("channel.define", json!({"channel": "late"}));
    let sent = tokio::spawn({
        let (http, url) = (http.clone(), gw.url("/v1/commands"));
        async move { post(&http, &url, &late).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let processor = TestProcessor::start(&nats).await;
    let (status, outcome) = sent.await.unwrap();
    assert_eq!(
        (status, outcome["status"].as_str()),
        (200, Some("accepted")),
        "{outcome}"
    );
    processor.stop().await;
}

#[tokio::test]
async fn a_view_read_with_min_seq_sees_the_write_and_etags_follow_the_ledger() {
    // Goal: read-your-writes over HTTP: a query with the outcome's sequence as `min_seq`
    // reflects the command; the ETag is the sequence the answer reflects, and asking again
    // with it answers 304 until the view moves.
    let nats = TestNats::start();
    let (processor, projector, gw) = system(&nats).await;
    let http = http();
    crate::processor::setup(&command_client(&nats).await, &["A"]).await;
    let mut seen = 0;
    for qty in [3, 4] {
        let (status, outcome) = post(
            &http,
            &gw.url("/v1/commands"),
            &command("stock.receive", json!({"sku": "A", "location": "WH1", "qty": qty, "unit_cost": {"amount": "1.00", "currency": "GBP"}})),
        )
        .await;
        assert_eq!(status, 200, "{outcome}");
        let seq = outcome["outcome_seq"].as_u64().unwrap();
        let url = gw.url(&format!(
            "/v1/views/ats/get?sku=A&location=WH1&min_seq={seq}"
        ));
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let etag = response.headers()["etag"].to_str().unwrap().to_owned();
        let answer: Value = response.json().await.unwrap();
        seen += qty;
        assert_eq!(answer["result"]["on_hand"], seen, "{answer}");
        assert!(answer["seq"].as_u64().unwrap() >= seq);
        assert_eq!(etag, format!("\"{}\"", answer["seq"]));
        let response = http
            .get(&url)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 304);
        assert_eq!(response.headers()["etag"].to_str().unwrap(), etag);
    }
    // Bad queries name what is wrong.
    for (path, status, code) in [
        (
            "/v1/views/ats/get?sku=A&location=WH1&limit=ten",
            400,
            "bad_query",
        ),
        ("/v1/views/ats/get?sku=A", 400, "bad_query"),
        ("/v1/views/ats/get?sku=A&location=NOWHERE", 404, "not_found"),
        ("/v1/views/nosuch/get", 404, "unknown_view"),
    ] {
        let (got, body) = get(&http, &gw.url(path)).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    let (status, _) = get(&http, &gw.url("/v1/nothing")).await;
    assert_eq!(status, 404);
    projector.abort();
    processor.stop().await;
}

/// Every event of committed batches in the ledger, as (sequence, event id).
async fn ledger_events(nats: &TestNats) -> Vec<(u64, String)> {
    let log = nats.open(ledger_config()).await;
    let mut walker = walk(&log, 1, WalkUntil::CaughtUp, None).await.unwrap();
    let mut events = Vec::new();
    while let Some(item) = walker.next().await {
        if let Walked::Batch(batch) = item.unwrap() {
            events.extend(
                batch
                    .events
                    .iter()
                    .map(|e| (e.seq, e.envelope.event_id.to_string())),
            );
        }
    }
    events
}

/// Asserts two lists of (sequence, event id) are equal, naming the first difference.
fn same_events(what: &str, got: &[(u64, String)], ledger: &[(u64, String)]) {
    if let Some(i) = (0..got.len().max(ledger.len())).find(|&i| got.get(i) != ledger.get(i)) {
        panic!(
            "{what}: {} events, the ledger {}; first difference at {i}: {:?} where the ledger has {:?}",
            got.len(),
            ledger.len(),
            got.get(i),
            ledger.get(i)
        );
    }
}

/// Reads SSE events of `name` from a response until `until` says stop or `quiet` passes
/// without any: (id, data) each.
async fn read_sse(
    response: reqwest::Response,
    name: &str,
    quiet: Duration,
    mut until: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    loop {
        if until(&events) {
            return events;
        }
        let chunk = match tokio::time::timeout(quiet, body.next()).await {
            Ok(Some(chunk)) => chunk.unwrap(),
            Ok(None) | Err(_) => return events,
        };
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if event == name {
                events.push((id, serde_json::from_str(&data).unwrap()));
            } else if event == "error" {
                panic!("the stream reported an error: {data}");
            }
        }
    }
}

#[tokio::test]
async fn the_json_event_feed_equals_the_ledger_paged_or_streamed_with_a_resume() {
    // Goal: a consumer in any language can follow the log: the pages of /v1/events hold
    // exactly the ledger's committed events, in order; the SSE tail, cut off and resumed
    // with Last-Event-ID mid-batch, loses and repeats nothing.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    crate::projections::submit(&nats, crate::projections::uci_bodies(1)).await;
    let gw = TestGateway::start(nats.url(), None).await;
    let http = http();
    let ledger = ledger_events(&nats).await;
    assert!(ledger.len() > 1_000, "{}", ledger.len());

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = get(
            &http,
            &gw.url(&format!("/v1/events?after={after}&limit=333")),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        for e in events {
            assert_eq!(e["specversion"], "1.0");
            assert!(e["type"].as_str().unwrap().starts_with("erp."));
            paged.push((
                e["seq"].as_u64().unwrap(),
                e["id"].as_str().unwrap().to_owned(),
            ));
        }
        let next = page["next_after"].as_u64().unwrap();
        if events.is_empty() {
            assert_eq!(Some(next), page["last_seq"].as_u64(), "{page}");
            break;
        }
        after = next;
    }
    same_events("paged", &paged, &ledger);
    for bad in [
        "/v1/events?after=-1",
        "/v1/events?limit=0",
        "/v1/events?limit=1001",
    ] {
        let (status, body) = get(&http, &gw.url(bad)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_query")),
            "{bad}"
        );
    }

    // Streamed: cut off after an event in the middle of the log, then resumed.
    let cut = ledger.len() / 2 + 1;
    let response = http.get(gw.url("/v1/events/stream")).send().await.unwrap();
    let first = read_sse(response, "ledger", Duration::from_secs(10), |got| {
        got.len() == cut
    })
    .await;
    assert_eq!(first.len(), cut);
    let last_id = first.last().unwrap().0.clone();
    // More is committed while the client is away.
    crate::projections::submit(
        &nats,
        crate::projections::uci_bodies(2)[ledger.len().min(50)..][..50].to_vec(),
    )
    .await;
    let ledger = ledger_events(&nats).await;
    let response = http
        .get(gw.url("/v1/events/stream"))
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    let rest = read_sse(response, "ledger", Duration::from_secs(3), |got| {
        got.len() + cut >= ledger.len()
    })
    .await;
    let streamed: Vec<(u64, String)> = first
        .iter()
        .chain(&rest)
        .map(|(id, e)| {
            assert_eq!(id, &e["seq"].to_string());
            (
                e["seq"].as_u64().unwrap(),
                e["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    same_events("streamed", &streamed, &ledger);
    processor.stop().await;
}

#[tokio::test]
async fn a_view_change_stream_resumes_after_a_disconnect_without_losing_a_change() {
    // Goal: a client that follows a view over SSE, drops, and reconnects with Last-Event-ID
    // ends with exactly the view's rows, and never sees a revision twice.
    let nats = TestNats::start();
    let (processor, projector, gw) = system(&nats).await;
    let http = http();
    let client = command_client(&nats).await;
    crate::processor::setup(&client, &["A", "B", "C"]).await;
    let receive = |sku: &str, qty: i64| {
        command(
            "stock.receive",
            json!({"sku": sku, "location": "WH1", "qty": qty, "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
        )
    };
    // Receipts through the gateway, then a wait until the view has applied the last one.
    let receive_all = async |receipts: &[(&str, i64)]| {
        let mut last_seq = 0;
        for (sku, qty) in receipts {
            let (_, o) = post(&http, &gw.url("/v1/commands"), &receive(sku, *qty)).await;
            last_seq = o["outcome_seq"].as_u64().unwrap();
        }
        let url = gw.url(&format!("/v1/views/ats/status?min_seq={last_seq}"));
        assert_eq!(get(&http, &url).await.0, 200);
        last_seq
    };
    receive_all(&[("A", 1), ("B", 2)]).await;

    let mut rows: BTreeMap<String, Value> = BTreeMap::new();
    let mut revisions = std::collections::BTreeSet::new();
    let apply = |events: &[(String, Value)],
                 rows: &mut BTreeMap<String, Value>,
                 revisions: &mut std::collections::BTreeSet<String>| {
        for (id, change) in events {
            assert!(
                revisions.insert(id.clone()),
                "revision {id} delivered twice"
            );
            let key = change["key"].as_str().unwrap().to_owned();
            match &change["value"] {
                Value::Null => rows.remove(&key),
                value => rows.insert(key, value.clone()),
            };
        }
    };
    let response = http
        .get(gw.url("/v1/views/ats/changes"))
        .send()
        .await
        .unwrap();
    let first = read_sse(response, "change", Duration::from_secs(2), |got| {
        got.iter().any(|(_, c)| c["key"] == "loc.B.WH1")
    })
    .await;
    apply(&first, &mut rows, &mut revisions);
    let last_id = first.last().unwrap().0.clone();
    // Changes while the client is away, one of them to a row it has already seen.
    let last_seq = receive_all(&[("C", 3), ("A", 4)]).await;
    let response = http
        .get(gw.url("/v1/views/ats/changes"))
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    let rest = read_sse(response, "change", Duration::from_secs(2), |_| false).await;
    assert!(rest.iter().all(|(_, c)| c["initial"] == false), "{rest:?}");
    apply(&rest, &mut rows, &mut revisions);
    let views = projections::client::ViewClient::new(nats.connect().await);
    let (_, expected) = crate::projections::all_rows(&views, "ats", "", last_seq).await;
    assert_eq!(rows, expected);
    assert_eq!(rows["loc.A.WH1"]["on_hand"], 5);
    let (status, body) = get_with(
        &http,
        &gw.url("/v1/views/ats/changes"),
        "last-event-id",
        "nonsense",
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_last_event_id"))
    );
    projector.abort();
    processor.stop().await;
}

async fn get_with(http: &reqwest::Client, url: &str, name: &str, value: &str) -> (u16, Value) {
    let response = http.get(url).header(name, value).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn with_credentials_a_token_acts_as_its_user_and_nothing_else_gets_in() {
    // Goal: on a gateway with credentials, a request without a valid token changes nothing
    // (401); a token acts as its NATS user, so the recorded actor is the user's, not the
    // body's; a user reads no more than it may (the event feed: the auditor; commands: not
    // the auditor); a role's limits hold over HTTP as on NATS (403).
    let secured = crate::security::Secured::start().await;
    let dir = secured.dir.path().to_path_buf();
    let users = [
        "upstream",
        "clerk",
        "buyer",
        "warehouse",
        "admin",
        ledger::auth::AUDITOR,
    ];
    let token = |user: &str| gateway::tokens::Tokens::issue(&dir, user, &users).unwrap();
    let (admin, warehouse, auditor, upstream) = (
        token("admin"),
        token("warehouse"),
        token(ledger::auth::AUDITOR),
        token("upstream"),
    );
    assert!(gateway::tokens::Tokens::issue(&dir, ledger::auth::PROCESSOR, &users).is_err());
    let gw = TestGateway::start(secured.nats.url(), Some(dir.clone())).await;
    let http = http();
    let as_user = |token: &str, request: reqwest::RequestBuilder| request.bearer_auth(token);

    // With credentials the actor comes from the token's user: the body names none.
    let unsigned = |kind: &str, data: Value| {
        let mut c = command(kind, data);
        c.as_object_mut().unwrap().remove("actor");
        c
    };
    let define = unsigned("channel.define", json!({"channel": "web"}));
    for request in [
        http.post(gw.url("/v1/commands")).json(&define),
        http.post(gw.url("/v1/commands"))
            .json(&define)
            .bearer_auth("erp_0000"),
        http.post(gw.url("/v1/commands"))
            .json(&define)
            .header("authorization", "Basic YTpi"),
        http.get(gw.url("/v1/views/ats/status")),
        http.get(gw.url("/v1/events")),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
        assert!(response.headers().contains_key("www-authenticate"));
    }
    // A body claiming another actor than the token's user is refused, and recorded.
    let response = as_user(
        &admin,
        http.post(gw.url("/v1/commands"))
            .json(&command("channel.define", json!({"channel": "claimed"}))),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    // The ledger records the token's user as the actor.
    let response = as_user(&admin, http.post(gw.url("/v1/commands")).json(&define))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let outcome: Value = response.json().await.unwrap();
    let seq = outcome["first_seq"].as_u64().unwrap();
    // A warehouse user may not define channels: 403, and the refusal is recorded.
    let response = as_user(
        &warehouse,
        http.post(gw.url("/v1/commands"))
            .json(&unsigned("channel.define", json!({"channel": "store"}))),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let refused: Value = response.json().await.unwrap();
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // The auditor reads and sends nothing.
    let response = as_user(&auditor, http.post(gw.url("/v1/commands")).json(&define))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    // The feed: the auditor and admins may read it, an upstream system may not.
    let response = as_user(&upstream, http.get(gw.url("/v1/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    for token in [&auditor, &admin] {
        let mut found = None;
        for _ in 0..50 {
            let page: Value = as_user(
                token,
                http.get(gw.url(&format!("/v1/events?after={}", seq - 1))),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
            found = page["events"].as_array().unwrap().first().cloned();
            if found.is_some() {
                break;
            }
            // The auditors' copy of the ledger follows it by moments.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let event = found.expect("the event reaches the auditors' copy");
        assert_eq!(event["type"], "erp.channel.defined");
        assert_eq!(event["actorid"], "admin", "{event}");
    }
    // A token revoked while the gateway runs is refused within a second or two; one issued
    // meanwhile is accepted, with no restart (asking for a command never sent: 404).
    let unknown = gw.url(&format!("/v1/commands/{}", uuid::Uuid::now_v7()));
    let status = |token: String| {
        let request = http.get(&unknown).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(upstream.clone()).await, 404);
    gateway::tokens::Tokens::revoke(&dir, "upstream", None).unwrap();
    let fresh = token("clerk");
    let mut waited = 0;
    while status(upstream.clone()).await != 401 || status(fresh.clone()).await != 404 {
        waited += 1;
        assert!(
            waited < 50,
            "the revoked token is still accepted, or the new one not yet"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(admin.clone()).await, 404);
    secured.stop().await;
}

#[tokio::test]
async fn with_a_certificate_the_gateway_speaks_only_https() {
    // Goal: configured with a certificate and key, the gateway serves HTTPS that a client
    // trusting that certificate can use, and refuses plain HTTP; a certificate file that is
    // not one is a clear error naming it.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes a test certificate");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let acceptor = gateway::tls::acceptor(&cert, &key).unwrap();
    let gw = TestGateway::start_tls(nats.url(), None, Some(acceptor)).await;
    assert!(gw.base.starts_with("https://"));
    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (status, outcome) = post(
        &trusting,
        &gw.url("/v1/commands"),
        &command("channel.define", json!({"channel": "web"})),
    )
    .await;
    assert_eq!(
        (status, outcome["status"].as_str()),
        (200, Some("accepted")),
        "{outcome}"
    );
    // Plain HTTP on the same port gets no answer.
    let plain = gw.base.replace("https://", "http://");
    let refused = http().get(format!("{plain}/healthz")).send().await;
    assert!(refused.is_err() || !refused.unwrap().status().is_success());
    // A client that does not trust the certificate does not connect.
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(untrusting.get(gw.url("/healthz")).send().await.is_err());
    // A file that is no certificate.
    std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
    let Err(error) = gateway::tls::acceptor(&dir.path().join("bad.pem"), &key) else {
        panic!("a file without a certificate was taken as one");
    };
    let error = error.to_string();
    assert!(
        error.contains("bad.pem") && error.contains("no PEM certificate"),
        "{error}"
    );
    processor.stop().await;
}

/// Polls a replay until it is no longer running (a minute at most).
async fn replay_finished(http: &reqwest::Client, gw: &TestGateway, id: &str) -> Value {
    for _ in 0..600 {
        let (status, job) = get(http, &gw.url(&format!("/v1/replays/{id}"))).await;
        assert_eq!(status, 200, "{job}");
        if job["status"] != "running" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("replay {id} did not finish");
}

#[tokio::test]
async fn a_view_replayed_as_of_a_point_shows_it_then_and_bad_requests_name_the_field() {
    // Goal: the console's "as of a date": POST /v1/replays replays a view to a point of the
    // ledger in the background; its rows are the view as it stood then (and at the end, the
    // live view's rows); progress and the processor's command latency show in /metrics; a bad
    // request changes nothing and names its field.
    let nats = TestNats::start();
    let (processor, projector, gw) = system(&nats).await;
    let http = http();
    crate::processor::setup(&command_client(&nats).await, &["A", "B"]).await;
    let mut seqs = Vec::new();
    for (sku, qty) in [("A", 3), ("B", 5), ("A", 4)] {
        let (status, outcome) = post(
            &http,
            &gw.url("/v1/commands"),
            &command("stock.receive", json!({"sku": sku, "location": "WH1", "qty": qty, "unit_cost": {"amount": "1.00", "currency": "GBP"}})),
        )
        .await;
        assert_eq!(status, 200, "{outcome}");
        seqs.push(outcome["outcome_seq"].as_u64().unwrap());
    }
    // As of the first receipt: A has 3, B nothing yet.
    let (status, job) = post(
        &http,
        &gw.url("/v1/replays"),
        &json!({"view": "ats", "as_of_seq": seqs[0], "key_prefix": "loc."}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["status"], "running");
    let then = replay_finished(&http, &gw, job["id"].as_str().unwrap()).await;
    assert_eq!(then["status"], "done", "{then}");
    assert_eq!(then["seq"], seqs[0]);
    let rows = then["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{then}");
    assert_eq!(rows[0]["key"], "loc.A.WH1");
    assert_eq!(rows[0]["value"]["on_hand"], 3);
    assert_eq!(then["done"], then["total"]);
    // As of now, with a row limit: the live view's rows.
    let (status, job) = post(
        &http,
        &gw.url("/v1/replays"),
        &json!({"view": "ats", "key_prefix": "loc.", "limit": 1}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let now = replay_finished(&http, &gw, job["id"].as_str().unwrap()).await;
    assert_eq!(now["rows_total"], 2, "{now}");
    assert_eq!(now["rows"].as_array().unwrap().len(), 1);
    let (_, live) = get(
        &http,
        &gw.url(&format!(
            "/v1/views/ats/get?sku=A&location=WH1&min_seq={}",
            seqs[2]
        )),
    )
    .await;
    assert_eq!(now["rows"][0]["value"]["on_hand"], 7);
    assert_eq!(
        now["rows"][0]["value"]["on_hand"],
        live["result"]["on_hand"]
    );
    // The list holds both, newest first, without rows.
    let (_, list) = get(&http, &gw.url("/v1/replays")).await;
    let listed = list["replays"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], now["id"]);
    assert!(listed[0].get("rows").is_none());
    assert!(list["views"].as_array().unwrap().len() >= 7);
    // Bad requests are refused at once, naming the field.
    let last = nats
        .open(ledger_config())
        .await
        .last_sequence()
        .await
        .unwrap();
    for (body, field) in [
        (json!({"view": "nosuch"}), "`view`"),
        (
            json!({"view": "ats", "as_of_seq": 1, "as_recorded": "2011-01-01"}),
            "`as_recorded`",
        ),
        (
            json!({"view": "ats", "as_recorded": "yesterday"}),
            "`as_recorded`",
        ),
        (
            json!({"view": "ats", "as_effective": "2011-13-01"}),
            "`as_effective`",
        ),
        (
            json!({"view": "ats", "as_of_seq": last + 1000}),
            "`as_of_seq`",
        ),
        (json!({"view": "ats", "as_of_seq": 0}), "`as_of_seq`"),
        (json!({"view": "ats", "limit": 0}), "`limit`"),
        (json!({"view": "ats", "where": ["on_hand"]}), "`where`"),
        (json!({"view": "ats", "sku": "A"}), "unknown field `sku`"),
    ] {
        let (status, answer) = post(&http, &gw.url("/v1/replays"), &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_replay", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    let (status, _) = get(&http, &gw.url("/v1/replays/not-a-uuid")).await;
    assert_eq!(status, 400);
    let (status, _) = get(
        &http,
        &gw.url(&format!("/v1/replays/{}", uuid::Uuid::now_v7())),
    )
    .await;
    assert_eq!(status, 404);
    let (_, list) = get(&http, &gw.url("/v1/replays")).await;
    assert_eq!(
        list["replays"].as_array().unwrap().len(),
        2,
        "a refused replay ran"
    );
    // /metrics: the replays, and the processor's own command latency.
    let metrics = scrape(&http, &gw).await;
    assert!(
        metrics.contains("erp_replays_finished_total{status=\"done\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("erp_replays_running 0"), "{metrics}");
    let answered: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("erp_processor_command_seconds_count "))
        .expect("the processor's latency histogram")
        .parse()
        .unwrap();
    assert!(answered >= 3 + 4, "{answered}");
    let slowest_bucket: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("erp_processor_command_seconds_bucket{le=\"30\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(slowest_bucket, answered);
    projector.abort();
    processor.stop().await;
}
