//! A realistic workload from the UCI Online Retail data set (a UK gift-ware retailer's year,
//! 2010-12-01 to 2011-12-09, CC BY 4.0; see datasets/uci-online-retail/README.md).
//!
//! How rows become commands:
//! - every StockCode becomes an item when first seen (codes that do not start with a digit,
//!   such as `POST`, `M` or `BANK CHARGES`, are services and may go negative);
//! - at the first invoice of each month, each SKU receives that month's ordered quantity, at
//!   60% of its lowest positive unit price that month (the data has no costs);
//! - an ordinary invoice becomes an order (lines of the same code merged, delivery promised in
//!   3 days in the UK and 5 in the euro area), released to pick within the hour, then picked,
//!   packed and shipped 2-30 hours after it was placed (about 3 in 100 wait 3-5 days);
//! - a `C` (cancellation) invoice's lines come back into stock as upward adjustments
//!   (`customer_cancellation`): the data does not say which order they cancel;
//! - other rows with a negative quantity are write-offs: downward adjustments with the row's
//!   note as the reason text;
//! - `A` (bad debt) invoices and rows with a negative price are skipped and counted.
//!
//! After the sale (the data stops at the shipment; these are drawn from a hash of the order id,
//! so every run draws the same): the carrier confirms delivery 1-2 days later in the UK and
//! 2-4 days later in the euro area, and about 4 shipments in 100 take 7-10 days (past the
//! 5-day in-transit rule); about 3 orders in 100 send one unit back, 2-10 days after delivery,
//! with a reason from the fixed list; the return arrives 3 days later, is inspected 1-6 days
//! after that (restocked, or scrapped when defective) and refunded. These commands are sent
//! in business-time order among the invoices; what would happen after the data's last invoice
//! is not sent (still in transit, or not yet returned). The after-sales commands of an order
//! the data could not fill are refused like its shipment (`unknown_package`: no such package
//! left).
//!
//! Two legal entities keep the books: `UK01` (GBP) sells to the United Kingdom and the rest of
//! the world from `UK-DC`; `EU01` (EUR, Ireland) sells to the euro-area countries from
//! `EU-DC`, at the data's GBP prices converted at the month's rate, and buys its stock in GBP
//! (so its books translate GBP costs into EUR). Cancellations and write-offs belong to the
//! entity of the customer's country. The entities and EU01's GBP rates are set first, by a
//! controller; the rates are illustrative monthly figures close to 2011's averages, not an
//! official fixing.
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
/// A legal entity of the demo: who it is, where its stock is, what it sells in.
struct Entity {
    id: &'static str,
    location: &'static str,
    currency: &'static str,
}

const UK: Entity = Entity {
    id: "UK01",
    location: "UK-DC",
    currency: "GBP",
};
const EU: Entity = Entity {
    id: "EU01",
    location: "EU-DC",
    currency: "EUR",
};

/// The data set's countries that used the euro in 2011: EU01's customers.
const EURO_AREA: [&str; 13] = [
    "Austria",
    "Belgium",
    "Cyprus",
    "EIRE",
    "Finland",
    "France",
    "Germany",
    "Greece",
    "Italy",
    "Malta",
    "Netherlands",
    "Portugal",
    "Spain",
];

/// EUR per GBP from the first of each month (illustrative, close to the month's average).
const EUR_PER_GBP: [((i32, u32), &str); 13] = [
    ((2010, 12), "1.1776"),
    ((2011, 1), "1.1787"),
    ((2011, 2), "1.1825"),
    ((2011, 3), "1.1601"),
    ((2011, 4), "1.1302"),
    ((2011, 5), "1.1413"),
    ((2011, 6), "1.1285"),
    ((2011, 7), "1.1327"),
    ((2011, 8), "1.1420"),
    ((2011, 9), "1.1480"),
    ((2011, 10), "1.1480"),
    ((2011, 11), "1.1630"),
    ((2011, 12), "1.1860"),
];

fn entity_of(country: &str) -> &'static Entity {
    if EURO_AREA.contains(&country) {
        &EU
    } else {
        &UK
    }
}

