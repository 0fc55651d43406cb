//! Available to sell, per SKU × location and per SKU × channel.
//!
//! Keys: `loc.<sku>.<location>` and `chan.<sku>.<channel>` (tokens escaped as subjects are).
//! `available = on_hand - allocated - reserved - quality_hold - safety_stock`; `inbound` is
//! what approved, open purchase orders still bring, by expected date. A channel's
//! available to sell is the SKU's available over all locations, less what other channels have
//! ring-fenced, capped by the channel's share, the same rule the deciders apply.

use std::collections::{BTreeMap, BTreeSet};

use ledger::events::{ChannelAllocationRule, Event};
use ledger::subject::escape_token;
use ledger::{RecordedEvent, Subject};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::key::{self, KeyShape};
use crate::view::{Answer, Model, QueryError, Read, ReadSource, TimeRange, View, page, page_limit};

/// The figures of one SKU at one location.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AtsRow {
    pub sku: String,
    pub location: String,
    pub on_hand: i64,
    pub allocated: i64,
    pub reserved: i64,
    pub quality_hold: i64,
    pub in_transit: i64,
    /// Ordered on approved, open purchase orders and not yet received.
    pub inbound: i64,
    /// The same by expected date (`YYYY-MM-DD` -> units).
    #[serde(default)]
    pub inbound_by_date: BTreeMap<String, i64>,
    pub safety_stock: i64,
    /// Shelf units (not held) in lots past their expiry date, by the latest business date
    /// the ledger holds: they may not be sold (items that track lots or expiry).
    #[serde(default)]
    pub expired: i64,
    pub available: i64,
    /// The lots here, by id (items that track lots or expiry, and any lot a stock event names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lots: BTreeMap<String, LotFigures>,
    /// The ledger sequence of the last event that changed this row.
    pub seq: u64,
}

/// One lot's figures at a location.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LotFigures {
    /// `YYYY-MM-DD`: the last day its units may be sold.
    pub expires_on: Option<String>,
    /// On the shelf: received, not yet picked, moved away, scrapped or counted out.
    pub units: i64,
    /// Of those, in quality hold.
    pub held: i64,
}

impl LotFigures {
    fn free(&self) -> i64 {
        (self.units - self.held).max(0)
    }

    /// Whether it expires before `day` (its units may not be sold on `day`).
    fn before(&self, day: &str) -> bool {
        self.expires_on.as_deref().is_some_and(|e| e < day)
    }
}

impl AtsRow {
    fn recompute(&mut self) {
        self.available = self.on_hand
            - self.allocated
            - self.reserved
            - self.quality_hold
            - self.safety_stock
            - self.expired;
    }

    /// Sets `expired` from the lots, as of `today` (`YYYY-MM-DD`), then `available`.
    fn expire(&mut self, today: Option<&str>, by_lot: bool) {
        self.expired = match (today, by_lot) {
            (Some(today), true) => self
                .lots
                .values()
                .filter(|l| l.before(today))
                .map(LotFigures::free)
                .sum(),
            _ => 0,
        };
        self.recompute();
    }

