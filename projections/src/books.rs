//! The books: inventory valuation and the journal lines every operational event posts. The
//! margin view and the finance view are both built from these postings, so contribution margin
//! and the general-ledger accounts always agree.
//!
//! **Valuation.** Cost layers are kept per legal entity × SKU × location (the legal entity's
//! figure is their sum). Each item is valued by its `cost_method`: `Fifo` consumes the oldest
//! layer first; `MovingAverage` keeps one pool whose unit cost is value / quantity. Receipts add
//! layers at their unit cost; shipments, scraps, negative adjustments and transfers out consume
//! them; returned units re-enter at the cost at which their order line shipped (so a restocked
//! return is restored at its original cost, and one that is scrapped, refurbished or sent
//! back is then charged to its order as a cost of returns). Positive adjustments and counts enter at the location's current unit cost.
//!
//! **Landed cost** arriving later is split by how much of the purchase-order line's receipt is
//! still on hand: that part raises the value of the remaining units (FIFO: of the layers from
//! that receipt; moving average: the pool), the rest is COGS of what was already sold. Nothing
//! already posted changes; the charge is new postings.
//!
//! **Postings** are balanced by construction (each is built as debit and credit of the same
//! amount); `Books::post` still checks every event and the finance view records any event whose
//! lines do not sum to zero.

use std::collections::{BTreeMap, VecDeque};

use ledger::RecordedEvent;
use ledger::events::{CostMethod, Disposition, Event};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The accounts the books post to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Account {
    Inventory,
    InventoryInTransit,
    /// Goods received, not invoiced: the supplier's invoice will clear it.
    Grni,
    LandedCostAccrual,
    Cogs,
    Revenue,
    Discounts,
    ChannelFees,
    FreightIncome,
    FreightExpense,
    FreightPayable,
    Receivables,
    SalesReturns,
    /// Write-offs, count differences, scrapped and lost units.
    InventoryAdjustment,
    /// Returned units not restocked (scrapped, refurbished, sent back to the vendor): the
    /// cost of returns, charged to the order they came from.
    ReturnCosts,
    /// Tax charged on sales, owed to the tax authority of the order's ship-to region.
    TaxPayable,
    /// What supplier invoices charged, owed to the suppliers.
    AccountsPayable,
    /// Money paid out (supplier payments).
    Bank,
    /// Owed by another legal entity of the group for stock transferred to it.
    IntercompanyReceivable,
    /// Owed to another legal entity of the group for stock transferred from it.
    IntercompanyPayable,
}

impl Account {
    pub fn name(self) -> &'static str {
        match self {
            Account::Inventory => "inventory",
            Account::InventoryInTransit => "inventory_in_transit",
            Account::Grni => "grni",
            Account::LandedCostAccrual => "landed_cost_accrual",
            Account::Cogs => "cogs",
            Account::Revenue => "revenue",
            Account::Discounts => "discounts",
            Account::ChannelFees => "channel_fees",
            Account::FreightIncome => "freight_income",
            Account::FreightExpense => "freight_expense",
            Account::FreightPayable => "freight_payable",
            Account::Receivables => "receivables",
            Account::SalesReturns => "sales_returns",
            Account::InventoryAdjustment => "inventory_adjustment",
            Account::ReturnCosts => "return_costs",
            Account::TaxPayable => "tax_payable",
            Account::AccountsPayable => "accounts_payable",
            Account::Bank => "bank",
            Account::IntercompanyReceivable => "intercompany_receivable",
            Account::IntercompanyPayable => "intercompany_payable",
        }
    }
}

/// One journal line. `amount` > 0 is a debit, < 0 a credit. The dimensions say what the line
/// is about, for the margin view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub entity: String,
    pub currency: String,
    pub account: Account,
    pub amount: Decimal,
    pub sku: Option<String>,
    pub location: Option<String>,
    pub order: Option<String>,
    pub channel: Option<String>,
    /// The tax a sale's line, its tax or its refund belongs to (for the tax report).
    pub tax: Option<TaxCode>,
    /// The open item the line opens or settles (`payable.<po>.<invoice>`, `crate::key`): a
    /// supplier invoice's payable, so its settlement is translated at the rate it was booked
    /// at.
    pub item: Option<String>,
    /// The other legal entity of an intercompany line.
    pub counterparty: Option<String>,
}

/// A tax jurisdiction (the order's ship-to region) and rate (the line's tax over its net
/// amount, to 4 decimal places).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaxCode {
    pub jurisdiction: String,
    pub rate: String,
}

impl Posting {
    pub fn debit(&self) -> Decimal {
        self.amount.max(Decimal::ZERO)
    }

    pub fn credit(&self) -> Decimal {
        (-self.amount).max(Decimal::ZERO)
    }
}

