//! `erp up`: a local server (unless one is given), the processor and the six projectors, each
//! restarted with backoff when it fails; Ctrl-C or SIGTERM stops the components first and the
//! server last. What the supervisor knows (state, restarts, last failure of each component)
//! is answered on `erp.up.status`, which `erp status` asks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use commands::service::ServiceConfig;
use futures::StreamExt;
use ledger::jetstream::{JetStreamLog, SERVER_VERSION_MIN};
use ledger::server::{self, LocalServer, ServerOptions};
use projections::{Mode, ProjectorConfig};
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    DemoArgs, NatsArgs, UpArgs, ViewName, connect, load_roles, run_demo_as_upstream, status,
};

/// Where `erp up` answers what its supervisor knows.
pub const SUPERVISOR_STATUS: &str = "erp.up.status";

/// Longest wait before restarting a failed component.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One supervised component, as `erp status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Component {
    pub state: &'static str,
    pub restarts: u32,
    pub last_failure: Option<String>,
    /// Seconds since the last (re)start.
    #[serde(skip)]
    started: Option<Instant>,
    pub up_seconds: u64,
}

type Board = Arc<Mutex<BTreeMap<String, Component>>>;

/// Runs `component` until `stop` turns true, starting it again (after 1, 2, 4... up to 30 s)
/// whenever it fails, panics or ends by itself.
async fn supervise<F, Fut>(name: String, board: Board, mut stop: watch::Receiver<bool>, mut run: F)
where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut backoff = Duration::from_secs(1);
    loop {
        set(&board, &name, |c| {
            c.state = "running";
            c.started = Some(Instant::now());
        });
        let started = Instant::now();
        let ended = tokio::spawn(run(stop.clone())).await;
        if *stop.borrow() {
            set(&board, &name, |c| c.state = "stopped");
            return;
        }
        let failure = match ended {
            Ok(Ok(())) => "ended by itself".to_owned(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e.into_panic())),
            Err(e) => e.to_string(),
        };
        if started.elapsed() > BACKOFF_MAX * 2 {
            backoff = Duration::from_secs(1);
        }
        tracing::error!(component = %name, failure = %failure, restart_in_s = backoff.as_secs(), "component failed; restarting it");
        set(&board, &name, |c| {
            c.state = "restarting";
            c.restarts += 1;
            c.last_failure = Some(failure.clone());
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {
                set(&board, &name, |c| c.state = "stopped");
                return;
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "no message".to_owned())
}

fn set(board: &Board, name: &str, change: impl FnOnce(&mut Component)) {
    let mut board = board.lock().expect("board");
    change(board.entry(name.to_owned()).or_default());
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Answers `erp.up.status` with the board until `stop`.
async fn answer_status(
    client: ledger::jetstream::nats::Client,
    board: Board,
    stop: watch::Receiver<bool>,
) {
    let Ok(mut requests) = client.subscribe(SUPERVISOR_STATUS).await else {
        tracing::warn!("cannot answer {SUPERVISOR_STATUS}");
        return;
    };
    let until = stopped(stop);
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return,
            request = requests.next() => {
                let Some(request) = request else { return };
                let Some(reply) = request.reply else { continue };
                let snapshot: BTreeMap<String, Component> = board
                    .lock()
                    .expect("board")
                    .iter()
                    .map(|(k, c)| {
                        let mut c = c.clone();
                        c.up_seconds = c.started.map_or(0, |s| s.elapsed().as_secs());
                        (k.clone(), c)
                    })
                    .collect();
                let body = serde_json::to_vec(&snapshot).expect("json");
                let _ = client.publish(reply, Bytes::from(body)).await;
            }
        }
    }
}