    /// Free shelf units in lots that are not expired on `today` but expire before
    /// `today + min_days`: what a channel that wants that much shelf life may not have.
    fn short_dated(&self, today: &str, min_days: u32) -> i64 {
        let Some(cutoff) = chrono::NaiveDate::parse_from_str(today, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.checked_add_days(chrono::Days::new(u64::from(min_days))))
            .map(|d| d.to_string())
        else {
            return 0;
        };
        self.lots
            .values()
            .filter(|l| !l.before(today) && l.before(&cutoff))
            .map(LotFigures::free)
            .sum()
    }
    fn free(&self) -> i64 {
        self.on_hand - self.allocated - self.reserved - self.quality_hold
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ats {
    /// By key `loc.<sku>.<location>`.
    rows: BTreeMap<String, AtsRow>,
    /// Safety stock per SKU token.
    safety: BTreeMap<String, i64>,
    /// Channel rules per SKU token, by channel id.
    rules: BTreeMap<String, BTreeMap<String, ChannelAllocationRule>>,
    /// Defined channels (id -> token).
    channels: BTreeMap<String, String>,
    /// SKU token -> SKU id, for SKUs with any row.
    skus: BTreeMap<String, String>,
    /// Purchase orders not yet closed or rejected, by id.
    #[serde(default)]
    purchase_orders: BTreeMap<String, OpenPurchase>,
    /// SKU tokens of items that track lots or expiry.
    #[serde(default)]
    by_lot: BTreeSet<String>,
    /// Expiry dates of lots, per SKU token and lot (from their first receipt).
    #[serde(default)]
    lot_expiry: BTreeMap<String, BTreeMap<String, String>>,
    /// The latest business date (`YYYY-MM-DD`) of any event: what expiry is judged against.
    #[serde(default)]
    today: Option<String>,
    /// Days of shelf life each channel wants left, by channel id.
    #[serde(default)]
    shelf_life: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OpenPurchase {
    approved: bool,
    expected_on: String,
    /// Line -> (SKU, location, ordered, received).
    lines: BTreeMap<u32, (String, String, i64, i64)>,
}

impl OpenPurchase {
    fn open(line: &(String, String, i64, i64)) -> i64 {
        (line.2 - line.3).max(0)
    }
}

/// The row key of a SKU at a location (both tokens already escaped).
fn loc_key(sku: &str, location: &str) -> String {
    format!("loc.{sku}.{location}")
}

/// What a SKU may be sold as on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ChannelRow {
    pub sku: String,
    pub channel: String,
    pub available_to_sell: i64,
    /// The channel's allocation rule for the SKU, if it has one.
    pub rule: Option<ChannelAllocationRule>,
}

/// A row of the ATS view: figures at a location, or available to sell on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum AtsViewRow {
    Location(AtsRow),
    Channel(ChannelRow),
}

/// Queries of `view.ats.<op>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AtsQuery {
    /// The figures of a SKU at a location.
    Get { sku: String, location: String },
    /// A SKU's figures at its locations (paged by location key) and on every channel.
    Sku {
        sku: String,
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// What a SKU may be sold as on a channel.
    Channel { sku: String, channel: String },
    /// The events behind a SKU's figures at a location, oldest first, a page at a time.
    Explain {
        sku: String,
        location: String,
        #[serde(default)]
        after_seq: Option<u64>,
        #[serde(default)]
        limit: Option<u32>,
    },
}

impl Ats {
    /// The row of a `loc.<sku>.<location>` key.
    pub fn row(&self, key: &str) -> Option<&AtsRow> {
        self.rows.get(key)
    }

    /// Every SKU × location row.
    pub fn rows(&self) -> impl Iterator<Item = &AtsRow> {
        self.rows.values()
    }

    /// Adds `delta` inbound units of `sku` at `location`, expected on `date`.
    fn add_inbound(
        &mut self,
        (sku, location): (&str, &str),
        date: &str,
        delta: i64,
        seq: u64,
        changed: &mut BTreeSet<String>,
    ) {
        if delta == 0 {
            return;
        }
        let token = escape_token(sku);
        self.skus
            .entry(token.clone())
            .or_insert_with(|| sku.to_owned());
        let safety = self.safety.get(&token).copied().unwrap_or(0);
        let key = loc_key(&token, &escape_token(location));
        let row = self.rows.entry(key.clone()).or_insert_with(|| AtsRow {
            sku: sku.to_owned(),
            location: location.to_owned(),
            safety_stock: safety,
            ..AtsRow::default()
        });
        row.inbound += delta;
        let on_date = row.inbound_by_date.entry(date.to_owned()).or_default();
        *on_date += delta;
        if *on_date == 0 {
            row.inbound_by_date.remove(date);
        }
        row.recompute();
        row.seq = seq;
        changed.insert(key);
    }

