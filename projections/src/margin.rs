//! Margin: contribution by SKU, channel, order and day, and inventory value by legal entity ×
//! SKU × location, from the postings of `books` (so it always agrees with the finance view).
//!
//! Rows, one per currency (amounts in different currencies are never added):
//! `sku.<sku>.<currency>`, `channel.<channel>.<currency>`, `order.<order>.<currency>`,
//! `day.<YYYY-MM-DD>.<currency>` (business date) with revenue, discounts, fees, freight charged and paid, COGS (net of returns restored at
//! their original cost, with landed cost on units already sold), refunds, return costs
//! (returned units not restocked), write-offs and `contribution` = revenue - discounts - fees
//! + freight charged - freight paid - COGS - refunds - return costs; and `value.<entity>.<sku>.<location>` with quantity, value and unit cost.

use std::collections::{BTreeMap, BTreeSet};

use ledger::RecordedEvent;
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::books::{Account, Books, Posting};
use crate::key::{self, KeyShape};
use crate::view::{Answer, Model, QueryError, View};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarginRow {
    pub currency: String,
    pub revenue: Decimal,
    pub discounts: Decimal,
    pub fees: Decimal,
    pub freight_charged: Decimal,
    pub freight_paid: Decimal,
    pub cogs: Decimal,
    pub refunds: Decimal,
    /// Returned units not restocked, at their cost.
    pub return_costs: Decimal,
    pub write_offs: Decimal,
}

impl MarginRow {
    pub fn contribution(&self) -> Decimal {
        self.revenue - self.discounts - self.fees + self.freight_charged
            - self.freight_paid
            - self.cogs
            - self.refunds
            - self.return_costs
    }

    /// Adds a P&L line of the row's currency; balance-sheet lines are not margin.
    fn add(&mut self, line: &Posting) {
        assert!(
            self.currency.is_empty() || self.currency == line.currency,
            "a margin row in {} was given a line in {}: rows are kept per currency",
            self.currency,
            line.currency
        );
        let a = line.amount;
        match line.account {
            Account::Revenue => self.revenue -= a,
            Account::Discounts => self.discounts += a,
            Account::ChannelFees => self.fees += a,
            Account::FreightIncome => self.freight_charged -= a,
            Account::FreightExpense => self.freight_paid += a,
            Account::Cogs => self.cogs += a,
            Account::SalesReturns => self.refunds += a,
            Account::ReturnCosts => self.return_costs += a,
            Account::InventoryAdjustment => self.write_offs += a,
            _ => return,
        }
        if self.currency.is_empty() {
            self.currency = line.currency.clone();
        }
    }

    fn figures(&self, of: &str) -> MarginFigures {
        let dp = crate::books::minor_units(&self.currency);
        let amount = |d: Decimal| d.round_dp(dp).to_string();
        MarginFigures {
            of: of.to_owned(),
            currency: self.currency.clone(),
            revenue: amount(self.revenue),
            discounts: amount(self.discounts),
            fees: amount(self.fees),
            freight_charged: amount(self.freight_charged),
            freight_paid: amount(self.freight_paid),
            cogs: amount(self.cogs),
            refunds: amount(self.refunds),
            return_costs: amount(self.return_costs),
            write_offs: amount(self.write_offs),
            contribution: amount(self.contribution()),
        }
    }
}

/// A contribution row as the view shows it: decimal amounts as text, in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct MarginFigures {
    /// What it is the margin of: `sku:…`, `channel:…`, `order:…` or `day:YYYY-MM-DD`.
    pub of: String,
    pub currency: String,
    pub revenue: String,
    pub discounts: String,
    pub fees: String,
    pub freight_charged: String,
    pub freight_paid: String,
    pub cogs: String,
    pub refunds: String,
    pub return_costs: String,
    pub write_offs: String,
    pub contribution: String,
}

/// Inventory value of a SKU at a location in a legal entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ValueRow {
    pub entity: String,
    pub sku: String,
    pub location: String,
    pub currency: String,
    pub qty: i64,
    pub value: String,
    pub unit_cost: String,
    /// Cost layers held (FIFO) or 1 (moving average).
    pub layers: usize,
}

/// A row of the margin view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum MarginViewRow {
    Margin(MarginFigures),
    Value(ValueRow),
}

/// Queries of `view.margin.<op>`: each answers `{"rows": [...]}`, one row per currency.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MarginQuery {
    Sku {
        sku: String,
    },
    Channel {
        channel: String,
    },
    Order {
        order: String,
    },
    /// A business date, `YYYY-MM-DD`.
    Day {
        day: String,
    },
    /// The inventory value of a SKU at a location in a legal entity.
    Value {
        entity: String,
        sku: String,
        location: String,
    },
}

/// The dimensions margin is kept by.
const DIMENSIONS: [&str; 4] = ["sku", "channel", "order", "day"];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Margin {
    books: Books,
    rows: BTreeMap<String, MarginRow>,
}

fn is_margin(account: Account) -> bool {
    matches!(
        account,
        Account::Revenue
            | Account::Discounts
            | Account::ChannelFees
            | Account::FreightIncome
            | Account::FreightExpense
            | Account::Cogs
            | Account::SalesReturns
            | Account::ReturnCosts
            | Account::InventoryAdjustment
    )
}