/// The EUR a GBP amount is worth in the month of `at`.
fn eur_per_gbp(at: NaiveDateTime) -> Decimal {
    let month = (at.year(), at.month());
    let rate = EUR_PER_GBP
        .iter()
        .rev()
        .find(|(from, _)| *from <= month)
        .unwrap_or(&EUR_PER_GBP[0])
        .1;
    rate.parse().expect("a rate")
}

/// A GBP amount of the data in the entity's selling currency, on `at`.
fn price_in(entity: &Entity, gbp: Decimal, at: NaiveDateTime) -> serde_json::Value {
    let amount = if entity.currency == "GBP" {
        gbp
    } else {
        gbp * eur_per_gbp(at)
    };
    json!({"amount": amount.round_dp(2).to_string(), "currency": entity.currency})
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DemoStats {
    pub rows: usize,
    pub invoices: usize,
    pub orders: usize,
    pub cancellation_lines: usize,
    pub write_offs: usize,
    pub skipped_rows: usize,
    pub items: usize,
    /// Items kept by lot with a best-before date.
    pub lot_items: usize,
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
    /// After-sales commands waiting for their business time: (time, order of drawing) ->
    /// (entity, identity, type, data).
    pending:
        BTreeMap<(NaiveDateTime, u64), (&'static Entity, String, &'static str, serde_json::Value)>,
    drawn: u64,
    /// Items kept by lot with a best-before date (`lot_kept_items`).
    lot_kept: HashSet<String>,
}

impl Builder {
    /// Sends `kind` at `at`, once the invoices reach that time.
    fn later(
        &mut self,
        entity: &'static Entity,
        identity: String,
        at: NaiveDateTime,
        kind: &'static str,
        data: serde_json::Value,
    ) {
        self.drawn += 1;
        self.pending
            .insert((at, self.drawn), (entity, identity, kind, data));
    }

    /// Sends what waits for a time at or before `now`, in time order.
    fn due(&mut self, now: NaiveDateTime) {
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((at, _), (entity, identity, kind, data)) = entry.remove_entry();
            self.push_as(entity, ("uci-demo", "upstream"), &identity, at, kind, data);
        }
    }

    fn push(&mut self, identity: &str, at: NaiveDateTime, kind: &str, data: serde_json::Value) {
        self.push_as(&UK, ("uci-demo", "upstream"), identity, at, kind, data);
    }

    /// A command of `entity`, by `actor` (id, role).
    fn push_as(
        &mut self,
        entity: &Entity,
        (actor, role): (&str, &str),
        identity: &str,
        at: NaiveDateTime,
        kind: &str,
        data: serde_json::Value,
    ) {
        let json = json!({
            "command_id": Uuid::new_v5(&NAMESPACE, identity.as_bytes()),
            "actor": {"id": actor, "role": role},
            "legal_entity": entity.id,
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
        pending: BTreeMap::new(),
        drawn: 0,
        lot_kept: lot_kept_items(&rows),
    };
    b.stats.lot_items = b.lot_kept.len();
    let start = rows
        .first()
        .map_or_else(|| Utc::now().naive_utc(), |r| r.at);
    let controller = ("uci-controller", "controller");
    for (entity, name, country) in [
        (&UK, "UCI Gifts UK Ltd", "GB"),
        (&EU, "UCI Gifts Europe Ltd", "IE"),
    ] {
        let data = json!({"name": name, "currency": entity.currency, "country": country});
        b.push_as(
            entity,
            controller,
            &format!("setup:entity:{}", entity.id),
            start,
            "legal_entity.define",
            data,
        );
    }
    for ((year, month), rate) in EUR_PER_GBP {
        let from = format!("{year}-{month:02}-01");
        let data = json!({"currency": "GBP", "rate": rate, "from": from,
            "source": "illustrative monthly EUR per GBP for the demo (close to the month's average, not an official fixing)"});
        b.push_as(
            &EU,
            controller,
            &format!("setup:rate:EU01:GBP:{from}"),
            start,
            "fx.set_rate",
            data,
        );
    }
    b.push("setup:location", start, "location.define", json!({"location": UK.location, "kind": "Warehouse", "region": "United Kingdom", "routing_priority": 1}));
    b.push_as(&EU, ("uci-demo", "upstream"), "setup:location:EU-DC", start, "location.define", json!({"location": EU.location, "kind": "Warehouse", "region": "EIRE", "routing_priority": 1}));
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
        b.due(at);
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
                let entity = entity_of(&row.country);
                let data = json!({"sku": row.code, "location": entity.location, "delta": row.qty.abs(), "reason": "customer_cancellation", "note": format!("invoice {invoice}")});
                b.push_as(
                    entity,
                    ("uci-demo", "upstream"),
                    &format!("cancel:{invoice}:{i}"),
                    at,
                    "stock.adjust",
                    data,
                );
            }
        } else {
            order(&mut b, invoice, lines, at);
        }
    }
    if let Some(last) = rows.last() {
        b.due(last.at);
    }
    b.stats.items = items.len();
    Ok((b.commands, b.stats))
}