/// A cost layer: units and their total value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub qty: i64,
    pub value: Decimal,
    /// The purchase order line whose receipt made it (`po/line`), for late landed cost.
    pub source: Option<String>,
}

/// The cost layers of one SKU at one location in one legal entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Valuation {
    pub currency: String,
    pub layers: VecDeque<Layer>,
    /// The last unit cost seen, for units issued with no layer left (negative stock).
    pub last_unit_cost: Decimal,
}

/// Costs are carried to 6 decimal places; money postings to 2 only where they are computed
/// from prices (discount and fee shares).
const COST_DP: u32 = 6;

/// Rounding is half away from zero, as an accountant would (not to even).
const HALF_UP: rust_decimal::RoundingStrategy =
    rust_decimal::RoundingStrategy::MidpointAwayFromZero;

impl Valuation {
    pub fn qty(&self) -> i64 {
        self.layers.iter().map(|l| l.qty).sum()
    }

    pub fn value(&self) -> Decimal {
        self.layers.iter().map(|l| l.value).sum()
    }

    pub fn unit_cost(&self) -> Decimal {
        let qty = self.qty();
        if qty > 0 {
            (self.value() / Decimal::from(qty)).round_dp_with_strategy(COST_DP, HALF_UP)
        } else {
            self.last_unit_cost
        }
    }

    fn add(&mut self, method: CostMethod, qty: i64, value: Decimal, source: Option<String>) {
        if qty > 0 {
            self.last_unit_cost =
                (value / Decimal::from(qty)).round_dp_with_strategy(COST_DP, HALF_UP);
        }
        match method {
            CostMethod::Fifo => self.layers.push_back(Layer { qty, value, source }),
            CostMethod::MovingAverage => match self.layers.front_mut() {
                Some(pool) => {
                    pool.qty += qty;
                    pool.value += value;
                }
                None => self.layers.push_back(Layer {
                    qty,
                    value,
                    source: None,
                }),
            },
        }
    }

