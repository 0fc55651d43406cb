//! Finance postings: every operational event's balanced journal lines (`books`), summed per
//! legal entity × currency × account, with a running check that each event's debits equal its
//! credits and that the totals do.
//!
//! Rows: `acct.<entity>.<currency>.<account>` (`debit`, `credit`, `balance`) and `check`
//! (events posted, lines, total debits and credits, and the sequences of any event that did
//! not balance: there should be none). `erp journal` exports the lines themselves as CSV.

use std::collections::{BTreeMap, BTreeSet};

use ledger::events::Event;
use ledger::values::Period;
use ledger::{RecordedEvent, Subject};
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::books::{Account, Books, balanced};
use crate::key::{self, KeyShape};
use crate::translate::{Translation, Translator};
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

/// An amount as the period and tax rows show it: rounded to the currency's minor unit, with
/// every decimal place written (`0.00`, `12.50`; JPY `1500`).
fn shown(amount: Decimal, dp: u32) -> String {
    let mut d = amount.round_dp(dp);
    if d.is_zero() {
        // Never `-0.00`.
        d = Decimal::ZERO;
    }
    d.rescale(dp);
    d.to_string()
}

/// One legal entity's books in one month (a period) of effective time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodBooks {
    pub entity: String,
    pub period: String,
    /// Events effective in the period for the entity, outcome records and the entity's own
    /// governance events left out: the count the processor checks `period.close` against.
    pub events: u64,
    /// Debits and credits per currency and account, exact.
    pub accounts: BTreeMap<String, BTreeMap<String, (Decimal, Decimal)>>,
    pub closed: Option<CloseMark>,
    /// How many times it was reopened.
    pub reopened: u32,
}

/// The close in force: where it was recorded and whether what it recorded is what these
/// books hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CloseMark {
    pub seq: u64,
    pub trial_balance_sha256: String,
    /// The recorded digest and event count equal the ones these books give for the period.
    pub matches: bool,
}

impl PeriodBooks {
    /// The trial balance's lines: (currency, account, debit, credit), in key order, amounts
    /// rounded to the currency's minor unit.
    fn lines(&self) -> Vec<(String, String, String, String)> {
        self.accounts
            .iter()
            .flat_map(|(currency, accounts)| accounts.iter().map(move |a| (currency, a)))
            .map(|(currency, (account, (debit, credit)))| {
                let dp = crate::books::minor_units(currency);
                (
                    currency.clone(),
                    account.clone(),
                    shown(*debit, dp),
                    shown(*credit, dp),
                )
            })
            .collect()
    }

