//! A realistic workload from the UCI Online Retail data set (a UK gift-ware retailer's year,
//! 2010-12-01 to 2011-12-09, CC BY 4.0; see datasets/uci-online-retail/README.md).
//!
//! How rows become commands:
//! - every StockCode becomes an item when first seen (codes that do not start with a digit,
//!   such as `POST`, `M` or `BANK CHARGES`, are services and may go negative);
//! - at the first invoice of each month, each SKU receives that month's ordered quantity, at
//!   60% of its lowest positive unit price that month (the data has no costs);
//! - an ordinary invoice becomes an order (lines of the same code merged), then release to
//!   pick, pick, pack and ship;
//! - a `C` (cancellation) invoice's lines come back into stock as upward adjustments
//!   (`customer_cancellation`): the data does not say which order they cancel;
//! - other rows with a negative quantity are write-offs: downward adjustments with the row's
//!   note as the reason text;
//! - `A` (bad debt) invoices and rows with a negative price are skipped and counted.
//!
//! Times are the invoice times, read as UTC. Command ids are UUID v5 of the row's identity, so
//! running the demo twice submits the same commands and changes nothing the second time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;

use chrono::{Datelike, NaiveDateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

use crate::command::{Command, decode};

/// Where the data set lives in the repository.
pub const DATASET: &str = "datasets/uci-online-retail/online_retail_all.csv.gz";

const NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b7e_40d1_4a55_9a0e_3c5d_1e2f_7a10);
const LOCATION: &str = "UK-DC";

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DemoStats {
    pub rows: usize,
    pub invoices: usize,
    pub orders: usize,
    pub cancellation_lines: usize,
    pub write_offs: usize,
    pub skipped_rows: usize,
    pub items: usize,
    pub receipts: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("reading {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("row {row}: {detail}")]
    Row { row: usize, detail: String },
}

struct Row {
    invoice: String,
    code: String,
    description: String,
    qty: i64,
    at: NaiveDateTime,
    price: Decimal,
    country: String,
}

fn read_rows(path: &Path, days: Option<usize>) -> Result<Vec<Row>, DemoError> {
    let read_err = |e: &dyn std::fmt::Display| DemoError::Read {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(|e| read_err(&e))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| read_err(&e))?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut dates = HashSet::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| DemoError::Row {
            row: i + 2,
            detail: e.to_string(),
        })?;
        let bad = |detail: String| DemoError::Row { row: i + 2, detail };
        let at = NaiveDateTime::parse_from_str(&record[4], "%Y-%m-%d %H:%M:%S")
            .map_err(|e| bad(format!("InvoiceDate: {e}")))?;
        dates.insert(at.date());
        if days.is_some_and(|d| dates.len() > d) {
            break;
        }
        rows.push(Row {
            invoice: record[0].to_owned(),
            code: record[1].to_owned(),
            description: record[2].trim().to_owned(),
            qty: record[3]
                .parse()
                .map_err(|e| bad(format!("Quantity: {e}")))?,
            at,
            price: Decimal::from_str_exact(&record[5])
                .map_err(|e| bad(format!("UnitPrice: {e}")))?,
            country: record[7].to_owned(),
        });
    }
    Ok(rows)
}

struct Builder {
    commands: Vec<Command>,
    stats: DemoStats,
}

impl Builder {
    fn push(&mut self, identity: &str, at: NaiveDateTime, kind: &str, data: serde_json::Value) {
        let json = json!({
            "command_id": Uuid::new_v5(&NAMESPACE, identity.as_bytes()),
            "actor": {"id": "uci-demo", "role": "upstream"},
            "legal_entity": "UK01",
            "effective_at": Utc.from_utc_datetime(&at).to_rfc3339(),
            "type": kind,
            "data": data,
        });
        let command = decode(json.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("demo builds valid commands: {identity}: {e}"));
        self.commands.push(command);
    }
}

fn money(amount: Decimal) -> serde_json::Value {
    json!({"amount": amount.round_dp(2).to_string(), "currency": "GBP"})
}