    /// Takes `qty` units out; returns their cost.
    fn issue(&mut self, qty: i64) -> Decimal {
        let mut left = qty;
        let mut cost = Decimal::ZERO;
        while left > 0 {
            let Some(layer) = self.layers.front_mut() else {
                break;
            };
            if layer.qty <= 0 {
                // A negative pool (stock issued below zero): issue at the last cost below.
                break;
            }
            let take = left.min(layer.qty);
            let part = if take == layer.qty {
                layer.value
            } else {
                (layer.value * Decimal::from(take) / Decimal::from(layer.qty))
                    .round_dp_with_strategy(COST_DP, HALF_UP)
            };
            layer.qty -= take;
            layer.value -= part;
            cost += part;
            left -= take;
            if layer.qty == 0 {
                self.layers.pop_front();
            }
        }
        if left > 0 {
            // Below zero: the units are owed at the last known cost.
            let part = self.last_unit_cost * Decimal::from(left);
            match self.layers.front_mut() {
                Some(layer) => {
                    layer.qty -= left;
                    layer.value -= part;
                }
                None => self.layers.push_back(Layer {
                    qty: -left,
                    value: -part,
                    source: None,
                }),
            }
            cost += part;
        }
        cost
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OrderLineBook {
    sku: String,
    qty: i64,
    unit_price: Decimal,
    discount: Decimal,
    fees: Decimal,
    /// Tax on the whole line, and its code (none when the line carries no tax).
    #[serde(default)]
    tax: Decimal,
    #[serde(default)]
    tax_code: Option<TaxCode>,
    /// Units shipped and their cost, for returns.
    shipped: i64,
    shipped_cost: Decimal,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OrderBook {
    channel: String,
    currency: String,
    shipping_charged: Decimal,
    shipping_recognised: bool,
    lines: BTreeMap<u32, OrderLineBook>,
    /// Net sales and tax posted so far per tax code, for refunds to reverse in proportion.
    #[serde(default)]
    taxed: Vec<(TaxCode, Decimal, Decimal)>,
    /// Net sales posted so far on lines without tax.
    #[serde(default)]
    untaxed: Decimal,
    /// The ship-to region: the tax jurisdiction of lines added later.
    #[serde(default)]
    region: String,
}

/// What the books keep of an order line: its prices, and the tax code its tax implies in
/// `region` (the rate to four places, `unknown` on a line with no net amount).
fn line_book(l: &ledger::events::OrderLine, region: &str) -> OrderLineBook {
    let net = l.unit_price.amount * Decimal::from(l.qty.get()) - l.discount.amount;
    let tax_code = (!l.tax.amount.is_zero()).then(|| TaxCode {
        jurisdiction: region.to_owned(),
        rate: if net.is_zero() {
            "unknown".to_owned()
        } else {
            (l.tax.amount / net)
                .round_dp_with_strategy(4, HALF_UP)
                .normalize()
                .to_string()
        },
    });
    OrderLineBook {
        sku: l.sku.to_string(),
        qty: l.qty.get(),
        unit_price: l.unit_price.amount,
        discount: l.discount.amount,
        fees: l.fees.amount,
        tax: l.tax.amount,
        tax_code,
        shipped: 0,
        shipped_cost: Decimal::ZERO,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Transit {
    entity: String,
    sku: String,
    currency: String,
    qty: i64,
    value: Decimal,
    /// The legal entity the destination belongs to, when it is another: an intercompany
    /// transfer.
    #[serde(default)]
    buyer: Option<String>,
}

/// Received quantity of a purchase-order line, per legal entity, SKU and location.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PoLineBook {
    entity: String,
    location: String,
    received: i64,
    /// What the receipts put in GRNI, what invoices cleared of it, and the units invoiced.
    #[serde(default)]
    received_value: Decimal,
    #[serde(default)]
    cleared: Decimal,
    #[serde(default)]
    invoiced: i64,
}

/// Everything the postings need to remember.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Books {
    methods: BTreeMap<String, CostMethod>,
    fee_rates: BTreeMap<String, Decimal>,
    /// Key: `entity/sku/location`.
    valuations: BTreeMap<String, Valuation>,
    orders: BTreeMap<String, OrderBook>,
    transits: BTreeMap<String, Transit>,
    /// Key: `po/line`.
    po_lines: BTreeMap<String, PoLineBook>,
    /// Return id -> (order, channel), for the cost of returns not restocked.
    returns: BTreeMap<String, (String, String)>,
    /// The legal entity each location belongs to (the one that defined it first).
    #[serde(default)]
    owners: BTreeMap<String, String>,
}

/// The key of a valuation: `value.<entity>.<sku>.<location>`, each part escaped (so `A/B` at
/// `C` and `A` at `B/C` are different SKU x location pairs); also the margin view's row key.
fn vkey(entity: &str, sku: &str, location: &str) -> String {
    crate::key::key("value", &[entity, sku, location])
}

/// The open item of a supplier invoice's payable.
pub fn payable(purchase_order: &str, invoice: &str) -> String {
    crate::key::key("payable", &[purchase_order, invoice])
}

/// What one event posted, with its context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Posted {
    pub lines: Vec<Posting>,
    /// The valuation keys (`value.<entity>.<sku>.<location>`, `crate::key`) whose value
    /// changed.
    pub valuations: Vec<String>,
}

struct Poster<'a> {
    entity: &'a str,
    out: &'a mut Posted,
}

impl Poster<'_> {
    /// Marks the lines from `from` on that post to `account` as opening or settling `item`.
    fn item(&mut self, from: usize, account: Account, item: &str) {
        for line in &mut self.out.lines[from..] {
            if line.account == account {
                line.item = Some(item.to_owned());
            }
        }
    }

    /// Marks the lines from `from` on that post to `account` as owed by or to `other`.
    fn counterparty(&mut self, from: usize, account: Account, other: &str) {
        for line in &mut self.out.lines[from..] {
            if line.account == account {
                line.counterparty = Some(other.to_owned());
            }
        }
    }

    /// Marks the last `n` lines with a tax code.
    fn tag(&mut self, n: usize, code: &TaxCode) {
        let len = self.out.lines.len();
        for line in &mut self.out.lines[len - n..] {
            line.tax = Some(code.clone());
        }
    }

    /// Debit `dr`, credit `cr`, the same amount, with the same dimensions. Returns how many
    /// lines it posted (none for a zero amount).
    #[allow(clippy::too_many_arguments)]
    fn pair(
        &mut self,
        currency: &str,
        dr: Account,
        cr: Account,
        amount: Decimal,
        sku: Option<&str>,
        location: Option<&str>,
        order: Option<&str>,
        channel: Option<&str>,
    ) -> usize {
        if amount.is_zero() {
            return 0;
        }
        for (account, signed) in [(dr, amount), (cr, -amount)] {
            self.out.lines.push(Posting {
                entity: self.entity.to_owned(),
                currency: currency.to_owned(),
                account,
                amount: signed,
                sku: sku.map(str::to_owned),
                location: location.map(str::to_owned),
                order: order.map(str::to_owned),
                channel: channel.map(str::to_owned),
                tax: None,
                item: None,
                counterparty: None,
            });
        }
        2
    }
}

impl Books {
    fn method(&self, sku: &str) -> CostMethod {
        self.methods.get(sku).cloned().unwrap_or(CostMethod::Fifo)
    }

