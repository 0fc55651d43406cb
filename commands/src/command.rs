//! The command catalogue: what upstream systems send, as JSON.
//!
//! ```json
//! {"command_id": "0190…", "actor": {"id": "clerk-7", "role": "clerk"}, "legal_entity": "UK01",
//!  "effective_at": "2010-12-01T08:26:00Z", "type": "stock.receive", "data": {…}}
//! ```
//! Decoding is strict: unknown fields, wrong types and invalid values are refused with the path
//! of the field (`data.lines[0].qty: …`). `schemas/commands.schema.json` is generated from
//! these types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use ledger::events::{
    AllocationBasis, ChannelAllocationRule, ChargeKind, CostMethod, Disposition, ExceptionKind,
    ExceptionRef, ExceptionRule, FulfilmentPolicy, LineQty, LocationKind, Measure, PackSize,
    PeriodTotal, PurchaseRef, ReservationPolicy, Resolution, ReturnReason, Tracking,
};
use ledger::values::{
    Actor, ActorId, BinId, ChannelId, Country, Currency, Date, EntityId, HoldId, LocationId, LotId,
    Money, OrderId, PackageId, Period, PurchaseOrderId, Qty, QtyDelta, Rate, Ratio, ReasonCode,
    ReturnId, SerialNo, Sku, SupplierId, Timestamp, TransferId, UnitName, WaveId,
};

/// Largest command accepted, in bytes of JSON.
pub const COMMAND_BYTES_MAX: usize = 256 * 1024;

/// Most lines in one order or one multi-line command.
pub const LINES_MAX: usize = 200;

fn each() -> UnitName {
    UnitName::new("each").expect("valid unit")
}

fn priority_default() -> u32 {
    100
}

macro_rules! command_data {
    ($($item:item)*) => {
        $(
            #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
            #[serde(deny_unknown_fields)]
            $item
        )*
    };
}

