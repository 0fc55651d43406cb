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
    let _heavy = crate::harness::heavy().await;
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

/// The node leading stream `name`, asked through `js` (a client that fails over between
/// nodes); `None` while it has no leader.
async fn leader_of(
    cluster: &TestCluster,
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Option<usize> {
    let mut stream = js.get_stream(name).await.ok()?;
    let info = stream.info().await.ok()?;
    let leader = info.cluster.as_ref()?.leader.clone()?;
    cluster.index_of(&leader)
}

/// Waits until every stream has a leader and all its replicas are current.
async fn wait_until_all_current(js: &async_nats::jetstream::Context, attempts: usize) {
    for _ in 0..attempts {
        let mut all = true;
        let mut names = js.stream_names();
        while let Some(name) = futures::StreamExt::next(&mut names).await {
            let Ok(name) = name else {
                all = false;
                break;
            };
            let info = match js.get_stream(&name).await {
                Ok(mut stream) => stream.info().await.ok().cloned(),
                Err(_) => None,
            };
            let current = info
                .as_ref()
                .and_then(|i| i.cluster.as_ref())
                .is_some_and(|c| c.leader.is_some() && c.replicas.iter().all(|r| r.current));
            if !current {
                all = false;
                break;
            }
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the cluster's streams never all had a leader and current replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_of_each_asset_in_turn_keeps_views_answering_and_loses_nothing() {
    let _heavy = crate::harness::heavy().await;
    // Goal: the node leading the ledger, the command intake, the ATS view's bucket and the
    // views' snapshot store is killed in turn, each during a load: the ATS view answers from
    // the survivors throughout, the projector never starts over from sequence 0, and every
    // command gets its one outcome.
    let mut cluster = TestCluster::start(3);
    let urls = cluster.urls();
    let logs = tempfile::tempdir().unwrap();
    let projector_log = logs.path().join("projector.log");
    let processor_log = logs.path().join("processor.log");
    let processor = Supervised::run_logged(
        ["processor", "--nats", &urls, "--replicas", "3"]
            .map(String::from)
            .to_vec(),
        processor_log.clone(),
    );
    let projector = Supervised::run_logged(
        [
            "project",
            "ats",
            "--nats",
            &urls,
            "--replicas",
            "3",
            "--snapshot-events",
            "2000",
            "--snapshot-seconds",
            "1",
        ]
        .map(String::from)
        .to_vec(),
        projector_log.clone(),
    );
    let client = ledger::auth::connect(&urls).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let views = projections::client::ViewClient::new(client);

    let bodies = uci_bodies(5);
    let phases = 5;
    let chunk = bodies.len().div_ceil(phases);
    let mut answers = std::collections::HashMap::new();
    let mut killed = Vec::new();
    for (phase, part) in bodies.chunks(chunk).enumerate() {
        let part = Arc::new(part.to_vec());
        let load = tokio::spawn(load_until_answered(urls.clone(), part.clone()));
        if phase > 0 {
            // The first phase only warms up: the view's bucket and snapshot exist after it.
            let asset = match phase {
                1 => "LEDGER".to_owned(),
                2 => "COMMANDS".to_owned(),
                3 => {
                    let bucket = projections::runtime::served_bucket(&js, "ats")
                        .await
                        .unwrap()
                        .expect("the ATS view is served");
                    format!("KV_{bucket}")
                }
                _ => "OBJ_erp_snapshots".to_owned(),
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut leader = None;
            for _ in 0..100 {
                leader = leader_of(&cluster, &js, &asset).await;
                if leader.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let leader = leader.unwrap_or_else(|| panic!("{asset} has no leader"));
            cluster.nodes[leader].kill();
            killed.push((asset.clone(), leader));
            // The view answers from the survivors while the asset elects a new leader.
            let mut answered = false;
            for _ in 0..100 {
                let asked = views
                    .ask(
                        "ats",
                        "status",
                        serde_json::json!({}),
                        None,
                        Duration::from_secs(2),
                    )
                    .await;
                if asked.is_ok() {
                    answered = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                answered,
                "the ATS view stopped answering after {asset}'s leader was killed"
            );
            eprintln!("killed node {leader}, the leader of {asset}");
            let part_answers = match load.await {
                Ok(answers) => answers,
                Err(e) => {
                    let said = std::fs::read_to_string(&processor_log).unwrap_or_default();
                    let tail: Vec<&str> = said.lines().rev().take(200).collect();
                    for line in tail.into_iter().rev() {
                        eprintln!("processor: {line}");
                    }
                    panic!("the load after killing {asset}'s leader failed: {e}");
                }
            };
            cluster.nodes[leader].restart().expect("the node restarts");
            wait_until_all_current(&js, 600).await;
            for (i, o) in part_answers {
                answers.insert(phase * chunk + i, o);
            }
        } else {
            for (i, o) in load.await.unwrap() {
                answers.insert(i, o);
            }
            // A snapshot of the view is stored before any kill.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    eprintln!("killed the leaders of {killed:?}");

    let log = cluster.open(0).await;
    let end = log.last_sequence().await.unwrap();
    crate::faults::wait_for_ats(&views, end, 300).await;
    projector.stop();
    // Retries of every command get their first answers: the processor is still running.
    check_ledger_after_recovery(&log, &urls, &bodies, &answers).await;
    processor.stop();

    // Every start of the projector after the first resumed from a checkpoint.
    let said = std::fs::read_to_string(&projector_log).unwrap();
    let opened: Vec<u64> = said
        .lines()
        .filter(|l| l.contains("projector opened"))
        .map(|l| {
            let at = l.find("checkpoint=").expect("the checkpoint is logged") + "checkpoint=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    eprintln!(
        "the projector started {} time(s), at checkpoints {opened:?}",
        opened.len()
    );
    for line in said
        .lines()
        .filter(|l| l.contains("ERROR") || l.starts_with("error"))
    {
        eprintln!("projector: {line}");
    }
    assert!(!opened.is_empty(), "{said}");
    assert!(
        opened[1..].iter().all(|&c| c > 0),
        "the projector started over from 0: checkpoints at each start {opened:?}"
    );
}
