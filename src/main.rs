//! `erp`: the command line. Definitions and glue only; the work lives in the library crates.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use commands::client::CommandClient;
use commands::service::ServiceConfig;
use ledger::jetstream::{JetStreamLog, LogConfig, SERVER_VERSION_MIN};
use ledger::server;
use projections::allocation::Allocation;
use projections::ats::Ats;
use projections::audit::Audit;
use projections::finance::Finance;
use projections::margin::Margin;
use projections::{Mode, Projector, ProjectorConfig};

/// `println!` for what a command prints: when its reader has gone (`erp exceptions | head`)
/// the program ends quietly, as Unix tools do, instead of panicking on the closed pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            crate::stdout_failed(&e);
        }
    }};
}

/// `print!`, as `say!`.
macro_rules! say_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            crate::stdout_failed(&e);
        }
    }};
}

/// Printing failed: a reader that went away ends the program with success, anything else
/// with an error.
fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1);
}

mod govern_cli;
mod holder;
mod ops_cli;
mod replay_cli;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod up;

/// Keeps the process's memory in ordinary pages. Where the kernel backs anonymous memory with
/// transparent huge pages, the allocator's arenas are faulted in 2 MiB at a time, and a
/// processor holding 37 MB of model was resident at 103 MB (90 MB of it in huge pages) after
/// a restart; with them off, 69 MB. The services are bounded by what they hold, not by TLB
/// misses. `ERP_HUGE_PAGES=1` leaves the kernel's setting alone.
fn small_pages_only() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("ERP_HUGE_PAGES").is_none_or(|v| v != "1") {
        // Refused only by kernels older than 3.15; then the kernel's setting stands.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "erp",
    version,
    about = "Event-sourced inventory and order ledger on NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text for people or as JSON objects, one a line, for log collectors.
    #[arg(long, global = true, env = "ERP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct NatsArgs {
    /// NATS server to use. Without it, `up` starts a local one.
    #[arg(long, env = "ERP_NATS_URL")]
    nats: Option<String>,
    /// Copies of the ledger stream on a JetStream cluster (1 on a single server; 3 on a
    /// three-node cluster). Must match the stream if it exists.
    #[arg(long, env = "ERP_LEDGER_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// The directory `erp auth init` wrote: connect with its credentials, as the user the
    /// command needs (`processor`, `projector`, `auditor`) or, to send commands and ask
    /// views, as --user.
    #[arg(long, env = "ERP_AUTH", value_name = "DIR")]
    auth: Option<PathBuf>,
    /// With --auth: the user that sends commands and asks views (default `upstream`; `buyer`
    /// for `replenish --accept`).
    #[arg(long, env = "ERP_USER")]
    user: Option<String>,
}

impl NatsArgs {
    /// The ledger itself (the processor's view of it).
    fn ledger(&self) -> LogConfig {
        LogConfig {
            replicas: self.replicas,
            ..LogConfig::ledger()
        }
    }

    /// The ledger as a reader in `feed`'s account sees it: the mirror there, with credentials;
    /// the ledger itself without.
    fn reader(&self, feed: ledger::auth::MirrorFeed) -> LogConfig {
        match self.auth {
            Some(_) => LogConfig {
                replicas: self.replicas,
                ..LogConfig::mirror(feed)
            },
            None => self.ledger(),
        }
    }

    fn url(&self) -> String {
        self.nats
            .clone()
            .unwrap_or_else(|| "nats://127.0.0.1:4222".into())
    }

    fn auth_dir(&self) -> anyhow::Result<Option<commands::access::AuthDir>> {
        self.auth
            .as_deref()
            .map(|dir| {
                commands::access::AuthDir::load(dir)
                    .with_context(|| format!("reading the credentials in {}", dir.display()))
            })
            .transpose()
    }

    /// The URL to connect to as `user` (with credentials), or as nobody.
    fn url_as(
        &self,
        auth: Option<&commands::access::AuthDir>,
        user: &str,
    ) -> anyhow::Result<String> {
        let url = self.url();
        match auth {
            None => Ok(url),
            Some(a) if a.credentials.users.contains_key(user) => {
                Ok(a.credentials.url_for(user, &url))
            }
            Some(_) => bail!(
                "no user `{user}` in {}; `erp auth add-user` adds one",
                self.auth
                    .as_deref()
                    .unwrap_or(std::path::Path::new("?"))
                    .display()
            ),
        }
    }

    /// The `controller` user of the credentials, for the demo's set-up; none without
    /// credentials or when they have no such user.
    fn demo_controller(&self) -> anyhow::Result<Option<Sender>> {
        let Some(auth) = self.auth_dir()? else {
            return Ok(None);
        };
        if !auth.credentials.users.contains_key("controller") {
            return Ok(None);
        }
        Ok(Some(Sender {
            url: self.url_as(Some(&auth), "controller")?,
            user: Some("controller".into()),
        }))
    }

    /// The exception holder's connection: as user `exceptions` with credentials (`None`, with
    /// a warning, when the credentials have no such user), anonymous without.
    fn holder_sender(&self) -> anyhow::Result<Option<Sender>> {
        let Some(auth) = self.auth_dir()? else {
            return Ok(Some(Sender {
                url: self.url(),
                user: None,
            }));
        };
        if !auth.credentials.users.contains_key(holder::USER) {
            tracing::warn!(
                "the credentials have no user `{}`: blocking exception rules will hold no orders (add it: erp auth add-user {} --role system, then restart)",
                holder::USER,
                holder::USER
            );
            return Ok(None);
        }
        Ok(Some(Sender {
            url: self.url_as(Some(&auth), holder::USER)?,
            user: Some(holder::USER.into()),
        }))
    }

    /// Who sends commands and asks views: --user, or `default` (with credentials).
    fn sender(&self, default: &str) -> anyhow::Result<Sender> {
        let auth = self.auth_dir()?;
        let user = auth
            .as_ref()
            .map(|_| self.user.clone().unwrap_or_else(|| default.to_owned()));
        let url = match &user {
            Some(user) => self.url_as(auth.as_ref(), user)?,
            None => self.url(),
        };
        Ok(Sender { url, user })
    }
}

/// A connection that sends commands: as the user named in its credentials, or anonymously.
#[derive(Debug, Clone)]
pub struct Sender {
    url: String,
    user: Option<String>,
}

impl Sender {
    pub fn authenticated(&self) -> bool {
        self.user.is_some()
    }