    /// The valuation of a SKU at a location in a legal entity, if it has had stock.
    pub fn valuation(&self, entity: &str, sku: &str, location: &str) -> Option<&Valuation> {
        self.valuations.get(&vkey(entity, sku, location))
    }

    /// Every valuation, by `value.<entity>.<sku>.<location>`.
    pub fn valuations(&self) -> impl Iterator<Item = (&String, &Valuation)> {
        self.valuations.iter()
    }

    fn valuation_mut(&mut self, key: &str, currency: &str) -> &mut Valuation {
        let v = self.valuations.entry(key.to_owned()).or_default();
        if v.currency.is_empty() {
            v.currency = currency.to_owned();
        }
        v
    }

    /// Puts `amount` (a landed-cost charge, an invoice's price difference) on the units of a
    /// purchase order line (`source`, `PO/line`): the share of the line's receipt still on
    /// hand raises (or lowers) those units' value, the rest is cost of goods sold; credited
    /// to `credit`. Nothing posted before is changed.
    fn spread(
        &mut self,
        p: &mut Poster<'_>,
        source: &str,
        sku: &str,
        currency: &str,
        amount: Decimal,
        credit: Account,
    ) {
        let Some(line) = self.po_lines.get(source).cloned() else {
            // Nothing received on that line as these books know: all of it is cost of goods
            // (there is no stock to carry it).
            p.pair(
                currency,
                Account::Cogs,
                credit,
                amount,
                Some(sku),
                None,
                None,
                None,
            );
            return;
        };
        let method = self.method(sku);
        let key = vkey(&line.entity, sku, &line.location);
        let valuation = self.valuation_mut(&key, currency);
        let remaining = match method {
            CostMethod::Fifo => valuation
                .layers
                .iter()
                .filter(|l| l.source.as_deref() == Some(source))
                .map(|l| l.qty)
                .sum::<i64>(),
            CostMethod::MovingAverage => valuation.qty().clamp(0, line.received),
        };
        let to_stock = if line.received > 0 {
            (amount * Decimal::from(remaining) / Decimal::from(line.received))
                .round_dp_with_strategy(minor_units(currency), HALF_UP)
        } else {
            Decimal::ZERO
        };
        if remaining > 0 {
            let layers: Vec<&mut Layer> = match method {
                CostMethod::Fifo => valuation
                    .layers
                    .iter_mut()
                    .filter(|l| l.source.as_deref() == Some(source))
                    .collect(),
                CostMethod::MovingAverage => valuation.layers.front_mut().into_iter().collect(),
            };
            // Spread over the layers by quantity; the last one takes the rounding.
            let count = layers.len();
            let mut given = Decimal::ZERO;
            for (i, layer) in layers.into_iter().enumerate() {
                let part = if i + 1 == count {
                    to_stock - given
                } else {
                    (to_stock * Decimal::from(layer.qty) / Decimal::from(remaining))
                        .round_dp_with_strategy(COST_DP, HALF_UP)
                };
                layer.value += part;
                given += part;
            }
            p.out.valuations.push(key);
        }
        p.pair(
            currency,
            Account::Inventory,
            credit,
            to_stock,
            Some(sku),
            Some(&line.location),
            None,
            None,
        );
        p.pair(
            currency,
            Account::Cogs,
            credit,
            amount - to_stock,
            Some(sku),
            None,
            None,
            None,
        );
    }

    /// Spreads each share of a charge over its purchase-order line's units (`spread`).
    fn spread_shares(
        &mut self,
        p: &mut Poster<'_>,
        purchase_order: &str,
        shares: &[ledger::events::ChargeShare],
        currency: &str,
        credit: Account,
    ) {
        for share in shares {
            let source = format!("{purchase_order}/{}", share.line);
            let amount = share.amount.amount;
            self.spread(p, &source, share.sku.as_str(), currency, amount, credit);
        }
    }