impl Margin {
    /// A margin row as numbers (`sku.<sku>.<currency>`, `channel.<channel>.<currency>`, …).
    pub fn row(&self, key: &str) -> Option<&MarginRow> {
        self.rows.get(key)
    }

    /// The rows of one thing (a SKU, a channel, an order, a day), one per currency.
    pub fn rows_of(
        &self,
        dimension: &str,
        id: &str,
    ) -> impl Iterator<Item = (&String, &MarginRow)> {
        let prefix = key::prefix(dimension, &[id]);
        self.rows
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }

    fn view_row(&self, key: &str) -> Option<MarginViewRow> {
        if let Some([entity, sku, location]) =
            key::parts(key, "value", 3).and_then(|p| <[String; 3]>::try_from(p).ok())
        {
            let v = self.books.valuation(&entity, &sku, &location)?;
            return Some(MarginViewRow::Value(ValueRow {
                currency: v.currency.clone(),
                qty: v.qty(),
                value: v
                    .value()
                    .round_dp(crate::books::minor_units(&v.currency))
                    .to_string(),
                unit_cost: v.unit_cost().round_dp(4).to_string(),
                layers: v.layers.len(),
                entity,
                sku,
                location,
            }));
        }
        let (dimension, _) = key.split_once('.')?;
        let parts = key::parts(key, dimension, 2)?;
        self.rows
            .get(key)
            .map(|r| MarginViewRow::Margin(r.figures(&format!("{dimension}:{}", parts[0]))))
    }
}

impl Model for Margin {
    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        let posted = self.books.post(event);
        let day = event
            .envelope
            .effective_at
            .as_datetime()
            .date_naive()
            .to_string();
        for line in posted.lines.iter().filter(|l| is_margin(l.account)) {
            let ids = [
                ("day", Some(&day)),
                ("sku", line.sku.as_ref()),
                ("channel", line.channel.as_ref()),
                ("order", line.order.as_ref()),
            ];
            for (dimension, id) in ids {
                let Some(id) = id else { continue };
                let key = key::key(dimension, &[id.as_str(), line.currency.as_str()]);
                self.rows.entry(key.clone()).or_default().add(line);
                changed.insert(key);
            }
        }
        changed.extend(posted.valuations);
    }

    fn value(&self, key: &str) -> Option<serde_json::Value> {
        self.view_row(key)
            .map(|r| serde_json::to_value(r).expect("rows serialise"))
    }
}

impl View for Margin {
    const NAME: &'static str = "margin";
    /// 2: rows per currency; keys escaped by `crate::key`. 3: amounts rounded to their
    /// currency's minor unit (JPY 0, BHD 3), not always 2. 4: refunds of taxed sales give
    /// back their tax share to tax payable, not to refunds.
    const VERSION: u32 = 4;
    const KEYS: &'static [KeyShape] = &[
        KeyShape {
            kind: "sku",
            parts: &["sku", "currency"],
            row: "MarginFigures: contribution of a SKU in one currency",
        },
        KeyShape {
            kind: "channel",
            parts: &["channel", "currency"],
            row: "MarginFigures: contribution of a channel in one currency",
        },
        KeyShape {
            kind: "order",
            parts: &["order", "currency"],
            row: "MarginFigures: contribution of an order in one currency",
        },
        KeyShape {
            kind: "day",
            parts: &["date", "currency"],
            row: "MarginFigures: contribution of a business day in one currency",
        },
        KeyShape {
            kind: "value",
            parts: &["entity", "sku", "location"],
            row: "ValueRow: inventory value of a SKU at a location in a legal entity",
        },
    ];
    type Row = MarginViewRow;
    type Query = MarginQuery;

    fn keys(&self) -> Box<dyn Iterator<Item = String> + '_> {
        let mut keys: Vec<String> = self
            .rows
            .keys()
            .cloned()
            .chain(self.books.valuations().map(|(k, _)| k.clone()))
            .collect();
        keys.sort();
        Box::new(keys.into_iter())
    }

    fn answer(&self, query: &MarginQuery) -> Result<Answer, QueryError> {
        let (dimension, id) = match query {
            MarginQuery::Sku { sku } => ("sku", sku),
            MarginQuery::Channel { channel } => ("channel", channel),
            MarginQuery::Order { order } => ("order", order),
            MarginQuery::Day { day } => ("day", day),
            MarginQuery::Value {
                entity,
                sku,
                location,
            } => {
                let key = key::key("value", &[entity, sku, location]);
                return self
                    .value(&key)
                    .map(|row| Answer::Value(json!({"rows": [row]})))
                    .ok_or_else(|| {
                        QueryError::not_found(format!(
                            "no inventory value of {sku} at {location} in {entity}"
                        ))
                    });
            }
        };
        debug_assert!(DIMENSIONS.contains(&dimension));
        let rows: Vec<serde_json::Value> = self
            .rows_of(dimension, id)
            .filter_map(|(k, _)| self.value(k))
            .collect();
        if rows.is_empty() {
            return Err(QueryError::not_found(format!(
                "no margin figures for {dimension} {id}"
            )));
        }
        Ok(Answer::Value(json!({ "rows": rows })))
    }
}