/// The commands for the first `days` trading days (all when `None`), in submission order.
pub fn uci_commands(
    path: &Path,
    days: Option<usize>,
) -> Result<(Vec<Command>, DemoStats), DemoError> {
    let rows = read_rows(path, days)?;
    let mut b = Builder {
        commands: Vec::new(),
        stats: DemoStats {
            rows: rows.len(),
            ..DemoStats::default()
        },
    };
    let start = rows
        .first()
        .map_or_else(|| Utc::now().naive_utc(), |r| r.at);
    b.push("setup:location", start, "location.define", json!({"location": LOCATION, "kind": "Warehouse", "region": "United Kingdom", "routing_priority": 1}));
    b.push(
        "setup:channel",
        start,
        "channel.define",
        json!({"channel": "web", "name": "Online shop"}),
    );
    let mut items = HashSet::new();
    let mut month_done = HashSet::new();
    // An invoice's rows, in the order invoices first appear. Grouped by number, not by run:
    // the data set splits one invoice (542806) across two runs a minute apart, and two orders
    // with one number would be one command id with two bodies.
    let mut invoices: Vec<(&str, Vec<&Row>)> = Vec::new();
    let mut invoice_index: HashMap<&str, usize> = HashMap::new();
    for row in &rows {
        match invoice_index.get(row.invoice.as_str()) {
            Some(&i) => invoices[i].1.push(row),
            None => {
                invoice_index.insert(&row.invoice, invoices.len());
                invoices.push((&row.invoice, vec![row]));
            }
        }
    }
    b.stats.invoices = invoices.len();
    for (invoice, lines) in &invoices {
        let at = lines[0].at;
        let month = (at.year(), at.month());
        if month_done.insert(month) {
            let in_month = rows.iter().filter(|r| (r.at.year(), r.at.month()) == month);
            for row in in_month {
                define_item(&mut b, &mut items, row, at);
            }
            receive_month(&mut b, &rows, month, at);
        }
        if invoice.starts_with('A')
            || lines
                .iter()
                .any(|r| r.price.is_sign_negative() && !r.price.is_zero())
        {
            b.stats.skipped_rows += lines.len();
        } else if invoice.starts_with('C') {
            for (i, row) in lines.iter().enumerate() {
                b.stats.cancellation_lines += 1;
                let data = json!({"sku": row.code, "location": LOCATION, "delta": row.qty.abs(), "reason": "customer_cancellation", "note": format!("invoice {invoice}")});
                b.push(&format!("cancel:{invoice}:{i}"), at, "stock.adjust", data);
            }
        } else {
            order(&mut b, invoice, lines, at);
        }
    }
    b.stats.items = items.len();
    Ok((b.commands, b.stats))
}

fn define_item(b: &mut Builder, items: &mut HashSet<String>, row: &Row, at: NaiveDateTime) {
    if items.insert(row.code.clone()) {
        let service = !row.code.starts_with(|c: char| c.is_ascii_digit());
        let data =
            json!({"sku": row.code, "description": row.description, "allow_negative": service});
        b.push(&format!("item:{}", row.code), at, "item.define", data);
    }
}

fn receive_month(b: &mut Builder, rows: &[Row], month: (i32, u32), at: NaiveDateTime) {
    let mut demand: BTreeMap<&str, (i64, Decimal)> = BTreeMap::new();
    let in_month = |r: &&Row| (r.at.year(), r.at.month()) == month;
    for row in rows
        .iter()
        .filter(in_month)
        .filter(|r| r.qty > 0 && !r.invoice.starts_with(['C', 'A']))
    {
        // Cost: 60% of the month's lowest selling price, so bulk sales keep a margin too.
        let entry = demand.entry(&row.code).or_insert((0, row.price));
        entry.0 += row.qty;
        if row.price > Decimal::ZERO && (entry.1 <= Decimal::ZERO || row.price < entry.1) {
            entry.1 = row.price;
        }
    }
    for (code, (qty, price)) in demand {
        b.stats.receipts += 1;
        let cost = (price * Decimal::new(6, 1)).max(Decimal::ZERO);
        let data = json!({"sku": code, "location": LOCATION, "qty": qty, "unit_cost": money(cost)});
        b.push(
            &format!("receive:{}-{:02}:{code}", month.0, month.1),
            at,
            "stock.receive",
            data,
        );
    }
}

