//! Valuation and postings, worked as an accounting textbook would: given these receipts,
//! shipments, a late landed-cost charge and a return, then these figures, written out.
//! And a property: every event of any sequence posts balanced lines.

use std::collections::BTreeSet;

use ledger::envelope::{Envelope, EventHash, RecordedEvent};
use ledger::events::Event;
use ledger::values::{Actor, ActorId, EntityId, Role, Timestamp};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::json;

use crate::books::{Account, Books, balanced};
use crate::finance::Finance;
use crate::margin::Margin;
use crate::view::{Model, View};

/// An event as stored at `seq`, effective at `at`, for legal entity UK01.
pub(crate) fn recorded_on(seq: u64, at: &str, event: serde_json::Value) -> RecordedEvent {
    // Stock events on their SKU's subject, as the processor writes them.
    let sku = event["data"]["sku"].as_str().unwrap_or("X").to_owned();
    let event: Event = serde_json::from_value(event).expect("a valid event");
    let subject = ledger::Subject::Stock(ledger::values::Sku::new(sku).unwrap());
    RecordedEvent {
        seq,
        recorded_at: Timestamp::parse("2011-02-01T00:00:00Z").unwrap(),
        hash: EventHash::GENESIS,
        stored_version: 1,
        envelope: Envelope {
            event_id: uuid::Uuid::now_v7(),
            subject,
            command_id: uuid::Uuid::nil(),
            correlation_id: uuid::Uuid::nil(),
            actor: Actor {
                id: ActorId::new("t").unwrap(),
                role: Role::new("clerk").unwrap(),
            },
            legal_entity: EntityId::new("UK01").unwrap(),
            effective_at: Timestamp::parse(at).unwrap(),
            prev_hash: EventHash::GENESIS,
            event,
        },
    }
}

/// A seeded generator for tests' random stories: each call gives a number below `n`.
pub(crate) fn xorshift(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut rng = seed | 1;
    move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n.max(1)
    }
}

pub(crate) fn gbp(amount: &str) -> serde_json::Value {
    json!({"amount": amount, "currency": "GBP"})
}

pub(crate) fn item(method: &str) -> serde_json::Value {
    json!({"type": "item.defined", "data": {"sku": "LAMP", "description": "", "base_unit": "each",
        "pack_sizes": [], "tracking": {"lot": false, "serial": false, "expiry": false},
        "reorder_point": 0, "safety_stock": 0, "lead_time_days": 0, "min_order_qty": 0,
        "suppliers": [], "cost_method": method, "allow_negative": false}})
}

pub(crate) fn receipt(qty: i64, cost: &str, po: &str) -> serde_json::Value {
    json!({"type": "stock.received", "data": {"sku": "LAMP", "location": "WH1", "bin": null,
        "lot": null, "expires_on": null, "serials": [], "qty": qty, "unit_cost": gbp(cost),
        "purchase": {"purchase_order": po, "line": 1}}})
}

pub(crate) fn order(id: &str, qty: i64) -> serde_json::Value {
    json!({"type": "order.placed", "data": {"order": id, "channel": "web", "external_ref": "",
        "lines": [{"line": 1, "sku": "LAMP", "qty": qty, "unit_price": gbp("20.00"),
                   "discount": gbp("0.00"), "tax": gbp("0.00"), "fees": gbp("0.00")}],
        "shipping_charged": gbp("0.00"), "ship_to_region": "UK", "promise_date": null,
        "priority": 1, "policy": "Partial"}})
}

pub(crate) fn shipment(order: &str, qty: i64) -> serde_json::Value {
    json!({"type": "stock.shipped", "data": {"sku": "LAMP", "order": order, "line": 1,
        "location": "WH1", "qty": qty}})
}

fn freight(po: &str, amount: &str) -> serde_json::Value {
    json!({"type": "purchase.landed_cost_allocated", "data": {"purchase_order": po,
        "charge": "Freight", "amount": gbp(amount), "basis": "Value",
        "shares": [{"line": 1, "sku": "LAMP", "amount": gbp(amount)}]}})
}

fn returned(order: &str, qty: i64) -> serde_json::Value {
    json!({"type": "stock.return_received", "data": {"sku": "LAMP", "return_id": "R1",
        "order": order, "line": 1, "location": "WH1", "qty": qty}})
}

/// Runs the events through the books, the margin and the finance views; after each step
/// checks balance and hands back (inventory value, qty, COGS so far).
struct Case {
    books: Books,
    margin: Margin,
    finance: Finance,
    seq: u64,
    cogs: Decimal,
}

impl Case {
    fn new(method: &str) -> Case {
        let mut c = Case {
            books: Books::default(),
            margin: Margin::default(),
            finance: Finance::default(),
            seq: 0,
            cogs: Decimal::ZERO,
        };
        c.when(item(method));
        c
    }

    /// An event of the legal entity's own subject (definition, rates, closes).
    fn govern(&mut self, at: &str, event: serde_json::Value) {
        self.seq += 1;
        let mut e = recorded_on(self.seq, at, event);
        e.envelope.subject = ledger::Subject::LegalEntity(EntityId::new("UK01").unwrap());
        self.margin.apply(&e, &mut BTreeSet::new());
        self.finance.apply(&e, &mut BTreeSet::new());
    }

    fn when(&mut self, event: serde_json::Value) {
        self.when_at("2011-01-10T09:00:00Z", event);
    }

    fn when_at(&mut self, at: &str, event: serde_json::Value) {
        self.when_as("UK01", at, event);
    }

