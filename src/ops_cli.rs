//! `erp exceptions`: the exception queue in the terminal, highest priority first; `erp kpis`:
//! a period's operations KPIs.

use std::time::Duration;

use anyhow::bail;
use projections::client::ViewClient;
use serde_json::{Value, json};

#[derive(Debug, Clone, clap::Args)]
pub struct ExceptionsArgs {
    /// Only this legal entity's.
    #[arg(long)]
    entity: Option<String>,
    /// Only this kind: order_unshipped, shipment_in_transit, backorder_past_promise,
    /// purchase_order_overdue, receipt_variance, count_variance, return_not_inspected,
    /// below_safety_stock.
    #[arg(long)]
    kind: Option<String>,
    /// open (default), snoozed, resolved or cleared.
    #[arg(long)]
    status: Option<String>,
    /// Only those this actor owns.
    #[arg(long)]
    owner: Option<String>,
    /// How many to show (1 to 1000).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Counts by kind, status and age instead of the queue.
    #[arg(long)]
    counts: bool,
    /// The view's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// The kind names the CLI takes, and the variant each stands for.
const KINDS: [(&str, &str); 8] = [
    ("order_unshipped", "OrderUnshipped"),
    ("shipment_in_transit", "ShipmentInTransit"),
    ("backorder_past_promise", "BackorderPastPromise"),
    ("purchase_order_overdue", "PurchaseOrderOverdue"),
    ("receipt_variance", "ReceiptVariance"),
    ("count_variance", "CountVariance"),
    ("return_not_inspected", "ReturnNotInspected"),
    ("below_safety_stock", "BelowSafetyStock"),
];

fn query(args: &ExceptionsArgs) -> anyhow::Result<Value> {
    let mut body = json!({});
    if let Some(entity) = &args.entity {
        body["entity"] = json!(entity);
    }
    if args.counts {
        return Ok(body);
    }
    if let Some(kind) = &args.kind {
        let Some((_, variant)) = KINDS.iter().find(|(name, _)| name == kind) else {
            let names: Vec<&str> = KINDS.iter().map(|(n, _)| *n).collect();
            bail!("--kind {kind}: expected one of {}", names.join(", "));
        };
        body["kind"] = json!(variant);
    }
    if let Some(status) = &args.status {
        if !["open", "snoozed", "resolved", "cleared"].contains(&status.as_str()) {
            bail!("--status {status}: expected open, snoozed, resolved or cleared");
        }
        body["status"] = json!(status);
    }
    if let Some(owner) = &args.owner {
        body["owner"] = json!(owner);
    }
    if !(1..=1000).contains(&args.limit) {
        bail!("--limit {}: expected 1 to 1000", args.limit);
    }
    body["limit"] = json!(args.limit);
    Ok(body)
}

/// The subject's ids, joined: `581475`, `581475 / 581475-1`, `85123A @ UK-DC`.
fn subject(on: &Value) -> String {
    let Some((shape, ids)) = on.as_object().and_then(|o| o.iter().next()) else {
        return on.to_string();
    };
    let id = |name: &str| ids[name].as_str().unwrap_or("?").to_owned();
    match shape.as_str() {
        "Order" => id("order"),
        "Shipment" => format!("{} / {}", id("order"), id("package")),
        "Return" => format!("{} / {}", id("order"), id("return_id")),
        "PurchaseOrder" => id("purchase_order"),
        "Stock" => format!("{} @ {}", id("sku"), id("location")),
        "Ledger" => format!("ledger seq {}", ids["seq"]),
        _ => ids.to_string(),
    }
}

fn money(value: &Value) -> String {
    match (value["amount"].as_str(), value["currency"].as_str()) {
        (Some(amount), Some(currency)) => format!("{amount} {currency}"),
        _ => "-".into(),
    }
}

pub async fn exceptions(client: &ViewClient, args: &ExceptionsArgs) -> anyhow::Result<()> {
    let op = if args.counts { "counts" } else { "queue" };
    let answer = client
        .ask(
            "exceptions",
            op,
            query(args)?,
            None,
            Duration::from_secs(10),
        )
        .await?;
    let result = &answer.result;
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({"seq": answer.seq, "result": result}))?
        );
        return Ok(());
    }
    let clock = result["business_clock"].as_str().unwrap_or("none yet");
    if args.counts {
        say!("business clock {clock} · ledger sequence {}", answer.seq);
        say!(
            "{:<24} {:>6} {:>8} {:>9} {:>8}   active by age (days) 0-1 / 1-3 / 3-7 / 7+",
            "kind",
            "open",
            "snoozed",
            "resolved",
            "cleared"
        );
        if let Some(kinds) = result["kinds"].as_object() {
            let n = |v: &Value| v.as_u64().unwrap_or(0);
            for (kind, c) in kinds {
                let age = &c["active_by_age_days"];
                say!(
                    "{:<24} {:>6} {:>8} {:>9} {:>8}   {} / {} / {} / {}",
                    kind,
                    n(&c["open"]),
                    n(&c["snoozed"]),
                    n(&c["resolved"]),
                    n(&c["cleared"]),
                    n(&age["0-1"]),
                    n(&age["1-3"]),
                    n(&age["3-7"]),
                    n(&age["7+"])
                );
            }
        }
        return Ok(());
    }
    let list = result["exceptions"].as_array().cloned().unwrap_or_default();
    say!(
        "business clock {clock} · {} {} exceptions (showing {}), highest priority first · ledger sequence {}",
        result["count"],
        args.status.as_deref().unwrap_or("open"),
        list.len(),
        answer.seq
    );
    if list.is_empty() {
        return Ok(());
    }
    say!(
        "{:>4} {:>12} {:<24} {:<30} {:<6} {:<8} {:>5} {:>16} {:>6}  owner (HELD: the order is held for it)",
        "#",
        "score",
        "kind",
        "subject",
        "entity",
        "severity",
        "age",
        "at risk",
        "units"
    );
    for (i, e) in list.iter().enumerate() {
        let kind = e["key"]
            .as_str()
            .and_then(|k| k.split('.').nth(1))
            .unwrap_or("?");
        say!(
            "{:>4} {:>12} {:<24} {:<30} {:<6} {:<8} {:>4}d {:>16} {:>6}  {}{}",
            i + 1,
            e["score"].as_str().unwrap_or("?"),
            kind,
            subject(&e["on"]),
            e["entity"].as_str().unwrap_or("?"),
            e["severity"].as_str().unwrap_or("?"),
            e["age_days"].as_i64().unwrap_or(0),
            money(&e["impact"]["value"]),
            e["impact"]["units"].as_i64().unwrap_or(0),
            e["owner"].as_str().unwrap_or("-"),
            if e["hold"].is_null() { "" } else { "  HELD" },
        );
    }
    if !result["next_after"].is_null() {
        eprintln!("(more: --limit up to 1000, or erp view exceptions queue --all)");
    }
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct KpisArgs {
    /// A month (2011-11), an ISO week (2011-W44) or a day (2011-11-03).
    #[arg(long)]
    period: String,
    /// Only this dimension: all, entity, channel, location or supplier.
    #[arg(long)]
    dimension: Option<String>,
    /// The view's answer as JSON.
    #[arg(long)]
    json: bool,
}