command_data! {
    /// Defines an item, or replaces its definition.
    pub struct DefineItem {
        pub sku: Sku,
        #[serde(default)]
        pub description: String,
        #[serde(default = "each")]
        pub base_unit: UnitName,
        #[serde(default)]
        pub pack_sizes: Vec<PackSize>,
        #[serde(default = "no_tracking")]
        pub tracking: Tracking,
        #[serde(default)]
        pub reorder_point: Qty,
        #[serde(default)]
        pub safety_stock: Qty,
        #[serde(default)]
        pub lead_time_days: u32,
        #[serde(default)]
        pub min_order_qty: Qty,
        #[serde(default)]
        pub suppliers: Vec<SupplierId>,
        #[serde(default = "fifo")]
        pub cost_method: CostMethod,
        #[serde(default)]
        pub allow_negative: bool,
    }

    pub struct DefineLocation {
        pub location: LocationId,
        #[serde(default)]
        pub name: String,
        pub kind: LocationKind,
        pub region: String,
        #[serde(default)]
        pub capacity: Option<Qty>,
        #[serde(default = "priority_default")]
        pub routing_priority: u32,
    }

    /// What one shipment from `location` to `region` costs; routing takes the cheapest node
    /// among those that ship an order in as few parcels.
    pub struct SetShippingRate {
        pub location: LocationId,
        pub region: String,
        pub cost: Money,
    }

    /// Units and orders `location` can take on in allocations per business day (UTC);
    /// `null` or left out: no limit.
    pub struct SetDailyCapacity {
        pub location: LocationId,
        pub units: Option<u32>,
        #[serde(default)]
        pub orders: Option<u32>,
    }

    /// The fewest days of shelf life a unit must have left to be allocated or picked for the
    /// channel's orders (items that track expiry); 0: anything not yet expired.
    pub struct SetShelfLife {
        pub channel: ChannelId,
        pub min_days: u32,
    }

    pub struct DefineChannel {
        pub channel: ChannelId,
        #[serde(default)]
        pub name: String,
        #[serde(default = "zero_ratio")]
        pub fee_rate: Ratio,
        #[serde(default = "no_reservation")]
        pub reservation_policy: ReservationPolicy,
    }

    pub struct DefineSupplier {
        pub supplier: SupplierId,
        #[serde(default)]
        pub name: String,
        pub currency: Currency,
        #[serde(default)]
        pub lead_time_days: u32,
    }

    pub struct Receive {
        pub sku: Sku,
        pub location: LocationId,
        #[serde(default)]
        pub bin: Option<BinId>,
        #[serde(default)]
        pub lot: Option<LotId>,
        #[serde(default)]
        pub expires_on: Option<Date>,
        #[serde(default)]
        pub serials: Vec<SerialNo>,
        pub qty: Qty,
        /// The unit `qty` is stated in: the item's base unit or one of its pack sizes
        /// (`case`); converted to base units before anything is decided. Default: base units.
        #[serde(default)]
        pub unit: Option<UnitName>,
        /// Per base unit, whatever `unit` says.
        pub unit_cost: Money,
        #[serde(default)]
        pub purchase: Option<PurchaseRef>,
    }

    pub struct MoveBin {
        pub sku: Sku,
        pub location: LocationId,
        #[serde(default)]
        pub from_bin: Option<BinId>,
        pub to_bin: BinId,
        #[serde(default)]
        pub lot: Option<LotId>,
        pub qty: Qty,
    }

    pub struct TransferShip {
        pub sku: Sku,
        pub transfer: TransferId,
        pub from: LocationId,
        pub to: LocationId,
        #[serde(default)]
        pub lot: Option<LotId>,
        pub qty: Qty,
    }

    /// Receives a transfer; `qty` is what arrived (the variance against what was shipped is
    /// computed and booked).
    pub struct TransferReceive {
        pub sku: Sku,
        pub transfer: TransferId,
        pub qty: Qty,
    }

    pub struct Adjust {
        pub sku: Sku,
        pub location: LocationId,
        #[serde(default)]
        pub lot: Option<LotId>,
        pub delta: QtyDelta,
        /// The unit `delta` is stated in (as `stock.receive`'s `unit`).
        #[serde(default)]
        pub unit: Option<UnitName>,
        pub reason: ReasonCode,
        #[serde(default)]
        pub note: String,
    }

    /// A cycle count: the decider computes the variance against the ledger.
    pub struct Count {
        pub sku: Sku,
        pub location: LocationId,
        #[serde(default)]
        pub bin: Option<BinId>,
        #[serde(default)]
        pub lot: Option<LotId>,
        pub counted: Qty,
        /// The unit `counted` is stated in (as `stock.receive`'s `unit`).
        #[serde(default)]
        pub unit: Option<UnitName>,
    }

    pub struct QualityHold {
        pub sku: Sku,
        pub location: LocationId,
        #[serde(default)]
        pub lot: Option<LotId>,
        pub qty: Qty,
        pub reason: ReasonCode,
    }

    pub struct QualityRelease {
        pub sku: Sku,
        pub location: LocationId,
        #[serde(default)]
        pub lot: Option<LotId>,
        pub qty: Qty,
    }

    pub struct Scrap {
        pub sku: Sku,
        pub location: LocationId,
        #[serde(default)]
        pub lot: Option<LotId>,
        pub qty: Qty,
        pub reason: ReasonCode,
        #[serde(default)]
        pub from_quality_hold: bool,
    }

    pub struct ReceiveReturn {
        pub sku: Sku,
        pub return_id: ReturnId,
        pub order: OrderId,
        pub line: u32,
        pub location: LocationId,
        pub qty: Qty,
        /// The lot of the returned units (lot-kept items): one picked for the order. May be
        /// left out when the order was picked from one lot.
        #[serde(default)]
        pub lot: Option<LotId>,
    }

    pub struct DispositionReturn {
        pub sku: Sku,
        pub return_id: ReturnId,
        pub qty: Qty,
        pub disposition: Disposition,
    }

    pub struct SetChannelAllocation {
        pub sku: Sku,
        pub channel: ChannelId,
        pub rule: ChannelAllocationRule,
    }

    /// Holds stock for `ttl_seconds` from the command's effective time (a checkout).
    pub struct PlaceHold {
        pub sku: Sku,
        pub hold: HoldId,
        pub location: LocationId,
        #[serde(default)]
        pub channel: Option<ChannelId>,
        pub qty: Qty,
        pub ttl_seconds: u32,
    }

    pub struct ReleaseHold {
        pub sku: Sku,
        pub hold: HoldId,
    }

    /// Ends a hold whose time ran out. The effective time must be at or after its expiry.
    pub struct ExpireHold {
        pub sku: Sku,
        pub hold: HoldId,
    }

    pub struct OrderLineIn {
        pub line: u32,
        pub sku: Sku,
        pub qty: Qty,
        /// The unit `qty` is stated in: the item's base unit or one of its pack sizes
        /// (`case`); converted to base units before anything is decided. Default: base units.
        #[serde(default)]
        pub unit: Option<UnitName>,
        /// Per base unit, whatever `unit` says.
        pub unit_price: Money,
        #[serde(default)]
        pub discount: Option<Money>,
        #[serde(default)]
        pub tax: Option<Money>,
        #[serde(default)]
        pub fees: Option<Money>,
    }

    /// A line of an order that takes the place of another (`order.amend`): `consent` (the
    /// customer's agreement, as recorded) is required when `by` is another SKU.
    pub struct ReplaceLine {
        pub line: u32,
        pub by: OrderLineIn,
        #[serde(default)]
        pub consent: Option<String>,
    }

    /// Changes a placed order before its lines are picked, in one atomic batch: `cancel`
    /// takes units off lines (as `order.cancel`), `add` adds lines (routed and allocated as a
    /// placement's, nodes already shipping the order first), `replace` cancels a line's open
    /// units and adds `by` in its place (a new line number; another SKU is a substitution).
    pub struct AmendOrder {
        pub order: OrderId,
        #[serde(default)]
        pub cancel: Vec<LineQty>,
        #[serde(default)]
        pub add: Vec<OrderLineIn>,
        #[serde(default)]
        pub replace: Vec<ReplaceLine>,
        pub reason: ReasonCode,
    }

    /// Places an order and allocates it at once (routing by availability, then region match,
    /// then the nodes' priority); what cannot be allocated is backordered.
    pub struct PlaceOrder {
        pub order: OrderId,
        pub channel: ChannelId,
        #[serde(default)]
        pub external_ref: String,
        pub lines: Vec<OrderLineIn>,
        #[serde(default)]
        pub shipping_charged: Option<Money>,
        pub ship_to_region: String,
        #[serde(default)]
        pub promise_date: Option<Date>,
        #[serde(default = "priority_default")]
        pub priority: u32,
        #[serde(default = "partial")]
        pub policy: FulfilmentPolicy,
    }

    pub struct HoldOrder {
        pub order: OrderId,
        pub reason: ReasonCode,
    }

    pub struct ReleaseOrder {
        pub order: OrderId,
        /// When given, the order is released only if it is held for this reason (refused
        /// `invalid_transition` otherwise): a release that must not lift someone else's hold.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<ReasonCode>,
    }

    /// Tries again to allocate the order's backordered lines.
    pub struct AllocateOrder {
        pub order: OrderId,
    }

    pub struct ReleaseToPick {
        pub order: OrderId,
        pub wave: WaveId,
    }

    pub struct PickLine {
        pub line: u32,
        #[serde(default)]
        pub bin: Option<BinId>,
        #[serde(default)]
        pub lot: Option<LotId>,
        pub qty: Qty,
    }

    pub struct Pick {
        pub order: OrderId,
        pub lines: Vec<PickLine>,
    }

    /// Packs a package; every picked, unpacked unit of the listed lines must be in it.
    pub struct Pack {
        pub order: OrderId,
        pub package: PackageId,
        pub lines: Vec<LineQty>,
    }

    pub struct Ship {
        pub order: OrderId,
        pub package: PackageId,
        pub carrier: String,
        pub tracking: String,
        pub freight_cost: Money,
    }

    /// Cancels the given quantities, or every open unit when `lines` is absent.
    pub struct CancelOrder {
        pub order: OrderId,
        #[serde(default)]
        pub lines: Option<Vec<LineQty>>,
        pub reason: ReasonCode,
    }

    /// Authorises a customer's return of shipped units, with why they come back (`reason`,
    /// required: `Colour`, `Defective`, `NotAsDescribed`, `SizeTooLarge`, `SizeTooSmall`,
    /// `Style`, `Unwanted`, `WrongItem`, or `Other` with a `note`).
    pub struct AuthoriseReturn {
        pub order: OrderId,
        pub return_id: ReturnId,
        pub lines: Vec<LineQty>,
        pub reason: ReturnReason,
        /// The customer's words (required with `Other`).
        #[serde(default)]
        pub note: String,
    }

    /// Records a carrier's proof of delivery for a shipped package of the order, delivered
    /// at the command's `effective_at` (not before the order was placed; once per package).
    pub struct ConfirmDelivery {
        pub order: OrderId,
        pub package: PackageId,
        /// The carrier's proof-of-delivery reference.
        #[serde(default)]
        pub proof: String,
    }

    pub struct Refund {
        pub order: OrderId,
        pub return_id: ReturnId,
        pub amount: Money,
    }

    pub struct PurchaseLineIn {
        pub line: u32,
        pub sku: Sku,
        pub location: LocationId,
        pub qty: Qty,
        /// The unit `qty` is stated in: the item's base unit or one of its pack sizes
        /// (`case`); converted to base units before anything is decided. Default: base units.
        #[serde(default)]
        pub unit: Option<UnitName>,
        /// Per base unit, whatever `unit` says.
        pub unit_cost: Money,
    }

    /// Creates a purchase order. Worth at most the processor's approval limit, it is approved
    /// at once; above it, it waits for `purchase.approve` by someone other than its requester.
    pub struct CreatePurchaseOrder {
        pub purchase_order: PurchaseOrderId,
        pub supplier: SupplierId,
        pub currency: Currency,
        pub lines: Vec<PurchaseLineIn>,
        pub expected_on: Date,
    }

    pub struct ApprovePurchaseOrder {
        pub purchase_order: PurchaseOrderId,
    }

    pub struct RejectPurchaseOrder {
        pub purchase_order: PurchaseOrderId,
        pub reason: String,
    }

    pub struct SendPurchaseOrder {
        pub purchase_order: PurchaseOrderId,
    }

    /// Closes the order with lines still open: what was not received will not come.
    pub struct CancelPurchaseRemaining {
        pub purchase_order: PurchaseOrderId,
        pub reason: String,
    }

    /// Closes a fully received order.
    pub struct ClosePurchaseOrder {
        pub purchase_order: PurchaseOrderId,
    }

    /// A line's weight, for charges spread by weight.
    pub struct LineWeight {
        pub line: u32,
        pub weight: Qty,
    }

    /// Spreads a freight, duty, insurance or handling charge over the order's received lines,
    /// by their received value, quantity or weight (`weights`, required for `Weight`).
    pub struct AllocateLandedCost {
        pub purchase_order: PurchaseOrderId,
        pub charge: ChargeKind,
        pub amount: Money,
        pub basis: AllocationBasis,
        #[serde(default)]
        pub weights: Vec<LineWeight>,
    }

    /// One line of a supplier's invoice: the purchase order line, how many units it charges
    /// for and at what unit cost.
    pub struct InvoiceLineIn {
        pub line: u32,
        pub qty: Qty,
        pub unit_cost: Money,
    }

    /// Records a supplier's invoice against a purchase order (three-way match): every line
    /// must be on the order, in its currency, and charge for no more units than were received
    /// and not yet invoiced. Its price difference against the order is measured against the
    /// entity's `purchase.record_invoice` threshold (by value): above it, the invoice waits
    /// for a second person.
    pub struct RecordInvoice {
        pub purchase_order: PurchaseOrderId,
        pub invoice: String,
        pub lines: Vec<InvoiceLineIn>,
    }

    /// Records a supplier's invoice for a landed cost of a purchase order (freight, duty,
    /// insurance, handling), in the order's currency: it clears the accrual that
    /// `purchase.allocate_landed_cost` booked for that charge (up to its amount), and what it
    /// charges beyond is spread over the received lines by value. Its number shares the
    /// order's invoice numbers; `purchase.record_payment` pays it.
    pub struct RecordChargeInvoice {
        pub purchase_order: PurchaseOrderId,
        pub invoice: String,
        pub charge: ChargeKind,
        pub amount: Money,
    }

    /// Records a payment to the supplier of a recorded invoice: in the purchase order's
    /// currency, more than 0 and no more than the invoice still owes (`over_payment`). The
    /// books clear accounts payable against the bank; in the entity's functional currency the
    /// payable is cleared at the rate it was booked at and the difference is a realised
    /// exchange gain or loss (`fx_realised`).
    pub struct RecordPayment {
        pub purchase_order: PurchaseOrderId,
        pub invoice: String,
        pub amount: Money,
        /// The payer's own reference (a bank transfer id).
        #[serde(default)]
        pub reference: String,
    }

    /// Defines the command's legal entity: its name, functional currency and country. A
    /// second definition may rename it or change its country, never its currency.
    pub struct DefineLegalEntity {
        #[serde(default)]
        pub name: String,
        pub currency: Currency,
        pub country: Country,
    }

    /// Sets the maker-checker threshold of one command type in the command's legal entity
    /// (`{"Quantity": 50}` for stock movements, `{"Value": {"amount": "250", "currency":
    /// "GBP"}}` for refunds and purchase orders); `null` removes it.
    pub struct SetThreshold {
        pub command_type: String,
        pub limit: Option<Measure>,
    }

    /// Approves a command waiting for a second person: it is decided now, against the ledger
    /// as it is, with the approver recorded.
    pub struct ApproveRequest {
        pub request: Uuid,
    }

    pub struct RejectRequest {
        pub request: Uuid,
        pub reason: String,
    }

    /// Closes a month of the legal entity's books, with the trial balance the finance view
    /// gave for it (`erp period close` fetches it): `events` it covered, the debits and
    /// credits per currency, and its SHA-256 (64 hex digits).
    pub struct ClosePeriod {
        pub period: Period,
        pub events: u64,
        pub totals: Vec<PeriodTotal>,
        pub trial_balance_sha256: String,
    }

    /// Sets the rate at which the legal entity's books translate `currency` into its
    /// functional currency, from `from` on (until a later rate): one unit of `currency` is
    /// worth `rate` units of the functional currency.
    pub struct SetRate {
        pub currency: Currency,
        pub rate: Rate,
        pub from: Date,
        pub source: String,
    }

    /// Sets the legal entity's rule for one kind of exception (`rule: null` turns the kind
    /// off there): `threshold` in days for the time-based kinds, in percent for the variance
    /// kinds, and the severity its exceptions carry.
    pub struct SetExceptionRule {
        pub kind: ExceptionKind,
        pub rule: Option<ExceptionRule>,
    }

    /// Moves the legal entity's business clock on to the command's effective time when
    /// nothing happened there since an earlier time (`clock.ticked`). The processor sends it
    /// on whole ticks of wall time (`erp process --clock-tick`); `data` is `{}`.
    pub struct TickClock {}

    /// Gives an exception an owner. `exception` names its kind and subject, as the
    /// `exceptions` view lists it.
    pub struct AssignException {
        pub exception: ExceptionRef,
        pub owner: ActorId,
    }

    /// Records how an exception was dealt with (`note` required with `Other`).
    pub struct ResolveException {
        pub exception: ExceptionRef,
        pub resolution: Resolution,
        #[serde(default)]
        pub note: String,
    }

    /// Takes an exception out of the queue until `until` (business time, after the
    /// command's `effective_at`).
    pub struct SnoozeException {
        pub exception: ExceptionRef,
        pub until: Timestamp,
        #[serde(default)]
        pub note: String,
    }

    /// Asks to reopen a closed month; it takes effect when a second person approves it.
    pub struct ReopenPeriod {
        pub period: Period,
        pub reason: String,
    }
}