    /// Purchase orders: approved ones count as inbound until received, closed or rejected.
    fn apply_purchase(
        &mut self,
        po: &str,
        event: &Event,
        seq: u64,
        changed: &mut BTreeSet<String>,
    ) {
        let changes: Vec<((String, String), String, i64)> = match event {
            Event::PurchaseOrderCreated(e) => {
                let lines = e
                    .lines
                    .iter()
                    .map(|l| {
                        (
                            l.line,
                            (l.sku.to_string(), l.location.to_string(), l.qty.get(), 0),
                        )
                    })
                    .collect();
                self.purchase_orders.insert(
                    po.to_owned(),
                    OpenPurchase {
                        approved: false,
                        expected_on: e.expected_on.get().to_string(),
                        lines,
                    },
                );
                Vec::new()
            }
            Event::PurchaseOrderApproved(_) => match self.purchase_orders.get_mut(po) {
                Some(open) if !open.approved => {
                    open.approved = true;
                    open.lines
                        .values()
                        .map(|l| {
                            (
                                (l.0.clone(), l.1.clone()),
                                open.expected_on.clone(),
                                OpenPurchase::open(l),
                            )
                        })
                        .collect()
                }
                _ => Vec::new(),
            },
            Event::ReceiptMatched(e) => match self.purchase_orders.get_mut(po) {
                Some(open) => {
                    let date = open.expected_on.clone();
                    let approved = open.approved;
                    match open.lines.get_mut(&e.line) {
                        Some(line) => {
                            let before = OpenPurchase::open(line);
                            line.3 = e.qty_received.get();
                            let after = OpenPurchase::open(line);
                            if approved {
                                vec![((line.0.clone(), line.1.clone()), date, after - before)]
                            } else {
                                Vec::new()
                            }
                        }
                        None => Vec::new(),
                    }
                }
                None => Vec::new(),
            },
            Event::PurchaseOrderClosed(_) | Event::PurchaseOrderRejected(_) => {
                match self.purchase_orders.remove(po) {
                    Some(open) if open.approved => open
                        .lines
                        .values()
                        .map(|l| {
                            (
                                (l.0.clone(), l.1.clone()),
                                open.expected_on.clone(),
                                -OpenPurchase::open(l),
                            )
                        })
                        .collect(),
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        for ((sku, location), date, delta) in changes {
            self.add_inbound((&sku, &location), &date, delta, seq, changed);
            self.touch_channels(&escape_token(&sku), changed);
        }
    }

    fn touch_channels(&self, sku_token: &str, changed: &mut BTreeSet<String>) {
        for channel_token in self.channels.values() {
            changed.insert(format!("chan.{sku_token}.{channel_token}"));
        }
    }

    fn rows_of(&self, sku_token: &str) -> impl Iterator<Item = &AtsRow> {
        let prefix = format!("loc.{sku_token}.");
        self.rows
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, r)| r)
    }

    /// Available to sell on `channel` for the SKU.
    fn channel_available(
        &self,
        sku_token: &str,
        channel: &str,
    ) -> (i64, Option<&ChannelAllocationRule>) {
        let min_days = self.shelf_life.get(channel).copied().unwrap_or(0);
        let short = |r: &AtsRow| match (&self.today, min_days) {
            (Some(today), 1..) if self.by_lot.contains(sku_token) => r.short_dated(today, min_days),
            _ => 0,
        };
        let base: i64 = self
            .rows_of(sku_token)
            .map(|r| (r.available - short(r)).max(0))
            .sum();
        let total_free: i64 = self.rows_of(sku_token).map(AtsRow::free).sum();
        let rules = self.rules.get(sku_token);
        let own_or_other = rules
            .into_iter()
            .flatten()
            .map(|(c, rule)| (c == channel, rule));
        let cap = ledger::effects::channel_cap(own_or_other, total_free);
        (base.min(cap).max(0), rules.and_then(|r| r.get(channel)))
    }
}

impl Ats {
    /// Moves the business date to that of `event` when it is later, and expires the lots
    /// that the new date passes.
    fn advance(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        if matches!(event.envelope.subject, Subject::Command(_)) {
            return;
        }
        let day = event
            .envelope
            .effective_at
            .as_datetime()
            .date_naive()
            .to_string();
        if self.today.as_ref().is_some_and(|t| *t >= day) {
            return;
        }
        self.today = Some(day);
        let skus: Vec<String> = self
            .lot_expiry
            .keys()
            .filter(|s| self.by_lot.contains(*s))
            .cloned()
            .collect();
        for token in skus {
            self.refresh_rows(&token, event.seq, changed);
        }
    }

