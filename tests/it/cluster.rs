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
    check_ledger_after_recovery(&new_leader, &urls, &bodies, &answers).await;
    drop(processor);
}

async fn log_on(cluster: &TestCluster, node: usize) -> ledger::jetstream::JetStreamLog {
    cluster.open(node).await
}
