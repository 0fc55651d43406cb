//! The write model: what the deciders need to know, built by `apply` from events alone.
//! `apply` is pure and total: it accepts any event the log holds (it never refuses history).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ledger::events::{
    ChannelAllocationRule, ChannelDefined, Event, FulfilmentPolicy, ItemDefined, LocationDefined,
    SupplierDefined,
};
use ledger::values::{
    ChannelId, HoldId, LocationId, LotId, OrderId, PackageId, PurchaseOrderId, QTY_MAX, ReturnId,
    Sku, SupplierId, Timestamp, TransferId,
};
use ledger::{Envelope, Head, Subject};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A map whose entries sit in one dense vector (insertion order), with a table of indices.
pub type IndexMap<K, V> = indexmap::IndexMap<K, V>;

/// Quantities of one SKU at one location, in base units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub on_hand: i64,
    pub allocated: i64,
    pub reserved: i64,
    pub quality_hold: i64,
    /// Shipped by a transfer towards this location, not yet received.
    pub in_transit: i64,
}

impl Balance {
    /// What can still be promised, before safety stock and channel rules.
    pub fn free(&self) -> i64 {
        self.on_hand - self.allocated - self.reserved - self.quality_hold
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The legal entity whose command placed it (its expiry is booked under the same).
    pub legal_entity: ledger::values::EntityId,
    pub location: LocationId,
    pub channel: Option<ChannelId>,
    pub qty: i64,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub from: LocationId,
    pub to: LocationId,
    pub qty: i64,
    pub received: bool,
    /// The lot the transfer moves (lot-tracked items).
    pub lot: Option<LotId>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnStock {
    pub location: Option<LocationId>,
    pub received: i64,
    pub dispositioned: i64,
    /// The lot the returned units came from (lot-tracked items).
    pub lot: Option<LotId>,
}

/// One lot's units at one location: on the shelf (not picked), `held` of them in quality hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LotBalance {
    pub units: i64,
    pub held: i64,
}

impl LotBalance {
    /// Shelf units that may be picked, moved or held.
    pub fn free(&self) -> i64 {
        self.units - self.held
    }
}

/// A lot of a SKU: its expiry (from its first receipt), its units by location, and the units
/// picked from it for each order (what a return of that order may name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    pub expires_on: Option<ledger::values::Date>,
    pub at: BTreeMap<LocationId, LotBalance>,
    pub picked_for: BTreeMap<OrderId, i64>,
}

impl Lot {
    pub fn at(&self, location: &LocationId) -> LotBalance {
        self.at.get(location).copied().unwrap_or_default()
    }

    /// Whether units of the lot may still be sold on `day` to a channel that wants
    /// `min_days` of shelf life left: a lot is good through its expiry date.
    pub fn fresh_for(&self, day: chrono::NaiveDate, min_days: u32) -> bool {
        self.expires_on
            .is_none_or(|d| d.get() >= day + chrono::Days::new(u64::from(min_days)))
    }
}

/// Order lines waiting for this SKU, in the order they are served.
pub type BackorderKey = (u32, Timestamp, OrderId, u32);

/// Location ids as the write model holds them: one copy of each id for the whole process, so
/// a figure by location costs a pointer, not a string of its own. Location ids are few (they
/// come from `location.define`); the table only grows.
mod interned {
    use std::collections::HashSet;
    use std::sync::{LazyLock, RwLock};

    use ledger::values::LocationId;

    static TABLE: LazyLock<RwLock<HashSet<&'static LocationId>>> =
        LazyLock::new(|| RwLock::new(HashSet::new()));

    /// The one copy of `location`.
    pub fn location(location: &LocationId) -> &'static LocationId {
        if let Some(found) = TABLE.read().expect("interner lock").get(location) {
            return found;
        }
        let mut table = TABLE.write().expect("interner lock");
        if let Some(found) = table.get(location) {
            return found;
        }
        let leaked: &'static LocationId = Box::leak(Box::new(location.clone()));
        table.insert(leaked);
        leaked
    }
}

/// Figures by location, sorted by location: a short vector of exact size. Most SKUs sit at a
/// few locations and an order line at one or two; a map's node (room for eleven) would cost
/// several times the figures it holds. Locations are held interned (`interned`); the order is
/// the ids' own, so it never depends on which process interned what first. Serialised as
/// `(location id, figure)` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByLocation<T>(Vec<(&'static LocationId, T)>);

impl<T: Serialize> Serialize for ByLocation<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ByLocation<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut pairs: Vec<(LocationId, T)> = Vec::deserialize(deserializer)?;
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(ByLocation(
            pairs
                .into_iter()
                .map(|(l, v)| (interned::location(&l), v))
                .collect(),
        ))
    }
}

impl<T> Default for ByLocation<T> {
    fn default() -> ByLocation<T> {
        ByLocation(Vec::new())
    }
}

impl<T> ByLocation<T> {
    fn find(&self, location: &LocationId) -> Result<usize, usize> {
        self.0.binary_search_by(|(l, _)| (*l).cmp(location))
    }

    pub fn get(&self, location: &LocationId) -> Option<&T> {
        self.find(location).ok().map(|i| &self.0[i].1)
    }

    /// The figure at `location`, added (as `T::default()`) if missing.
    fn at(&mut self, location: &LocationId) -> &mut T
    where
        T: Default,
    {
        let i = match self.find(location) {
            Ok(i) => i,
            Err(i) => {
                self.0
                    .insert(i, (interned::location(location), T::default()));
                // Locations are added rarely; spare capacity would be paid on every entry.
                self.0.shrink_to_fit();
                i
            }
        };
        &mut self.0[i].1
    }

    pub fn iter(&self) -> impl Iterator<Item = (&LocationId, &T)> {
        self.0.iter().map(|(l, b)| (*l, b))
    }