fn no_tracking() -> Tracking {
    Tracking {
        lot: false,
        serial: false,
        expiry: false,
    }
}
fn fifo() -> CostMethod {
    CostMethod::Fifo
}
fn zero_ratio() -> Ratio {
    Ratio::parse("0").expect("zero")
}
fn no_reservation() -> ReservationPolicy {
    ReservationPolicy::None
}
fn partial() -> FulfilmentPolicy {
    FulfilmentPolicy::Partial
}

/// Defines `CommandBody` and the type-name table from one list.
macro_rules! commands {
    ($( $variant:ident($ty:ty) = $name:literal; )*) => {
        /// What a command asks for.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
        #[serde(tag = "type", content = "data")]
        pub enum CommandBody {
            $( #[serde(rename = $name)] $variant($ty), )*
        }

        impl CommandBody {
            /// Every command type name, in catalogue order.
            pub const TYPES: &'static [&'static str] = &[ $( $name, )* ];

            pub fn type_name(&self) -> &'static str {
                match self { $( CommandBody::$variant(_) => $name, )* }
            }

            fn decode(type_name: &str, data: &serde_json::value::RawValue) -> Result<CommandBody, InvalidCommand> {
                match type_name {
                    $( $name => Ok(CommandBody::$variant(decode_data(data)?)), )*
                    other => Err(InvalidCommand {
                        field: "type".into(),
                        message: format!("unknown command type `{other}`; expected one of: {}", CommandBody::TYPES.join(", ")),
                    }),
                }
            }
        }
    };
}