/// Days from receipt to a lot's best-before date.
const SHELF_LIFE_DAYS: u64 = 270;

/// The items the demo keeps by lot with a best-before date, as a food or cosmetics shop would:
/// about one goods item in 20 (drawn from its code), among those the data never cancels,
/// writes off or returns (upstream systems that do not know lots send those).
fn lot_kept_items(rows: &[Row]) -> HashSet<String> {
    let unlotted: HashSet<&str> = rows
        .iter()
        .filter(|r| r.qty < 0 || r.invoice.starts_with(['C', 'A']))
        .map(|r| r.code.as_str())
        .collect();
    rows.iter()
        .map(|r| r.code.as_str())
        .filter(|code| code.starts_with(|c: char| c.is_ascii_digit()))
        .filter(|code| !unlotted.contains(code))
        .filter(|code| {
            Uuid::new_v5(&NAMESPACE, format!("lot:{code}").as_bytes())
                .as_u128()
                .is_multiple_of(20)
        })
        .map(str::to_owned)
        .collect()
}

fn define_item(b: &mut Builder, items: &mut HashSet<String>, row: &Row, at: NaiveDateTime) {
    if items.insert(row.code.clone()) {
        let service = !row.code.starts_with(|c: char| c.is_ascii_digit());
        let mut data =
            json!({"sku": row.code, "description": row.description, "allow_negative": service});
        if b.lot_kept.contains(&row.code) {
            data["tracking"] = json!({"lot": true, "serial": false, "expiry": true});
        }
        b.push(&format!("item:{}", row.code), at, "item.define", data);
    }
}