    /// Applies one event to the books and returns the journal lines it posts.
    pub fn post(&mut self, event: &RecordedEvent) -> Posted {
        use Event as E;
        let envelope = &event.envelope;
        let entity = envelope.legal_entity.as_str().to_owned();
        let mut out = Posted::default();
        let mut p = Poster {
            entity: &entity,
            out: &mut out,
        };
        match &envelope.event {
            E::ItemDefined(e) | E::ItemChanged(e) => {
                self.methods
                    .insert(e.sku.to_string(), e.cost_method.clone());
            }
            E::LocationDefined(e) => {
                self.owners
                    .entry(e.location.to_string())
                    .or_insert_with(|| entity.clone());
            }
            E::ChannelDefined(e) => {
                self.fee_rates
                    .insert(e.channel.to_string(), e.fee_rate.get());
            }
            E::StockReceived(e) => {
                let sku = e.sku.as_str();
                let location = e.location.as_str();
                let currency = e.unit_cost.currency.to_string();
                let value = e.unit_cost.amount * Decimal::from(e.qty.get());
                let source = e.purchase.as_ref().map(|r| {
                    let key = format!("{}/{}", r.purchase_order, r.line);
                    let line = self.po_lines.entry(key.clone()).or_default();
                    line.entity = entity.clone();
                    line.location = location.to_owned();
                    line.received += e.qty.get();
                    line.received_value += value;
                    key
                });
                let units = (sku, location, e.qty.get());
                let stock = Stock { value, source };
                self.receive(&mut p, units, stock, &currency, Account::Grni, (None, None));
            }
            E::LandedCostAllocated(e) => {
                let currency = e.amount.currency.to_string();
                let po = e.purchase_order.as_str();
                self.spread_shares(&mut p, po, &e.shares, &currency, Account::LandedCostAccrual);
            }
            E::InvoiceRecorded(e) => {
                let from = p.out.lines.len();
                for l in &e.lines {
                    let sku = l.sku.as_str();
                    let currency = l.unit_cost.currency.to_string();
                    let dp = minor_units(&currency);
                    let source = format!("{}/{}", e.purchase_order, l.line);
                    let n = l.qty.get();
                    let charged = l.charged();
                    // Clear what the receipts put in GRNI for these units: at their average
                    // received cost, the last invoice of a line clearing exactly what is left.
                    let cleared = match self.po_lines.get_mut(&source) {
                        Some(line) if line.received > 0 => {
                            line.invoiced += n;
                            let cleared = if line.invoiced >= line.received {
                                line.received_value - line.cleared
                            } else {
                                (line.received_value * Decimal::from(n)
                                    / Decimal::from(line.received))
                                .round_dp_with_strategy(dp, HALF_UP)
                            };
                            line.cleared += cleared;
                            cleared
                        }
                        _ => Decimal::ZERO,
                    };
                    p.pair(
                        &currency,
                        Account::Grni,
                        Account::AccountsPayable,
                        cleared,
                        Some(sku),
                        Some(l.location.as_str()),
                        None,
                        None,
                    );
                    // The price difference follows the goods: to the units of the line still
                    // on hand, the rest to cost of goods sold.
                    self.spread(
                        &mut p,
                        &source,
                        sku,
                        &currency,
                        charged - cleared,
                        Account::AccountsPayable,
                    );
                }
                let item = payable(e.purchase_order.as_str(), &e.invoice);
                p.item(from, Account::AccountsPayable, &item);
            }
            E::ChargeInvoiceRecorded(e) => {
                let currency = e.amount.currency.to_string();
                let from = p.out.lines.len();
                p.pair(
                    &currency,
                    Account::LandedCostAccrual,
                    Account::AccountsPayable,
                    e.accrual_cleared.amount,
                    None,
                    None,
                    None,
                    None,
                );
                // Charged beyond the accrual: a landed cost of the received lines.
                let po = e.purchase_order.as_str();
                self.spread_shares(&mut p, po, &e.shares, &currency, Account::AccountsPayable);
                let item = payable(e.purchase_order.as_str(), &e.invoice);
                p.item(from, Account::AccountsPayable, &item);
            }
            E::PaymentRecorded(e) => {
                p.pair(
                    e.amount.currency.as_str(),
                    Account::AccountsPayable,
                    Account::Bank,
                    e.amount.amount,
                    None,
                    None,
                    None,
                    None,
                );
                let item = payable(e.purchase_order.as_str(), &e.invoice);
                p.item(0, Account::AccountsPayable, &item);
            }
            E::OrderPlaced(e) => {
                let currency = e.shipping_charged.currency.to_string();
                let lines = e
                    .lines
                    .iter()
                    .map(|l| (l.line, line_book(l, &e.ship_to_region)))
                    .collect();
                self.orders.insert(
                    e.order.to_string(),
                    OrderBook {
                        channel: e.channel.to_string(),
                        currency,
                        shipping_charged: e.shipping_charged.amount,
                        shipping_recognised: false,
                        lines,
                        taxed: Vec::new(),
                        untaxed: Decimal::ZERO,
                        region: e.ship_to_region.clone(),
                    },
                );
            }
            E::LinesAdded(e) => {
                if let Some(book) = self.orders.get_mut(e.order.as_str()) {
                    for a in &e.lines {
                        let line = line_book(&a.line, &book.region);
                        book.lines.insert(a.line.line, line);
                    }
                }
            }
            E::StockShipped(e) => {
                let order = e.order.to_string();
                let channel = self.orders.get(&order).map(|o| o.channel.clone());
                let Some((cost, _)) = self.issue(
                    &mut p,
                    (e.sku.as_str(), e.location.as_str(), e.qty.get()),
                    Account::Cogs,
                    Some(&order),
                    channel.as_deref(),
                ) else {
                    return out;
                };
                if let Some(line) = self
                    .orders
                    .get_mut(&order)
                    .and_then(|o| o.lines.get_mut(&e.line))
                {
                    line.shipped += e.qty.get();
                    line.shipped_cost += cost;
                }
            }
            E::OrderShipped(e) => {
                let order = e.order.to_string();
                let Some(book) = self.orders.get_mut(&order) else {
                    return out;
                };
                let currency = book.currency.clone();
                let channel = book.channel.clone();
                let fee_rate = self.fee_rates.get(&channel).copied().unwrap_or_default();
                for shipped in &e.lines {
                    let Some(line) = book.lines.get(&shipped.line) else {
                        continue;
                    };
                    let q = Decimal::from(shipped.qty.get());
                    let of_line = if line.qty > 0 {
                        q / Decimal::from(line.qty)
                    } else {
                        Decimal::ZERO
                    };
                    let dp = minor_units(&currency);
                    let revenue = (line.unit_price * q).round_dp_with_strategy(dp, HALF_UP);
                    let discount = (line.discount * of_line).round_dp_with_strategy(dp, HALF_UP);
                    let fees = (line.fees * of_line + fee_rate * (revenue - discount))
                        .round_dp_with_strategy(dp, HALF_UP);
                    let tax = (line.tax * of_line).round_dp_with_strategy(dp, HALF_UP);
                    let sku = line.sku.clone();
                    let code = line.tax_code.clone();
                    for (dr, cr, amount, taxed) in [
                        (Account::Receivables, Account::Revenue, revenue, true),
                        (Account::Discounts, Account::Receivables, discount, true),
                        (Account::ChannelFees, Account::Receivables, fees, false),
                        (Account::Receivables, Account::TaxPayable, tax, true),
                    ] {
                        let n = p.pair(
                            &currency,
                            dr,
                            cr,
                            amount,
                            Some(&sku),
                            None,
                            Some(&order),
                            Some(&channel),
                        );
                        if taxed && let Some(code) = &code {
                            p.tag(n, code);
                        }
                    }
                    match code {
                        Some(code) => match book.taxed.iter_mut().find(|(c, _, _)| *c == code) {
                            Some(bucket) => {
                                bucket.1 += revenue - discount;
                                bucket.2 += tax;
                            }
                            None => book.taxed.push((code, revenue - discount, tax)),
                        },
                        None => book.untaxed += revenue - discount,
                    }
                }
                if !book.shipping_recognised {
                    book.shipping_recognised = true;
                    p.pair(
                        &currency,
                        Account::Receivables,
                        Account::FreightIncome,
                        book.shipping_charged,
                        None,
                        None,
                        Some(&order),
                        Some(&channel),
                    );
                }
                p.pair(
                    &e.freight_cost.currency.to_string(),
                    Account::FreightExpense,
                    Account::FreightPayable,
                    e.freight_cost.amount,
                    None,
                    None,
                    Some(&order),
                    Some(&channel),
                );
            }
            E::OrderRefunded(e) => {
                let order = e.order.to_string();
                let book = self.orders.get(&order);
                let channel = book.map(|o| o.channel.clone());
                let currency = e.amount.currency.to_string();
                // A refund gives back goods and their tax in the proportions they were
                // charged: each tax code's share of what was charged (net plus tax) reverses
                // its net sales and its tax; what is left (untaxed lines) is a sales return.
                let mut rest = e.amount.amount;
                if let Some(book) = book
                    && book.currency == currency
                {
                    let charged: Decimal = book.untaxed
                        + book
                            .taxed
                            .iter()
                            .map(|(_, net, tax)| net + tax)
                            .sum::<Decimal>();
                    let dp = minor_units(&currency);
                    for (code, net, tax) in &book.taxed {
                        if charged.is_zero() {
                            break;
                        }
                        let share = |part: Decimal| {
                            (e.amount.amount * part / charged).round_dp_with_strategy(dp, HALF_UP)
                        };
                        let (net_back, tax_back) = (share(*net), share(*tax));
                        for (account, amount) in [
                            (Account::SalesReturns, net_back),
                            (Account::TaxPayable, tax_back),
                        ] {
                            let n = p.pair(
                                &currency,
                                account,
                                Account::Receivables,
                                amount,
                                None,
                                None,
                                Some(&order),
                                channel.as_deref(),
                            );
                            p.tag(n, code);
                        }
                        rest -= net_back + tax_back;
                    }
                }
                p.pair(
                    &currency,
                    Account::SalesReturns,
                    Account::Receivables,
                    rest,
                    None,
                    None,
                    Some(&order),
                    channel.as_deref(),
                );
            }
            E::ReturnReceived(e) => {
                let order = e.order.to_string();
                let sku = e.sku.as_str();
                let location = e.location.as_str();
                let Some(book) = self.orders.get(&order) else {
                    return out;
                };
                let channel = book.channel.clone();
                self.returns
                    .insert(e.return_id.to_string(), (order.clone(), channel.clone()));
                let unit = book
                    .lines
                    .get(&e.line)
                    .filter(|l| l.shipped > 0)
                    .map(|l| l.shipped_cost / Decimal::from(l.shipped))
                    .unwrap_or_default();
                let value =
                    (unit * Decimal::from(e.qty.get())).round_dp_with_strategy(COST_DP, HALF_UP);
                let currency = book.currency.clone();
                let units = (sku, location, e.qty.get());
                let stock = Stock {
                    value,
                    source: None,
                };
                let dims = (Some(order.as_str()), Some(channel.as_str()));
                self.receive(&mut p, units, stock, &currency, Account::Cogs, dims);
            }
            E::ReturnDispositioned(e) if e.disposition != Disposition::Restock => {
                let (order, channel) = self.returns.get(e.return_id.as_str()).cloned().unzip();
                self.issue(
                    &mut p,
                    (e.sku.as_str(), e.location.as_str(), e.qty.get()),
                    Account::ReturnCosts,
                    order.as_deref(),
                    channel.as_deref(),
                );
            }
            E::StockScrapped(e) => {
                self.write_off(&mut p, e.sku.as_str(), e.location.as_str(), e.qty.get());
            }
            E::StockAdjusted(e) => {
                self.adjust(&mut p, e.sku.as_str(), e.location.as_str(), e.delta.get());
            }
            E::StockCounted(e) => {
                self.adjust(
                    &mut p,
                    e.sku.as_str(),
                    e.location.as_str(),
                    e.variance.get(),
                );
            }
            E::TransferShipped(e) => {
                let sku = e.sku.as_str();
                let taken = (sku, e.from.as_str(), e.qty.get());
                // To another entity's location: an intercompany sale at cost, owed by the
                // buyer from now on (the goods in transit are the buyer's once shipped).
                let buyer = self
                    .owners
                    .get(e.to.as_str())
                    .filter(|owner| **owner != entity)
                    .cloned();
                let account = match buyer {
                    Some(_) => Account::IntercompanyReceivable,
                    None => Account::InventoryInTransit,
                };
                let from = p.out.lines.len();
                let Some((cost, currency)) = self.issue(&mut p, taken, account, None, None) else {
                    return out;
                };
                if let Some(buyer) = &buyer {
                    p.counterparty(from, Account::IntercompanyReceivable, buyer);
                }
                self.transits.insert(
                    e.transfer.to_string(),
                    Transit {
                        entity: entity.clone(),
                        sku: sku.to_owned(),
                        currency,
                        qty: e.qty.get(),
                        value: cost,
                        buyer,
                    },
                );
            }
            E::TransferReceived(e) => {
                let Some(transit) = self.transits.remove(e.transfer.as_str()) else {
                    return out;
                };
                if let Some(buyer) = transit.buyer.clone() {
                    let mut p = Poster {
                        entity: &buyer,
                        out: p.out,
                    };
                    self.receive_intercompany(&mut p, &transit, e.to.as_str(), e.qty.get());
                    return out;
                }
                let owner = transit.entity.clone();
                let arrival = (e.to.as_str(), e.qty.get(), owner.as_str());
                self.arrive(&mut p, &transit, arrival, Account::InventoryInTransit);
            }
            _ => {}
        }
        out
    }

