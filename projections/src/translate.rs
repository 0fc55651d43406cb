//! Translation of the books into each legal entity's functional currency: every posting at the
//! exchange rate (`fx.rate_set`) in force on its event's effective date, rounded to the
//! functional currency's minor unit. The finance view and `erp journal` both translate through
//! this one place, so their functional figures agree.
//!
//! **Realised exchange differences.** A supplier invoice's payable in a foreign currency is an
//! open item: it is booked at the invoice date's rate. A payment clears it at that booked rate
//! (in proportion when it pays part), and the difference from the payment date's rate is a
//! realised gain (credit) or loss (debit) on `fx_realised`. What rounding each line to the
//! minor unit leaves over in an event goes to `fx_rounding`, so every event stays balanced.

use std::collections::BTreeMap;

use ledger::RecordedEvent;
use ledger::events::Event;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::books::{Posting, minor_units};

/// The account realised exchange gains (credit) and losses (debit) post to.
pub const FX_REALISED: &str = "fx_realised";
/// The account what rounding leaves over posts to.
pub const FX_ROUNDING: &str = "fx_rounding";

/// One translated line: the posting it comes from (by index in the event's lines; none for
/// the realised difference and rounding lines), its account and functional amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Functional {
    pub line: Option<usize>,
    pub account: &'static str,
    pub amount: Decimal,
}

/// One entity's part of an event, translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Translation {
    /// Its lines in the functional currency (balanced).
    Done {
        entity: String,
        currency: String,
        lines: Vec<Functional>,
    },
    /// A line is in a currency the entity has no rate for at the event's date: none of the
    /// entity's lines of the event are translated.
    NoRate { entity: String, currency: String },
}

/// An open item's balance: in its transaction currency and as booked in the functional one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Open {
    amount: Decimal,
    functional: Decimal,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Translator {
    /// Each defined legal entity's functional currency.
    functional: BTreeMap<String, String>,
    /// Rates into each entity's functional currency: entity -> currency -> the date from
    /// which a rate holds (`YYYY-MM-DD`, which sorts by date) -> rate.
    rates: BTreeMap<String, BTreeMap<String, BTreeMap<String, Decimal>>>,
    /// Open items in a foreign currency: entity -> item -> balance.
    open: BTreeMap<String, BTreeMap<String, Open>>,
}

impl Translator {
    /// Learns entities and rates. Returns the entity's functional currency when the event
    /// defines an entity for the first time.
    pub fn observe(&mut self, event: &RecordedEvent) -> Option<String> {
        let entity = event.envelope.legal_entity.as_str();
        match &event.envelope.event {
            Event::LegalEntityDefined(e) => {
                let functional = e.currency.as_str().to_owned();
                self.functional
                    .insert(entity.to_owned(), functional.clone())
                    .is_none()
                    .then_some(functional)
            }
            Event::RateSet(e) => {
                self.rates
                    .entry(entity.to_owned())
                    .or_default()
                    .entry(e.currency.as_str().to_owned())
                    .or_default()
                    .insert(String::from(e.from), e.rate.get());
                None
            }
            _ => None,
        }
    }

    /// The rate of `currency` into `entity`'s functional currency on `date`: the latest set
    /// from that date or before.
    pub(crate) fn rate(&self, entity: &str, currency: &str, date: &str) -> Option<Decimal> {
        self.rates
            .get(entity)?
            .get(currency)?
            .range(..=date.to_owned())
            .next_back()
            .map(|(_, rate)| *rate)
    }

    /// `amount` in `currency` in `entity`'s functional currency on `date` (`YYYY-MM-DD`):
    /// as it is for an entity not defined or its own currency, `None` without a rate.
    pub fn to_functional(
        &self,
        entity: &str,
        currency: &str,
        amount: Decimal,
        date: &str,
    ) -> Option<(String, Decimal)> {
        match self.functional.get(entity) {
            None => Some((currency.to_owned(), amount)),
            Some(f) if f == currency => Some((currency.to_owned(), amount)),
            Some(f) => self.rate(entity, currency, date).map(|rate| {
                (
                    f.clone(),
                    (amount * rate).round_dp_with_strategy(
                        minor_units(f),
                        rust_decimal::RoundingStrategy::MidpointAwayFromZero,
                    ),
                )
            }),
        }
    }

    /// Translates an event's lines, per defined entity with lines in it (entities not
    /// defined are left out), and moves the open items they open or settle.
    pub fn translate(&mut self, event: &RecordedEvent, lines: &[Posting]) -> Vec<Translation> {
        let mut entities: Vec<&str> = lines
            .iter()
            .map(|l| l.entity.as_str())
            .filter(|e| self.functional.contains_key(*e))
            .collect();
        entities.sort_unstable();
        entities.dedup();
        if entities.is_empty() {
            return Vec::new();
        }
        let date = String::from(ledger::values::Date::new(
            event.envelope.effective_at.as_datetime().date_naive(),
        ));
        entities
            .into_iter()
            .map(|entity| self.translate_entity(entity, &date, lines))
            .collect()
    }

    fn translate_entity(&mut self, entity: &str, date: &str, lines: &[Posting]) -> Translation {
        let functional = self.functional[entity].clone();
        let dp = minor_units(&functional);
        let mut out = Vec::new();
        let mut realised = Decimal::ZERO;
        let mut moves: Vec<(String, Decimal, Decimal)> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            if line.entity != entity {
                continue;
            }
            let at_rate = if line.currency == functional {
                line.amount
            } else {
                match self.rate(entity, &line.currency, date) {
                    Some(rate) => (line.amount * rate).round_dp(dp),
                    None => {
                        return Translation::NoRate {
                            entity: entity.to_owned(),
                            currency: line.currency.clone(),
                        };
                    }
                }
            };
            let mut amount = at_rate;
            if line.currency != functional
                && let Some(item) = &line.item
            {
                let open = self
                    .open
                    .get(entity)
                    .and_then(|items| items.get(item))
                    .cloned()
                    .unwrap_or_default();
                // A line against the item's balance settles it at the rate it was booked at
                // (all of it when it clears the balance, else in proportion).
                let settles = !open.amount.is_zero()
                    && open.amount.is_sign_negative() != line.amount.is_sign_negative()
                    && line.amount.abs() <= open.amount.abs();
                if settles {
                    amount = if line.amount == -open.amount {
                        -open.functional
                    } else {
                        (open.functional * line.amount / open.amount).round_dp(dp)
                    };
                    realised += at_rate - amount;
                }
                moves.push((item.clone(), line.amount, amount));
            }
            out.push(Functional {
                line: Some(i),
                account: line.account.name(),
                amount,
            });
        }
        for (item, amount, functional) in moves {
            let items = self.open.entry(entity.to_owned()).or_default();
            let open = items.entry(item.clone()).or_default();
            open.amount += amount;
            open.functional += functional;
            if open.amount.is_zero() {
                items.remove(&item);
            }
        }
        if !realised.is_zero() {
            out.push(Functional {
                line: None,
                account: FX_REALISED,
                amount: realised,
            });
        }
        let left: Decimal = out.iter().map(|l| l.amount).sum();
        if !left.is_zero() {
            out.push(Functional {
                line: None,
                account: FX_ROUNDING,
                amount: -left,
            });
        }
        Translation::Done {
            entity: entity.to_owned(),
            currency: functional,
            lines: out,
        }
    }
}