fn receive_month(b: &mut Builder, rows: &[Row], month: (i32, u32), at: NaiveDateTime) {
    let mut demand: BTreeMap<(&str, &str), (i64, Decimal)> = BTreeMap::new();
    let in_month = |r: &&Row| (r.at.year(), r.at.month()) == month;
    for row in rows
        .iter()
        .filter(in_month)
        .filter(|r| r.qty > 0 && !r.invoice.starts_with(['C', 'A']))
    {
        // Cost: 60% of the month's lowest selling price, so bulk sales keep a margin too.
        let entity = entity_of(&row.country).id;
        let entry = demand.entry((entity, &row.code)).or_insert((0, row.price));
        entry.0 += row.qty;
        if row.price > Decimal::ZERO && (entry.1 <= Decimal::ZERO || row.price < entry.1) {
            entry.1 = row.price;
        }
    }
    for ((entity, code), (qty, price)) in demand {
        b.stats.receipts += 1;
        let cost = (price * Decimal::new(6, 1)).max(Decimal::ZERO);
        // Both entities buy in GBP, from the same UK suppliers.
        let (entity, identity) = if entity == UK.id {
            (&UK, format!("receive:{}-{:02}:{code}", month.0, month.1))
        } else {
            (
                &EU,
                format!("receive:{entity}:{}-{:02}:{code}", month.0, month.1),
            )
        };
        let mut data =
            json!({"sku": code, "location": entity.location, "qty": qty, "unit_cost": money(cost)});
        if b.lot_kept.contains(code) {
            // One lot per entity and month's receipt, best before SHELF_LIFE_DAYS later.
            data["lot"] = json!(format!("{}-{}-{:02}", entity.id, month.0, month.1));
            data["expires_on"] =
                json!((at.date() + chrono::Days::new(SHELF_LIFE_DAYS)).to_string());
        }
        b.push_as(
            entity,
            ("uci-demo", "upstream"),
            &identity,
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
            let entity = entity_of(&row.country);
            let data = json!({"sku": row.code, "location": entity.location, "delta": row.qty, "reason": "write_off", "note": row.description});
            b.push_as(
                entity,
                ("uci-demo", "upstream"),
                &format!("writeoff:{invoice}:{i}"),
                at,
                "stock.adjust",
                data,
            );
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
    let entity = entity_of(&row.country);
    let mut push = |identity: String, kind: &str, data: serde_json::Value| {
        b.push_as(entity, ("uci-demo", "upstream"), &identity, at, kind, data);
    };
    let order_lines: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, (code, qty, price))| json!({"line": first_line + i + 1, "sku": code, "qty": qty, "unit_price": price_in(entity, *price, at)}))
        .collect();
    let numbered: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, (_, qty, _))| json!({"line": first_line + i + 1, "qty": qty}))
        .collect();
    push(
        format!("order:{id}"),
        "order.place",
        json!({"order": id, "channel": "web", "ship_to_region": row.country, "lines": order_lines,
            "promise_date": promise_date(entity, at)}),
    );
    // The warehouse's pace (drawn from the order id, so every run draws the same): released
    // within the hour, picked and packed, and shipped 2-30 hours after placement; about 3
    // orders in 100 wait 3-5 days (past the 2-day unshipped rule).
    let draw = Uuid::new_v5(&NAMESPACE, format!("pace:{id}").as_bytes()).as_u128();
    let pick_n = |shift: u32, n: u128| ((draw >> shift) % n) as i64;
    let minutes = chrono::Duration::minutes;
    let released = at + minutes(5 + pick_n(0, 50));
    let ship_hours = if pick_n(8, 100) < 3 {
        72 + pick_n(16, 49)
    } else {
        2 + pick_n(16, 29)
    };
    let shipped = at + chrono::Duration::hours(ship_hours) + minutes(pick_n(24, 60));
    let picked = released + (shipped - released) / 2;
    b.later(
        entity,
        format!("release:{id}"),
        released,
        "order.release_to_pick",
        json!({"order": id, "wave": released.format("W%Y%m%d").to_string()}),
    );
    b.later(
        entity,
        format!("pick:{id}"),
        picked,
        "order.pick",
        json!({"order": id, "lines": numbered}),
    );
    b.later(
        entity,
        format!("pack:{id}"),
        shipped - minutes(10),
        "order.pack",
        json!({"order": id, "package": format!("{id}-1"), "lines": numbered}),
    );
    b.later(
        entity,
        format!("ship:{id}"),
        shipped,
        "order.ship",
        json!({"order": id, "package": format!("{id}-1"), "carrier": "Royal Mail", "tracking": format!("RM{id}GB"), "freight_cost": price_in(entity, Decimal::new(495, 2), at)}),
    );
    after_sale(b, entity, id, lines, first_line, shipped);
}

/// The delivery date promised at checkout: 3 days in the UK, 5 in the euro area.
fn promise_date(entity: &Entity, placed: NaiveDateTime) -> String {
    let days = if entity.id == UK.id { 3 } else { 5 };
    (placed.date() + chrono::Duration::days(days))
        .format("%Y-%m-%d")
        .to_string()
}

/// Why the demo's customers send goods back, drawn in turn.
const RETURN_REASONS: [&str; 8] = [
    "Colour",
    "Defective",
    "NotAsDescribed",
    "SizeTooLarge",
    "SizeTooSmall",
    "Style",
    "Unwanted",
    "WrongItem",
];

