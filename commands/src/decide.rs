//! Deciders: `decide(&state, &command)` returns the events a command produces, or why it is
//! refused. Pure and deterministic: no I/O, no clock (time is the command's `effective_at`),
//! no randomness.

use std::collections::HashMap;

use ledger::Subject;
use ledger::events::*;
use ledger::values::{
    ChannelId, LocationId, Money, OrderId, QTY_MAX, Qty, QtyDelta, Sku, Timestamp,
};

use crate::command::*;
use crate::lots::LotUse;
use crate::state::{Balance, LineState, OrderState, State, StockState};

/// Why a command was refused. `code` is stable and documented (docs/COMMANDS.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The stable rejection codes.
pub mod code {
    pub const UNKNOWN_SKU: &str = "unknown_sku";
    pub const UNKNOWN_LOCATION: &str = "unknown_location";
    pub const UNKNOWN_CHANNEL: &str = "unknown_channel";
    pub const UNKNOWN_ORDER: &str = "unknown_order";
    pub const UNKNOWN_LINE: &str = "unknown_line";
    pub const UNKNOWN_HOLD: &str = "unknown_hold";
    pub const UNKNOWN_TRANSFER: &str = "unknown_transfer";
    pub const UNKNOWN_RETURN: &str = "unknown_return";
    pub const UNKNOWN_PACKAGE: &str = "unknown_package";
    pub const ALREADY_EXISTS: &str = "already_exists";
    pub const INVALID_QUANTITY: &str = "invalid_quantity";
    pub const INSUFFICIENT_AVAILABLE: &str = "insufficient_available";
    pub const INSUFFICIENT_STOCK: &str = "insufficient_stock";
    pub const INVALID_TRANSITION: &str = "invalid_transition";
    pub const LOT_REQUIRED: &str = "lot_required";
    pub const SERIALS_MISMATCH: &str = "serials_mismatch";
    pub const EXPIRY_REQUIRED: &str = "expiry_required";
    pub const CURRENCY_MISMATCH: &str = "currency_mismatch";
    pub const NEGATIVE_AMOUNT: &str = "negative_amount";
    pub const PACK_MISMATCH: &str = "pack_mismatch";
    pub const NOT_INSPECTED: &str = "not_inspected";
    pub const HOLD_NOT_EXPIRED: &str = "hold_not_expired";
    pub const UNKNOWN_SUPPLIER: &str = "unknown_supplier";
    pub const UNKNOWN_PURCHASE_ORDER: &str = "unknown_purchase_order";
    /// The requester of a purchase order above the approval limit tried to approve or
    /// reject it.
    pub const APPROVER_IS_REQUESTER: &str = "approver_is_requester";
    /// A receipt names a purchase order line for another SKU or location.
    pub const PURCHASE_LINE_MISMATCH: &str = "purchase_line_mismatch";
    /// A receipt would take a line beyond its ordered quantity plus the tolerance.
    pub const OVER_RECEIPT: &str = "over_receipt";
    /// An invoice line charges for more units than were received and not yet invoiced.
    pub const OVER_INVOICE: &str = "over_invoice";
    /// The command uses a location that belongs to another legal entity.
    pub const OTHER_ENTITY: &str = "other_entity";
    /// A payment is more than its invoice still owes.
    pub const OVER_PAYMENT: &str = "over_payment";
    /// A payment names an invoice not recorded against its purchase order.
    pub const UNKNOWN_INVOICE: &str = "unknown_invoice";
    /// A purchase order cannot be closed while lines are open.
    pub const LINES_OPEN: &str = "lines_open";
    /// The command names a legal entity that is not defined (`legal_entity.define`).
    pub const UNKNOWN_LEGAL_ENTITY: &str = "unknown_legal_entity";
    /// The command's effective time is in a closed period of its legal entity.
    pub const PERIOD_CLOSED: &str = "period_closed";
    /// `period.close` sent a trial balance that does not cover every event now effective in
    /// the period.
    pub const PERIOD_CHANGED: &str = "period_changed";
    /// `period.close` sent a trial balance whose debits and credits differ.
    pub const UNBALANCED: &str = "unbalanced";
    /// `period.close` sent a trial balance that is not well formed.
    pub const INVALID_TRIAL_BALANCE: &str = "invalid_trial_balance";
    /// `policy.set_threshold` names a command type thresholds do not apply to, or a limit of
    /// the wrong kind.
    pub const INVALID_THRESHOLD: &str = "invalid_threshold";
    /// No command waits for approval under that request.
    pub const UNKNOWN_APPROVAL: &str = "unknown_approval";
    /// What the waiting command measures changed since approval was asked (a count whose
    /// variance moved).
    pub const STALE_APPROVAL: &str = "stale_approval";
    /// A reason must be given.
    pub const REASON_REQUIRED: &str = "reason_required";
    /// An exception action names a kind with a subject of another shape (a count variance
    /// on an order).
    pub const INVALID_EXCEPTION: &str = "invalid_exception";
    /// `clock.tick` at or before the latest effective time the legal entity already has.
    pub const CLOCK_NOT_BEHIND: &str = "clock_not_behind";
    /// A command names a lot of the SKU that was never received (or, for a return, one
    /// not picked for the order).
    pub const UNKNOWN_LOT: &str = "unknown_lot";
    /// A pick names a lot that is expired, or has less shelf life left than the order's
    /// channel wants.
    pub const LOT_EXPIRED: &str = "lot_expired";
    /// A receipt into a lot states another expiry date than the lot has.
    pub const LOT_EXPIRY_MISMATCH: &str = "lot_expiry_mismatch";
    /// Produced by the processor, not by `decide`.
    pub const DUPLICATE_WITH_DIFFERENT_BODY: &str = "duplicate_with_different_body";
    /// Produced by the processor: the actor's role may not send this command
    /// (`crate::roles`).
    pub const FORBIDDEN: &str = "forbidden";
    /// Produced by the processor: the command is not valid JSON or not a valid command.
    pub const INVALID_COMMAND: &str = "invalid_command";
    /// A figure (on hand, allocated, ...) would pass the largest quantity the ledger holds.
    pub const QUANTITY_LIMIT: &str = "quantity_limit";
    /// Produced by the processor: deciding the command failed inside the processor (a bug).
    /// It is recorded so that it is never decided again; nothing else was stored.
    pub const INTERNAL_ERROR: &str = "internal_error";

    /// Every code `decide` can return, for the docs and the tests.
    pub const ALL: &[&str] = &[
        UNKNOWN_SKU,
        UNKNOWN_LOCATION,
        UNKNOWN_CHANNEL,
        UNKNOWN_ORDER,
        UNKNOWN_LINE,
        UNKNOWN_HOLD,
        UNKNOWN_TRANSFER,
        UNKNOWN_RETURN,
        UNKNOWN_PACKAGE,
        ALREADY_EXISTS,
        INVALID_QUANTITY,
        INSUFFICIENT_AVAILABLE,
        INSUFFICIENT_STOCK,
        INVALID_TRANSITION,
        LOT_REQUIRED,
        SERIALS_MISMATCH,
        EXPIRY_REQUIRED,
        CURRENCY_MISMATCH,
        NEGATIVE_AMOUNT,
        PACK_MISMATCH,
        NOT_INSPECTED,
        HOLD_NOT_EXPIRED,
        UNKNOWN_SUPPLIER,
        UNKNOWN_PURCHASE_ORDER,
        APPROVER_IS_REQUESTER,
        PURCHASE_LINE_MISMATCH,
        OVER_RECEIPT,
        OVER_INVOICE,
        LINES_OPEN,
        QUANTITY_LIMIT,
        UNKNOWN_LEGAL_ENTITY,
        PERIOD_CLOSED,
        PERIOD_CHANGED,
        UNBALANCED,
        INVALID_TRIAL_BALANCE,
        INVALID_THRESHOLD,
        UNKNOWN_APPROVAL,
        STALE_APPROVAL,
        REASON_REQUIRED,
        INVALID_EXCEPTION,
        CLOCK_NOT_BEHIND,
        UNKNOWN_LOT,
        LOT_EXPIRED,
        LOT_EXPIRY_MISMATCH,
    ];
}

pub(crate) fn reject(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        code,
        message: message.into(),
    }
}

/// The events of one decision, each with the subject it belongs to.
pub type Decision = Vec<(Subject, Event)>;

pub(crate) fn qty(n: i64) -> Qty {
    Qty::new(n).expect("decider quantities are checked non-negative and bounded")
}

pub(crate) fn positive(field: &str, q: Qty) -> Result<i64, Rejection> {
    if q.is_zero() {
        return Err(reject(
            code::INVALID_QUANTITY,
            format!("{field} must be greater than 0"),
        ));
    }
    Ok(q.get())
}

pub(crate) fn non_negative_money(field: &str, m: &Money) -> Result<(), Rejection> {
    if m.amount.is_sign_negative() && !m.amount.is_zero() {
        return Err(reject(
            code::NEGATIVE_AMOUNT,
            format!("{field} is {}; expected 0 or more", m.amount),
        ));
    }
    Ok(())
}

/// Decides a command against the state. Never mutates it. Whatever the command, every figure
/// of every SKU at every location stays within `QTY_MAX` (refused `quantity_limit`). Its
/// legal entity must be defined and its period open (`governance::admit`); a decision beyond
/// the entity's maker-checker threshold becomes a request for approval.
pub fn decide(state: &State, command: &Command) -> Result<Decision, Rejection> {
    crate::governance::admit(state, command)?;
    let decision = decide_rules(state, command, None)?;
    within_quantity_limits(state, &decision)?;
    within_own_locations(state, command, &decision)?;
    Ok(crate::governance::hold_above_threshold(
        state, command, decision,
    ))
}

/// Decides a command a second person approved: the same rules, no threshold, the approver
/// recorded where events name one.
pub(crate) fn decide_approved(
    state: &State,
    command: &Command,
    approver: &ledger::values::ActorId,
) -> Result<Decision, Rejection> {
    let decision = decide_rules(state, command, Some(approver))?;
    within_quantity_limits(state, &decision)?;
    within_own_locations(state, command, &decision)?;
    Ok(decision)
}