    pub async fn connect(&self) -> anyhow::Result<async_nats_client::Client> {
        connect(&self.url).await
    }

    /// A command client on a new connection.
    pub async fn client(&self) -> anyhow::Result<CommandClient> {
        Ok(
            CommandClient::new(self.connect().await?, Duration::from_secs(10))
                .retrying(Duration::from_secs(60))
                .as_user(self.user.clone()),
        )
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the system: a local nats-server with JetStream (unless --nats is given), and the
    /// ledger and command streams. Runs until Ctrl-C.
    Up {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        args: UpArgs,
    },
    /// Run the command processor: decide commands from `rpc.cmd.>` and the COMMANDS stream and
    /// append their events to the ledger.
    Processor {
        #[command(flatten)]
        nats: NatsArgs,
        /// Role table (JSON, role -> command patterns); the built-in one by default.
        #[arg(long)]
        roles: Option<PathBuf>,
        #[command(flatten)]
        purchasing: PurchasingArgs,
        /// Atomic batches sent and not yet acknowledged, at most (1 to 64; a replicated
        /// ledger always runs with 1).
        #[arg(long, default_value_t = commands::processor::PipelineConfig::default().in_flight_max as u16,
              value_parser = clap::value_parser!(u16).range(1..=64))]
        in_flight: u16,
        /// Commands in one batch, at most (1 to 1000).
        #[arg(long, default_value_t = commands::processor::PipelineConfig::default().batch_commands_max as u16,
              value_parser = clap::value_parser!(u16).range(1..=1000))]
        batch_max: u16,
        /// While a batch is in flight, another goes out only once this many commands wait
        /// (1 to 1000): small batches behind a busy one cost latency and buy nothing.
        #[arg(long, default_value_t = commands::processor::PipelineConfig::default().full_batch_commands as u16,
              value_parser = clap::value_parser!(u16).range(1..=1000))]
        next_batch_at: u16,
        /// Write a snapshot of the write model every this many ledger records, and when
        /// stopping; a restart loads the latest and replays only what follows (0: never).
        #[arg(long, default_value_t = ServiceConfig::default().snapshot_every)]
        snapshot_every: u64,
        /// Ignore the stored snapshot and rebuild the write model from the whole ledger.
        #[arg(long)]
        from_scratch: bool,
        #[command(flatten)]
        clock: ClockArgs,
    },
    /// Generate NATS users per role (processor, projector, upstream, auditor) with subject
    /// permissions, for `erp up --auth DIR` or your own server.
    Auth {
        #[command(subcommand)]
        action: AuthAction,
    },
    /// Serve commands, views, the ledger's events, health and metrics over HTTP and JSON
    /// (docs/HTTP.md). With --auth, every request needs a bearer token (`erp auth token`).
    Gateway {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Send commands (one JSON object per line) and print each outcome as a JSON line.
    Submit {
        #[command(flatten)]
        nats: NatsArgs,
        /// File of JSON lines, or `-` for standard input.
        file: PathBuf,
        /// Commands awaiting an answer at once.
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    /// Run a projector: keep a view current from the ledger, publish it to KV, answer queries.
    Project {
        #[command(flatten)]
        nats: NatsArgs,
        view: ViewName,
        /// Build a new generation from sequence 1 (with progress) while the current one keeps
        /// serving, swap it in when caught up, then keep it current.
        #[arg(long)]
        rebuild: bool,
        /// Save the view with its checkpoint at least every this many events...
        #[arg(long, default_value_t = 500_000)]
        snapshot_events: u64,
        /// ...and at least this often (seconds).
        #[arg(long, default_value_t = 30)]
        snapshot_seconds: u64,
    },
    /// The exception queue, highest priority first (`--counts`: by kind, status and age).
    Exceptions {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        args: ops_cli::ExceptionsArgs,
    },
    /// Hold the orders that blocking exception rules stop, and release them when the
    /// exception clears (`erp up` runs it). Runs until Ctrl-C.
    ExceptionHolder {
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Operations KPIs of a period: `erp kpis --period 2011-11` (or a week `2011-W44`, a day).
    Kpis {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        args: ops_cli::KpisArgs,
    },
    /// Ask a view: `erp view ats get '{"sku":"85123A","location":"UK-DC"}'`.
    View {
        #[command(flatten)]
        nats: NatsArgs,
        view: ViewName,
        /// The operation: the view's own (schemas/views/<view>.schema.json, docs/VIEWS.md),
        /// `status`, `rows` (every row, paged), or `watch` (print every change as a JSON line,
        /// following rebuilds, until Ctrl-C).
        op: String,
        /// The query as JSON.
        #[arg(default_value = "{}")]
        body: String,
        /// Wait until the view has applied the ledger up to this sequence.
        #[arg(long)]
        min_seq: Option<u64>,
        /// Follow the answer's pages (`next_after` / `next_after_seq`) to the end, printing each.
        #[arg(long)]
        all: bool,
    },
    /// Drive the UCI Online Retail year through the processor as upstream systems would.
    Demo {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        demo: DemoArgs,
    },
    /// Find or install the pinned nats-server.
    Nats {
        #[command(subcommand)]
        action: NatsAction,
    },
    /// Show the ledger stream's state.
    Status {
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Walk the ledger: sequences, hash chains, batches, invariants; print the running digest
    /// (record it; check it later with --expect). Exits non-zero at the first divergence.
    Verify {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        args: replay_cli::VerifyArgs,
    },
    /// Export the journal: every event's balanced lines (account, debit, credit, SKU, location,
    /// order, channel) as CSV, from sequence 1 to the end or to --until.
    Journal {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        args: replay_cli::JournalArgs,
    },
    /// Purchase recommendations per SKU × location (reorder point, order-up-to, safety stock
    /// from demand variability), with the numbers behind each; --accept turns the due ones
    /// into purchase orders.
    Replenish {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        args: replay_cli::ReplenishArgs,
    },
    /// Legal entities: define one, with its functional currency and country.
    Entity {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(subcommand)]
        action: govern_cli::EntityAction,
    },
    /// Exchange rates into a legal entity's functional currency.
    Fx {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(subcommand)]
        action: govern_cli::FxAction,
    },
    /// Maker-checker thresholds: commands above them wait for a second person.
    Threshold {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(subcommand)]
        action: govern_cli::ThresholdAction,
    },
    /// Commands waiting for a second person: list, approve, reject.
    Approval {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(subcommand)]
        action: govern_cli::ApprovalAction,
    },
    /// Accounting periods: a month's trial balance, close, reopen.
    Period {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(subcommand)]
        action: govern_cli::PeriodAction,
    },
    /// Replay the UCI year's daily demand through the recommendation policy and a naive
    /// min/max rule; print fill rate and average inventory of each (markdown table).
    BacktestReplenishment {
        #[command(flatten)]
        args: replay_cli::BacktestArgs,
    },
    /// Build a view (or the write model) as it stood at a point: as of a sequence, as recorded
    /// at a time, as effective at a business time; or the difference between two points.
    Replay {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        args: replay_cli::ReplayArgs,
    },
    /// Trace a lot forward (`--sku S --lot L`: the receipts it came from, the orders it went
    /// to) or an order backward (`--order O`: the lots of its lines and their suppliers), as
    /// of now or of any point of either timeline.
    Trace {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        args: replay_cli::TraceArgs,
    },
}