fn order(b: &mut Builder, invoice: &str, rows: &[&Row], at: NaiveDateTime) {
    let mut merged: Vec<(&str, i64, Decimal)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        if row.qty < 0 {
            b.stats.write_offs += 1;
            let data = json!({"sku": row.code, "location": LOCATION, "delta": row.qty, "reason": "write_off", "note": row.description});
            b.push(&format!("writeoff:{invoice}:{i}"), at, "stock.adjust", data);
            continue;
        }
        if row.qty == 0 {
            b.stats.skipped_rows += 1;
            continue;
        }
        match index.get(row.code.as_str()) {
            Some(&at) => merged[at].1 += row.qty,
            None => {
                index.insert(&row.code, merged.len());
                merged.push((&row.code, row.qty, row.price));
            }
        }
    }
    if merged.is_empty() {
        return;
    }
    b.stats.orders += 1;
    for chunk_start in (0..merged.len()).step_by(crate::command::LINES_MAX) {
        let chunk =
            &merged[chunk_start..(chunk_start + crate::command::LINES_MAX).min(merged.len())];
        let id = if chunk_start == 0 {
            invoice.to_owned()
        } else {
            format!("{invoice}-{}", chunk_start / crate::command::LINES_MAX)
        };
        fulfil(b, &id, chunk, chunk_start, rows[0], at);
    }
}

fn fulfil(
    b: &mut Builder,
    id: &str,
    lines: &[(&str, i64, Decimal)],
    first_line: usize,
    row: &Row,
    at: NaiveDateTime,
) {
    let order_lines: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, (code, qty, price))| json!({"line": first_line + i + 1, "sku": code, "qty": qty, "unit_price": money(*price)}))
        .collect();
    let numbered: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, (_, qty, _))| json!({"line": first_line + i + 1, "qty": qty}))
        .collect();
    b.push(
        &format!("order:{id}"),
        at,
        "order.place",
        json!({"order": id, "channel": "web", "ship_to_region": row.country, "lines": order_lines}),
    );
    b.push(
        &format!("release:{id}"),
        at,
        "order.release_to_pick",
        json!({"order": id, "wave": at.format("W%Y%m%d").to_string()}),
    );
    b.push(
        &format!("pick:{id}"),
        at,
        "order.pick",
        json!({"order": id, "lines": numbered}),
    );
    b.push(
        &format!("pack:{id}"),
        at,
        "order.pack",
        json!({"order": id, "package": format!("{id}-1"), "lines": numbered}),
    );
    b.push(&format!("ship:{id}"), at, "order.ship", json!({"order": id, "package": format!("{id}-1"), "carrier": "Royal Mail", "tracking": format!("RM{id}GB"), "freight_cost": money(Decimal::new(495, 2))}));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_of_the_year_has_its_own_id() {
        // One id per command: a repeated id with another body would be refused as
        // `duplicate_with_different_body` (the data set splits invoice 542806 in two runs).
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(DATASET);
        let (commands, stats) = uci_commands(&path, None).unwrap();
        let mut seen = HashMap::new();
        for c in &commands {
            if let Some(first) = seen.insert(c.command_id, c.body_sha256()) {
                assert_eq!(first, c.body_sha256(), "{} sent twice", c.command_id);
                panic!("{} built twice", c.command_id);
            }
        }
        let placed = commands
            .iter()
            .filter(|c| c.body.type_name() == "order.place")
            .count();
        assert!(
            placed >= stats.orders,
            "{placed} placed, {} orders",
            stats.orders
        );
    }
}