    /// An event of another legal entity.
    fn when_as(&mut self, entity: &str, at: &str, event: serde_json::Value) {
        self.seq += 1;
        let mut e = recorded_on(self.seq, at, event);
        e.envelope.legal_entity = EntityId::new(entity).unwrap();
        let posted = self.books.post(&e);
        assert!(balanced(&posted.lines), "event {} unbalanced", self.seq);
        self.cogs += posted
            .lines
            .iter()
            .filter(|l| l.account == Account::Cogs)
            .map(|l| l.amount)
            .sum::<Decimal>();
        self.margin.apply(&e, &mut BTreeSet::new());
        self.finance.apply(&e, &mut BTreeSet::new());
    }

    /// (quantity, inventory value, COGS), value and COGS to 6 places.
    fn then(&self) -> (i64, String, String) {
        let v = self.books.valuation("UK01", "LAMP", "WH1").unwrap();
        (v.qty(), v.value().to_string(), self.cogs.to_string())
    }
}

fn d(text: &str) -> String {
    text.parse::<Decimal>().unwrap().to_string()
}

#[test]
fn fifo_receipts_sale_late_freight_return_and_second_sale() {
    let mut c = Case::new("Fifo");
    // Given 100 lamps at 10.00 (PO1) and 50 at 12.00 (PO2): 1,600.00 of stock.
    c.when(receipt(100, "10.00", "PO1"));
    c.when(receipt(50, "12.00", "PO2"));
    assert_eq!(c.then(), (150, d("1600.00"), d("0")));
    // When 120 ship: the oldest first, 100 x 10.00 + 20 x 12.00 = 1,240.00 of COGS;
    // 30 x 12.00 = 360.00 remain.
    c.when(order("O1", 120));
    c.when(shipment("O1", 120));
    assert_eq!(c.then(), (30, d("360.00"), d("1240.00")));
    // When 150.00 freight arrives for PO2 after 20 of its 50 were sold: 30/50 stays on the
    // shelf (90.00, now 15.00 a unit), 20/50 is COGS of what sold (60.00).
    c.when(freight("PO2", "150.00"));
    assert_eq!(c.then(), (30, d("450.00"), d("1300.00")));
    // When 10 of O1 come back: restored at O1's own cost, 1,240.00 / 120 = 10.333333 each.
    c.when(returned("O1", 10));
    assert_eq!(c.then(), (40, d("553.333333"), d("1196.666667")));
    // When 35 more ship: the 30 at 15.00 (450.00) and 5 of the returned at 10.333333
    // (103.333333 x 5/10 = 51.6666665, rounded half up: 51.666667) = 501.666667; 5 remain
    // at 51.666666.
    c.when(order("O2", 35));
    c.when(shipment("O2", 35));
    assert_eq!(c.then(), (5, d("51.666666"), d("1698.333334")));
    // The views agree: inventory value and margin by SKU, and debits equal credits.
    let value = c.margin.value("value.UK01.LAMP.WH1").unwrap();
    assert_eq!(value["value"], "51.67");
    assert_eq!(value["qty"], 5);
    let sku = c.margin.value("sku.LAMP.GBP").unwrap();
    assert_eq!(sku["cogs"], "1698.33");
    let check = c.finance.value("check").unwrap();
    assert_eq!(check["balanced"], true, "{check}");
}

#[test]
fn moving_average_same_case() {
    let mut c = Case::new("MovingAverage");
    c.when(receipt(100, "10.00", "PO1"));
    c.when(receipt(50, "12.00", "PO2"));
    assert_eq!(c.then(), (150, d("1600.00"), d("0")));
    // 120 ship at the average 1,600.00 / 150 = 10.666667: 1,280.00; 30 remain at 320.00.
    c.when(order("O1", 120));
    c.when(shipment("O1", 120));
    assert_eq!(c.then(), (30, d("320.00"), d("1280.00")));
    // Freight 150.00 on PO2's 50 units, 30 still in the pool: 90.00 to stock, 60.00 to COGS.
    c.when(freight("PO2", "150.00"));
    assert_eq!(c.then(), (30, d("410.00"), d("1340.00")));
    // 10 return at O1's cost, 1,280.00 / 120 = 10.666667 each: 106.666667.
    c.when(returned("O1", 10));
    assert_eq!(c.then(), (40, d("516.666667"), d("1233.333333")));
    // 35 ship at the new average 516.666667 / 40: 452.083334; 5 remain at 64.583333.
    c.when(order("O2", 35));
    c.when(shipment("O2", 35));
    assert_eq!(c.then(), (5, d("64.583333"), d("1685.416667")));
}