/// The HTTP gateway's settings.
#[derive(Debug, Clone, clap::Args)]
struct HttpArgs {
    /// Address the HTTP gateway listens on. Without --auth anyone who reaches it may act:
    /// keep it on loopback then.
    #[arg(long = "http", env = "ERP_HTTP", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// `/readyz` says ready while the processor and every view are at most this many ledger
    /// records behind.
    #[arg(long, default_value_t = gateway::GatewayConfig::default().ready_lag)]
    ready_lag: u64,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, env = "ERP_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "ERP_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl HttpArgs {
    fn config(&self, nats: &NatsArgs) -> gateway::GatewayConfig {
        gateway::GatewayConfig {
            nats_url: nats.url(),
            auth: nats.auth.clone(),
            replicas: nats.replicas,
            ready_lag: self.ready_lag,
            ..gateway::GatewayConfig::default()
        }
    }

    /// The TLS configuration, read now so that a bad certificate or key is a clear error at
    /// start.
    fn tls(&self) -> anyhow::Result<Option<gateway::tls::TlsAcceptor>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(gateway::tls::acceptor(cert, key)?)),
            _ => Ok(None),
        }
    }

    /// Says plainly what a gateway reachable from elsewhere lacks.
    fn warn_if_exposed(&self, authenticated: bool) {
        if self.listen.ip().is_loopback() {
            return;
        }
        if !authenticated {
            tracing::warn!(listen = %self.listen, "the HTTP gateway listens beyond this machine without --auth: anyone who reaches it can act as any actor");
        }
        if self.tls_cert.is_none() {
            tracing::warn!(listen = %self.listen, "the HTTP gateway listens beyond this machine without TLS (--tls-cert, --tls-key): tokens and data cross the network in clear");
        }
    }

    /// Binds the listener now, so that a taken port is a clear error at start.
    async fn bind(&self) -> anyhow::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| {
                format!(
                    "the HTTP gateway cannot listen on {} (taken? choose another with --http ADDR)",
                    self.listen
                )
            })
    }
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Where the local server keeps its store, config and log.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Port of the local server.
    #[arg(long, default_value_t = 4222)]
    port: u16,
    /// Acknowledge writes before they are fsynced (faster; acknowledged events can be lost
    /// on power loss, not on a process crash).
    #[arg(long)]
    no_fsync: bool,
    /// Where a nats-server is installed when none is found.
    #[arg(long, default_value = ".tools")]
    tools_dir: PathBuf,
    /// Once up, load the UCI Online Retail demo workload.
    #[arg(long)]
    demo: bool,
    /// With --demo: only the first N trading days (the whole year takes a few minutes).
    #[arg(long)]
    demo_days: Option<usize>,
    /// Role table (JSON, role -> command patterns); the built-in one by default.
    #[arg(long)]
    roles: Option<PathBuf>,
    #[command(flatten)]
    purchasing: PurchasingArgs,
    #[command(flatten)]
    http: HttpArgs,
    /// Do not start the HTTP gateway.
    #[arg(long)]
    no_http: bool,
    #[command(flatten)]
    clock: ClockArgs,
}

/// How the processor moves business clocks on in a quiet ledger.
#[derive(Debug, Clone, clap::Args)]
struct ClockArgs {
    /// Minutes of wall time a legal entity may go without an event before the processor
    /// moves its business clock on to the wall clock (`clock.tick`, on whole multiples of
    /// it), so time-based exception rules fall due in a quiet ledger; 0: never. Default 15,
    /// and 0 with --demo, whose business time is 2010-2011.
    #[arg(long, value_name = "MINUTES", value_parser = clap::value_parser!(u32).range(0..=10080))]
    clock_tick: Option<u32>,
}

impl ClockArgs {
    fn every(&self, loads_history: bool) -> Option<std::time::Duration> {
        match self
            .clock_tick
            .unwrap_or(if loads_history { 0 } else { 15 })
        {
            0 => None,
            minutes => Some(std::time::Duration::from_secs(60 * u64::from(minutes))),
        }
    }
}

/// Purchasing rules the processor decides with.
#[derive(Debug, Clone, clap::Args)]
struct PurchasingArgs {
    /// Purchase orders worth more than this, in their own currency, wait for approval by
    /// someone other than their requester; up to it they are approved when created.
    #[arg(long, env = "ERP_PO_APPROVAL_LIMIT", default_value = "5000", value_parser = parse_decimal)]
    po_approval_limit: rust_decimal::Decimal,
    /// How far a purchase order line may be over-received, in percent of its quantity.
    #[arg(long, env = "ERP_PO_OVER_RECEIPT_TOLERANCE", default_value = "10", value_parser = parse_decimal)]
    po_over_receipt_tolerance: rust_decimal::Decimal,
}

impl PurchasingArgs {
    fn policy(&self) -> commands::state::PurchasePolicy {
        commands::state::PurchasePolicy {
            approval_limit: self.po_approval_limit,
            over_receipt_tolerance_percent: self.po_over_receipt_tolerance,
        }
    }
}

fn parse_decimal(text: &str) -> Result<rust_decimal::Decimal, String> {
    let value = rust_decimal::Decimal::from_str_exact(text.trim())
        .map_err(|e| format!("`{text}` is not a decimal number: {e}"))?;
    if value.is_sign_negative() {
        return Err(format!("`{text}` is negative; expected 0 or more"));
    }
    Ok(value)
}