    /// Sets the expired units of every row of a SKU again, noting the rows that change.
    fn refresh_rows(&mut self, token: &str, seq: u64, changed: &mut BTreeSet<String>) {
        let keys: Vec<String> = self
            .rows_of(token)
            .map(|r| loc_key(token, &escape_token(&r.location)))
            .collect();
        let by_lot = self.by_lot.contains(token);
        let mut any = false;
        for key in keys {
            let row = self.rows.get_mut(&key).expect("listed above");
            let before = row.expired;
            row.expire(self.today.as_deref(), by_lot);
            if row.expired != before {
                row.seq = seq;
                changed.insert(key);
                any = true;
            }
        }
        if any || (by_lot && !self.shelf_life.is_empty()) {
            self.touch_channels(token, changed);
        }
    }

    /// What a stock event does to the lots of a row.
    fn apply_lots(&mut self, token: &str, key: &str, event: &Event) {
        let (Some(row), deltas) = (self.rows.get_mut(key), ledger::effects::lot_deltas(event))
        else {
            return;
        };
        if let Event::StockReceived(ledger::events::StockReceived {
            lot: Some(lot),
            expires_on: Some(date),
            ..
        }) = event
        {
            self.lot_expiry
                .entry(token.to_owned())
                .or_default()
                .entry(lot.to_string())
                .or_insert_with(|| date.get().to_string());
        }
        for d in deltas
            .iter()
            .filter(|d| d.location.as_str() == row.location)
        {
            let lot = row.lots.entry(d.lot.to_string()).or_default();
            lot.units += d.units;
            lot.held += d.held;
            lot.expires_on = self
                .lot_expiry
                .get(token)
                .and_then(|l| l.get(d.lot.as_str()))
                .cloned();
            if lot.units == 0 && lot.held == 0 {
                row.lots.remove(d.lot.as_str());
            }
        }
        row.expire(self.today.as_deref(), self.by_lot.contains(token));
    }
}

impl Model for Ats {
    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        self.advance(event, changed);
        match (&event.envelope.subject, &event.envelope.event) {
            (_, Event::ChannelShelfLifeSet(e)) => {
                self.shelf_life.insert(e.channel.to_string(), e.min_days);
                let token = escape_token(e.channel.as_str());
                for sku_token in self.by_lot.iter().filter(|s| self.skus.contains_key(*s)) {
                    changed.insert(format!("chan.{sku_token}.{token}"));
                }
            }
            (_, Event::ItemDefined(item) | Event::ItemChanged(item)) => {
                let token = escape_token(item.sku.as_str());
                let by_lot = item.tracking.lot || item.tracking.expiry;
                if by_lot != self.by_lot.contains(&token) {
                    match by_lot {
                        true => self.by_lot.insert(token.clone()),
                        false => self.by_lot.remove(&token),
                    };
                    self.refresh_rows(&token, event.seq, changed);
                }
                self.safety.insert(token.clone(), item.safety_stock.get());
                let keys: Vec<String> = self
                    .rows_of(&token)
                    .map(|r| loc_key(&token, &escape_token(&r.location)))
                    .collect();
                for key in keys {
                    let row = self.rows.get_mut(&key).expect("listed above");
                    row.safety_stock = item.safety_stock.get();
                    row.recompute();
                    row.seq = event.seq;
                    changed.insert(key);
                }
                // A SKU without stock figures has no channel rows yet.
                if self.skus.contains_key(&token) {
                    self.touch_channels(&token, changed);
                }
            }
            (_, Event::ChannelDefined(c)) => {
                let token = escape_token(c.channel.as_str());
                if self
                    .channels
                    .insert(c.channel.to_string(), token.clone())
                    .is_none()
                {
                    for sku_token in self.skus.keys() {
                        changed.insert(format!("chan.{sku_token}.{token}"));
                    }
                }
            }
            (Subject::Stock(sku), Event::ChannelAllocationSet(e)) => {
                let token = escape_token(sku.as_str());
                self.rules
                    .entry(token.clone())
                    .or_default()
                    .insert(e.channel.to_string(), e.rule.clone());
                self.touch_channels(&token, changed);
            }
            (Subject::PurchaseOrder(po), event_body) => {
                self.apply_purchase(po.as_str(), event_body, event.seq, changed);
            }
            (Subject::Stock(sku), event_body) => {
                let mut deltas = ledger::effects::stock_deltas(event_body);
                // A pick moves no figure but takes units off a lot's shelf.
                for lot in ledger::effects::lot_deltas(event_body) {
                    if !deltas.iter().any(|d| d.location == lot.location) {
                        deltas.push(ledger::effects::StockDelta::at(&lot.location));
                    }
                }
                if deltas.is_empty() {
                    return;
                }
                let token = escape_token(sku.as_str());
                if !self.skus.contains_key(&token) {
                    self.skus.insert(token.clone(), sku.to_string());
                }
                let safety = self.safety.get(&token).copied().unwrap_or(0);
                for d in deltas {
                    let key = loc_key(&token, &escape_token(d.location.as_str()));
                    let row = self.rows.entry(key.clone()).or_insert_with(|| AtsRow {
                        sku: sku.to_string(),
                        location: d.location.to_string(),
                        safety_stock: safety,
                        ..AtsRow::default()
                    });
                    row.on_hand += d.on_hand;
                    row.allocated += d.allocated;
                    row.reserved += d.reserved;
                    row.quality_hold += d.quality_hold;
                    row.in_transit += d.in_transit;
                    row.recompute();
                    row.seq = event.seq;
                    self.apply_lots(&token, &key, event_body);
                    changed.insert(key);
                }
                self.touch_channels(&token, changed);
            }
            _ => {}
        }
    }

