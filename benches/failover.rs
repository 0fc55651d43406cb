//! Failover: a three-node cluster on this machine's loopback (fsync always) with the ledger
//! and everything else replicated three times, an `erp processor --replicas 3` process
//! connected to all nodes, and a client sending one command at a time (retrying, same ids).
//! The node leading the ledger stream is killed (-9) again and again; each time the bench
//! records when the survivors elected a new leader and when the first command was accepted
//! after the kill, then restarts the node and waits for it to catch up.
//!
//! Run: `cargo bench --bench failover` (`ERP_FAILOVER_KILLS`, default 10).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ledger::server::{self, LocalServer, ServerOptions};
use serde_json::json;

fn main() {
    common::block_on(run());
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The ledger's leader node, as the given node sees it (`None` while there is none).
async fn leader(url: &str) -> Option<String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(500))
        .connect(url)
        .await
        .ok()?;
    let js = async_nats::jetstream::new(client);
    let mut stream = tokio::time::timeout(Duration::from_millis(500), js.get_stream("LEDGER"))
        .await
        .ok()?
        .ok()?;
    let info = tokio::time::timeout(Duration::from_millis(500), stream.info())
        .await
        .ok()?
        .ok()?;
    info.cluster.as_ref().and_then(|c| c.leader.clone())
}

/// Whether every replica of the ledger is current again.
async fn replicas_current(url: &str) -> bool {
    let Ok(client) = async_nats::connect(url).await else {
        return false;
    };
    let js = async_nats::jetstream::new(client);
    let Ok(mut stream) = js.get_stream("LEDGER").await else {
        return false;
    };
    let Ok(info) = stream.info().await else {
        return false;
    };
    info.cluster.as_ref().is_some_and(|c| {
        c.leader.is_some() && c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current)
    })
}

