//! Purchasing deciders: purchase orders from creation to close, receipts matched to their
//! lines, and landed-cost charges spread over what was received. The approval rule and the
//! over-receipt tolerance come from `State::purchase_policy`.

use rust_decimal::Decimal;

use ledger::Subject;
use ledger::events::*;
use ledger::values::{ActorId, Money, PurchaseOrderId, QtyDelta};

use crate::command::*;
use crate::decide::{
    Decider, Decision, Rejection, code, non_negative_money, positive, qty, reject,
};
use crate::state::{PoStatus, PurchaseOrderState};

/// The name recorded as approver when a purchase order is within the approval limit.
pub const AUTO_APPROVER: &str = "policy:auto-approval";

impl<'a> Decider<'a> {
    fn purchase_order(&self, id: &PurchaseOrderId) -> Result<&'a PurchaseOrderState, Rejection> {
        self.state.purchase_orders.get(id).ok_or_else(|| {
            reject(
                code::UNKNOWN_PURCHASE_ORDER,
                format!("no purchase order `{id}` was created"),
            )
        })
    }

    fn po_in(
        &self,
        id: &PurchaseOrderId,
        allowed: &[PoStatus],
        doing: &str,
    ) -> Result<&'a PurchaseOrderState, Rejection> {
        let po = self.purchase_order(id)?;
        if !allowed.contains(&po.status) {
            let expected: Vec<&str> = allowed.iter().map(|s| s.name()).collect();
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "purchase order {id} is {}; to {doing} it must be {}",
                    po.status.name(),
                    expected.join(" or ")
                ),
            ));
        }
        Ok(po)
    }

    pub(crate) fn create_purchase_order(
        &self,
        c: &CreatePurchaseOrder,
    ) -> Result<Decision, Rejection> {
        if self.state.purchase_orders.contains_key(&c.purchase_order) {
            return Err(reject(
                code::ALREADY_EXISTS,
                format!("purchase order {} already exists", c.purchase_order),
            ));
        }
        if !self.state.suppliers.contains_key(&c.supplier) {
            return Err(reject(
                code::UNKNOWN_SUPPLIER,
                format!("no supplier `{}` is defined", c.supplier),
            ));
        }
        if c.lines.is_empty() {
            return Err(reject(
                code::INVALID_QUANTITY,
                "a purchase order needs at least one line",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut value = Decimal::ZERO;
        for l in &c.lines {
            if !seen.insert(l.line) {
                return Err(reject(
                    code::ALREADY_EXISTS,
                    format!("line {} appears twice", l.line),
                ));
            }
            self.item(&l.sku)?;
            self.location(&l.location)?;
            let n = positive(&format!("lines[line {}].qty", l.line), l.qty)?;
            non_negative_money(&format!("lines[line {}].unit_cost", l.line), &l.unit_cost)?;
            if l.unit_cost.currency != c.currency {
                return Err(reject(
                    code::CURRENCY_MISMATCH,
                    format!(
                        "line {} costs in {}; the order is in {}",
                        l.line, l.unit_cost.currency, c.currency
                    ),
                ));
            }
            value += l.unit_cost.amount * Decimal::from(n);
        }
        let subject = Subject::PurchaseOrder(c.purchase_order.clone());
        let mut events = vec![(
            subject.clone(),
            Event::PurchaseOrderCreated(PurchaseOrderCreated {
                purchase_order: c.purchase_order.clone(),
                supplier: c.supplier.clone(),
                currency: c.currency,
                lines: c
                    .lines
                    .iter()
                    .map(|l| PurchaseLine {
                        line: l.line,
                        sku: l.sku.clone(),
                        location: l.location.clone(),
                        qty: l.qty,
                        unit_cost: l.unit_cost,
                    })
                    .collect(),
                expected_on: c.expected_on,
            }),
        )];
        let within = crate::governance::purchase_order_within_limit(
            self.state,
            self.command,
            ledger::values::Money {
                amount: value,
                currency: c.currency,
            },
        );
        if within {
            events.push((
                subject,
                Event::PurchaseOrderApproved(PurchaseOrderApproved {
                    purchase_order: c.purchase_order.clone(),
                    approver: ActorId::new(AUTO_APPROVER).expect("valid actor id"),
                }),
            ));
        }
        Ok(events)
    }

    /// Approval and rejection: only of an order waiting for it, never by its requester.
    fn approver_for(&self, id: &PurchaseOrderId, doing: &str) -> Result<ActorId, Rejection> {
        let po = self.po_in(id, &[PoStatus::PendingApproval], doing)?;
        if po.requester == self.actor.id {
            return Err(reject(
                code::APPROVER_IS_REQUESTER,
                format!(
                    "{} requested purchase order {id}, which is above the approval limit of {} {}; someone else must {doing} it",
                    self.actor.id, self.state.purchase_policy.approval_limit, po.currency
                ),
            ));
        }
        Ok(self.actor.id.clone())
    }

    pub(crate) fn approve_purchase_order(
        &self,
        c: &ApprovePurchaseOrder,
    ) -> Result<Decision, Rejection> {
        let approver = self.approver_for(&c.purchase_order, "approve")?;
        Ok(vec![(
            Subject::PurchaseOrder(c.purchase_order.clone()),
            Event::PurchaseOrderApproved(PurchaseOrderApproved {
                purchase_order: c.purchase_order.clone(),
                approver,
            }),
        )])
    }

    pub(crate) fn reject_purchase_order(
        &self,
        c: &RejectPurchaseOrder,
    ) -> Result<Decision, Rejection> {
        let approver = self.approver_for(&c.purchase_order, "reject")?;
        Ok(vec![(
            Subject::PurchaseOrder(c.purchase_order.clone()),
            Event::PurchaseOrderRejected(PurchaseOrderRejected {
                purchase_order: c.purchase_order.clone(),
                approver,
                reason: c.reason.clone(),
            }),
        )])
    }

    pub(crate) fn send_purchase_order(&self, c: &SendPurchaseOrder) -> Result<Decision, Rejection> {
        self.po_in(&c.purchase_order, &[PoStatus::Approved], "send")?;
        Ok(vec![(
            Subject::PurchaseOrder(c.purchase_order.clone()),
            Event::PurchaseOrderSent(PurchaseOrderSent {
                purchase_order: c.purchase_order.clone(),
            }),
        )])
    }

    pub(crate) fn cancel_purchase_remaining(
        &self,
        c: &CancelPurchaseRemaining,
    ) -> Result<Decision, Rejection> {
        self.po_in(
            &c.purchase_order,
            &[
                PoStatus::PendingApproval,
                PoStatus::Approved,
                PoStatus::Sent,
            ],
            "cancel what remains of",
        )?;
        Ok(vec![(
            Subject::PurchaseOrder(c.purchase_order.clone()),
            Event::PurchaseOrderClosed(PurchaseOrderClosed {
                purchase_order: c.purchase_order.clone(),
                reason: format!("remaining cancelled: {}", c.reason),
            }),
        )])
    }

    pub(crate) fn close_purchase_order(
        &self,
        c: &ClosePurchaseOrder,
    ) -> Result<Decision, Rejection> {
        let po = self.po_in(
            &c.purchase_order,
            &[PoStatus::Approved, PoStatus::Sent],
            "close",
        )?;
        let open: Vec<String> = po
            .lines
            .iter()
            .filter(|(_, l)| l.received < l.ordered)
            .map(|(n, l)| format!("line {n} ({} of {} received)", l.received, l.ordered))
            .collect();
        if !open.is_empty() {
            return Err(reject(
                code::LINES_OPEN,
                format!(
                    "purchase order {} has open lines: {}; receive them or use purchase.cancel_remaining",
                    c.purchase_order,
                    open.join(", ")
                ),
            ));
        }
        Ok(vec![(
            Subject::PurchaseOrder(c.purchase_order.clone()),
            Event::PurchaseOrderClosed(PurchaseOrderClosed {
                purchase_order: c.purchase_order.clone(),
                reason: "fully received".into(),
            }),
        )])
    }

    /// A receipt against a purchase order line: the line must be open and match, and the
    /// receipt may not take it past ordered + tolerance.
    pub(crate) fn match_receipt(
        &self,
        c: &Receive,
        purchase: &PurchaseRef,
        n: i64,
    ) -> Result<(Subject, Event), Rejection> {
        let po = self.po_in(
            &purchase.purchase_order,
            &[PoStatus::Approved, PoStatus::Sent],
            "receive against",
        )?;
        let line = po.lines.get(&purchase.line).ok_or_else(|| {
            reject(
                code::UNKNOWN_LINE,
                format!(
                    "purchase order {} has no line {}",
                    purchase.purchase_order, purchase.line
                ),
            )
        })?;
        if line.sku != c.sku || line.location != c.location {
            return Err(reject(
                code::PURCHASE_LINE_MISMATCH,
                format!(
                    "purchase order {} line {} is for {} at {}, not {} at {}",
                    purchase.purchase_order,
                    purchase.line,
                    line.sku,
                    line.location,
                    c.sku,
                    c.location
                ),
            ));
        }
        if c.unit_cost.currency != po.currency {
            return Err(reject(
                code::CURRENCY_MISMATCH,
                format!(
                    "unit_cost is in {}; purchase order {} is in {}",
                    c.unit_cost.currency, purchase.purchase_order, po.currency
                ),
            ));
        }
        let received = line.received + n;
        let tolerance = self.state.purchase_policy.over_receipt_tolerance_percent;
        let allowed = (Decimal::from(line.ordered) * (Decimal::ONE_HUNDRED + tolerance)
            / Decimal::ONE_HUNDRED)
            .floor();
        if Decimal::from(received) > allowed {
            return Err(reject(
                code::OVER_RECEIPT,
                format!(
                    "line {} ordered {}, {} received so far: {n} more would make {received}, above the {tolerance}% tolerance ({allowed} at most)",
                    purchase.line, line.ordered, line.received
                ),
            ));
        }
        Ok((
            Subject::PurchaseOrder(purchase.purchase_order.clone()),
            Event::ReceiptMatched(ReceiptMatched {
                purchase_order: purchase.purchase_order.clone(),
                line: purchase.line,
                qty_received: qty(received),
                qty_ordered: qty(line.ordered),
                variance: QtyDelta::new(received - line.ordered).expect("bounded quantities"),
            }),
        ))
    }

    /// The purchase order an invoice numbered `invoice` may be recorded against: approved
    /// (or sent, or closed), the number given and not yet recorded on it.
    fn invoiceable(
        &self,
        purchase_order: &PurchaseOrderId,
        invoice: &str,
    ) -> Result<&PurchaseOrderState, Rejection> {
        let po = self.purchase_order(purchase_order)?;
        if matches!(po.status, PoStatus::PendingApproval | PoStatus::Rejected) {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "purchase order {purchase_order} is {}; invoices are recorded against approved orders",
                    po.status.name()
                ),
            ));
        }
        if invoice.trim().is_empty() {
            return Err(reject(
                code::INVALID_QUANTITY,
                "invoice is empty; give the supplier's invoice number",
            ));
        }
        if po.invoices.contains_key(invoice) {
            return Err(reject(
                code::ALREADY_EXISTS,
                format!(
                    "invoice {invoice} is already recorded against purchase order {purchase_order}"
                ),
            ));
        }
        Ok(po)
    }

    /// A supplier's invoice, matched to the order's lines and receipts.
    pub(crate) fn record_invoice(&self, c: &RecordInvoice) -> Result<Decision, Rejection> {
        let po = self.invoiceable(&c.purchase_order, &c.invoice)?;
        if c.lines.is_empty() {
            return Err(reject(
                code::INVALID_QUANTITY,
                "lines is empty; an invoice charges for at least one line",
            ));
        }
        let mut lines = Vec::with_capacity(c.lines.len());
        let mut seen = std::collections::BTreeSet::new();
        for l in &c.lines {
            if !seen.insert(l.line) {
                return Err(reject(
                    code::INVALID_QUANTITY,
                    format!("line {} appears twice", l.line),
                ));
            }
            let n = positive(&format!("line {} qty", l.line), l.qty)?;
            let Some(line) = po.lines.get(&l.line) else {
                return Err(reject(
                    code::UNKNOWN_LINE,
                    format!("purchase order {} has no line {}", c.purchase_order, l.line),
                ));
            };
            if l.unit_cost.currency != po.currency {
                return Err(reject(
                    code::CURRENCY_MISMATCH,
                    format!(
                        "line {}: unit_cost is in {}; purchase order {} is in {}",
                        l.line, l.unit_cost.currency, c.purchase_order, po.currency
                    ),
                ));
            }
            non_negative_money(&format!("line {} unit_cost", l.line), &l.unit_cost)?;
            let open = line.received - line.invoiced;
            if n > open {
                return Err(reject(
                    code::OVER_INVOICE,
                    format!(
                        "line {}: {} received, {} invoiced already; {n} more cannot be invoiced (at most {open} until more arrives)",
                        l.line, line.received, line.invoiced
                    ),
                ));
            }
            lines.push(InvoiceLine {
                line: l.line,
                sku: line.sku.clone(),
                location: line.location.clone(),
                qty: l.qty,
                unit_cost: l.unit_cost,
                po_unit_cost: line.unit_cost,
            });
        }
        Ok(vec![(
            Subject::PurchaseOrder(c.purchase_order.clone()),
            Event::InvoiceRecorded(InvoiceRecorded {
                purchase_order: c.purchase_order.clone(),
                invoice: c.invoice.clone(),
                lines,
            }),
        )])
    }

    /// A supplier's invoice for a landed cost: clears the charge's accrual, spreads the rest.
    pub(crate) fn record_charge_invoice(
        &self,
        c: &RecordChargeInvoice,
    ) -> Result<Decision, Rejection> {
        let po = self.invoiceable(&c.purchase_order, &c.invoice)?;
        amount_for_order(&c.amount, &c.purchase_order, po)?;
        let open = po
            .accrued
            .get(&crate::state::charge_key(&c.charge))
            .copied()
            .unwrap_or_default()
            .max(Decimal::ZERO);
        let cleared = open.min(c.amount.amount);
        let beyond = c.amount.amount - cleared;
        let shares = if beyond > Decimal::ZERO {
            let received = received_lines(po);
            let weights: Vec<Decimal> = received
                .iter()
                .map(|(_, l)| l.unit_cost.amount * Decimal::from(l.received))
                .collect();
            let total: Decimal = weights.iter().copied().sum();
            if total <= Decimal::ZERO {
                return Err(reject(
                    code::INVALID_TRANSITION,
                    format!(
                        "invoice {} charges {beyond} more than purchase order {} accrued for {:?}, and nothing of value was received on it to carry that: record it once goods have arrived",
                        c.invoice, c.purchase_order, c.charge
                    ),
                ));
            }
            let beyond = Money::new(beyond, c.amount.currency).expect("part of a valid amount");
            charge_shares(&received, &weights, total, beyond)
        } else {
            Vec::new()
        };
        Ok(vec![(
            Subject::PurchaseOrder(c.purchase_order.clone()),
            Event::ChargeInvoiceRecorded(ChargeInvoiceRecorded {
                purchase_order: c.purchase_order.clone(),
                invoice: c.invoice.clone(),
                charge: c.charge.clone(),
                amount: c.amount,
                accrual_cleared: Money::new(cleared, c.amount.currency)
                    .expect("part of a valid amount"),
                shares,
            }),
        )])
    }

    /// A payment of a recorded supplier invoice.
    pub(crate) fn record_payment(&self, c: &RecordPayment) -> Result<Decision, Rejection> {
        let po = self.purchase_order(&c.purchase_order)?;
        let Some(open) = po.invoices.get(&c.invoice) else {
            return Err(reject(
                code::UNKNOWN_INVOICE,
                format!(
                    "purchase order {} has no invoice {:?} (record it with purchase.record_invoice first)",
                    c.purchase_order, c.invoice
                ),
            ));
        };
        amount_for_order(&c.amount, &c.purchase_order, po)?;
        if c.amount.amount > *open {
            return Err(reject(
                code::OVER_PAYMENT,
                format!(
                    "invoice {} of purchase order {} owes {} {}; {} is more",
                    c.invoice, c.purchase_order, open, po.currency, c.amount.amount
                ),
            ));
        }
        Ok(vec![(
            Subject::PurchaseOrder(c.purchase_order.clone()),
            Event::PaymentRecorded(PaymentRecorded {
                purchase_order: c.purchase_order.clone(),
                invoice: c.invoice.clone(),
                amount: c.amount,
                reference: c.reference.clone(),
            }),
        )])
    }

    pub(crate) fn allocate_landed_cost(
        &self,
        c: &AllocateLandedCost,
    ) -> Result<Decision, Rejection> {
        let po = self.purchase_order(&c.purchase_order)?;
        if matches!(po.status, PoStatus::PendingApproval | PoStatus::Rejected) {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "purchase order {} is {}; charges are booked against approved orders",
                    c.purchase_order,
                    po.status.name()
                ),
            ));
        }
        amount_for_order(&c.amount, &c.purchase_order, po)?;
        let received = received_lines(po);
        if received.is_empty() {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "nothing was received on purchase order {} yet: a charge is spread over received lines",
                    c.purchase_order
                ),
            ));
        }
        let mut weights = Vec::with_capacity(received.len());
        for (n, l) in &received {
            let w = match c.basis {
                AllocationBasis::Value => l.unit_cost.amount * Decimal::from(l.received),
                AllocationBasis::Quantity => Decimal::from(l.received),
                AllocationBasis::Weight => {
                    let given = c.weights.iter().find(|w| w.line == *n).ok_or_else(|| {
                        reject(
                            code::UNKNOWN_LINE,
                            format!("basis Weight: `weights` has no entry for received line {n}"),
                        )
                    })?;
                    Decimal::from(given.weight.get())
                }
            };
            weights.push(w);
        }
        let total: Decimal = weights.iter().copied().sum();
        if total <= Decimal::ZERO {
            return Err(reject(
                code::INVALID_QUANTITY,
                format!(
                    "the received lines weigh nothing by {:?}: the charge cannot be spread",
                    c.basis
                ),
            ));
        }
        Ok(vec![(
            Subject::PurchaseOrder(c.purchase_order.clone()),
            Event::LandedCostAllocated(LandedCostAllocated {
                purchase_order: c.purchase_order.clone(),
                charge: c.charge.clone(),
                amount: c.amount,
                basis: c.basis.clone(),
                shares: charge_shares(&received, &weights, total, c.amount),
            }),
        )])
    }
}

