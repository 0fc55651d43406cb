//! Exception rules and the actions people take on exceptions, and a carrier's proof of
//! delivery. The `exceptions` view raises and clears exceptions from the log; these commands
//! set the rules it uses and record who owns, resolved or snoozed one. An action must name a
//! kind with the subject shape that kind is about, and a subject that exists in the command's
//! legal entity: an order placed there (with that package shipped, or that return
//! authorised), a purchase order created there, or an item at one of its locations.

use ledger::Subject;
use ledger::events::{
    Event, ExceptionAssigned, ExceptionRef, ExceptionResolved, ExceptionRuleSet, ExceptionSnoozed,
    ExceptionSubject, OrderDelivered, OrderReleased, Resolution,
};

use crate::command::{
    AssignException, ConfirmDelivery, ResolveException, SetExceptionRule, SnoozeException,
};
use crate::decide::{Decider, Decision, Rejection, code, reject};

/// Longest snooze: a year of business time.
const SNOOZE_DAYS_MAX: i64 = 366;

impl Decider<'_> {
    /// `clock.ticked` on the entity's subject, when the tick is later than every effective
    /// time the entity has.
    pub(crate) fn tick_clock(&self) -> Result<Decision, Rejection> {
        let entity = &self.command.legal_entity;
        let previous = self.state.business_clock.get(entity).copied();
        match previous {
            Some(previous) if previous < self.at => Ok(vec![(
                Subject::LegalEntity(entity.clone()),
                Event::ClockTicked(ledger::events::ClockTicked { previous }),
            )]),
            Some(previous) => Err(reject(
                code::CLOCK_NOT_BEHIND,
                format!(
                    "effective_at {} is not after {previous}, the latest effective time legal entity {entity} already has; a tick only moves its clock forward",
                    self.at
                ),
            )),
            None => Err(reject(
                code::UNKNOWN_LEGAL_ENTITY,
                format!("legal entity {entity} has no events yet; nothing to tick"),
            )),
        }
    }

    pub(crate) fn confirm_delivery(&self, c: &ConfirmDelivery) -> Result<Decision, Rejection> {
        let order = self.order_of_entity(&c.order)?;
        let shipped = order.shipped_packages.get(&c.package).ok_or_else(|| {
            reject(
                code::UNKNOWN_PACKAGE,
                format!(
                    "order {} has no shipped package {} (a package is delivered after order.ship)",
                    c.order, c.package
                ),
            )
        })?;
        if shipped.delivered {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "package {} of order {} was already confirmed delivered",
                    c.package, c.order
                ),
            ));
        }
        if self.at < shipped.shipped_at {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "effective_at {} is before package {} left ({}); a delivery comes after its shipment",
                    self.at, c.package, shipped.shipped_at
                ),
            ));
        }
        Ok(vec![(
            Subject::Order(c.order.clone()),
            Event::OrderDelivered(OrderDelivered {
                order: c.order.clone(),
                package: c.package.clone(),
                proof: c.proof.clone(),
            }),
        )])
    }

    pub(crate) fn set_exception_rule(&self, c: &SetExceptionRule) -> Result<Decision, Rejection> {
        if let Some(rule) = &c.rule {
            let kind = c.kind.name();
            let most = match c.kind {
                ledger::events::ExceptionKind::ReceiptVariance
                | ledger::events::ExceptionKind::CountVariance => 1000,
                _ => 366,
            };
            if rule.blocks && !c.kind.may_block() {
                return Err(reject(
                    code::INVALID_EXCEPTION,
                    format!(
                        "rule.blocks: true for {kind}; only exceptions about an order that can still ship (order_unshipped, backorder_past_promise) may hold fulfilment"
                    ),
                ));
            }
            if rule.threshold > most {
                return Err(reject(
                    code::INVALID_THRESHOLD,
                    format!(
                        "rule.threshold: {} for {kind}; expected 0 to {most} ({})",
                        rule.threshold,
                        if most == 1000 { "percent" } else { "days" }
                    ),
                ));
            }
        }
        Ok(vec![(
            Subject::LegalEntity(self.command.legal_entity.clone()),
            Event::ExceptionRuleSet(ExceptionRuleSet {
                kind: c.kind.clone(),
                rule: c.rule.clone(),
            }),
        )])
    }

    pub(crate) fn assign_exception(&self, c: &AssignException) -> Result<Decision, Rejection> {
        self.exception_subject(&c.exception)?;
        Ok(vec![(
            c.exception.on.ledger_subject(&self.command.legal_entity),
            Event::ExceptionAssigned(ExceptionAssigned {
                exception: c.exception.clone(),
                owner: c.owner.clone(),
            }),
        )])
    }

    /// Records the resolution; an order held because this exception blocked it is released
    /// in the same batch.
    pub(crate) fn resolve_exception(&self, c: &ResolveException) -> Result<Decision, Rejection> {
        self.exception_subject(&c.exception)?;
        if c.resolution == Resolution::Other && c.note.trim().is_empty() {
            return Err(reject(
                code::REASON_REQUIRED,
                "note is empty; a resolution of Other needs a note saying what was done",
            ));
        }
        let mut decision = vec![(
            c.exception.on.ledger_subject(&self.command.legal_entity),
            Event::ExceptionResolved(ExceptionResolved {
                exception: c.exception.clone(),
                resolution: c.resolution.clone(),
                note: c.note.clone(),
            }),
        )];
        if let ExceptionSubject::Order { order } = &c.exception.on
            && self.state.orders.get(order).and_then(|o| o.hold.as_ref())
                == Some(&c.exception.kind.hold_reason())
        {
            decision.push((
                Subject::Order(order.clone()),
                Event::OrderReleased(OrderReleased {
                    order: order.clone(),
                }),
            ));
        }
        Ok(decision)
    }

    pub(crate) fn snooze_exception(&self, c: &SnoozeException) -> Result<Decision, Rejection> {
        self.exception_subject(&c.exception)?;
        let latest = self.at.as_datetime() + chrono::Duration::days(SNOOZE_DAYS_MAX);
        if c.until <= self.at || c.until.as_datetime() > latest {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "until: {}; expected a time after effective_at ({}) and at most {SNOOZE_DAYS_MAX} days later",
                    c.until, self.at
                ),
            ));
        }
        Ok(vec![(
            c.exception.on.ledger_subject(&self.command.legal_entity),
            Event::ExceptionSnoozed(ExceptionSnoozed {
                exception: c.exception.clone(),
                until: c.until,
                note: c.note.clone(),
            }),
        )])
    }

    fn order_of_entity(
        &self,
        id: &ledger::values::OrderId,
    ) -> Result<&crate::state::OrderState, Rejection> {
        let order =
            self.state.orders.get(id).ok_or_else(|| {
                reject(code::UNKNOWN_ORDER, format!("no order `{id}` was placed"))
            })?;
        if order.entity != self.command.legal_entity {
            return Err(reject(
                code::OTHER_ENTITY,
                format!(
                    "order {id} was placed in legal entity {}; send the command as {}",
                    order.entity, order.entity
                ),
            ));
        }
        Ok(order)
    }

    /// The exception's kind is about subjects of its shape, and the subject exists in the
    /// command's legal entity.
    fn exception_subject(&self, exception: &ExceptionRef) -> Result<(), Rejection> {
        let (kind, on) = (&exception.kind, &exception.on);
        if kind.subject_shape() != on.shape() {
            return Err(reject(
                code::INVALID_EXCEPTION,
                format!(
                    "exception.on names a subject of shape {}; {} exceptions are about one of shape {}",
                    on.shape(),
                    kind.name(),
                    kind.subject_shape()
                ),
            ));
        }
        match on {
            ExceptionSubject::Order { order } => {
                self.order_of_entity(order)?;
            }
            ExceptionSubject::Shipment { order, package } => {
                if !self
                    .order_of_entity(order)?
                    .shipped_packages
                    .contains_key(package)
                {
                    return Err(reject(
                        code::UNKNOWN_PACKAGE,
                        format!("order {order} has no shipped package {package}"),
                    ));
                }
            }
            ExceptionSubject::Return { order, return_id } => {
                if !self.order_of_entity(order)?.returns.contains_key(return_id) {
                    return Err(reject(
                        code::UNKNOWN_RETURN,
                        format!("order {order} has no return {return_id}"),
                    ));
                }
            }
            ExceptionSubject::PurchaseOrder { purchase_order } => {
                if !self.state.purchase_orders.contains_key(purchase_order) {
                    return Err(reject(
                        code::UNKNOWN_PURCHASE_ORDER,
                        format!("no purchase order `{purchase_order}` was created"),
                    ));
                }
            }
            ExceptionSubject::Ledger { seq } => {
                if *seq == 0 {
                    return Err(reject(
                        code::INVALID_EXCEPTION,
                        "exception.on.Ledger.seq: 0; ledger sequences start at 1",
                    ));
                }
            }
            ExceptionSubject::Stock { sku, location } => {
                self.item(sku)?;
                self.location(location)?;
                if let Some(owner) = self.state.location_entities.get(location)
                    && *owner != self.command.legal_entity
                {
                    return Err(reject(
                        code::OTHER_ENTITY,
                        format!(
                            "location {location} belongs to legal entity {owner}; send the command as {owner}"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