#[test]
fn revenue_fees_and_freight_post_balanced_and_reach_the_margin() {
    let mut c = Case::new("Fifo");
    c.when(
        json!({"type": "channel.defined", "data": {"channel": "web", "name": "Web",
        "fee_rate": "0.05", "reservation_policy": "None"}}),
    );
    c.when(receipt(10, "8.00", "PO1"));
    c.when(
        json!({"type": "order.placed", "data": {"order": "O1", "channel": "web",
        "external_ref": "", "lines": [{"line": 1, "sku": "LAMP", "qty": 4,
        "unit_price": gbp("20.00"), "discount": gbp("8.00"), "tax": gbp("0.00"),
        "fees": gbp("2.00")}], "shipping_charged": gbp("4.95"), "ship_to_region": "UK",
        "promise_date": null, "priority": 1, "policy": "Partial"}}),
    );
    c.when(shipment("O1", 4));
    c.when(
        json!({"type": "order.shipped", "data": {"order": "O1", "package": "P1",
        "carrier": "DPD", "tracking": "T", "freight_cost": gbp("3.50"),
        "lines": [{"line": 1, "qty": 4}]}}),
    );
    c.when(
        json!({"type": "order.refunded", "data": {"order": "O1", "return_id": "R1",
        "amount": gbp("10.00")}}),
    );
    // Revenue 80.00, discount 8.00, fees 2.00 + 5% of 72.00 = 5.60, freight charged 4.95,
    // paid 3.50, COGS 32.00, refund 10.00: contribution 80.00 - 8.00 - 5.60 + 4.95 - 3.50
    // - 32.00 - 10.00 = 25.85.
    let order = c.margin.value("order.O1.GBP").unwrap();
    assert_eq!(order["revenue"], "80.00");
    assert_eq!(order["discounts"], "8.00");
    assert_eq!(order["fees"], "5.60");
    assert_eq!(order["freight_charged"], "4.95");
    assert_eq!(order["freight_paid"], "3.50");
    assert_eq!(order["cogs"], "32.00");
    assert_eq!(order["refunds"], "10.00");
    assert_eq!(order["contribution"], "25.85");
    assert_eq!(
        c.margin.value("channel.web.GBP").unwrap()["contribution"],
        "25.85"
    );
    assert_eq!(
        c.margin.value("day.2011-01-10.GBP").unwrap()["contribution"],
        "25.85"
    );
    // One unit comes back and is scrapped: its 8.00 leaves COGS on receipt and is charged to
    // the order as a cost of returns; the contribution is unchanged.
    c.when(returned("O1", 1));
    c.when(
        json!({"type": "stock.return_dispositioned", "data": {"sku": "LAMP",
        "return_id": "R1", "location": "WH1", "qty": 1, "disposition": "Scrap"}}),
    );
    let order = c.margin.value("order.O1.GBP").unwrap();
    assert_eq!(order["cogs"], "24.00");
    assert_eq!(order["return_costs"], "8.00");
    assert_eq!(order["contribution"], "25.85");
    let receivables = c.finance.value("acct.UK01.GBP.receivables").unwrap();
    // 80.00 - 8.00 - 5.60 + 4.95 - 10.00 owed by the channel.
    assert_eq!(receivables["balance"], "61.35");
}

#[test]
fn a_line_added_by_amendment_earns_revenue_at_its_own_price_when_it_ships() {
    let mut c = Case::new("Fifo");
    c.when(receipt(10, "8.00", "PO1"));
    c.when(order("O1", 1));
    // A line added later, at another price; line 1 is cancelled.
    c.when(
        json!({"type": "order.lines_added", "data": {"order": "O1", "reason": "customer_request",
            "lines": [{"line": {"line": 2, "sku": "LAMP", "qty": 3, "unit_price": gbp("15.00"),
                "discount": gbp("0.00"), "tax": gbp("0.00"), "fees": gbp("0.00")},
                "replaces": 1, "consent": null}]}}),
    );
    c.when(
        json!({"type": "order.lines_cancelled", "data": {"order": "O1",
            "lines": [{"line": 1, "qty": 1}], "reason": "customer_request"}}),
    );
    c.when(
        json!({"type": "stock.shipped", "data": {"sku": "LAMP", "order": "O1", "line": 2,
        "location": "WH1", "qty": 3}}),
    );
    c.when(
        json!({"type": "order.shipped", "data": {"order": "O1", "package": "P1",
        "carrier": "DPD", "tracking": "T", "freight_cost": gbp("0.00"),
        "lines": [{"line": 2, "qty": 3}]}}),
    );
    let order = c.margin.value("order.O1.GBP").unwrap();
    assert_eq!(order["revenue"], "45.00");
    assert_eq!(order["cogs"], "24.00");
    assert_eq!(order["contribution"], "21.00");
}

fn invoice(po: &str, number: &str, qty: i64, cost: &str, po_cost: &str) -> serde_json::Value {
    json!({"type": "purchase.invoice_recorded", "data": {"purchase_order": po, "invoice": number,
        "lines": [{"line": 1, "sku": "LAMP", "location": "WH1", "qty": qty,
                   "unit_cost": gbp(cost), "po_unit_cost": gbp(po_cost)}]}})
}

