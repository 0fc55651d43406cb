//! Margin: contribution by SKU, channel, order and day, and inventory value by legal entity ×
//! SKU × location, from the postings of `books` (so it always agrees with the finance view).
//!
//! Rows: `sku.<sku>`, `channel.<channel>`, `order.<order>`, `day.<YYYY-MM-DD>` (business date)
//! with revenue, discounts, fees, freight charged and paid, COGS (net of returns restored at
//! their original cost, with landed cost on units already sold), refunds, return costs
//! (returned units not restocked), write-offs and `contribution` = revenue - discounts - fees
//! + freight charged - freight paid - COGS - refunds - return costs; and `value.<entity>.<sku>.<location>` with quantity, value and unit cost.

use std::collections::{BTreeMap, BTreeSet};

use ledger::RecordedEvent;
use ledger::subject::escape_token;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::books::{Account, Books, Posting};
use crate::view::{QueryError, View, field};

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

    /// Adds a P&L line; balance-sheet lines are not margin.
    fn add(&mut self, line: &Posting) {
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

    fn json(&self) -> serde_json::Value {
        json!({
            "currency": self.currency,
            "revenue": self.revenue.round_dp(2).to_string(),
            "discounts": self.discounts.round_dp(2).to_string(),
            "fees": self.fees.round_dp(2).to_string(),
            "freight_charged": self.freight_charged.round_dp(2).to_string(),
            "freight_paid": self.freight_paid.round_dp(2).to_string(),
            "cogs": self.cogs.round_dp(2).to_string(),
            "refunds": self.refunds.round_dp(2).to_string(),
            "return_costs": self.return_costs.round_dp(2).to_string(),
            "write_offs": self.write_offs.round_dp(2).to_string(),
            "contribution": self.contribution().round_dp(2).to_string(),
        })
    }
}

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
    /// A margin row as numbers (`sku.<token>`, `channel.<token>`, …).
    pub fn row(&self, key: &str) -> Option<&MarginRow> {
        self.rows.get(key)
    }
}

impl View for Margin {
    const NAME: &'static str = "margin";
    const VERSION: u32 = 1;

    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        let posted = self.books.post(event);
        let day = format!(
            "day.{}",
            event.envelope.effective_at.as_datetime().date_naive()
        );
        for line in posted.lines.iter().filter(|l| is_margin(l.account)) {
            let mut keys = vec![day.clone()];
            if let Some(sku) = &line.sku {
                keys.push(format!("sku.{}", escape_token(sku)));
            }
            if let Some(channel) = &line.channel {
                keys.push(format!("channel.{}", escape_token(channel)));
            }
            if let Some(order) = &line.order {
                keys.push(format!("order.{}", escape_token(order)));
            }
            for key in keys {
                self.rows.entry(key.clone()).or_default().add(line);
                changed.insert(key);
            }
        }
        for v in posted.valuations {
            let mut parts = v.splitn(3, '/');
            let (Some(entity), Some(sku), Some(location)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            changed.insert(format!(
                "value.{}.{}.{}",
                escape_token(entity),
                escape_token(sku),
                escape_token(location)
            ));
        }
    }

    fn value(&self, key: &str) -> Option<serde_json::Value> {
        if let Some(rest) = key.strip_prefix("value.") {
            let mut tokens = rest.splitn(3, '.');
            let (Some(entity), Some(sku), Some(location)) =
                (tokens.next(), tokens.next(), tokens.next())
            else {
                return None;
            };
            let unescape = |t: &str| ledger::subject::unescape_token(t).ok();
            let (entity, sku, location) = (unescape(entity)?, unescape(sku)?, unescape(location)?);
            let v = self.books.valuation(&entity, &sku, &location)?;
            return Some(json!({
                "entity": entity, "sku": sku, "location": location,
                "currency": v.currency,
                "qty": v.qty(),
                "value": v.value().round_dp(2).to_string(),
                "unit_cost": v.unit_cost().round_dp(4).to_string(),
                "layers": v.layers.len(),
            }));
        }
        self.rows.get(key).map(MarginRow::json)
    }

    fn query(&self, op: &str, body: &serde_json::Value) -> Result<serde_json::Value, QueryError> {
        let key = match op {
            "sku" | "channel" | "order" | "day" => {
                format!("{op}.{}", escape_token(field(body, op)?))
            }
            "value" => {
                let entity = field(body, "entity")?;
                format!(
                    "value.{}.{}.{}",
                    escape_token(entity),
                    escape_token(field(body, "sku")?),
                    escape_token(field(body, "location")?)
                )
            }
            other => {
                return Err(QueryError::bad_query(format!(
                    "unknown query `{other}`; expected sku, channel, order, day or value"
                )));
            }
        };
        self.value(&key)
            .ok_or_else(|| QueryError::not_found(format!("no figures for `{key}`")))
    }
}
