//! A three-node JetStream cluster with the ledger replicated three times: fencing holds across
//! nodes, and losing the stream's leader during a load loses nothing acknowledged.

use std::sync::Arc;
use std::time::Duration;

use ledger::EventLog;

use crate::faults::{Supervised, check_ledger_after_recovery, load_until_answered};
use crate::harness::TestCluster;
use crate::log::{race_on_one_subject, stock};
use crate::projections::uci_bodies;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_appends_through_different_nodes_exactly_one_wins() {
    let cluster = TestCluster::start(3);
    let first = cluster.open(0).await;
    let second = cluster.open(1).await;
    race_on_one_subject(&first, &second, 10).await;
    let third = cluster.open(2).await;
    assert_eq!(third.read_subject(&stock("HOT")).await.unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_during_a_load_loses_nothing_acknowledged() {
    let mut cluster = TestCluster::start(3);
    let log = cluster.open(0).await;
    let leader = log
        .jetstream()
        .get_stream("LEDGER")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("a stream leader");
    let leader = cluster
        .index_of(&leader)
        .expect("the leader is one of ours");
    let survivor = (leader + 1) % 3;

    // The processor as a process, connected to every node, with the replicated ledger.
    let urls = cluster.urls();
    let processor = Supervised::run(
        ["processor", "--nats", &urls, "--replicas", "3"]
            .map(String::from)
            .to_vec(),
    );

    let bodies = Arc::new(uci_bodies(1));
    let load = tokio::spawn(load_until_answered(urls.clone(), bodies.clone()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.nodes[leader].kill();
    let answers = load.await.unwrap();
    let new_leader = log_on(&cluster, survivor).await;
    // Reads need the stream's new leader: on a busy machine the election can outlast the load.
    let mut elected = false;
    for _ in 0..300 {
        let info = new_leader
            .jetstream()
            .get_stream("LEDGER")
            .await
            .ok()
            .map(|s| s.cached_info().clone());
        if info
            .as_ref()
            .and_then(|i| i.cluster.as_ref())
            .is_some_and(|c| c.leader.is_some())
            && new_leader.last_sequence().await.is_ok()
        {
            elected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(elected, "the ledger never got a new leader");
    check_ledger_after_recovery(&new_leader, &urls, &bodies, &answers).await;
    drop(processor);
}

async fn log_on(cluster: &TestCluster, node: usize) -> ledger::jetstream::JetStreamLog {
    cluster.open(node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_the_system_uses_is_kept_on_as_many_nodes_as_the_ledger() {
    // Goal: with --replicas 3, the processor and a projector create every stream and bucket
    // they use (the ledger, the command intake, both snapshot stores, the view registry and
    // the view's bucket) with three copies, so losing a node loses none of them; a component
    // started without --replicas on that ledger refuses to run, naming the stream and the fix.
    let cluster = TestCluster::start(3);
    let urls = cluster.urls();
    let processor = Supervised::run(
        ["processor", "--nats", &urls, "--replicas", "3"]
            .map(String::from)
            .to_vec(),
    );
    let projector = Supervised::run(
        ["project", "ats", "--nats", &urls, "--replicas", "3"]
            .map(String::from)
            .to_vec(),
    );
    let bodies = Arc::new(uci_bodies(1));
    load_until_answered(urls.clone(), bodies).await;
    // The projector (restarted by its supervisor if it started before the cluster was ready)
    // has caught up: its buckets exist.
    let log = cluster.open(0).await;
    let end = log.last_sequence().await.unwrap();
    let views = projections::client::ViewClient::new(ledger::auth::connect(&urls).await.unwrap());
    crate::faults::wait_for_ats(&views, end, 300).await;
    processor.stop();
    projector.stop();

    let js = log.jetstream();
    let mut names = js.stream_names();
    let mut replicas = std::collections::BTreeMap::new();
    while let Some(name) = futures::StreamExt::next(&mut names).await {
        let name = name.unwrap();
        let mut stream = js.get_stream(&name).await.unwrap();
        let info = stream.info().await.unwrap();
        replicas.insert(name, info.config.num_replicas);
    }
    for expected in [
        "LEDGER",
        "COMMANDS",
        "OBJ_LEDGER_snapshots",
        "KV_erp_views",
        "OBJ_erp_snapshots",
    ] {
        assert!(
            replicas.contains_key(expected),
            "{expected} missing: {replicas:?}"
        );
    }
    assert!(
        replicas.keys().any(|n| n.starts_with("KV_view_ats_")),
        "no view bucket: {replicas:?}"
    );
    assert!(
        replicas.values().all(|&r| r == 3),
        "a stream with fewer than three copies: {replicas:?}"
    );

    // Started without --replicas: refuses, and says what to do.
    let refused = crate::harness::erp_command()
        .args(["processor", "--nats", &urls])
        .env("RUST_LOG", "error")
        .env_remove("ERP_LEDGER_REPLICAS")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("stream LEDGER is kept on 3 node(s), but this system runs with --replicas 1"),
        "{said}"
    );
}
