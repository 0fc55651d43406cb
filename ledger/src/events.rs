//! The event catalogue: every fact the ledger records, as Rust types.
//!
//! Each payload type has a stable name (`stock.received`) and a schema version. The types named
//! here are always the *current* version; older versions live in `crate::upcast` and are turned
//! into these on read. Changing a payload's shape means adding a version there, never editing
//! bytes that were written. docs/EVENTS.md explains every field.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{
    ActorId, BinId, ChannelId, Currency, Date, EntityId, HoldId, LocationId, LotId, Money, OrderId,
    PackageId, Period, PurchaseOrderId, Qty, QtyDelta, Rate, Ratio, ReasonCode, ReturnId, SerialNo,
    Sku, SupplierId, Timestamp, TransferId, UnitName, WaveId,
};

/// Expands to the derives every payload type carries.
macro_rules! payload {
    ($($item:item)*) => {
        $(
            #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
            #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
            $item
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Shared parts
// ---------------------------------------------------------------------------------------------

payload! {
    /// A named pack of the base unit (`box` = 12 `each`).
    pub struct PackSize {
        pub unit: UnitName,
        pub base_units: Qty,
    }

    /// Which identities the item's stock carries.
    pub struct Tracking {
        pub lot: bool,
        pub serial: bool,
        pub expiry: bool,
    }

    /// How the item's stock is valued.
    pub enum CostMethod {
        Fifo,
        MovingAverage,
    }

    pub enum LocationKind {
        Warehouse,
        Store,
        ThirdPartyLogistics,
        DropShip,
    }

    /// How a channel's open checkouts hold stock.
    pub enum ReservationPolicy {
        /// No hold until the order is placed.
        None,
        /// A hold with the given time to live, in seconds.
        HoldWithTtl { ttl_seconds: u32 },
    }

    /// What to do with a returned unit after inspection.
    pub enum Disposition {
        Restock,
        Refurbish,
        Scrap,
        ReturnToVendor,
    }

    /// A channel's share of a SKU's stock.
    pub enum ChannelAllocationRule {
        /// Exactly this many units are set aside for the channel.
        RingFenced { qty: Qty },
        /// The channel may sell this fraction of available stock.
        Share { ratio: Ratio },
        /// No rule: the channel sells from the common pool.
        Unrestricted,
    }

    /// An order's allocation policy.
    pub enum FulfilmentPolicy {
        ShipComplete,
        Partial,
    }

    /// One line of a customer order, as placed.
    pub struct OrderLine {
        pub line: u32,
        pub sku: Sku,
        pub qty: Qty,
        pub unit_price: Money,
        pub discount: Money,
        pub tax: Money,
        pub fees: Money,
    }

    /// A quantity on one order line.
    pub struct LineQty {
        pub line: u32,
        pub qty: Qty,
    }

    /// One line of a purchase order.
    pub struct PurchaseLine {
        pub line: u32,
        pub sku: Sku,
        pub location: LocationId,
        pub qty: Qty,
        pub unit_cost: Money,
    }

    /// A receipt's link to the purchase order line it fulfils.
    pub struct PurchaseRef {
        pub purchase_order: PurchaseOrderId,
        pub line: u32,
    }

    /// Why a customer sends goods back: a fixed list an integrator can map its own codes to
    /// (`Other` with a note for anything else).
    pub enum ReturnReason {
        Colour,
        Defective,
        NotAsDescribed,
        SizeTooLarge,
        SizeTooSmall,
        Style,
        Unwanted,
        WrongItem,
        Other,
    }

    pub enum ChargeKind {
        Freight,
        Duty,
        Insurance,
        Handling,
    }

    pub enum AllocationBasis {
        Value,
        Quantity,
        Weight,
    }

    /// The share of a landed-cost charge given to one purchase order line.
    pub struct ChargeShare {
        pub line: u32,
        pub sku: Sku,
        pub amount: Money,
    }
}

// ---------------------------------------------------------------------------------------------
// Master data
// ---------------------------------------------------------------------------------------------

payload! {
    /// An item was defined, or its definition replaced (`item.changed` carries the same body).
    pub struct ItemDefined {
        pub sku: Sku,
        pub description: String,
        pub base_unit: UnitName,
        pub pack_sizes: Vec<PackSize>,
        pub tracking: Tracking,
        pub reorder_point: Qty,
        pub safety_stock: Qty,
        pub lead_time_days: u32,
        pub min_order_qty: Qty,
        pub suppliers: Vec<SupplierId>,
        pub cost_method: CostMethod,
        /// Whether on-hand may go below zero (services, drop-ship lines, gift vouchers).
        pub allow_negative: bool,
    }

    pub struct LocationDefined {
        pub location: LocationId,
        pub name: String,
        pub kind: LocationKind,
        pub region: String,
        /// Storage capacity in base units; `None` for unlimited.
        pub capacity: Option<Qty>,
        /// Lower number is preferred by order routing.
        pub routing_priority: u32,
    }

    /// What one shipment from `location` to `region` costs (a carrier's rate card): order
    /// routing takes the cheapest node among those that ship the order in as few parcels.
    /// Set again to change it.
    pub struct ShippingRateSet {
        pub location: LocationId,
        pub region: String,
        pub cost: Money,
    }

    /// How many units a location can take on in allocations in one business day (UTC), or
    /// `None` for no limit. Routing passes over a node whose day is full; units released by
    /// a cancellation on the same day give the room back. Set again to change it.
    /// A location's daily capacity: units and orders it takes on in allocations per business
    /// day (UTC); none: no limit (version 2 added `orders`).
    pub struct DailyCapacitySet {
        pub location: LocationId,
        pub units: Option<u32>,
        pub orders: Option<u32>,
    }

    pub struct SupplierDefined {
        pub supplier: SupplierId,
        pub name: String,
        pub currency: Currency,
        pub lead_time_days: u32,
    }

    pub struct ChannelDefined {
        pub channel: ChannelId,
        pub name: String,
        pub fee_rate: Ratio,
        pub reservation_policy: ReservationPolicy,
    }

    /// The fewest days of shelf life a unit must have left when the channel's orders are
    /// allocated and picked (expiry-tracked items); 0 takes anything not yet expired.
    pub struct ChannelShelfLifeSet {
        pub channel: ChannelId,
        pub min_days: u32,
    }

    /// A legal entity: whose books a command's events are posted to.
    pub struct LegalEntityDefined {
        pub entity: EntityId,
        pub name: String,
        /// Its functional currency.
        pub currency: Currency,
        /// ISO 3166-1 alpha-2 country code (`GB`, `DE`); empty for an entity defined before
        /// entities had one.
        pub country: String,
    }
}

// ---------------------------------------------------------------------------------------------
// Governance: one subject per legal entity (thresholds, approvals, periods)
// ---------------------------------------------------------------------------------------------

payload! {
    /// A quantity in base units or an amount of money: what a maker-checker threshold limits
    /// and what a command measured against it.
    pub enum Measure {
        Quantity(Qty),
        Value(Money),
    }

    /// Commands of `command_type` measuring more than `limit` wait for a second person's
    /// approval; at or below it they pass, with the threshold recorded. `None` removes it.
    pub struct ThresholdSet {
        pub command_type: String,
        pub limit: Option<Measure>,
    }

    /// The threshold in force for a decision: which limit, set by whom and when, and what the
    /// command measured.
    pub struct ThresholdApplied {
        pub command_type: String,
        pub limit: Measure,
        pub measured: Measure,
        pub set_by: ActorId,
        pub set_at: Timestamp,
    }

    /// A command waits for a second person: it is kept whole (`command`, its canonical JSON)
    /// and decided when approved. `request` is its command id.
    pub struct ApprovalRequested {
        pub request: String,
        pub command_type: String,
        pub command: String,
        pub requester: ActorId,
        /// The threshold it passed; `None` for commands that always need approval
        /// (`period.reopen`).
        pub threshold: Option<ThresholdApplied>,
    }

    /// A second person approved the request: its command's events follow in the same batch.
    pub struct ApprovalGranted {
        pub request: String,
        pub command_type: String,
        pub requester: ActorId,
        pub approver: ActorId,
        pub threshold: Option<ThresholdApplied>,
    }

    pub struct ApprovalRejected {
        pub request: String,
        pub command_type: String,
        pub requester: ActorId,
        pub approver: ActorId,
        pub reason: String,
    }

    /// A currency's debits and credits in a period's trial balance.
    #[serde(deny_unknown_fields)]
    pub struct PeriodTotal {
        pub debits: Money,
        pub credits: Money,
    }

    /// A month of the entity's books was closed: nothing effective in it is accepted until an
    /// approved reopen. `events` is how many events were effective in it, which the trial
    /// balance (`totals`, `trial_balance_sha256`, from the finance view) covered.
    pub struct PeriodClosed {
        /// `YYYY-MM`, by the events' effective time in UTC.
        pub period: Period,
        pub events: u64,
        pub totals: Vec<PeriodTotal>,
        pub trial_balance_sha256: [u8; 32],
    }

    /// From `from` on (until a later rate), one unit of `currency` is worth `rate` units of the
    /// entity's functional currency (`functional`): how its books translate postings made in
    /// `currency`.
    pub struct RateSet {
        pub currency: Currency,
        pub functional: Currency,
        pub rate: Rate,
        pub from: Date,
        /// Where the rate comes from (a central bank's reference rate, a bank's quote).
        pub source: String,
    }

    pub struct PeriodReopened {
        pub period: Period,
        pub reason: String,
        pub requester: ActorId,
        pub approver: ActorId,
    }
}

// ---------------------------------------------------------------------------------------------
// Stock: one subject per SKU
// ---------------------------------------------------------------------------------------------

payload! {
    pub struct StockReceived {
        pub sku: Sku,
        pub location: LocationId,
        pub bin: Option<BinId>,
        pub lot: Option<LotId>,
        pub expires_on: Option<Date>,
        pub serials: Vec<SerialNo>,
        pub qty: Qty,
        pub unit_cost: Money,
        pub purchase: Option<PurchaseRef>,
    }

    /// Units moved from one bin to another inside a location (put-away included).
    pub struct StockBinMoved {
        pub sku: Sku,
        pub location: LocationId,
        pub from_bin: Option<BinId>,
        pub to_bin: BinId,
        pub lot: Option<LotId>,
        pub qty: Qty,
    }

    /// A hold with expiry, e.g. for an open checkout.
    pub struct StockReserved {
        pub sku: Sku,
        pub hold: HoldId,
        pub location: LocationId,
        pub channel: Option<ChannelId>,
        pub qty: Qty,
        pub expires_at: Timestamp,
    }

    pub struct ReservationReleased {
        pub sku: Sku,
        pub hold: HoldId,
        pub location: LocationId,
        pub qty: Qty,
    }

    pub struct ReservationExpired {
        pub sku: Sku,
        pub hold: HoldId,
        pub location: LocationId,
        pub qty: Qty,
    }

    /// Units committed to an order line at a location.
    pub struct StockAllocated {
        pub sku: Sku,
        pub order: OrderId,
        pub line: u32,
        pub location: LocationId,
        pub qty: Qty,
    }

    pub struct AllocationReleased {
        pub sku: Sku,
        pub order: OrderId,
        pub line: u32,
        pub location: LocationId,
        pub qty: Qty,
    }

    pub struct StockPicked {
        pub sku: Sku,
        pub order: OrderId,
        pub line: u32,
        pub location: LocationId,
        pub bin: Option<BinId>,
        pub lot: Option<LotId>,
        pub qty: Qty,
    }

    /// Units left the building on an order: on hand and allocated both fall.
    pub struct StockShipped {
        pub sku: Sku,
        pub order: OrderId,
        pub line: u32,
        pub location: LocationId,
        pub qty: Qty,
    }

    pub struct TransferShipped {
        pub sku: Sku,
        pub transfer: TransferId,
        pub from: LocationId,
        pub to: LocationId,
        pub lot: Option<LotId>,
        pub qty: Qty,
    }

    /// Units of a transfer arrived; `variance` is received minus shipped (negative: lost in transit).
    pub struct TransferReceived {
        pub sku: Sku,
        pub transfer: TransferId,
        pub to: LocationId,
        pub lot: Option<LotId>,
        pub qty: Qty,
        pub variance: QtyDelta,
    }

    pub struct StockAdjusted {
        pub sku: Sku,
        pub location: LocationId,
        pub lot: Option<LotId>,
        pub delta: QtyDelta,
        pub reason: ReasonCode,
        pub note: String,
        pub approved_by: Option<ActorId>,
    }

    /// A cycle count: what was found, what the ledger expected, and the difference it books.
    pub struct StockCounted {
        pub sku: Sku,
        pub location: LocationId,
        pub bin: Option<BinId>,
        pub lot: Option<LotId>,
        pub counted: Qty,
        pub expected: Qty,
        pub variance: QtyDelta,
        pub approved_by: Option<ActorId>,
    }

    pub struct QualityHeld {
        pub sku: Sku,
        pub location: LocationId,
        pub lot: Option<LotId>,
        pub qty: Qty,
        pub reason: ReasonCode,
    }

    pub struct QualityReleased {
        pub sku: Sku,
        pub location: LocationId,
        pub lot: Option<LotId>,
        pub qty: Qty,
    }

    pub struct StockScrapped {
        pub sku: Sku,
        pub location: LocationId,
        pub lot: Option<LotId>,
        pub qty: Qty,
        pub reason: ReasonCode,
        /// Whether the units came out of quality hold rather than sellable stock.
        pub from_quality_hold: bool,
    }

    /// Returned units arrived and wait for inspection (counted in quality hold).
    /// Returned units arrived, into quality hold; `lot` is the lot they came from
    /// (lot-tracked items; version 2).
    pub struct ReturnReceived {
        pub sku: Sku,
        pub return_id: ReturnId,
        pub order: OrderId,
        pub line: u32,
        pub location: LocationId,
        pub qty: Qty,
        pub lot: Option<LotId>,
    }

    /// Returned units left quality hold: back on the shelf (restock, into their `lot`) or out.
    pub struct ReturnDispositioned {
        pub sku: Sku,
        pub return_id: ReturnId,
        pub location: LocationId,
        pub qty: Qty,
        pub disposition: Disposition,
        pub lot: Option<LotId>,
    }

    pub struct ChannelAllocationSet {
        pub sku: Sku,
        pub channel: ChannelId,
        pub rule: ChannelAllocationRule,
    }
}

// ---------------------------------------------------------------------------------------------
// Orders: one subject per order
// ---------------------------------------------------------------------------------------------

payload! {
    pub struct OrderPlaced {
        pub order: OrderId,
        pub channel: ChannelId,
        pub external_ref: String,
        pub lines: Vec<OrderLine>,
        pub shipping_charged: Money,
        pub ship_to_region: String,
        pub promise_date: Option<Date>,
        /// Lower number is served first.
        pub priority: u32,
        pub policy: FulfilmentPolicy,
    }

    /// Payment or fraud review stopped the order.
    pub struct OrderHeld {
        pub order: OrderId,
        pub reason: ReasonCode,
    }

    pub struct OrderReleased {
        pub order: OrderId,
    }

    /// Routing chose a node for a line; `reason` says which rule decided.
    pub struct LineRouted {
        pub order: OrderId,
        pub line: u32,
        pub location: LocationId,
        pub reason: String,
    }

    pub struct LineAllocated {
        pub order: OrderId,
        pub line: u32,
        pub location: LocationId,
        pub qty: Qty,
    }

    /// Units allocated to a line at a location are taken back (a count found less than was
    /// allocated there): the order-side record of `stock.allocation_released`. The same batch
    /// allocates them elsewhere or backorders them.
    pub struct LineUnallocated {
        pub order: OrderId,
        pub line: u32,
        pub location: LocationId,
        pub qty: Qty,
        pub reason: String,
    }

    pub struct LineBackordered {
        pub order: OrderId,
        pub line: u32,
        pub qty: Qty,
    }

    pub struct OrderReleasedToPick {
        pub order: OrderId,
        pub wave: WaveId,
    }

    pub struct LinePicked {
        pub order: OrderId,
        pub line: u32,
        pub location: LocationId,
        pub qty: Qty,
    }

    pub struct OrderPacked {
        pub order: OrderId,
        pub package: PackageId,
        pub lines: Vec<LineQty>,
    }

    pub struct OrderShipped {
        pub order: OrderId,
        pub package: PackageId,
        pub carrier: String,
        pub tracking: String,
        pub freight_cost: Money,
        pub lines: Vec<LineQty>,
    }

    pub struct LinesCancelled {
        pub order: OrderId,
        pub lines: Vec<LineQty>,
        pub reason: ReasonCode,
    }

    /// A line added to an order after it was placed. With `replaces`, it took the place of
    /// that line, whose open units were cancelled in the same batch: a substitution when the
    /// SKU differs (`consent` records the customer's agreement), a new quantity or price
    /// when it does not.
    pub struct AddedLine {
        pub line: OrderLine,
        pub replaces: Option<u32>,
        pub consent: Option<String>,
    }

    /// Lines added to a placed order (`order.amend`); their routing and allocation follow in
    /// the same batch, as a placement's do.
    pub struct LinesAdded {
        pub order: OrderId,
        pub lines: Vec<AddedLine>,
        pub reason: ReasonCode,
    }

    pub struct ReturnAuthorised {
        pub order: OrderId,
        pub return_id: ReturnId,
        pub lines: Vec<LineQty>,
        /// Why the customer returns them; `None` only for returns authorised before reasons
        /// were recorded (version 1).
        pub reason: Option<ReturnReason>,
        /// The customer's words; always given with `Other`.
        pub note: String,
    }

    /// A carrier's proof of delivery for a shipped package; delivered at the event's
    /// effective time.
    pub struct OrderDelivered {
        pub order: OrderId,
        pub package: PackageId,
        /// The carrier's proof-of-delivery reference, free text.
        pub proof: String,
    }

    /// Money went back to the customer, after the return was inspected.
    pub struct OrderRefunded {
        pub order: OrderId,
        pub return_id: ReturnId,
        pub amount: Money,
    }
}

// ---------------------------------------------------------------------------------------------
// Purchasing: one subject per purchase order
// ---------------------------------------------------------------------------------------------

payload! {
    /// Replenishment suggests buying; recorded so the decision can be explained later.
    pub struct RecommendationRaised {
        pub sku: Sku,
        pub location: LocationId,
        pub supplier: Option<SupplierId>,
        pub qty: Qty,
        pub order_by: Date,
        pub reason: String,
    }

    pub struct PurchaseOrderCreated {
        pub purchase_order: PurchaseOrderId,
        pub supplier: SupplierId,
        pub currency: Currency,
        pub lines: Vec<PurchaseLine>,
        pub expected_on: Date,
    }

    pub struct PurchaseOrderApproved {
        pub purchase_order: PurchaseOrderId,
        pub approver: ActorId,
    }

    /// The approved order went to the supplier.
    pub struct PurchaseOrderSent {
        pub purchase_order: PurchaseOrderId,
    }

    pub struct PurchaseOrderRejected {
        pub purchase_order: PurchaseOrderId,
        pub approver: ActorId,
        pub reason: String,
    }

    /// A receipt was matched to a PO line; `variance` is received minus ordered so far.
    pub struct ReceiptMatched {
        pub purchase_order: PurchaseOrderId,
        pub line: u32,
        pub qty_received: Qty,
        pub qty_ordered: Qty,
        pub variance: QtyDelta,
    }

    pub struct LandedCostAllocated {
        pub purchase_order: PurchaseOrderId,
        pub charge: ChargeKind,
        pub amount: Money,
        pub basis: AllocationBasis,
        pub shares: Vec<ChargeShare>,
    }

    pub struct PurchaseOrderClosed {
        pub purchase_order: PurchaseOrderId,
        pub reason: String,
    }

    /// One line of a supplier's invoice, matched to its purchase order line.
    pub struct InvoiceLine {
        pub line: u32,
        pub sku: Sku,
        pub location: LocationId,
        pub qty: Qty,
        /// What the supplier charges per unit.
        pub unit_cost: Money,
        /// What the purchase order said.
        pub po_unit_cost: Money,
    }

    /// A supplier's invoice matched to the purchase order and its receipts (three-way match):
    /// no line invoices more than was received. The books clear goods received not invoiced
    /// and post the price difference to stock still on hand and cost of goods sold.
    pub struct InvoiceRecorded {
        pub purchase_order: PurchaseOrderId,
        /// The supplier's invoice number, unique per purchase order.
        pub invoice: String,
        pub lines: Vec<InvoiceLine>,
    }

    /// A supplier's invoice for a landed cost (freight, duty, ...) of a purchase order: it
    /// clears what `purchase.landed_cost_allocated` accrued for that charge and is not yet
    /// cleared (up to the invoice's amount); what it charges beyond is spread over the
    /// order's received lines by value (`shares`, summing to `amount - accrual_cleared`),
    /// like a landed cost. The supplier is owed `amount`.
    pub struct ChargeInvoiceRecorded {
        pub purchase_order: PurchaseOrderId,
        pub invoice: String,
        pub charge: ChargeKind,
        pub amount: Money,
        pub accrual_cleared: Money,
        pub shares: Vec<ChargeShare>,
    }

    /// A payment to the supplier of a recorded invoice, in the invoice's currency. The books
    /// debit accounts payable and credit the bank; translated into the entity's functional
    /// currency, the payable is cleared at the rate it was booked at and the difference from
    /// the payment date's rate is a realised exchange gain or loss.
    pub struct PaymentRecorded {
        pub purchase_order: PurchaseOrderId,
        pub invoice: String,
        pub amount: Money,
        /// The payer's own reference (a bank transfer id), free text.
        pub reference: String,
    }
}

// ---------------------------------------------------------------------------------------------
// Exceptions: rules on the legal entity's subject, actions on the subject the exception is about
// ---------------------------------------------------------------------------------------------

payload! {
    /// What an exception is about. Each kind has one shape (`ExceptionKind::subject_shape`).
    pub enum ExceptionKind {
        /// An order released to pick still has units neither shipped nor cancelled
        /// `threshold` days later.
        OrderUnshipped,
        /// A shipment has no delivery confirmation `threshold` days after it left.
        ShipmentInTransit,
        /// An order still has backordered units `threshold` days after its promise date.
        BackorderPastPromise,
        /// An approved purchase order still has units to receive `threshold` days after its
        /// expected date.
        PurchaseOrderOverdue,
        /// A purchase order line received more than `threshold` percent above what was
        /// ordered, or was closed more than `threshold` percent short.
        ReceiptVariance,
        /// A count found a difference of more than `threshold` percent of what was expected
        /// (at least one unit).
        CountVariance,
        /// Returned units wait for inspection `threshold` days after they arrived.
        ReturnNotInspected,
        /// Available stock at a location is below the item's safety stock.
        BelowSafetyStock,
        /// A message in the ledger that its writer did not write (passed over by every
        /// reader). Raised at once; never clears by itself.
        ForeignMessage,
        /// An event whose journal lines do not balance (debits differ from credits in some
        /// entity and currency). Raised at once; never clears by itself.
        UnbalancedJournal,
    }

    /// The subject an exception is about.
    pub enum ExceptionSubject {
        Order { order: OrderId },
        Shipment { order: OrderId, package: PackageId },
        PurchaseOrder { purchase_order: PurchaseOrderId },
        Stock { sku: Sku, location: LocationId },
        Return { order: OrderId, return_id: ReturnId },
        /// A message of the ledger, by sequence (the integrity kinds).
        Ledger { seq: u64 },
    }

    /// One exception: its kind and what it is about.
    pub struct ExceptionRef {
        pub kind: ExceptionKind,
        pub on: ExceptionSubject,
    }

    pub enum Severity {
        Low,
        Medium,
        High,
        Critical,
    }

    /// How an exception rule fires in one legal entity.
    pub struct ExceptionRule {
        /// Days for the time-based kinds, percent for the variance kinds; unused by
        /// `BelowSafetyStock`.
        pub threshold: u32,
        pub severity: Severity,
        /// Whether an exception of this kind stops fulfilment: the order is held
        /// (`order.hold`, reason `exception.<kind>`) until the exception is resolved, which
        /// releases it. Only kinds about an order that can still ship (`OrderUnshipped`,
        /// `BackorderPastPromise`) may block.
        #[serde(default)]
        pub blocks: bool,
    }

    /// Nothing happened in the legal entity for a while: its business clock moves on to the
    /// envelope's `effective_at`, so deadlines that fell due meanwhile (an order unshipped for
    /// two days) are judged without waiting for the next event. Sent by the processor on a
    /// whole tick of wall time (`erp process --clock-tick`); `previous` is the latest
    /// effective time the entity had before it.
    pub struct ClockTicked {
        pub previous: Timestamp,
    }

    /// A legal entity's rule for one kind of exception; `None` turns the kind off there.
    /// Kinds never set use the defaults (docs/VIEWS.md).
    pub struct ExceptionRuleSet {
        pub kind: ExceptionKind,
        pub rule: Option<ExceptionRule>,
    }

    /// Someone owns the exception now.
    pub struct ExceptionAssigned {
        pub exception: ExceptionRef,
        pub owner: ActorId,
    }

    /// How an exception was dealt with.
    pub enum Resolution {
        Fixed,
        Expedited,
        CustomerContacted,
        SupplierChased,
        Cancelled,
        WrittenOff,
        NoActionNeeded,
        Other,
    }

    /// The exception was dealt with; `note` says how (always given with `Other`).
    pub struct ExceptionResolved {
        pub exception: ExceptionRef,
        pub resolution: Resolution,
        pub note: String,
    }

    /// The exception leaves the queue until `until` (business time), then comes back if its
    /// condition still holds.
    pub struct ExceptionSnoozed {
        pub exception: ExceptionRef,
        pub until: Timestamp,
        pub note: String,
    }
}

impl ExceptionKind {
    pub const ALL: [ExceptionKind; 10] = [
        ExceptionKind::OrderUnshipped,
        ExceptionKind::ShipmentInTransit,
        ExceptionKind::BackorderPastPromise,
        ExceptionKind::PurchaseOrderOverdue,
        ExceptionKind::ReceiptVariance,
        ExceptionKind::CountVariance,
        ExceptionKind::ReturnNotInspected,
        ExceptionKind::BelowSafetyStock,
        ExceptionKind::ForeignMessage,
        ExceptionKind::UnbalancedJournal,
    ];

    /// Its name in keys, queries and documents (`order_unshipped`).
    pub fn name(&self) -> &'static str {
        match self {
            ExceptionKind::OrderUnshipped => "order_unshipped",
            ExceptionKind::ShipmentInTransit => "shipment_in_transit",
            ExceptionKind::BackorderPastPromise => "backorder_past_promise",
            ExceptionKind::PurchaseOrderOverdue => "purchase_order_overdue",
            ExceptionKind::ReceiptVariance => "receipt_variance",
            ExceptionKind::CountVariance => "count_variance",
            ExceptionKind::ReturnNotInspected => "return_not_inspected",
            ExceptionKind::BelowSafetyStock => "below_safety_stock",
            ExceptionKind::ForeignMessage => "foreign_message",
            ExceptionKind::UnbalancedJournal => "unbalanced_journal",
        }
    }

    /// The shape of subject it is about: `Order`, `Shipment`, `PurchaseOrder`, `Stock` or
    /// `Return`.
    pub fn subject_shape(&self) -> &'static str {
        match self {
            ExceptionKind::OrderUnshipped | ExceptionKind::BackorderPastPromise => "Order",
            ExceptionKind::ShipmentInTransit => "Shipment",
            ExceptionKind::PurchaseOrderOverdue | ExceptionKind::ReceiptVariance => "PurchaseOrder",
            ExceptionKind::CountVariance | ExceptionKind::BelowSafetyStock => "Stock",
            ExceptionKind::ReturnNotInspected => "Return",
            ExceptionKind::ForeignMessage | ExceptionKind::UnbalancedJournal => "Ledger",
        }
    }

    /// The rule a legal entity has until it sets its own.
    pub fn default_rule(&self) -> ExceptionRule {
        let (threshold, severity) = match self {
            ExceptionKind::OrderUnshipped => (2, Severity::High),
            ExceptionKind::ShipmentInTransit => (5, Severity::Medium),
            ExceptionKind::BackorderPastPromise => (0, Severity::High),
            ExceptionKind::PurchaseOrderOverdue => (0, Severity::Medium),
            ExceptionKind::ReceiptVariance => (5, Severity::Low),
            ExceptionKind::CountVariance => (2, Severity::Medium),
            ExceptionKind::ReturnNotInspected => (3, Severity::Low),
            ExceptionKind::BelowSafetyStock => (0, Severity::Medium),
            ExceptionKind::ForeignMessage | ExceptionKind::UnbalancedJournal => {
                (0, Severity::Critical)
            }
        };
        ExceptionRule {
            threshold,
            severity,
            blocks: false,
        }
    }

    /// Whether it is about the ledger's integrity rather than an operation: such exceptions
    /// come first in the queue whatever their score.
    pub fn integrity(&self) -> bool {
        matches!(
            self,
            ExceptionKind::ForeignMessage | ExceptionKind::UnbalancedJournal
        )
    }

    /// Whether a rule of this kind may block fulfilment (`ExceptionRule::blocks`).
    pub fn may_block(&self) -> bool {
        matches!(
            self,
            ExceptionKind::OrderUnshipped | ExceptionKind::BackorderPastPromise
        )
    }

    /// The reason an order is held with while an exception of this kind blocks it.
    pub fn hold_reason(&self) -> crate::values::ReasonCode {
        crate::values::ReasonCode::new(format!("exception.{}", self.name()))
            .expect("a kind's name makes a valid reason code")
    }
}

impl ExceptionSubject {
    /// Its shape, as `ExceptionKind::subject_shape` names it.
    pub fn shape(&self) -> &'static str {
        match self {
            ExceptionSubject::Order { .. } => "Order",
            ExceptionSubject::Shipment { .. } => "Shipment",
            ExceptionSubject::PurchaseOrder { .. } => "PurchaseOrder",
            ExceptionSubject::Stock { .. } => "Stock",
            ExceptionSubject::Return { .. } => "Return",
            ExceptionSubject::Ledger { .. } => "Ledger",
        }
    }

    /// The ledger subject its exception actions are recorded on: the subject's own, or for
    /// the integrity kinds the acting legal entity's.
    pub fn ledger_subject(&self, entity: &crate::values::EntityId) -> crate::Subject {
        match self {
            ExceptionSubject::Ledger { .. } => crate::Subject::LegalEntity(entity.clone()),
            ExceptionSubject::Order { order }
            | ExceptionSubject::Shipment { order, .. }
            | ExceptionSubject::Return { order, .. } => crate::Subject::Order(order.clone()),
            ExceptionSubject::PurchaseOrder { purchase_order } => {
                crate::Subject::PurchaseOrder(purchase_order.clone())
            }
            ExceptionSubject::Stock { sku, .. } => crate::Subject::Stock(sku.clone()),
        }
    }

    /// Its ids, in order (`[order, package]`).
    pub fn parts(&self) -> Vec<String> {
        match self {
            ExceptionSubject::Order { order } => vec![order.to_string()],
            ExceptionSubject::Shipment { order, package } => {
                vec![order.to_string(), package.to_string()]
            }
            ExceptionSubject::PurchaseOrder { purchase_order } => vec![purchase_order.to_string()],
            ExceptionSubject::Stock { sku, location } => {
                vec![sku.to_string(), location.to_string()]
            }
            ExceptionSubject::Return { order, return_id } => {
                vec![order.to_string(), return_id.to_string()]
            }
            ExceptionSubject::Ledger { seq } => vec![seq.to_string()],
        }
    }
}

