//! Governance: legal entities, maker-checker thresholds and approvals, and period close.
//!
//! - **Legal entities** are defined by `legal_entity.define` (functional currency, country).
//!   Once one is defined, a command naming an entity that is not is refused
//!   `unknown_legal_entity` (a ledger that has defined none accepts any, as before entities
//!   could be defined). Governance commands always need their entity defined.
//! - **Thresholds** are events (`policy.set_threshold`), per entity and command type, so the
//!   audit shows which limit was in force: a command measuring more is kept whole in an
//!   `approval.requested` event and decided only when a second, different person approves it
//!   (`approval.approve`); at or below, it passes and its outcome record names the threshold.
//!   Purchase orders keep their own approval status; their limit comes from the same events.
//! - **Periods**: `period.close` closes a month of an entity's books on a balanced trial
//!   balance that covers every event effective in it; nothing effective in a closed month is
//!   accepted (`period_closed`) until a `period.reopen` approved by a second person.

use ledger::events::{
    ApprovalGranted, ApprovalRejected, ApprovalRequested, Event, LegalEntityDefined, Measure,
    PeriodClosed, PeriodReopened, RateSet, ThresholdApplied, ThresholdSet,
};
use ledger::values::{Money, Period};
use ledger::{Envelope, Subject};
use rust_decimal::Decimal;

use crate::command::{
    ApproveRequest, ClosePeriod, Command, CommandBody, DefineLegalEntity, RejectRequest,
    ReopenPeriod, SetRate, SetThreshold,
};
use crate::decide::{Decider, Decision, Rejection, code, reject};
use crate::state::{EntityState, State, Threshold, WaitingApproval};

/// What a threshold on a command type measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureKind {
    /// Base units moved, counted off or scrapped (the write model holds no costs).
    Quantity,
    /// Money, in the limit's currency.
    Value,
}

/// The command types a threshold may be set on, and what it measures for each.
pub const THRESHOLD_TYPES: &[(&str, MeasureKind)] = &[
    ("stock.adjust", MeasureKind::Quantity),
    ("stock.count", MeasureKind::Quantity),
    ("stock.scrap", MeasureKind::Quantity),
    ("order.refund", MeasureKind::Value),
    ("purchase.create_order", MeasureKind::Value),
    ("purchase.record_invoice", MeasureKind::Value),
];

/// Command types accepted whatever period their effective time falls in: master data, holds
/// and channel rules (which post nothing to the books) and governance itself. An approved
/// command is checked as its own type.
pub const OUTSIDE_PERIODS: &[&str] = &[
    "item.define",
    "location.define",
    "location.set_shipping_rate",
    "location.set_daily_capacity",
    "channel.define",
    "channel.set_shelf_life",
    "supplier.define",
    "legal_entity.define",
    "stock.set_channel_allocation",
    "stock.place_hold",
    "stock.release_hold",
    "stock.expire_hold",
    "clock.tick",
    "order.hold",
    "order.release",
    "policy.set_threshold",
    "fx.set_rate",
    "approval.approve",
    "approval.reject",
    "period.close",
    "period.reopen",
    "order.confirm_delivery",
    "exception.set_rule",
    "exception.assign",
    "exception.resolve",
    "exception.snooze",
];

/// Applies an event of a legal entity's subject.
pub(crate) fn evolve(state: &mut EntityState, envelope: &Envelope) {
    match &envelope.event {
        Event::LegalEntityDefined(e) => state.defined = Some(e.clone()),
        Event::ThresholdSet(e) => match &e.limit {
            Some(limit) => {
                state.thresholds.insert(
                    e.command_type.clone(),
                    Threshold {
                        limit: limit.clone(),
                        set_by: envelope.actor.id.clone(),
                        set_at: envelope.effective_at,
                    },
                );
            }
            None => {
                state.thresholds.remove(&e.command_type);
            }
        },
        Event::ApprovalRequested(e) => {
            state.approvals.insert(
                e.request.clone(),
                WaitingApproval {
                    command_type: e.command_type.clone(),
                    command: e.command.clone(),
                    requester: e.requester.clone(),
                    threshold: e.threshold.clone(),
                },
            );
        }
        Event::ApprovalGranted(ApprovalGranted { request, .. })
        | Event::ApprovalRejected(ApprovalRejected { request, .. }) => {
            state.approvals.remove(request);
        }
        Event::PeriodClosed(e) => {
            state.closed.insert(e.period.index(), e.clone());
        }
        Event::PeriodReopened(e) => {
            state.closed.remove(&e.period.index());
        }
        _ => {}
    }
}

