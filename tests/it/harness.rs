//! Starts real nats-server processes for tests: each on a free loopback port with its own
//! temporary store, killed when the test ends, panics included. The binary is found or
//! installed by the same code `erp up` uses (`ledger::server`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ledger::jetstream::{JetStreamLog, LogConfig, SERVER_VERSION_MIN};
use ledger::server::{self, LocalServer, ServerOptions};
use ledger::subject::SubjectSpace;

/// The nats-server binary, found or installed once per test run.
pub fn nats_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools");
            server::find_or_install(&tools, SERVER_VERSION_MIN).expect("a usable nats-server")
        })
        .clone()
}

/// A running test server and its store.
#[derive(Debug)]
pub struct TestNats {
    pub server: LocalServer,
    _dir: tempfile::TempDir,
}

impl TestNats {
    pub fn start() -> TestNats {
        TestNats::start_with(String::new())
    }

    /// A server with extra configuration lines (authorization, limits).
    pub fn start_with(extra_config: String) -> TestNats {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = LocalServer::start(ServerOptions {
            binary: nats_binary(),
            port: server::free_port().expect("free port"),
            data_dir: dir.path().to_path_buf(),
            sync_always: true,
            die_with_parent: true,
            extra_config,
        })
        .expect("nats-server starts");
        TestNats { server, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub async fn connect(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .connect(self.url())
            .await
            .expect("connect to test nats-server")
    }

    /// Opens the ledger on this server with `config`.
    pub async fn open(&self, config: LogConfig) -> JetStreamLog {
        JetStreamLog::open(self.connect().await, config)
            .await
            .expect("open log")
    }
}

/// The production ledger configuration.
pub fn ledger_config() -> LogConfig {
    LogConfig::ledger()
}

/// A scratch stream: same settings as the ledger but deletes and purges allowed, so tests
/// can tamper with it.
pub fn scratch_config(stream: &str, prefix: &str) -> LogConfig {
    LogConfig {
        stream: stream.into(),
        subjects: SubjectSpace::new(prefix).expect("prefix"),
        protected: false,
        ..LogConfig::ledger()
    }
}

/// A processor service running inside the test, stopped when dropped.
#[derive(Debug)]
pub struct TestProcessor {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), commands::service::ServiceError>>>,
}

impl TestProcessor {
    /// Recovers from the ledger, subscribes, and serves in a background task. Commands sent
    /// after this returns are answered.
    pub async fn start(nats: &TestNats) -> TestProcessor {
        let log = nats.open(ledger_config()).await;
        let client = log.client().clone();
        let service = commands::service::Service::start(
            client,
            log,
            commands::service::ServiceConfig::default(),
        )
        .await
        .expect("processor starts");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.serve(async {
            let _ = stopped.await;
        }));
        TestProcessor {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops serving and waits for the service to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("processor task")
                .expect("processor ran cleanly");
        }
    }
}

impl Drop for TestProcessor {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A client for sending commands to the test's processors.
pub async fn command_client(nats: &TestNats) -> commands::client::CommandClient {
    commands::client::CommandClient::new(nats.connect().await, std::time::Duration::from_secs(30))
}