fn rate(v: &Value) -> String {
    match v.as_str().and_then(|s| s.parse::<f64>().ok()) {
        Some(r) => format!("{:.2}%", r * 100.0),
        None => "-".into(),
    }
}

pub async fn kpis(client: &ViewClient, args: &KpisArgs) -> anyhow::Result<()> {
    let mut body = json!({"period": args.period});
    if let Some(d) = &args.dimension {
        body["dimension"] = json!(d);
    }
    let answer = client
        .ask("kpis", "period", body, None, Duration::from_secs(10))
        .await?;
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({"seq": answer.seq, "result": answer.result}))?
        );
        return Ok(());
    }
    say!(
        "KPIs for {} · ledger sequence {} (definitions: docs/VIEWS.md)",
        args.period,
        answer.seq
    );
    say!(
        "{:<26} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>9} {:>8} {:>8} {:>9}",
        "dimension",
        "orders",
        "fill u",
        "fill ln",
        "fill ord",
        "backord",
        "in full",
        "on time",
        "OTIF",
        "perfect",
        "cycle50",
        "cycle90",
        "returns"
    );
    for row in answer.result["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let k = &row["kpis"];
        let hours = |v: &Value| v.as_u64().map_or("-".into(), |h| format!("{h}h"));
        let name = format!(
            "{} {}",
            row["dimension"].as_str().unwrap_or("?"),
            row["value"].as_str().unwrap_or("?")
        );
        say!(
            "{:<26} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>9} {:>8} {:>8} {:>9}",
            name,
            row["orders_placed"].as_i64().unwrap_or(0),
            rate(&k["fill_rate_first_time"]["units"]),
            rate(&k["fill_rate_first_time"]["lines"]),
            rate(&k["fill_rate_first_time"]["orders"]),
            rate(&k["backorder_rate_lines"]),
            rate(&k["in_full"]),
            rate(&k["on_time"]),
            rate(&k["otif"]),
            rate(&k["perfect_order"]),
            hours(&k["cycle_time_hours"]["p50"]),
            hours(&k["cycle_time_hours"]["p90"]),
            rate(&k["return_rate_units"]),
        );
    }
    let suppliers: Vec<Value> = answer.result["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["receipts"].as_i64().unwrap_or(0) > 0)
        .cloned()
        .collect();
    if !suppliers.is_empty() {
        say!(
            "\n{:<26} {:>10} {:>10} {:>14} {:>14}",
            "receipts",
            "units",
            "on time",
            "lead mean d",
            "lead sd d"
        );
        for row in suppliers {
            let k = &row["kpis"];
            say!(
                "{:<26} {:>10} {:>10} {:>14} {:>14}",
                format!(
                    "{} {}",
                    row["dimension"].as_str().unwrap_or("?"),
                    row["value"].as_str().unwrap_or("?")
                ),
                row["units_received"].as_i64().unwrap_or(0),
                rate(&k["supplier_on_time_units"]),
                k["lead_time"]["mean_days"].as_str().unwrap_or("-"),
                k["lead_time"]["std_dev_days"].as_str().unwrap_or("-"),
            );
        }
    }
    let stocked: Vec<Value> = answer.result["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            ["all", "entity", "location"].contains(&r["dimension"].as_str().unwrap_or(""))
                && (r["inventory_value_close"]
                    .as_object()
                    .is_some_and(|m| !m.is_empty())
                    || r["cogs"].as_object().is_some_and(|m| !m.is_empty()))
        })
        .cloned()
        .collect();
    if !stocked.is_empty() {
        say!(
            "\n{:<26} {:>4} {:>16} {:>16} {:>8} {:>9} {:>8} {:>8}  aged 0-30/31-60/61-90/91-180/181+ (units, at month end)",
            "inventory",
            "cur",
            "at cost, close",
            "COGS",
            "turns",
            "supply d",
            "GMROI",
            "sell-thr"
        );
        for row in stocked {
            let k = &row["kpis"];
            let currencies: std::collections::BTreeSet<String> = row["inventory_value_close"]
                .as_object()
                .into_iter()
                .chain(row["cogs"].as_object())
                .flat_map(|m| m.keys().cloned())
                .collect();
            let aging = row["aging"]
                .as_object()
                .filter(|a| !a.is_empty())
                .map(|a| {
                    ["0-30", "31-60", "61-90", "91-180", "181+"]
                        .iter()
                        .map(|b| {
                            a.get(*b)
                                .and_then(|x| x["units"].as_i64())
                                .unwrap_or(0)
                                .to_string()
                        })
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .unwrap_or_default();
            for c in currencies {
                let text = |v: &Value| v[&c].as_str().unwrap_or("-").to_owned();
                let money = |v: &Value| {
                    v[&c]
                        .as_str()
                        .and_then(|x| x.parse::<rust_decimal::Decimal>().ok())
                        .map_or("-".into(), |x| x.round_dp(2).to_string())
                };
                say!(
                    "{:<26} {:>4} {:>16} {:>16} {:>8} {:>9} {:>8} {:>8}  {}",
                    format!(
                        "{} {}",
                        row["dimension"].as_str().unwrap_or("?"),
                        row["value"].as_str().unwrap_or("?")
                    ),
                    c,
                    money(&row["inventory_value_close"]),
                    money(&row["cogs"]),
                    text(&k["inventory_turns"]),
                    text(&k["days_of_supply"]),
                    text(&k["gmroi"]),
                    rate(&k["sell_through_units"]),
                    aging,
                );
            }
        }
    }
    Ok(())
}