impl Severity {
    /// Its weight in an exception's priority score.
    pub fn weight(&self) -> u32 {
        match self {
            Severity::Low => 1,
            Severity::Medium => 2,
            Severity::High => 4,
            Severity::Critical => 8,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Command outcomes: one subject per command id
// ---------------------------------------------------------------------------------------------

payload! {
    /// A command was accepted. Recorded with the command's events so that a retry with the
    /// same id, at any later time, gets the same answer.
    pub struct CommandAccepted {
        pub command_type: String,
        /// SHA-256 of the command's canonical body: a retry with another body is refused.
        pub body_sha256: [u8; 32],
        pub event_count: u32,
        /// The end user an integration acted for (its customer or staff member), as the
        /// command named it. The envelope's actor is the authenticated sender.
        pub on_behalf_of: Option<ActorId>,
        /// The maker-checker threshold in force, when one applies to the command's type and
        /// it was within it.
        pub threshold: Option<ThresholdApplied>,
    }

    /// A command was refused. Nothing else is written for it.
    pub struct CommandRejected {
        pub command_type: String,
        pub body_sha256: [u8; 32],
        pub code: String,
        pub message: String,
        /// What the command addressed, as entity keys (`sku:85123A`, `order:536365`), so the
        /// audit trail of an entity shows the attempts refused against it.
        pub targets: Vec<String>,
        /// The end user an integration acted for, as the command named it.
        pub on_behalf_of: Option<ActorId>,
    }
}

/// Defines `Event`, `EventType` and the name and version table from one list, so the three can
/// never disagree.
macro_rules! catalogue {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty) = $name:literal v $version:literal; )*) => {
        /// Every event, at its current version.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        #[serde(tag = "type", content = "data")]
        pub enum Event {
            $( $(#[$doc])* #[serde(rename = $name)] $variant($ty), )*
        }

        /// The type of an event, without its data.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum EventType {
            $( $variant, )*
        }

        impl EventType {
            /// Every event type, in catalogue order.
            pub const ALL: &'static [EventType] = &[ $( EventType::$variant, )* ];

            /// The stable name written on the wire.
            pub fn name(self) -> &'static str {
                match self { $( EventType::$variant => $name, )* }
            }

            /// The version this code writes.
            pub fn current_version(self) -> u16 {
                match self { $( EventType::$variant => $version, )* }
            }

            pub fn from_name(name: &str) -> Option<EventType> {
                match name { $( $name => Some(EventType::$variant), )* _ => None }
            }
        }

        impl Event {
            pub fn event_type(&self) -> EventType {
                match self { $( Event::$variant(_) => EventType::$variant, )* }
            }

            /// Encodes the payload alone at its current version.
            pub(crate) fn encode_payload(&self) -> Result<Vec<u8>, crate::codec::CodecError> {
                match self { $( Event::$variant(p) => crate::codec::to_bytes(p), )* }
            }

            /// Decodes a payload written at the current version of `event_type`.
            pub(crate) fn decode_current(
                event_type: EventType,
                bytes: &[u8],
            ) -> Result<Event, crate::codec::CodecError> {
                Ok(match event_type {
                    $( EventType::$variant => Event::$variant(crate::codec::from_bytes::<$ty>(bytes)?), )*
                })
            }
        }
    };
}