fn is_governance(body: &CommandBody) -> bool {
    matches!(
        body,
        CommandBody::SetThreshold(_)
            | CommandBody::SetRate(_)
            | CommandBody::ApproveRequest(_)
            | CommandBody::RejectRequest(_)
            | CommandBody::ClosePeriod(_)
            | CommandBody::ReopenPeriod(_)
    )
}

/// Before any rule: the command's legal entity must be defined (once any is, and always for
/// governance), and the month of its effective time open.
pub(crate) fn admit(state: &State, command: &Command) -> Result<(), Rejection> {
    let entity = state
        .entities
        .get(&command.legal_entity)
        .filter(|e| e.defined.is_some());
    let Some(entity) = entity else {
        let defining = matches!(command.body, CommandBody::DefineLegalEntity(_));
        let any_defined = state.entities.values().any(|e| e.defined.is_some());
        if !defining && (any_defined || is_governance(&command.body)) {
            return Err(reject(
                code::UNKNOWN_LEGAL_ENTITY,
                format!(
                    "legal entity {} is not defined; define it first with legal_entity.define (name, functional currency, country)",
                    command.legal_entity
                ),
            ));
        }
        return Ok(());
    };
    let kind = command.body.type_name();
    if !OUTSIDE_PERIODS.contains(&kind) {
        let period = Period::of(command.effective_at);
        if entity.closed.contains_key(&period.index()) {
            return Err(reject(
                code::PERIOD_CLOSED,
                format!(
                    "{kind} is effective at {}, in {period}, which is closed in {}'s books; a period.reopen approved by a second person opens it again",
                    command.effective_at, command.legal_entity
                ),
            ));
        }
    }
    Ok(())
}

/// What `kind`'s decision measures against a threshold, if it is a type thresholds apply to.
fn measured(kind: &str, decision: &Decision) -> Option<Measure> {
    let quantity = |f: &dyn Fn(&Event) -> Option<i64>| {
        let total: i64 = decision.iter().filter_map(|(_, e)| f(e)).sum();
        Measure::Quantity(ledger::values::Qty::new(total).expect("decided quantities are bounded"))
    };
    Some(match kind {
        "stock.adjust" => quantity(&|e| match e {
            Event::StockAdjusted(a) => Some(a.delta.get().abs()),
            _ => None,
        }),
        "stock.count" => quantity(&|e| match e {
            Event::StockCounted(c) => Some(c.variance.get().abs()),
            _ => None,
        }),
        "stock.scrap" => quantity(&|e| match e {
            Event::StockScrapped(s) => Some(s.qty.get()),
            _ => None,
        }),
        "order.refund" => decision.iter().find_map(|(_, e)| match e {
            Event::OrderRefunded(r) => Some(Measure::Value(r.amount)),
            _ => None,
        })?,
        // The price difference against the order, in absolute value: an invoice that charges
        // more or less than agreed.
        "purchase.record_invoice" => decision.iter().find_map(|(_, e)| match e {
            Event::InvoiceRecorded(i) => {
                let currency = i.lines.first()?.unit_cost.currency;
                let variance: Decimal = i
                    .lines
                    .iter()
                    .map(|l| {
                        ((l.unit_cost.amount - l.po_unit_cost.amount) * Decimal::from(l.qty.get()))
                            .abs()
                    })
                    .sum();
                Some(Measure::Value(Money {
                    amount: variance,
                    currency,
                }))
            }
            _ => None,
        })?,
        "purchase.create_order" => decision.iter().find_map(|(_, e)| match e {
            Event::PurchaseOrderCreated(p) => {
                let value: Decimal = p
                    .lines
                    .iter()
                    .map(|l| l.unit_cost.amount * Decimal::from(l.qty.get()))
                    .sum();
                Some(Measure::Value(Money {
                    amount: value,
                    currency: p.currency,
                }))
            }
            _ => None,
        })?,
        _ => return None,
    })
}