    /// SHA-256 of the trial balance: one line `currency,account,debit,credit` per account
    /// (each ending in a newline), in key order, amounts as shown. Anyone holding the row can
    /// compute it again.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for (currency, account, debit, credit) in self.lines() {
            hash.update(format!("{currency},{account},{debit},{credit}\n"));
        }
        hex::encode(hash.finalize())
    }

    fn totals(&self) -> BTreeMap<&str, (Decimal, Decimal)> {
        let mut totals: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
        for (currency, accounts) in &self.accounts {
            let t = totals.entry(currency).or_default();
            for (debit, credit) in accounts.values() {
                t.0 += debit;
                t.1 += credit;
            }
        }
        totals
    }

    fn row(&self) -> PeriodRow {
        let totals: Vec<CheckTotals> = self
            .totals()
            .into_iter()
            .map(|(currency, (debits, credits))| {
                CheckTotals::shown(&self.entity, currency, debits, credits)
            })
            .collect();
        PeriodRow {
            entity: self.entity.clone(),
            period: self.period.clone(),
            events: self.events,
            balanced: totals.iter().all(|t| t.balanced),
            totals,
            accounts: self
                .lines()
                .into_iter()
                .map(|(currency, account, debit, credit)| PeriodAccount {
                    currency,
                    account,
                    debit,
                    credit,
                })
                .collect(),
            trial_balance_sha256: self.digest(),
            closed: self.closed.clone(),
            reopened: self.reopened,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Finance {
    books: Books,
    accounts: BTreeMap<String, AccountTotal>,
    check: Check,
    /// By key `period.<entity>.<YYYY-MM>`.
    periods: BTreeMap<String, PeriodBooks>,
    /// Commands waiting for a second person's approval, by key
    /// `approval.<entity>.<request>`.
    approvals: BTreeMap<String, ApprovalRow>,
    /// Tax per entity, month, jurisdiction, rate and currency, by key
    /// `tax.<entity>.<YYYY-MM>.<jurisdiction>.<rate>.<currency>`.
    #[serde(default)]
    taxes: BTreeMap<String, TaxTotals>,
    /// Entities' functional currencies, exchange rates and open foreign-currency items.
    #[serde(default)]
    translator: Translator,
    /// The books translated into each entity's functional currency, by key
    /// `fn.<entity>.<account>`.
    #[serde(default)]
    translated: BTreeMap<String, AccountTotal>,
    /// Sequences of events with a line in a currency the entity has no rate for at the
    /// event's date: their lines are left out of the translated books.
    #[serde(default)]
    untranslated: Vec<u64>,
}

/// Sales and tax of one tax code in one month.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxTotals {
    pub entity: String,
    pub period: String,
    pub jurisdiction: String,
    pub rate: String,
    pub currency: String,
    /// Revenue less discounts of taxed lines.
    pub sales: Decimal,
    /// Net sales given back by refunds.
    pub returns: Decimal,
    pub tax_charged: Decimal,
    pub tax_reversed: Decimal,
}

/// A line of the tax report: one jurisdiction and rate in one month and currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct TaxRow {
    pub entity: String,
    pub period: String,
    /// The orders' ship-to region.
    pub jurisdiction: String,
    /// Tax over net amount, to 4 decimal places (`0.2` for 20%).
    pub rate: String,
    pub currency: String,
    /// Revenue less discounts of taxed lines shipped in the month.
    pub sales: String,
    /// Net sales given back by refunds in the month.
    pub returns: String,
    pub tax_charged: String,
    /// Tax given back by refunds in the month.
    pub tax_reversed: String,
    /// Charged less reversed: what the month adds to the tax owed.
    pub tax_due: String,
}

impl TaxTotals {
    fn row(&self) -> TaxRow {
        let dp = crate::books::minor_units(&self.currency);
        let amount = |d: Decimal| shown(d, dp);
        TaxRow {
            entity: self.entity.clone(),
            period: self.period.clone(),
            jurisdiction: self.jurisdiction.clone(),
            rate: self.rate.clone(),
            currency: self.currency.clone(),
            sales: amount(self.sales),
            returns: amount(self.returns),
            tax_charged: amount(self.tax_charged),
            tax_reversed: amount(self.tax_reversed),
            tax_due: amount(self.tax_charged - self.tax_reversed),
        }
    }
}

/// A command waiting for a second person (`approval.approve` or `approval.reject`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalRow {
    pub entity: String,
    /// The waiting command's id: what `approval.approve` names.
    pub request: String,
    pub command_type: String,
    pub requester: String,
    pub asked_at: String,
    pub seq: u64,
    /// The threshold it passed (none for commands that always need approval).
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub threshold: Option<serde_json::Value>,
    /// The command's `data`, as sent.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub data: serde_json::Value,
}

impl Finance {
    pub fn check(&self) -> &Check {
        &self.check
    }

    pub fn accounts(&self) -> impl Iterator<Item = &AccountTotal> {
        self.accounts.values()
    }

    /// Tax per entity, month, jurisdiction, rate and currency.
    pub fn taxes(&self) -> impl Iterator<Item = &TaxTotals> {
        self.taxes.values()
    }

