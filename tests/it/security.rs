//! Who may write what: the server's accounts (the configuration of `erp auth init`), the
//! processor's identity and role checks, and what every reader does with a message in the
//! ledger that the processor did not write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use commands::Outcome;
use commands::access::{AuthDir, Principal};
use commands::client::CommandClient;
use futures::StreamExt;
use ledger::auth::{AUDIT_MIRROR, AUDITOR, PROCESSOR, PROJECTOR, VIEWS_MIRROR};
use ledger::jetstream::{JetStreamLog, LogConfig};
use ledger::walk::{WalkUntil, Walked, walk};
use ledger::{EventLog, ForeignRecord};
use projections::audit::Audit;
use projections::{Mode, Projector, ProjectorConfig};
use replay::Resolved;
use serde_json::{Value, json};

use crate::harness::{TestNats, TestProcessor, command_client, ledger_config};
use crate::projections::{projector_process_snapshotting, stop};
use crate::replay::erp;

/// A client for a user that records the server's error reports (permission violations).
async fn connect_as(
    auth: &AuthDir,
    nats: &TestNats,
    user: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let credentials = &auth.credentials.users[user];
    let client = async_nats::ConnectOptions::with_user_and_password(
        credentials.user.clone(),
        credentials.password.clone(),
    )
    .event_callback(move |event| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(event.to_string());
        }
    })
    .connect(nats.url())
    .await
    .unwrap_or_else(|e| panic!("{user} connects: {e}"));
    (client, errors)
}

