//! Finance postings: every operational event's balanced journal lines (`books`), summed per
//! legal entity × currency × account, with a running check that each event's debits equal its
//! credits and that the totals do.
//!
//! Rows: `acct.<entity>.<currency>.<account>` (`debit`, `credit`, `balance`) and `check`
//! (events posted, lines, total debits and credits, and the sequences of any event that did
//! not balance: there should be none). `erp journal` exports the lines themselves as CSV.

use std::collections::{BTreeMap, BTreeSet};

use ledger::RecordedEvent;
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::books::{Books, balanced};
use crate::key::{self, KeyShape};
use crate::view::{Answer, Model, QueryError, View, page, page_limit};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountTotal {
    pub entity: String,
    pub currency: String,
    pub account: String,
    pub debit: Decimal,
    pub credit: Decimal,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub events_posted: u64,
    pub lines: u64,
    pub debits: Decimal,
    pub credits: Decimal,
    /// Sequences of events whose lines did not balance.
    pub unbalanced: Vec<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Finance {
    books: Books,
    accounts: BTreeMap<String, AccountTotal>,
    check: Check,
}

impl Finance {
    pub fn check(&self) -> &Check {
        &self.check
    }

    pub fn accounts(&self) -> impl Iterator<Item = &AccountTotal> {
        self.accounts.values()
    }
}

/// An account's totals as the view shows them (amounts as text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct AccountRow {
    pub entity: String,
    pub currency: String,
    pub account: String,
    pub debit: String,
    pub credit: String,
    pub balance: String,
}

/// The running check that the books balance: in each legal entity and currency on its own
/// (amounts of different currencies are never added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct CheckRow {
    pub events_posted: u64,
    pub lines: u64,
    /// Debits and credits per legal entity and currency.
    pub totals: Vec<CheckTotals>,
    /// Every event's lines balanced and, in every entity and currency, debits equal credits.
    pub balanced: bool,
    /// Sequences of events whose lines did not balance (there should be none).
    pub unbalanced_events: Vec<u64>,
}

/// Debits and credits of one legal entity in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct CheckTotals {
    pub entity: String,
    pub currency: String,
    pub debits: String,
    pub credits: String,
    pub balanced: bool,
}

/// A row of the finance view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum FinanceRow {
    Account(AccountRow),
    Check(CheckRow),
}

/// Queries of `view.finance.<op>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum FinanceQuery {
    /// Account totals in key order (entity, currency, account), a page at a time, with the
    /// check.
    TrialBalance {
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Whether the books balance.
    Check {},
}

impl Finance {
    fn row(&self, key: &str) -> Option<FinanceRow> {
        if key == "check" {
            let c = &self.check;
            // Accounts are keyed entity, currency, account: each group is one entity's books
            // in one currency.
            let mut sums: BTreeMap<(&str, &str), (Decimal, Decimal)> = BTreeMap::new();
            for t in self.accounts.values() {
                let sum = sums.entry((&t.entity, &t.currency)).or_default();
                sum.0 += t.debit;
                sum.1 += t.credit;
            }
            let totals: Vec<CheckTotals> = sums
                .into_iter()
                .map(|((entity, currency), (debits, credits))| {
                    let dp = crate::books::minor_units(currency);
                    CheckTotals {
                        entity: entity.to_owned(),
                        currency: currency.to_owned(),
                        debits: debits.round_dp(dp).to_string(),
                        credits: credits.round_dp(dp).to_string(),
                        balanced: debits == credits,
                    }
                })
                .collect();
            return Some(FinanceRow::Check(CheckRow {
                events_posted: c.events_posted,
                lines: c.lines,
                balanced: c.unbalanced.is_empty() && totals.iter().all(|t| t.balanced),
                totals,
                unbalanced_events: c.unbalanced.clone(),
            }));
        }
        self.accounts.get(key).map(|t| {
            let dp = crate::books::minor_units(&t.currency);
            let amount = |d: Decimal| d.round_dp(dp).to_string();
            FinanceRow::Account(AccountRow {
                entity: t.entity.clone(),
                currency: t.currency.clone(),
                account: t.account.clone(),
                debit: amount(t.debit),
                credit: amount(t.credit),
                balance: amount(t.debit - t.credit),
            })
        })
    }
}

impl Model for Finance {
    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        let posted = self.books.post(event);
        if posted.lines.is_empty() {
            return;
        }
        if !balanced(&posted.lines) {
            self.check.unbalanced.push(event.seq);
        }
        self.check.events_posted += 1;
        for line in &posted.lines {
            let key = key::key(
                "acct",
                &[
                    line.entity.as_str(),
                    line.currency.as_str(),
                    line.account.name(),
                ],
            );
            let total = self
                .accounts
                .entry(key.clone())
                .or_insert_with(|| AccountTotal {
                    entity: line.entity.clone(),
                    currency: line.currency.clone(),
                    account: line.account.name().to_owned(),
                    ..AccountTotal::default()
                });
            total.debit += line.debit();
            total.credit += line.credit();
            self.check.debits += line.debit();
            self.check.credits += line.credit();
            self.check.lines += 1;
            changed.insert(key);
        }
        changed.insert("check".into());
    }

    fn value(&self, key: &str) -> Option<serde_json::Value> {
        self.row(key)
            .map(|r| serde_json::to_value(r).expect("rows serialise"))
    }
}

impl View for Finance {
    const NAME: &'static str = "finance";
    /// 2: amounts rounded to their currency's minor unit (JPY 0, BHD 3), not always 2.
    const VERSION: u32 = 2;
    const KEYS: &'static [KeyShape] = &[
        KeyShape {
            kind: "acct",
            parts: &["entity", "currency", "account"],
            row: "AccountRow: an account's totals in one entity and currency",
        },
        KeyShape {
            kind: "check",
            parts: &[],
            row: "CheckRow: whether the books balance",
        },
    ];
    type Row = FinanceRow;
    type Query = FinanceQuery;

    fn keys(&self) -> Box<dyn Iterator<Item = String> + '_> {
        Box::new(
            self.accounts
                .keys()
                .cloned()
                .chain(std::iter::once("check".to_owned())),
        )
    }

    fn answer(&self, query: &FinanceQuery) -> Result<Answer, QueryError> {
        match query {
            FinanceQuery::TrialBalance { after, limit } => {
                let (accounts, next_after) = page(
                    self.accounts
                        .keys()
                        .filter_map(|k| Some((k.clone(), self.value(k)?))),
                    after.as_deref(),
                    page_limit(*limit)?,
                );
                Ok(Answer::Value(json!({
                    "accounts": accounts, "next_after": next_after, "check": self.value("check"),
                })))
            }
            FinanceQuery::Check {} => Ok(Answer::Value(self.value("check").unwrap_or_default())),
        }
    }
}