commands! {
    DefineItem(DefineItem) = "item.define";
    DefineLocation(DefineLocation) = "location.define";
    SetShippingRate(SetShippingRate) = "location.set_shipping_rate";
    SetDailyCapacity(SetDailyCapacity) = "location.set_daily_capacity";
    DefineChannel(DefineChannel) = "channel.define";
    SetShelfLife(SetShelfLife) = "channel.set_shelf_life";
    DefineSupplier(DefineSupplier) = "supplier.define";
    Receive(Receive) = "stock.receive";
    MoveBin(MoveBin) = "stock.move_bin";
    TransferShip(TransferShip) = "stock.transfer_ship";
    TransferReceive(TransferReceive) = "stock.transfer_receive";
    Adjust(Adjust) = "stock.adjust";
    Count(Count) = "stock.count";
    QualityHold(QualityHold) = "stock.quality_hold";
    QualityRelease(QualityRelease) = "stock.quality_release";
    Scrap(Scrap) = "stock.scrap";
    ReceiveReturn(ReceiveReturn) = "stock.receive_return";
    DispositionReturn(DispositionReturn) = "stock.disposition_return";
    SetChannelAllocation(SetChannelAllocation) = "stock.set_channel_allocation";
    PlaceHold(PlaceHold) = "stock.place_hold";
    ReleaseHold(ReleaseHold) = "stock.release_hold";
    ExpireHold(ExpireHold) = "stock.expire_hold";
    PlaceOrder(PlaceOrder) = "order.place";
    HoldOrder(HoldOrder) = "order.hold";
    ReleaseOrder(ReleaseOrder) = "order.release";
    AllocateOrder(AllocateOrder) = "order.allocate";
    ReleaseToPick(ReleaseToPick) = "order.release_to_pick";
    Pick(Pick) = "order.pick";
    Pack(Pack) = "order.pack";
    Ship(Ship) = "order.ship";
    CancelOrder(CancelOrder) = "order.cancel";
    AmendOrder(AmendOrder) = "order.amend";
    AuthoriseReturn(AuthoriseReturn) = "order.authorise_return";
    Refund(Refund) = "order.refund";
    ConfirmDelivery(ConfirmDelivery) = "order.confirm_delivery";
    CreatePurchaseOrder(CreatePurchaseOrder) = "purchase.create_order";
    ApprovePurchaseOrder(ApprovePurchaseOrder) = "purchase.approve";
    RejectPurchaseOrder(RejectPurchaseOrder) = "purchase.reject";
    SendPurchaseOrder(SendPurchaseOrder) = "purchase.send";
    CancelPurchaseRemaining(CancelPurchaseRemaining) = "purchase.cancel_remaining";
    ClosePurchaseOrder(ClosePurchaseOrder) = "purchase.close";
    AllocateLandedCost(AllocateLandedCost) = "purchase.allocate_landed_cost";
    RecordInvoice(RecordInvoice) = "purchase.record_invoice";
    RecordPayment(RecordPayment) = "purchase.record_payment";
    RecordChargeInvoice(RecordChargeInvoice) = "purchase.record_charge_invoice";
    DefineLegalEntity(DefineLegalEntity) = "legal_entity.define";
    SetThreshold(SetThreshold) = "policy.set_threshold";
    ApproveRequest(ApproveRequest) = "approval.approve";
    RejectRequest(RejectRequest) = "approval.reject";
    ClosePeriod(ClosePeriod) = "period.close";
    ReopenPeriod(ReopenPeriod) = "period.reopen";
    SetRate(SetRate) = "fx.set_rate";
    SetExceptionRule(SetExceptionRule) = "exception.set_rule";
    AssignException(AssignException) = "exception.assign";
    ResolveException(ResolveException) = "exception.resolve";
    SnoozeException(SnoozeException) = "exception.snooze";
    TickClock(TickClock) = "clock.tick";
}

