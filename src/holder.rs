//! The exception holder: places the order holds that blocking exception rules ask for, and
//! lifts them when the exception clears itself, through the command path like any other
//! sender.
//!
//! It asks the `exceptions` view which orders are to be held or released (`holds`) and sends
//! `order.hold` / `order.release` as actor `exceptions` in role `system`, with the reason
//! `exception.<kind>`, effective when the exception was raised (or cleared). Command ids are
//! derived from the exception and its occurrence, so a restart, a second holder or a view
//! rebuilt from the start sends the same commands and gets their first outcomes: nothing is
//! held twice. A release names the reason it lifts, so it never lifts someone else's hold.
//! Resolving a blocking exception releases its hold in the same batch (the processor does
//! that), so the holder only lifts holds of exceptions that cleared.

use std::collections::HashSet;
use std::time::Duration;

use commands::client::CommandClient;
use commands::command::{Command, CommandBody, HoldOrder, ReleaseOrder};
use commands::processor::Outcome;
use ledger::events::{ExceptionKind, ExceptionSubject};
use ledger::values::{Actor, ActorId, EntityId, Role, Timestamp};
use projections::client::ViewClient;
use serde::Deserialize;
use tokio::sync::watch;
use uuid::Uuid;

/// The NATS user (with credentials) and actor the holder sends as.
pub const USER: &str = "exceptions";

/// How often the view is asked when there was nothing to do.
const POLL: Duration = Duration::from_secs(1);

/// Holds asked of the view per page.
const PAGE: u32 = 1000;

#[derive(Debug, Deserialize)]
struct Asked {
    holds: Vec<HoldAsked>,
    #[serde(default)]
    next_after: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HoldAsked {
    key: String,
    action: String,
    exception: AskedException,
    entity: EntityId,
    occurrence: u32,
    at: Timestamp,
}

#[derive(Debug, Deserialize)]
struct AskedException {
    kind: ExceptionKind,
    on: ExceptionSubject,
}

/// The command that carries out one asked hold or release.
fn command_for(asked: &HoldAsked) -> Option<Command> {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6a3c_1f0e_92b4_4d57_8e21_c4f9_0b7d_a512);
    let ExceptionSubject::Order { order } = &asked.exception.on else {
        return None;
    };
    let reason = asked.exception.kind.hold_reason();
    let body = match asked.action.as_str() {
        "hold" => CommandBody::HoldOrder(HoldOrder {
            order: order.clone(),
            reason,
        }),
        "release" => CommandBody::ReleaseOrder(ReleaseOrder {
            order: order.clone(),
            reason: Some(reason),
        }),
        _ => return None,
    };
    let name = format!("{}:{}:{}", asked.action, asked.key, asked.occurrence);
    let id = Uuid::new_v5(&NAMESPACE, name.as_bytes());
    Some(Command {
        command_id: id,
        correlation_id: id,
        actor: Actor {
            id: ActorId::new(USER).expect("valid id"),
            role: Role::new("system").expect("valid role"),
        },
        on_behalf_of: None,
        legal_entity: asked.entity.clone(),
        effective_at: asked.at,
        body,
        sender: None,
    })
}

/// Connects as `sender` and runs until `stop` turns true.
pub async fn run_as(sender: crate::Sender, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let connection = sender.connect().await?;
    run(
        ViewClient::new(connection.clone()),
        CommandClient::new(connection, Duration::from_secs(10)).as_user(sender.user.clone()),
        stop,
    )
    .await
}

/// Runs until `stop` turns true.
pub async fn run(
    views: ViewClient,
    commands: CommandClient,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Commands that got their outcome in this run; the view may still list one for a moment
    // (until it applies the hold) or for good (a hold the processor refused).
    let mut done: HashSet<Uuid> = HashSet::new();
    let mut view_down_since: Option<std::time::Instant> = None;
    while !*stop.borrow() {
        let mut sent = 0;
        match every_hold(&views).await? {
            Ok(holds) => {
                view_down_since = None;
                for command in holds.iter().filter_map(command_for) {
                    if done.contains(&command.command_id) {
                        continue;
                    }
                    sent += 1;
                    match commands.submit(&command).await {
                        Ok(outcome) => {
                            log_outcome(&command, &outcome);
                            if !matches!(outcome, Outcome::Unavailable { .. }) {
                                done.insert(command.command_id);
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, command_id = %command.command_id, "the exception holder's command got no answer; it is sent again");
                        }
                    }
                }
            }
            Err(error) => {
                let since = *view_down_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(30) {
                    tracing::warn!(%error, "the exception holder cannot ask the exceptions view; no order is held for blocking exceptions until it answers");
                    view_down_since = Some(std::time::Instant::now());
                }
            }
        }
        if sent == 0 {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
        }
    }
    Ok(())
}

/// Every hold and release the view lists, page by page (a hold the processor keeps refusing
/// stays listed, and must not keep the ones after it from being carried out). The inner error:
/// the view did not answer.
async fn every_hold(
    views: &ViewClient,
) -> anyhow::Result<Result<Vec<HoldAsked>, projections::client::ViewError>> {
    let mut holds = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let asked = views
            .ask(
                "exceptions",
                "holds",
                serde_json::json!({"limit": PAGE, "after": after}),
                None,
                Duration::from_secs(5),
            )
            .await;
        let answer = match asked {
            Ok(answer) => answer,
            Err(error) => return Ok(Err(error)),
        };
        let page: Asked = serde_json::from_value(answer.result).map_err(|e| {
            anyhow::anyhow!("the exceptions view's `holds` answer is not a list: {e}")
        })?;
        holds.extend(page.holds);
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(Ok(holds)),
        }
    }
}

fn log_outcome(command: &Command, outcome: &Outcome) {
    let what = command.body.type_name();
    match outcome {
        Outcome::Accepted { .. } => {
            tracing::info!(command = what, entity = %command.legal_entity, command_id = %command.command_id, "exception holder: order {}", if what == "order.hold" { "held" } else { "released" });
        }
        other => {
            tracing::warn!(command = what, command_id = %command.command_id, outcome = ?other, "exception holder: the processor did not carry it out");
        }
    }
}