    /// The buyer's side of an intercompany transfer: the units arrive at its location at
    /// their share of the shipped cost (`arrive`) and it owes the seller the whole shipped
    /// cost.
    fn receive_intercompany(
        &mut self,
        p: &mut Poster<'_>,
        transit: &Transit,
        to: &str,
        arrived: i64,
    ) {
        let from = p.out.lines.len();
        let buyer = p.entity.to_owned();
        let arrival = (to, arrived, buyer.as_str());
        self.arrive(p, transit, arrival, Account::IntercompanyPayable);
        p.counterparty(from, Account::IntercompanyPayable, &transit.entity);
    }

    /// Units of a transfer arrive at `to` (valued in `owner`'s books) at their share of the
    /// shipped cost, against `credit` for the whole of it: what did not arrive is lost (an
    /// inventory adjustment), units beyond it are a gain.
    fn arrive(
        &mut self,
        p: &mut Poster<'_>,
        transit: &Transit,
        (to, arrived, owner): (&str, i64, &str),
        credit: Account,
    ) {
        let sku = transit.sku.as_str();
        let value = if transit.qty > 0 {
            (transit.value * Decimal::from(arrived) / Decimal::from(transit.qty))
                .round_dp_with_strategy(COST_DP, HALF_UP)
        } else {
            Decimal::ZERO
        };
        let method = self.method(sku);
        let key = vkey(owner, sku, to);
        self.valuation_mut(&key, &transit.currency)
            .add(method, arrived, value, None);
        p.out.valuations.push(key);
        let currency = transit.currency.as_str();
        let difference = transit.value - value;
        for (dr, cr, amount) in [
            (Account::Inventory, credit, value.min(transit.value)),
            (
                Account::InventoryAdjustment,
                credit,
                difference.max(Decimal::ZERO),
            ),
            (
                Account::Inventory,
                Account::InventoryAdjustment,
                (-difference).max(Decimal::ZERO),
            ),
        ] {
            p.pair(currency, dr, cr, amount, Some(sku), Some(to), None, None);
        }
    }