#[derive(Debug, Subcommand)]
enum AuthAction {
    /// Write `users.json` (secret), `principals.json` and `nats-auth.conf` into DIR: the
    /// processor, projector and auditor, and one user per role that sends commands
    /// (`upstream`, `clerk`, `buyer`, `warehouse`, `admin`).
    Init {
        #[arg(long, default_value = "auth")]
        dir: PathBuf,
    },
    /// Add a user that sends commands, and rewrite `nats-auth.conf`. The server must reload
    /// its configuration (`nats-server --signal reload`, or restart `erp up`) and the
    /// processor restart to know it.
    AddUser {
        #[arg(long, default_value = "auth")]
        dir: PathBuf,
        /// The NATS user name (letters, digits, `-`, `_`).
        name: String,
        /// A role it may act in (repeatable; the first is its default).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// The actor id its commands are recorded under (default: the user name).
        #[arg(long)]
        actor: Option<String>,
        /// A legal entity it may act for (repeatable; default: every entity).
        #[arg(long = "entity")]
        entities: Vec<String>,
        /// It is an integration that acts for its own end users (`on_behalf_of`).
        #[arg(long)]
        end_users: bool,
    },
    /// Issue a bearer token for the HTTP gateway, acting as USER (a user that sends commands,
    /// or `auditor` to read the event feed). Prints the token once; only its hash is kept
    /// (`tokens.json`). A running gateway accepts it within a second.
    Token {
        #[arg(long, default_value = "auth")]
        dir: PathBuf,
        user: String,
    },
    /// List the bearer tokens issued: user, when, and the start of each one's hash.
    Tokens {
        #[arg(long, default_value = "auth")]
        dir: PathBuf,
    },
    /// Revoke USER's bearer tokens (or only the one whose hash starts with --sha256, as
    /// `erp auth tokens` shows it). A running gateway refuses them within a second.
    Revoke {
        #[arg(long, default_value = "auth")]
        dir: PathBuf,
        user: String,
        #[arg(long, value_name = "HASH_PREFIX")]
        sha256: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ViewName {
    Ats,
    Allocation,
    Audit,
    Margin,
    Finance,
    Replenishment,
    Exceptions,
    Kpis,
    Trace,
}

impl ViewName {
    const ALL: [ViewName; 9] = [
        ViewName::Ats,
        ViewName::Allocation,
        ViewName::Audit,
        ViewName::Margin,
        ViewName::Finance,
        ViewName::Replenishment,
        ViewName::Exceptions,
        ViewName::Kpis,
        ViewName::Trace,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ViewName::Ats => "ats",
            ViewName::Allocation => "allocation",
            ViewName::Audit => "audit",
            ViewName::Margin => "margin",
            ViewName::Finance => "finance",
            ViewName::Replenishment => "replenishment",
            ViewName::Exceptions => "exceptions",
            ViewName::Kpis => "kpis",
            ViewName::Trace => "trace",
        }
    }

    /// Runs this view's projector until `shutdown`.
    async fn project(
        self,
        log: JetStreamLog,
        mode: Mode,
        config: ProjectorConfig,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<projections::RunEnd> {
        match self {
            ViewName::Ats => project::<Ats>(log, mode, config, shutdown).await,
            ViewName::Allocation => project::<Allocation>(log, mode, config, shutdown).await,
            ViewName::Audit => project::<Audit>(log, mode, config, shutdown).await,
            ViewName::Margin => project::<Margin>(log, mode, config, shutdown).await,
            ViewName::Finance => project::<Finance>(log, mode, config, shutdown).await,
            ViewName::Replenishment => {
                project::<projections::replenish::Replenishment>(log, mode, config, shutdown).await
            }
            ViewName::Exceptions => {
                project::<projections::exceptions::Exceptions>(log, mode, config, shutdown).await
            }
            ViewName::Kpis => project::<projections::kpis::Kpis>(log, mode, config, shutdown).await,
            ViewName::Trace => {
                project::<projections::trace::Trace>(log, mode, config, shutdown).await
            }
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
struct DemoArgs {
    /// Only the first N trading days.
    #[arg(long)]
    days: Option<usize>,
    /// Commands awaiting an answer at once.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// The data set (gzipped CSV).
    #[arg(long, default_value = commands::demo::DATASET)]
    dataset: PathBuf,
    /// Print the commands as JSON lines (for `erp submit`) instead of sending them.
    #[arg(long)]
    print: bool,
}

#[derive(Debug, Subcommand)]
enum NatsAction {
    /// Print the nats-server that would be used; install the pinned release if none is found.
    Install {
        #[arg(long, default_value = ".tools")]
        tools_dir: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    small_pages_only();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain of causes, without a backtrace: errors here are for users.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        // Colour only on a terminal (and never with NO_COLOR): logs sent to a file or a log
        // collector stay plain text.
        LogFormat::Text => logs
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .init(),
    }
    match cli.command {
        Command::Up { nats, args } => up::up(nats, args).await,
        Command::Auth { action } => auth(action),
        Command::Processor {
            nats,
            roles,
            purchasing,
            in_flight,
            batch_max,
            next_batch_at,
            snapshot_every,
            from_scratch,
            clock,
        } => {
            let auth = nats.auth_dir()?;
            warn_if_open_and_remote(&nats, auth.is_some());
            let client = connect(&nats.url_as(auth.as_ref(), ledger::auth::PROCESSOR)?).await?;
            let log = JetStreamLog::open(client.clone(), nats.ledger()).await?;
            let config = ServiceConfig {
                roles: load_roles(roles.as_deref())?,
                purchase_policy: purchasing.policy(),
                principals: auth.map(|a| a.principals),
                pipeline: commands::processor::PipelineConfig {
                    in_flight_max: usize::from(in_flight),
                    batch_commands_max: usize::from(batch_max),
                    full_batch_commands: usize::from(next_batch_at),
                },
                snapshot_every,
                from_scratch,
                clock_tick: clock.every(false),
                ..ServiceConfig::default()
            };
            commands::service::run(client, log, config, stop_within("processor", STOP_GRACE))
                .await?;
            Ok(())
        }
        Command::Submit { nats, file, window } => submit(&nats, &file, window).await,
        Command::Gateway { nats, http } => {
            let tls = http.tls()?;
            http.warn_if_exposed(nats.auth.is_some());
            let listener = http.bind().await?;
            let gw = gateway::Gateway::open(http.config(&nats)).await?;
            eprintln!(
                "gateway: serving {}://{} ({})",
                if tls.is_some() { "https" } else { "http" },
                listener.local_addr()?,
                if nats.auth.is_some() {
                    "bearer tokens required"
                } else {
                    "no credentials: anyone who reaches it may act"
                }
            );
            let shutdown = stop_within("gateway", STOP_GRACE);
            gw.serve(listener, tls, shutdown).await?;
            Ok(())
        }
        Command::Project {
            nats,
            view,
            rebuild,
            snapshot_events,
            snapshot_seconds,
        } => {
            let auth = nats.auth_dir()?;
            let client = connect(&nats.url_as(auth.as_ref(), ledger::auth::PROJECTOR)?).await?;
            let log = JetStreamLog::open(client, nats.reader(ledger::auth::VIEWS_MIRROR)).await?;
            let mode = if rebuild { Mode::Rebuild } else { Mode::Live };
            let shutdown = stop_within("projector", STOP_GRACE);
            let config = ProjectorConfig {
                snapshot_events,
                snapshot_interval: Duration::from_secs(snapshot_seconds),
                ..ProjectorConfig::default()
            };
            let end = view.project(log, mode, config, shutdown).await?;
            eprintln!("projector {}: {end:?}", view.as_str());
            Ok(())
        }
        Command::View {
            nats,
            view,
            op,
            body,
            min_seq,
            all,
        } => {
            let body: serde_json::Value =
                serde_json::from_str(&body).context("the query body must be JSON")?;
            if op == "watch" {
                return watch_view(&nats, view).await;
            }
            let client =
                projections::client::ViewClient::new(nats.sender("upstream")?.connect().await?);
            ask_view(&client, view, &op, body, min_seq, all).await
        }
        Command::Exceptions { nats, args } => {
            let client =
                projections::client::ViewClient::new(nats.sender("upstream")?.connect().await?);
            ops_cli::exceptions(&client, &args).await
        }
        Command::ExceptionHolder { nats } => {
            let Some(sender) = nats.holder_sender()? else {
                bail!("no user `{}` to send the holds as", holder::USER);
            };
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            let run = holder::run_as(sender, stop_rx);
            tokio::pin!(run);
            tokio::select! {
                ran = &mut run => ran,
                signal = shutdown_signal() => {
                    let _ = stop.send(true);
                    let _ = tokio::time::timeout(Duration::from_secs(5), run).await;
                    signal
                }
            }
        }
        Command::Kpis { nats, args } => {
            let client =
                projections::client::ViewClient::new(nats.sender("upstream")?.connect().await?);
            ops_cli::kpis(&client, &args).await
        }
        Command::Demo { nats, demo } if demo.print => {
            // Printing needs no server.
            let sender = Sender {
                url: nats.url(),
                user: None,
            };
            run_demo(&connect_lazily(&sender.url).await?, None, None, &demo).await
        }
        Command::Demo { nats, demo } => run_demo_as_upstream(&nats, &demo).await,
        Command::Nats {
            action: NatsAction::Install { tools_dir },
        } => {
            let path = server::find_or_install(&tools_dir, SERVER_VERSION_MIN)?;
            let version = server::binary_version(&path).context("reading its version")?;
            say!("{} (nats-server {version})", path.display());
            Ok(())
        }
        Command::Status { nats } => {
            let log = open_for_audit(&nats).await?;
            status(&log).await?;
            processor_status(log.client()).await?;
            supervisor_status(log.client()).await;
            views_status(log.client()).await;
            Ok(())
        }
        Command::Verify { nats, args } => {
            replay_cli::verify(&open_for_audit(&nats).await?, &args).await
        }
        Command::Replay { nats, args } => {
            replay_cli::replay(&open_for_audit(&nats).await?, &args).await
        }
        Command::Trace { nats, args } => {
            replay_cli::trace(&open_for_audit(&nats).await?, &args).await
        }
        Command::Replenish { nats, args } => {
            let sender = nats.sender("buyer")?;
            replay_cli::replenish(&open_for_audit(&nats).await?, &sender, &args).await
        }
        Command::BacktestReplenishment { args } => replay_cli::backtest(&args),
        Command::Entity { nats, action } => {
            govern_cli::entity(&nats.sender("controller")?, &action).await
        }
        Command::Fx { nats, action } => govern_cli::fx(&nats.sender("controller")?, &action).await,
        Command::Threshold { nats, action } => {
            govern_cli::threshold(&nats.sender("controller")?, &action).await
        }
        Command::Approval { nats, action } => {
            govern_cli::approval(&nats.sender("controller")?, &action).await
        }
        Command::Period { nats, action } => {
            govern_cli::period(&nats.sender("controller")?, &action).await
        }
        Command::Journal { nats, args } => {
            replay_cli::journal(&open_for_audit(&nats).await?, &args).await
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<async_nats_client::Client> {
    ledger::auth::connect(url).await.with_context(|| {
        // Never print the password.
        let (plain, credentials) = ledger::auth::split_credentials(url);
        match credentials {
            Some((user, _)) => format!("connecting to NATS at {plain} as {user}"),
            None => format!("connecting to NATS at {plain}"),
        }
    })
}

/// A client that connects in the background (used where no server may be running).
async fn connect_lazily(url: &str) -> anyhow::Result<async_nats_client::Client> {
    Ok(ledger::jetstream::nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await?)
}

/// Re-exported client types, so the binary does not name the NATS crate in two places.
mod async_nats_client {
    pub use ledger::jetstream::nats::Client;
}

use bytes::Bytes;

/// The ledger for reading as an auditor: with credentials, the auditors' mirror, once it has
/// copied everything the ledger held (progress on stderr); without, the ledger itself.
async fn open_for_audit(args: &NatsArgs) -> anyhow::Result<JetStreamLog> {
    let auth = args.auth_dir()?;
    let client = connect(&args.url_as(auth.as_ref(), ledger::auth::AUDITOR)?).await?;
    let log = JetStreamLog::open(client, args.reader(ledger::auth::AUDIT_MIRROR)).await?;
    let mut last_line = std::time::Instant::now();
    log.wait_for_mirror(Duration::from_secs(30), |copied, lag| {
        if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = std::time::Instant::now();
            eprintln!("copying the ledger for auditing: {copied} messages, {lag} to go");
        }
    })
    .await?;
    Ok(log)
}

/// Authentication matters most where the server is not this machine's: say so plainly.
fn warn_if_open_and_remote(args: &NatsArgs, authenticated: bool) {
    let remote = args.nats.as_deref().is_some_and(|url| {
        url.split(',').any(|u| {
            let (plain, _) = ledger::auth::split_credentials(u.trim());
            let host = plain
                .split_once("://")
                .map_or(plain.as_str(), |(_, rest)| rest)
                .rsplit_once(':')
                .map_or(plain.as_str(), |(host, _)| host)
                .to_owned();
            !matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]" | "::1")
        })
    });
    if remote && !authenticated {
        tracing::warn!(
            "connecting to a server that is not on this machine without --auth: anyone who can reach it can publish into the ledger's account and act as any actor; see docs/RELIABILITY.md, production hardening"
        );
    }
}

/// An auth directory must hold the users file `erp auth init` writes.
fn need_auth_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if !ledger::auth::Credentials::users_path(dir).exists() {
        bail!(
            "{} is not an auth directory (no {}); `erp auth init --dir {}` creates one",
            dir.display(),
            ledger::auth::Credentials::users_path(dir).display(),
            dir.display()
        );
    }
    Ok(())
}

/// `erp auth init` and `erp auth add-user`.
fn auth(action: AuthAction) -> anyhow::Result<()> {
    use commands::access::{AuthDir, Principal};
    let (dir, auth) = match action {
        AuthAction::Token { dir, user } => {
            let auth = AuthDir::load(&dir)
                .with_context(|| format!("reading the credentials in {}", dir.display()))?;
            // Users that act through the gateway: those that send commands, and the auditor.
            let users: Vec<&str> = auth
                .principals
                .0
                .keys()
                .map(String::as_str)
                .chain([ledger::auth::AUDITOR])
                .collect();
            let token = gateway::tokens::Tokens::issue(&dir, &user, &users)?;
            eprintln!(
                "token for `{user}` (shown once; its hash is in {}; a running gateway accepts it within a second):",
                gateway::tokens::Tokens::path(&dir).display()
            );
            say!("{token}");
            return Ok(());
        }
        AuthAction::Tokens { dir } => {
            need_auth_dir(&dir)?;
            let tokens = gateway::tokens::Tokens::load(&dir)?;
            if tokens.tokens.is_empty() {
                eprintln!(
                    "no token issued in {}; `erp auth token USER` issues one",
                    dir.display()
                );
            }
            for t in &tokens.tokens {
                say!(
                    "{:<16} {:<28} sha256 {}",
                    t.user,
                    t.issued_at,
                    &t.sha256[..12]
                );
            }
            return Ok(());
        }
        AuthAction::Revoke { dir, user, sha256 } => {
            need_auth_dir(&dir)?;
            if let Some(prefix) = &sha256
                && (prefix.len() < 6 || !prefix.chars().all(|c| c.is_ascii_hexdigit()))
            {
                bail!(
                    "--sha256 `{prefix}`: expected at least 6 hex digits of the hash `erp auth tokens` shows"
                );
            }
            let revoked = gateway::tokens::Tokens::revoke(
                &dir,
                &user,
                sha256.map(|p| p.to_ascii_lowercase()).as_deref(),
            )?;
            for t in &revoked {
                say!(
                    "revoked the token of `{}` issued {} (sha256 {})",
                    t.user,
                    t.issued_at,
                    &t.sha256[..12]
                );
            }
            eprintln!("a running gateway refuses them within a second");
            return Ok(());
        }
        AuthAction::Init { dir } => {
            let auth = AuthDir::init(&dir)?;
            say!(
                "wrote {} (secret), {} and {}",
                ledger::auth::Credentials::users_path(&dir).display(),
                AuthDir::principals_path(&dir).display(),
                ledger::auth::Credentials::config_path(&dir).display()
            );
            say!("start with `erp up --auth {}`", dir.display());
            (dir, auth)
        }
        AuthAction::AddUser {
            dir,
            name,
            roles,
            actor,
            entities,
            end_users,
        } => {
            let principal = Principal {
                actor: ledger::values::ActorId::new(actor.as_deref().unwrap_or(&name))
                    .context("--actor")?,
                roles: roles
                    .iter()
                    .map(|r| ledger::values::Role::new(r.as_str()))
                    .collect::<Result<_, _>>()
                    .context("--role")?,
                entities: entities
                    .iter()
                    .map(|e| ledger::values::EntityId::new(e.as_str()))
                    .collect::<Result<_, _>>()
                    .context("--entity")?,
                end_users,
            };
            let unknown: Vec<&String> = roles
                .iter()
                .filter(|r| !commands::roles::Roles::default().has_role(r))
                .collect();
            if !unknown.is_empty() {
                eprintln!(
                    "note: {unknown:?} not in the built-in role table; give the processor a --roles table that has them"
                );
            }
            let auth = AuthDir::add_user(&dir, &name, principal)?;
            say!(
                "added `{name}`; reload the server's configuration (`nats-server --signal reload`, or restart `erp up`) and restart the processor"
            );
            (dir, auth)
        }
    };
    say!("users (connect with --auth {} --user NAME):", dir.display());
    for (user, principal) in &auth.principals.0 {
        say!(
            "  {user:12} acts as `{}` in {}{}{}",
            principal.actor,
            principal
                .roles
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if principal.entities.is_empty() {
                String::new()
            } else {
                format!(
                    " for {}",
                    principal
                        .entities
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            if principal.end_users {
                ", for its end users"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn load_roles(path: Option<&std::path::Path>) -> anyhow::Result<commands::roles::Roles> {
    match path {
        None => Ok(commands::roles::Roles::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the role table {}", path.display()))?;
            commands::roles::Roles::from_json(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
    }
}

async fn submit(nats: &NatsArgs, file: &std::path::Path, window: usize) -> anyhow::Result<()> {
    use std::io::BufRead;
    let input: Box<dyn std::io::Read> = match file.to_str() {
        Some("-") => Box::new(std::io::stdin()),
        _ => Box::new(
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
        ),
    };
    let lines: Vec<String> = std::io::BufReader::new(input)
        .lines()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let sender = nats.sender("upstream")?;
    // A short wait per answer and a minute of resending (same ids: safe) rides through a
    // processor restart or a failover instead of stalling on each command.
    let client = CommandClient::new(sender.connect().await?, Duration::from_secs(5))
        .retrying(Duration::from_secs(60))
        .as_user(sender.user.clone());
    let mut failures = 0;
    client
        .submit_all(
            lines.into_iter().map(|l| l.into_bytes().into()),
            window,
            |i, outcome| match outcome {
                Ok(outcome) => say!("{}", serde_json::to_string(&outcome).expect("json")),
                Err(e) => {
                    failures += 1;
                    eprintln!("line {}: {e}", i + 1);
                }
            },
        )
        .await;
    if failures > 0 {
        bail!("{failures} commands got no answer; sending them again is safe");
    }
    Ok(())
}

/// Runs the demo as the `upstream` user (with credentials), its set-up as `controller`.
pub(crate) async fn run_demo_as_upstream(nats: &NatsArgs, demo: &DemoArgs) -> anyhow::Result<()> {
    let sender = nats.sender("upstream")?;
    let controller = nats.demo_controller()?;
    run_demo(
        &sender.connect().await?,
        sender.user.clone(),
        controller,
        demo,
    )
    .await
}

/// Drives the UCI year through the processor; `user`: the sender's NATS user, with
/// credentials (its commands then act as that user's actor).
///
/// The demo's first commands set up its legal entities and rates, as a controller. With
/// credentials they are sent as `controller` (the principal `erp auth init` makes); when the
/// credentials have none they are left out, said so, and the rest runs without entities.
async fn run_demo(
    client: &commands::service::NatsClient,
    user: Option<String>,
    controller: Option<Sender>,
    demo: &DemoArgs,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (commands, stats) = commands::demo::uci_commands(&demo.dataset, demo.days)?;
    eprintln!(
        "demo: {} rows, {} invoices -> {} commands ({} orders, {} receipts, {} items kept by lot, {} cancellation lines, {} write-offs, {} rows skipped)",
        stats.rows,
        stats.invoices,
        commands.len(),
        stats.orders,
        stats.receipts,
        stats.lot_items,
        stats.cancellation_lines,
        stats.write_offs,
        stats.skipped_rows
    );
    if demo.print {
        for command in &commands {
            say!("{}", serde_json::to_string(command).expect("json"));
        }
        return Ok(());
    }
    let authenticated = user.is_some();
    let mut commands = commands;
    let setup_count = commands
        .iter()
        .take_while(|c| c.actor.role.as_str() == "controller")
        .count();
    let setup: Vec<commands::Command> = commands.drain(..setup_count).collect();
    let mut tally: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let count =
        |tally: &mut std::collections::BTreeMap<String, usize>,
         outcome: &Result<commands::Outcome, commands::client::ClientError>| {
            let key = match outcome {
                Ok(commands::Outcome::Accepted { .. }) => "accepted".to_owned(),
                Ok(commands::Outcome::Rejected { code, .. }) => format!("rejected: {code}"),
                Ok(commands::Outcome::Invalid { code, .. }) => format!("invalid: {code}"),
                Ok(commands::Outcome::Unavailable { .. }) => "unavailable".to_owned(),
                Err(_) => "no answer".to_owned(),
            };
            *tally.entry(key).or_default() += 1;
        };
    let body = |c: &commands::Command| -> Bytes {
        let mut json = serde_json::to_value(c).expect("json");
        if authenticated {
            // With credentials the sender's own actor acts.
            json.as_object_mut().expect("object").remove("actor");
        }
        serde_json::to_vec(&json).expect("json").into()
    };
    let setup_client = match (authenticated, controller) {
        (false, _) => Some((client.clone(), None)),
        (true, Some(controller)) => Some((controller.connect().await?, controller.user.clone())),
        (true, None) => {
            eprintln!(
                "demo: the credentials have no `controller` user: the {setup_count} commands that define the legal entities and their rates are left out (a new `erp auth init` directory has one)"
            );
            None
        }
    };
    if let Some((connection, as_user)) = setup_client {
        let setup_sender = CommandClient::new(connection, Duration::from_secs(10))
            .retrying(Duration::from_secs(120))
            .as_user(as_user);
        setup_sender
            .submit_all(
                setup.iter().map(body).collect::<Vec<_>>(),
                1,
                |_, outcome| count(&mut tally, &outcome),
            )
            .await;
    }
    let total = commands.len();
    let bodies: Vec<Bytes> = commands.iter().map(body).collect();
    let sender = CommandClient::new(client.clone(), Duration::from_secs(10))
        .retrying(Duration::from_secs(120))
        .as_user(user);
    let mut events = 0u64;
    let submitted = std::time::Instant::now();
    let mut progress = replay_cli::progress_printer("demo", false);
    sender
        .submit_all(bodies, demo.window, |i, outcome| {
            if let Ok(commands::Outcome::Accepted { event_count, .. }) = &outcome {
                events += u64::from(*event_count);
            }
            count(&mut tally, &outcome);
            if (i + 1) % 1_000 == 0 || i + 1 == total {
                progress(replay::Progress::at(
                    (i + 1) as u64,
                    total as u64,
                    submitted,
                ));
            }
        })
        .await;
    let secs = submitted.elapsed().as_secs_f64();
    eprintln!(
        "demo: {total} commands in {secs:.1} s ({:.0} commands/s, {:.0} events/s); total {:.1} s",
        total as f64 / secs,
        events as f64 / secs,
        started.elapsed().as_secs_f64()
    );
    for (outcome, count) in tally {
        eprintln!("  {outcome}: {count}");
    }
    Ok(())
}

/// Runs one projector until shutdown, printing catch-up progress.
async fn project<V: projections::View>(
    log: JetStreamLog,
    mode: Mode,
    config: ProjectorConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<projections::RunEnd> {
    let mut projector = Projector::<V>::open(log, mode, config).await?;
    projector.on_progress(replay_cli::progress_printer(V::NAME, false));
    Ok(projector.run(shutdown).await?)
}

/// How long a service may take to stop cleanly after Ctrl-C or SIGTERM (settling what is in
/// flight, writing its snapshot) before it exits anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Resolves on the first Ctrl-C or SIGTERM and from then on makes sure the process ends: a
/// second signal, or `grace` without a clean stop (a server that is gone), exits at once.
/// Safe: nothing acknowledged depends on a clean stop; a batch not yet acknowledged is stored
/// whole or not at all, and its commands' senders retry.
async fn stop_within(what: &'static str, grace: Duration) {
    let _ = shutdown_signal().await;
    tracing::info!("{what}: stopping (again, or {grace:?}, to exit at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown_signal() => eprintln!("{what}: second signal: exiting now"),
            () = tokio::time::sleep(grace) => eprintln!(
                "{what}: not stopped cleanly within {grace:?} (is the NATS server reachable?): exiting now; nothing acknowledged is lost, a restart resumes from the last snapshot"
            ),
        }
        std::process::exit(1);
    });
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// The processor's own report (`rpc.status`): where it is, foreign messages it passed over,
/// commands recorded `internal_error`.
async fn processor_status(client: &async_nats_client::Client) -> anyhow::Result<()> {
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(ledger::subject::commands::STATUS_QUERY, Bytes::new()),
    )
    .await;
    let status: serde_json::Value = match answer {
        Ok(Ok(msg)) => {
            serde_json::from_slice(&msg.payload).context("the processor's status is not JSON")?
        }
        Ok(Err(e)) => {
            say!("processor: not answering ({e})");
            return Ok(());
        }
        Err(_) => {
            say!("processor: no answer within 5 s");
            return Ok(());
        }
    };
    say!(
        "processor: applied up to {}, {} commands recorded, {} recorded internal_error since it started",
        status["applied_seq"],
        status["commands_recorded"],
        status["internal_errors"]
    );
    let batches = &status["batches"];
    if let Some(committed) = batches["committed"].as_u64() {
        say!(
            "processor batches: {committed} committed ({:.1} commands each), {} in flight, {} rollbacks taking {} batches",
            batches["commands"].as_u64().unwrap_or(0) as f64 / committed.max(1) as f64,
            status["in_flight"],
            batches["rollbacks"],
            batches["rolled_back_batches"]
        );
    }
    let foreign = &status["foreign"];
    if foreign["count"].as_u64().unwrap_or(0) > 0 {
        say!(
            "foreign messages in the ledger (never applied): {}; latest:",
            foreign["count"]
        );
        for f in foreign["recent"].as_array().into_iter().flatten() {
            say!(
                "  sequence {} on `{}`: {}",
                f[0],
                f[1].as_str().unwrap_or(""),
                f[2].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// Asks a view and prints the answer; with `all`, every page of it.
async fn ask_view(
    client: &projections::client::ViewClient,
    view: ViewName,
    op: &str,
    mut body: serde_json::Value,
    min_seq: Option<u64>,
    all: bool,
) -> anyhow::Result<()> {
    let mut pages = 0;
    loop {
        let answer = client
            .ask(
                view.as_str(),
                op,
                body.clone(),
                min_seq,
                Duration::from_secs(10),
            )
            .await?;
        pages += 1;
        say!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"seq": answer.seq, "result": answer.result})
            )?
        );
        let next = [("next_after_seq", "after_seq"), ("next_after", "after")]
            .into_iter()
            .find_map(|(field, param)| {
                let value = answer.result.get(field)?;
                (!value.is_null()).then(|| (param, value.clone()))
            });
        match next {
            Some((param, value)) if all => body[param] = value,
            Some(_) => {
                eprintln!("(more: --all follows every page)");
                return Ok(());
            }
            None => {
                if all {
                    eprintln!("{pages} pages");
                }
                return Ok(());
            }
        }
    }
}

/// `erp view <view> watch`: every change of the view as a JSON line, following rebuilds.
async fn watch_view(nats: &NatsArgs, view: ViewName) -> anyhow::Result<()> {
    // The view's buckets live with the projectors (with --auth, the VIEWS account).
    let auth = nats.auth_dir()?;
    let client = connect(&nats.url_as(auth.as_ref(), ledger::auth::PROJECTOR)?).await?;
    let js = ledger::jetstream::nats::jetstream::new(client);
    let mut watch = projections::client::ViewWatch::start(js, view.as_str()).await?;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            change = watch.next() => match change {
                Some(change) => {
                    use std::io::Write;
                    let c = change?;
                    let line = serde_json::json!({"key": c.key, "value": c.value, "generation": c.generation, "initial": c.initial});
                    match writeln!(std::io::stdout().lock(), "{line}") {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                        other => other?,
                    }
                }
                None => return Ok(()),
            },
        }
    }
}

/// What `erp up`'s supervisor says of its components, if an `erp up` is running.
async fn supervisor_status(client: &async_nats_client::Client) {
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(up::SUPERVISOR_STATUS, Bytes::new()),
    )
    .await;
    let Ok(Ok(msg)) = answer else {
        say!("erp up: not running (or not reachable); components are managed elsewhere");
        return;
    };
    let Ok(board) = serde_json::from_slice::<std::collections::BTreeMap<String, serde_json::Value>>(
        &msg.payload,
    ) else {
        return;
    };
    say!("erp up components:");
    for (name, c) in board {
        say!(
            "  {name:26} {:10} up {:>6} s, {} restarts{}",
            c["state"].as_str().unwrap_or("?"),
            c["up_seconds"],
            c["restarts"],
            c["last_failure"]
                .as_str()
                .map(|f| format!(", last failure: {f}"))
                .unwrap_or_default()
        );
    }
}

/// Each view's checkpoint and lag, as its projector answers.
async fn views_status(client: &async_nats_client::Client) {
    let views = projections::client::ViewClient::new(client.clone());
    for view in ViewName::ALL {
        match views
            .ask(
                view.as_str(),
                "status",
                serde_json::json!({}),
                None,
                Duration::from_secs(2),
            )
            .await
        {
            Ok(answer) => say!(
                "view {:13} at {}, {} behind the ledger, {} foreign messages passed over",
                view.as_str(),
                answer.result["checkpoint"],
                answer.result["lag"],
                answer.result["foreign"]["count"]
            ),
            Err(e) => say!("view {:13} not answering ({e})", view.as_str()),
        }
    }
}

async fn status(log: &JetStreamLog) -> anyhow::Result<()> {
    let info = log
        .jetstream()
        .get_stream(&log.config().stream)
        .await?
        .get_info()
        .await?;
    let state = &info.state;
    say!(
        "stream {}: {} messages, {} bytes, sequences {}..={}, {} subjects",
        info.config.name,
        state.messages,
        state.bytes,
        state.first_sequence,
        state.last_sequence,
        state.subjects_count
    );
    Ok(())
}
