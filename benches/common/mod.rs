//! What the benches share: a fresh fsyncing nats-server, a processor on it, the raw read
//! they are compared with, and envelopes made the processor's way. Each bench uses its part.
#![allow(dead_code)]

/// The allocator the `erp` binary uses (src/main.rs), so benches measure what runs, counting
/// the bytes live on the heap (`heap_bytes`): resident memory also holds pages the allocator
/// keeps after frees, which hides what a structure itself costs.
#[global_allocator]
static ALLOCATOR: Counting = Counting;

static HEAP_BYTES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

struct Counting;

// SAFETY: every call is passed to mimalloc unchanged; only a counter is kept beside it.
// (A global allocator can only be written with `unsafe`; benches only.)
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        HEAP_BYTES.fetch_add(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        HEAP_BYTES.fetch_sub(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        HEAP_BYTES.fetch_add(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        HEAP_BYTES.fetch_add(
            new as i64 - layout.size() as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        // SAFETY: the caller's contract is passed on.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new) }
    }
}

/// Bytes allocated and not yet freed, as requested (not counting the allocator's rounding).
pub fn heap_bytes() -> u64 {
    HEAP_BYTES.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64
}

use std::path::Path;

use ledger::jetstream::{JetStreamLog, LogConfig, SERVER_VERSION_MIN};
use ledger::server::{self, LocalServer, ServerOptions};

/// A bench's server: stopped, and its store removed, when dropped.
pub struct BenchServer {
    pub server: LocalServer,
    /// The nats-server release, for the report.
    pub version: String,
    _dir: tempfile::TempDir,
}

/// The pinned nats-server binary (installed if needed) and its release.
pub fn nats_server() -> (std::path::PathBuf, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary =
        server::find_or_install(&root.join(".tools"), SERVER_VERSION_MIN).expect("nats-server");
    let version = server::binary_version(&binary).expect("version");
    (binary, version.to_string())
}

/// Starts the pinned nats-server (installed if needed) with `sync_interval: always`.
pub fn start_server() -> BenchServer {
    start_server_syncing(true)
}

/// Starts the pinned nats-server; `sync_always: false` leaves fsync to the server's default
/// interval (for reference rates only: such a server can lose acknowledged writes).
pub fn start_server_syncing(sync_always: bool) -> BenchServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let (binary, version) = nats_server();
    let server = LocalServer::start(ServerOptions {
        binary,
        port: server::free_port().expect("port"),
        data_dir: dir.path().to_path_buf(),
        sync_always,
        die_with_parent: true,
        extra_config: String::new(),
    })
    .expect("server");
    BenchServer {
        server,
        version,
        _dir: dir,
    }
}

/// The processor, in-process, serving until the returned task is aborted.
pub async fn start_processor(
    client: &async_nats::Client,
) -> tokio::task::JoinHandle<Result<(), commands::service::ServiceError>> {
    let log = JetStreamLog::open(client.clone(), LogConfig::ledger())
        .await
        .expect("log");
    let service = commands::service::Service::start(
        client.clone(),
        log,
        commands::service::ServiceConfig::default(),
    )
    .await
    .expect("processor");
    tokio::spawn(service.serve(futures::future::pending()))
}

/// Raw JetStream ordered consumption of the log's stream up to `last`: a push ordered
/// consumer, messages counted, nothing decoded. Messages per second.
pub async fn raw_read(log: &JetStreamLog, last: u64) -> f64 {
    use futures::StreamExt;
    let stream = log
        .jetstream()
        .get_stream(&log.config().stream)
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
            deliver_subject: log.client().new_inbox(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let started = std::time::Instant::now();
    let mut count = 0u64;
    while let Some(msg) = messages.next().await {
        count += 1;
        if msg.expect("message").info().expect("info").stream_sequence >= last {
            break;
        }
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// The envelope the processor would store for one of `command`'s events.
pub fn envelope(
    command: &commands::Command,
    subject: ledger::Subject,
    event: ledger::Event,
) -> ledger::Envelope {
    ledger::Envelope::from_draft(
        commands::processor::draft(command, subject, event),
        ledger::EventHash::GENESIS,
    )
}

/// Raw durable appends: `batches` atomic batches of `batch` messages of `size` bytes into a
/// scratch stream, up to `in_flight` commits awaiting their acks. Messages per second.
pub async fn raw_atomic(
    client: &async_nats::Client,
    name: &str,
    size: usize,
    batch: usize,
    batches: usize,
    in_flight: usize,
) -> f64 {
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await
    .expect("raw stream");
    let payload = bytes::Bytes::from(vec![7u8; size]);
    let started = std::time::Instant::now();
    let mut acks = std::collections::VecDeque::new();
    for b in 0..batches {
        let id = uuid::Uuid::now_v7().simple().to_string();
        for i in 0..batch {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_BATCH_ID, id.as_str());
            headers.insert(
                async_nats::header::NATS_BATCH_SEQUENCE,
                (i + 1).to_string().as_str(),
            );
            let subject = format!("{name}.s{}", (b * batch + i) % 5000);
            if i + 1 < batch {
                client
                    .publish_with_headers(subject, headers, payload.clone())
                    .await
                    .expect("publish");
            } else {
                headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
                acks.push_back(
                    js.publish_with_headers(subject, headers, payload.clone())
                        .await
                        .expect("commit"),
                );
            }
        }
        if acks.len() >= in_flight {
            let ack = acks.pop_front().expect("ack").await.expect("stored");
            assert_eq!(ack.batch_size, Some(batch as u64), "a whole batch");
        }
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    (batches * batch) as f64 / started.elapsed().as_secs_f64()
}

/// Waits until a processor answers its status query on `client` (a minute at most).
pub async fn wait_for_processor(client: &async_nats::Client) {
    let mut asked = 0;
    while client
        .request(ledger::subject::commands::STATUS_QUERY, bytes::Bytes::new())
        .await
        .is_err()
    {
        asked += 1;
        assert!(asked < 1200, "the processor did not come up");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A size from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A command's JSON as the benches' upstream system sends it.
pub fn command(kind: &str, data: serde_json::Value) -> bytes::Bytes {
    bytes::Bytes::from(
        serde_json::json!({
            "command_id": uuid::Uuid::now_v7(), "actor": {"id": "bench", "role": "upstream"},
            "legal_entity": "UK01", "effective_at": "2011-11-25T09:00:00Z",
            "type": kind, "data": data,
        })
        .to_string(),
    )
}

/// An `erp` child process (`erp processor`, `erp gateway`), killed when dropped or when this
/// process dies. Its warnings go to this process's stderr.
pub struct ErpProcess(std::process::Child);

impl ErpProcess {
    pub fn start(args: &[&str]) -> ErpProcess {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_erp"));
        command
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null());
        server::die_with_parent(&mut command);
        ErpProcess(command.spawn().expect("erp starts"))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Resident memory of the process now, in bytes.
    pub fn rss(&self) -> u64 {
        rss_of(&self.pid().to_string())
    }

    /// Ctrl-C, as an operator stops it (a processor then settles and writes a snapshot), and
    /// waits for it to exit.
    pub fn interrupt(mut self) {
        let sent = std::process::Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -INT");
        let status = self.0.wait().expect("wait");
        assert!(status.success(), "it stopped with {status}");
    }
}

impl Drop for ErpProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of process `pid` (`self` for this one) now, in bytes.
pub fn rss_of(pid: &str) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("/proc/<pid>/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// `erp gateway` on a free loopback port, once it answers `/healthz`: the process and its
/// base URL.
pub async fn start_gateway(nats_url: &str) -> (ErpProcess, String) {
    let address = format!("127.0.0.1:{}", server::free_port().expect("port"));
    let gateway = ErpProcess::start(&["gateway", "--nats", nats_url, "--http", &address]);
    let base = format!("http://{address}");
    let mut asked = 0;
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        asked += 1;
        assert!(asked < 1200, "the gateway did not come up");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (gateway, base)
}

/// `GET /metrics` from a gateway.
pub async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics body")
}

/// A latency histogram read back from a scrape (Prometheus' cumulative buckets undone).
pub fn scraped_histogram(text: &str, name: &str) -> commands::latency::LatencyCounts {
    let sample = |line: &str, prefix: &str| -> Option<f64> {
        line.strip_prefix(prefix)?.trim().parse().ok()
    };
    let mut cumulative = Vec::new();
    let mut counts = commands::latency::LatencyCounts::default();
    for line in text.lines() {
        for bound in commands::latency::LATENCY_BUCKETS {
            if let Some(v) = sample(line, &format!("{name}_bucket{{le=\"{bound}\"}}")) {
                cumulative.push(v as u64);
            }
        }
        if let Some(v) = sample(line, &format!("{name}_count ")) {
            counts.count = v as u64;
        }
        if let Some(v) = sample(line, &format!("{name}_sum ")) {
            counts.sum_micros = (v * 1e6).round() as u64;
        }
    }
    assert_eq!(
        cumulative.len(),
        commands::latency::LATENCY_BUCKETS.len(),
        "{name} is not in the scrape"
    );
    let mut before = 0;
    counts.buckets = cumulative
        .into_iter()
        .map(|c| {
            let n = c - before;
            before = c;
            n
        })
        .collect();
    counts
}

/// A counter or gauge without labels from a scrape.
pub fn scraped_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in the scrape"))
}

/// Runs a bench's async body on a multi-threaded runtime.
pub fn block_on<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(body)
}