pub async fn up(nats: NatsArgs, args: UpArgs) -> anyhow::Result<()> {
    let UpArgs {
        data_dir,
        port,
        no_fsync,
        tools_dir,
        demo,
        demo_days,
        roles,
        purchasing,
        http,
        no_http,
        clock,
    } = args;
    // The gateway's port is taken and its certificate read now, so a clash or a bad file is
    // a clear error before anything starts.
    let (listener, tls) = match no_http {
        true => (None, None),
        false => {
            let tls = http.tls()?;
            http.warn_if_exposed(nats.auth.is_some());
            (Some(http.bind().await?), tls)
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let fsync = !no_fsync;
    let demo = demo.then_some(DemoArgs {
        days: demo_days,
        window: 512,
        dataset: commands::demo::DATASET.into(),
        print: false,
    });
    let roles = load_roles(roles.as_deref())?;
    let auth = nats.auth_dir()?;
    crate::warn_if_open_and_remote(&nats, auth.is_some());
    // The accounts block, inlined: nats-server resolves includes relative to its config.
    let extra_config = auth.as_ref().map(|a| a.server_config()).unwrap_or_default();
    let mut local = None;
    let url = match &nats.nats {
        Some(url) => url.clone(),
        None => {
            let binary = server::find_or_install(&tools_dir, SERVER_VERSION_MIN)?;
            let server = LocalServer::start(ServerOptions {
                binary,
                port,
                data_dir: data_dir.join("nats"),
                sync_always: fsync,
                die_with_parent: true,
                extra_config,
            })
            .context("starting the local nats-server (is the port taken? try --port)")?;
            tracing::info!(url = %server.url(), store = %data_dir.join("nats").display(), fsync, auth = auth.is_some(), "local nats-server started");
            let url = server.url();
            local = Some(server);
            url
        }
    };
    let nats = NatsArgs {
        nats: Some(url.clone()),
        ..nats
    };
    let processor_url = nats.url_as(auth.as_ref(), ledger::auth::PROCESSOR)?;
    let projector_url = nats.url_as(auth.as_ref(), ledger::auth::PROJECTOR)?;
    let client = connect(&processor_url).await?;
    status(&JetStreamLog::open(client.clone(), nats.ledger()).await?).await?;

    let board: Board = Arc::default();
    let (stop, stop_rx) = watch::channel(false);
    let status_task = tokio::spawn(answer_status(
        client.clone(),
        board.clone(),
        stop_rx.clone(),
    ));
    let service_config = ServiceConfig {
        roles,
        purchase_policy: purchasing.policy(),
        principals: auth.as_ref().map(|a| a.principals.clone()),
        clock_tick: clock.every(demo.is_some()),
        ..ServiceConfig::default()
    };
    let ledger_config = nats.ledger();
    let processor = tokio::spawn(supervise(
        "processor".into(),
        board.clone(),
        stop_rx.clone(),
        move |stop| {
            let (url, config, log_config) = (
                processor_url.clone(),
                service_config.clone(),
                ledger_config.clone(),
            );
            async move {
                let client = connect(&url).await?;
                let log = JetStreamLog::open(client.clone(), log_config).await?;
                commands::service::run(client, log, config, stopped(stop)).await?;
                Ok(())
            }
        },
    ));
    let views_config = nats.reader(ledger::auth::VIEWS_MIRROR);
    let mut projectors = Vec::new();
    for view in ViewName::ALL {
        let (url, config) = (projector_url.clone(), views_config.clone());
        projectors.push(tokio::spawn(supervise(
            format!("projector {}", view.as_str()),
            board.clone(),
            stop_rx.clone(),
            move |stop| {
                let (url, config) = (url.clone(), config.clone());
                async move {
                    let log = JetStreamLog::open(connect(&url).await?, config).await?;
                    match view
                        .project(log, Mode::Live, ProjectorConfig::default(), stopped(stop))
                        .await?
                    {
                        projections::RunEnd::Shutdown => Ok(()),
                        projections::RunEnd::Superseded { by } => {
                            anyhow::bail!(
                                "superseded by {by}; starting the new generation's projector"
                            )
                        }
                    }
                }
            },
        )));
    }
    let holder_task = nats.holder_sender()?.map(|sender| {
        tokio::spawn(supervise(
            "exception holder".into(),
            board.clone(),
            stop_rx.clone(),
            move |stop| crate::holder::run_as(sender.clone(), stop),
        ))
    });
    let gateway_task = listener.map(|listener| {
        let config = http.config(&nats);
        let address = listener.local_addr().ok();
        let listener = Arc::new(Mutex::new(Some(listener)));
        let task = tokio::spawn(supervise(
            "gateway".into(),
            board.clone(),
            stop_rx.clone(),
            move |stop| {
                let (config, listener, tls) = (config.clone(), listener.clone(), tls.clone());
                async move {
                    // The listener bound at start serves the first run; a restart binds again.
                    let taken = listener.lock().expect("listener").take();
                    let listener = match taken {
                        Some(listener) => listener,
                        None => tokio::net::TcpListener::bind(address.expect("bound")).await?,
                    };
                    let gw = gateway::Gateway::open(config).await?;
                    gw.serve(listener, tls, stopped(stop)).await?;
                    Ok(())
                }
            },
        ));
        (task, address)
    });
    let http_line = match &gateway_task {
        Some((_, Some(address))) => format!(", HTTP gateway on {scheme}://{address}"),
        _ => String::new(),
    };
    say!(
        "erp is up on {url}: processor and projectors (ats, allocation, audit, margin, finance, replenishment, exceptions, kpis, trace) and the exception holder running{http_line}; Ctrl-C stops it"
    );
    let demo_run = async {
        match demo {
            Some(demo) => run_demo_as_upstream(&nats, &demo).await,
            None => std::future::pending().await,
        }
    };
    let ran: anyhow::Result<()> = tokio::select! {
        signal = crate::shutdown_signal() => signal,
        demo = demo_run => match demo {
            Ok(()) => crate::shutdown_signal().await,
            Err(e) => Err(e.context("the demo stopped")),
        },
    };
    eprintln!("stopping: processor and projectors first, then the server");
    let _ = stop.send(true);
    let deadline = Duration::from_secs(10);
    let _ = tokio::time::timeout(deadline, processor).await;
    for projector in projectors {
        let _ = tokio::time::timeout(deadline, projector).await;
    }
    if let Some((task, _)) = gateway_task {
        let _ = tokio::time::timeout(deadline, task).await;
    }
    if let Some(task) = holder_task {
        let _ = tokio::time::timeout(deadline, task).await;
    }
    status_task.abort();
    if let Some(mut server) = local {
        server.stop(Duration::from_secs(5));
    }
    let failures: Vec<String> = board
        .lock()
        .expect("board")
        .iter()
        .filter(|(_, c)| c.restarts > 0)
        .map(|(name, c)| format!("{name}: {} restarts", c.restarts))
        .collect();
    if failures.is_empty() {
        eprintln!("stopped");
    } else {
        eprintln!("stopped ({})", failures.join(", "));
    }
    ran
}