    /// Each legal entity's books per month.
    pub fn periods(&self) -> impl Iterator<Item = &PeriodBooks> {
        self.periods.values()
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
    /// Debits and credits of each defined legal entity's books translated into its
    /// functional currency (every posting at the rate of its effective date).
    pub functional: Vec<CheckTotals>,
    /// Events with a line in a currency their entity had no rate for at their date: left
    /// out of the translated books until a rate is set (at most the first 100).
    pub untranslated_events: Vec<u64>,
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

impl CheckTotals {
    /// The totals with every decimal place of the currency written (`shown`).
    fn shown(entity: &str, currency: &str, debits: Decimal, credits: Decimal) -> CheckTotals {
        let dp = crate::books::minor_units(currency);
        CheckTotals {
            entity: entity.to_owned(),
            currency: currency.to_owned(),
            debits: shown(debits, dp),
            credits: shown(credits, dp),
            balanced: debits == credits,
        }
    }
}

/// A `YYYY-MM` period named in a query.
fn query_period(text: &str) -> Result<Period, QueryError> {
    text.parse()
        .map_err(|e: ledger::values::ValueError| QueryError::bad_query(e.to_string()))
}

/// A period's trial balance: what `period.close` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct PeriodRow {
    pub entity: String,
    /// `YYYY-MM`.
    pub period: String,
    /// Events effective in the period (what `period.close` must cover).
    pub events: u64,
    /// Per currency: debits and credits posted in the period.
    pub totals: Vec<CheckTotals>,
    pub balanced: bool,
    /// Per currency and account: debits and credits posted in the period.
    pub accounts: Vec<PeriodAccount>,
    /// SHA-256 of the lines `currency,account,debit,credit\n` of `accounts`, in order.
    pub trial_balance_sha256: String,
    /// The close in force, if the period is closed.
    pub closed: Option<CloseMark>,
    pub reopened: u32,
}

/// An account's movement in a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct PeriodAccount {
    pub currency: String,
    pub account: String,
    pub debit: String,
    pub credit: String,
}

/// A row of the finance view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum FinanceRow {
    Account(AccountRow),
    Check(CheckRow),
    Period(PeriodRow),
    Approval(ApprovalRow),
    Tax(TaxRow),
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
    /// One entity's trial balance for one month (`period` as `YYYY-MM`): what
    /// `period.close` needs. A month with nothing in it answers zero events.
    Period { entity: String, period: String },
    /// The tax report of one entity for one month (`YYYY-MM`): per jurisdiction, rate and
    /// currency, net sales, returns, tax charged, reversed and due.
    TaxReport { entity: String, period: String },
    /// The group's trial balance: every legal entity's accounts added together, per
    /// transaction currency (never across currencies), with intercompany receivables and
    /// payables eliminated against each other; what does not match (goods shipped between
    /// entities and not yet received) is left on `intercompany_unmatched`.
    Consolidated {},
    /// Commands of an entity waiting for a second person, oldest first, a page at a time.
    Approvals {
        entity: String,
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
}

/// The group's trial balance in one transaction currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ConsolidatedRow {
    pub currency: String,
    /// Per account, every entity's debits and credits added (intercompany accounts left out).
    pub accounts: Vec<AccountRow>,
    /// Intercompany receivables and payables that matched and were eliminated (the smaller
    /// of the two).
    pub eliminated: String,
    /// Receivables less payables between the group's entities that did not match: goods in
    /// transit between them (a debit balance) or received beyond what was shipped.
    pub intercompany_unmatched: String,
    pub debits: String,
    pub credits: String,
    pub balanced: bool,
}