/// `amount` spread over the received lines in proportion to their `weights` (`spread`).
fn charge_shares(
    received: &[(u32, &crate::state::PoLineState)],
    weights: &[Decimal],
    total: Decimal,
    amount: Money,
) -> Vec<ChargeShare> {
    let amounts = spread(amount.amount, weights, total, amount.currency.minor_units());
    received
        .iter()
        .zip(amounts)
        .map(|((n, l), part)| ChargeShare {
            line: *n,
            sku: l.sku.clone(),
            amount: Money::new(part, amount.currency).expect("share of a valid amount"),
        })
        .collect()
}

/// Splits `amount` in proportion to `weights`, to the currency's minor unit (`decimals`: 2 for
/// pence and cents, 0 for yen), the rounding remainder on the last share: the shares always
/// add up to the amount exactly.
pub fn spread(amount: Decimal, weights: &[Decimal], total: Decimal, decimals: u32) -> Vec<Decimal> {
    let mut shares: Vec<Decimal> = weights
        .iter()
        .map(|w| (amount * *w / total).round_dp(decimals))
        .collect();
    let given: Decimal = shares.iter().copied().sum();
    if let Some(last) = shares.last_mut() {
        *last += amount - given;
    }
    shares
}

/// An amount charged or paid against a purchase order: in its currency and more than 0.
fn amount_for_order(
    amount: &Money,
    purchase_order: &PurchaseOrderId,
    po: &PurchaseOrderState,
) -> Result<(), Rejection> {
    if amount.currency != po.currency {
        return Err(reject(
            code::CURRENCY_MISMATCH,
            format!(
                "amount is in {}; purchase order {purchase_order} is in {}",
                amount.currency, po.currency
            ),
        ));
    }
    if amount.amount <= Decimal::ZERO {
        return Err(reject(
            code::NEGATIVE_AMOUNT,
            format!("amount is {}; expected more than 0", amount.amount),
        ));
    }
    Ok(())
}

/// The order's lines that have received something, by line number.
fn received_lines(po: &PurchaseOrderState) -> Vec<(u32, &crate::state::PoLineState)> {
    po.lines
        .iter()
        .filter(|(_, l)| l.received > 0)
        .map(|(n, l)| (*n, l))
        .collect()
}
