//! Operations KPIs by day, ISO week and month, for the whole business and per legal entity,
//! channel, location and supplier where a figure applies. Definitions: docs/VIEWS.md.
//!
//! Keys: `kpi.<period>.<dimension>.<value>`: period `2011-11` (month), `2011-W44` (ISO week)
//! or `2011-11-03` (day); dimension `all` (value `-`), `entity`, `channel`, `location` or
//! `supplier`. Each fact counts in the period of its own business time: an order's placement
//! figures (first-time fill, backorders) in its placement period, its delivery figures
//! (on time, in full, perfect, cycle time) in the period it was completed (its last unit
//! shipped or cancelled), shipped and returned units in theirs, receipts in theirs. A later
//! fact that changes an earlier judgement (a delivery confirmation after the order was
//! completed, a return for a defect) corrects the row of the period that judged it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Datelike;
use ledger::events::{Event, ReturnReason};
use ledger::values::{Date, Timestamp};
use ledger::{RecordedEvent, Subject};
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::key::{self, KeyShape};
use crate::view::{Answer, Model, QueryError, View};

/// The counts behind one period × dimension's KPIs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KpiRow {
    pub period: String,
    pub dimension: String,
    pub value: String,
    // Placement.
    pub orders_placed: i64,
    pub lines_placed: i64,
    pub units_ordered: i64,
    /// Allocated in full by the placing command itself.
    pub orders_filled_first_time: i64,
    pub lines_filled_first_time: i64,
    pub units_filled_first_time: i64,
    /// Lines with units backordered by the placing command.
    pub lines_backordered: i64,
    // Completion.
    pub orders_completed: i64,
    /// Completed with every unit shipped (none cancelled).
    pub orders_in_full: i64,
    /// Completed orders that carry a promise date (the on-time denominator).
    pub orders_promised: i64,
    /// Delivered (or, with no confirmation, shipped) by the end of the promise date.
    pub orders_on_time: i64,
    pub orders_on_time_in_full: i64,
    /// On time, in full, and not returned as defective, wrong or not as described.
    pub orders_perfect: i64,
    /// Placed to last shipment, in whole hours -> orders.
    pub cycle_hours: BTreeMap<u32, i64>,
    // Movement.
    pub units_shipped: i64,
    pub units_returned: i64,
    /// Units returned by reason (`Defective`, ...; `Unknown` before reasons were recorded).
    pub returned_by_reason: BTreeMap<String, i64>,
    /// Value of returned units at the order's prices, by reason.
    #[schemars(with = "BTreeMap<String, String>")]
    pub returned_value_by_reason: BTreeMap<String, Decimal>,
    /// Value of returned units put back into stock (restocked), by reason.
    #[schemars(with = "BTreeMap<String, String>")]
    pub recovered_value_by_reason: BTreeMap<String, Decimal>,
    // Supply.
    pub units_received: i64,
    /// Received on or before the purchase order's expected date.
    pub units_received_on_time: i64,
    /// Receipts against purchase orders, and their lead times in days (order to receipt).
    pub receipts: i64,
    pub lead_time_days_sum: i64,
    pub lead_time_days_sq_sum: i64,
    // Inventory and money (from the books; by currency): cost of goods sold and net sales
    // (all, entity, channel, location where a posting names one), inventory at cost at the
    // period's open and close (all, entity, location).
    #[schemars(with = "BTreeMap<String, String>")]
    pub cogs: BTreeMap<String, Decimal>,
    #[schemars(with = "BTreeMap<String, String>")]
    pub net_sales: BTreeMap<String, Decimal>,
    #[schemars(with = "BTreeMap<String, String>")]
    pub inventory_value_open: BTreeMap<String, Decimal>,
    #[schemars(with = "BTreeMap<String, String>")]
    pub inventory_value_close: BTreeMap<String, Decimal>,
    pub units_on_hand_open: i64,
    pub units_on_hand_close: i64,
    /// Units received into stock (every receipt, with or without a purchase order).
    pub units_into_stock: i64,
    /// At the close of a month: units on hand by days since they arrived (first in, first
    /// out), `0-30`, `31-60`, `61-90`, `91-180`, `181+`, with their value at the location's
    /// unit cost.
    pub aging: BTreeMap<String, AgingBucket>,
    /// The ledger sequence of the last event that changed this row.
    pub seq: u64,
}

/// Units of one age bucket and their value by currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AgingBucket {
    pub units: i64,
    #[schemars(with = "BTreeMap<String, String>")]
    pub value: BTreeMap<String, Decimal>,
}

/// The age buckets, by their least age in days.
const AGING_BUCKETS: [(i64, &str); 5] = [
    (0, "0-30"),
    (31, "31-60"),
    (61, "61-90"),
    (91, "91-180"),
    (181, "181+"),
];

/// Days in the period a token names.
fn period_days(period: &str) -> i64 {
    match granularity_of(period) {
        Some(Granularity::Day) => 1,
        Some(Granularity::Week) => 7,
        Some(Granularity::Month) => {
            let first = chrono::NaiveDate::parse_from_str(&format!("{period}-01"), "%Y-%m-%d")
                .expect("a month token");
            let next = first
                .checked_add_months(chrono::Months::new(1))
                .expect("a month later");
            (next - first).num_days()
        }
        None => 1,
    }
}