    fn value(&self, key: &str) -> Option<serde_json::Value> {
        self.view_row(key)
            .map(|row| serde_json::to_value(row).expect("rows serialise"))
    }
}

impl Ats {
    /// The row of any key, location or channel.
    fn view_row(&self, key: &str) -> Option<AtsViewRow> {
        if let Some(row) = self.rows.get(key) {
            return Some(AtsViewRow::Location(row.clone()));
        }
        let rest = key.strip_prefix("chan.")?;
        let (sku_token, channel_token) = rest.split_once('.')?;
        let channel = self
            .channels
            .iter()
            .find(|(_, t)| t.as_str() == channel_token)
            .map(|(c, _)| c)?;
        let sku = self.skus.get(sku_token)?;
        let (available, rule) = self.channel_available(sku_token, channel);
        Some(AtsViewRow::Channel(ChannelRow {
            sku: sku.clone(),
            channel: channel.clone(),
            available_to_sell: available,
            rule: rule.cloned(),
        }))
    }

    fn channel_keys(&self) -> Vec<String> {
        let mut channel_tokens: Vec<&String> = self.channels.values().collect();
        channel_tokens.sort();
        self.skus
            .keys()
            .flat_map(|sku| {
                channel_tokens
                    .iter()
                    .map(move |channel| format!("chan.{sku}.{channel}"))
            })
            .collect()
    }
}

impl View for Ats {
    const NAME: &'static str = "ats";
    /// 2: inbound from purchase orders. 3: lots, expired units, channels' shelf life.
    const VERSION: u32 = 3;
    const KEYS: &'static [KeyShape] = &[
        KeyShape {
            kind: "loc",
            parts: &["sku", "location"],
            row: "AtsRow: the figures of a SKU at a location",
        },
        KeyShape {
            kind: "chan",
            parts: &["sku", "channel"],
            row: "ChannelRow: what a SKU may be sold as on a channel",
        },
    ];
    type Row = AtsViewRow;
    type Query = AtsQuery;