catalogue! {
    ItemDefined(ItemDefined) = "item.defined" v 2;
    ItemChanged(ItemDefined) = "item.changed" v 2;
    LocationDefined(LocationDefined) = "location.defined" v 1;
    ShippingRateSet(ShippingRateSet) = "location.shipping_rate_set" v 1;
    DailyCapacitySet(DailyCapacitySet) = "location.daily_capacity_set" v 2;
    SupplierDefined(SupplierDefined) = "supplier.defined" v 1;
    ChannelDefined(ChannelDefined) = "channel.defined" v 1;
    ChannelShelfLifeSet(ChannelShelfLifeSet) = "channel.shelf_life_set" v 1;
    LegalEntityDefined(LegalEntityDefined) = "legal_entity.defined" v 2;

    StockReceived(StockReceived) = "stock.received" v 1;
    StockBinMoved(StockBinMoved) = "stock.bin_moved" v 1;
    StockReserved(StockReserved) = "stock.reserved" v 1;
    ReservationReleased(ReservationReleased) = "stock.reservation_released" v 1;
    ReservationExpired(ReservationExpired) = "stock.reservation_expired" v 1;
    StockAllocated(StockAllocated) = "stock.allocated" v 1;
    AllocationReleased(AllocationReleased) = "stock.allocation_released" v 1;
    StockPicked(StockPicked) = "stock.picked" v 1;
    StockShipped(StockShipped) = "stock.shipped" v 1;
    TransferShipped(TransferShipped) = "stock.transfer_shipped" v 1;
    TransferReceived(TransferReceived) = "stock.transfer_received" v 1;
    StockAdjusted(StockAdjusted) = "stock.adjusted" v 1;
    StockCounted(StockCounted) = "stock.counted" v 1;
    QualityHeld(QualityHeld) = "stock.quality_held" v 1;
    QualityReleased(QualityReleased) = "stock.quality_released" v 1;
    StockScrapped(StockScrapped) = "stock.scrapped" v 1;
    ReturnReceived(ReturnReceived) = "stock.return_received" v 2;
    ReturnDispositioned(ReturnDispositioned) = "stock.return_dispositioned" v 2;
    ChannelAllocationSet(ChannelAllocationSet) = "stock.channel_allocation_set" v 1;

    OrderPlaced(OrderPlaced) = "order.placed" v 1;
    OrderHeld(OrderHeld) = "order.held" v 1;
    OrderReleased(OrderReleased) = "order.released" v 1;
    LineRouted(LineRouted) = "order.line_routed" v 1;
    LineAllocated(LineAllocated) = "order.line_allocated" v 1;
    LineBackordered(LineBackordered) = "order.line_backordered" v 1;
    OrderReleasedToPick(OrderReleasedToPick) = "order.released_to_pick" v 1;
    LinePicked(LinePicked) = "order.line_picked" v 1;
    OrderPacked(OrderPacked) = "order.packed" v 1;
    OrderShipped(OrderShipped) = "order.shipped" v 1;
    LinesCancelled(LinesCancelled) = "order.lines_cancelled" v 1;
    ReturnAuthorised(ReturnAuthorised) = "order.return_authorised" v 2;
    OrderRefunded(OrderRefunded) = "order.refunded" v 1;
    OrderDelivered(OrderDelivered) = "order.delivered" v 1;
    LineUnallocated(LineUnallocated) = "order.line_unallocated" v 1;
    LinesAdded(LinesAdded) = "order.lines_added" v 1;

    RecommendationRaised(RecommendationRaised) = "purchase.recommendation_raised" v 1;
    PurchaseOrderCreated(PurchaseOrderCreated) = "purchase.order_created" v 1;
    PurchaseOrderApproved(PurchaseOrderApproved) = "purchase.order_approved" v 1;
    PurchaseOrderRejected(PurchaseOrderRejected) = "purchase.order_rejected" v 1;
    PurchaseOrderSent(PurchaseOrderSent) = "purchase.order_sent" v 1;
    ReceiptMatched(ReceiptMatched) = "purchase.receipt_matched" v 1;
    LandedCostAllocated(LandedCostAllocated) = "purchase.landed_cost_allocated" v 1;
    PurchaseOrderClosed(PurchaseOrderClosed) = "purchase.order_closed" v 1;
    InvoiceRecorded(InvoiceRecorded) = "purchase.invoice_recorded" v 1;
    PaymentRecorded(PaymentRecorded) = "purchase.payment_recorded" v 1;
    ChargeInvoiceRecorded(ChargeInvoiceRecorded) = "purchase.charge_invoice_recorded" v 1;

    ThresholdSet(ThresholdSet) = "policy.threshold_set" v 1;
    ApprovalRequested(ApprovalRequested) = "approval.requested" v 1;
    ApprovalGranted(ApprovalGranted) = "approval.granted" v 1;
    ApprovalRejected(ApprovalRejected) = "approval.rejected" v 1;
    PeriodClosed(PeriodClosed) = "period.closed" v 1;
    PeriodReopened(PeriodReopened) = "period.reopened" v 1;
    RateSet(RateSet) = "fx.rate_set" v 1;

    ExceptionRuleSet(ExceptionRuleSet) = "exception.rule_set" v 2;
    ClockTicked(ClockTicked) = "clock.ticked" v 1;
    ExceptionAssigned(ExceptionAssigned) = "exception.assigned" v 1;
    ExceptionResolved(ExceptionResolved) = "exception.resolved" v 1;
    ExceptionSnoozed(ExceptionSnoozed) = "exception.snoozed" v 1;

    CommandAccepted(CommandAccepted) = "command.accepted" v 3;
    CommandRejected(CommandRejected) = "command.rejected" v 3;
}

impl InvoiceLine {
    /// What the line charges: quantity × unit cost, rounded half away from zero to the
    /// currency's minor unit (the amount the supplier is owed for it).
    pub fn charged(&self) -> rust_decimal::Decimal {
        (self.unit_cost.amount * rust_decimal::Decimal::from(self.qty.get()))
            .round_dp_with_strategy(
                self.unit_cost.currency.minor_units(),
                rust_decimal::RoundingStrategy::MidpointAwayFromZero,
            )
    }
}

impl InvoiceRecorded {
    /// What the invoice charges in all.
    pub fn total(&self) -> rust_decimal::Decimal {
        self.lines.iter().map(InvoiceLine::charged).sum()
    }
}