/// A decoded, valid command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Command {
    pub command_id: Uuid,
    /// Defaults to `command_id`.
    #[serde(default)]
    pub correlation_id: Uuid,
    /// Who acts, in which role. Sent with credentials (`erp auth`), it may be left out: it is
    /// then the credential's actor in its first role; given, it must be that actor in one of
    /// the credential's roles, or the command is refused `forbidden`.
    pub actor: Actor,
    /// The end user an integration acts for (its customer, its staff member), recorded with
    /// the outcome. Only credentials allowed to act for end users may name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<ActorId>,
    pub legal_entity: EntityId,
    /// Business time of the fact; also the "now" the decider uses (hold expiry).
    pub effective_at: Timestamp,
    #[serde(flatten)]
    pub body: CommandBody,
    /// Who sent it, from the connection's credentials: set by the service from the subject
    /// the server let the sender publish on, never read from the JSON.
    #[serde(skip)]
    pub sender: Option<crate::access::Sender>,
}

impl Command {
    /// SHA-256 of the canonical JSON of the decoded command. Two submissions with the same id
    /// and the same meaning hash the same however their JSON was spaced or ordered.
    /// The entity keys the command addresses (`sku:…`, `order:…`), recorded with a rejection.
    pub fn targets(&self) -> Vec<String> {
        let body = serde_json::to_value(&self.body).expect("commands serialise");
        ledger::entities::mentioned(&body["data"])
            .into_iter()
            .collect()
    }