    pub fn keys(&self) -> impl Iterator<Item = &LocationId> {
        self.0.iter().map(|(l, _)| *l)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|(_, b)| b)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ByLocation<i64> {
    /// Adds `qty` (negative: takes) at `location`; a location left at zero is dropped.
    pub fn add(&mut self, location: &LocationId, qty: i64) {
        if qty == 0 {
            return;
        }
        *self.at(location) += qty;
        if let Ok(i) = self.find(location)
            && self.0[i].1 == 0
        {
            self.0.remove(i);
        }
    }
}

impl<'a, T> IntoIterator for &'a ByLocation<T> {
    type Item = (&'a LocationId, &'a T);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (&'static LocationId, T)>,
        fn(&'a (&'static LocationId, T)) -> (&'a LocationId, &'a T),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(l, b)| (*l, b))
    }
}

impl<T> IntoIterator for ByLocation<T> {
    type Item = (LocationId, T);
    type IntoIter = std::iter::Map<
        std::vec::IntoIter<(&'static LocationId, T)>,
        fn((&'static LocationId, T)) -> (LocationId, T),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().map(|(l, b)| (l.clone(), b))
    }
}

/// A SKU's balances by location.
pub type Balances = ByLocation<Balance>;

/// Units of an order line by location, no zeros.
pub type LocationQty = ByLocation<i64>;

/// What a SKU's stock holds besides its balances: open holds, transfers and returns, and
/// channel rules. Most SKUs have none, so they live behind one pointer, allocated on first use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockExtras {
    pub holds: HashMap<HoldId, Hold>,
    pub transfers: HashMap<TransferId, Transfer>,
    pub returns: HashMap<ReturnId, ReturnStock>,
    pub channel_rules: BTreeMap<ChannelId, ChannelAllocationRule>,
    /// Lots by id (lot- or expiry-tracked items, and any stock event that names a lot).
    pub lots: BTreeMap<LotId, Lot>,
}

static NO_EXTRAS: std::sync::LazyLock<StockExtras> = std::sync::LazyLock::new(StockExtras::default);

/// Everything about one SKU's stock (subject `sku.<sku>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockState {
    pub head: Option<Head>,
    pub balances: Balances,
    extras: Option<Box<StockExtras>>,
}

impl StockState {
    pub fn balance(&self, location: &LocationId) -> Balance {
        self.balances.get(location).copied().unwrap_or_default()
    }

    fn at(&mut self, location: &LocationId) -> &mut Balance {
        self.balances.at(location)
    }

    /// Holds, transfers, returns and channel rules (empty for most SKUs).
    pub fn extras(&self) -> &StockExtras {
        self.extras.as_deref().unwrap_or(&NO_EXTRAS)
    }