async fn run() {
    let kills: usize = std::env::var("ERP_FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (binary, version) = common::nats_server();
    let ports: Vec<u16> = (0..3).map(|_| server::free_port().unwrap()).collect();
    let route_ports: Vec<u16> = (0..3).map(|_| server::free_port().unwrap()).collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<LocalServer> = (0..3)
        .map(|i| {
            LocalServer::start(ServerOptions {
                binary: binary.clone(),
                port: ports[i],
                data_dir: dirs[i].path().to_path_buf(),
                sync_always: true,
                die_with_parent: true,
                extra_config: server::cluster_block("erp_bench", route_ports[i], &route_ports),
            })
            .expect("node starts")
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(LocalServer::url).collect();
    let all = urls.join(",");

    // The cluster elects its JetStream leader first: create the ledger once it can.
    let config = ledger::jetstream::LogConfig {
        replicas: 3,
        ..ledger::jetstream::LogConfig::ledger()
    };
    let mut tries = 0;
    loop {
        let client = ledger::auth::connect(&all).await.expect("client connects");
        match ledger::jetstream::JetStreamLog::open(client, config.clone()).await {
            Ok(_) => break,
            Err(e) if tries < 100 => {
                tries += 1;
                if tries % 10 == 0 {
                    eprintln!("waiting for the cluster: {e}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the cluster never took the ledger: {e}"),
        }
    }
    let mut processor = std::process::Command::new(env!("CARGO_BIN_EXE_erp"));
    processor
        .args(["processor", "--nats", &all, "--replicas", "3"])
        .env("RUST_LOG", "warn,commands::processor=info,ledger=info")
        .stdout(std::process::Stdio::null());
    server::die_with_parent(&mut processor);
    let mut processor = processor.spawn().expect("erp processor");

    // The client: one command at a time, each sent again (same id) until it is accepted.
    let client = ledger::auth::connect(&all).await.expect("client connects");
    let sender = commands::client::CommandClient::new(client, Duration::from_millis(500))
        .retrying(Duration::from_secs(120));
    let started = Instant::now();
    // Milliseconds since `started` when the latest accepted command was first sent, and when
    // its answer came.
    let accepted_at = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let sending = {
        let accepted_at = accepted_at.clone();
        tokio::spawn(async move {
            for i in 0u64.. {
                let body = Bytes::from(
                    json!({"command_id": uuid::Uuid::now_v7(), "actor": {"id": "bench", "role": "admin"},
                           "legal_entity": "UK01", "effective_at": "2011-12-01T00:00:00Z",
                           "type": "channel.define", "data": {"channel": format!("c{i}")}})
                    .to_string(),
                );
                let sent = started.elapsed().as_millis() as u64;
                let mut ok = false;
                sender
                    .submit_all([body], 1, |_, o| {
                        ok = matches!(o, Ok(ref o) if o.is_accepted())
                    })
                    .await;
                if ok {
                    *accepted_at.lock().unwrap() = (sent, started.elapsed().as_millis() as u64);
                }
            }
        })
    };
    // Warm up: commands flow.
    while accepted_at.lock().unwrap().1 == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut elections = Vec::new();
    let mut first_accepts = Vec::new();
    let mut beyond = Vec::new();
    for round in 0..kills {
        let name = loop {
            if let Some(name) = leader(&urls[0]).await {
                break name;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let victim = ports
            .iter()
            .position(|p| format!("erp_{p}") == name)
            .expect("the leader is one of ours");
        let survivor = (victim + 1) % 3;
        let killed = Instant::now();
        let killed_ms = started.elapsed().as_millis() as u64;
        nodes[victim].kill();
        // Election: a survivor reports a leader other than the dead node.
        let elected = loop {
            if let Some(new) = leader(&urls[survivor]).await
                && new != name
            {
                break killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // First command accepted after the kill: sent after it, or sent before and answered
        // half a second or more after it (not one whose answer was already on its way).
        let accepted = loop {
            let (sent, at) = *accepted_at.lock().unwrap();
            if at > killed_ms && (sent > killed_ms || at >= killed_ms + 500) {
                break Duration::from_millis(at - killed_ms);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        eprintln!(
            "kill {}: election {:.2} s, first accepted command {:.2} s after the kill",
            round + 1,
            elected.as_secs_f64(),
            accepted.as_secs_f64()
        );
        elections.push(elected.as_secs_f64());
        first_accepts.push(accepted.as_secs_f64());
        beyond.push((accepted.as_secs_f64() - elected.as_secs_f64()).max(0.0));
        nodes[victim].restart().expect("node restarts");
        let back = Instant::now();
        while !replicas_current(&urls[survivor]).await && back.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    sending.abort();
    let pauses = client_pauses(&mut nodes, &urls).await;
    let _ = processor.kill();
    let _ = processor.wait();
    for v in [&mut elections, &mut first_accepts, &mut beyond] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "nats-server {version}, 3 nodes on loopback, sync_interval always, R3; {kills} leader kills"
    );
    println!();
    println!(
        "Client with {IN_FLIGHT} commands in flight, connected to the node that is killed (-9) mid-load:"
    );
    println!();
    println!(
        "| kill | commands | longest pause between answers | kill to next answer | without an answer at the end |"
    );
    println!("|---|---|---|---|---|");
    for (i, p) in pauses.iter().enumerate() {
        println!(
            "| {} | {} | {:.2} s | {:.2} s | {} |",
            i + 1,
            p.commands,
            p.longest_pause.as_secs_f64(),
            p.kill_to_answer.as_secs_f64(),
            p.unanswered
        );
    }
    println!();
    println!("| measure | p50 | max |");
    println!("|---|---|---|");
    for (what, v) in [
        ("kill to new leader elected", &elections),
        ("kill to first accepted command", &first_accepts),
        ("first accepted command after the election", &beyond),
    ] {
        println!(
            "| {what} | {:.2} s | {:.2} s |",
            percentile(v, 0.5),
            v[v.len() - 1]
        );
    }
}

/// Commands a client keeps in flight while its node is killed.
const IN_FLIGHT: usize = 200;

struct ClientPause {
    commands: usize,
    longest_pause: Duration,
    kill_to_answer: Duration,
    unanswered: usize,
}

/// A client with `IN_FLIGHT` commands in flight, connected first to one node (kept first in
/// its server list), sends a stream of commands; that node is killed (-9) a few seconds in and
/// restarted after the load. Measures the longest gap between two answers the client is
/// handed, and what has no answer at the end.
async fn client_pauses(nodes: &mut [LocalServer], urls: &[String]) -> Vec<ClientPause> {
    let rounds: usize = std::env::var("ERP_FAILOVER_CLIENT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut results = Vec::new();
    for round in 0..rounds {
        let victim = round % nodes.len();
        let mut order = vec![urls[victim].clone()];
        order.extend(urls.iter().filter(|u| **u != urls[victim]).cloned());
        let client = async_nats::ConnectOptions::new()
            .retain_servers_order()
            .connect(
                order
                    .iter()
                    .map(|u| u.parse::<async_nats::ServerAddr>().expect("a server URL"))
                    .collect::<Vec<_>>(),
            )
            .await
            .expect("client connects");
        let sender = commands::client::CommandClient::new(client, Duration::from_secs(1))
            .retrying(Duration::from_secs(120));
        let count = 40_000;
        let bodies: Vec<Bytes> = (0..count)
            .map(|i| {
                Bytes::from(
                    json!({"command_id": uuid::Uuid::now_v7(), "actor": {"id": "bench", "role": "admin"},
                           "legal_entity": "UK01", "effective_at": "2011-12-01T00:00:00Z",
                           "type": "channel.define", "data": {"channel": format!("p{round}-{i}")}})
                    .to_string(),
                )
            })
            .collect();
        let started = Instant::now();
        let answered_at = Arc::new(std::sync::Mutex::new(Vec::with_capacity(count)));
        let load = {
            let answered_at = answered_at.clone();
            tokio::spawn(async move {
                let mut unanswered = 0;
                sender
                    .submit_all(bodies, IN_FLIGHT, |_, o| {
                        if !matches!(
                            o,
                            Ok(commands::processor::Outcome::Accepted { .. }
                                | commands::processor::Outcome::Rejected { .. })
                        ) {
                            unanswered += 1;
                        }
                        answered_at.lock().unwrap().push(started.elapsed());
                    })
                    .await;
                unanswered
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed = started.elapsed();
        nodes[victim].kill();
        let unanswered = load.await.expect("load runs");
        let times = answered_at.lock().unwrap().clone();
        let longest_pause = times
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or_default();
        let kill_to_answer = times
            .iter()
            .find(|t| **t > killed)
            .map_or(Duration::ZERO, |t| *t - killed);
        eprintln!(
            "client kill {}: longest pause {:.2} s, next answer {:.2} s after the kill, {unanswered} without an answer",
            round + 1,
            longest_pause.as_secs_f64(),
            kill_to_answer.as_secs_f64()
        );
        results.push(ClientPause {
            commands: count,
            longest_pause,
            kill_to_answer,
            unanswered,
        });
        nodes[victim].restart().expect("node restarts");
        let back = Instant::now();
        while !replicas_current(&urls[(victim + 1) % nodes.len()]).await
            && back.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    results
}