impl Finance {
    /// The group's trial balance per transaction currency (`FinanceQuery::Consolidated`).
    pub fn consolidated(&self) -> Vec<ConsolidatedRow> {
        let mut by_currency: BTreeMap<&str, BTreeMap<&str, (Decimal, Decimal)>> = BTreeMap::new();
        for t in self.accounts.values() {
            let sums = by_currency
                .entry(&t.currency)
                .or_default()
                .entry(&t.account)
                .or_default();
            sums.0 += t.debit;
            sums.1 += t.credit;
        }
        let receivable = Account::IntercompanyReceivable.name();
        let payable = Account::IntercompanyPayable.name();
        by_currency
            .into_iter()
            .map(|(currency, accounts)| {
                let dp = crate::books::minor_units(currency);
                let amount = |d: Decimal| shown(d, dp);
                let balance = |name: &str| accounts.get(name).map_or(Decimal::ZERO, |(d, c)| d - c);
                let (owed_to, owed_by) = (balance(receivable), -balance(payable));
                let unmatched = owed_to - owed_by;
                let (mut debits, mut credits) = (Decimal::ZERO, Decimal::ZERO);
                let rows: Vec<AccountRow> = accounts
                    .iter()
                    .filter(|(name, _)| **name != receivable && **name != payable)
                    .map(|(name, (debit, credit))| {
                        debits += debit;
                        credits += credit;
                        AccountRow {
                            entity: String::new(),
                            currency: currency.to_owned(),
                            account: (*name).to_owned(),
                            debit: amount(*debit),
                            credit: amount(*credit),
                            balance: amount(debit - credit),
                        }
                    })
                    .collect();
                debits += unmatched.max(Decimal::ZERO);
                credits += (-unmatched).max(Decimal::ZERO);
                ConsolidatedRow {
                    currency: currency.to_owned(),
                    accounts: rows,
                    eliminated: amount(owed_to.min(owed_by).max(Decimal::ZERO)),
                    intercompany_unmatched: amount(unmatched),
                    debits: amount(debits),
                    credits: amount(credits),
                    balanced: debits == credits,
                }
            })
            .collect()
    }