    /// Takes units (`sku`, `location`, `qty`) out at their cost and posts `account` /
    /// inventory; `None` when the location never had the SKU. Returns the cost and currency.
    fn issue(
        &mut self,
        p: &mut Poster<'_>,
        (sku, location, qty): (&str, &str, i64),
        account: Account,
        order: Option<&str>,
        channel: Option<&str>,
    ) -> Option<(Decimal, String)> {
        let key = vkey(p.entity, sku, location);
        let valuation = self.valuations.get_mut(&key)?;
        let currency = valuation.currency.clone();
        let cost = valuation.issue(qty);
        p.out.valuations.push(key);
        p.pair(
            &currency,
            account,
            Account::Inventory,
            cost,
            Some(sku),
            Some(location),
            order,
            channel,
        );
        Some((cost, currency))
    }

    fn write_off(&mut self, p: &mut Poster<'_>, sku: &str, location: &str, qty: i64) {
        self.issue(
            p,
            (sku, location, qty),
            Account::InventoryAdjustment,
            None,
            None,
        );
    }

    fn adjust(&mut self, p: &mut Poster<'_>, sku: &str, location: &str, delta: i64) {
        if delta < 0 {
            self.write_off(p, sku, location, -delta);
            return;
        }
        let key = vkey(p.entity, sku, location);
        let Some(valuation) = self.valuations.get_mut(&key) else {
            // Found stock of a SKU never received here: no cost is known, it enters at zero.
            self.valuation_mut(&key, "")
                .add(CostMethod::Fifo, delta, Decimal::ZERO, None);
            return;
        };
        let value =
            (valuation.unit_cost() * Decimal::from(delta)).round_dp_with_strategy(COST_DP, HALF_UP);
        let currency = valuation.currency.clone();
        let stock = Stock {
            value,
            source: None,
        };
        let units = (sku, location, delta);
        self.receive(
            p,
            units,
            stock,
            &currency,
            Account::InventoryAdjustment,
            (None, None),
        );
    }