/// `n / d` by currency, for the currencies where `d` is not zero.
fn ratio_by_currency(
    n: &BTreeMap<String, Decimal>,
    d: &BTreeMap<String, Decimal>,
) -> BTreeMap<String, String> {
    d.iter()
        .filter(|(_, d)| !d.is_zero())
        .map(|(c, d)| {
            let n = n.get(c).copied().unwrap_or_default();
            (c.clone(), (n / d).round_dp(4).normalize().to_string())
        })
        .collect()
}

fn ratio(n: i64, d: i64) -> Option<String> {
    (d > 0).then(|| {
        (Decimal::from(n) / Decimal::from(d))
            .round_dp(4)
            .normalize()
            .to_string()
    })
}

/// The smallest whole hour by which `share` of the orders had shipped.
fn percentile(hist: &BTreeMap<u32, i64>, share: Decimal) -> Option<u32> {
    let total: i64 = hist.values().sum();
    if total == 0 {
        return None;
    }
    let rank = (Decimal::from(total) * share).ceil();
    let mut seen = 0;
    for (hours, n) in hist {
        seen += n;
        if Decimal::from(seen) >= rank {
            return Some(*hours);
        }
    }
    hist.keys().last().copied()
}

impl KpiRow {
    /// The KPIs these counts give (docs/VIEWS.md).
    pub fn rates(&self) -> serde_json::Value {
        let currencies: BTreeSet<&String> = self
            .inventory_value_open
            .keys()
            .chain(self.inventory_value_close.keys())
            .chain(self.cogs.keys())
            .chain(self.net_sales.keys())
            .collect();
        let get = |m: &BTreeMap<String, Decimal>, c: &String| m.get(c).copied().unwrap_or_default();
        let average: BTreeMap<String, Decimal> = currencies
            .iter()
            .map(|c| {
                let avg = (get(&self.inventory_value_open, c)
                    + get(&self.inventory_value_close, c))
                    / Decimal::TWO;
                ((*c).clone(), avg)
            })
            .collect();
        let days = Decimal::from(period_days(&self.period));
        let cogs_per_day: BTreeMap<String, Decimal> = self
            .cogs
            .iter()
            .map(|(c, v)| (c.clone(), *v / days))
            .collect();
        // Only where the row has sales (locations have none: sales post no location).
        let gross_margin: BTreeMap<String, Decimal> = self
            .net_sales
            .iter()
            .map(|(c, sales)| (c.clone(), sales - get(&self.cogs, c)))
            .collect();
        let average_with_sales: BTreeMap<String, Decimal> = average
            .iter()
            .filter(|(c, _)| self.net_sales.contains_key(*c))
            .map(|(c, v)| (c.clone(), *v))
            .collect();
        let lead = (self.receipts > 0).then(|| {
            let n = Decimal::from(self.receipts);
            let mean = Decimal::from(self.lead_time_days_sum) / n;
            let var = (Decimal::from(self.lead_time_days_sq_sum) / n - mean * mean)
                .max(Decimal::ZERO);
            let sd = var
                .to_string()
                .parse::<f64>()
                .map(f64::sqrt)
                .unwrap_or(0.0);
            json!({"mean_days": mean.round_dp(2).normalize().to_string(), "std_dev_days": format!("{sd:.2}")})
        });
        let by_reason: BTreeMap<&String, Option<String>> = self
            .returned_by_reason
            .keys()
            .map(|r| {
                let returned = self
                    .returned_value_by_reason
                    .get(r)
                    .copied()
                    .unwrap_or_default();
                let recovered = self
                    .recovered_value_by_reason
                    .get(r)
                    .copied()
                    .unwrap_or_default();
                let rate = (returned > Decimal::ZERO)
                    .then(|| (recovered / returned).round_dp(4).normalize().to_string());
                (r, rate)
            })
            .collect();
        json!({
            "fill_rate_first_time": {
                "units": ratio(self.units_filled_first_time, self.units_ordered),
                "lines": ratio(self.lines_filled_first_time, self.lines_placed),
                "orders": ratio(self.orders_filled_first_time, self.orders_placed),
            },
            "backorder_rate_lines": ratio(self.lines_backordered, self.lines_placed),
            "in_full": ratio(self.orders_in_full, self.orders_completed),
            "on_time": ratio(self.orders_on_time, self.orders_promised),
            "otif": ratio(self.orders_on_time_in_full, self.orders_promised),
            "perfect_order": ratio(self.orders_perfect, self.orders_promised),
            "cycle_time_hours": {
                "p50": percentile(&self.cycle_hours, Decimal::new(5, 1)),
                "p90": percentile(&self.cycle_hours, Decimal::new(9, 1)),
            },
            "return_rate_units": ratio(self.units_returned, self.units_shipped),
            "recovery_rate_by_reason": by_reason,
            "supplier_on_time_units": ratio(self.units_received_on_time, self.units_received),
            "lead_time": lead,
            "inventory_turns": ratio_by_currency(&self.cogs, &average),
            "days_of_supply": ratio_by_currency(&self.inventory_value_close, &cogs_per_day),
            "gmroi": ratio_by_currency(&gross_margin, &average_with_sales),
            "sell_through_units": ratio(
                self.units_shipped,
                self.units_on_hand_open + self.units_into_stock
            ),
        })
    }
}