/// Waits until the server has reported a permissions violation for `subject`.
async fn violation_reported(errors: &Mutex<Vec<String>>, subject: &str) {
    for _ in 0..100 {
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

/// A command as JSON; `actor`: `Some((id, role))` to claim one, `None` to act as the sender.
fn command(actor: Option<(&str, &str)>, kind: &str, data: Value) -> Value {
    let mut c = json!({
        "command_id": uuid::Uuid::now_v7(), "legal_entity": "UK01",
        "effective_at": "2011-06-30T12:00:00Z", "type": kind, "data": data,
    });
    if let Some((id, role)) = actor {
        c["actor"] = json!({"id": id, "role": role});
    }
    c
}

fn bytes(value: &Value) -> Bytes {
    Bytes::from(value.to_string())
}

/// Every foreign message in the ledger, walked as every reader walks it.
async fn foreign_in(log: &JetStreamLog) -> Vec<ForeignRecord> {
    let mut walker = walk(log, 1, WalkUntil::CaughtUp, None).await.unwrap();
    let mut foreign = Vec::new();
    while let Some(item) = walker.next().await {
        if let Walked::Foreign(f) = item.unwrap() {
            foreign.push(f);
        }
    }
    foreign
}

/// A server configured by `erp auth init` (plus two buyers and a user for UK01 only) with a
/// processor that knows the principals.
pub(crate) struct Secured {
    pub(crate) dir: tempfile::TempDir,
    auth: AuthDir,
    pub(crate) nats: TestNats,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    processor: Option<tokio::task::JoinHandle<Result<(), commands::service::ServiceError>>>,
}

impl Secured {
    pub(crate) async fn start() -> Secured {
        let dir = tempfile::tempdir().unwrap();
        AuthDir::init(dir.path()).unwrap();
        let buyer = |actor: &str| Principal {
            actor: ledger::values::ActorId::new(actor).unwrap(),
            roles: vec![ledger::values::Role::new("buyer").unwrap()],
            entities: Vec::new(),
            end_users: false,
        };
        AuthDir::add_user(dir.path(), "buyer-a", buyer("buyer-a")).unwrap();
        AuthDir::add_user(dir.path(), "buyer-b", buyer("buyer-b")).unwrap();
        let auth = AuthDir::add_user(
            dir.path(),
            "shop-uk",
            Principal {
                actor: ledger::values::ActorId::new("shop-uk").unwrap(),
                roles: vec![ledger::values::Role::new("upstream").unwrap()],
                entities: vec![ledger::values::EntityId::new("UK01").unwrap()],
                end_users: true,
            },
        )
        .unwrap();
        let nats = TestNats::start_with(auth.server_config());
        let (client, _) = connect_as(&auth, &nats, PROCESSOR).await;
        let log = JetStreamLog::open(client.clone(), ledger_config())
            .await
            .unwrap();
        let service = commands::service::Service::start(
            client,
            log,
            commands::service::ServiceConfig {
                principals: Some(auth.principals.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let processor = tokio::spawn(service.serve(async {
            let _ = stopped.await;
        }));
        Secured {
            dir,
            auth,
            nats,
            stop: Some(stop),
            processor: Some(processor),
        }
    }

    async fn client(&self, user: &str) -> CommandClient {
        let (client, _) = connect_as(&self.auth, &self.nats, user).await;
        CommandClient::new(client, Duration::from_secs(10)).as_user(Some(user.to_owned()))
    }

    async fn send(&self, user: &str, command: &Value) -> Outcome {
        self.client(user)
            .await
            .submit_json(bytes(command))
            .await
            .unwrap()
    }

    /// The ledger itself, read as the processor reads it.
    async fn ledger(&self) -> JetStreamLog {
        let (client, _) = connect_as(&self.auth, &self.nats, PROCESSOR).await;
        JetStreamLog::open(client, ledger_config()).await.unwrap()
    }

    /// The auditors' copy, caught up.
    async fn audit_copy(&self) -> JetStreamLog {
        let (client, _) = connect_as(&self.auth, &self.nats, AUDITOR).await;
        let log = JetStreamLog::open(client, LogConfig::mirror(AUDIT_MIRROR))
            .await
            .expect("the auditor opens its copy of the ledger");
        log.wait_for_mirror(Duration::from_secs(30), |_, _| {})
            .await
            .unwrap();
        log
    }

    fn erp(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--auth", self.dir.path().to_str().unwrap()];
        all.splice(0..0, args.iter().copied());
        erp(&self.nats.url(), &all)
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.processor.take().unwrap().await.unwrap().unwrap();
    }
}

async fn define_basics(s: &Secured) {
    for (kind, data) in [
        (
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ),
        ("channel.define", json!({"channel": "web"})),
        ("item.define", json!({"sku": "A"})),
        (
            "supplier.define",
            json!({"supplier": "S1", "currency": "GBP"}),
        ),
    ] {
        let outcome = s.send("admin", &command(None, kind, data)).await;
        assert!(outcome.is_accepted(), "{kind}: {outcome:?}");
    }
}

#[tokio::test]
async fn nothing_but_the_processor_puts_a_message_into_the_ledger_whatever_route_a_user_tries() {
    // Goal: with the accounts of `erp auth init`, no user but the processor can make the
    // server store anything in LEDGER: not by publishing to its subjects or the intake's, not
    // by naming a ledger subject as the reply to a command request (route 1), in the
    // `Erp-Reply-To` header of a durable command (route 2) or as the reply of a plain publish
    // to the intake, whose JetStream acknowledgement would land there (route 3), and not by a
    // JetStream API call that adds a source or mirror to the ledger. Each attempt is refused
    // by the server or lands in the sender's own account; afterwards every message in LEDGER
    // is one the processor committed.
    let s = Secured::start().await;
    define_basics(&s).await;
    let users = [
        PROJECTOR,
        AUDITOR,
        "upstream",
        "clerk",
        "buyer",
        "warehouse",
        "admin",
        "shop-uk",
    ];
    for user in users {
        let (client, errors) = connect_as(&s.auth, &s.nats, user).await;
        // Direct publishes to the ledger's and the intake's subjects, and (but for the
        // projector, whose they are) to the view registry and the snapshot store.
        let mut subjects = vec!["led.sku.A", "led.w.forged", "led.cmd.x", "cmd.UK01"];
        if user != PROJECTOR {
            subjects.extend(["$KV.erp_views.ats", "$O.erp_snapshots.C.x"]);
        }
        for subject in subjects {
            client
                .publish(subject, Bytes::from_static(b"forged"))
                .await
                .unwrap();
            client.flush().await.unwrap();
            violation_reported(&errors, subject).await;
        }
        // A JetStream API call that would feed another stream into the ledger.
        let update = json!({"name": "LEDGER", "subjects": ["led.>"], "storage": "file",
            "sources": [{"name": "EVIL"}], "allow_atomic": true});
        let inbox = client.new_inbox();
        client
            .publish_with_reply(
                "$JS.API.STREAM.UPDATE.LEDGER",
                inbox.clone(),
                bytes(&update),
            )
            .await
            .unwrap();
        client
            .publish_with_reply(
                "$JS.ledger.API.CONSUMER.CREATE.LEDGER",
                inbox,
                bytes(
                    &json!({"stream_name": "LEDGER", "config": {"deliver_subject": "led.sku.Q"}}),
                ),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();
        violation_reported(&errors, "$JS.API.STREAM.UPDATE.LEDGER").await;
        violation_reported(&errors, "$JS.ledger.API.CONSUMER.CREATE.LEDGER").await;
    }
    // The three reply routes, by users that may send commands.
    let mut durable_ids = Vec::new();
    for user in ["upstream", "clerk", "admin"] {
        let (client, _) = connect_as(&s.auth, &s.nats, user).await;
        let rpc = format!("rpc.cmd.UK01.{user}");
        let intake = format!("cmd.UK01.{user}");
        client
            .publish_with_reply(rpc, "led.sku.X", Bytes::from_static(b"not json"))
            .await
            .unwrap();
        let valid = command(
            None,
            "channel.define",
            json!({"channel": format!("c-{user}")}),
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Erp-Reply-To", "led.sku.Y");
        let js = async_nats::jetstream::new(client.clone());
        js.publish_with_headers(intake.clone(), headers, bytes(&valid))
            .await
            .unwrap()
            .await
            .expect("the durable intake acknowledges");
        let again = command(
            None,
            "channel.define",
            json!({"channel": format!("d-{user}")}),
        );
        for c in [&valid, &again] {
            durable_ids.push(uuid::Uuid::parse_str(c["command_id"].as_str().unwrap()).unwrap());
        }
        client
            .publish_with_reply(intake, "led.sku.Z", bytes(&again))
            .await
            .unwrap();
        client.flush().await.unwrap();
    }
    // Let the processor decide what reached it, then look at the ledger.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = s.ledger().await;
    assert_eq!(foreign_in(&log).await, Vec::new(), "only committed batches");
    // The durable commands were decided all the same: only their answers went nowhere.
    let clerk = s.client("clerk").await;
    for id in durable_ids {
        let outcome = clerk.outcome(id).await.unwrap();
        assert!(
            outcome.as_ref().is_some_and(Outcome::is_accepted),
            "{id}: {outcome:?}"
        );
    }
    s.stop().await;
}

// `erp` runs as a process and blocks its thread while the processor runs in this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_works_for_the_roles_that_need_it_and_no_other() {
    // Goal: each role can do what docs/COMMANDS.md and docs/RELIABILITY.md say it does, through
    // the accounts: senders send commands by request and durably, ask for outcomes, the
    // processor's status and views; the projector builds views from its copy and answers
    // them; the auditor verifies and replays its copy, asks views and the processor. And each
    // is refused the rest: another user's or another entity's command subjects, commands for
    // the auditor.
    let s = Secured::start().await;
    define_basics(&s).await;
    // Durable intake with an answer, as `upstream`.
    let (upstream, upstream_errors) = connect_as(&s.auth, &s.nats, "upstream").await;
    let inbox = format!("erp.answer.upstream.{}", uuid::Uuid::now_v7().simple());
    let mut answers = upstream.subscribe(inbox.clone()).await.unwrap();
    let durable = command(
        None,
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": 10, "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Erp-Reply-To", inbox.as_str());
    async_nats::jetstream::new(upstream.clone())
        .publish_with_headers("cmd.UK01.upstream", headers, bytes(&durable))
        .await
        .unwrap()
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answers.next())
        .await
        .expect("an answer to the durable command")
        .unwrap();
    let outcome: Outcome = serde_json::from_slice(&answer.payload).unwrap();
    assert!(outcome.is_accepted(), "{outcome:?}");
    // The outcome asked for again, and the processor's status.
    let client = s.client("upstream").await;
    let id = uuid::Uuid::parse_str(durable["command_id"].as_str().unwrap()).unwrap();
    assert_eq!(client.outcome(id).await.unwrap(), Some(outcome.clone()));
    let status = upstream
        .request("rpc.status", Bytes::new())
        .await
        .expect("rpc.status answers senders");
    let status: Value = serde_json::from_slice(&status.payload).unwrap();
    assert_eq!(status["foreign"]["count"], 0);

    // Two UCI days as `upstream` (acting as itself), so the copies of the ledger must carry
    // thousands of messages (their feeds' flow control included). The demo's set-up of legal
    // entities and rates is a controller's, left out here.
    let uci: Vec<Bytes> = crate::projections::uci_bodies(2)
        .into_iter()
        .filter_map(|b| {
            let mut c: Value = serde_json::from_slice(&b).unwrap();
            if c["actor"]["role"] == "controller" {
                return None;
            }
            c.as_object_mut().unwrap().remove("actor");
            Some(bytes(&c))
        })
        .collect();
    let mut refused = 0;
    s.client("upstream")
        .await
        .submit_all(uci, 256, |_, o| match o.expect("an answer") {
            Outcome::Accepted { .. } => {}
            Outcome::Rejected { code, .. } if code != "forbidden" => refused += 1,
            other => panic!("{other:?}"),
        })
        .await;
    let last = s.ledger().await.last_sequence().await.unwrap();
    assert!(last > 10_000, "{last}");

    // The projector, on its copy of the ledger, answers a sender's and the auditor's queries.
    let (projector_client, _) = connect_as(&s.auth, &s.nats, PROJECTOR).await;
    let copy = JetStreamLog::open(projector_client, LogConfig::mirror(VIEWS_MIRROR))
        .await
        .unwrap();
    let projector =
        Projector::<projections::ats::Ats>::open(copy, Mode::Live, ProjectorConfig::default())
            .await
            .unwrap();
    let (stop_views, views_stopped) = tokio::sync::oneshot::channel::<()>();
    let views = tokio::spawn(projector.run(async {
        let _ = views_stopped.await;
    }));
    for user in ["upstream", AUDITOR] {
        let (client, _) = connect_as(&s.auth, &s.nats, user).await;
        let answer = projections::client::ViewClient::new(client)
            .ask(
                "ats",
                "get",
                json!({"sku": "A", "location": "WH1"}),
                Some(last),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|e| panic!("{user} asks the ATS view: {e}"));
        assert_eq!(answer.result["on_hand"], 10, "{user}: {:?}", answer.result);
        assert!(answer.seq >= last);
    }

    // The auditor verifies and replays its copy, through the library and the command line.
    // The mirror's reported lag is sampled, so "no lag" can come a moment before the copy
    // holds the ledger's last message: wait for that message (the ledger is idle now).
    let copy = s.audit_copy().await;
    let ledger_end = s.ledger().await.last_sequence().await.unwrap();
    let mut copied = 0;
    for _ in 0..150 {
        copied = copy.last_sequence().await.unwrap();
        if copied >= ledger_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(copied, ledger_end, "the auditor's copy never caught up");
    let report = replay::verify::verify(&copy, &replay::VerifyOptions::default(), |_| {})
        .await
        .expect("the auditor verifies its copy");
    assert_eq!(
        report.last_seq,
        s.ledger().await.last_sequence().await.unwrap()
    );
    let verified = s.erp(&["verify"]);
    assert!(
        verified.status.success(),
        "erp verify --auth: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let status = s.erp(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains("processor: applied up to"),
        "erp status --auth: {text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (auditor, auditor_errors) = connect_as(&s.auth, &s.nats, AUDITOR).await;
    auditor
        .request("rpc.status", Bytes::new())
        .await
        .expect("rpc.status answers the auditor");

    // Refused: another user's subject, another entity's, and commands from the auditor.
    for (client, errors, subject) in [
        (&upstream, &upstream_errors, "rpc.cmd.UK01.clerk"),
        (&auditor, &auditor_errors, "rpc.cmd.UK01.auditor"),
        (&auditor, &auditor_errors, "cmd.UK01.auditor"),
    ] {
        client.publish(subject, bytes(&durable)).await.unwrap();
        client.flush().await.unwrap();
        violation_reported(errors, subject).await;
    }
    // Another user's answers cannot be read.
    let _ = upstream.subscribe("erp.answer.clerk.>").await;
    upstream.flush().await.unwrap();
    violation_reported(&upstream_errors, "erp.answer.clerk.>").await;
    let (shop, shop_errors) = connect_as(&s.auth, &s.nats, "shop-uk").await;
    shop.publish("rpc.cmd.DE01.shop-uk", bytes(&durable))
        .await
        .unwrap();
    shop.flush().await.unwrap();
    violation_reported(&shop_errors, "rpc.cmd.DE01.shop-uk").await;
    let outcome = s
        .send(
            "shop-uk",
            &command(None, "channel.define", json!({"channel": "shop"})),
        )
        .await;
    assert!(outcome.is_accepted(), "its own entity: {outcome:?}");

    let _ = stop_views.send(());
    views.await.unwrap().unwrap();
    s.stop().await;
}

#[tokio::test]
async fn identity_comes_from_the_credential_and_refused_claims_are_audited_against_their_sender() {
    // Goal: a user that claims another actor or a role it does not hold is refused
    // `forbidden`, and the refusal is recorded under the user's own actor; a purchase order's
    // requester cannot approve it, not even through a second credential claiming another
    // actor id; only integrations may name an end user, which the outcome record keeps.
    let s = Secured::start().await;
    define_basics(&s).await;
    let forbidden = |outcome: &Outcome, why: &str| match outcome {
        Outcome::Rejected {
            code,
            message,
            outcome_seq: Some(seq),
            ..
        } if code == "forbidden" && message.contains(why) => *seq,
        other => panic!("expected forbidden ({why}): {other:?}"),
    };
    let define = |channel: &str| json!({"channel": channel});
    let as_admin = s
        .send(
            "upstream",
            &command(Some(("upstream", "admin")), "channel.define", define("x1")),
        )
        .await;
    let role_claim = forbidden(&as_admin, "claims role `admin`");
    let as_other = s
        .send(
            "clerk",
            &command(
                Some(("someone-else", "clerk")),
                "channel.define",
                define("x2"),
            ),
        )
        .await;
    let actor_claim = forbidden(&as_other, "claims actor `someone-else`");
    let end_user = s
        .send("clerk", &{
            let mut c = command(None, "channel.define", define("x3"));
            c["on_behalf_of"] = json!("customer-9");
            c
        })
        .await;
    forbidden(&end_user, "does not act for end users");
    let mut for_customer = command(None, "channel.define", define("x4"));
    for_customer["on_behalf_of"] = json!("customer-9");
    let accepted = s.send("upstream", &for_customer).await;
    let Outcome::Accepted { outcome_seq, .. } = accepted else {
        panic!("{accepted:?}")
    };

    // A purchase order above the approval limit.
    let po = json!({"purchase_order": "PO-9", "supplier": "S1", "currency": "GBP", "expected_on": "2011-07-15",
        "lines": [{"line": 1, "sku": "A", "location": "WH1", "qty": 1000,
                   "unit_cost": {"amount": "10.00", "currency": "GBP"}}]});
    assert!(
        s.send("buyer-a", &command(None, "purchase.create_order", po))
            .await
            .is_accepted()
    );
    let approve = || command(None, "purchase.approve", json!({"purchase_order": "PO-9"}));
    let own = s.send("buyer-a", &approve()).await;
    assert!(
        matches!(&own, Outcome::Rejected { code, .. } if code == "approver_is_requester"),
        "{own:?}"
    );
    let mut claiming = approve();
    claiming["actor"] = json!({"id": "buyer-b", "role": "buyer"});
    let disguised = s.send("buyer-a", &claiming).await;
    let disguise = forbidden(&disguised, "claims actor `buyer-b`");
    assert!(s.send("buyer-b", &approve()).await.is_accepted());

    // The auditor's replay of the audit view lists each refusal under who made it.
    let copy = s.audit_copy().await;
    let last = copy.last_sequence().await.unwrap();
    let mut replayed = replay::replay::<_, Audit>(&copy, &[Resolved::at_seq(last)], |_| {})
        .await
        .unwrap();
    let audit = replayed.built.remove(0).model;
    assert!(audit.sequences("actor:upstream").contains(&role_claim));
    assert!(audit.sequences("actor:clerk").contains(&actor_claim));
    assert!(audit.sequences("actor:buyer-a").contains(&disguise));
    assert!(!audit.sequences("actor:buyer-b").contains(&disguise));
    assert!(!audit.sequences("actor:someone-else").contains(&actor_claim));
    // The end user is on the outcome record.
    let Some(ledger::LogRecord::Event(record)) = copy.get(outcome_seq).await.unwrap() else {
        panic!("no outcome record at {outcome_seq}")
    };
    match &record.envelope.event {
        ledger::Event::CommandAccepted(a) => {
            assert_eq!(
                a.on_behalf_of.as_ref().map(|a| a.as_str()),
                Some("customer-9")
            );
            assert_eq!(record.envelope.actor.id.as_str(), "upstream");
        }
        other => panic!("{other:?}"),
    }
    s.stop().await;
}

/// Publishes a message onto a ledger subject as a server administrator could (no checks).
async fn put_foreign(client: &async_nats::Client, subject: &str, payload: Bytes) -> u64 {
    async_nats::jetstream::new(client.clone())
        .publish(subject.to_owned(), payload)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

// `erp` runs as a process and blocks its thread while the processor runs in this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_is_passed_over_by_the_processor_every_projector_replay_and_verify() {
    // Goal: on a server without accounts, messages the processor did not write reach LEDGER
    // (a JetStream acknowledgement sent to a ledger subject, unreadable bytes, an old event
    // stored again outside any batch). The processor keeps accepting commands on those very
    // subjects, every projector keeps running and its snapshots equal replays, and
    // `erp verify` exits non-zero naming each foreign sequence while verifying the rest. The
    // processor never answers onto a ledger subject itself (routes 1 and 2).
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let client = command_client(&nats).await;
    let raw = nats.connect().await;
    let send = |c: Value| {
        let client = client.clone();
        async move { client.submit_json(bytes(&c)).await.unwrap() }
    };
    let clerk = Some(("tester", "clerk"));
    for (kind, data) in [
        (
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ),
        ("channel.define", json!({"channel": "web"})),
        ("item.define", json!({"sku": "A"})),
        ("item.define", json!({"sku": "B"})),
    ] {
        assert!(send(command(clerk, kind, data)).await.is_accepted());
    }
    let views = [
        "ats",
        "allocation",
        "audit",
        "margin",
        "finance",
        "replenishment",
        "exceptions",
    ];
    let mut projectors: Vec<_> = views
        .iter()
        .map(|v| projector_process_snapshotting(&nats, v, 10))
        .collect();
    let receive = |sku: &str, qty: i64| {
        command(
            clerk,
            "stock.receive",
            json!({"sku": sku, "location": "WH1", "qty": qty, "unit_cost": {"amount": "2.00", "currency": "GBP"}}),
        )
    };
    let place = |order: &str, sku: &str, qty: i64| {
        command(
            clerk,
            "order.place",
            json!({"order": order, "channel": "web", "ship_to_region": "UK",
                   "lines": [{"line": 1, "sku": sku, "qty": qty,
                              "unit_price": {"amount": "5.00", "currency": "GBP"}}]}),
        )
    };
    assert!(send(receive("A", 10)).await.is_accepted());
    assert!(send(place("O1", "A", 2)).await.is_accepted());

    let log = nats.open(ledger_config()).await;
    let before = log.last_sequence().await.unwrap();
    // Routes 1 and 2: the processor does not answer onto a ledger subject.
    raw.publish_with_reply("rpc.cmd.UK01", "led.sku.A", Bytes::from_static(b"not json"))
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Erp-Reply-To", "led.sku.A");
    async_nats::jetstream::new(raw.clone())
        .publish_with_headers("cmd.UK01", headers, bytes(&receive("B", 1)))
        .await
        .unwrap()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        foreign_in(&log).await,
        Vec::new(),
        "no answer went into the ledger"
    );
    // Route 3 cannot be stopped without accounts: the server itself acknowledges into LEDGER.
    raw.publish_with_reply("cmd.UK01", "led.sku.A", bytes(&receive("B", 1)))
        .await
        .unwrap();
    raw.flush().await.unwrap();
    // And what an administrator could put there by hand.
    let garbage = put_foreign(&raw, "led.sku.A", Bytes::from_static(b"\x01garbage")).await;
    let copy_of = match log.get(before - 1).await.unwrap() {
        Some(ledger::LogRecord::Event(e)) => e,
        other => panic!("{other:?}"),
    };
    let stored = async_nats::jetstream::new(raw.clone())
        .get_stream("LEDGER")
        .await
        .unwrap()
        .direct_get(copy_of.seq)
        .await
        .unwrap();
    let replayed = put_foreign(&raw, &stored.subject, stored.payload.clone()).await;

    // The processor goes on, on the very subjects the foreign messages sit on.
    for (i, c) in [
        receive("A", 5),
        place("O2", "A", 3),
        receive("B", 4),
        place("O3", "B", 1),
    ]
    .into_iter()
    .enumerate()
    {
        let outcome = send(c).await;
        assert!(
            outcome.is_accepted(),
            "command {i} after the foreign messages: {outcome:?}"
        );
    }
    let foreign: Vec<u64> = foreign_in(&log).await.iter().map(|f| f.seq).collect();
    assert_eq!(foreign.len(), 3, "{foreign:?}");
    assert!(foreign.contains(&garbage) && foreign.contains(&replayed));
    let last = log.last_sequence().await.unwrap();

    // Every projector reached the end; its snapshot equals a replay to the same sequence.
    let js = log.jetstream().clone();
    for view in views {
        let (at, bytes) = last_snapshot(&js, view, last).await;
        let replayed = replayed_view(&log, view, at).await;
        assert_eq!(at, last, "{view}");
        assert!(
            bytes == replayed,
            "{view}: snapshot at {at} differs from the replay"
        );
    }
    // Each is an exception of the ledger's integrity, first in the queue, and can be worked.
    let queue = projections::client::ViewClient::new(raw.clone())
        .ask(
            "exceptions",
            "queue",
            json!({"limit": 3}),
            Some(last),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .result;
    let listed: Vec<u64> = queue["exceptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["kind"], "ForeignMessage", "{e}");
            assert_eq!(e["severity"], "Critical", "{e}");
            e["on"]["Ledger"]["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        listed
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        foreign.iter().copied().collect(),
        "{queue}"
    );
    for p in &mut projectors {
        assert!(p.try_wait().unwrap().is_none(), "a projector exited");
        stop(p);
    }

    // `erp verify` and `erp status` name them.
    let verified = erp(&nats.url(), &["verify"]);
    let out = String::from_utf8_lossy(&verified.stdout);
    let err = String::from_utf8_lossy(&verified.stderr);
    assert!(!verified.status.success(), "{out}{err}");
    assert!(
        out.contains(&format!("verified sequences 1..={last}")),
        "{out}"
    );
    for seq in &foreign {
        assert!(
            out.contains(&format!("foreign message at sequence {seq} ")),
            "{seq} not named: {out}"
        );
    }
    assert!(
        err.contains("3 messages in the ledger were not written by its writer"),
        "{err}"
    );
    let status = erp(&nats.url(), &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("foreign messages in the ledger (never applied): 3"),
        "{text}"
    );
    // An integrity exception is worked like any other.
    let resolved = send(command(
        Some(("ops", "controller")),
        "exception.resolve",
        json!({"exception": {"kind": "ForeignMessage", "on": {"Ledger": {"seq": garbage}}},
               "resolution": "NoActionNeeded", "note": "an administrator's test message"}),
    ))
    .await;
    assert!(resolved.is_accepted(), "{resolved:?}");
    processor.stop().await;
}

/// The newest snapshot of `view` at `seq` or later, serialised.
async fn last_snapshot(
    js: &async_nats::jetstream::Context,
    view: &str,
    seq: u64,
) -> (u64, Vec<u8>) {
    use projections::allocation::Allocation;
    use projections::ats::Ats;
    use projections::finance::Finance;
    use projections::margin::Margin;
    use projections::replenish::Replenishment;
    async fn read<V: projections::View>(
        js: &async_nats::jetstream::Context,
    ) -> Option<(u64, Vec<u8>)> {
        let bucket = projections::runtime::served_bucket(js, V::NAME)
            .await
            .unwrap()?;
        let (view, at) = projections::runtime::read_snapshot::<V>(js, &bucket)
            .await
            .unwrap()?;
        Some((at, serde_json::to_vec(&view).unwrap()))
    }
    for _ in 0..300 {
        let found = match view {
            "ats" => read::<Ats>(js).await,
            "allocation" => read::<Allocation>(js).await,
            "audit" => read::<Audit>(js).await,
            "margin" => read::<Margin>(js).await,
            "finance" => read::<Finance>(js).await,
            "replenishment" => read::<Replenishment>(js).await,
            "exceptions" => read::<projections::exceptions::Exceptions>(js).await,
            other => panic!("{other}"),
        };
        if let Some((at, bytes)) = found
            && at >= seq
        {
            return (at, bytes);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{view} never saved a snapshot at {seq}");
}

async fn replayed_view(log: &JetStreamLog, view: &str, seq: u64) -> Vec<u8> {
    use projections::allocation::Allocation;
    use projections::ats::Ats;
    use projections::finance::Finance;
    use projections::margin::Margin;
    use projections::replenish::Replenishment;
    async fn at<V: projections::View>(log: &JetStreamLog, seq: u64) -> Vec<u8> {
        let mut r = replay::replay::<_, V>(log, &[Resolved::at_seq(seq)], |_| {})
            .await
            .unwrap();
        serde_json::to_vec(&r.built.remove(0).model).unwrap()
    }
    match view {
        "ats" => at::<Ats>(log, seq).await,
        "allocation" => at::<Allocation>(log, seq).await,
        "audit" => at::<Audit>(log, seq).await,
        "margin" => at::<Margin>(log, seq).await,
        "finance" => at::<Finance>(log, seq).await,
        "replenishment" => at::<Replenishment>(log, seq).await,
        "exceptions" => at::<projections::exceptions::Exceptions>(log, seq).await,
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_command_that_panics_the_decider_is_recorded_internal_error_and_the_next_is_served() {
    // Goal: an `erp processor` process whose decider panics on one command (a test hook that
    // stands for a decider bug) records that command `internal_error` and answers the next
    // one; the durable intake does not deliver it again; after a kill -9 and restart, the
    // command sent again gets the recorded answer and nothing new is appended.
    let nats = TestNats::start();
    let spawn = || {
        crate::harness::erp_command()
            .args(["processor", "--nats", &nats.url()])
            .env("ERP_FAULT_PANIC_ON_SKU", "BOOM")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("erp processor starts")
    };
    let mut child = spawn();
    let client = command_client(&nats).await;
    let clerk = Some(("tester", "clerk"));
    let wait_for_processor = || async {
        for _ in 0..100 {
            let probe = command(clerk, "channel.define", json!({"channel": "probe"}));
            if let Ok(o) = client.submit_json(bytes(&probe)).await
                && o.is_accepted()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the processor never answered");
    };
    wait_for_processor().await;
    for (kind, data) in [
        (
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK"}),
        ),
        ("item.define", json!({"sku": "A"})),
    ] {
        let o = client
            .submit_json(bytes(&command(clerk, kind, data)))
            .await
            .unwrap();
        assert!(o.is_accepted(), "{o:?}");
    }
    let receive = |sku: &str| {
        command(
            clerk,
            "stock.receive",
            json!({"sku": sku, "location": "WH1", "qty": 3, "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
        )
    };
    let poison = receive("BOOM");
    let first = client.submit_json(bytes(&poison)).await.unwrap();
    let Outcome::Rejected {
        code, outcome_seq, ..
    } = &first
    else {
        panic!("{first:?}")
    };
    assert_eq!(code, "internal_error");
    assert!(outcome_seq.is_some(), "recorded");
    assert!(
        client
            .submit_json(bytes(&receive("A")))
            .await
            .unwrap()
            .is_accepted()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the processor is still running"
    );

    // Durably: answered, acknowledged, not delivered again.
    let raw = nats.connect().await;
    let inbox = raw.new_inbox();
    let mut answers = raw.subscribe(inbox.clone()).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Erp-Reply-To", inbox.as_str());
    async_nats::jetstream::new(raw.clone())
        .publish_with_headers("cmd.UK01", headers, bytes(&receive("BOOM")))
        .await
        .unwrap()
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answers.next())
        .await
        .unwrap()
        .unwrap();
    let durable: Outcome = serde_json::from_slice(&answer.payload).unwrap();
    assert!(
        matches!(&durable, Outcome::Rejected { code, .. } if code == "internal_error"),
        "{durable:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), answers.next())
            .await
            .is_err(),
        "delivered again"
    );

    // Killed and restarted (the hook still set): the recorded answer, nothing appended.
    let _ = child.kill();
    let _ = child.wait();
    let log = nats.open(ledger_config()).await;
    let length = log.last_sequence().await.unwrap();
    let mut child = spawn();
    let mut again = None;
    for _ in 0..100 {
        if let Ok(o) = client.submit_json(bytes(&poison)).await {
            again = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(again.as_ref(), Some(&first));
    assert_eq!(log.last_sequence().await.unwrap(), length);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_command_sent_on_another_entitys_subject_or_with_extra_tokens_is_invalid() {
    // Goal: the subject names the legal entity the server let the sender publish for; a body
    // for another entity, or a subject with tokens the layout does not have, is answered
    // `invalid` naming the field, and nothing is appended.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let raw = nats.connect().await;
    let log = nats.open(ledger_config()).await;
    let before = log.last_sequence().await.unwrap();
    let body = command(
        Some(("t", "admin")),
        "channel.define",
        json!({"channel": "web"}),
    );
    let cases: BTreeMap<&str, &str> = [
        ("rpc.cmd.DE01", "legal_entity"),
        ("rpc.cmd.UK01.extra", "subject"),
        ("rpc.cmd.UK01.a.b", "subject"),
    ]
    .into_iter()
    .collect();
    for (subject, field) in cases {
        let answer = raw.request(subject, bytes(&body)).await.unwrap();
        let outcome: Outcome = serde_json::from_slice(&answer.payload).unwrap();
        match &outcome {
            Outcome::Invalid { field: f, .. } if f == field => {}
            other => panic!("{subject}: {other:?}"),
        }
    }
    assert_eq!(log.last_sequence().await.unwrap(), before);
    processor.stop().await;
}