/// Refuses a decision that defines, receives into, adjusts, counts, scraps, takes returns
/// into, transfers out of or takes a transfer into a location of another legal entity
/// (`other_entity`): a location's stock belongs to the entity that defined it, and its books
/// value it there. (A transfer may be shipped to another entity's location: that is an
/// intercompany transfer, shipped by the one entity and received by the other.)
fn within_own_locations(
    state: &State,
    command: &Command,
    decision: &Decision,
) -> Result<(), Rejection> {
    use Event as E;
    for (_, event) in decision {
        let location = match event {
            E::LocationDefined(e) => &e.location,
            E::StockReceived(e) => &e.location,
            E::StockAdjusted(e) => &e.location,
            E::StockCounted(e) => &e.location,
            E::StockScrapped(e) => &e.location,
            E::ReturnReceived(e) => &e.location,
            E::TransferShipped(e) => &e.from,
            E::TransferReceived(e) => &e.to,
            _ => continue,
        };
        if let Some(owner) = state.location_entities.get(location)
            && *owner != command.legal_entity
        {
            return Err(reject(
                code::OTHER_ENTITY,
                format!(
                    "location {location} belongs to legal entity {owner}; a command of {} cannot use it (send it as {owner}, or transfer the stock)",
                    command.legal_entity
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a decision that would take a figure beyond `QTY_MAX` in magnitude: the bound every
/// quantity type promises, and that sums of events could otherwise pass.
fn within_quantity_limits(state: &State, decision: &Decision) -> Result<(), Rejection> {
    let mut after: Vec<(&Sku, LocationId, Balance)> = Vec::new();
    for (subject, event) in decision {
        let Subject::Stock(sku) = subject else {
            continue;
        };
        for delta in ledger::effects::stock_deltas(event) {
            let i = match after
                .iter()
                .position(|(s, l, _)| *s == sku && *l == delta.location)
            {
                Some(i) => i,
                None => {
                    let now = state
                        .stock
                        .get(sku)
                        .map(|s| s.balance(&delta.location))
                        .unwrap_or_default();
                    after.push((sku, delta.location.clone(), now));
                    after.len() - 1
                }
            };
            let b = &mut after[i].2;
            b.on_hand += delta.on_hand;
            b.allocated += delta.allocated;
            b.reserved += delta.reserved;
            b.quality_hold += delta.quality_hold;
            b.in_transit += delta.in_transit;
            let figures = [
                ("on hand", b.on_hand),
                ("allocated", b.allocated),
                ("reserved", b.reserved),
                ("quality hold", b.quality_hold),
                ("in transit", b.in_transit),
            ];
            if let Some((name, value)) = figures
                .iter()
                .find(|(_, v)| v.unsigned_abs() > QTY_MAX as u64)
            {
                return Err(reject(
                    code::QUANTITY_LIMIT,
                    format!(
                        "{sku} at {}: {name} would be {value}; the ledger holds figures of at most {QTY_MAX} base units",
                        delta.location
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The command with every quantity stated in one of an item's units (`unit`: its base unit or
/// a pack size) in base units, so the deciders and the events speak base units only; `None`
/// when it states none. A unit the item does not have is `invalid_quantity`; a product beyond
/// the ledger's figures `quantity_limit`. An unknown SKU is left for the decider to refuse.
fn in_base_units(state: &State, command: &Command) -> Result<Option<Command>, Rejection> {
    let factor = |sku: &Sku, unit: &ledger::values::UnitName, field: &str| {
        let Some(item) = state.items.get(sku).map(|d| &d.value) else {
            return Ok(None);
        };
        if *unit == item.base_unit {
            return Ok(Some(1));
        }
        match item.pack_sizes.iter().find(|p| p.unit == *unit) {
            Some(p) => Ok(Some(p.base_units.get())),
            None => Err(reject(
                code::INVALID_QUANTITY,
                format!(
                    "{field}: `{unit}` is not a unit of {sku}; expected its base unit `{}`{}",
                    item.base_unit,
                    item.pack_sizes
                        .iter()
                        .map(|p| format!(", `{}` ({} {})", p.unit, p.base_units, item.base_unit))
                        .collect::<String>()
                ),
            )),
        }
    };
    let scale = |n: i64, by: i64, field: &str| {
        n.checked_mul(by)
            .filter(|v| v.unsigned_abs() <= QTY_MAX as u64)
            .ok_or_else(|| {
                reject(
                    code::QUANTITY_LIMIT,
                    format!(
                        "{field}: {n} of {by} base units each is beyond the ledger's figures (at most {QTY_MAX} base units)"
                    ),
                )
            })
    };
    let to_qty = |q: Qty, by: i64, field: &str| -> Result<Qty, Rejection> {
        Ok(Qty::new(scale(q.get(), by, field)?).expect("within the limit"))
    };
    // One quantity and its unit: `field` names the quantity, `at` prefixes both names.
    let convert = |sku: &Sku,
                   unit: &mut Option<ledger::values::UnitName>,
                   q: &mut Qty,
                   at: &str,
                   field: &str| {
        if let Some(unit) = unit.take()
            && let Some(by) = factor(sku, &unit, &format!("{at}unit"))?
        {
            *q = to_qty(*q, by, &format!("{at}{field}"))?;
        }
        Ok::<(), Rejection>(())
    };
    // Most commands state no unit: nothing is copied for them.
    let stated = match &command.body {
        CommandBody::Receive(c) => c.unit.is_some(),
        CommandBody::Count(c) => c.unit.is_some(),
        CommandBody::Adjust(c) => c.unit.is_some(),
        CommandBody::PlaceOrder(c) => c.lines.iter().any(|l| l.unit.is_some()),
        CommandBody::AmendOrder(c) => {
            c.add.iter().any(|l| l.unit.is_some()) || c.replace.iter().any(|r| r.by.unit.is_some())
        }
        CommandBody::CreatePurchaseOrder(c) => c.lines.iter().any(|l| l.unit.is_some()),
        _ => false,
    };
    if !stated {
        return Ok(None);
    }
    let mut body = command.body.clone();
    match &mut body {
        CommandBody::Receive(c) => convert(&c.sku, &mut c.unit, &mut c.qty, "", "qty")?,
        CommandBody::Count(c) => convert(&c.sku, &mut c.unit, &mut c.counted, "", "counted")?,
        CommandBody::Adjust(c) => {
            if let Some(unit) = c.unit.take()
                && let Some(by) = factor(&c.sku, &unit, "unit")?
            {
                c.delta =
                    QtyDelta::new(scale(c.delta.get(), by, "delta")?).expect("within the limit");
            }
        }
        _ => {}
    }
    // Lines of orders and purchase orders: each its sku, unit and quantity.
    let lines: Vec<(
        String,
        &Sku,
        &mut Option<ledger::values::UnitName>,
        &mut Qty,
    )> = match &mut body {
        CommandBody::PlaceOrder(c) => c
            .lines
            .iter_mut()
            .enumerate()
            .map(|(i, l)| (format!("lines[{i}]."), &l.sku, &mut l.unit, &mut l.qty))
            .collect(),
        CommandBody::AmendOrder(c) => c
            .add
            .iter_mut()
            .enumerate()
            .map(|(i, l)| (format!("add[{i}]."), &l.sku, &mut l.unit, &mut l.qty))
            .chain(c.replace.iter_mut().enumerate().map(|(i, r)| {
                (
                    format!("replace[{i}].by."),
                    &r.by.sku,
                    &mut r.by.unit,
                    &mut r.by.qty,
                )
            }))
            .collect(),
        CommandBody::CreatePurchaseOrder(c) => c
            .lines
            .iter_mut()
            .enumerate()
            .map(|(i, l)| (format!("lines[{i}]."), &l.sku, &mut l.unit, &mut l.qty))
            .collect(),
        _ => Vec::new(),
    };
    for (at, sku, unit, q) in lines {
        convert(sku, unit, q, &at, "qty")?;
    }
    Ok(Some(Command {
        body,
        ..command.clone()
    }))
}

fn decide_rules(
    state: &State,
    command: &Command,
    approved_by: Option<&ledger::values::ActorId>,
) -> Result<Decision, Rejection> {
    let converted = in_base_units(state, command)?;
    let command = converted.as_ref().unwrap_or(command);
    let d = Decider {
        state,
        at: command.effective_at,
        actor: &command.actor,
        command,
        approved_by,
    };
    match &command.body {
        CommandBody::CreatePurchaseOrder(c) => d.create_purchase_order(c),
        CommandBody::ApprovePurchaseOrder(c) => d.approve_purchase_order(c),
        CommandBody::RejectPurchaseOrder(c) => d.reject_purchase_order(c),
        CommandBody::SendPurchaseOrder(c) => d.send_purchase_order(c),
        CommandBody::CancelPurchaseRemaining(c) => d.cancel_purchase_remaining(c),
        CommandBody::ClosePurchaseOrder(c) => d.close_purchase_order(c),
        CommandBody::AllocateLandedCost(c) => d.allocate_landed_cost(c),
        CommandBody::RecordInvoice(c) => d.record_invoice(c),
        CommandBody::RecordPayment(c) => d.record_payment(c),
        CommandBody::RecordChargeInvoice(c) => d.record_charge_invoice(c),
        CommandBody::DefineLegalEntity(c) => d.define_legal_entity(c),
        CommandBody::SetThreshold(c) => d.set_threshold(c),
        CommandBody::ApproveRequest(c) => d.approve(c),
        CommandBody::RejectRequest(c) => d.reject_request(c),
        CommandBody::ClosePeriod(c) => d.close_period(c),
        CommandBody::ReopenPeriod(c) => d.reopen_period(c),
        CommandBody::SetRate(c) => d.set_rate(c),
        CommandBody::DefineItem(c) => d.define_item(c),
        CommandBody::DefineLocation(c) => Ok(vec![(
            Subject::Location(c.location.clone()),
            Event::LocationDefined(LocationDefined {
                location: c.location.clone(),
                name: c.name.clone(),
                kind: c.kind.clone(),
                region: c.region.clone(),
                capacity: c.capacity,
                routing_priority: c.routing_priority,
            }),
        )]),
        CommandBody::SetShippingRate(c) => d.set_shipping_rate(c),
        CommandBody::SetDailyCapacity(c) => d.set_daily_capacity(c),
        CommandBody::SetShelfLife(c) => d.set_shelf_life(c),
        CommandBody::DefineChannel(c) => Ok(vec![(
            Subject::Channel(c.channel.clone()),
            Event::ChannelDefined(ChannelDefined {
                channel: c.channel.clone(),
                name: c.name.clone(),
                fee_rate: c.fee_rate,
                reservation_policy: c.reservation_policy.clone(),
            }),
        )]),
        CommandBody::DefineSupplier(c) => Ok(vec![(
            Subject::Supplier(c.supplier.clone()),
            Event::SupplierDefined(SupplierDefined {
                supplier: c.supplier.clone(),
                name: c.name.clone(),
                currency: c.currency,
                lead_time_days: c.lead_time_days,
            }),
        )]),
        CommandBody::Receive(c) => d.receive(c),
        CommandBody::MoveBin(c) => d.move_bin(c),
        CommandBody::TransferShip(c) => d.transfer_ship(c),
        CommandBody::TransferReceive(c) => d.transfer_receive(c),
        CommandBody::Adjust(c) => d.adjust(c),
        CommandBody::Count(c) => d.count(c),
        CommandBody::QualityHold(c) => d.quality_hold(c),
        CommandBody::QualityRelease(c) => d.quality_release(c),
        CommandBody::Scrap(c) => d.scrap(c),
        CommandBody::ReceiveReturn(c) => d.receive_return(c),
        CommandBody::DispositionReturn(c) => d.disposition_return(c),
        CommandBody::SetChannelAllocation(c) => d.set_channel_allocation(c),
        CommandBody::PlaceHold(c) => d.place_hold(c),
        CommandBody::ReleaseHold(c) => d.end_hold(&c.sku, &c.hold, false),
        CommandBody::ExpireHold(c) => d.end_hold(&c.sku, &c.hold, true),
        CommandBody::PlaceOrder(c) => d.place_order(c),
        CommandBody::HoldOrder(c) => d.hold_order(c),
        CommandBody::ReleaseOrder(c) => d.release_order(c),
        CommandBody::AllocateOrder(c) => d.allocate_order(c),
        CommandBody::ReleaseToPick(c) => d.release_to_pick(c),
        CommandBody::Pick(c) => d.pick(c),
        CommandBody::Pack(c) => d.pack(c),
        CommandBody::Ship(c) => d.ship(c),
        CommandBody::CancelOrder(c) => d.cancel(c),
        CommandBody::AmendOrder(c) => d.amend(c),
        CommandBody::AuthoriseReturn(c) => d.authorise_return(c),
        CommandBody::Refund(c) => d.refund(c),
        CommandBody::ConfirmDelivery(c) => d.confirm_delivery(c),
        CommandBody::SetExceptionRule(c) => d.set_exception_rule(c),
        CommandBody::AssignException(c) => d.assign_exception(c),
        CommandBody::ResolveException(c) => d.resolve_exception(c),
        CommandBody::SnoozeException(c) => d.snooze_exception(c),
        CommandBody::TickClock(_) => d.tick_clock(),
    }
}

pub(crate) struct Decider<'a> {
    pub(crate) state: &'a State,
    pub(crate) at: Timestamp,
    pub(crate) actor: &'a ledger::values::Actor,
    pub(crate) command: &'a Command,
    /// The second person who approved the command, when it waited for one.
    pub(crate) approved_by: Option<&'a ledger::values::ActorId>,
}

/// Where a line goes: the node, how much it takes there, and why.
type Route = (LocationId, i64, String);

/// The nodes that hold units allocated to or picked for `order` (but `except`): its parcels
/// so far.
fn shipping_nodes(order: &OrderState, except: Option<&LocationId>) -> Vec<LocationId> {
    let mut nodes: Vec<LocationId> = order
        .lines
        .values()
        .flat_map(|l| l.allocated.iter().chain(&l.picked))
        .filter(|(at, n)| **n > 0 && Some(*at) != except)
        .map(|(at, _)| at.clone())
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

/// Stock already promised by earlier lines of the same command, per SKU and location, and the
/// orders given units at each location (a location's daily order capacity).
#[derive(Debug, Clone, Default)]
pub(crate) struct Promised {
    units: HashMap<(Sku, LocationId), i64>,
    orders: HashMap<LocationId, std::collections::BTreeSet<OrderId>>,
}

impl Promised {
    fn new() -> Promised {
        Promised::default()
    }

    fn get(&self, key: &(Sku, LocationId)) -> Option<&i64> {
        self.units.get(key)
    }

    fn insert(&mut self, key: (Sku, LocationId), units: i64) {
        self.units.insert(key, units);
    }

    fn iter(&self) -> impl Iterator<Item = (&(Sku, LocationId), &i64)> {
        self.units.iter()
    }

    /// Counts `units` of `sku` at `location` that this decision frees (negative promises).
    fn release(&mut self, sku: &Sku, location: &LocationId, units: i64) {
        *self
            .units
            .entry((sku.clone(), location.clone()))
            .or_insert(0) -= units;
    }

    /// Promises `units` of `sku` at `location` to `order`; `count_order`: the location limits
    /// its orders a day, so the order's slot is noted too.
    fn give(
        &mut self,
        order: &OrderId,
        sku: &Sku,
        location: &LocationId,
        units: i64,
        count_order: bool,
    ) {
        *self
            .units
            .entry((sku.clone(), location.clone()))
            .or_insert(0) += units;
        if count_order {
            self.orders
                .entry(location.clone())
                .or_default()
                .insert(order.clone());
        }
    }
}

impl<'a> Decider<'a> {
    pub(crate) fn item(&self, sku: &Sku) -> Result<&'a crate::state::ItemRules, Rejection> {
        self.state
            .items
            .get(sku)
            .map(|d| &d.value)
            .ok_or_else(|| reject(code::UNKNOWN_SKU, format!("no item `{sku}` is defined")))
    }

    pub(crate) fn location(&self, location: &LocationId) -> Result<&'a LocationDefined, Rejection> {
        self.state
            .locations
            .get(location)
            .map(|d| &d.value)
            .ok_or_else(|| {
                reject(
                    code::UNKNOWN_LOCATION,
                    format!("no location `{location}` is defined"),
                )
            })
    }

    fn channel(&self, channel: &ChannelId) -> Result<(), Rejection> {
        match self.state.channels.contains_key(channel) {
            true => Ok(()),
            false => Err(reject(
                code::UNKNOWN_CHANNEL,
                format!("no channel `{channel}` is defined"),
            )),
        }
    }

    fn stock(&self, sku: &Sku) -> Option<&'a StockState> {
        self.state.stock.get(sku)
    }

    fn balance(&self, sku: &Sku, location: &LocationId) -> Balance {
        self.stock(sku)
            .map(|s| s.balance(location))
            .unwrap_or_default()
    }

    fn order(&self, order: &OrderId) -> Result<&'a OrderState, Rejection> {
        self.state.orders.get(order).ok_or_else(|| {
            reject(
                code::UNKNOWN_ORDER,
                format!("no order `{order}` was placed"),
            )
        })
    }

    /// Units of `sku` at `location` that can be promised to `channel`: free stock less safety
    /// stock, less what other channels have ring-fenced, capped by the channel's share.
    fn available(
        &self,
        sku: &Sku,
        location: &LocationId,
        channel: Option<&ChannelId>,
        promised: &Promised,
    ) -> i64 {
        let safety = self
            .state
            .items
            .get(sku)
            .map_or(0, |d| d.value.safety_stock.get());
        let already = promised
            .get(&(sku.clone(), location.clone()))
            .copied()
            .unwrap_or(0);
        let here = self.balance(sku, location).free()
            - safety
            - already
            - self.short_dated(sku, location, channel);
        let Some(stock) = self.stock(sku) else {
            return here.max(0);
        };
        let total_free: i64 = stock.balances.values().map(Balance::free).sum();
        let rules = stock
            .extras()
            .channel_rules
            .iter()
            .map(|(c, rule)| (Some(c) == channel, rule));
        let cap = ledger::effects::channel_cap(rules, total_free);
        here.min(cap).max(0)
    }

    /// Units `location` can still take on today (the command's business day): its daily
    /// capacity less what it took on today and what this decision already promised there.
    fn room(&self, location: &LocationId, promised: &Promised) -> i64 {
        let Some(capacity) = self.state.daily_capacity.get(location) else {
            return i64::MAX;
        };
        let today = crate::state::business_day(self.at);
        let used = self
            .state
            .day_use
            .get(location)
            .filter(|u| u.day == today)
            .map_or(0, |u| u.units);
        let promised_here: i64 = promised
            .iter()
            .filter(|((_, at), n)| at == location && **n > 0)
            .map(|(_, n)| n)
            .sum();
        (i64::from(*capacity) - used - promised_here).max(0)
    }

    /// Whether `location` has a daily order capacity (orders given units there are noted).
    fn limits_orders(&self, location: &LocationId) -> bool {
        self.state.daily_order_capacity.contains_key(location)
    }

    /// The orders `location` took on today, and those this decision gives units there.
    fn orders_taken<'p>(
        &'p self,
        location: &LocationId,
        promised: &'p Promised,
    ) -> std::collections::BTreeSet<&'p OrderId> {
        let today = crate::state::business_day(self.at);
        self.state
            .day_use
            .get(location)
            .filter(|u| u.day == today)
            .into_iter()
            .flat_map(|u| u.orders.keys())
            .chain(promised.orders.get(location).into_iter().flatten())
            .collect()
    }

    /// Whether `order` may take units at `location` today under its daily order capacity:
    /// it already has some there today (or in this decision), or the day has room for one
    /// more order.
    fn order_room(&self, location: &LocationId, order: &OrderId, promised: &Promised) -> bool {
        let Some(capacity) = self.state.daily_order_capacity.get(location) else {
            return true;
        };
        let taken = self.orders_taken(location, promised);
        taken.contains(order) || taken.len() < *capacity as usize
    }

    /// Orders `location` can still take on today, for a routing reason.
    fn orders_left(&self, location: &LocationId, promised: &Promised) -> usize {
        let Some(capacity) = self.state.daily_order_capacity.get(location) else {
            return usize::MAX;
        };
        (*capacity as usize).saturating_sub(self.orders_taken(location, promised).len())
    }

    /// What `order`'s line can be given of `sku` at `location`: what is available to its
    /// channel, within the room left in the location's day (units and orders).
    fn routable(
        &self,
        sku: &Sku,
        location: &LocationId,
        order: (&OrderId, &ChannelId),
        promised: &Promised,
    ) -> i64 {
        if !self.order_room(location, order.0, promised) {
            return 0;
        }
        self.available(sku, location, Some(order.1), promised)
            .min(self.room(location, promised))
    }

    pub(crate) fn allows_negative(&self, sku: &Sku) -> bool {
        self.state
            .items
            .get(sku)
            .is_some_and(|d| d.value.allow_negative)
    }

    /// Refuses a decrease of on-hand that would leave less than is committed at the location.
    fn check_decrease(
        &self,
        sku: &Sku,
        location: &LocationId,
        decrease: i64,
        what: &str,
    ) -> Result<(), Rejection> {
        let b = self.balance(sku, location);
        if self.allows_negative(sku) || decrease <= b.free() {
            return Ok(());
        }
        Err(reject(
            code::INSUFFICIENT_STOCK,
            format!(
                "{what} of {decrease} {sku} at {location}: only {} are free (on hand {}, allocated {}, reserved {}, quality hold {})",
                b.free().max(0),
                b.on_hand,
                b.allocated,
                b.reserved,
                b.quality_hold
            ),
        ))
    }

    fn define_item(&self, c: &DefineItem) -> Result<Decision, Rejection> {
        let body = ItemDefined {
            sku: c.sku.clone(),
            description: c.description.clone(),
            base_unit: c.base_unit.clone(),
            pack_sizes: c.pack_sizes.clone(),
            tracking: c.tracking.clone(),
            reorder_point: c.reorder_point,
            safety_stock: c.safety_stock,
            lead_time_days: c.lead_time_days,
            min_order_qty: c.min_order_qty,
            suppliers: c.suppliers.clone(),
            cost_method: c.cost_method.clone(),
            allow_negative: c.allow_negative,
        };
        let by_lot = |t: &Tracking| t.lot || t.expiry;
        let on_hand: i64 = self
            .stock(&c.sku)
            .map_or(0, |s| s.balances.values().map(|b| b.on_hand).sum());
        if self
            .state
            .items
            .get(&c.sku)
            .is_some_and(|d| by_lot(&d.value.tracking) != by_lot(&c.tracking))
            && on_hand != 0
        {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "tracking: {} has {on_hand} units on hand; whether its stock is kept by lot (lot or expiry tracking) can change only when none are on hand",
                    c.sku
                ),
            ));
        }
        let event = match self.state.items.contains_key(&c.sku) {
            true => Event::ItemChanged(body),
            false => Event::ItemDefined(body),
        };
        Ok(vec![(Subject::Item(c.sku.clone()), event)])
    }

    fn receive(&self, c: &Receive) -> Result<Decision, Rejection> {
        let item = self.item(&c.sku)?;
        self.location(&c.location)?;
        let n = positive("qty", c.qty)?;
        non_negative_money("unit_cost", &c.unit_cost)?;
        if item.tracking.lot && c.lot.is_none() {
            return Err(reject(
                code::LOT_REQUIRED,
                format!("{} is lot-tracked: `lot` is required", c.sku),
            ));
        }
        if item.tracking.expiry && c.expires_on.is_none() {
            return Err(reject(
                code::EXPIRY_REQUIRED,
                format!("{} tracks expiry: `expires_on` is required", c.sku),
            ));
        }
        if item.tracking.serial && c.serials.len() as i64 != n {
            return Err(reject(
                code::SERIALS_MISMATCH,
                format!(
                    "{} is serial-tracked: {n} units need {n} serials, got {}",
                    c.sku,
                    c.serials.len()
                ),
            ));
        }
        let lot = self.receipt_lot(&c.sku, c.lot.as_ref(), c.expires_on)?;
        let mut events = vec![(
            Subject::Stock(c.sku.clone()),
            Event::StockReceived(StockReceived {
                sku: c.sku.clone(),
                location: c.location.clone(),
                bin: c.bin.clone(),
                lot,
                expires_on: c.expires_on,
                serials: c.serials.clone(),
                qty: c.qty,
                unit_cost: c.unit_cost,
                purchase: c.purchase.clone(),
            }),
        )];
        if let Some(purchase) = &c.purchase {
            events.push(self.match_receipt(c, purchase, n)?);
        }
        let expires_on = match self.by_lot(&c.sku) {
            true => c.expires_on,
            false => None,
        };
        events.extend(self.fill_backorders(&c.sku, &c.location, n, expires_on));
        Ok(events)
    }

    /// Allocates waiting backorders of `sku` from `arrived` new units at `location`, in
    /// priority order, at most `BACKORDERS_PER_RECEIPT` lines per receipt.
    /// Units of a lot that expires on `expires_on` serve only the channels that may take them.
    fn fill_backorders(
        &self,
        sku: &Sku,
        location: &LocationId,
        arrived: i64,
        expires_on: Option<ledger::values::Date>,
    ) -> Decision {
        const BACKORDERS_PER_RECEIPT: usize = 100;
        let Some(waiting) = self.state.backorders.get(sku) else {
            return Vec::new();
        };
        let mut promised = Promised::new();
        // The receipt is not applied yet: count its units as negative promises.
        promised.insert((sku.clone(), location.clone()), -arrived);
        let mut events = Vec::new();
        for ((_, _, order_id, line), &want) in waiting.iter().take(BACKORDERS_PER_RECEIPT) {
            let Some(order) = self.state.orders.get(order_id) else {
                continue;
            };
            if self
                .state
                .location_entities
                .get(location)
                .is_some_and(|owner| *owner != order.entity)
            {
                // Another entity's order: this stock is not its to take.
                continue;
            }
            let mut available = self.routable(sku, location, (order_id, &order.channel), &promised);
            let min_days = self.min_shelf_life(Some(&order.channel));
            let stale = expires_on
                .is_some_and(|d| d.get() < self.today() + chrono::Days::new(u64::from(min_days)));
            if stale {
                // The arrived units are too short-dated for this order's channel: it may take
                // only what was there before.
                let before =
                    self.available(sku, location, Some(&order.channel), &promised) - arrived;
                available = available.min(before);
                if available <= 0 {
                    continue;
                }
            }
            let take = want.min(available);
            if take <= 0 {
                break;
            }
            promised.give(order_id, sku, location, take, self.limits_orders(location));
            let reason = format!("backorder filled on receipt at {location}");
            events.extend(allocation_events(
                order_id, *line, sku, location, take, reason,
            ));
        }
        events
    }

    fn move_bin(&self, c: &MoveBin) -> Result<Decision, Rejection> {
        self.item(&c.sku)?;
        self.location(&c.location)?;
        let n = positive("qty", c.qty)?;
        let on_hand = self.balance(&c.sku, &c.location).on_hand;
        if n > on_hand && !self.allows_negative(&c.sku) {
            return Err(reject(
                code::INSUFFICIENT_STOCK,
                format!("moving {n} {} at {}: {on_hand} on hand", c.sku, c.location),
            ));
        }
        Ok(vec![(
            Subject::Stock(c.sku.clone()),
            Event::StockBinMoved(StockBinMoved {
                sku: c.sku.clone(),
                location: c.location.clone(),
                from_bin: c.from_bin.clone(),
                to_bin: c.to_bin.clone(),
                lot: c.lot.clone(),
                qty: c.qty,
            }),
        )])
    }

    fn transfer_ship(&self, c: &TransferShip) -> Result<Decision, Rejection> {
        self.item(&c.sku)?;
        self.location(&c.from)?;
        self.location(&c.to)?;
        let n = positive("qty", c.qty)?;
        if c.from == c.to {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("transfer {} goes from {} to itself", c.transfer, c.from),
            ));
        }
        if self
            .stock(&c.sku)
            .is_some_and(|s| s.extras().transfers.contains_key(&c.transfer))
        {
            return Err(reject(
                code::ALREADY_EXISTS,
                format!("transfer {} of {} was already shipped", c.transfer, c.sku),
            ));
        }
        self.check_decrease(&c.sku, &c.from, n, "shipping a transfer")?;
        self.check_lot(
            &c.sku,
            &c.from,
            c.lot.as_ref(),
            LotUse::Take(n),
            "to ship on the transfer",
        )?;
        Ok(vec![(
            Subject::Stock(c.sku.clone()),
            Event::TransferShipped(TransferShipped {
                sku: c.sku.clone(),
                transfer: c.transfer.clone(),
                from: c.from.clone(),
                to: c.to.clone(),
                lot: c.lot.clone(),
                qty: c.qty,
            }),
        )])
    }

    fn transfer_receive(&self, c: &TransferReceive) -> Result<Decision, Rejection> {
        let transfer = self
            .stock(&c.sku)
            .and_then(|s| s.extras().transfers.get(&c.transfer))
            .ok_or_else(|| {
                reject(
                    code::UNKNOWN_TRANSFER,
                    format!("no transfer `{}` of {} was shipped", c.transfer, c.sku),
                )
            })?;
        if transfer.received {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("transfer {} was already received", c.transfer),
            ));
        }
        let variance = QtyDelta::new(c.qty.get() - transfer.qty).expect("bounded quantities");
        Ok(vec![(
            Subject::Stock(c.sku.clone()),
            Event::TransferReceived(TransferReceived {
                sku: c.sku.clone(),
                transfer: c.transfer.clone(),
                to: transfer.to.clone(),
                lot: transfer.lot.clone(),
                qty: c.qty,
                variance,
            }),
        )])
    }

    fn adjust(&self, c: &Adjust) -> Result<Decision, Rejection> {
        self.item(&c.sku)?;
        self.location(&c.location)?;
        if c.delta.get() == 0 {
            return Err(reject(code::INVALID_QUANTITY, "delta must not be 0"));
        }
        if c.delta.get() < 0 {
            self.check_decrease(&c.sku, &c.location, -c.delta.get(), "adjusting down")?;
        }
        let use_ = match c.delta.get() {
            d if d < 0 => LotUse::Take(-d),
            _ => LotUse::Name,
        };
        self.check_lot(&c.sku, &c.location, c.lot.as_ref(), use_, "to adjust")?;
        Ok(vec![(
            Subject::Stock(c.sku.clone()),
            Event::StockAdjusted(StockAdjusted {
                sku: c.sku.clone(),
                location: c.location.clone(),
                lot: c.lot.clone(),
                delta: c.delta,
                reason: c.reason.clone(),
                note: c.note.clone(),
                approved_by: self.approved_by.cloned(),
            }),
        )])
    }

    /// Books what a count found. A count below what is committed to orders takes the
    /// shortage from their unpicked allocations at the location, the least urgent order first
    /// (highest priority number, then the latest placed), and routes each released unit again
    /// to another location with stock or backorders it, all in the same batch.
    fn count(&self, c: &Count) -> Result<Decision, Rejection> {
        self.item(&c.sku)?;
        self.location(&c.location)?;
        let b = self.balance(&c.sku, &c.location);
        self.check_lot(
            &c.sku,
            &c.location,
            c.lot.as_ref(),
            LotUse::Name,
            "to count",
        )?;
        // A lot-kept item is counted a lot at a time: what the lot has on the shelf there.
        let expected = match (&c.lot, self.by_lot(&c.sku)) {
            (Some(lot), true) => {
                let here = self
                    .lot(&c.sku, lot)
                    .map(|l| l.at(&c.location))
                    .unwrap_or_default();
                if c.counted.get() < here.held {
                    return Err(reject(
                        code::INSUFFICIENT_STOCK,
                        format!(
                            "counted: {} of lot {lot} of {} at {} are in quality hold; a count of {} cannot take them (release or scrap them first)",
                            here.held, c.sku, c.location, c.counted
                        ),
                    ));
                }
                here.units
            }
            _ => b.on_hand,
        };
        let variance = c.counted.get() - expected;
        let mut rerouted = Vec::new();
        if variance < 0 && !self.allows_negative(&c.sku) && -variance > b.free() {
            let short = -variance - b.free().max(0);
            let why = format!("a count at {} found {} {}", c.location, c.counted, c.sku);
            rerouted = self.take_back_allocations(&c.sku, &c.location, short, &why)?;
        }
        // The allocations are taken back before the count is booked, so the stock's
        // invariants hold after every event of the batch (as `erp verify` checks them).
        let mut decision = rerouted;
        decision.push((
            Subject::Stock(c.sku.clone()),
            Event::StockCounted(StockCounted {
                sku: c.sku.clone(),
                location: c.location.clone(),
                bin: c.bin.clone(),
                lot: c.lot.clone(),
                counted: c.counted,
                expected: qty(expected.max(0)),
                variance: QtyDelta::new(variance).expect("bounded quantities"),
                approved_by: self.approved_by.cloned(),
            }),
        ));
        Ok(decision)
    }

    /// Releases `short` units of unpicked allocations of `sku` at `location` (a count found
    /// only `counted` there), least urgent orders first, and allocates each released line
    /// again elsewhere or backorders it.
    fn take_back_allocations(
        &self,
        sku: &Sku,
        location: &LocationId,
        short: i64,
        why: &str,
    ) -> Result<Decision, Rejection> {
        let mut holders: Vec<(&OrderId, &OrderState, u32, i64)> = Vec::new();
        for (id, order) in &self.state.orders {
            for (n, line) in order.lines.iter() {
                if line.sku.as_ref() != Some(sku) {
                    continue;
                }
                let unpicked = line.allocated.get(location).copied().unwrap_or(0)
                    - line.picked.get(location).copied().unwrap_or(0);
                if unpicked > 0 {
                    holders.push((id, order, *n, unpicked));
                }
            }
        }
        let releasable: i64 = holders.iter().map(|h| h.3).sum();
        if releasable < short {
            let b = self.balance(sku, location);
            return Err(reject(
                code::INSUFFICIENT_STOCK,
                format!(
                    "{why}: that leaves less than is picked, reserved or in quality hold ({} allocated of which {releasable} unpicked, {} reserved, {} in quality hold); release holds or quality stock first",
                    b.allocated, b.reserved, b.quality_hold
                ),
            ));
        }
        // Least urgent first: the highest priority number, then the latest placed, then the
        // order id (deterministic).
        holders.sort_by(|a, b| {
            (b.1.priority, b.1.placed_at, b.0, b.2).cmp(&(a.1.priority, a.1.placed_at, a.0, a.2))
        });
        // The counted location has nothing left to give in this decision.
        let mut promised = Promised::new();
        promised.insert((sku.clone(), location.clone()), i64::MAX / 4);
        let mut events = Vec::new();
        let mut left = short;
        for (order_id, order, line, unpicked) in holders {
            if left == 0 {
                break;
            }
            let take = unpicked.min(left);
            left -= take;
            events.push((
                Subject::Stock(sku.clone()),
                Event::AllocationReleased(AllocationReleased {
                    sku: sku.clone(),
                    order: order_id.clone(),
                    line,
                    location: location.clone(),
                    qty: qty(take),
                }),
            ));
            events.push((
                Subject::Order(order_id.clone()),
                Event::LineUnallocated(LineUnallocated {
                    order: order_id.clone(),
                    line,
                    location: location.clone(),
                    qty: qty(take),
                    reason: why.to_owned(),
                }),
            ));
            // The released units wait as a backorder, and what another location can give
            // is allocated from it at once (an allocation serves a backorder first).
            events.push((
                Subject::Order(order_id.clone()),
                Event::LineBackordered(LineBackordered {
                    order: order_id.clone(),
                    line,
                    qty: qty(take),
                }),
            ));
            // Nodes already shipping the order's other units are preferred: fewer shipments.
            let shipping = shipping_nodes(order, Some(location));
            let routes = self.route(
                sku,
                take,
                (order_id, &order.channel),
                &order.region,
                &promised,
                &shipping,
            );
            for (to, n, reason) in routes {
                promised.give(order_id, sku, &to, n, self.limits_orders(&to));
                events.extend(allocation_events(
                    order_id,
                    line,
                    sku,
                    &to,
                    n,
                    format!("{why}: moved from there; {reason}"),
                ));
            }
        }
        Ok(events)
    }

    fn quality_hold(&self, c: &QualityHold) -> Result<Decision, Rejection> {
        self.item(&c.sku)?;
        self.location(&c.location)?;
        let n = positive("qty", c.qty)?;
        let free = self.balance(&c.sku, &c.location).free();
        let mut decision = Vec::new();
        if self.by_lot(&c.sku) {
            // Units of a lot (expired ones, a recall) are held even when orders count on
            // them: those orders' lines are routed again or backordered in the same batch.
            self.check_lot(
                &c.sku,
                &c.location,
                c.lot.as_ref(),
                LotUse::Free(n),
                "to hold",
            )?;
            // What orders and holds count on must stay on hand, and in lots not expired: the
            // units held leave the shelf, and, when their lot is good, the good units too.
            let lot = c.lot.as_ref().expect("checked above");
            let good = self
                .lot(&c.sku, lot)
                .is_some_and(|l| l.fresh_for(self.today(), 0));
            let fresh_after = self.fresh_free(&c.sku, &c.location) - if good { n } else { 0 };
            let short = (n - free.max(0)).max(-fresh_after).max(0);
            if short > 0 {
                let why = format!(
                    "lot {lot} of {} was put on quality hold at {}",
                    c.sku, c.location
                );
                decision = self.take_back_allocations(&c.sku, &c.location, short, &why)?;
            }
        } else if n > free {
            return Err(reject(
                code::INSUFFICIENT_AVAILABLE,
                format!(
                    "holding {n} {} at {}: {} free",
                    c.sku,
                    c.location,
                    free.max(0)
                ),
            ));
        }
        decision.push((
            Subject::Stock(c.sku.clone()),
            Event::QualityHeld(QualityHeld {
                sku: c.sku.clone(),
                location: c.location.clone(),
                lot: c.lot.clone(),
                qty: c.qty,
                reason: c.reason.clone(),
            }),
        ));
        Ok(decision)
    }

    fn quality_release(&self, c: &QualityRelease) -> Result<Decision, Rejection> {
        self.item(&c.sku)?;
        self.location(&c.location)?;
        let n = positive("qty", c.qty)?;
        let held = self.balance(&c.sku, &c.location).quality_hold;
        if n > held {
            return Err(reject(
                code::INSUFFICIENT_STOCK,
                format!(
                    "releasing {n} {} at {}: {held} in quality hold",
                    c.sku, c.location
                ),
            ));
        }
        self.check_lot(
            &c.sku,
            &c.location,
            c.lot.as_ref(),
            LotUse::Held(n),
            "to release",
        )?;
        Ok(vec![(
            Subject::Stock(c.sku.clone()),
            Event::QualityReleased(QualityReleased {
                sku: c.sku.clone(),
                location: c.location.clone(),
                lot: c.lot.clone(),
                qty: c.qty,
            }),
        )])
    }

    fn scrap(&self, c: &Scrap) -> Result<Decision, Rejection> {
        self.item(&c.sku)?;
        self.location(&c.location)?;
        let n = positive("qty", c.qty)?;
        if c.from_quality_hold {
            let held = self.balance(&c.sku, &c.location).quality_hold;
            if n > held {
                return Err(reject(
                    code::INSUFFICIENT_STOCK,
                    format!(
                        "scrapping {n} {} from quality hold at {}: {held} held",
                        c.sku, c.location
                    ),
                ));
            }
        } else {
            self.check_decrease(&c.sku, &c.location, n, "scrapping")?;
        }
        let use_ = match c.from_quality_hold {
            true => LotUse::Held(n),
            false => LotUse::Take(n),
        };
        self.check_lot(&c.sku, &c.location, c.lot.as_ref(), use_, "to scrap")?;
        Ok(vec![(
            Subject::Stock(c.sku.clone()),
            Event::StockScrapped(StockScrapped {
                sku: c.sku.clone(),
                location: c.location.clone(),
                lot: c.lot.clone(),
                qty: c.qty,
                reason: c.reason.clone(),
                from_quality_hold: c.from_quality_hold,
            }),
        )])
    }

    fn receive_return(&self, c: &ReceiveReturn) -> Result<Decision, Rejection> {
        self.item(&c.sku)?;
        self.location(&c.location)?;
        let n = positive("qty", c.qty)?;
        let order = self.order(&c.order)?;
        let authorised = order.returns.get(&c.return_id).ok_or_else(|| {
            reject(
                code::UNKNOWN_RETURN,
                format!(
                    "return {} is not authorised on order {}",
                    c.return_id, c.order
                ),
            )
        })?;
        let line_sku = order.lines.get(&c.line).and_then(|l| l.sku.as_ref());
        let Some(line_qty) = authorised
            .lines
            .get(&c.line)
            .filter(|_| line_sku == Some(&c.sku))
        else {
            return Err(reject(
                code::UNKNOWN_LINE,
                format!("return {} has no line {} of {}", c.return_id, c.line, c.sku),
            ));
        };
        let received = self
            .stock(&c.sku)
            .and_then(|s| s.extras().returns.get(&c.return_id))
            .map_or(0, |r| r.received);
        if received + n > *line_qty {
            return Err(reject(
                code::INVALID_QUANTITY,
                format!(
                    "return {} line {}: {line_qty} authorised, {received} already received, {n} more is too many",
                    c.return_id, c.line
                ),
            ));
        }
        let lot = self.return_lot(&c.sku, &c.order, c.lot.as_ref())?;
        let earlier = self
            .stock(&c.sku)
            .and_then(|s| s.extras().returns.get(&c.return_id))
            .and_then(|r| r.lot.as_ref());
        if let (Some(earlier), Some(lot)) = (earlier, &lot)
            && earlier != lot
        {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "lot: return {} received units of lot {earlier}; units of lot {lot} need a return of their own",
                    c.return_id
                ),
            ));
        }
        Ok(vec![(
            Subject::Stock(c.sku.clone()),
            Event::ReturnReceived(ReturnReceived {
                sku: c.sku.clone(),
                return_id: c.return_id.clone(),
                order: c.order.clone(),
                line: c.line,
                location: c.location.clone(),
                qty: c.qty,
                lot,
            }),
        )])
    }

    fn disposition_return(&self, c: &DispositionReturn) -> Result<Decision, Rejection> {
        let n = positive("qty", c.qty)?;
        let returned = self
            .stock(&c.sku)
            .and_then(|s| s.extras().returns.get(&c.return_id))
            .ok_or_else(|| {
                reject(
                    code::UNKNOWN_RETURN,
                    format!(
                        "no units of {} were received on return {}",
                        c.sku, c.return_id
                    ),
                )
            })?;
        let waiting = returned.received - returned.dispositioned;
        if n > waiting {
            return Err(reject(
                code::INVALID_QUANTITY,
                format!(
                    "return {}: {waiting} units await inspection, not {n}",
                    c.return_id
                ),
            ));
        }
        let location = returned
            .location
            .clone()
            .expect("a received return has a location");
        Ok(vec![(
            Subject::Stock(c.sku.clone()),
            Event::ReturnDispositioned(ReturnDispositioned {
                sku: c.sku.clone(),
                return_id: c.return_id.clone(),
                location,
                qty: c.qty,
                disposition: c.disposition.clone(),
                lot: returned.lot.clone(),
            }),
        )])
    }

    fn set_daily_capacity(
        &self,
        c: &crate::command::SetDailyCapacity,
    ) -> Result<Decision, Rejection> {
        self.location(&c.location)?;
        Ok(vec![(
            Subject::Location(c.location.clone()),
            Event::DailyCapacitySet(ledger::events::DailyCapacitySet {
                location: c.location.clone(),
                units: c.units,
                orders: c.orders,
            }),
        )])
    }

    fn set_shelf_life(&self, c: &crate::command::SetShelfLife) -> Result<Decision, Rejection> {
        self.channel(&c.channel)?;
        const MAX_DAYS: u32 = 3660;
        if c.min_days > MAX_DAYS {
            return Err(reject(
                code::INVALID_QUANTITY,
                format!(
                    "min_days: {} is more than {MAX_DAYS} days; state the days of shelf life the channel wants left",
                    c.min_days
                ),
            ));
        }
        Ok(vec![(
            Subject::Channel(c.channel.clone()),
            Event::ChannelShelfLifeSet(ledger::events::ChannelShelfLifeSet {
                channel: c.channel.clone(),
                min_days: c.min_days,
            }),
        )])
    }

    fn set_shipping_rate(&self, c: &SetShippingRate) -> Result<Decision, Rejection> {
        self.location(&c.location)?;
        if c.region.trim().is_empty() {
            return Err(reject(
                code::INVALID_COMMAND,
                "data.region: expected the ship-to region the rate is for (as orders name it in ship_to_region), got an empty text",
            ));
        }
        if c.cost.amount.is_sign_negative() {
            return Err(reject(
                code::NEGATIVE_AMOUNT,
                format!(
                    "data.cost.amount: a shipment cannot cost less than nothing, got {}",
                    c.cost.amount
                ),
            ));
        }
        // Routing compares the rates of one entity's nodes: they are all in one currency.
        let others = self
            .state
            .shipping_rates
            .iter()
            .filter(|(at, _)| {
                self.state.location_entities.get(*at)
                    == self.state.location_entities.get(&c.location)
            })
            .flat_map(|(at, rates)| rates.iter().map(move |(region, cost)| (at, region, cost)))
            .find(|(at, region, cost)| {
                cost.currency != c.cost.currency && !(**at == c.location && **region == c.region)
            });
        if let Some((at, region, cost)) = others {
            return Err(reject(
                code::CURRENCY_MISMATCH,
                format!(
                    "data.cost.currency: {}, but the rate from {at} to {region} is in {}; routing compares the rates of an entity's nodes, so they are all in one currency",
                    c.cost.currency, cost.currency
                ),
            ));
        }
        Ok(vec![(
            Subject::Location(c.location.clone()),
            Event::ShippingRateSet(ShippingRateSet {
                location: c.location.clone(),
                region: c.region.clone(),
                cost: c.cost,
            }),
        )])
    }

    fn set_channel_allocation(&self, c: &SetChannelAllocation) -> Result<Decision, Rejection> {
        self.item(&c.sku)?;
        self.channel(&c.channel)?;
        Ok(vec![(
            Subject::Stock(c.sku.clone()),
            Event::ChannelAllocationSet(ChannelAllocationSet {
                sku: c.sku.clone(),
                channel: c.channel.clone(),
                rule: c.rule.clone(),
            }),
        )])
    }

    fn place_hold(&self, c: &PlaceHold) -> Result<Decision, Rejection> {
        self.item(&c.sku)?;
        self.location(&c.location)?;
        if let Some(channel) = &c.channel {
            self.channel(channel)?;
        }
        let n = positive("qty", c.qty)?;
        if c.ttl_seconds == 0 {
            return Err(reject(
                code::INVALID_QUANTITY,
                "ttl_seconds must be greater than 0",
            ));
        }
        if self
            .stock(&c.sku)
            .is_some_and(|s| s.extras().holds.contains_key(&c.hold))
        {
            return Err(reject(
                code::ALREADY_EXISTS,
                format!("hold {} on {} exists", c.hold, c.sku),
            ));
        }
        let available = self.available(&c.sku, &c.location, c.channel.as_ref(), &Promised::new());
        if n > available {
            return Err(reject(
                code::INSUFFICIENT_AVAILABLE,
                format!(
                    "holding {n} {} at {}: {available} available",
                    c.sku, c.location
                ),
            ));
        }
        let expires_at = Timestamp::new(
            self.at.as_datetime() + chrono::Duration::seconds(i64::from(c.ttl_seconds)),
        );
        Ok(vec![(
            Subject::Stock(c.sku.clone()),
            Event::StockReserved(StockReserved {
                sku: c.sku.clone(),
                hold: c.hold.clone(),
                location: c.location.clone(),
                channel: c.channel.clone(),
                qty: c.qty,
                expires_at,
            }),
        )])
    }

    fn end_hold(
        &self,
        sku: &Sku,
        hold_id: &ledger::values::HoldId,
        expire: bool,
    ) -> Result<Decision, Rejection> {
        let hold = self
            .stock(sku)
            .and_then(|s| s.extras().holds.get(hold_id))
            .ok_or_else(|| {
                reject(
                    code::UNKNOWN_HOLD,
                    format!("no open hold `{hold_id}` on {sku}"),
                )
            })?;
        let event = if expire {
            if self.at < hold.expires_at {
                return Err(reject(
                    code::HOLD_NOT_EXPIRED,
                    format!(
                        "hold {hold_id} expires at {}, after {}",
                        hold.expires_at, self.at
                    ),
                ));
            }
            Event::ReservationExpired(ReservationExpired {
                sku: sku.clone(),
                hold: hold_id.clone(),
                location: hold.location.clone(),
                qty: qty(hold.qty),
            })
        } else {
            Event::ReservationReleased(ReservationReleased {
                sku: sku.clone(),
                hold: hold_id.clone(),
                location: hold.location.clone(),
                qty: qty(hold.qty),
            })
        };
        Ok(vec![(Subject::Stock(sku.clone()), event)])
    }

    fn place_order(&self, c: &PlaceOrder) -> Result<Decision, Rejection> {
        if self.state.orders.contains_key(&c.order) {
            return Err(reject(
                code::ALREADY_EXISTS,
                format!("order {} was already placed", c.order),
            ));
        }
        self.channel(&c.channel)?;
        let Some(first) = c.lines.first() else {
            return Err(reject(
                code::INVALID_QUANTITY,
                "an order needs at least one line",
            ));
        };
        let currency = first.unit_price.currency;
        let mut seen = std::collections::HashSet::new();
        let mut lines = Vec::with_capacity(c.lines.len());
        for (i, l) in c.lines.iter().enumerate() {
            if !seen.insert(l.line) {
                return Err(reject(
                    code::INVALID_QUANTITY,
                    format!("line number {} appears twice", l.line),
                ));
            }
            lines.push(self.order_line(&format!("lines[{i}]"), l, currency)?);
        }
        let shipping = c.shipping_charged.unwrap_or(Money::zero(currency));
        if shipping.currency != currency {
            return Err(reject(
                code::CURRENCY_MISMATCH,
                format!(
                    "shipping_charged is in {}, the order in {currency}",
                    shipping.currency
                ),
            ));
        }
        let mut events = vec![(
            Subject::Order(c.order.clone()),
            Event::OrderPlaced(OrderPlaced {
                order: c.order.clone(),
                channel: c.channel.clone(),
                external_ref: c.external_ref.clone(),
                lines,
                shipping_charged: shipping,
                ship_to_region: c.ship_to_region.clone(),
                promise_date: c.promise_date,
                priority: c.priority,
                policy: c.policy.clone(),
            }),
        )];
        let wanted: Vec<(u32, Sku, i64)> = c
            .lines
            .iter()
            .map(|l| (l.line, l.sku.clone(), l.qty.get()))
            .collect();
        events.extend(self.allocate(
            &c.order,
            &c.channel,
            &c.ship_to_region,
            &c.policy,
            &wanted,
            Vec::new(),
            &Promised::new(),
        ));
        Ok(events)
    }

    /// An order line as stated (`at`: where it is in the command), checked: a known SKU, a
    /// positive quantity, amounts not below zero and all in the order's `currency`.
    fn order_line(
        &self,
        at: &str,
        l: &crate::command::OrderLineIn,
        currency: ledger::values::Currency,
    ) -> Result<OrderLine, Rejection> {
        self.item(&l.sku)?;
        positive(&format!("{at}.qty"), l.qty)?;
        let zero = Money::zero(currency);
        let (discount, tax, fees) = (
            l.discount.unwrap_or(zero),
            l.tax.unwrap_or(zero),
            l.fees.unwrap_or(zero),
        );
        for (field, m) in [
            ("unit_price", &l.unit_price),
            ("discount", &discount),
            ("tax", &tax),
            ("fees", &fees),
        ] {
            if m.currency != currency {
                return Err(reject(
                    code::CURRENCY_MISMATCH,
                    format!("{at}.{field} is in {}, the order in {currency}", m.currency),
                ));
            }
            non_negative_money(&format!("{at}.{field}"), m)?;
        }
        Ok(OrderLine {
            line: l.line,
            sku: l.sku.clone(),
            qty: l.qty,
            unit_price: l.unit_price,
            discount,
            tax,
            fees,
        })
    }

    /// Routes and allocates lines, with as few shipments as it can: if one node can fill every
    /// line, the best such node ships the whole order. Otherwise, per line: if some nodes can
    /// fill it entirely, the best of them takes it all, a node already shipping an earlier
    /// line of the order first; otherwise nodes with more available come first and the line
    /// is split across them. "Best" is: the cheapest shipment to the ship-to region (nodes
    /// with a rate first), then in the region, then the lowest routing priority, then the
    /// location id. `shipping`: nodes already shipping some of the order, preferred over all
    /// of these. What no node can give is backordered. With `ShipComplete`, nothing is
    /// allocated unless every line can be filled. `freed`: units the same decision releases
    /// (as negative amounts promised), available to these lines.
    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &self,
        order: &OrderId,
        channel: &ChannelId,
        region: &str,
        policy: &FulfilmentPolicy,
        lines: &[(u32, Sku, i64)],
        shipping: Vec<LocationId>,
        freed: &Promised,
    ) -> Decision {
        let mut plan: Vec<(u32, Sku, Vec<Route>, i64)> = Vec::new();
        if let Some(node) = self.one_node_for_all(lines, (order, channel), region, &shipping, freed)
        {
            for (line, sku, want) in lines {
                plan.push((
                    *line,
                    sku.clone(),
                    vec![(node.0.clone(), *want, node.1.clone())],
                    *want,
                ));
            }
        } else {
            let mut promised = freed.clone();
            let mut shipping = shipping;
            for (line, sku, want) in lines {
                let routes = self.route(sku, *want, (order, channel), region, &promised, &shipping);
                for (location, take, _) in &routes {
                    promised.give(order, sku, location, *take, self.limits_orders(location));
                    if !shipping.contains(location) {
                        shipping.push(location.clone());
                    }
                }
                plan.push((*line, sku.clone(), routes, *want));
            }
        }
        let complete = plan
            .iter()
            .all(|(_, _, routes, want)| routes.iter().map(|r| r.1).sum::<i64>() == *want);
        let mut events = Vec::new();
        for (line, sku, routes, want) in plan {
            let mut allocated = 0;
            if complete || *policy == FulfilmentPolicy::Partial {
                for (location, take, reason) in routes {
                    events.extend(allocation_events(
                        order, line, &sku, &location, take, reason,
                    ));
                    allocated += take;
                }
            }
            if want > allocated {
                events.push((
                    Subject::Order(order.clone()),
                    Event::LineBackordered(LineBackordered {
                        order: order.clone(),
                        line,
                        qty: qty(want - allocated),
                    }),
                ));
            }
        }
        events
    }

    /// How a node ranks by what a shipment from it to `region` costs: nodes with a rate
    /// first, the cheapest first; nodes without one after them.
    fn shipping_cost_rank(
        &self,
        location: &LocationId,
        region: &str,
    ) -> (bool, rust_decimal::Decimal) {
        match self.shipping_cost(location, region) {
            Some(cost) => (false, cost.amount),
            None => (true, rust_decimal::Decimal::ZERO),
        }
    }

    fn shipping_cost(&self, location: &LocationId, region: &str) -> Option<Money> {
        self.state
            .shipping_rates
            .get(location)
            .and_then(|rates| rates.get(region))
            .copied()
    }

    /// The rate a routing reason names, if there is one.
    fn shipping_cost_words(&self, location: &LocationId, region: &str) -> String {
        self.shipping_cost(location, region)
            .map(|c| format!("; a shipment to {region} costs {} {}", c.amount, c.currency))
            .unwrap_or_default()
    }

    /// What a node's daily capacity leaves it today, for a routing reason ("" without one).
    fn capacity_words(&self, location: &LocationId, promised: &Promised) -> String {
        let units = self.state.daily_capacity.get(location).map(|units| {
            format!(
                "; room for {} more units today (daily capacity {units})",
                self.room(location, promised)
            )
        });
        let orders = self.state.daily_order_capacity.get(location).map(|orders| {
            format!(
                "; room for {} more orders today (daily capacity {orders} orders)",
                self.orders_left(location, promised)
            )
        });
        units.into_iter().chain(orders).collect()
    }

    /// The locations of the command's own entity: their stock is its stock, and orders are
    /// routed only there.
    fn own_locations(&self) -> impl Iterator<Item = &'a LocationDefined> + '_ {
        self.state.locations.values().map(|d| &d.value).filter(|l| {
            self.state
                .location_entities
                .get(&l.location)
                .is_none_or(|owner| *owner == self.command.legal_entity)
        })
    }

    /// The best node (as `allocate` ranks them) that can fill every one of several `lines`,
    /// with the reason to record (nodes in `shipping` first); `None` when no node has them
    /// all, or for a single line no node in `shipping` can fill (`route` places it).
    fn one_node_for_all(
        &self,
        lines: &[(u32, Sku, i64)],
        order: (&OrderId, &ChannelId),
        region: &str,
        shipping: &[LocationId],
        freed: &Promised,
    ) -> Option<(LocationId, String)> {
        if lines.len() < 2 && shipping.is_empty() {
            return None;
        }
        let best = self
            .own_locations()
            .filter(|l| {
                let mut promised = freed.clone();
                lines.iter().all(|(_, sku, want)| {
                    let fills = self.routable(sku, &l.location, order, &promised) >= *want;
                    promised.give(
                        order.0,
                        sku,
                        &l.location,
                        *want,
                        self.limits_orders(&l.location),
                    );
                    fills
                })
            })
            .min_by_key(|l| {
                (
                    !shipping.contains(&l.location),
                    self.shipping_cost_rank(&l.location, region),
                    l.region != region,
                    l.routing_priority,
                    l.location.clone(),
                )
            })?;
        if lines.len() < 2 && !shipping.contains(&best.location) {
            // One line, and no node of the order's parcels has it: `route` places it.
            return None;
        }
        let reason = format!(
            "{} has every line {}: one shipment{}; {}; routing priority {}",
            best.location,
            if shipping.contains(&best.location) {
                "left, and ships the order already"
            } else {
                "of the order"
            },
            self.shipping_cost_words(&best.location, region),
            if best.region != region {
                format!("outside region {region}")
            } else {
                format!("in region {region}")
            },
            best.routing_priority
        );
        Some((best.location.clone(), reason))
    }

    /// Where `want` units of `sku` come from, in the routing order described on `allocate`;
    /// `shipping`: nodes already shipping other lines of the order, preferred when they can
    /// fill this one entirely.
    fn route(
        &self,
        sku: &Sku,
        want: i64,
        order: (&OrderId, &ChannelId),
        region: &str,
        promised: &Promised,
        shipping: &[LocationId],
    ) -> Vec<Route> {
        let mut candidates: Vec<(i64, bool, u32, &LocationId)> = self
            .own_locations()
            .map(|l| {
                (
                    self.routable(sku, &l.location, order, promised),
                    l.region != region,
                    l.routing_priority,
                    &l.location,
                )
            })
            .filter(|c| c.0 > 0)
            .collect();
        let whole = candidates.iter().any(|c| c.0 >= want);
        // With a node that fills the line, availability only filters; otherwise more first.
        candidates.retain(|c| !whole || c.0 >= want);
        candidates.sort_by_key(|&(available, other_region, priority, location)| {
            (
                if whole { 0 } else { -available },
                whole && !shipping.contains(location),
                self.shipping_cost_rank(location, region),
                other_region,
                priority,
                location.clone(),
            )
        });
        let mut left = want;
        let mut routes = Vec::new();
        for (available, other_region, priority, location) in candidates {
            if left == 0 {
                break;
            }
            let take = available.min(left);
            left -= take;
            let reason = format!(
                "{}{}{}; {}; routing priority {priority}",
                if whole && shipping.contains(location) {
                    format!(
                        "{location} has all {want} available and ships another line of the order"
                    )
                } else if whole {
                    format!("{location} has all {want} available")
                } else {
                    format!("no node has all {want}; {location} has {available}")
                },
                self.capacity_words(location, promised),
                self.shipping_cost_words(location, region),
                if other_region {
                    format!("outside region {region}")
                } else {
                    format!("in region {region}")
                },
            );
            routes.push((location.clone(), take, reason));
        }
        routes
    }

    fn hold_order(&self, c: &HoldOrder) -> Result<Decision, Rejection> {
        let order = self.order(&c.order)?;
        if order.hold.is_some() {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("order {} is already held", c.order),
            ));
        }
        if order.lines.values().all(|l| l.open() == 0) {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("order {} has nothing open to hold", c.order),
            ));
        }
        Ok(vec![(
            Subject::Order(c.order.clone()),
            Event::OrderHeld(OrderHeld {
                order: c.order.clone(),
                reason: c.reason.clone(),
            }),
        )])
    }

    fn release_order(&self, c: &ReleaseOrder) -> Result<Decision, Rejection> {
        let held_for = self.order(&c.order)?.hold.as_ref().ok_or_else(|| {
            reject(
                code::INVALID_TRANSITION,
                format!("order {} is not held", c.order),
            )
        })?;
        if let Some(reason) = &c.reason
            && reason != held_for
        {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "reason: order {} is held for `{held_for}`, not `{reason}`; leave reason out to release it whatever it is held for",
                    c.order
                ),
            ));
        }
        Ok(vec![(
            Subject::Order(c.order.clone()),
            Event::OrderReleased(OrderReleased {
                order: c.order.clone(),
            }),
        )])
    }

    fn allocate_order(&self, c: &AllocateOrder) -> Result<Decision, Rejection> {
        let order = self.order(&c.order)?;
        let waiting: Vec<(u32, Sku, i64)> = order
            .lines
            .iter()
            .filter(|(_, l)| l.backordered > 0)
            .filter_map(|(n, l)| l.sku.clone().map(|s| (*n, s, l.backordered)))
            .collect();
        if waiting.is_empty() {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("order {} has no backordered lines", c.order),
            ));
        }
        // Nodes that already ship some of the order come first: fewer parcels.
        let shipping = shipping_nodes(order, None);
        let events: Decision = self
            .allocate(
                &c.order,
                &order.channel,
                &order.region,
                &order.policy,
                &waiting,
                shipping,
                &Promised::new(),
            )
            .into_iter()
            // The lines are already backordered; only the allocations are new.
            .filter(|(_, e)| !matches!(e, Event::LineBackordered(_)))
            .collect();
        if events.is_empty() {
            return Err(reject(
                code::INSUFFICIENT_AVAILABLE,
                format!(
                    "no stock is available yet for order {}'s backordered lines",
                    c.order
                ),
            ));
        }
        Ok(events)
    }

    fn release_to_pick(&self, c: &ReleaseToPick) -> Result<Decision, Rejection> {
        let order = self.order(&c.order)?;
        if order.hold.is_some() {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("order {} is held", c.order),
            ));
        }
        if order
            .lines
            .values()
            .all(|l| l.allocated_total() - l.picked_total() <= 0)
        {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("order {} has no allocated units to pick", c.order),
            ));
        }
        if order.policy == FulfilmentPolicy::ShipComplete
            && order.lines.values().any(|l| l.backordered > 0)
        {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("order {} ships complete and still has backorders", c.order),
            ));
        }
        Ok(vec![(
            Subject::Order(c.order.clone()),
            Event::OrderReleasedToPick(OrderReleasedToPick {
                order: c.order.clone(),
                wave: c.wave.clone(),
            }),
        )])
    }

    fn line<'o>(
        &self,
        order_id: &OrderId,
        order: &'o OrderState,
        line: u32,
    ) -> Result<&'o LineState, Rejection> {
        order.lines.get(&line).ok_or_else(|| {
            reject(
                code::UNKNOWN_LINE,
                format!("order {order_id} has no line {line}"),
            )
        })
    }

    fn pick(&self, c: &Pick) -> Result<Decision, Rejection> {
        let order = self.order(&c.order)?;
        if !order.released_to_pick || order.hold.is_some() {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("order {} is not released to pick", c.order),
            ));
        }
        if c.lines.is_empty() {
            return Err(reject(
                code::INVALID_QUANTITY,
                "a pick needs at least one line",
            ));
        }
        let mut events = Vec::new();
        let mut taken = std::collections::BTreeMap::new();
        for (i, p) in c.lines.iter().enumerate() {
            let line = self.line(&c.order, order, p.line)?;
            let sku = line.sku.clone().expect("placed lines have a SKU");
            let mut left = positive(&format!("lines[{i}].qty"), p.qty)?;
            let pickable = line.allocated_total() - line.picked_total();
            if left > pickable {
                return Err(reject(
                    code::INSUFFICIENT_STOCK,
                    format!(
                        "order {} line {}: {pickable} allocated and unpicked, {left} to pick",
                        c.order, p.line
                    ),
                ));
            }
            for (location, allocated) in &line.allocated {
                let here = (allocated - line.picked.get(location).copied().unwrap_or(0)).min(left);
                if here <= 0 {
                    continue;
                }
                left -= here;
                // A lot-kept item is picked from the named lot, or the lots expiring first.
                let lots = match self.by_lot(&sku) {
                    true => self
                        .pick_lots(
                            &sku,
                            location,
                            &order.channel,
                            p.lot.as_ref(),
                            here,
                            &mut taken,
                            &format!("lines[{i}]"),
                        )?
                        .into_iter()
                        .map(|(lot, n)| (Some(lot), n))
                        .collect(),
                    false => vec![(p.lot.clone(), here)],
                };
                for (lot, n) in lots {
                    events.push((
                        Subject::Stock(sku.clone()),
                        Event::StockPicked(StockPicked {
                            sku: sku.clone(),
                            order: c.order.clone(),
                            line: p.line,
                            location: location.clone(),
                            bin: p.bin.clone(),
                            lot,
                            qty: qty(n),
                        }),
                    ));
                }
                events.push((
                    Subject::Order(c.order.clone()),
                    Event::LinePicked(LinePicked {
                        order: c.order.clone(),
                        line: p.line,
                        location: location.clone(),
                        qty: qty(here),
                    }),
                ));
            }
        }
        Ok(events)
    }

    fn pack(&self, c: &Pack) -> Result<Decision, Rejection> {
        let order = self.order(&c.order)?;
        if order.packages.contains_key(&c.package)
            || order.shipped_packages.contains_key(&c.package)
        {
            return Err(reject(
                code::ALREADY_EXISTS,
                format!("package {} exists on order {}", c.package, c.order),
            ));
        }
        if c.lines.is_empty() {
            return Err(reject(
                code::PACK_MISMATCH,
                "a package needs at least one line",
            ));
        }
        for l in &c.lines {
            let line = self.line(&c.order, order, l.line)?;
            let unpacked = line.picked_total() - line.packed;
            if l.qty.get() != unpacked || unpacked == 0 {
                return Err(reject(
                    code::PACK_MISMATCH,
                    format!(
                        "order {} line {}: {unpacked} picked and unpacked, {} packed; they must be equal",
                        c.order, l.line, l.qty
                    ),
                ));
            }
        }
        Ok(vec![(
            Subject::Order(c.order.clone()),
            Event::OrderPacked(OrderPacked {
                order: c.order.clone(),
                package: c.package.clone(),
                lines: c.lines.clone(),
            }),
        )])
    }

    fn ship(&self, c: &Ship) -> Result<Decision, Rejection> {
        let order = self.order(&c.order)?;
        non_negative_money("freight_cost", &c.freight_cost)?;
        let contents = order.packages.get(&c.package).ok_or_else(|| {
            reject(
                code::UNKNOWN_PACKAGE,
                format!(
                    "order {} has no packed, unshipped package {}",
                    c.order, c.package
                ),
            )
        })?;
        let mut events = Vec::new();
        let mut lines = Vec::new();
        for &(line_no, n) in contents {
            let line = self.line(&c.order, order, line_no)?;
            let sku = line.sku.clone().expect("placed lines have a SKU");
            let mut left = n;
            for (location, picked) in &line.picked {
                let here = (*picked).min(left);
                if here <= 0 {
                    continue;
                }
                left -= here;
                events.push((
                    Subject::Stock(sku.clone()),
                    Event::StockShipped(StockShipped {
                        sku: sku.clone(),
                        order: c.order.clone(),
                        line: line_no,
                        location: location.clone(),
                        qty: qty(here),
                    }),
                ));
            }
            lines.push(LineQty {
                line: line_no,
                qty: qty(n),
            });
        }
        events.push((
            Subject::Order(c.order.clone()),
            Event::OrderShipped(OrderShipped {
                order: c.order.clone(),
                package: c.package.clone(),
                carrier: c.carrier.clone(),
                tracking: c.tracking.clone(),
                freight_cost: c.freight_cost,
                lines,
            }),
        ));
        Ok(events)
    }

    fn cancel(&self, c: &CancelOrder) -> Result<Decision, Rejection> {
        let order = self.order(&c.order)?;
        let cancellable = |l: &LineState| l.qty - l.shipped - l.cancelled - l.picked_total();
        let requested: Vec<(u32, i64)> = match &c.lines {
            Some(lines) => lines.iter().map(|l| (l.line, l.qty.get())).collect(),
            None => order
                .lines
                .iter()
                .map(|(n, l)| (*n, cancellable(l)))
                .filter(|(_, q)| *q > 0)
                .collect(),
        };
        if requested.is_empty() {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("order {} has nothing left to cancel", c.order),
            ));
        }
        Ok(self.cancel_units(&c.order, order, &requested, &c.reason)?.0)
    }

    /// Cancels `requested` units (line, quantity) of an order: backordered units first, then
    /// allocated ones not yet picked, which are released. With the units freed per SKU and
    /// location (as negative amounts promised, for `allocate`).
    fn cancel_units(
        &self,
        order_id: &OrderId,
        order: &OrderState,
        requested: &[(u32, i64)],
        reason: &ledger::values::ReasonCode,
    ) -> Result<(Decision, Promised), Rejection> {
        let cancellable = |l: &LineState| l.qty - l.shipped - l.cancelled - l.picked_total();
        let mut releases = Vec::new();
        let mut freed = Promised::new();
        let mut cancelled = Vec::new();
        for &(line_no, n) in requested {
            let line = self.line(order_id, order, line_no)?;
            if n <= 0 || n > cancellable(line) {
                return Err(reject(
                    code::INVALID_QUANTITY,
                    format!(
                        "order {order_id} line {line_no}: {} can be cancelled (not picked, shipped or cancelled), not {n}",
                        cancellable(line)
                    ),
                ));
            }
            let sku = line.sku.clone().expect("placed lines have a SKU");
            let mut left = n - n.min(line.backordered);
            for (location, allocated) in &line.allocated {
                let free = (allocated - line.picked.get(location).copied().unwrap_or(0)).min(left);
                if free <= 0 {
                    continue;
                }
                left -= free;
                freed.release(&sku, location, free);
                releases.push((
                    Subject::Stock(sku.clone()),
                    Event::AllocationReleased(AllocationReleased {
                        sku: sku.clone(),
                        order: order_id.clone(),
                        line: line_no,
                        location: location.clone(),
                        qty: qty(free),
                    }),
                ));
            }
            cancelled.push(LineQty {
                line: line_no,
                qty: qty(n),
            });
        }
        if !cancelled.is_empty() {
            releases.push((
                Subject::Order(order_id.clone()),
                Event::LinesCancelled(LinesCancelled {
                    order: order_id.clone(),
                    lines: cancelled,
                    reason: reason.clone(),
                }),
            ));
        }
        Ok((releases, freed))
    }

    /// `order.amend`: cancellations and replaced lines' open units first (their stock freed
    /// for the new lines), then `order.lines_added`, then the new lines' routing and
    /// allocation as at placement, nodes already shipping the order first.
    fn amend(&self, c: &crate::command::AmendOrder) -> Result<Decision, Rejection> {
        let order = self.order(&c.order)?;
        if c.cancel.is_empty() && c.add.is_empty() && c.replace.is_empty() {
            return Err(reject(
                code::INVALID_QUANTITY,
                "nothing to change: give at least one of cancel, add or replace",
            ));
        }
        if order.lines.values().all(|l| l.open() == 0) {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!(
                    "order {} has nothing open (every unit shipped or cancelled); place a new order",
                    c.order
                ),
            ));
        }
        // Each existing line changes once; each new line number is new.
        let mut touched = std::collections::HashSet::new();
        let mut numbers = std::collections::HashSet::new();
        let mut requested: Vec<(u32, i64)> =
            c.cancel.iter().map(|l| (l.line, l.qty.get())).collect();
        for l in &c.cancel {
            if !touched.insert(l.line) {
                return Err(reject(
                    code::INVALID_QUANTITY,
                    format!("line {} is changed twice in one amendment", l.line),
                ));
            }
        }
        let mut added = Vec::new();
        for (i, r) in c.replace.iter().enumerate() {
            let at = format!("replace[{i}]");
            if !touched.insert(r.line) {
                return Err(reject(
                    code::INVALID_QUANTITY,
                    format!("line {} is changed twice in one amendment", r.line),
                ));
            }
            let line = self.line(&c.order, order, r.line)?;
            if line.picked_total() > 0 || line.packed > 0 || line.shipped > 0 {
                return Err(reject(
                    code::INVALID_TRANSITION,
                    format!(
                        "{at}: order {} line {} has units picked, packed or shipped; only a line not yet picked can be replaced (cancel what is left of it and add a line instead)",
                        c.order, r.line
                    ),
                ));
            }
            let open = line.qty - line.cancelled;
            if open <= 0 {
                return Err(reject(
                    code::INVALID_TRANSITION,
                    format!(
                        "{at}: order {} line {} has nothing open to replace",
                        c.order, r.line
                    ),
                ));
            }
            let substitutes = line.sku.as_ref() != Some(&r.by.sku);
            let consent = r
                .consent
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty());
            if substitutes && consent.is_none() {
                return Err(reject(
                    code::REASON_REQUIRED,
                    format!(
                        "{at}.consent: replacing {} by {} on line {} is a substitution; record the customer's consent (who agreed, how and when)",
                        line.sku.as_ref().map_or("?", |s| s.as_str()),
                        r.by.sku,
                        r.line
                    ),
                ));
            }
            requested.push((r.line, open));
            added.push(ledger::events::AddedLine {
                line: self.order_line(&format!("{at}.by"), &r.by, order.currency)?,
                replaces: Some(r.line),
                consent: consent.map(str::to_owned),
            });
        }
        for (i, l) in c.add.iter().enumerate() {
            added.push(ledger::events::AddedLine {
                line: self.order_line(&format!("add[{i}]"), l, order.currency)?,
                replaces: None,
                consent: None,
            });
        }
        for a in &added {
            let n = a.line.line;
            if order.lines.get(&n).is_some() || !numbers.insert(n) {
                return Err(reject(
                    code::ALREADY_EXISTS,
                    format!(
                        "line number {n} is already used on order {}; a new line needs a number of its own",
                        c.order
                    ),
                ));
            }
        }
        let (mut events, freed) = self.cancel_units(&c.order, order, &requested, &c.reason)?;
        if added.is_empty() {
            return Ok(events);
        }
        let wanted: Vec<(u32, Sku, i64)> = added
            .iter()
            .map(|a| (a.line.line, a.line.sku.clone(), a.line.qty.get()))
            .collect();
        // The new lines are recorded before the cancellation (the batch's last event so far,
        // if any), so no reader sees the order complete in between.
        let before_cancellation = events.len() - usize::from(!requested.is_empty());
        events.insert(
            before_cancellation,
            (
                Subject::Order(c.order.clone()),
                Event::LinesAdded(ledger::events::LinesAdded {
                    order: c.order.clone(),
                    lines: added,
                    reason: c.reason.clone(),
                }),
            ),
        );
        events.extend(self.allocate(
            &c.order,
            &order.channel,
            &order.region,
            &order.policy,
            &wanted,
            shipping_nodes(order, None),
            &freed,
        ));
        Ok(events)
    }

    fn authorise_return(&self, c: &AuthoriseReturn) -> Result<Decision, Rejection> {
        let order = self.order(&c.order)?;
        if order.returns.contains_key(&c.return_id) {
            return Err(reject(
                code::ALREADY_EXISTS,
                format!("return {} exists on order {}", c.return_id, c.order),
            ));
        }
        if c.lines.is_empty() {
            return Err(reject(
                code::INVALID_QUANTITY,
                "a return needs at least one line",
            ));
        }
        for l in &c.lines {
            let line = self.line(&c.order, order, l.line)?;
            let returnable = line.shipped - line.return_authorised;
            if l.qty.is_zero() || l.qty.get() > returnable {
                return Err(reject(
                    code::INVALID_QUANTITY,
                    format!(
                        "order {} line {}: {returnable} shipped and not yet returned, not {}",
                        c.order, l.line, l.qty
                    ),
                ));
            }
        }
        Ok(vec![(
            Subject::Order(c.order.clone()),
            Event::ReturnAuthorised(ReturnAuthorised {
                order: c.order.clone(),
                return_id: c.return_id.clone(),
                lines: c.lines.clone(),
                reason: Some(c.reason.clone()),
                note: c.note.clone(),
            }),
        )])
    }

    fn refund(&self, c: &Refund) -> Result<Decision, Rejection> {
        let order = self.order(&c.order)?;
        let ret = order.returns.get(&c.return_id).ok_or_else(|| {
            reject(
                code::UNKNOWN_RETURN,
                format!(
                    "return {} is not authorised on order {}",
                    c.return_id, c.order
                ),
            )
        })?;
        if ret.refunded {
            return Err(reject(
                code::INVALID_TRANSITION,
                format!("return {} was already refunded", c.return_id),
            ));
        }
        if c.amount.currency != order.currency {
            return Err(reject(
                code::CURRENCY_MISMATCH,
                format!(
                    "amount is in {}, the order in {}",
                    c.amount.currency, order.currency
                ),
            ));
        }
        if c.amount.amount <= rust_decimal::Decimal::ZERO {
            return Err(reject(
                code::NEGATIVE_AMOUNT,
                "amount must be greater than 0",
            ));
        }
        // Inspected = received and dispositioned, over every SKU of the return.
        let mut authorised = 0;
        let mut inspected = 0;
        for (line_no, n) in &ret.lines {
            authorised += n;
            if let Some(sku) = order.lines.get(line_no).and_then(|l| l.sku.as_ref()) {
                inspected += self
                    .stock(sku)
                    .and_then(|s| s.extras().returns.get(&c.return_id))
                    .map_or(0, |r| r.dispositioned);
            }
        }
        if inspected < authorised {
            return Err(reject(
                code::NOT_INSPECTED,
                format!(
                    "return {}: {inspected} of {authorised} units received and inspected",
                    c.return_id
                ),
            ));
        }
        Ok(vec![(
            Subject::Order(c.order.clone()),
            Event::OrderRefunded(OrderRefunded {
                order: c.order.clone(),
                return_id: c.return_id.clone(),
                amount: c.amount,
            }),
        )])
    }
}

fn allocation_events(
    order: &OrderId,
    line: u32,
    sku: &Sku,
    location: &LocationId,
    n: i64,
    reason: String,
) -> Decision {
    vec![
        (
            Subject::Order(order.clone()),
            Event::LineRouted(LineRouted {
                order: order.clone(),
                line,
                location: location.clone(),
                reason,
            }),
        ),
        (
            Subject::Stock(sku.clone()),
            Event::StockAllocated(StockAllocated {
                sku: sku.clone(),
                order: order.clone(),
                line,
                location: location.clone(),
                qty: qty(n),
            }),
        ),
        (
            Subject::Order(order.clone()),
            Event::LineAllocated(LineAllocated {
                order: order.clone(),
                line,
                location: location.clone(),
                qty: qty(n),
            }),
        ),
    ]
}