    /// The order the command names, if it names one (it needs that order in memory).
    pub fn order(&self) -> Option<&OrderId> {
        use CommandBody as B;
        match &self.body {
            B::ReceiveReturn(ReceiveReturn { order, .. })
            | B::PlaceOrder(PlaceOrder { order, .. })
            | B::HoldOrder(HoldOrder { order, .. })
            | B::ReleaseOrder(ReleaseOrder { order, .. })
            | B::AllocateOrder(AllocateOrder { order, .. })
            | B::ReleaseToPick(ReleaseToPick { order, .. })
            | B::Pick(Pick { order, .. })
            | B::Pack(Pack { order, .. })
            | B::Ship(Ship { order, .. })
            | B::CancelOrder(CancelOrder { order, .. })
            | B::AmendOrder(AmendOrder { order, .. })
            | B::AuthoriseReturn(AuthoriseReturn { order, .. })
            | B::Refund(Refund { order, .. })
            | B::ConfirmDelivery(ConfirmDelivery { order, .. }) => Some(order),
            B::AssignException(AssignException { exception, .. })
            | B::ResolveException(ResolveException { exception, .. })
            | B::SnoozeException(SnoozeException { exception, .. }) => match &exception.on {
                ledger::events::ExceptionSubject::Order { order }
                | ledger::events::ExceptionSubject::Shipment { order, .. }
                | ledger::events::ExceptionSubject::Return { order, .. } => Some(order),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn body_sha256(&self) -> [u8; 32] {
        let canonical = serde_json::to_vec(self).expect("commands serialise");
        Sha256::digest(canonical).into()
    }
}

/// Why bytes are not a valid command. `field` is the JSON path of the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidCommand {
    pub field: String,
    pub message: String,
}

/// The outer shape, read first so `data` can be decoded by `type` with precise paths.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Outer<'a> {
    command_id: Uuid,
    #[serde(default)]
    correlation_id: Option<Uuid>,
    #[serde(default)]
    actor: Option<Actor>,
    #[serde(default)]
    on_behalf_of: Option<ActorId>,
    legal_entity: EntityId,
    effective_at: Timestamp,
    #[serde(rename = "type")]
    type_name: String,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

fn path_error<E: std::fmt::Display>(
    prefix: &str,
    e: serde_path_to_error::Error<E>,
) -> InvalidCommand {
    let path = e.path().to_string();
    // serde_path_to_error writes "." for the root and "?" where a syntax error left no path,
    // and nothing at all for an empty key (`{"": ...`).
    let field = match (prefix, path.as_str()) {
        ("", "" | "." | "?") => "command".to_owned(),
        ("", p) => p.to_owned(),
        (pre, "" | "." | "?") => pre.to_owned(),
        (pre, p) if p.starts_with('[') => format!("{pre}{p}"),
        (pre, p) => format!("{pre}.{p}"),
    };
    InvalidCommand {
        field,
        message: e.into_inner().to_string(),
    }
}

fn decode_data<T: serde::de::DeserializeOwned>(
    data: &serde_json::value::RawValue,
) -> Result<T, InvalidCommand> {
    if !data.get().trim_start().starts_with('{') {
        return Err(InvalidCommand {
            field: "data".into(),
            message: "expected a JSON object".into(),
        });
    }
    let mut de = serde_json::Deserializer::from_str(data.get());
    serde_path_to_error::deserialize(&mut de).map_err(|e| path_error("data", e))
}

/// Decodes and validates a command from JSON bytes (sent without credentials: it must name
/// its actor).
pub fn decode(bytes: &[u8]) -> Result<Command, InvalidCommand> {
    decode_from(bytes, None)
}

/// Decodes and validates a command sent by `sender` (with credentials): a command that names
/// no actor acts as the sender's.
pub fn decode_from(
    bytes: &[u8],
    sender: Option<&crate::access::Sender>,
) -> Result<Command, InvalidCommand> {
    if bytes.len() > COMMAND_BYTES_MAX {
        return Err(InvalidCommand {
            field: "command".into(),
            message: format!(
                "{} bytes; at most {COMMAND_BYTES_MAX} are accepted",
                bytes.len()
            ),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| InvalidCommand {
        field: "command".into(),
        message: format!("not UTF-8 ({e})"),
    })?;
    // serde would also read a struct from a JSON array, by position; commands are objects.
    if !text.trim_start().starts_with('{') {
        return Err(InvalidCommand {
            field: "command".into(),
            message: "expected a JSON object".into(),
        });
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let outer: Outer<'_> =
        serde_path_to_error::deserialize(&mut de).map_err(|e| path_error("", e))?;
    de.end().map_err(|e| InvalidCommand {
        field: "command".into(),
        message: format!("trailing characters after the command ({e})"),
    })?;
    let body = CommandBody::decode(&outer.type_name, outer.data)?;
    check_limits(&body)?;
    check_money(&body)?;
    check_return_reason(&body)?;
    let actor = match (outer.actor, sender) {
        (Some(actor), _) => actor,
        (None, Some(sender)) => sender.default_actor(),
        (None, None) => {
            return Err(InvalidCommand {
                field: "actor".into(),
                message: "missing; expected {\"id\": \"...\", \"role\": \"...\"} (only a command sent with credentials may leave it out)".into(),
            });
        }
    };
    Ok(Command {
        command_id: outer.command_id,
        correlation_id: outer.correlation_id.unwrap_or(outer.command_id),
        actor,
        on_behalf_of: outer.on_behalf_of,
        legal_entity: outer.legal_entity,
        effective_at: outer.effective_at,
        body,
        sender: sender.cloned(),
    })
}

/// Every amount of money in a command must be in a currency ISO 4217 lists with a minor unit,
/// and have no more decimals than that unit: JPY `1500` and GBP `12.34` are amounts, JPY
/// `1500.5` and GBP `12.345` are not (trailing zeros are fine: GBP `12.340`). Money is never
/// rounded on the way in. Checked on the decoded body (no second pass over the JSON); the
/// error names the JSON path of the field. A command that gains a money field adds it here.
fn check_money(body: &CommandBody) -> Result<(), InvalidCommand> {
    let check = |path: &dyn Fn() -> String, money: &Money| -> Result<(), InvalidCommand> {
        let code = money.currency.as_str();
        let Some(minor) = money.currency.iso_minor_units() else {
            return Err(InvalidCommand {
                field: format!("{}.currency", path()),
                message: format!(
                    "`{code}` is not an ISO 4217 currency with a minor unit (GBP, EUR, USD, JPY, ...)"
                ),
            });
        };
        let decimals = money.amount.normalize().scale();
        if decimals > minor {
            return Err(InvalidCommand {
                field: format!("{}.amount", path()),
                message: format!(
                    "`{}` has {decimals} decimal{}; {code} has {minor} (ISO 4217), and amounts are never rounded",
                    money.amount,
                    if decimals == 1 { "" } else { "s" }
                ),
            });
        }
        Ok(())
    };
    let field = |name: &'static str| move || format!("data.{name}");
    // An order line's amounts, under `data.<prefix>`.
    let check_line = |prefix: &str, line: &OrderLineIn| -> Result<(), InvalidCommand> {
        let at = |name: &'static str| move || format!("data.{prefix}{name}");
        check(&at("unit_price"), &line.unit_price)?;
        for (name, money) in [
            ("discount", &line.discount),
            ("tax", &line.tax),
            ("fees", &line.fees),
        ] {
            if let Some(money) = money {
                check(&at(name), money)?;
            }
        }
        Ok(())
    };
    match body {
        CommandBody::Receive(c) => check(&field("unit_cost"), &c.unit_cost),
        CommandBody::AmendOrder(c) => {
            for (i, line) in c.add.iter().enumerate() {
                check_line(&format!("add[{i}]."), line)?;
            }
            for (i, r) in c.replace.iter().enumerate() {
                check_line(&format!("replace[{i}].by."), &r.by)?;
            }
            Ok(())
        }
        CommandBody::PlaceOrder(c) => {
            for (i, line) in c.lines.iter().enumerate() {
                check_line(&format!("lines[{i}]."), line)?;
            }
            match &c.shipping_charged {
                Some(money) => check(&field("shipping_charged"), money),
                None => Ok(()),
            }
        }
        CommandBody::Ship(c) => check(&field("freight_cost"), &c.freight_cost),
        CommandBody::Refund(c) => check(&field("amount"), &c.amount),
        CommandBody::CreatePurchaseOrder(c) => {
            for (i, line) in c.lines.iter().enumerate() {
                check(&|| format!("data.lines[{i}].unit_cost"), &line.unit_cost)?;
            }
            Ok(())
        }
        CommandBody::AllocateLandedCost(c) => check(&field("amount"), &c.amount),
        CommandBody::RecordPayment(c) => check(&field("amount"), &c.amount),
        CommandBody::RecordChargeInvoice(c) => check(&field("amount"), &c.amount),
        CommandBody::DefineLegalEntity(c) => check(&field("currency"), &Money::zero(c.currency))
            .map_err(|mut e| {
                e.field = "data.currency".into();
                e
            }),
        CommandBody::SetRate(c) => {
            check(&field("currency"), &Money::zero(c.currency)).map_err(|mut e| {
                e.field = "data.currency".into();
                e
            })
        }
        CommandBody::SetThreshold(SetThreshold {
            limit: Some(Measure::Value(money)),
            ..
        }) => check(&field("limit.Value"), money),
        CommandBody::ClosePeriod(c) => {
            for (i, total) in c.totals.iter().enumerate() {
                check(&|| format!("data.totals[{i}].debits"), &total.debits)?;
                check(&|| format!("data.totals[{i}].credits"), &total.credits)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A return for `Other` reasons says what they are, in `note`.
fn check_return_reason(body: &CommandBody) -> Result<(), InvalidCommand> {
    match body {
        CommandBody::AuthoriseReturn(c)
            if c.reason == ReturnReason::Other && c.note.trim().is_empty() =>
        {
            Err(InvalidCommand {
                field: "data.note".into(),
                message: "reason `Other` needs a note saying what the reason is (or one of the listed reasons: Colour, Defective, NotAsDescribed, SizeTooLarge, SizeTooSmall, Style, Unwanted, WrongItem)".into(),
            })
        }
        _ => Ok(()),
    }
}

fn check_limits(body: &CommandBody) -> Result<(), InvalidCommand> {
    let lines = match body {
        CommandBody::PlaceOrder(c) => c.lines.len(),
        CommandBody::Pick(c) => c.lines.len(),
        CommandBody::Pack(c) => c.lines.len(),
        CommandBody::AuthoriseReturn(c) => c.lines.len(),
        CommandBody::CancelOrder(c) => c.lines.as_ref().map_or(0, Vec::len),
        CommandBody::AmendOrder(c) => c.cancel.len() + c.add.len() + c.replace.len(),
        CommandBody::RecordInvoice(c) => c.lines.len(),
        _ => 0,
    };
    if lines > LINES_MAX {
        return Err(InvalidCommand {
            field: "data.lines".into(),
            message: format!("{lines} lines; at most {LINES_MAX} per command"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod hostile_input {
    use proptest::prelude::*;
    use serde_json::json;

    use super::decode;

    fn valid() -> Vec<u8> {
        json!({
            "command_id": "0190c3a2-0000-7000-8000-000000000001",
            "actor": {"id": "me", "role": "clerk"}, "legal_entity": "UK01",
            "effective_at": "2011-06-30T09:00:00Z", "type": "order.place",
            "data": {"order": "O1", "channel": "web", "ship_to_region": "UK",
                     "lines": [{"line": 1, "sku": "A", "qty": 2,
                                "unit_price": {"amount": "2.55", "currency": "GBP"}}]},
        })
        .to_string()
        .into_bytes()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Bytes in, a command or an error out: never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }

        /// A valid command with bytes overwritten, inserted or cut: never a panic, and an
        /// error always names a place.
        #[test]
        fn damaged_commands_never_panic(at in 0usize..400, bytes in proptest::collection::vec(any::<u8>(), 0..8), cut in any::<bool>()) {
            let mut input = valid();
            let at = at.min(input.len());
            if cut {
                input.truncate(at);
            } else {
                input.splice(at..(at + bytes.len()).min(input.len()), bytes);
            }
            if let Err(e) = decode(&input) {
                prop_assert!(!e.field.is_empty() && !e.message.is_empty());
            }
        }
    }

    #[test]
    fn a_return_names_its_reason_from_the_list_and_other_says_what() {
        let authorise = |data: serde_json::Value| {
            let c = json!({
                "command_id": "0190c3a2-0000-7000-8000-000000000002",
                "actor": {"id": "me", "role": "clerk"}, "legal_entity": "UK01",
                "effective_at": "2011-06-30T09:00:00Z", "type": "order.authorise_return",
                "data": data,
            });
            decode(c.to_string().as_bytes())
        };
        let base = json!({"order": "O1", "return_id": "R1", "lines": [{"line": 1, "qty": 1}]});
        let with = |reason: serde_json::Value, note: &str| {
            let mut d = base.clone();
            d["reason"] = reason;
            d["note"] = json!(note);
            d
        };
        let missing = authorise(base.clone()).unwrap_err();
        assert!(missing.message.contains("reason"), "{missing:?}");
        let unknown = authorise(with(json!("Broken"), "")).unwrap_err();
        assert!(unknown.message.contains("Defective"), "{unknown:?}");
        let other = authorise(with(json!("Other"), " ")).unwrap_err();
        assert_eq!(other.field, "data.note");
        assert!(authorise(with(json!("Other"), "arrived after the party")).is_ok());
        assert!(authorise(with(json!("SizeTooLarge"), "")).is_ok());
    }

    #[test]
    fn money_is_in_an_iso_currency_with_no_more_decimals_than_its_minor_unit() {
        let order = |amount: &str, currency: &str| {
            let mut c: serde_json::Value = serde_json::from_slice(&valid()).unwrap();
            c["data"]["lines"][0]["unit_price"] = json!({"amount": amount, "currency": currency});
            decode(c.to_string().as_bytes())
        };
        // Accepted: whole yen, pence, fils (BHD has 3 decimals); trailing zeros are not
        // decimals.
        for (amount, currency) in [
            ("1500", "JPY"),
            ("1500.00", "JPY"),
            ("2.55", "GBP"),
            ("2.550", "GBP"),
            ("1.234", "BHD"),
            ("0.5", "KWD"),
        ] {
            assert!(
                order(amount, currency).is_ok(),
                "{amount} {currency}: {:?}",
                order(amount, currency)
            );
        }
        // Refused, naming the field: a fraction of a yen, a tenth of a penny, a code outside
        // ISO 4217, a code without a minor unit (gold).
        for (amount, currency, field, says) in [
            ("1500.5", "JPY", "amount", "has 1 decimal; JPY has 0"),
            ("2.555", "GBP", "amount", "has 3 decimals; GBP has 2"),
            ("1.2345", "BHD", "amount", "has 4 decimals; BHD has 3"),
            (
                "2.55",
                "ABC",
                "currency",
                "`ABC` is not an ISO 4217 currency",
            ),
            (
                "2.55",
                "XAU",
                "currency",
                "`XAU` is not an ISO 4217 currency",
            ),
        ] {
            let e = order(amount, currency).unwrap_err();
            assert_eq!(
                e.field,
                format!("data.lines[0].unit_price.{field}"),
                "{e:?}"
            );
            assert!(e.message.contains(says), "{e:?}");
        }
        // Money nested in money's place (a refund's `amount`) is checked too.
        let refund = json!({
            "command_id": "0190c3a2-0000-7000-8000-000000000002",
            "actor": {"id": "me", "role": "clerk"}, "legal_entity": "UK01",
            "effective_at": "2011-06-30T09:00:00Z", "type": "order.refund",
            "data": {"order": "O1", "return_id": "R1", "amount": {"amount": "1.001", "currency": "GBP"}},
        });
        if let Err(e) = decode(refund.to_string().as_bytes()) {
            assert_eq!(e.field, "data.amount.amount", "{e:?}");
        } else {
            panic!("a refund of a tenth of a penny was accepted");
        }
    }

    #[test]
    fn an_empty_key_is_still_reported_at_a_named_place() {
        // Found by the `command_json` fuzz target: the error named an empty field.
        let e = decode(b"{ \"\"\"\"\"\" .").unwrap_err();
        assert_eq!(e.field, "command", "{e:?}");
        let e = decode(br#"{"": 1}"#).unwrap_err();
        assert!(!e.field.is_empty(), "{e:?}");
    }

    #[test]
    fn ids_with_subject_wildcards_are_escaped_never_interpreted() {
        // Subject wildcards and separators in ids are data: they are escaped into one token
        // and come back unchanged, so an id can never address another subject.
        for id in ["A.*", "A.>", "*", ">", "A B", "led.sku.X", "=2E"] {
            let sku = ledger::values::Sku::new(id).expect("printable ids are allowed");
            let subject = ledger::Subject::Stock(sku);
            let relative = subject.relative();
            let token = relative.strip_prefix("sku.").expect("one kind prefix");
            assert!(
                !token.contains(['.', '*', '>', ' ']),
                "{id} became {relative}"
            );
            assert_eq!(ledger::Subject::parse_relative(&relative).unwrap(), subject);
        }
    }
}