    fn row(&self, key: &str) -> Option<FinanceRow> {
        if let Some(p) = self.periods.get(key) {
            return Some(FinanceRow::Period(p.row()));
        }
        if let Some(a) = self.approvals.get(key) {
            return Some(FinanceRow::Approval(a.clone()));
        }
        if let Some(t) = self.taxes.get(key) {
            return Some(FinanceRow::Tax(t.row()));
        }
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
            let mut sums: BTreeMap<&str, (&str, Decimal, Decimal)> = BTreeMap::new();
            for t in self.translated.values() {
                let sum =
                    sums.entry(&t.entity)
                        .or_insert((&t.currency, Decimal::ZERO, Decimal::ZERO));
                sum.1 += t.debit;
                sum.2 += t.credit;
            }
            let functional = sums
                .into_iter()
                .map(|(entity, (currency, debits, credits))| {
                    CheckTotals::shown(entity, currency, debits, credits)
                })
                .collect::<Vec<_>>();
            return Some(FinanceRow::Check(CheckRow {
                events_posted: c.events_posted,
                lines: c.lines,
                balanced: c.unbalanced.is_empty()
                    && totals.iter().all(|t| t.balanced)
                    && functional.iter().all(|t| t.balanced),
                totals,
                unbalanced_events: c.unbalanced.clone(),
                functional,
                untranslated_events: self.untranslated.iter().take(100).copied().collect(),
            }));
        }
        self.accounts
            .get(key)
            .or(self.translated.get(key))
            .map(|t| {
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

impl Finance {
    /// Adds an event's lines, translated into each defined entity's functional currency
    /// (`translate`), to the translated books; an entity's lines of an event with a currency
    /// it has no rate for are left out whole (the event is listed as untranslated).
    fn translate(
        &mut self,
        event: &RecordedEvent,
        lines: &[crate::books::Posting],
        changed: &mut BTreeSet<String>,
    ) {
        for translation in self.translator.translate(event, lines) {
            let (entity, functional, lines) = match translation {
                Translation::Done {
                    entity,
                    currency,
                    lines,
                } => (entity, currency, lines),
                Translation::NoRate { .. } => {
                    if self.untranslated.last() != Some(&event.seq) {
                        self.untranslated.push(event.seq);
                    }
                    continue;
                }
            };
            for line in lines {
                let key = key::key("fn", &[&entity, line.account]);
                let total = self
                    .translated
                    .entry(key.clone())
                    .or_insert_with(|| AccountTotal {
                        entity: entity.clone(),
                        currency: functional.clone(),
                        account: line.account.to_owned(),
                        ..AccountTotal::default()
                    });
                if line.amount.is_sign_negative() {
                    total.credit -= line.amount;
                } else {
                    total.debit += line.amount;
                }
                changed.insert(key);
            }
        }
    }
}

fn period_key(entity: &str, period: Period) -> String {
    key::key("period", &[entity, &period.to_string()])
}

impl Finance {
    fn period_mut(&mut self, entity: &str, period: Period) -> (&mut PeriodBooks, String) {
        let key = period_key(entity, period);
        let books = self
            .periods
            .entry(key.clone())
            .or_insert_with(|| PeriodBooks {
                entity: entity.to_owned(),
                period: period.to_string(),
                ..PeriodBooks::default()
            });
        (books, key)
    }

    /// Governance events of the entity's subject: closes and reopens.
    fn govern(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        let entity = event.envelope.legal_entity.as_str();
        match &event.envelope.event {
            Event::LegalEntityDefined(_) => {
                if let Some(functional) = self.translator.observe(event) {
                    // Postings made in the functional currency before the entity was defined
                    // need no rate: they start its translated books. (Postings in other
                    // currencies before it are not translated.)
                    let before: Vec<AccountTotal> = self
                        .accounts
                        .values()
                        .filter(|t| t.entity == entity && t.currency == functional)
                        .cloned()
                        .collect();
                    for t in before {
                        let key = key::key("fn", &[entity, &t.account]);
                        self.translated.insert(key.clone(), t);
                        changed.insert(key);
                    }
                }
            }
            Event::RateSet(_) => {
                self.translator.observe(event);
            }
            Event::PeriodClosed(e) => {
                let (books, key) = self.period_mut(entity, e.period);
                let recorded = hex::encode(e.trial_balance_sha256);
                books.closed = Some(CloseMark {
                    seq: event.seq,
                    matches: recorded == books.digest() && e.events == books.events,
                    trial_balance_sha256: recorded,
                });
                changed.insert(key);
            }
            Event::PeriodReopened(e) => {
                let (books, key) = self.period_mut(entity, e.period);
                books.closed = None;
                books.reopened += 1;
                changed.insert(key);
            }
            Event::ApprovalRequested(e) => {
                let key = key::key("approval", &[entity, &e.request]);
                let held: serde_json::Value =
                    serde_json::from_str(&e.command).unwrap_or(serde_json::Value::Null);
                self.approvals.insert(
                    key.clone(),
                    ApprovalRow {
                        entity: entity.to_owned(),
                        request: e.request.clone(),
                        command_type: e.command_type.clone(),
                        requester: e.requester.to_string(),
                        asked_at: event.envelope.effective_at.to_string(),
                        seq: event.seq,
                        threshold: e
                            .threshold
                            .as_ref()
                            .map(|t| serde_json::to_value(t).expect("events serialise")),
                        data: held["data"].clone(),
                    },
                );
                changed.insert(key);
            }
            Event::ApprovalGranted(ledger::events::ApprovalGranted { request, .. })
            | Event::ApprovalRejected(ledger::events::ApprovalRejected { request, .. }) => {
                let key = key::key("approval", &[entity, request]);
                self.approvals.remove(&key);
                changed.insert(key);
            }
            _ => {}
        }
    }
}

impl Model for Finance {
    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>) {
        match event.envelope.subject {
            Subject::LegalEntity(_) => return self.govern(event, changed),
            Subject::Command(_) => {}
            _ => {
                let (books, key) = self.period_mut(
                    event.envelope.legal_entity.as_str(),
                    Period::of(event.envelope.effective_at),
                );
                books.events += 1;
                changed.insert(key);
            }
        }
        let posted = self.books.post(event);
        if posted.lines.is_empty() {
            return;
        }
        let period = Period::of(event.envelope.effective_at);
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
            let (books, _) = self.period_mut(&line.entity, period);
            let sums = books
                .accounts
                .entry(line.currency.clone())
                .or_default()
                .entry(line.account.name().to_owned())
                .or_default();
            sums.0 += line.debit();
            sums.1 += line.credit();
            if let Some(code) = &line.tax {
                let period = period.to_string();
                let key = key::key(
                    "tax",
                    &[
                        &line.entity,
                        &period,
                        &code.jurisdiction,
                        &code.rate,
                        &line.currency,
                    ],
                );
                let t = self.taxes.entry(key.clone()).or_insert_with(|| TaxTotals {
                    entity: line.entity.clone(),
                    period,
                    jurisdiction: code.jurisdiction.clone(),
                    rate: code.rate.clone(),
                    currency: line.currency.clone(),
                    ..TaxTotals::default()
                });
                match line.account {
                    Account::Revenue | Account::Discounts => t.sales -= line.amount,
                    Account::SalesReturns => t.returns += line.amount,
                    Account::TaxPayable => {
                        t.tax_charged += line.credit();
                        t.tax_reversed += line.debit();
                    }
                    _ => {}
                }
                changed.insert(key);
            }
            self.check.debits += line.debit();
            self.check.credits += line.credit();
            self.check.lines += 1;
            changed.insert(key);
        }
        self.translate(event, &posted.lines, changed);
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
    /// 3: a trial balance per entity and month (`period.…` rows), with its close; tax
    /// payable and the tax report (`tax.…` rows); commands waiting for approval.
    /// 4: supplier payments; a foreign-currency payable is cleared at its booked rate, the
    /// difference is a realised exchange gain or loss (`fn.<entity>.fx_realised`);
    /// intercompany transfers between entities' locations, and the consolidated query.
    const VERSION: u32 = 4;
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
        KeyShape {
            kind: "period",
            parts: &["entity", "period"],
            row: "PeriodRow: an entity's trial balance for one month, and its close",
        },
        KeyShape {
            kind: "approval",
            parts: &["entity", "request"],
            row: "ApprovalRow: a command waiting for a second person",
        },
        KeyShape {
            kind: "fn",
            parts: &["entity", "account"],
            row: "AccountRow: an account's totals translated into the entity's functional currency",
        },
        KeyShape {
            kind: "tax",
            parts: &["entity", "period", "jurisdiction", "rate", "currency"],
            row: "TaxRow: sales and tax of one jurisdiction and rate in one month",
        },
    ];
    type Row = FinanceRow;
    type Query = FinanceQuery;

    fn keys(&self) -> Box<dyn Iterator<Item = String> + '_> {
        Box::new(
            self.accounts
                .keys()
                .cloned()
                .chain(std::iter::once("check".to_owned()))
                .chain(self.periods.keys().cloned())
                .chain(self.approvals.keys().cloned())
                .chain(self.taxes.keys().cloned())
                .chain(self.translated.keys().cloned()),
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
            FinanceQuery::Consolidated {} => Ok(Answer::Value(
                serde_json::to_value(self.consolidated()).expect("rows serialise"),
            )),
            FinanceQuery::Period { entity, period } => {
                let period = query_period(period)?;
                let key = period_key(entity, period);
                let row = match self.periods.get(&key) {
                    Some(books) => books.row(),
                    None => PeriodBooks {
                        entity: entity.clone(),
                        period: period.to_string(),
                        ..PeriodBooks::default()
                    }
                    .row(),
                };
                Ok(Answer::Value(
                    serde_json::to_value(row).expect("rows serialise"),
                ))
            }
            FinanceQuery::TaxReport { entity, period } => {
                let period = query_period(period)?;
                let period = period.to_string();
                let rows: Vec<TaxRow> = self
                    .taxes
                    .values()
                    .filter(|t| &t.entity == entity && t.period == period)
                    .map(TaxTotals::row)
                    .collect();
                Ok(Answer::Value(json!({"rows": rows})))
            }
            FinanceQuery::Approvals {
                entity,
                after,
                limit,
            } => {
                let mut waiting: Vec<&ApprovalRow> = self
                    .approvals
                    .values()
                    .filter(|a| &a.entity == entity)
                    .collect();
                waiting.sort_by_key(|a| a.seq);
                let (approvals, next_after) = page(
                    waiting.into_iter().map(|a| {
                        (
                            format!("{:020}", a.seq),
                            serde_json::to_value(a).expect("rows"),
                        )
                    }),
                    after.as_deref(),
                    page_limit(*limit)?,
                );
                Ok(Answer::Value(
                    json!({"approvals": approvals, "next_after": next_after}),
                ))
            }
        }
    }
}