    /// Puts units (`sku`, `location`, `qty`) in at `stock.value` and posts inventory /
    /// `credit`.
    fn receive(
        &mut self,
        p: &mut Poster<'_>,
        (sku, location, qty): (&str, &str, i64),
        stock: Stock,
        currency: &str,
        credit: Account,
        (order, channel): (Option<&str>, Option<&str>),
    ) {
        let method = self.method(sku);
        let key = vkey(p.entity, sku, location);
        self.valuation_mut(&key, currency)
            .add(method, qty, stock.value, stock.source);
        p.out.valuations.push(key);
        p.pair(
            currency,
            Account::Inventory,
            credit,
            stock.value,
            Some(sku),
            Some(location),
            order,
            channel,
        );
    }
}

/// Units' value coming in, and the purchase-order line they came from.
struct Stock {
    value: Decimal,
    source: Option<String>,
}

/// Whether each legal entity and currency's lines sum to zero.
pub fn balanced(lines: &[Posting]) -> bool {
    let mut sums: BTreeMap<(&str, &str), Decimal> = BTreeMap::new();
    for l in lines {
        *sums
            .entry((l.entity.as_str(), l.currency.as_str()))
            .or_default() += l.amount;
    }
    sums.values().all(|s| s.is_zero())
}

/// Decimal places amounts in `currency` are rounded to: its ISO 4217 minor unit (JPY 0, GBP 2,
/// BHD 3; `ledger::values::Currency::minor_units`).
pub fn minor_units(currency: &str) -> u32 {
    ledger::values::Currency::new(currency).map_or(2, |c| c.minor_units())
}
