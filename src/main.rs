//! `erp`: the command line. Definitions and glue only; the work lives in the library crates.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ledger::chain::ChainVerifier;
use ledger::jetstream::{JetStreamLog, LogConfig, SERVER_VERSION_MIN, provision_commands};
use ledger::server::{self, LocalServer, ServerOptions};
use ledger::{EventLog, LogCursor, LogRecord, ReadFrom, ReadUntil};

#[derive(Debug, Parser)]
#[command(
    name = "erp",
    version,
    about = "Event-sourced inventory and order ledger on NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct NatsArgs {
    /// NATS server to use. Without it, `up` starts a local one.
    #[arg(long, env = "ERP_NATS_URL")]
    nats: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the system: a local nats-server with JetStream (unless --nats is given), and the
    /// ledger and command streams. Runs until Ctrl-C.
    Up {
        #[command(flatten)]
        nats: NatsArgs,
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
    /// Walk the whole ledger and check every subject's hash chain.
    Verify {
        #[command(flatten)]
        nats: NatsArgs,
    },
}

#[derive(Debug, Subcommand)]
enum NatsAction {
    /// Print the nats-server that would be used; install the pinned release if none is found.
    Install {
        #[arg(long, default_value = ".tools")]
        tools_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Up {
            nats,
            data_dir,
            port,
            no_fsync,
            tools_dir,
        } => up(nats, data_dir, port, !no_fsync, tools_dir).await,
        Command::Nats {
            action: NatsAction::Install { tools_dir },
        } => {
            let path = server::find_or_install(&tools_dir, SERVER_VERSION_MIN)?;
            let version = server::binary_version(&path).context("reading its version")?;
            println!("{} (nats-server {version})", path.display());
            Ok(())
        }
        Command::Status { nats } => status(&open(&nats).await?).await,
        Command::Verify { nats } => verify(&open(&nats).await?).await,
    }
}

async fn connect(url: &str) -> anyhow::Result<async_nats_client::Client> {
    async_nats_client::connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// Re-exported client types, so the binary does not name the NATS crate in two places.
mod async_nats_client {
    pub use ledger::jetstream::nats::{Client, connect};
}

async fn open(args: &NatsArgs) -> anyhow::Result<JetStreamLog> {
    let url = args
        .nats
        .clone()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let client = connect(&url).await?;
    Ok(JetStreamLog::open(client, LogConfig::ledger()).await?)
}

async fn up(
    nats: NatsArgs,
    data_dir: PathBuf,
    port: u16,
    fsync: bool,
    tools_dir: PathBuf,
) -> anyhow::Result<()> {
    let mut local = None;
    let url = match nats.nats {
        Some(url) => url,
        None => {
            let binary = server::find_or_install(&tools_dir, SERVER_VERSION_MIN)?;
            let server = LocalServer::start(ServerOptions {
                binary,
                port,
                data_dir: data_dir.join("nats"),
                sync_always: fsync,
                die_with_parent: true,
                extra_config: String::new(),
            })
            .context("starting the local nats-server (is the port taken? try --port)")?;
            tracing::info!(url = %server.url(), store = %data_dir.join("nats").display(), fsync, "local nats-server started");
            let url = server.url();
            local = Some(server);
            url
        }
    };
    let client = connect(&url).await?;
    let log = JetStreamLog::open(client.clone(), LogConfig::ledger()).await?;
    provision_commands(
        log.jetstream(),
        "COMMANDS",
        "cmd.>",
        Duration::from_secs(7 * 24 * 3600),
    )
    .await?;
    status(&log).await?;
    println!("erp is up on {url}; Ctrl-C stops it");
    shutdown_signal().await?;
    if let Some(mut server) = local {
        tracing::info!("stopping the local nats-server");
        server.stop(Duration::from_secs(10));
    }
    Ok(())
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

async fn status(log: &JetStreamLog) -> anyhow::Result<()> {
    let info = log
        .jetstream()
        .get_stream(&log.config().stream)
        .await?
        .get_info()
        .await?;
    let state = &info.state;
    println!(
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

async fn verify(log: &JetStreamLog) -> anyhow::Result<()> {
    let last = log.last_sequence().await?;
    let mut cursor = log.read(ReadFrom::Start, ReadUntil::CaughtUp).await?;
    let mut verifier = ChainVerifier::new();
    let mut expected_seq = 1;
    while let Some(record) = cursor.next().await {
        let record = record?;
        if record.seq() != expected_seq {
            bail!(
                "sequence {expected_seq} is missing: the next stored message is {}",
                record.seq()
            );
        }
        expected_seq += 1;
        if let LogRecord::Event(event) = record {
            verifier.check(&event)?;
        }
        if expected_seq % 100_000 == 0 {
            eprintln!("verified {expected_seq} of {last}");
        }
    }
    println!(
        "verified {} events up to sequence {last}: every hash chain is intact",
        verifier.checked()
    );
    Ok(())
}