/// Whether `measured` is beyond `limit`. An amount in another currency than the limit's is:
/// without a rate there is no comparing them, so a person decides.
pub fn exceeds(limit: &Measure, measured: &Measure) -> bool {
    match (limit, measured) {
        (Measure::Quantity(l), Measure::Quantity(m)) => m > l,
        (Measure::Value(l), Measure::Value(m)) => l.currency != m.currency || m.amount > l.amount,
        _ => true,
    }
}

/// The threshold in force for `command` and what its decision measured against it.
fn applied(state: &State, command: &Command, decision: &Decision) -> Option<ThresholdApplied> {
    let kind = command.body.type_name();
    let threshold = state
        .entities
        .get(&command.legal_entity)?
        .thresholds
        .get(kind)?;
    Some(ThresholdApplied {
        command_type: kind.to_owned(),
        limit: threshold.limit.clone(),
        measured: measured(kind, decision)?,
        set_by: threshold.set_by.clone(),
        set_at: threshold.set_at,
    })
}

/// The threshold recorded with an accepted command's outcome: the one it was within (or, for
/// a purchase order, the one that decided whether it waits). `None` when no threshold applies
/// or the command was held for approval (the request names it).
pub fn threshold_in_force(
    state: &State,
    command: &Command,
    decision: &Decision,
) -> Option<ThresholdApplied> {
    if decision
        .iter()
        .any(|(_, e)| matches!(e, Event::ApprovalRequested(_)))
    {
        return None;
    }
    applied(state, command, decision)
}

/// A decision beyond its threshold becomes a request for approval; anything else is kept.
pub(crate) fn hold_above_threshold(
    state: &State,
    command: &Command,
    decision: Decision,
) -> Decision {
    // Purchase orders wait in their own status (`purchase.approve`).
    if matches!(command.body, CommandBody::CreatePurchaseOrder(_)) {
        return decision;
    }
    match applied(state, command, &decision) {
        Some(threshold) if exceeds(&threshold.limit, &threshold.measured) => {
            vec![request(command, Some(threshold))]
        }
        _ => decision,
    }
}

fn request(command: &Command, threshold: Option<ThresholdApplied>) -> (Subject, Event) {
    (
        Subject::LegalEntity(command.legal_entity.clone()),
        Event::ApprovalRequested(ApprovalRequested {
            request: command.command_id.to_string(),
            command_type: command.body.type_name().to_owned(),
            command: serde_json::to_string(command).expect("commands serialise"),
            requester: command.actor.id.clone(),
            threshold,
        }),
    )
}

/// The purchase-order approval limit in force for an order of `value`: the entity's
/// `purchase.create_order` threshold when one is set, else the processor's configured limit.
pub(crate) fn purchase_order_within_limit(state: &State, command: &Command, value: Money) -> bool {
    let threshold = state
        .entities
        .get(&command.legal_entity)
        .and_then(|e| e.thresholds.get("purchase.create_order"));
    match threshold {
        Some(t) => !exceeds(&t.limit, &Measure::Value(value)),
        None => value.amount <= state.purchase_policy.approval_limit,
    }
}

fn entity<'s>(state: &'s State, command: &Command) -> &'s EntityState {
    state
        .entities
        .get(&command.legal_entity)
        .expect("admit checked the entity is defined")
}