/// What the view remembers of an order to judge it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OrderFacts {
    placed_at: Option<Timestamp>,
    placing_command: String,
    entity: String,
    channel: String,
    promise: Option<Date>,
    /// Line -> (ordered, allocated by the placing command, backordered by it, shipped,
    /// cancelled, unit price).
    lines: BTreeMap<u32, (i64, i64, i64, i64, i64, Decimal)>,
    /// Package -> (shipped at, delivered at).
    packages: BTreeMap<String, (Timestamp, Option<Timestamp>)>,
    /// When completed, the periods that judged it and how.
    judged: Option<Judged>,
    /// Returned as defective, wrong or not as described.
    faulty_return: bool,
    /// Return id -> reason name.
    returns: BTreeMap<String, String>,
    /// SKU -> its first line.
    skus: BTreeMap<String, u32>,
    /// The first-time figures counted so far in the placement rows: lines filled, units
    /// filled, lines backordered, order filled.
    first_time_counted: (i64, i64, i64, i64),
    /// Lines another line took the place of (`order.lines_added` with `replaces`): their
    /// cancelled units were changed by the customer, not lost, so they do not spoil in full.
    #[serde(default)]
    replaced: BTreeSet<u32>,
}

/// An order line's facts as ordered (at placement or added later): nothing allocated,
/// backordered, shipped or cancelled yet.
fn ordered(l: &ledger::events::OrderLine) -> (i64, i64, i64, i64, i64, Decimal) {
    (l.qty.get(), 0, 0, 0, 0, l.unit_price.amount)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Judged {
    completed_at: Timestamp,
    in_full: bool,
    on_time: Option<bool>,
    perfect: Option<bool>,
}

impl OrderFacts {
    fn open_units(&self) -> i64 {
        self.lines.values().map(|l| l.0 - l.3 - l.4).sum()
    }

    /// Delivered (or shipped, without confirmation) by the end of the promise date.
    fn on_time(&self) -> Option<bool> {
        let promise = self.promise?;
        let deadline = Timestamp::new(
            (promise.get() + chrono::Duration::days(1))
                .and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc(),
        );
        let last = self
            .packages
            .values()
            .map(|(shipped, delivered)| delivered.unwrap_or(*shipped))
            .max();
        Some(last.is_none_or(|t| t < deadline))
    }

    fn judge(&self, completed_at: Timestamp) -> Judged {
        let in_full = self
            .lines
            .iter()
            .all(|(n, l)| l.4 == 0 || self.replaced.contains(n));
        let on_time = self.on_time();
        Judged {
            completed_at,
            in_full,
            on_time,
            perfect: on_time.map(|t| t && in_full && !self.faulty_return),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kpis {
    rows: BTreeMap<String, KpiRow>,
    orders: BTreeMap<String, OrderFacts>,
    /// Return id -> order id.
    return_orders: BTreeMap<String, String>,
    /// Purchase order -> (entity, supplier, created at, expected on).
    purchases: BTreeMap<String, (String, String, Timestamp, Date)>,
    /// Purchase order -> line -> (location, received so far).
    purchase_lines: BTreeMap<String, BTreeMap<u32, (String, i64)>>,
    location_entity: BTreeMap<String, String>,
    /// The postings behind cost of goods sold, net sales and inventory value.
    books: crate::books::Books,
    /// Their translation into each entity's functional currency.
    translator: crate::translate::Translator,
    /// Each series (`<granularity>|<dimension>|<value>`) and the periods it has rows for, to
    /// carry inventory balances from one period to the next.
    series: BTreeMap<String, BTreeSet<String>>,
    /// SKU × location (`crate::key`) -> units on hand by arrival day, oldest first.
    arrivals: BTreeMap<String, std::collections::VecDeque<(Date, i64)>>,
    /// The latest effective time applied.
    clock: Option<Timestamp>,
}

fn series_key(period: &str, dim: &str, value: &str) -> String {
    // The tokens come from `periods`, so their shape tells the granularity (no date parsing
    // on every movement).
    let granularity = if period.contains("-W") {
        "week"
    } else if period.len() == 10 {
        "day"
    } else {
        "month"
    };
    format!("{granularity}|{}", key::key("s", &[dim, value]))
}

/// The period tokens `at` falls in: day, ISO week, month.
pub fn periods(at: Timestamp) -> [String; 3] {
    let d = at.as_datetime().date_naive();
    let week = d.iso_week();
    [
        d.format("%Y-%m-%d").to_string(),
        format!("{}-W{:02}", week.year(), week.week()),
        d.format("%Y-%m").to_string(),
    ]
}

fn reason_name(reason: &Option<ReturnReason>) -> String {
    match reason {
        Some(r) => format!("{r:?}"),
        None => "Unknown".into(),
    }
}

impl Kpis {
    /// Applies `f` to the rows of every period of `at` for each of `dims`.
    fn each(
        &mut self,
        at: Timestamp,
        dims: &[(String, String)],
        seq: u64,
        changed: &mut BTreeSet<String>,
        f: impl Fn(&mut KpiRow),
    ) {
        for period in periods(at) {
            let all = [("all".to_owned(), "-".to_owned())];
            for (dim, value) in all.iter().chain(dims) {
                let k = self.ensure_row(&period, dim, value);
                let row = self.rows.get_mut(&k).expect("ensured");
                f(row);
                row.seq = seq;
                changed.insert(k);
            }
        }
    }

    /// The key of the row of `period` × `dim` × `value`, made if it is new: its inventory
    /// opens (and, until something changes it, closes) where the series' previous period
    /// closed.
    fn ensure_row(&mut self, period: &str, dim: &str, value: &str) -> String {
        let k = key::key("kpi", &[period, dim, value]);
        if !self.rows.contains_key(&k) {
            let series = self
                .series
                .entry(series_key(period, dim, value))
                .or_default();
            let before = series
                .range(..period.to_owned())
                .next_back()
                .map(|p| key::key("kpi", &[p.as_str(), dim, value]));
            series.insert(period.to_owned());
            let (value_open, units_open) = before
                .and_then(|b| self.rows.get(&b))
                .map(|r| (r.inventory_value_close.clone(), r.units_on_hand_close))
                .unwrap_or_default();
            self.rows.insert(
                k.clone(),
                KpiRow {
                    period: period.to_owned(),
                    dimension: dim.to_owned(),
                    value: value.to_owned(),
                    inventory_value_open: value_open.clone(),
                    inventory_value_close: value_open,
                    units_on_hand_open: units_open,
                    units_on_hand_close: units_open,
                    ..KpiRow::default()
                },
            );
        }
        k
    }

    /// Inventory changes by `value` (in `currency`, if any) and `units`, at `at`: the
    /// rows of its periods close higher, and rows of later periods (a movement dated back)
    /// open and close higher.
    #[allow(clippy::too_many_arguments)]
    fn inventory_change(
        &mut self,
        at: Timestamp,
        dims: &[(String, String)],
        value: Option<(&str, Decimal)>,
        units: i64,
        seq: u64,
        changed: &mut BTreeSet<String>,
    ) {
        let all = [("all".to_owned(), "-".to_owned())];
        for period in periods(at) {
            for (dim, v) in all.iter().chain(dims) {
                self.ensure_row(&period, dim, v);
                let later: Vec<String> = self.series[&series_key(&period, dim, v)]
                    .range(period.clone()..)
                    .cloned()
                    .collect();
                for p in later {
                    let k = key::key("kpi", &[p.as_str(), dim, v]);
                    let row = self.rows.get_mut(&k).expect("a series' rows exist");
                    if p != period {
                        row.units_on_hand_open += units;
                        if let Some((c, x)) = value {
                            *row.inventory_value_open.entry(c.to_owned()).or_default() += x;
                        }
                    }
                    row.units_on_hand_close += units;
                    if let Some((c, x)) = value {
                        *row.inventory_value_close.entry(c.to_owned()).or_default() += x;
                    }
                    row.seq = seq;
                    changed.insert(k);
                }
            }
        }
    }

    /// Money and stock figures from the books and the stock movements of one event.
    fn inventory(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        use crate::books::Account;
        let env = &event.envelope;
        let (at, seq) = (env.effective_at, event.seq);
        self.translator.observe(event);
        let lines = self.books.post(event).lines;
        // Each line in its entity's functional currency (as the finance view translates
        // it); in its own where the entity has no rate for it yet.
        let mut functional: Vec<(String, Decimal)> = lines
            .iter()
            .map(|l| (l.currency.clone(), l.amount))
            .collect();
        for t in self.translator.translate(event, &lines) {
            if let crate::translate::Translation::Done {
                currency, lines: f, ..
            } = t
            {
                for f in f {
                    if let Some(i) = f.line {
                        functional[i] = (currency.clone(), f.amount);
                    }
                }
            }
        }
        for (mut line, (currency, amount)) in lines.into_iter().zip(functional) {
            (line.currency, line.amount) = (currency, amount);
            let mut dims = vec![("entity".to_owned(), line.entity.clone())];
            match line.account {
                Account::Inventory => {
                    if let Some(l) = &line.location {
                        dims.push(("location".into(), l.clone()));
                    }
                    self.inventory_change(
                        at,
                        &dims,
                        Some((&line.currency, line.amount)),
                        0,
                        seq,
                        changed,
                    );
                }
                Account::Cogs | Account::Revenue | Account::Discounts | Account::SalesReturns => {
                    if let Some(c) = &line.channel {
                        dims.push(("channel".into(), c.clone()));
                    }
                    if line.account == Account::Cogs
                        && let Some(l) = &line.location
                    {
                        dims.push(("location".into(), l.clone()));
                    }
                    let (currency, amount) = (line.currency.clone(), line.amount);
                    let cogs = line.account == Account::Cogs;
                    self.each(at, &dims, seq, changed, |r| {
                        let to = if cogs { &mut r.cogs } else { &mut r.net_sales };
                        // Cost is a debit; sales are credits.
                        *to.entry(currency.clone()).or_default() +=
                            if cogs { amount } else { -amount };
                    });
                }
                _ => {}
            }
        }
        let Subject::Stock(sku) = &env.subject else {
            return;
        };
        for d in ledger::effects::stock_deltas(&env.event) {
            if d.on_hand == 0 {
                continue;
            }
            let location = d.location.to_string();
            let mut dims = vec![("location".to_owned(), location.clone())];
            if let Some(entity) = self.location_entity.get(&location) {
                dims.push(("entity".into(), entity.clone()));
            }
            self.inventory_change(at, &dims, None, d.on_hand, seq, changed);
            if let Event::StockReceived(_) = &env.event {
                let n = d.on_hand;
                self.each(at, &dims, seq, changed, |r| r.units_into_stock += n);
            }
            let queue = self
                .arrivals
                .entry(key::key("s", &[sku.as_str(), location.as_str()]))
                .or_default();
            if d.on_hand > 0 {
                let day = Date::new(at.as_datetime().date_naive());
                match queue.back_mut() {
                    Some((last, n)) if *last == day => *n += d.on_hand,
                    _ => queue.push_back((day, d.on_hand)),
                }
            } else {
                let mut out = -d.on_hand;
                while out > 0 {
                    let Some(front) = queue.front_mut() else {
                        break;
                    };
                    let take = out.min(front.1);
                    front.1 -= take;
                    out -= take;
                    if front.1 == 0 {
                        queue.pop_front();
                    }
                }
            }
        }
    }

    /// Stock on hand by age at the end of `month` (the business clock has passed it), into
    /// that month's rows of the whole business, each entity and each location.
    fn close_month(&mut self, month: &str, seq: u64, changed: &mut BTreeSet<String>) {
        let Ok(first) = chrono::NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
        else {
            return;
        };
        let last = first
            .checked_add_months(chrono::Months::new(1))
            .and_then(|d| d.pred_opt())
            .expect("a month's last day");
        let mut buckets: BTreeMap<(String, String), BTreeMap<String, AgingBucket>> =
            BTreeMap::new();
        for (k, queue) in &self.arrivals {
            let Some(parts) = key::parts(k, "s", 2) else {
                continue;
            };
            let (sku, location) = (&parts[0], &parts[1]);
            let entity = self.location_entity.get(location).cloned();
            let date = String::from(Date::new(last));
            // The value of `n` units at the location's unit cost, in the entity's functional
            // currency at the month end's rate (in the cost's own without one).
            let value_of = |n: i64| {
                let e = entity.as_ref()?;
                let v = self.books.valuation(e, sku, location)?;
                let value = v.unit_cost() * Decimal::from(n);
                self.translator
                    .to_functional(e, &v.currency, value, &date)
                    .or(Some((
                        v.currency.clone(),
                        value.round_dp(crate::books::minor_units(&v.currency)),
                    )))
            };
            let mut targets = vec![
                ("all".to_owned(), "-".to_owned()),
                ("location".to_owned(), location.clone()),
            ];
            if let Some(e) = entity.clone() {
                targets.push(("entity".into(), e));
            }
            for (day, n) in queue {
                let age = (last - day.get()).num_days();
                let Some((_, name)) = AGING_BUCKETS.iter().rev().find(|(least, _)| age >= *least)
                else {
                    continue;
                };
                for t in &targets {
                    let b = buckets
                        .entry(t.clone())
                        .or_default()
                        .entry((*name).to_owned())
                        .or_default();
                    b.units += n;
                    if let Some((currency, value)) = value_of(*n) {
                        *b.value.entry(currency).or_default() += value;
                    }
                }
            }
        }
        for ((dim, value), aging) in buckets {
            let k = self.ensure_row(month, &dim, &value);
            let row = self.rows.get_mut(&k).expect("ensured");
            if row.aging != aging {
                row.aging = aging;
                row.seq = seq;
                changed.insert(k);
            }
        }
    }

    fn order_dims(o: &OrderFacts) -> Vec<(String, String)> {
        vec![
            ("entity".into(), o.entity.clone()),
            ("channel".into(), o.channel.clone()),
        ]
    }

    /// Counts the order's completion (or takes back its earlier judgement, `sign` -1).
    fn count_completion(
        &mut self,
        order: &str,
        sign: i64,
        seq: u64,
        changed: &mut BTreeSet<String>,
    ) {
        let Some(o) = self.orders.get(order) else {
            return;
        };
        let Some(j) = o.judged.clone() else { return };
        let dims = Self::order_dims(o);
        let hours = o
            .packages
            .values()
            .map(|(shipped, _)| *shipped)
            .max()
            .zip(o.placed_at)
            .map(|(last, placed)| {
                u32::try_from(
                    (last.as_datetime() - placed.as_datetime())
                        .num_hours()
                        .max(0),
                )
                .unwrap_or(u32::MAX)
            });
        let b = |x: bool| i64::from(x) * sign;
        self.each(j.completed_at, &dims, seq, changed, |r| {
            r.orders_completed += sign;
            r.orders_in_full += b(j.in_full);
            if let Some(on_time) = j.on_time {
                r.orders_promised += sign;
                r.orders_on_time += b(on_time);
                r.orders_on_time_in_full += b(on_time && j.in_full);
                r.orders_perfect += b(j.perfect == Some(true));
            }
            if let Some(h) = hours {
                let entry = r.cycle_hours.entry(h).or_insert(0);
                *entry += sign;
                if *entry == 0 {
                    r.cycle_hours.remove(&h);
                }
            }
        });
    }

    /// Judges the order again after a fact that may change its judgement.
    fn rejudge(&mut self, order: &str, at: Timestamp, seq: u64, changed: &mut BTreeSet<String>) {
        let Some(o) = self.orders.get(order) else {
            return;
        };
        let complete = o.open_units() == 0 && !o.lines.is_empty();
        let now = match (&o.judged, complete) {
            (Some(j), _) => Some(o.judge(j.completed_at)),
            (None, true) => Some(o.judge(at)),
            (None, false) => None,
        };
        if now == o.judged {
            return;
        }
        self.count_completion(order, -1, seq, changed);
        if let Some(o) = self.orders.get_mut(order) {
            o.judged = now;
        }
        self.count_completion(order, 1, seq, changed);
    }
}

impl Model for Kpis {
    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        use Event as E;
        let env = &event.envelope;
        let (at, seq) = (env.effective_at, event.seq);
        let command = env.command_id.to_string();
        // The business clock passes the end of a month: its stock is aged as it stood.
        if let Some(clock) = self.clock
            && at > clock
        {
            let month = |t: Timestamp| {
                let d = t.as_datetime().date_naive();
                (d.year(), d.month())
            };
            if month(clock) != month(at) {
                let was = periods(clock)[2].clone();
                self.close_month(&was, seq, changed);
            }
        }
        if self.clock.is_none_or(|c| at > c) {
            self.clock = Some(at);
        }
        if let E::LocationDefined(e) = &env.event {
            self.location_entity
                .entry(e.location.to_string())
                .or_insert_with(|| env.legal_entity.to_string());
        }
        self.inventory(event, changed);
        match &env.event {
            E::OrderPlaced(e) => {
                let facts = OrderFacts {
                    placed_at: Some(at),
                    placing_command: command,
                    entity: env.legal_entity.to_string(),
                    channel: e.channel.to_string(),
                    promise: e.promise_date,
                    lines: e.lines.iter().map(|l| (l.line, ordered(l))).collect(),
                    skus: e
                        .lines
                        .iter()
                        .rev()
                        .map(|l| (l.sku.to_string(), l.line))
                        .collect(),
                    ..OrderFacts::default()
                };
                let dims = Self::order_dims(&facts);
                let (lines, units) = (
                    e.lines.len() as i64,
                    e.lines.iter().map(|l| l.qty.get()).sum::<i64>(),
                );
                self.each(at, &dims, seq, changed, |r| {
                    r.orders_placed += 1;
                    r.lines_placed += lines;
                    r.units_ordered += units;
                });
                self.orders.insert(e.order.to_string(), facts);
            }
            E::LineAllocated(e) => {
                self.first_time(e.order.as_str(), e.line, e.qty.get(), 0, &command);
                self.placement_done(e.order.as_str(), &command, seq, changed);
            }
            E::LineBackordered(e) => {
                self.first_time(e.order.as_str(), e.line, 0, e.qty.get(), &command);
                self.placement_done(e.order.as_str(), &command, seq, changed);
            }
            E::OrderShipped(e) => {
                if let Some(o) = self.orders.get_mut(e.order.as_str()) {
                    for l in &e.lines {
                        if let Some(line) = o.lines.get_mut(&l.line) {
                            line.3 += l.qty.get();
                        }
                    }
                    o.packages.insert(e.package.to_string(), (at, None));
                }
                self.rejudge(e.order.as_str(), at, seq, changed);
            }
            E::OrderDelivered(e) => {
                if let Some(p) = self
                    .orders
                    .get_mut(e.order.as_str())
                    .and_then(|o| o.packages.get_mut(e.package.as_str()))
                {
                    p.1 = Some(at);
                }
                self.rejudge(e.order.as_str(), at, seq, changed);
            }
            E::LinesAdded(e) => {
                // Part of the order from now on: completion waits for them. Placement figures
                // stay those of the placement.
                if let Some(o) = self.orders.get_mut(e.order.as_str()) {
                    for a in &e.lines {
                        let l = &a.line;
                        o.lines.insert(l.line, ordered(l));
                        o.skus.entry(l.sku.to_string()).or_insert(l.line);
                        o.replaced.extend(a.replaces);
                    }
                }
                self.rejudge(e.order.as_str(), at, seq, changed);
            }
            E::LinesCancelled(e) => {
                if let Some(o) = self.orders.get_mut(e.order.as_str()) {
                    for l in &e.lines {
                        if let Some(line) = o.lines.get_mut(&l.line) {
                            line.4 += l.qty.get();
                        }
                    }
                }
                self.rejudge(e.order.as_str(), at, seq, changed);
            }
            E::StockShipped(e) => {
                let Some(o) = self.orders.get(e.order.as_str()) else {
                    return;
                };
                let mut dims = Self::order_dims(o);
                dims.push(("location".into(), e.location.to_string()));
                let n = e.qty.get();
                self.each(at, &dims, seq, changed, |r| r.units_shipped += n);
            }
            E::ReturnAuthorised(e) => {
                let reason = reason_name(&e.reason);
                let faulty = matches!(
                    e.reason,
                    Some(
                        ReturnReason::Defective
                            | ReturnReason::WrongItem
                            | ReturnReason::NotAsDescribed
                    )
                );
                self.return_orders
                    .insert(e.return_id.to_string(), e.order.to_string());
                let Some(o) = self.orders.get_mut(e.order.as_str()) else {
                    return;
                };
                o.returns.insert(e.return_id.to_string(), reason.clone());
                let (units, value) = e.lines.iter().fold((0, Decimal::ZERO), |(u, v), l| {
                    let price = o.lines.get(&l.line).map_or(Decimal::ZERO, |x| x.5);
                    (u + l.qty.get(), v + price * Decimal::from(l.qty.get()))
                });
                let newly_faulty = faulty && !o.faulty_return;
                let dims = Self::order_dims(o);
                self.each(at, &dims, seq, changed, |r| {
                    r.units_returned += units;
                    *r.returned_by_reason.entry(reason.clone()).or_insert(0) += units;
                    *r.returned_value_by_reason
                        .entry(reason.clone())
                        .or_insert(Decimal::ZERO) += value;
                });
                if newly_faulty {
                    if let Some(o) = self.orders.get_mut(e.order.as_str()) {
                        o.faulty_return = true;
                    }
                    self.rejudge(e.order.as_str(), at, seq, changed);
                }
            }
            E::ReturnDispositioned(e) => {
                if e.disposition != ledger::events::Disposition::Restock {
                    return;
                }
                let Some(order) = self.return_orders.get(e.return_id.as_str()) else {
                    return;
                };
                let Some(o) = self.orders.get(order) else {
                    return;
                };
                let reason = o
                    .returns
                    .get(e.return_id.as_str())
                    .cloned()
                    .unwrap_or_else(|| "Unknown".into());
                // The unit price of the order's line of this SKU.
                let price = o
                    .skus
                    .get(e.sku.as_str())
                    .and_then(|line| o.lines.get(line))
                    .map_or(Decimal::ZERO, |l| l.5);
                let value = price * Decimal::from(e.qty.get());
                let dims = Self::order_dims(o);
                self.each(at, &dims, seq, changed, |r| {
                    *r.recovered_value_by_reason
                        .entry(reason.clone())
                        .or_insert(Decimal::ZERO) += value;
                });
            }
            E::PurchaseOrderCreated(e) => {
                self.purchases.insert(
                    e.purchase_order.to_string(),
                    (
                        env.legal_entity.to_string(),
                        e.supplier.to_string(),
                        at,
                        e.expected_on,
                    ),
                );
                self.purchase_lines.insert(
                    e.purchase_order.to_string(),
                    e.lines
                        .iter()
                        .map(|l| (l.line, (l.location.to_string(), 0)))
                        .collect(),
                );
            }
            E::ReceiptMatched(e) => {
                let po = e.purchase_order.to_string();
                let Some((entity, supplier, created, expected)) = self.purchases.get(&po).cloned()
                else {
                    return;
                };
                let Some((location, before)) = self
                    .purchase_lines
                    .get_mut(&po)
                    .and_then(|l| l.get_mut(&e.line))
                    .map(|l| {
                        let before = l.1;
                        l.1 = e.qty_received.get();
                        (l.0.clone(), before)
                    })
                else {
                    return;
                };
                let n = (e.qty_received.get() - before).max(0);
                let on_time = at.as_datetime().date_naive() <= expected.get();
                let days = (at.as_datetime() - created.as_datetime()).num_days().max(0);
                let dims = [
                    ("entity".to_owned(), entity),
                    ("supplier".to_owned(), supplier),
                    ("location".to_owned(), location),
                ];
                self.each(at, &dims, seq, changed, |r| {
                    r.units_received += n;
                    r.units_received_on_time += if on_time { n } else { 0 };
                    r.receipts += 1;
                    r.lead_time_days_sum += days;
                    r.lead_time_days_sq_sum += days * days;
                });
            }
            _ => {}
        }
    }

    fn value(&self, key: &str) -> Option<serde_json::Value> {
        self.rows.get(key).map(|r| {
            let mut v = serde_json::to_value(r).expect("rows serialise");
            v["kpis"] = r.rates();
            v
        })
    }
}

impl Kpis {
    /// Notes what the placing command allocated or backordered on a line.
    fn first_time(
        &mut self,
        order: &str,
        line: u32,
        allocated: i64,
        backordered: i64,
        command: &str,
    ) {
        if let Some(o) = self.orders.get_mut(order)
            && o.placing_command == command
            && let Some(l) = o.lines.get_mut(&line)
        {
            l.1 += allocated;
            l.2 += backordered;
        }
    }

    /// Brings the order's first-time figures in its placement rows up to date (the placing
    /// command's allocations arrive line by line after the placement).
    fn placement_done(
        &mut self,
        order: &str,
        command: &str,
        seq: u64,
        changed: &mut BTreeSet<String>,
    ) {
        let Some(o) = self.orders.get(order) else {
            return;
        };
        let Some(placed) = o.placed_at.filter(|_| o.placing_command == command) else {
            return;
        };
        let now = (
            o.lines.values().filter(|l| l.1 >= l.0).count() as i64,
            o.lines.values().map(|l| l.1.min(l.0)).sum::<i64>(),
            o.lines.values().filter(|l| l.2 > 0).count() as i64,
            i64::from(o.lines.values().all(|l| l.1 >= l.0)),
        );
        let was = o.first_time_counted;
        if now == was {
            return;
        }
        let dims = Self::order_dims(o);
        self.each(placed, &dims, seq, changed, |r| {
            r.lines_filled_first_time += now.0 - was.0;
            r.units_filled_first_time += now.1 - was.1;
            r.lines_backordered += now.2 - was.2;
            r.orders_filled_first_time += now.3 - was.3;
        });
        if let Some(o) = self.orders.get_mut(order) {
            o.first_time_counted = now;
        }
    }

    /// Every row, by key.
    pub fn rows(&self) -> &BTreeMap<String, KpiRow> {
        &self.rows
    }
}

/// Queries of `view.kpis.<op>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum KpisQuery {
    /// One period's KPIs (`2011-11`, `2011-W44` or `2011-11-03`): the whole business and
    /// every entity, channel, location and supplier with figures in it, or one `dimension`
    /// (`all`, `entity`, `channel`, `location`, `supplier`), or one `value` of it.
    Period {
        period: String,
        #[serde(default)]
        dimension: Option<String>,
        #[serde(default)]
        value: Option<String>,
    },
    /// The periods of a granularity (`day`, `week`, `month`) that have figures, in order.
    Periods { granularity: Granularity },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Day,
    Week,
    Month,
}

const DIMENSIONS: [&str; 5] = ["all", "entity", "channel", "location", "supplier"];

/// The granularity of a period token that names a real month, ISO week or day.
fn granularity_of(period: &str) -> Option<Granularity> {
    use chrono::NaiveDate;
    if period.len() == 7 && NaiveDate::parse_from_str(&format!("{period}-01"), "%Y-%m-%d").is_ok() {
        return Some(Granularity::Month);
    }
    if period.len() == 10 && NaiveDate::parse_from_str(period, "%Y-%m-%d").is_ok() {
        return Some(Granularity::Day);
    }
    let (year, week) = period.split_once("-W")?;
    let (year, week) = (year.parse::<i32>().ok()?, week.parse::<u32>().ok()?);
    (week.to_string().len() <= 2 && period.len() == 8)
        .then(|| NaiveDate::from_isoywd_opt(year, week, chrono::Weekday::Mon))
        .flatten()
        .map(|_| Granularity::Week)
}

impl View for Kpis {
    const NAME: &'static str = "kpis";
    const VERSION: u32 = 3;
    const KEYS: &'static [KeyShape] = &[KeyShape {
        kind: "kpi",
        parts: &["period", "dimension", "value"],
        row: "KpiRow: the counts of a period x dimension, with the KPIs they give under `kpis`",
    }];
    type Row = KpiRow;
    type Query = KpisQuery;

    fn keys(&self) -> Box<dyn Iterator<Item = String> + '_> {
        Box::new(self.rows.keys().cloned())
    }

    fn answer(&self, query: &KpisQuery) -> Result<Answer, QueryError> {
        match query {
            KpisQuery::Period {
                period,
                dimension,
                value,
            } => {
                if granularity_of(period).is_none() {
                    return Err(QueryError::bad_query(format!(
                        "period: `{period}`; expected a month (2011-11), an ISO week (2011-W44) or a day (2011-11-03)"
                    )));
                }
                if let Some(d) = dimension
                    && !DIMENSIONS.contains(&d.as_str())
                {
                    return Err(QueryError::bad_query(format!(
                        "dimension: `{d}`; expected one of {}",
                        DIMENSIONS.join(", ")
                    )));
                }
                let prefix = match dimension {
                    Some(d) => key::prefix("kpi", &[period.as_str(), d.as_str()]),
                    None => key::prefix("kpi", &[period.as_str()]),
                };
                let rows: Vec<serde_json::Value> = self
                    .rows
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(_, r)| value.as_ref().is_none_or(|v| *v == r.value))
                    .filter_map(|(k, _)| self.value(k))
                    .collect();
                if rows.is_empty() {
                    return Err(QueryError::not_found(format!(
                        "no figures for {period}{}",
                        match (dimension, value) {
                            (Some(d), Some(v)) => format!(" {d} {v}"),
                            (Some(d), None) => format!(" by {d}"),
                            _ => String::new(),
                        }
                    )));
                }
                Ok(Answer::Value(json!({"period": period, "rows": rows})))
            }
            KpisQuery::Periods { granularity } => {
                let periods: BTreeSet<&str> = self
                    .rows
                    .values()
                    .filter(|r| r.dimension == "all")
                    .map(|r| r.period.as_str())
                    .filter(|p| granularity_of(p) == Some(*granularity))
                    .collect();
                Ok(Answer::Value(json!({"periods": periods})))
            }
        }
    }
}
