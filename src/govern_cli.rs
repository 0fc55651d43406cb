//! `erp entity`, `erp threshold`, `erp approval`, `erp period`: a controller's commands
//! (legal entities, maker-checker thresholds, approvals, period close), sent like any other
//! command and answered with its outcome.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use projections::client::ViewClient;
use serde_json::{Value, json};

use crate::Sender;

/// Who acts when no credentials are given (with credentials the sender is the actor).
#[derive(Debug, Clone, clap::Args)]
pub struct Acting {
    /// The legal entity.
    #[arg(long, default_value = "UK01")]
    pub entity: String,
    /// Without --auth: the actor named in the command.
    #[arg(long, default_value = "controller")]
    pub actor: String,
    /// Without --auth: the actor's role.
    #[arg(long, default_value = "controller")]
    pub role: String,
    /// Effective time of the command (RFC 3339); now by default.
    #[arg(long)]
    pub at: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EntityAction {
    /// Define the legal entity (or rename it): its functional currency and country.
    Define {
        #[command(flatten)]
        acting: Acting,
        #[arg(long, default_value = "")]
        name: String,
        /// ISO 4217 functional currency (GBP, EUR, ...); it never changes once set.
        #[arg(long)]
        currency: String,
        /// ISO 3166-1 alpha-2 country (GB, DE, ...).
        #[arg(long)]
        country: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum FxAction {
    /// Set the rate at which the entity's books translate a currency into its functional
    /// currency, from a date on.
    Set {
        #[command(flatten)]
        acting: Acting,
        /// The currency the rate is for (USD, EUR, ...).
        #[arg(long)]
        currency: String,
        /// Units of the functional currency one unit of --currency is worth.
        #[arg(long)]
        rate: String,
        /// The first date it holds (YYYY-MM-DD).
        #[arg(long)]
        from: String,
        /// Where it comes from.
        #[arg(long)]
        source: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ThresholdAction {
    /// Set the threshold of a command type: above it, commands wait for a second person.
    Set {
        #[command(flatten)]
        acting: Acting,
        /// stock.adjust, stock.count or stock.scrap (by --quantity); order.refund or
        /// purchase.create_order (by --value and --currency).
        #[arg(long = "for", value_name = "COMMAND_TYPE")]
        command_type: String,
        #[arg(long, conflicts_with_all = ["value", "currency"])]
        quantity: Option<i64>,
        #[arg(long, requires = "currency")]
        value: Option<String>,
        #[arg(long, requires = "value")]
        currency: Option<String>,
    },
    /// Remove the threshold of a command type.
    Remove {
        #[command(flatten)]
        acting: Acting,
        #[arg(long = "for", value_name = "COMMAND_TYPE")]
        command_type: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalAction {
    /// Commands of the entity waiting for a second person.
    List {
        #[arg(long, default_value = "UK01")]
        entity: String,
    },
    /// Approve a waiting command (not the person who sent it): it is decided now.
    Approve {
        /// The waiting command's id (`erp approval list`).
        request: String,
        #[command(flatten)]
        acting: Acting,
    },
    /// Reject a waiting command, with the reason.
    Reject {
        request: String,
        #[command(flatten)]
        acting: Acting,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PeriodAction {
    /// A month's trial balance for the entity, as the finance view holds it, and its close.
    Show {
        /// YYYY-MM.
        period: String,
        #[arg(long, default_value = "UK01")]
        entity: String,
    },
    /// A month's tax report for the entity: per jurisdiction, rate and currency, net sales,
    /// returns, tax charged, reversed and due.
    Tax {
        /// YYYY-MM.
        period: String,
        #[arg(long, default_value = "UK01")]
        entity: String,
    },
    /// Close a month: takes its trial balance from the finance view, checks that it balances
    /// and covers every event effective in the month, and sends `period.close` with it.
    Close {
        /// YYYY-MM.
        period: String,
        #[command(flatten)]
        acting: Acting,
    },
    /// Ask to reopen a closed month; it opens when a second person approves the request.
    Reopen {
        /// YYYY-MM.
        period: String,
        #[command(flatten)]
        acting: Acting,
        #[arg(long)]
        reason: String,
    },
}

fn command(sender: &Sender, acting: &Acting, kind: &str, data: Value) -> anyhow::Result<Value> {
    let at = match &acting.at {
        Some(at) => ledger::values::Timestamp::parse(at)
            .map_err(|e| anyhow::anyhow!("--at: {e}"))?
            .to_string(),
        None => ledger::values::Timestamp::new(chrono::Utc::now()).to_string(),
    };
    let mut command = json!({
        "command_id": uuid::Uuid::now_v7(),
        "legal_entity": acting.entity,
        "effective_at": at,
        "type": kind,
        "data": data,
    });
    if !sender.authenticated() {
        command["actor"] = json!({"id": acting.actor, "role": acting.role});
    }
    Ok(command)
}

/// Sends a command and prints its outcome; an outcome other than accepted is an error.
async fn send(sender: &Sender, command: &Value) -> anyhow::Result<commands::processor::Outcome> {
    let client = sender.client().await?;
    let outcome = client
        .submit_json(bytes::Bytes::from(command.to_string()))
        .await?;
    Ok(outcome)
}

fn report(kind: &str, outcome: &commands::processor::Outcome) -> anyhow::Result<()> {
    say!("{}", serde_json::to_string_pretty(outcome)?);
    match outcome {
        commands::processor::Outcome::Accepted { .. } => Ok(()),
        commands::processor::Outcome::Rejected { code, message, .. } => {
            bail!("{kind} refused: {code}: {message}")
        }
        commands::processor::Outcome::Invalid { field, message, .. } => {
            bail!("{kind} is not valid: {field}: {message}")
        }
        commands::processor::Outcome::Unavailable { message, .. } => {
            bail!("{kind}: nothing was stored ({message}); try again")
        }
    }
}

async fn run(sender: &Sender, acting: &Acting, kind: &str, data: Value) -> anyhow::Result<()> {
    let command = command(sender, acting, kind, data)?;
    let outcome = send(sender, &command).await?;
    report(kind, &outcome)
}

pub async fn entity(sender: &Sender, action: &EntityAction) -> anyhow::Result<()> {
    match action {
        EntityAction::Define {
            acting,
            name,
            currency,
            country,
        } => {
            run(
                sender,
                acting,
                "legal_entity.define",
                json!({"name": name, "currency": currency, "country": country}),
            )
            .await
        }
    }
}

pub async fn fx(sender: &Sender, action: &FxAction) -> anyhow::Result<()> {
    match action {
        FxAction::Set {
            acting,
            currency,
            rate,
            from,
            source,
        } => {
            run(
                sender,
                acting,
                "fx.set_rate",
                json!({"currency": currency, "rate": rate, "from": from, "source": source}),
            )
            .await
        }
    }
}

pub async fn threshold(sender: &Sender, action: &ThresholdAction) -> anyhow::Result<()> {
    match action {
        ThresholdAction::Set {
            acting,
            command_type,
            quantity,
            value,
            currency,
        } => {
            let limit = match (quantity, value, currency) {
                (Some(q), None, None) => json!({"Quantity": q}),
                (None, Some(v), Some(c)) => json!({"Value": {"amount": v, "currency": c}}),
                _ => bail!("give the limit as --quantity N, or as --value AMOUNT --currency CODE"),
            };
            run(
                sender,
                acting,
                "policy.set_threshold",
                json!({"command_type": command_type, "limit": limit}),
            )
            .await
        }
        ThresholdAction::Remove {
            acting,
            command_type,
        } => {
            run(
                sender,
                acting,
                "policy.set_threshold",
                json!({"command_type": command_type, "limit": null}),
            )
            .await
        }
    }
}

pub async fn approval(sender: &Sender, action: &ApprovalAction) -> anyhow::Result<()> {
    match action {
        ApprovalAction::List { entity } => {
            let views = ViewClient::new(sender.connect().await?);
            let mut after: Option<String> = None;
            let mut count = 0;
            loop {
                let answer = ask_finance(
                    &views,
                    "approvals",
                    json!({"entity": entity, "after": after}),
                )
                .await?;
                for a in answer["approvals"].as_array().into_iter().flatten() {
                    count += 1;
                    say!("{}", serde_json::to_string(a)?);
                }
                match answer["next_after"].as_str() {
                    Some(next) => after = Some(next.to_owned()),
                    None => break,
                }
            }
            eprintln!("{count} waiting for approval in {entity}");
            Ok(())
        }
        ApprovalAction::Approve { request, acting } => {
            let request = parse_request(request)?;
            run(
                sender,
                acting,
                "approval.approve",
                json!({"request": request}),
            )
            .await
        }
        ApprovalAction::Reject {
            request,
            acting,
            reason,
        } => {
            let request = parse_request(request)?;
            run(
                sender,
                acting,
                "approval.reject",
                json!({"request": request, "reason": reason}),
            )
            .await
        }
    }
}

fn parse_request(request: &str) -> anyhow::Result<uuid::Uuid> {
    uuid::Uuid::parse_str(request).with_context(|| {
        format!("request `{request}` is not a command id (a UUID, from `erp approval list`)")
    })
}

fn parse_period(period: &str) -> anyhow::Result<ledger::values::Period> {
    period.parse().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Asks the finance view.
async fn ask_finance(views: &ViewClient, op: &str, body: Value) -> anyhow::Result<Value> {
    let answer = views
        .ask("finance", op, body, None, Duration::from_secs(10))
        .await?;
    Ok(answer.result)
}

async fn trial_balance(views: &ViewClient, entity: &str, period: &str) -> anyhow::Result<Value> {
    ask_finance(views, "period", json!({"entity": entity, "period": period})).await
}

pub async fn period(sender: &Sender, action: &PeriodAction) -> anyhow::Result<()> {
    match action {
        PeriodAction::Show { period, entity } => {
            parse_period(period)?;
            let views = ViewClient::new(sender.connect().await?);
            let row = trial_balance(&views, entity, period).await?;
            say!("{}", serde_json::to_string_pretty(&row)?);
            Ok(())
        }
        PeriodAction::Tax { period, entity } => {
            parse_period(period)?;
            let views = ViewClient::new(sender.connect().await?);
            let answer = ask_finance(
                &views,
                "tax_report",
                json!({"entity": entity, "period": period}),
            )
            .await?;
            say!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        PeriodAction::Close { period, acting } => {
            parse_period(period)?;
            let views = ViewClient::new(sender.connect().await?);
            // The finance view may still be reading the last events of the month: a trial
            // balance that misses one is refused `period_changed`, and taken again.
            for attempt in 1..=10 {
                let row = trial_balance(&views, &acting.entity, period).await?;
                if row["balanced"] != json!(true) {
                    bail!(
                        "the trial balance of {period} in {} does not balance; it cannot close:\n{}",
                        acting.entity,
                        serde_json::to_string_pretty(&row["totals"])?
                    );
                }
                let totals: Vec<Value> = row["totals"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        json!({
                            "debits": {"amount": t["debits"], "currency": t["currency"]},
                            "credits": {"amount": t["credits"], "currency": t["currency"]},
                        })
                    })
                    .collect();
                let data = json!({
                    "period": period,
                    "events": row["events"],
                    "totals": totals,
                    "trial_balance_sha256": row["trial_balance_sha256"],
                });
                let command = command(sender, acting, "period.close", data)?;
                let outcome = send(sender, &command).await?;
                if let commands::processor::Outcome::Rejected { code, .. } = &outcome
                    && code == commands::decide::code::PERIOD_CHANGED
                    && attempt < 10
                {
                    eprintln!(
                        "the finance view had not read every event of {period} yet; asking again"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                report("period.close", &outcome)?;
                eprintln!(
                    "{period} closed in {}: {} events, trial balance {}",
                    acting.entity, row["events"], row["trial_balance_sha256"]
                );
                return Ok(());
            }
            unreachable!("the last attempt returns")
        }
        PeriodAction::Reopen {
            period,
            acting,
            reason,
        } => {
            parse_period(period)?;
            run(
                sender,
                acting,
                "period.reopen",
                json!({"period": period, "reason": reason}),
            )
            .await?;
            eprintln!("asked; {period} opens when a second person approves (`erp approval list`)");
            Ok(())
        }
    }
}