    fn keys(&self) -> Box<dyn Iterator<Item = String> + '_> {
        // `chan.` sorts before `loc.`.
        Box::new(
            self.channel_keys()
                .into_iter()
                .chain(self.rows.keys().cloned()),
        )
    }

    fn answer(&self, query: &AtsQuery) -> Result<Answer, QueryError> {
        let value = |row: AtsViewRow| serde_json::to_value(row).expect("rows serialise");
        match query {
            AtsQuery::Get { sku, location } => {
                let key = key::key("loc", &[sku, location]);
                self.view_row(&key)
                    .map(|r| Answer::Value(value(r)))
                    .ok_or_else(|| {
                        QueryError::not_found(format!("no stock figures for {sku} at {location}"))
                    })
            }
            AtsQuery::Sku { sku, after, limit } => {
                let token = escape_token(sku);
                let (locations, next_after) = page(
                    self.rows_of(&token)
                        .map(|r| (loc_key(&token, &escape_token(&r.location)), r)),
                    after.as_deref(),
                    page_limit(*limit)?,
                );
                let channels: Vec<serde_json::Value> = self
                    .channel_keys()
                    .into_iter()
                    .filter(|k| k.starts_with(&format!("chan.{token}.")))
                    .filter_map(|k| self.view_row(&k).map(value))
                    .collect();
                Ok(Answer::Value(
                    json!({"locations": locations, "channels": channels, "next_after": next_after}),
                ))
            }
            AtsQuery::Channel { sku, channel } => {
                let key = key::key("chan", &[sku, channel]);
                self.view_row(&key)
                    .map(|r| Answer::Value(value(r)))
                    .ok_or_else(|| {
                        QueryError::not_found(format!("no channel figure for {sku} on {channel}"))
                    })
            }
            AtsQuery::Explain {
                sku,
                after_seq,
                limit,
                ..
            } => {
                let sku = ledger::values::Sku::new(sku.as_str())
                    .map_err(|e| QueryError::bad_query(e.to_string()))?;
                Ok(Answer::Read(Read {
                    from: ReadSource::Subject(Subject::Stock(sku)),
                    after_seq: after_seq.unwrap_or(0),
                    limit: page_limit(*limit)?,
                    range: TimeRange::default(),
                }))
            }
        }
    }

    /// An explanation line: what the event did to the figures at the location asked about.
    fn render(&self, query: &AtsQuery, event: &RecordedEvent) -> Option<serde_json::Value> {
        let AtsQuery::Explain { location, .. } = query else {
            return None;
        };
        let delta = ledger::effects::stock_deltas(&event.envelope.event)
            .into_iter()
            .find(|d| d.location.as_str() == location)?;
        let figure = |n: i64| (n != 0).then_some(n);
        Some(json!({
            "seq": event.seq,
            "type": event.envelope.event.event_type().name(),
            "effective_at": event.envelope.effective_at.to_string(),
            "recorded_at": event.recorded_at.to_string(),
            "command_id": event.envelope.command_id,
            "actor": event.envelope.actor.id.to_string(),
            "on_hand": figure(delta.on_hand),
            "allocated": figure(delta.allocated),
            "reserved": figure(delta.reserved),
            "quality_hold": figure(delta.quality_hold),
            "in_transit": figure(delta.in_transit),
        }))
    }
}
