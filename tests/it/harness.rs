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

/// An `erp` command for a test to spawn; the child is killed when the test's thread exits,
/// so an interrupted test run leaves no processor or projector behind.
pub fn erp_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_erp"));
    server::die_with_parent(&mut command);
    command
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
        on_free_ports("nats-server starts", || {
            let dir = tempfile::tempdir().expect("temp dir");
            let server = LocalServer::start(ServerOptions {
                binary: nats_binary(),
                port: server::free_port().expect("free port"),
                data_dir: dir.path().to_path_buf(),
                sync_always: true,
                die_with_parent: true,
                extra_config: extra_config.clone(),
            })?;
            Ok(TestNats { server, _dir: dir })
        })
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

/// Runs `start` until it does not fail on a port taken between choosing it and binding it
/// (another test's server or any outgoing connection can take a port the OS called free).
fn on_free_ports<T>(what: &str, start: impl Fn() -> Result<T, server::ServerError>) -> T {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match start() {
            Ok(started) => return started,
            Err(e) => {
                let message = e.to_string();
                let port_taken =
                    message.contains("address already in use") || message.contains("is not free");
                if !port_taken || attempt == 10 {
                    panic!("{what}: {message}");
                }
            }
        }
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
        TestProcessor::start_with(nats, commands::service::ServiceConfig::default()).await
    }

    /// As `start`, with `config`.
    pub async fn start_with(
        nats: &TestNats,
        config: commands::service::ServiceConfig,
    ) -> TestProcessor {
        let log = nats.open(ledger_config()).await;
        let client = log.client().clone();
        let service = commands::service::Service::start(client, log, config)
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

/// A JetStream cluster of real servers on loopback, each with its own store.
#[derive(Debug)]
pub struct TestCluster {
    pub nodes: Vec<LocalServer>,
    _dirs: Vec<tempfile::TempDir>,
}

impl TestCluster {
    pub fn start(size: usize) -> TestCluster {
        on_free_ports("cluster starts", || TestCluster::try_start(size))
    }

    fn try_start(size: usize) -> Result<TestCluster, server::ServerError> {
        let client_ports: Vec<u16> = (0..size)
            .map(|_| server::free_port().expect("free port"))
            .collect();
        let route_ports: Vec<u16> = (0..size)
            .map(|_| server::free_port().expect("free port"))
            .collect();
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for (port, route_port) in client_ports.iter().zip(&route_ports) {
            let dir = tempfile::tempdir().expect("temp dir");
            nodes.push(LocalServer::start(ServerOptions {
                binary: nats_binary(),
                port: *port,
                data_dir: dir.path().to_path_buf(),
                sync_always: true,
                die_with_parent: true,
                extra_config: server::cluster_block("erp_test", *route_port, &route_ports),
            })?);
            dirs.push(dir);
        }
        Ok(TestCluster { nodes, _dirs: dirs })
    }

    /// Every node's URL, comma-separated: a client given it fails over between them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(LocalServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node whose server name is `name` (`erp_<port>`).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| format!("erp_{}", n.options().port) == name)
    }

    /// Opens the ledger (three replicas) through one node, waiting for the cluster to elect
    /// its JetStream leader.
    pub async fn open(&self, node: usize) -> JetStreamLog {
        let config = LogConfig {
            replicas: self.nodes.len(),
            ..LogConfig::ledger()
        };
        let mut last_error = String::new();
        for _ in 0..100 {
            let client = async_nats::connect(self.nodes[node].url())
                .await
                .expect("connect to a cluster node");
            match JetStreamLog::open(client, config.clone()).await {
                Ok(log) => return log,
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        panic!("the cluster never accepted the ledger: {last_error}")
    }
}

/// Held by the tests that load the machine most (a three-node cluster under kills, a browser,
/// a code generator) so that they do not run at the same time: on two cores, a leader-kill
/// test beside a browser missed its deadlines.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}
