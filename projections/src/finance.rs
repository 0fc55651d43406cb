//! Finance postings: every operational event's balanced journal lines (`books`), summed per
//! legal entity × currency × account, with a running check that each event's debits equal its
//! credits and that the totals do.
//!
//! Rows: `acct.<entity>.<currency>.<account>` (`debit`, `credit`, `balance`) and `check`
//! (events posted, lines, total debits and credits, and the sequences of any event that did
//! not balance: there should be none). `erp journal` exports the lines themselves as CSV.

use std::collections::{BTreeMap, BTreeSet};

use ledger::RecordedEvent;
use ledger::subject::escape_token;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::books::{Books, balanced};
use crate::view::{QueryError, View};

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

impl View for Finance {
    const NAME: &'static str = "finance";
    const VERSION: u32 = 1;

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
            let key = format!(
                "acct.{}.{}.{}",
                escape_token(&line.entity),
                escape_token(&line.currency),
                line.account.name()
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
        if key == "check" {
            let c = &self.check;
            return Some(json!({
                "events_posted": c.events_posted,
                "lines": c.lines,
                "debits": c.debits.round_dp(2).to_string(),
                "credits": c.credits.round_dp(2).to_string(),
                "balanced": c.debits == c.credits && c.unbalanced.is_empty(),
                "unbalanced_events": c.unbalanced,
            }));
        }
        self.accounts.get(key).map(|t| {
            json!({
                "entity": t.entity, "currency": t.currency, "account": t.account,
                "debit": t.debit.round_dp(2).to_string(),
                "credit": t.credit.round_dp(2).to_string(),
                "balance": (t.debit - t.credit).round_dp(2).to_string(),
            })
        })
    }

    fn query(&self, op: &str, _body: &serde_json::Value) -> Result<serde_json::Value, QueryError> {
        match op {
            "trial_balance" => Ok(json!({
                "accounts": self.accounts.keys().filter_map(|k| self.value(k)).collect::<Vec<_>>(),
                "check": self.value("check"),
            })),
            "check" => Ok(self.value("check").unwrap_or_default()),
            other => Err(QueryError::bad_query(format!(
                "unknown query `{other}`; expected trial_balance or check"
            ))),
        }
    }
}