    fn extras_mut(&mut self) -> &mut StockExtras {
        self.extras.get_or_insert_with(Default::default)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineState {
    pub sku: Option<Sku>,
    pub qty: i64,
    pub allocated: LocationQty,
    pub backordered: i64,
    pub picked: LocationQty,
    pub packed: i64,
    pub shipped: i64,
    pub cancelled: i64,
    pub return_authorised: i64,
}

impl LineState {
    pub fn allocated_total(&self) -> i64 {
        self.allocated.values().sum()
    }
    pub fn picked_total(&self) -> i64 {
        self.picked.values().sum()
    }
    /// Units neither shipped nor cancelled.
    pub fn open(&self) -> i64 {
        self.qty - self.shipped - self.cancelled
    }
}

/// An order's lines by line number, in a vector sorted by number: lines are numbered when the
/// order is placed and are never removed, and a map's nodes (half empty when filled in order)
/// cost more than the lines (the UCI year's open orders: 259 bytes a line in a B-tree map).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lines(Vec<(u32, LineState)>);

impl Lines {
    fn position(&self, line: u32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&line, |(n, _)| *n)
    }

    pub fn get(&self, line: &u32) -> Option<&LineState> {
        self.position(*line).ok().map(|i| &self.0[i].1)
    }

    /// The line numbered `line`, added empty if the order has none (an event naming a line the
    /// placement did not: `apply` never refuses history).
    pub fn at(&mut self, line: u32) -> &mut LineState {
        let i = match self.position(line) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (line, LineState::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &LineState)> {
        self.0.iter().map(|(n, l)| (n, l))
    }

    pub fn values(&self) -> impl Iterator<Item = &LineState> {
        self.0.iter().map(|(_, l)| l)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(u32, LineState)> for Lines {
    fn from_iter<I: IntoIterator<Item = (u32, LineState)>>(iter: I) -> Lines {
        let mut lines: Vec<(u32, LineState)> = iter.into_iter().collect();
        lines.sort_by_key(|(n, _)| *n);
        // A placement never repeats a line number (the command is refused); keep the last.
        lines.reverse();
        lines.dedup_by_key(|(n, _)| *n);
        lines.reverse();
        lines.shrink_to_fit();
        Lines(lines)
    }
}

impl<'a> IntoIterator for &'a Lines {
    type Item = (&'a u32, &'a LineState);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (u32, LineState)>,
        fn(&'a (u32, LineState)) -> (&'a u32, &'a LineState),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(n, l)| (n, l))
    }
}

impl std::ops::Index<&u32> for Lines {
    type Output = LineState;

    fn index(&self, line: &u32) -> &LineState {
        self.get(line).expect("no such line")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReturn {
    pub lines: BTreeMap<u32, i64>,
    pub refunded: bool,
}

/// A package that left: when, and whether a carrier confirmed its delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippedPackage {
    pub shipped_at: Timestamp,
    pub delivered: bool,
}

/// Everything about one order (subject `ord.<order>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub head: Option<Head>,
    pub channel: ChannelId,
    pub region: String,
    pub priority: u32,
    pub placed_at: Timestamp,
    /// The legal entity that sold it: its lines are allocated only at that entity's
    /// locations.
    pub entity: ledger::values::EntityId,
    pub policy: FulfilmentPolicy,
    pub currency: ledger::values::Currency,
    /// Why the order is held (`order.hold`), if it is.
    pub hold: Option<ledger::values::ReasonCode>,
    pub released_to_pick: bool,
    pub lines: Lines,
    /// Packed and not yet shipped.
    pub packages: HashMap<PackageId, Vec<(u32, i64)>>,
    /// Shipped packages: when each left, and whether its delivery was confirmed.
    pub shipped_packages: HashMap<PackageId, ShippedPackage>,
    pub returns: HashMap<ReturnId, OrderReturn>,
}

impl OrderState {
    /// Whether nothing is left to do on the order: every unit shipped or cancelled, nothing
    /// allocated, picked, packed or backordered, every return refunded. Such an order leaves
    /// memory (`State::retire`); a later command naming it (a return, a repeat) brings it
    /// back from its subject in the log.
    pub fn finished(&self) -> bool {
        self.packages.is_empty()
            && self.returns.values().all(|r| r.refunded)
            && self.lines.values().all(|l| {
                l.open() == 0
                    && l.backordered == 0
                    && l.packed == 0
                    && l.allocated.is_empty()
                    && l.picked.is_empty()
            })
    }

    /// The order as its events leave it, in the order the log holds them (the events of one
    /// subject, chained): what `State::apply` builds, for one order alone.
    pub fn from_history<'a>(
        events: impl IntoIterator<Item = (&'a Envelope, Head)>,
    ) -> Option<OrderState> {
        let mut order: Option<OrderState> = None;
        for (envelope, head) in events {
            if let Event::OrderPlaced(e) = &envelope.event {
                order = Some(placed(e, envelope));
            } else if let Some(o) = order.as_mut() {
                evolve_order(o, &envelope.event, envelope.effective_at);
            }
            if let Some(o) = order.as_mut() {
                o.head = Some(head);
            }
        }
        order
    }
}

/// Finished orders and recorded commands that left memory: for each, a 64-bit key of its id
/// and the sequence of its last record in the log. Two ids may share a key; every entry with
/// the key is read back and the one on the right subject kept, so a shared key costs a read,
/// never a wrong answer. About 16 bytes per entry (against about 2.5 KB per order and 220
/// bytes per command record held whole).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archive {
    orders: BTreeSet<(u64, u64)>,
    commands: BTreeSet<(u64, u64)>,
}

impl Archive {
    pub fn orders(&self) -> usize {
        self.orders.len()
    }

    pub fn commands(&self) -> usize {
        self.commands.len()
    }

    /// Where the last record of each archived order with `id`'s key sits.
    pub fn order_seqs(&self, id: &OrderId) -> Vec<u64> {
        entries(&self.orders, order_key(id))
    }

    /// Where the outcome record of each archived command with `id`'s key sits.
    pub fn command_seqs(&self, id: &Uuid) -> Vec<u64> {
        entries(&self.commands, command_key(id))
    }
}

fn entries(set: &BTreeSet<(u64, u64)>, key: u64) -> Vec<u64> {
    set.range((key, 0)..=(key, u64::MAX))
        .map(|&(_, seq)| seq)
        .collect()
}

/// FNV-1a of the id's text: stable across builds and machines, as snapshots need.
fn order_key(id: &OrderId) -> u64 {
    id.as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

fn command_key(id: &Uuid) -> u64 {
    let bits = id.as_u128();
    (bits >> 64) as u64 ^ bits as u64
}

/// What the deciders read of an item's definition: the rest (description, units, suppliers,
/// reorder figures) is for the views, which keep the whole event. A million-SKU catalogue
/// would otherwise hold every description twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRules {
    pub tracking: ledger::events::Tracking,
    pub safety_stock: ledger::values::Qty,
    pub allow_negative: bool,
    /// The units a command may state its quantities in.
    pub base_unit: ledger::values::UnitName,
    pub pack_sizes: Vec<ledger::events::PackSize>,
}

impl ItemRules {
    pub fn of(item: &ItemDefined) -> ItemRules {
        ItemRules {
            tracking: item.tracking.clone(),
            safety_stock: item.safety_stock,
            allow_negative: item.allow_negative,
            base_unit: item.base_unit.clone(),
            pack_sizes: item.pack_sizes.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Defined<T> {
    pub head: Option<Head>,
    pub value: T,
}

/// The recorded outcome of a command (subject `cmd.<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub head: Option<Head>,
    pub body_sha256: [u8; 32],
    pub outcome: RecordedOutcome,
}

impl CommandRecord {
    /// The record an outcome event makes (`None` for any other event).
    pub fn of(event: &Event, head: Option<Head>) -> Option<CommandRecord> {
        let (body_sha256, outcome) = match event {
            Event::CommandAccepted(e) => (
                e.body_sha256,
                RecordedOutcome::Accepted {
                    event_count: e.event_count,
                },
            ),
            Event::CommandRejected(e) => (
                e.body_sha256,
                RecordedOutcome::Rejected(Box::new(RecordedRejection {
                    code: e.code.clone(),
                    message: e.message.clone(),
                })),
            ),
            _ => return None,
        };
        Some(CommandRecord {
            head,
            body_sha256,
            outcome,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordedOutcome {
    /// The command's events are the `event_count` sequences before the outcome's own.
    Accepted { event_count: u32 },
    /// Boxed: rejections are rare and the table holds one slot per command.
    Rejected(Box<RecordedRejection>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRejection {
    pub code: String,
    pub message: String,
}

/// Where a purchase order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoStatus {
    /// Above the approval limit: waits for someone other than its requester.
    PendingApproval,
    Approved,
    Rejected,
    Sent,
    Closed,
}

impl PoStatus {
    pub fn name(self) -> &'static str {
        match self {
            PoStatus::PendingApproval => "pending approval",
            PoStatus::Approved => "approved",
            PoStatus::Rejected => "rejected",
            PoStatus::Sent => "sent",
            PoStatus::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoLineState {
    pub sku: Sku,
    pub location: LocationId,
    pub ordered: i64,
    pub received: i64,
    pub unit_cost: ledger::values::Money,
    /// Units the supplier's invoices charged for so far.
    pub invoiced: i64,
}

/// Everything about one purchase order (subject `po.<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseOrderState {
    pub head: Option<Head>,
    pub supplier: SupplierId,
    pub currency: ledger::values::Currency,
    /// Who created it: may not approve or reject it.
    pub requester: ledger::values::ActorId,
    pub status: PoStatus,
    pub lines: BTreeMap<u32, PoLineState>,
    /// The supplier invoices recorded against it: number -> what is still to be paid.
    pub invoices: BTreeMap<String, rust_decimal::Decimal>,
    /// Landed cost accrued per charge (`ChargeKind` by name) and not yet cleared by a charge
    /// invoice.
    pub accrued: BTreeMap<String, rust_decimal::Decimal>,
}

/// The key of a charge in `PurchaseOrderState::accrued`.
pub(crate) fn charge_key(charge: &ledger::events::ChargeKind) -> String {
    format!("{charge:?}")
}

/// Purchasing rules the processor is configured with (not facts from the log: they shape
/// decisions, and the decisions are recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchasePolicy {
    /// Orders worth more than this (in their own currency) need approval by someone other
    /// than their requester; up to it they are approved when created.
    pub approval_limit: rust_decimal::Decimal,
    /// How far a line may be over-received, in percent of the ordered quantity.
    pub over_receipt_tolerance_percent: rust_decimal::Decimal,
}

impl Default for PurchasePolicy {
    fn default() -> PurchasePolicy {
        PurchasePolicy {
            approval_limit: rust_decimal::Decimal::from(5_000),
            over_receipt_tolerance_percent: rust_decimal::Decimal::from(10),
        }
    }
}

/// A maker-checker threshold in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threshold {
    pub limit: ledger::events::Measure,
    pub set_by: ledger::values::ActorId,
    pub set_at: Timestamp,
}

/// A command waiting for a second person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingApproval {
    pub command_type: String,
    /// The command's canonical JSON.
    pub command: String,
    pub requester: ledger::values::ActorId,
    pub threshold: Option<ledger::events::ThresholdApplied>,
}

/// What the deciders know of one legal entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityState {
    pub head: Option<Head>,
    pub defined: Option<ledger::events::LegalEntityDefined>,
    /// By command type.
    pub thresholds: BTreeMap<String, Threshold>,
    /// By request (the waiting command's id).
    pub approvals: BTreeMap<String, WaitingApproval>,
    /// Closed periods, by `Period::index`, with the event that closed them.
    pub closed: BTreeMap<u32, ledger::events::PeriodClosed>,
}

/// Units a location took on in allocations in one business day (UTC), net of units released
/// that day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayUse {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub units: i64,
    /// The orders with units allocated at the location today, and how many (an order whose
    /// units there are all released that day leaves it).
    #[serde(default)]
    pub orders: BTreeMap<OrderId, i64>,
}

/// The business day (UTC) of `at`, in days since 1970-01-01.
pub fn business_day(at: Timestamp) -> i64 {
    at.micros().div_euclid(86_400_000_000)
}

/// The whole write model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Only what the deciders read of each definition (`ItemRules`); items and stock are dense
    /// maps (a slot of the index table is 8 bytes, not a whole entry).
    pub items: IndexMap<Sku, Defined<ItemRules>>,
    pub locations: BTreeMap<LocationId, Defined<LocationDefined>>,
    /// The legal entity each location belongs to: the one that defined it first. Its stock is
    /// that entity's; other entities' orders are not routed there.
    pub location_entities: BTreeMap<LocationId, ledger::values::EntityId>,
    /// What a shipment costs, by location and ship-to region (`location.shipping_rate_set`).
    pub shipping_rates: BTreeMap<LocationId, BTreeMap<String, ledger::values::Money>>,
    /// Units a location can take on in allocations per business day
    /// (`location.daily_capacity_set`); a location without an entry has no limit.
    pub daily_capacity: BTreeMap<LocationId, u32>,
    /// Orders each location takes on in allocations per business day (the `orders` of
    /// `location.daily_capacity_set`); a location without an entry has no limit.
    pub daily_order_capacity: BTreeMap<LocationId, u32>,
    /// What each location with a daily capacity took on in its latest business day.
    pub day_use: BTreeMap<LocationId, DayUse>,
    pub channels: HashMap<ChannelId, Defined<ChannelDefined>>,
    /// Days of shelf life each channel wants left (`channel.shelf_life_set`); none: 0.
    pub shelf_life: BTreeMap<ChannelId, u32>,
    pub suppliers: HashMap<SupplierId, Defined<SupplierDefined>>,
    pub stock: IndexMap<Sku, StockState>,
    /// Ordered maps for the two tables that grow without bound: a hash table doubles all at
    /// once (a copy of every entry, tens of milliseconds at a few hundred thousand orders,
    /// stalling every command behind it); a B-tree grows a node at a time.
    pub orders: BTreeMap<OrderId, OrderState>,
    pub commands: BTreeMap<Uuid, CommandRecord>,
    /// Finished orders and command records that left `orders` and `commands` (see `retire`).
    pub archive: Archive,
    /// Backordered quantity per order line, by SKU, in the order receipts serve them. Derived
    /// from the orders (an index, not a fact): `index_backorders` keeps it in step.
    pub backorders: HashMap<Sku, BTreeMap<BackorderKey, i64>>,
    pub purchase_orders: HashMap<PurchaseOrderId, PurchaseOrderState>,
    /// Each legal entity's definition, thresholds, waiting approvals and closed periods
    /// (subject `ent.<id>`).
    pub entities: BTreeMap<ledger::values::EntityId, EntityState>,
    /// Events effective in each month, per legal entity (by `Period::index`), outcome records
    /// and the entity's own governance events left out: what a period's trial balance must
    /// cover before the period may close.
    pub period_events: BTreeMap<ledger::values::EntityId, BTreeMap<u32, u64>>,
    /// The business clock of each legal entity: the latest effective time of its events
    /// (outcome records left out). `clock.tick` moves it on when nothing else does.
    pub business_clock: BTreeMap<ledger::values::EntityId, Timestamp>,
    /// Legal entities whose carriers confirm deliveries (`order.delivered` seen): their orders
    /// stay in memory until every package is confirmed delivered, so a confirmation does not
    /// read a finished order back from the log.
    #[serde(default)]
    pub delivery_entities: BTreeSet<ledger::values::EntityId>,
    /// Heads of subjects the model keeps nothing else about.
    pub other_heads: HashMap<Subject, Head>,
    /// The last foreign message stored on a subject (see `ledger::walk`), where it came after
    /// the subject's last event: never applied, but JetStream counts it as the subject's last
    /// sequence, so the next append to the subject must expect it.
    pub foreign_seqs: HashMap<Subject, u64>,
    /// Configuration, not state: see `PurchasePolicy` (not in snapshots either).
    #[serde(skip)]
    pub purchase_policy: PurchasePolicy,
}

fn add(map: &mut LocationQty, location: &LocationId, qty: i64) {
    map.add(location, qty);
}

impl State {
    /// The subject's last event as this model knows it (`Head::EMPTY` when it has none).
    pub fn head(&self, subject: &Subject) -> Head {
        let head = match subject {
            Subject::Item(sku) => self.items.get(sku).and_then(|d| d.head),
            Subject::Stock(sku) => self.stock.get(sku).and_then(|s| s.head),
            Subject::Location(id) => self.locations.get(id).and_then(|d| d.head),
            Subject::Channel(id) => self.channels.get(id).and_then(|d| d.head),
            Subject::Supplier(id) => self.suppliers.get(id).and_then(|d| d.head),
            Subject::Order(id) => self.orders.get(id).and_then(|o| o.head),
            Subject::Command(id) => self.commands.get(id).and_then(|c| c.head),
            Subject::PurchaseOrder(id) => self.purchase_orders.get(id).and_then(|p| p.head),
            Subject::LegalEntity(id) => self.entities.get(id).and_then(|e| e.head),
        };
        head.unwrap_or(Head::EMPTY)
    }

    /// What the next append to `subject` must expect: the chain continues from the subject's
    /// last event, and the stored sequence is that of its last message, foreign or not.
    pub fn expected_head(&self, subject: &Subject) -> Head {
        let head = self.head(subject);
        match self.foreign_seqs.get(subject) {
            Some(&seq) if seq > head.seq => Head { seq, ..head },
            _ => head,
        }
    }

    /// Notes a foreign message stored on `subject` at `seq` (it is not applied).
    pub fn note_foreign(&mut self, subject: &Subject, seq: u64) {
        self.foreign_seqs.insert(subject.clone(), seq);
    }

    fn set_head(&mut self, subject: &Subject, head: Head) {
        let slot = match subject {
            Subject::Item(sku) => self.items.get_mut(sku).map(|d| &mut d.head),
            Subject::Stock(sku) => self.stock.get_mut(sku).map(|s| &mut s.head),
            Subject::Location(id) => self.locations.get_mut(id).map(|d| &mut d.head),
            Subject::Channel(id) => self.channels.get_mut(id).map(|d| &mut d.head),
            Subject::Supplier(id) => self.suppliers.get_mut(id).map(|d| &mut d.head),
            Subject::Order(id) => self.orders.get_mut(id).map(|o| &mut o.head),
            Subject::Command(id) => self.commands.get_mut(id).map(|c| &mut c.head),
            Subject::PurchaseOrder(id) => self.purchase_orders.get_mut(id).map(|p| &mut p.head),
            Subject::LegalEntity(id) => {
                Some(&mut self.entities.entry(id.clone()).or_default().head)
            }
        };
        match slot {
            Some(slot) => *slot = Some(head),
            // An event the model does not track for this subject (e.g. an order event for an
            // order whose placement was never seen): remember the head so the next append to
            // the subject still chains correctly.
            None => {
                self.other_heads.insert(subject.clone(), head);
            }
        }
    }

    /// Applies one event. `head` is where the log stored it; `None` while the event is only
    /// tentatively applied (decided, not yet appended).
    pub fn apply(&mut self, envelope: &Envelope, head: Option<Head>) {
        self.evolve(envelope);
        if let Some(head) = head {
            self.set_head(&envelope.subject, head);
        }
    }

    /// Records where the log stored an event that was applied tentatively.
    pub fn confirm(&mut self, subject: &Subject, head: Head) {
        self.set_head(subject, head);
    }

    fn stock_mut(&mut self, sku: &Sku) -> &mut StockState {
        self.stock.entry(sku.clone()).or_default()
    }

    fn evolve(&mut self, envelope: &Envelope) {
        use Event as E;
        if !matches!(envelope.subject, Subject::Command(_)) {
            match self.business_clock.get_mut(&envelope.legal_entity) {
                Some(clock) => *clock = (*clock).max(envelope.effective_at),
                None => {
                    self.business_clock
                        .insert(envelope.legal_entity.clone(), envelope.effective_at);
                }
            }
        }
        match &envelope.event {
            E::StockAllocated(e) => {
                self.use_capacity(&e.location, envelope.effective_at, &e.order, e.qty.get());
            }
            E::AllocationReleased(e) => {
                self.use_capacity(&e.location, envelope.effective_at, &e.order, -e.qty.get());
            }
            _ => {}
        }
        if let Subject::LegalEntity(entity) = &envelope.subject {
            let state = self.entities.entry(entity.clone()).or_default();
            crate::governance::evolve(state, envelope);
            return;
        }
        if !matches!(envelope.subject, Subject::Command(_)) {
            let index = ledger::values::Period::of(envelope.effective_at).index();
            match self.period_events.get_mut(&envelope.legal_entity) {
                Some(months) => *months.entry(index).or_default() += 1,
                None => {
                    self.period_events
                        .insert(envelope.legal_entity.clone(), BTreeMap::from([(index, 1)]));
                }
            }
        }
        match &envelope.event {
            E::ItemDefined(e) | E::ItemChanged(e) => {
                let head = self.items.get(&e.sku).and_then(|d| d.head);
                self.items.insert(
                    e.sku.clone(),
                    Defined {
                        head,
                        value: ItemRules::of(e),
                    },
                );
            }
            E::ShippingRateSet(e) => {
                self.shipping_rates
                    .entry(e.location.clone())
                    .or_default()
                    .insert(e.region.clone(), e.cost);
            }
            E::DailyCapacitySet(e) => {
                match e.units {
                    Some(units) => self.daily_capacity.insert(e.location.clone(), units),
                    None => self.daily_capacity.remove(&e.location),
                };
                match e.orders {
                    Some(orders) => self.daily_order_capacity.insert(e.location.clone(), orders),
                    None => self.daily_order_capacity.remove(&e.location),
                };
                if e.units.is_none() && e.orders.is_none() {
                    self.day_use.remove(&e.location);
                }
            }
            E::LocationDefined(e) => {
                self.location_entities
                    .entry(e.location.clone())
                    .or_insert_with(|| envelope.legal_entity.clone());
                let head = self.locations.get(&e.location).and_then(|d| d.head);
                self.locations.insert(
                    e.location.clone(),
                    Defined {
                        head,
                        value: e.clone(),
                    },
                );
            }
            E::ChannelDefined(e) => {
                let head = self.channels.get(&e.channel).and_then(|d| d.head);
                self.channels.insert(
                    e.channel.clone(),
                    Defined {
                        head,
                        value: e.clone(),
                    },
                );
            }
            E::ChannelShelfLifeSet(e) => {
                self.shelf_life.insert(e.channel.clone(), e.min_days);
            }
            E::SupplierDefined(e) => {
                let head = self.suppliers.get(&e.supplier).and_then(|d| d.head);
                self.suppliers.insert(
                    e.supplier.clone(),
                    Defined {
                        head,
                        value: e.clone(),
                    },
                );
            }
            E::CommandAccepted(_) | E::CommandRejected(_) => {
                if let Subject::Command(id) = envelope.subject {
                    let head = self.commands.get(&id).and_then(|c| c.head);
                    if let Some(record) = CommandRecord::of(&envelope.event, head) {
                        self.commands.insert(id, record);
                    }
                }
            }
            event => {
                if let Subject::Stock(sku) = &envelope.subject {
                    let sku = sku.clone();
                    evolve_stock(self.stock_mut(&sku), event, &envelope.legal_entity);
                } else if let Subject::Order(order) = &envelope.subject {
                    if matches!(event, E::OrderDelivered(_))
                        && !self.delivery_entities.contains(&envelope.legal_entity)
                    {
                        self.delivery_entities.insert(envelope.legal_entity.clone());
                    }
                    self.index_backorders(order, false);
                    if let E::OrderPlaced(e) = event {
                        self.orders.insert(order.clone(), placed(e, envelope));
                    } else if let Some(state) = self.orders.get_mut(order) {
                        evolve_order(state, event, envelope.effective_at);
                    }
                    self.index_backorders(order, true);
                } else if let Subject::PurchaseOrder(po) = &envelope.subject {
                    self.evolve_purchase_order(po, envelope);
                }
            }
        }
    }

    /// Counts `units` allocated to `order` (released, when negative) at `location` on the day
    /// of `at`, where the location has a daily capacity (units or orders). A new day starts
    /// from nothing; an event dated before the location's latest day counted changes nothing
    /// (that day is history).
    fn use_capacity(&mut self, location: &LocationId, at: Timestamp, order: &OrderId, units: i64) {
        let by_orders = self.daily_order_capacity.contains_key(location);
        if !by_orders && !self.daily_capacity.contains_key(location) {
            return;
        }
        let day = business_day(at);
        let used = self.day_use.entry(location.clone()).or_default();
        if day > used.day {
            *used = DayUse {
                day,
                ..DayUse::default()
            };
        }
        if day == used.day {
            used.units = (used.units + units).max(0);
            if by_orders {
                let n = used.orders.entry(order.clone()).or_default();
                *n += units;
                if *n <= 0 {
                    used.orders.remove(order);
                }
            }
        }
    }

    fn evolve_purchase_order(&mut self, po: &PurchaseOrderId, envelope: &Envelope) {
        use Event as E;
        if let E::PurchaseOrderCreated(e) = &envelope.event {
            let head = self.purchase_orders.get(po).and_then(|p| p.head);
            let lines = e
                .lines
                .iter()
                .map(|l| {
                    let line = PoLineState {
                        sku: l.sku.clone(),
                        location: l.location.clone(),
                        ordered: l.qty.get(),
                        received: 0,
                        unit_cost: l.unit_cost,
                        invoiced: 0,
                    };
                    (l.line, line)
                })
                .collect();
            self.purchase_orders.insert(
                po.clone(),
                PurchaseOrderState {
                    head,
                    supplier: e.supplier.clone(),
                    currency: e.currency,
                    requester: envelope.actor.id.clone(),
                    status: PoStatus::PendingApproval,
                    lines,
                    invoices: BTreeMap::new(),
                    accrued: BTreeMap::new(),
                },
            );
            return;
        }
        let Some(p) = self.purchase_orders.get_mut(po) else {
            return;
        };
        match &envelope.event {
            E::PurchaseOrderApproved(_) => p.status = PoStatus::Approved,
            E::PurchaseOrderRejected(_) => p.status = PoStatus::Rejected,
            E::PurchaseOrderSent(_) => p.status = PoStatus::Sent,
            E::PurchaseOrderClosed(_) => p.status = PoStatus::Closed,
            E::ReceiptMatched(e) => {
                if let Some(line) = p.lines.get_mut(&e.line) {
                    line.received = e.qty_received.get();
                }
            }
            E::LandedCostAllocated(e) => {
                *p.accrued.entry(charge_key(&e.charge)).or_default() += e.amount.amount;
            }
            E::ChargeInvoiceRecorded(e) => {
                p.invoices.insert(e.invoice.clone(), e.amount.amount);
                *p.accrued.entry(charge_key(&e.charge)).or_default() -= e.accrual_cleared.amount;
            }
            E::PaymentRecorded(e) => {
                if let Some(open) = p.invoices.get_mut(&e.invoice) {
                    *open -= e.amount.amount;
                }
            }
            E::InvoiceRecorded(e) => {
                p.invoices.insert(e.invoice.clone(), e.total());
                for l in &e.lines {
                    if let Some(line) = p.lines.get_mut(&l.line) {
                        line.invoiced += l.qty.get();
                    }
                }
            }
            _ => {}
        }
    }

    /// The stock invariants of one SKU (DESIGN.md §5), or what breaks them: quantities never
    /// negative, and allocated + reserved + quality hold never above on hand, unless the item
    /// allows negative stock.
    pub fn invariant_violation(&self, sku: &Sku) -> Option<String> {
        let stock = self.stock.get(sku)?;
        let negative_allowed = self.items.get(sku).is_some_and(|d| d.value.allow_negative);
        for (location, b) in &stock.balances {
            let parts = [b.allocated, b.reserved, b.quality_hold, b.in_transit];
            if parts
                .iter()
                .chain(std::iter::once(&b.on_hand))
                .any(|q| q.unsigned_abs() > QTY_MAX as u64)
            {
                return Some(format!(
                    "{sku} at {location}: a figure beyond the largest quantity ({QTY_MAX}) in {b:?}"
                ));
            }
            if parts.iter().any(|q| *q < 0) {
                return Some(format!(
                    "{sku} at {location}: a negative component in {b:?}"
                ));
            }
            if !negative_allowed
                && (b.on_hand < 0 || b.allocated + b.reserved + b.quality_hold > b.on_hand)
            {
                return Some(format!(
                    "{sku} at {location}: committed exceeds on hand in {b:?}"
                ));
            }
        }
        let by_lot = self
            .items
            .get(sku)
            .is_some_and(|d| d.value.tracking.lot || d.value.tracking.expiry);
        if by_lot && !negative_allowed {
            for (id, lot) in &stock.extras().lots {
                for (location, b) in &lot.at {
                    if b.units < 0 || b.held < 0 || b.held > b.units {
                        return Some(format!(
                            "{sku} lot {id} at {location}: {} units, {} held",
                            b.units, b.held
                        ));
                    }
                }
            }
        }
        None
    }

    /// Moves a finished order or a recorded command out of memory into the archive, if the
    /// log holds all of it: it is one, its last record is stored at or before `stored_seq`,
    /// and nothing newer is pending on it (the caller's promise: no batch in flight wrote it).
    /// Returns whether it left.
    pub fn retire(&mut self, subject: &Subject, stored_seq: u64) -> bool {
        match subject {
            Subject::Order(id) => {
                let Some(order) = self.orders.get(id) else {
                    return false;
                };
                let Some(head) = order.head.filter(|h| h.seq <= stored_seq) else {
                    return false;
                };
                let awaits_delivery = self.delivery_entities.contains(&order.entity)
                    && order.shipped_packages.values().any(|p| !p.delivered);
                if !order.finished() || awaits_delivery {
                    return false;
                }
                self.orders.remove(id);
                self.archive.orders.insert((order_key(id), head.seq));
                true
            }
            Subject::Command(id) => {
                let Some(head) = self
                    .commands
                    .get(id)
                    .and_then(|c| c.head)
                    .filter(|h| h.seq <= stored_seq)
                else {
                    return false;
                };
                self.commands.remove(id);
                self.archive.commands.insert((command_key(id), head.seq));
                true
            }
            _ => false,
        }
    }

    /// Brings an archived order back into memory, as read back from its subject.
    pub fn restore_order(&mut self, id: OrderId, order: OrderState) {
        let seq = order
            .head
            .expect("an order read back from the log has a head")
            .seq;
        assert!(
            self.archive.orders.remove(&(order_key(&id), seq)),
            "order {id} was not archived at sequence {seq}"
        );
        assert!(order.finished(), "order {id} came back unfinished");
        self.orders.insert(id, order);
    }

    /// Brings an archived command record back into memory, as read back from the log.
    pub fn restore_command(&mut self, id: Uuid, record: CommandRecord) {
        let seq = record
            .head
            .expect("a record read back from the log has a head")
            .seq;
        assert!(
            self.archive.commands.remove(&(command_key(&id), seq)),
            "command {id} was not archived at sequence {seq}"
        );
        self.commands.insert(id, record);
    }

    /// Commands recorded, in memory or archived.
    pub fn commands_recorded(&self) -> usize {
        self.commands.len() + self.archive.commands()
    }

    /// Rebuilds the backorder index from the orders (after an interrupted change).
    pub fn reindex_backorders(&mut self) {
        self.backorders.clear();
        let ids: Vec<OrderId> = self.orders.keys().cloned().collect();
        for id in ids {
            self.index_backorders(&id, true);
        }
    }

    /// Adds (`present`) or removes the order's backordered lines from the index. Called around
    /// every change of an order, so the index always matches the orders.
    pub(crate) fn index_backorders(&mut self, order_id: &OrderId, present: bool) {
        let Some(order) = self.orders.get(order_id) else {
            return;
        };
        for (&line, l) in &order.lines {
            let (Some(sku), true) = (&l.sku, l.backordered > 0) else {
                continue;
            };
            let key = (order.priority, order.placed_at, order_id.clone(), line);
            if present {
                let index = self.backorders.entry(sku.clone()).or_default();
                index.insert(key, l.backordered);
            } else if let Some(index) = self.backorders.get_mut(sku) {
                index.remove(&key);
                // No empty entries: the index is the same however it was reached (a replay,
                // a snapshot, an undone batch).
                if index.is_empty() {
                    self.backorders.remove(sku);
                }
            }
        }
    }
}

fn placed(e: &ledger::events::OrderPlaced, envelope: &Envelope) -> OrderState {
    let at = envelope.effective_at;
    let lines = e
        .lines
        .iter()
        .map(|l| {
            (
                l.line,
                LineState {
                    sku: Some(l.sku.clone()),
                    qty: l.qty.get(),
                    ..LineState::default()
                },
            )
        })
        .collect();
    OrderState {
        head: None,
        channel: e.channel.clone(),
        region: e.ship_to_region.clone(),
        priority: e.priority,
        placed_at: at,
        entity: envelope.legal_entity.clone(),
        policy: e.policy.clone(),
        currency: e
            .lines
            .first()
            .map_or(e.shipping_charged.currency, |l| l.unit_price.currency),
        hold: None,
        released_to_pick: false,
        lines,
        packages: HashMap::new(),
        shipped_packages: HashMap::new(),
        returns: HashMap::new(),
    }
}

fn evolve_stock(s: &mut StockState, event: &Event, legal_entity: &ledger::values::EntityId) {
    use Event as E;
    for d in ledger::effects::stock_deltas(event) {
        let b = s.at(&d.location);
        b.on_hand += d.on_hand;
        b.allocated += d.allocated;
        b.reserved += d.reserved;
        b.quality_hold += d.quality_hold;
        b.in_transit += d.in_transit;
    }
    for d in ledger::effects::lot_deltas(event) {
        let lot = s.extras_mut().lots.entry(d.lot).or_default();
        let b = lot.at.entry(d.location.clone()).or_default();
        b.units += d.units;
        b.held += d.held;
        if *b == LotBalance::default() {
            lot.at.remove(&d.location);
        }
    }
    // What the figures do not hold: open holds, transfers and returns, channel rules, and
    // lots' expiry and picks.
    match event {
        E::StockReceived(ledger::events::StockReceived {
            lot: Some(lot),
            expires_on: Some(expires_on),
            ..
        }) => {
            let lot = s.extras_mut().lots.entry(lot.clone()).or_default();
            lot.expires_on.get_or_insert(*expires_on);
        }
        E::StockPicked(ledger::events::StockPicked {
            lot: Some(lot),
            order,
            qty,
            ..
        }) => {
            let lot = s.extras_mut().lots.entry(lot.clone()).or_default();
            *lot.picked_for.entry(order.clone()).or_default() += qty.get();
        }
        E::StockReserved(e) => {
            s.extras_mut().holds.insert(
                e.hold.clone(),
                Hold {
                    legal_entity: legal_entity.clone(),
                    location: e.location.clone(),
                    channel: e.channel.clone(),
                    qty: e.qty.get(),
                    expires_at: e.expires_at,
                },
            );
        }
        E::ReservationReleased(ledger::events::ReservationReleased { hold, .. })
        | E::ReservationExpired(ledger::events::ReservationExpired { hold, .. }) => {
            s.extras_mut().holds.remove(hold);
        }
        E::TransferShipped(e) => {
            s.extras_mut().transfers.insert(
                e.transfer.clone(),
                Transfer {
                    from: e.from.clone(),
                    to: e.to.clone(),
                    qty: e.qty.get(),
                    received: false,
                    lot: e.lot.clone(),
                },
            );
        }
        E::TransferReceived(e) => {
            if let Some(t) = s.extras_mut().transfers.get_mut(&e.transfer) {
                t.received = true;
            }
        }
        E::ReturnReceived(e) => {
            let r = s
                .extras_mut()
                .returns
                .entry(e.return_id.clone())
                .or_default();
            r.location = Some(e.location.clone());
            r.received += e.qty.get();
            if r.lot.is_none() {
                r.lot = e.lot.clone();
            }
        }
        E::ReturnDispositioned(e) => {
            s.extras_mut()
                .returns
                .entry(e.return_id.clone())
                .or_default()
                .dispositioned += e.qty.get();
        }
        E::ChannelAllocationSet(e) => {
            s.extras_mut()
                .channel_rules
                .insert(e.channel.clone(), e.rule.clone());
        }
        _ => {}
    }
}

fn evolve_order(o: &mut OrderState, event: &Event, at: Timestamp) {
    use Event as E;
    match event {
        E::OrderHeld(h) => o.hold = Some(h.reason.clone()),
        E::OrderReleased(_) => o.hold = None,
        E::LineAllocated(e) => {
            let line = o.lines.at(e.line);
            add(&mut line.allocated, &e.location, e.qty.get());
            line.backordered = (line.backordered - e.qty.get()).max(0);
        }
        E::LineBackordered(e) => o.lines.at(e.line).backordered += e.qty.get(),
        E::LineUnallocated(e) => add(&mut o.lines.at(e.line).allocated, &e.location, -e.qty.get()),
        E::OrderReleasedToPick(_) => o.released_to_pick = true,
        E::LinePicked(e) => {
            let line = o.lines.at(e.line);
            add(&mut line.picked, &e.location, e.qty.get());
        }
        E::OrderPacked(e) => {
            let mut contents = Vec::new();
            for l in &e.lines {
                o.lines.at(l.line).packed += l.qty.get();
                contents.push((l.line, l.qty.get()));
            }
            o.packages.insert(e.package.clone(), contents);
        }
        E::OrderShipped(e) => {
            for l in &e.lines {
                let line = o.lines.at(l.line);
                let qty = l.qty.get();
                line.shipped += qty;
                line.packed -= qty;
                // Shipped units leave the picked and allocated figures, location by location.
                let mut left = qty;
                for (location, picked) in line.picked.clone() {
                    let take = picked.min(left);
                    add(&mut line.picked, &location, -take);
                    add(&mut line.allocated, &location, -take);
                    left -= take;
                }
            }
            o.packages.remove(&e.package);
            o.shipped_packages.insert(
                e.package.clone(),
                ShippedPackage {
                    shipped_at: at,
                    delivered: false,
                },
            );
        }
        E::OrderDelivered(e) => {
            if let Some(p) = o.shipped_packages.get_mut(&e.package) {
                p.delivered = true;
            }
        }
        E::LinesAdded(e) => {
            for added in &e.lines {
                let line = o.lines.at(added.line.line);
                line.sku = Some(added.line.sku.clone());
                line.qty = added.line.qty.get();
            }
        }
        E::LinesCancelled(e) => {
            for l in &e.lines {
                let line = o.lines.at(l.line);
                let mut left = l.qty.get();
                let from_backorder = left.min(line.backordered);
                line.backordered -= from_backorder;
                left -= from_backorder;
                for (location, allocated) in line.allocated.clone() {
                    let picked = line.picked.get(&location).copied().unwrap_or(0);
                    let take = (allocated - picked).min(left);
                    add(&mut line.allocated, &location, -take);
                    left -= take;
                }
                line.cancelled += l.qty.get();
            }
        }
        E::ReturnAuthorised(e) => {
            let mut lines = BTreeMap::new();
            for l in &e.lines {
                o.lines.at(l.line).return_authorised += l.qty.get();
                lines.insert(l.line, l.qty.get());
            }
            o.returns.insert(
                e.return_id.clone(),
                OrderReturn {
                    lines,
                    refunded: false,
                },
            );
        }
        E::OrderRefunded(e) => {
            if let Some(r) = o.returns.get_mut(&e.return_id) {
                r.refunded = true;
            }
        }
        _ => {}
    }
}