/// Delivery, and sometimes a return, of a shipped order (see the module's notes).
fn after_sale(
    b: &mut Builder,
    entity: &'static Entity,
    id: &str,
    lines: &[(&str, i64, Decimal)],
    first_line: usize,
    shipped: NaiveDateTime,
) {
    let draw = Uuid::new_v5(&NAMESPACE, format!("after:{id}").as_bytes()).as_u128();
    let pick = |shift: u32, n: u128| ((draw >> shift) % n) as i64;
    let transit_days = if pick(0, 100) < 4 {
        7 + pick(8, 4)
    } else if entity.id == UK.id {
        1 + pick(8, 2)
    } else {
        2 + pick(8, 3)
    };
    let delivered = shipped
        + chrono::Duration::days(transit_days)
        + chrono::Duration::minutes(pick(16, 8 * 60));
    let package = format!("{id}-1");
    b.later(
        entity,
        format!("deliver:{id}"),
        delivered,
        "order.confirm_delivery",
        json!({"order": id, "package": package, "proof": format!("POD {id}")}),
    );
    // Lot-kept items are not taken back (as food is not).
    let goods = lines.iter().enumerate().find(|(_, (code, _, price))| {
        code.starts_with(|c: char| c.is_ascii_digit())
            && *price > Decimal::ZERO
            && !b.lot_kept.contains(*code)
    });
    let Some((i, (code, _, price))) = goods else {
        return;
    };
    if pick(32, 100) >= 3 {
        return;
    }
    let line = first_line + i + 1;
    let reason = RETURN_REASONS[pick(40, RETURN_REASONS.len() as u128) as usize];
    let return_id = format!("RMA-{id}");
    let authorised = delivered + chrono::Duration::days(2 + pick(48, 9));
    let received = authorised + chrono::Duration::days(3);
    let inspected = received + chrono::Duration::days(1 + pick(56, 6));
    let disposition = if reason == "Defective" {
        "Scrap"
    } else {
        "Restock"
    };
    b.later(
        entity,
        format!("return:{id}"),
        authorised,
        "order.authorise_return",
        json!({"order": id, "return_id": return_id, "lines": [{"line": line, "qty": 1}], "reason": reason}),
    );
    b.later(
        entity,
        format!("return-receive:{id}"),
        received,
        "stock.receive_return",
        json!({"sku": code, "return_id": return_id, "order": id, "line": line, "location": entity.location, "qty": 1}),
    );
    b.later(
        entity,
        format!("return-inspect:{id}"),
        inspected,
        "stock.disposition_return",
        json!({"sku": code, "return_id": return_id, "qty": 1, "disposition": disposition}),
    );
    b.later(
        entity,
        format!("refund:{id}"),
        inspected + chrono::Duration::minutes(30),
        "order.refund",
        json!({"order": id, "return_id": return_id, "amount": price_in(entity, *price, shipped)}),
    );
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

#[cfg(test)]
mod entity_tests {
    use super::*;

    #[test]
    fn the_demo_keeps_each_entitys_stock_and_sales_apart() {
        // Goal: with two entities, every command of the first 20 trading days is decided as
        // it was with one: the EU01 orders are filled from EU-DC's own receipts, nothing is
        // refused for using the other entity's location.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(DATASET);
        let (commands, _) = uci_commands(&path, Some(20)).unwrap();
        let mut world = crate::decide_tests::World::new();
        let mut refused: BTreeMap<String, usize> = BTreeMap::new();
        let mut eu_orders = 0;
        for c in &commands {
            match world.act(c) {
                Ok(_) => {
                    if c.legal_entity.as_str() == "EU01" && c.body.type_name() == "order.place" {
                        eu_orders += 1;
                    }
                }
                Err(r) => *refused.entry(r.code.to_string()).or_default() += 1,
            }
        }
        assert!(eu_orders > 50, "{eu_orders} EU01 orders");
        assert_eq!(refused.get("other_entity"), None, "{refused:?}");
        assert_eq!(refused.get("unknown_legal_entity"), None, "{refused:?}");
        eprintln!("{eu_orders} EU01 orders; refused: {refused:?}");
    }
}