#[test]
fn an_invoice_above_the_order_price_after_half_was_sold_splits_its_variance() {
    // FIFO. 10 lamps received at the order's 2.00 (PO1): inventory 20.00 / GRNI 20.00. Five
    // sell: COGS 10.00, 5 on hand worth 10.00.
    let mut c = Case::new("Fifo");
    c.when(receipt(10, "2.00", "PO1"));
    c.when(order("O1", 5));
    c.when(shipment("O1", 5));
    assert_eq!(c.then(), (5, d("10.00"), d("10.00")));
    // The supplier invoices all 10 at 2.20: 22.00 owed. GRNI is cleared of its 20.00; the
    // 2.00 difference follows the goods: 5/10 on hand (1.00: the five left are worth 11.00),
    // 5/10 sold (1.00 more COGS).
    c.when(invoice("PO1", "INV-1", 10, "2.20", "2.00"));
    assert_eq!(c.then(), (5, d("11.00"), d("11.00")));
    let account = |name: &str| {
        c.finance.value(&format!("acct.UK01.GBP.{name}")).unwrap()["balance"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(account("grni"), "0.00");
    assert_eq!(account("accounts_payable"), "-22.00");
    assert_eq!(account("inventory"), "11.00");
    assert_eq!(account("cogs"), "11.00");
    assert_eq!(c.finance.value("check").unwrap()["balanced"], true);
}

#[test]
fn a_gbp_entity_buying_in_usd_keeps_usd_books_and_translates_them_at_each_date() {
    // UK01 keeps its books in GBP. USD is worth 0.80 GBP from 3 January, 0.82 from 15
    // January. 10 lamps bought at 3.00 USD on the 10th: 30.00 USD of inventory / GRNI,
    // 24.00 GBP translated. Five ship on the 20th: 15.00 USD of COGS, 12.30 GBP.
    let mut c = Case::new("Fifo");
    // 2 lamps received in GBP at WH2 before the entity is defined: they start its GBP books.
    let mut before = receipt(2, "1.50", "PO0");
    before["data"]["location"] = json!("WH2");
    c.when_at("2011-01-01T00:00:00Z", before);
    c.govern(
        "2011-01-01T00:00:00Z",
        json!({"type": "legal_entity.defined", "data": {"entity": "UK01", "name": "Gifts UK",
            "currency": "GBP", "country": "GB"}}),
    );
    let rate = |from: &str, rate: &str| {
        json!({"type": "fx.rate_set", "data": {"currency": "USD", "functional": "GBP",
            "rate": rate, "from": from, "source": "test"}})
    };
    c.govern("2011-01-02T00:00:00Z", rate("2011-01-03", "0.80"));
    c.govern("2011-01-02T00:00:00Z", rate("2011-01-15", "0.82"));
    let mut usd_receipt = receipt(10, "3.00", "PO1");
    usd_receipt["data"]["unit_cost"]["currency"] = json!("USD");
    c.when_at("2011-01-10T09:00:00Z", usd_receipt);
    c.when_at("2011-01-20T09:00:00Z", order("O1", 5));
    c.when_at("2011-01-20T09:00:00Z", shipment("O1", 5));
    let usd = c.finance.value("acct.UK01.USD.inventory").unwrap();
    assert_eq!(usd["balance"], "15.00", "the USD books are kept beside");
    let inventory = c.finance.value("fn.UK01.inventory").unwrap();
    // 3.00 GBP from before, 24.00 in at 0.80, 12.30 out at 0.82: 14.70 GBP left (the rest
    // is translation, not valuation: no revaluation is posted).
    assert_eq!(
        (
            inventory["currency"].as_str(),
            inventory["balance"].as_str()
        ),
        (Some("GBP"), Some("14.70"))
    );
    assert_eq!(c.finance.value("fn.UK01.cogs").unwrap()["balance"], "12.30");
    assert_eq!(
        c.finance.value("fn.UK01.grni").unwrap()["balance"],
        "-27.00"
    );
    let check = c.finance.value("check").unwrap();
    assert_eq!(check["functional"][0]["currency"], "GBP", "{check}");
    assert_eq!(check["functional"][0]["balanced"], true, "{check}");
    assert_eq!(check["balanced"], true, "{check}");
    // A receipt in JPY, for which UK01 has no rate: kept in JPY, left out of the GBP books,
    // and listed.
    let mut jpy_receipt = receipt(1, "500", "PO2");
    jpy_receipt["data"]["unit_cost"]["currency"] = json!("JPY");
    c.when_at("2011-01-21T09:00:00Z", jpy_receipt);
    let check = c.finance.value("check").unwrap();
    assert_eq!(check["untranslated_events"], json!([c.seq]), "{check}");
    assert_eq!(check["functional"][0]["balanced"], true, "{check}");
}

#[test]
fn a_gbp_entity_invoiced_in_usd_and_paying_at_other_rates_realises_the_difference() {
    // UK01 keeps its books in GBP. USD: 0.80 GBP from 3 January, 0.78 from 25 January,
    // 0.8123 from 1 February.
    let mut c = Case::new("Fifo");
    c.govern(
        "2011-01-01T00:00:00Z",
        json!({"type": "legal_entity.defined", "data": {"entity": "UK01", "name": "Gifts UK",
            "currency": "GBP", "country": "GB"}}),
    );
    for (from, rate) in [
        ("2011-01-03", "0.80"),
        ("2011-01-25", "0.78"),
        ("2011-02-01", "0.8123"),
    ] {
        c.govern(
            "2011-01-02T00:00:00Z",
            json!({"type": "fx.rate_set", "data": {"currency": "USD", "functional": "GBP",
                "rate": rate, "from": from, "source": "test"}}),
        );
    }
    let usd = |amount: &str| json!({"amount": amount, "currency": "USD"});
    // 100 lamps at 12.50 USD received on the 5th and invoiced on the 10th at that price:
    // 1,250.00 USD owed, booked at 0.80 = 1,000.00 GBP.
    let mut received = receipt(100, "12.50", "PO1");
    received["data"]["unit_cost"] = usd("12.50");
    c.when_at("2011-01-05T09:00:00Z", received);
    let mut invoiced = invoice("PO1", "INV-1", 100, "12.50", "12.50");
    invoiced["data"]["lines"][0]["unit_cost"] = usd("12.50");
    invoiced["data"]["lines"][0]["po_unit_cost"] = usd("12.50");
    c.when_at("2011-01-10T09:00:00Z", invoiced);
    let balance = |c: &Case, key: &str| {
        c.finance
            .value(key)
            .map(|row| row["balance"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        balance(&c, "fn.UK01.accounts_payable").as_deref(),
        Some("-1000.00")
    );
    let paid = |amount: &str| {
        json!({"type": "purchase.payment_recorded", "data": {
        "purchase_order": "PO1", "invoice": "INV-1", "amount": usd(amount), "reference": "BACS"}})
    };
    // Half paid on the 26th at 0.78: 625.00 USD out of the bank = 487.50 GBP; the payable is
    // cleared at its booked 500.00; the 12.50 GBP not spent is a realised gain (credit).
    c.when_at("2011-01-26T09:00:00Z", paid("625.00"));
    assert_eq!(balance(&c, "fn.UK01.bank").as_deref(), Some("-487.50"));
    assert_eq!(
        balance(&c, "fn.UK01.accounts_payable").as_deref(),
        Some("-500.00")
    );
    assert_eq!(
        balance(&c, "fn.UK01.fx_realised").as_deref(),
        Some("-12.50")
    );
    // The rest on 2 February at 0.8123: 625.00 USD = 507.6875, 507.69 GBP, against the
    // 500.00 still booked: a 7.69 loss (debit). The payable is cleared to the penny.
    c.when_at("2011-02-02T09:00:00Z", paid("625.00"));
    assert_eq!(balance(&c, "fn.UK01.bank").as_deref(), Some("-995.19"));
    assert_eq!(
        balance(&c, "fn.UK01.accounts_payable").as_deref(),
        Some("0.00")
    );
    assert_eq!(balance(&c, "fn.UK01.fx_realised").as_deref(), Some("-4.81"));
    assert_eq!(
        balance(&c, "fn.UK01.fx_rounding"),
        None,
        "nothing left to round"
    );
    // In USD nothing is gained or lost: 1,250.00 owed, 1,250.00 paid.
    assert_eq!(
        balance(&c, "acct.UK01.USD.accounts_payable").as_deref(),
        Some("0.00")
    );
    assert_eq!(
        balance(&c, "acct.UK01.USD.bank").as_deref(),
        Some("-1250.00")
    );
    let check = c.finance.value("check").unwrap();
    assert_eq!(check["functional"][0]["balanced"], true, "{check}");
    assert_eq!(check["balanced"], true, "{check}");
}

#[test]
fn an_intercompany_transfer_is_a_sale_and_a_purchase_at_cost_eliminated_in_the_group() {
    // WH1 is UK01's, EU-DC is EU01's. UK01 receives 10 lamps at 2.00 GBP and ships 4 to EU-DC;
    // 3 arrive.
    let mut c = Case::new("Fifo");
    let location = |id: &str| {
        json!({"type": "location.defined", "data": {"location": id, "name": "", "kind": "Warehouse",
            "region": "", "capacity": null, "routing_priority": 1}})
    };
    c.when_as("UK01", "2011-01-10T09:00:00Z", location("WH1"));
    c.when_as("EU01", "2011-01-10T09:00:00Z", location("EU-DC"));
    c.when(receipt(10, "2.00", "PO1"));
    c.when(
        json!({"type": "stock.transfer_shipped", "data": {"sku": "LAMP", "transfer": "T1",
        "from": "WH1", "to": "EU-DC", "lot": null, "qty": 4}}),
    );
    let balance = |c: &Case, key: &str| {
        c.finance
            .value(key)
            .map(|row| row["balance"].as_str().unwrap().to_owned())
    };
    // The seller: 4 lamps out of stock at 8.00, owed by EU01 (no goods in transit of its own).
    assert_eq!(
        balance(&c, "acct.UK01.GBP.intercompany_receivable").as_deref(),
        Some("8.00")
    );
    assert_eq!(
        balance(&c, "acct.UK01.GBP.inventory").as_deref(),
        Some("12.00")
    );
    assert_eq!(balance(&c, "acct.UK01.GBP.inventory_in_transit"), None);
    let group = |c: &Case| {
        let rows = c.finance.consolidated();
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows.into_iter().next().unwrap()
    };
    let g = group(&c);
    assert_eq!(
        (g.eliminated.as_str(), g.intercompany_unmatched.as_str()),
        ("0.00", "8.00")
    );
    assert!(g.balanced, "{g:?}");
    c.when_as(
        "EU01",
        "2011-01-12T09:00:00Z",
        json!({"type": "stock.transfer_received", "data": {"sku": "LAMP", "transfer": "T1",
            "to": "EU-DC", "lot": null, "qty": 3, "variance": -1}}),
    );
    // The buyer: 3 lamps in at 6.00, the lost one (2.00) its loss, 8.00 owed to UK01.
    assert_eq!(
        balance(&c, "acct.EU01.GBP.inventory").as_deref(),
        Some("6.00")
    );
    assert_eq!(
        balance(&c, "acct.EU01.GBP.inventory_adjustment").as_deref(),
        Some("2.00")
    );
    assert_eq!(
        balance(&c, "acct.EU01.GBP.intercompany_payable").as_deref(),
        Some("-8.00")
    );
    let v = c.books.valuation("EU01", "LAMP", "EU-DC").unwrap();
    assert_eq!((v.qty(), v.value()), (3, Decimal::new(600, 2)));
    // The group: receivable and payable eliminated; its stock is 18.00 in two places.
    let g = group(&c);
    assert_eq!(
        (g.eliminated.as_str(), g.intercompany_unmatched.as_str()),
        ("8.00", "0.00")
    );
    let inventory = g
        .accounts
        .iter()
        .find(|a| a.account == "inventory")
        .unwrap();
    assert_eq!(inventory.balance, "18.00");
    assert!(
        g.accounts
            .iter()
            .all(|a| !a.account.starts_with("intercompany"))
    );
    assert!(g.balanced, "{g:?}");
    assert_eq!(c.finance.value("check").unwrap()["balanced"], true);
}

#[test]
fn a_freight_invoice_clears_its_accrual_and_spreads_what_it_charges_beyond() {
    // FIFO. 10 lamps at 2.00 (PO1), 5 sold. Freight accrued at 10.00: 5.00 on the 5 left
    // (now worth 15.00), 5.00 to COGS.
    let mut c = Case::new("Fifo");
    c.when(receipt(10, "2.00", "PO1"));
    c.when(order("O1", 5));
    c.when(shipment("O1", 5));
    c.when(freight("PO1", "10.00"));
    assert_eq!(c.then(), (5, d("15.00"), d("15.00")));
    // The carrier invoices 12.00: the 10.00 accrual is cleared, the 2.00 beyond follows the
    // goods like the accrual did (1.00 on stock, 1.00 to COGS); 12.00 owed.
    c.when(
        json!({"type": "purchase.charge_invoice_recorded", "data": {"purchase_order": "PO1",
        "invoice": "FRT-9", "charge": "Freight", "amount": gbp("12.00"),
        "accrual_cleared": gbp("10.00"),
        "shares": [{"line": 1, "sku": "LAMP", "amount": gbp("2.00")}]}}),
    );
    assert_eq!(c.then(), (5, d("16.00"), d("16.00")));
    let balance = |name: &str| {
        c.finance.value(&format!("acct.UK01.GBP.{name}")).unwrap()["balance"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(balance("landed_cost_accrual"), "0.00");
    assert_eq!(balance("accounts_payable"), "-12.00");
    assert_eq!(c.finance.value("check").unwrap()["balanced"], true);
}

#[test]
fn invoices_in_parts_clear_exactly_what_the_receipts_put_in_grni() {
    // 3 units received at 3.33 (9.99 in GRNI), invoiced one at a time at the order's price:
    // 3.33 + 3.33 + 3.33 clears 9.99 with nothing left over and no variance.
    let mut c = Case::new("Fifo");
    c.when(receipt(3, "3.33", "PO1"));
    for n in 1..=3 {
        c.when(invoice("PO1", &format!("INV-{n}"), 1, "3.33", "3.33"));
    }
    let grni = c.finance.value("acct.UK01.GBP.grni").unwrap();
    assert_eq!(grni["balance"], "0.00");
    assert_eq!(c.then(), (3, d("9.99"), d("0")));
}

#[test]
fn tax_on_a_sale_is_owed_and_a_partial_refund_gives_back_its_share() {
    // Two lamps at 10.00 with 4.00 of tax (20%) to a UK address, and one at 50.00 less a
    // 10.00 discount with 2.00 of tax (5% of 40.00), one order; all shipped. Tax payable
    // 6.00 (4.00 at 20%, 2.00 at 5%), revenue 70.00 less 10.00 of discount.
    let mut c = Case::new("Fifo");
    c.when(receipt(10, "4.00", "PO1"));
    c.when(
        json!({"type": "order.placed", "data": {"order": "O1", "channel": "web",
        "external_ref": "", "lines": [
            {"line": 1, "sku": "LAMP", "qty": 2, "unit_price": gbp("10.00"), "discount": gbp("0"),
             "tax": gbp("4.00"), "fees": gbp("0")},
            {"line": 2, "sku": "LAMP", "qty": 1, "unit_price": gbp("50.00"), "discount": gbp("10.00"),
             "tax": gbp("2.00"), "fees": gbp("0")}],
        "shipping_charged": gbp("0"), "ship_to_region": "UK", "promise_date": null,
        "priority": 1, "policy": "Partial"}}),
    );
    c.when(shipment("O1", 3));
    c.when(
        json!({"type": "order.shipped", "data": {"order": "O1", "package": "P1",
        "carrier": "DPD", "tracking": "T", "freight_cost": gbp("0"),
        "lines": [{"line": 1, "qty": 2}, {"line": 2, "qty": 1}]}}),
    );
    let tax = c.finance.value("acct.UK01.GBP.tax_payable").unwrap();
    assert_eq!(tax["credit"], "6.00");
    // Line 2 nets 40.00 after its discount: 2.00 is 5%.
    let at_20 = c.finance.value("tax.UK01.2011-01.UK.0=2E2.GBP").unwrap();
    assert_eq!(
        (at_20["sales"].as_str(), at_20["tax_charged"].as_str()),
        (Some("20.00"), Some("4.00"))
    );
    let at_5 = c.finance.value("tax.UK01.2011-01.UK.0=2E05.GBP").unwrap();
    assert_eq!(
        (at_5["sales"].as_str(), at_5["tax_charged"].as_str()),
        (Some("40.00"), Some("2.00"))
    );
    // Revenue excludes tax: the margin sees 60.00 and a 10.00 discount.
    let order = c.margin.value("order.O1.GBP").unwrap();
    assert_eq!(
        (order["revenue"].as_str(), order["discounts"].as_str()),
        (Some("70.00"), Some("10.00"))
    );

    // A refund of 13.20 (of the 66.00 charged: 20.00 + 4.00 at 20%, 40.00 + 2.00 at 5%)
    // gives back each code's share: 13.20 x 20/66 = 4.00 of sales and 13.20 x 4/66 = 0.80
    // of tax at 20%; 13.20 x 40/66 = 8.00 and 13.20 x 2/66 = 0.40 at 5%.
    c.when(
        json!({"type": "order.refunded", "data": {"order": "O1", "return_id": "R1",
        "amount": gbp("13.20")}}),
    );
    let at_20 = c.finance.value("tax.UK01.2011-01.UK.0=2E2.GBP").unwrap();
    assert_eq!(at_20["returns"], "4.00");
    assert_eq!(at_20["tax_reversed"], "0.80");
    assert_eq!(at_20["tax_due"], "3.20");
    let at_5 = c.finance.value("tax.UK01.2011-01.UK.0=2E05.GBP").unwrap();
    assert_eq!(
        (at_5["returns"].as_str(), at_5["tax_reversed"].as_str()),
        (Some("8.00"), Some("0.40"))
    );
    let tax = c.finance.value("acct.UK01.GBP.tax_payable").unwrap();
    assert_eq!(tax["balance"], "-4.80");
    // The margin counts the refund's net share only: 12.00, not 13.20.
    assert_eq!(c.margin.value("order.O1.GBP").unwrap()["refunds"], "12.00");
    assert_eq!(c.finance.value("check").unwrap()["balanced"], true);
    let report = c
        .finance
        .answer(&crate::finance::FinanceQuery::TaxReport {
            entity: "UK01".into(),
            period: "2011-01".into(),
        })
        .unwrap();
    let crate::view::Answer::Value(report) = report else {
        panic!()
    };
    assert_eq!(report["rows"].as_array().unwrap().len(), 2, "{report}");
}

/// A sale of `qty` at `price` in `currency` through a channel charging 1.5% fees, shipped
/// whole (the stock was bought in GBP): the margin row of the order, and the finance check.
fn sale_in(currency: &str, price: &str, qty: i64) -> (serde_json::Value, serde_json::Value) {
    let money = |amount: &str| json!({"amount": amount, "currency": currency});
    let mut c = Case::new("Fifo");
    c.when(
        json!({"type": "channel.defined", "data": {"channel": "web", "name": "Web",
        "fee_rate": "0.015", "reservation_policy": "None"}}),
    );
    c.when(receipt(10, "1.00", "PO1"));
    c.when(
        json!({"type": "order.placed", "data": {"order": "O1", "channel": "web",
        "external_ref": "", "lines": [{"line": 1, "sku": "LAMP", "qty": qty,
        "unit_price": money(price), "discount": money("0"), "tax": money("0"),
        "fees": money("0")}], "shipping_charged": money("0"), "ship_to_region": "JP",
        "promise_date": null, "priority": 1, "policy": "Partial"}}),
    );
    c.when(shipment("O1", qty));
    c.when(
        json!({"type": "order.shipped", "data": {"order": "O1", "package": "P1",
        "carrier": "DPD", "tracking": "T", "freight_cost": money("0"),
        "lines": [{"line": 1, "qty": qty}]}}),
    );
    (
        c.margin.value(&format!("order.O1.{currency}")).unwrap(),
        c.finance.value("check").unwrap(),
    )
}

#[test]
fn amounts_are_rounded_to_the_currency_minor_unit() {
    // JPY has no minor unit: 3 x 333 = 999 yen of revenue, fees 1.5% = 14.985, posted as 15
    // yen (not 14.99), shown without decimals.
    let (jpy, check) = sale_in("JPY", "333", 3);
    assert_eq!(jpy["revenue"], "999");
    assert_eq!(jpy["fees"], "15");
    // The books balance in each currency on its own, never added together: GBP (the stock)
    // and JPY (the sale) are two totals.
    assert_eq!(check["balanced"], true, "{check}");
    let totals: Vec<(&str, &str, &str)> = check["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["currency"].as_str().unwrap(),
                t["debits"].as_str().unwrap(),
                t["credits"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(totals.len(), 2, "{check}");
    assert_eq!(totals[1].0, "JPY");
    assert_eq!(totals[1].1, totals[1].2);
    // Receivables 999 and channel fees 15 against revenue 999 and receivables 15.
    assert_eq!(totals[1].1, "1014", "{check}");
    // BHD has three decimals: 3 x 1.333 = 3.999 dinars, fees 1.5% = 0.059985, posted as
    // 0.060 (not 0.06 of a two-decimal currency rounded further).
    let (bhd, _) = sale_in("BHD", "1.333", 3);
    assert_eq!(bhd["revenue"], "3.999");
    assert_eq!(bhd["fees"], "0.060");
    // GBP keeps two: 3 x 3.33 = 9.99, fees 0.14985 -> 0.15.
    let (gbp, _) = sale_in("GBP", "3.33", 3);
    assert_eq!(gbp["revenue"], "9.99");
    assert_eq!(gbp["fees"], "0.15");
}

fn any_event() -> impl Strategy<Value = serde_json::Value> {
    let qty = 1i64..40;
    let cost = (1u32..3000).prop_map(|c| format!("{}.{:02}", c / 100, c % 100));
    let order_id = (0u8..4).prop_map(|o| format!("O{o}"));
    let po = (0u8..3).prop_map(|p| format!("PO{p}"));
    prop_oneof![
        (qty.clone(), cost.clone(), po.clone()).prop_map(|(q, c, p)| receipt(q, &c, &p)),
        (order_id.clone(), qty.clone()).prop_map(|(o, q)| order(&o, q)),
        (order_id.clone(), qty.clone(), cost.clone()).prop_map(|(o, q, tax)| {
            let mut placed = order(&o, q);
            placed["data"]["lines"][0]["tax"] = gbp(&tax);
            placed
        }),
        (order_id.clone(), qty.clone()).prop_map(|(o, q)| shipment(&o, q)),
        (po.clone(), cost.clone()).prop_map(|(p, c)| freight(&p, &c)),
        (po, qty.clone(), cost.clone(), cost.clone(), 0u32..1000)
            .prop_map(|(p, q, c, pc, n)| invoice(&p, &format!("I{n}"), q, &c, &pc)),
        (cost.clone(), cost.clone()).prop_map(|(a, b)| json!({"type": "purchase.charge_invoice_recorded",
            "data": {"purchase_order": "PO1", "invoice": "F", "charge": "Freight",
                     "amount": gbp(&a), "accrual_cleared": gbp(&b),
                     "shares": [{"line": 1, "sku": "LAMP", "amount": gbp(&a)}]}})),
        (0u32..1000, cost.clone()).prop_map(|(n, c)| json!({"type": "purchase.payment_recorded",
            "data": {"purchase_order": "PO1", "invoice": format!("I{n}"), "amount": gbp(&c),
                     "reference": ""}})),
        (order_id.clone(), qty.clone()).prop_map(|(o, q)| returned(&o, q)),
        (qty.clone(), -20i64..20).prop_map(|(_, delta)| json!({"type": "stock.adjusted",
            "data": {"sku": "LAMP", "location": "WH1", "lot": null, "delta": delta,
                     "reason": "damaged", "note": "", "approved_by": null}})),
        qty.clone()
            .prop_map(|q| json!({"type": "stock.scrapped", "data": {"sku": "LAMP",
            "location": "WH1", "lot": null, "qty": q, "reason": "damaged",
            "from_quality_hold": false}})),
        (order_id.clone(), qty.clone(), cost.clone()).prop_map(|(o, q, c)| json!({
            "type": "order.shipped", "data": {"order": o, "package": "P", "carrier": "",
            "tracking": "", "freight_cost": gbp(&c), "lines": [{"line": 1, "qty": q}]}})),
        (qty.clone(), prop::bool::ANY).prop_map(|(q, restock)| json!({
            "type": "stock.return_dispositioned", "data": {"sku": "LAMP", "return_id": "R1",
            "location": "WH1", "qty": q, "disposition": if restock { "Restock" } else { "Scrap" }}})),
        (order_id, cost).prop_map(|(o, c)| json!({"type": "order.refunded",
            "data": {"order": o, "return_id": "R", "amount": gbp(&c)}})),
        (qty.clone(), 0u8..3).prop_map(|(q, t)| json!({"type": "stock.transfer_shipped",
            "data": {"sku": "LAMP", "transfer": format!("T{t}"), "from": "WH1", "to": "WH2",
                     "lot": null, "qty": q}})),
        (qty, 0u8..3, -3i64..3).prop_map(|(q, t, v)| json!({"type": "stock.transfer_received",
            "data": {"sku": "LAMP", "transfer": format!("T{t}"), "to": "WH2", "lot": null,
                     "qty": q, "variance": v}})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Goal: whatever the order of events (even ones real deciders would refuse, like
    /// shipping more than is on hand), each event's lines balance, the running totals balance,
    /// and the inventory account equals the sum of the valuations.
    #[test]
    fn every_event_posts_balanced_lines(methods in prop::bool::ANY, intercompany in prop::bool::ANY, events in prop::collection::vec(any_event(), 1..60)) {
        let mut c = Case::new(if methods { "Fifo" } else { "MovingAverage" });
        if intercompany {
            // WH2 is another entity's: transfers to it are intercompany.
            c.when_as("EU01", "2011-01-10T09:00:00Z", json!({"type": "location.defined",
                "data": {"location": "WH2", "name": "", "kind": "Warehouse", "region": "",
                         "capacity": null, "routing_priority": 1}}));
        }
        for event in events {
            c.when(event);
        }
        let check = c.finance.check();
        prop_assert!(check.unbalanced.is_empty());
        prop_assert_eq!(check.debits, check.credits);
        let inventory: Decimal = c
            .finance
            .accounts()
            .filter(|a| a.account == "inventory")
            .map(|a| a.debit - a.credit)
            .sum();
        let valued: Decimal = c.books.valuations().map(|(_, v)| v.value()).sum();
        prop_assert_eq!(inventory, valued);
        // The tax report accounts for all of tax payable.
        let payable: Decimal = c
            .finance
            .accounts()
            .filter(|a| a.account == "tax_payable")
            .map(|a| a.credit - a.debit)
            .sum();
        let reported: Decimal = c.finance.taxes().map(|t| t.tax_charged - t.tax_reversed).sum();
        prop_assert_eq!(payable, reported);
        // The group's trial balance balances in every currency.
        for group in c.finance.consolidated() {
            prop_assert!(group.balanced, "{:?}", group);
        }
    }
}

/// Every money field of an event in `currency` instead.
fn in_currency(mut event: serde_json::Value, currency: &str) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value, currency: &str) {
        match v {
            serde_json::Value::Object(map) => {
                if map.contains_key("amount") && map.contains_key("currency") {
                    map.insert("currency".into(), json!(currency));
                }
                map.values_mut().for_each(|v| walk(v, currency));
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, currency)),
            _ => {}
        }
    }
    walk(&mut event, currency);
    event
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Goal: whatever currencies a sequence of events mixes (GBP, USD, JPY), the margin view
    /// never adds two of them: each of its rows is in one currency (adding a line of another
    /// panics), and each currency's day contribution is exactly what the finance view's
    /// profit-and-loss accounts in that currency say (write-offs included).
    #[test]
    fn the_margin_never_adds_currencies(
        events in prop::collection::vec(
            (any_event(), prop::sample::select(vec!["GBP", "USD", "JPY"])), 1..60),
    ) {
        let mut c = Case::new("Fifo");
        for (event, currency) in events {
            c.when(in_currency(event, currency));
        }
        let margin_accounts = [
            "revenue", "discounts", "channel_fees", "freight_income", "freight_expense", "cogs",
            "sales_returns", "return_costs", "inventory_adjustment",
        ];
        for currency in ["GBP", "USD", "JPY"] {
            let from_margin: Decimal = c
                .margin
                .rows_of("day", "2011-01-10")
                .filter(|(key, _)| key.ends_with(&format!(".{currency}")))
                .map(|(_, row)| {
                    assert_eq!(row.currency, currency);
                    // Contribution leaves write-offs out; the accounts hold them.
                    row.contribution() - row.write_offs
                })
                .sum();
            let from_finance: Decimal = -c
                .finance
                .accounts()
                .filter(|a| a.currency == currency && margin_accounts.contains(&a.account.as_str()))
                .map(|a| a.debit - a.credit)
                .sum::<Decimal>();
            prop_assert_eq!(from_margin, from_finance, "{}", currency);
        }
    }
}