impl Decider<'_> {
    fn entity_subject(&self) -> Subject {
        Subject::LegalEntity(self.command.legal_entity.clone())
    }

    pub(crate) fn define_legal_entity(&self, c: &DefineLegalEntity) -> Result<Decision, Rejection> {
        let id = &self.command.legal_entity;
        if let Some(existing) = self.state.entities.get(id).and_then(|e| e.defined.as_ref())
            && existing.currency != c.currency
        {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "the functional currency of {id} is {}; it cannot change to {} (its books are kept in it)",
                    existing.currency.as_str(),
                    c.currency.as_str()
                ),
            ));
        }
        Ok(vec![(
            self.entity_subject(),
            Event::LegalEntityDefined(LegalEntityDefined {
                entity: id.clone(),
                name: c.name.clone(),
                currency: c.currency,
                country: c.country.as_str().to_owned(),
            }),
        )])
    }

    pub(crate) fn set_threshold(&self, c: &SetThreshold) -> Result<Decision, Rejection> {
        let Some(&(_, kind)) = THRESHOLD_TYPES
            .iter()
            .find(|(name, _)| *name == c.command_type)
        else {
            let names: Vec<&str> = THRESHOLD_TYPES.iter().map(|(n, _)| *n).collect();
            return Err(reject(
                code::INVALID_THRESHOLD,
                format!(
                    "command_type `{}` takes no threshold; thresholds apply to {}",
                    c.command_type,
                    names.join(", ")
                ),
            ));
        };
        match (&c.limit, kind) {
            (None, _) => {}
            (Some(Measure::Quantity(_)), MeasureKind::Quantity) => {}
            (Some(Measure::Value(m)), MeasureKind::Value) => {
                crate::decide::non_negative_money("limit.Value.amount", m)?;
            }
            (Some(_), MeasureKind::Quantity) => {
                return Err(reject(
                    code::INVALID_THRESHOLD,
                    format!(
                        "{} is measured in base units; expected a limit like {{\"Quantity\": 50}}",
                        c.command_type
                    ),
                ));
            }
            (Some(_), MeasureKind::Value) => {
                return Err(reject(
                    code::INVALID_THRESHOLD,
                    format!(
                        "{} is measured in money; expected a limit like {{\"Value\": {{\"amount\": \"250.00\", \"currency\": \"GBP\"}}}}",
                        c.command_type
                    ),
                ));
            }
        }
        Ok(vec![(
            self.entity_subject(),
            Event::ThresholdSet(ThresholdSet {
                command_type: c.command_type.clone(),
                limit: c.limit.clone(),
            }),
        )])
    }

    fn waiting(&self, request: &uuid::Uuid) -> Result<&WaitingApproval, Rejection> {
        entity(self.state, self.command)
            .approvals
            .get(&request.to_string())
            .ok_or_else(|| {
                reject(
                    code::UNKNOWN_APPROVAL,
                    format!(
                        "no command waits for approval as request {request} in {} (it was never held, or was approved or rejected already)",
                        self.command.legal_entity
                    ),
                )
            })
    }

    pub(crate) fn approve(&self, c: &ApproveRequest) -> Result<Decision, Rejection> {
        let waiting = self.waiting(&c.request)?;
        if waiting.requester == self.actor.id {
            return Err(reject(
                code::APPROVER_IS_REQUESTER,
                format!(
                    "{} asked for request {}; a second, different person must approve it",
                    self.actor.id, c.request
                ),
            ));
        }
        let mut held = crate::command::decode(waiting.command.as_bytes()).map_err(|e| {
            reject(
                code::INVALID_TRANSITION,
                format!("the waiting command no longer decodes ({e}); reject it"),
            )
        })?;
        // Its events take effect now, when approved.
        held.effective_at = self.at;
        admit(self.state, &held)?;
        let decision = crate::decide::decide_approved(self.state, &held, &self.actor.id)?;
        if let Some(asked) = &waiting.threshold
            && let Some(now) = measured(&waiting.command_type, &decision)
            && now != asked.measured
        {
            return Err(reject(
                code::STALE_APPROVAL,
                format!(
                    "{} measured {} when it was asked and {} now (the stock moved since); reject this request and send the command again",
                    waiting.command_type,
                    show(&asked.measured),
                    show(&now)
                ),
            ));
        }
        let mut events = vec![(
            self.entity_subject(),
            Event::ApprovalGranted(ApprovalGranted {
                request: c.request.to_string(),
                command_type: waiting.command_type.clone(),
                requester: waiting.requester.clone(),
                approver: self.actor.id.clone(),
                threshold: waiting.threshold.clone(),
            }),
        )];
        events.extend(decision);
        Ok(events)
    }

    pub(crate) fn reject_request(&self, c: &RejectRequest) -> Result<Decision, Rejection> {
        let waiting = self.waiting(&c.request)?;
        if c.reason.trim().is_empty() {
            return Err(reject(
                code::REASON_REQUIRED,
                "reason is empty; say why the request is rejected",
            ));
        }
        Ok(vec![(
            self.entity_subject(),
            Event::ApprovalRejected(ApprovalRejected {
                request: c.request.to_string(),
                command_type: waiting.command_type.clone(),
                requester: waiting.requester.clone(),
                approver: self.actor.id.clone(),
                reason: c.reason.clone(),
            }),
        )])
    }

    pub(crate) fn close_period(&self, c: &ClosePeriod) -> Result<Decision, Rejection> {
        let id = &self.command.legal_entity;
        let p = c.period;
        if self.at < p.end() {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "{p} ends at {}; a period closes after it ends (this command is effective at {})",
                    p.end(),
                    self.at
                ),
            ));
        }
        if entity(self.state, self.command)
            .closed
            .contains_key(&p.index())
        {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("{p} is already closed in {id}'s books"),
            ));
        }
        let events = period_events(self.state, self.command, p);
        if c.events != events {
            return Err(reject(
                code::PERIOD_CHANGED,
                format!(
                    "{events} events are effective in {p} for {id}; the trial balance sent covers {}: take it again from the finance view (`erp period close` does)",
                    c.events
                ),
            ));
        }
        let digest = hex::decode(&c.trial_balance_sha256)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                reject(
                    code::INVALID_TRIAL_BALANCE,
                    format!(
                        "trial_balance_sha256 `{}` is not 64 hex digits",
                        c.trial_balance_sha256
                    ),
                )
            })?;
        let mut seen = Vec::new();
        for (i, t) in c.totals.iter().enumerate() {
            let currency = t.debits.currency;
            if t.credits.currency != currency || seen.contains(&currency) {
                return Err(reject(
                    code::INVALID_TRIAL_BALANCE,
                    format!(
                        "totals[{i}]: expected one line per currency with debits and credits in it ({} and {})",
                        currency.as_str(),
                        t.credits.currency.as_str()
                    ),
                ));
            }
            seen.push(currency);
            if t.debits.amount != t.credits.amount {
                return Err(reject(
                    code::UNBALANCED,
                    format!(
                        "in {}, debits {} and credits {} differ by {}: a period closes only on a balanced trial balance",
                        currency.as_str(),
                        t.debits.amount,
                        t.credits.amount,
                        t.debits.amount - t.credits.amount
                    ),
                ));
            }
        }
        Ok(vec![(
            self.entity_subject(),
            Event::PeriodClosed(PeriodClosed {
                period: p,
                events,
                totals: c.totals.clone(),
                trial_balance_sha256: digest,
            }),
        )])
    }

    pub(crate) fn set_rate(&self, c: &SetRate) -> Result<Decision, Rejection> {
        let functional = entity(self.state, self.command)
            .defined
            .as_ref()
            .expect("admit checked the entity is defined")
            .currency;
        if c.currency == functional {
            return Err(reject(
                code::CURRENCY_MISMATCH,
                format!(
                    "{} is {}'s functional currency; rates are set for the other currencies its books see",
                    functional.as_str(),
                    self.command.legal_entity
                ),
            ));
        }
        if c.source.trim().is_empty() {
            return Err(reject(
                code::REASON_REQUIRED,
                "source is empty; say where the rate comes from (a central bank's reference rate, a bank's quote)",
            ));
        }
        Ok(vec![(
            self.entity_subject(),
            Event::RateSet(RateSet {
                currency: c.currency,
                functional,
                rate: c.rate,
                from: c.from,
                source: c.source.clone(),
            }),
        )])
    }

    pub(crate) fn reopen_period(&self, c: &ReopenPeriod) -> Result<Decision, Rejection> {
        let p = c.period;
        if !entity(self.state, self.command)
            .closed
            .contains_key(&p.index())
        {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("{p} is not closed in {}'s books", self.command.legal_entity),
            ));
        }
        if c.reason.trim().is_empty() {
            return Err(reject(
                code::REASON_REQUIRED,
                "reason is empty; say why the period must open again",
            ));
        }
        let Some(approver) = self.approved_by else {
            // Always a second person's decision.
            return Ok(vec![request(self.command, None)]);
        };
        Ok(vec![(
            self.entity_subject(),
            Event::PeriodReopened(PeriodReopened {
                period: p,
                reason: c.reason.clone(),
                requester: self.actor.id.clone(),
                approver: approver.clone(),
            }),
        )])
    }
}

/// Events effective in `period` for the command's entity, as the write model counted them.
pub fn period_events(state: &State, command: &Command, period: Period) -> u64 {
    state
        .period_events
        .get(&command.legal_entity)
        .and_then(|m| m.get(&period.index()))
        .copied()
        .unwrap_or(0)
}

fn show(m: &Measure) -> String {
    match m {
        Measure::Quantity(q) => format!("{} units", q.get()),
        Measure::Value(v) => format!("{} {}", v.amount, v.currency.as_str()),
    }
}
