//! Goal: bytes written by any version of this code decode forever to the same values.
//!
//! `ledger/golden/<type>.v<version>.bin` holds one stored envelope per event type and version.
//! Each test decodes the committed bytes and compares them with the sample written out below;
//! for current versions it also checks that encoding the sample still yields the same bytes.
//! A missing fixture fails the test; `ERP_BLESS_GOLDEN=1` writes missing ones (never
//! overwrites an existing one: old bytes are history).

use std::path::PathBuf;

use proptest::prelude::*;
use uuid::Uuid;

use crate::codec::{self, decode_envelope, encode_envelope, encode_parts};
use crate::envelope::{Envelope, EventHash};
use crate::events::*;
use crate::subject::Subject;
use crate::upcast::{
    CommandAcceptedV1, CommandAcceptedV2, CommandRejectedV1, CommandRejectedV2, DailyCapacitySetV1,
    ExceptionRuleSetV1, ExceptionRuleV1, ItemDefinedV1, LegalEntityDefinedV1, OLD_VERSIONS,
    ReturnAuthorisedV1, ReturnDispositionedV1, ReturnReceivedV1,
};
use crate::values::*;

fn sku() -> Sku {
    Sku::new("85123A").unwrap()
}
fn loc(code: &str) -> LocationId {
    LocationId::new(code).unwrap()
}
fn order() -> OrderId {
    OrderId::new("536365").unwrap()
}
fn po() -> PurchaseOrderId {
    PurchaseOrderId::new("PO-2011-0042").unwrap()
}
fn gbp(amount: &str) -> Money {
    Money::parse(amount, "GBP").unwrap()
}
fn qty(n: i64) -> Qty {
    Qty::new(n).unwrap()
}
fn delta(n: i64) -> QtyDelta {
    QtyDelta::new(n).unwrap()
}
fn reason(code: &str) -> ReasonCode {
    ReasonCode::new(code).unwrap()
}
fn date(text: &str) -> Date {
    text.parse().unwrap()
}
fn lot() -> Option<LotId> {
    Some(LotId::new("L-2010-12").unwrap())
}
fn actor(id: &str) -> ActorId {
    ActorId::new(id).unwrap()
}
fn line_qty(line: u32, n: i64) -> Vec<LineQty> {
    vec![LineQty { line, qty: qty(n) }]
}

fn item_v1() -> ItemDefinedV1 {
    ItemDefinedV1 {
        sku: sku(),
        description: "WHITE HANGING HEART T-LIGHT HOLDER".into(),
        base_unit: UnitName::new("each").unwrap(),
        pack_sizes: vec![PackSize {
            unit: UnitName::new("box").unwrap(),
            base_units: qty(32),
        }],
        tracking: Tracking {
            lot: false,
            serial: false,
            expiry: false,
        },
        reorder_point: qty(100),
        safety_stock: qty(24),
        lead_time_days: 14,
        min_order_qty: qty(64),
        suppliers: vec![SupplierId::new("SUP-1").unwrap()],
    }
}

/// The v1 sample: what the v1 fixture was written from.
fn rejected_v1() -> CommandRejectedV1 {
    CommandRejectedV1 {
        command_type: "order.place".into(),
        body_sha256: [9; 32],
        code: "insufficient_available".into(),
        message: "85123A at WH-LONDON: 6 requested, 2 available".into(),
    }
}

/// The v2 sample of `command.rejected`.
fn rejected_v2() -> CommandRejectedV2 {
    CommandRejectedV2 {
        targets: vec!["order:536365".into(), "sku:85123A".into()],
        ..rejected_v1().into()
    }
}

/// The v1 sample of `command.accepted`.
fn accepted_v1() -> CommandAcceptedV1 {
    CommandAcceptedV1 {
        command_type: "order.place".into(),
        body_sha256: [7; 32],
        event_count: 4,
    }
}

/// The v2 sample of `command.accepted`.
fn accepted_v2() -> CommandAcceptedV2 {
    CommandAcceptedV2 {
        on_behalf_of: Some(actor("customer-4711")),
        ..accepted_v1().into()
    }
}

/// The v1 sample of `legal_entity.defined`.
fn legal_entity_v1() -> LegalEntityDefinedV1 {
    LegalEntityDefinedV1 {
        entity: EntityId::new("UK01").unwrap(),
        name: "Gifts UK Ltd".into(),
        currency: Currency::new("GBP").unwrap(),
    }
}

/// The v1 sample of `order.return_authorised`.
fn return_authorised_v1() -> ReturnAuthorisedV1 {
    ReturnAuthorisedV1 {
        order: order(),
        return_id: ReturnId::new("RMA-5").unwrap(),
        lines: line_qty(1, 2),
    }
}

/// The v1 sample of `location.daily_capacity_set`.
fn daily_capacity_v1() -> DailyCapacitySetV1 {
    DailyCapacitySetV1 {
        location: loc("WH1"),
        units: Some(1200),
    }
}

/// The v1 sample of `stock.return_received`.
fn return_received_v1() -> ReturnReceivedV1 {
    ReturnReceivedV1 {
        sku: sku(),
        return_id: ReturnId::new("RMA-5").unwrap(),
        order: order(),
        line: 1,
        location: loc("WH-LONDON"),
        qty: qty(2),
    }
}

/// The v1 sample of `stock.return_dispositioned`.
fn return_dispositioned_v1() -> ReturnDispositionedV1 {
    ReturnDispositionedV1 {
        sku: sku(),
        return_id: ReturnId::new("RMA-5").unwrap(),
        location: loc("WH-LONDON"),
        qty: qty(2),
        disposition: Disposition::Restock,
    }
}

/// The v1 sample of `exception.rule_set`.
fn exception_rule_set_v1() -> ExceptionRuleSetV1 {
    ExceptionRuleSetV1 {
        kind: ExceptionKind::OrderUnshipped,
        rule: Some(ExceptionRuleV1 {
            threshold: 3,
            severity: Severity::High,
        }),
    }
}

fn threshold() -> ThresholdApplied {
    ThresholdApplied {
        command_type: "stock.adjust".into(),
        limit: Measure::Quantity(qty(100)),
        measured: Measure::Quantity(qty(12)),
        set_by: actor("controller-1"),
        set_at: Timestamp::parse("2010-11-30T09:00:00Z").unwrap(),
    }
}

fn item() -> ItemDefined {
    ItemDefined {
        cost_method: CostMethod::MovingAverage,
        allow_negative: true,
        ..item_v1().into()
    }
}

/// One sample per event type. The match is exhaustive: a new event type does not compile
/// until it has a sample, and then its test fails until its fixture is committed.
fn sample(t: EventType) -> Event {
    let s = sku();
    let wh = loc("WH-LONDON");
    match t {
        EventType::ItemDefined => Event::ItemDefined(item()),
        EventType::ItemChanged => Event::ItemChanged(ItemDefined {
            safety_stock: qty(48),
            ..item()
        }),
        EventType::LocationDefined => Event::LocationDefined(LocationDefined {
            location: wh,
            name: "London DC".into(),
            kind: LocationKind::Warehouse,
            region: "UK".into(),
            capacity: Some(qty(1_000_000)),
            routing_priority: 1,
        }),
        EventType::ShippingRateSet => Event::ShippingRateSet(ShippingRateSet {
            location: loc("WH-LONDON"),
            region: "UK".into(),
            cost: gbp("3.95"),
        }),
        EventType::SupplierDefined => Event::SupplierDefined(SupplierDefined {
            supplier: SupplierId::new("SUP-1").unwrap(),
            name: "Hearts & Lights Ltd".into(),
            currency: Currency::new("GBP").unwrap(),
            lead_time_days: 14,
        }),
        EventType::ChannelDefined => Event::ChannelDefined(ChannelDefined {
            channel: ChannelId::new("web").unwrap(),
            name: "Web shop".into(),
            fee_rate: Ratio::parse("0.029").unwrap(),
            reservation_policy: ReservationPolicy::HoldWithTtl { ttl_seconds: 900 },
        }),
        EventType::ChannelShelfLifeSet => Event::ChannelShelfLifeSet(ChannelShelfLifeSet {
            channel: ChannelId::new("amazon").unwrap(),
            min_days: 30,
        }),
        EventType::LegalEntityDefined => Event::LegalEntityDefined(LegalEntityDefined {
            country: "GB".into(),
            ..legal_entity_v1().into()
        }),
        EventType::RateSet => Event::RateSet(RateSet {
            currency: Currency::new("USD").unwrap(),
            functional: Currency::new("GBP").unwrap(),
            rate: Rate::parse("0.7921").unwrap(),
            from: date("2011-01-03"),
            source: "Bank of England spot, 16:00".into(),
        }),
        EventType::InvoiceRecorded => Event::InvoiceRecorded(InvoiceRecorded {
            purchase_order: po(),
            invoice: "INV-77031".into(),
            lines: vec![InvoiceLine {
                line: 1,
                sku: sku(),
                location: loc("WH-LONDON"),
                qty: qty(600),
                unit_cost: gbp("2.20"),
                po_unit_cost: gbp("2.10"),
            }],
        }),
        EventType::ChargeInvoiceRecorded => Event::ChargeInvoiceRecorded(ChargeInvoiceRecorded {
            purchase_order: po(),
            invoice: "FRT-2011-118".into(),
            charge: ChargeKind::Freight,
            amount: gbp("130.00"),
            accrual_cleared: gbp("120.00"),
            shares: vec![ChargeShare {
                line: 1,
                sku: sku(),
                amount: gbp("10.00"),
            }],
        }),
        EventType::PaymentRecorded => Event::PaymentRecorded(PaymentRecorded {
            purchase_order: po(),
            invoice: "INV-77031".into(),
            amount: gbp("1320.00"),
            reference: "BACS 2011-02-04 0042".into(),
        }),
        EventType::ThresholdSet => Event::ThresholdSet(ThresholdSet {
            command_type: "order.refund".into(),
            limit: Some(Measure::Value(gbp("250.00"))),
        }),
        EventType::ApprovalRequested => Event::ApprovalRequested(ApprovalRequested {
            request: "0190c3a2-0000-7000-8000-000000000001".into(),
            command_type: "stock.adjust".into(),
            command: r#"{"type":"stock.adjust"}"#.into(),
            requester: actor("clerk-7"),
            threshold: Some(threshold()),
        }),
        EventType::ApprovalGranted => Event::ApprovalGranted(ApprovalGranted {
            request: "0190c3a2-0000-7000-8000-000000000001".into(),
            command_type: "stock.adjust".into(),
            requester: actor("clerk-7"),
            approver: actor("controller-1"),
            threshold: Some(threshold()),
        }),
        EventType::ApprovalRejected => Event::ApprovalRejected(ApprovalRejected {
            request: "0190c3a2-0000-7000-8000-000000000001".into(),
            command_type: "stock.adjust".into(),
            requester: actor("clerk-7"),
            approver: actor("controller-1"),
            reason: "count again".into(),
        }),
        EventType::PeriodClosed => Event::PeriodClosed(PeriodClosed {
            period: "2010-12".parse().unwrap(),
            events: 1234,
            totals: vec![PeriodTotal {
                debits: gbp("1000.50"),
                credits: gbp("1000.50"),
            }],
            trial_balance_sha256: [9; 32],
        }),
        EventType::PeriodReopened => Event::PeriodReopened(PeriodReopened {
            period: "2010-12".parse().unwrap(),
            reason: "late supplier invoice".into(),
            requester: actor("clerk-7"),
            approver: actor("controller-1"),
        }),
        EventType::StockReceived => Event::StockReceived(StockReceived {
            sku: s,
            location: wh,
            bin: Some(BinId::new("A-01-3").unwrap()),
            lot: lot(),
            expires_on: Some(date("2012-12-31")),
            serials: vec![SerialNo::new("SN-0001").unwrap()],
            qty: qty(64),
            unit_cost: gbp("1.25"),
            purchase: Some(PurchaseRef {
                purchase_order: po(),
                line: 1,
            }),
        }),
        EventType::StockBinMoved => Event::StockBinMoved(StockBinMoved {
            sku: s,
            location: wh,
            from_bin: None,
            to_bin: BinId::new("A-01-3").unwrap(),
            lot: None,
            qty: qty(64),
        }),
        EventType::StockReserved => Event::StockReserved(StockReserved {
            sku: s,
            hold: HoldId::new("checkout-77").unwrap(),
            location: wh,
            channel: Some(ChannelId::new("web").unwrap()),
            qty: qty(6),
            expires_at: Timestamp::parse("2010-12-01T08:41:00Z").unwrap(),
        }),
        EventType::ReservationReleased => Event::ReservationReleased(ReservationReleased {
            sku: s,
            hold: HoldId::new("checkout-77").unwrap(),
            location: wh,
            qty: qty(6),
        }),
        EventType::ReservationExpired => Event::ReservationExpired(ReservationExpired {
            sku: s,
            hold: HoldId::new("checkout-78").unwrap(),
            location: wh,
            qty: qty(2),
        }),
        EventType::StockAllocated => Event::StockAllocated(StockAllocated {
            sku: s,
            order: order(),
            line: 1,
            location: wh,
            qty: qty(6),
        }),
        EventType::AllocationReleased => Event::AllocationReleased(AllocationReleased {
            sku: s,
            order: order(),
            line: 1,
            location: wh,
            qty: qty(6),
        }),
        EventType::StockPicked => Event::StockPicked(StockPicked {
            sku: s,
            order: order(),
            line: 1,
            location: wh,
            bin: Some(BinId::new("A-01-3").unwrap()),
            lot: lot(),
            qty: qty(6),
        }),
        EventType::StockShipped => Event::StockShipped(StockShipped {
            sku: s,
            order: order(),
            line: 1,
            location: wh,
            qty: qty(6),
        }),
        EventType::TransferShipped => Event::TransferShipped(TransferShipped {
            sku: s,
            transfer: TransferId::new("TR-9").unwrap(),
            from: wh,
            to: loc("STORE-LEEDS"),
            lot: None,
            qty: qty(10),
        }),
        EventType::TransferReceived => Event::TransferReceived(TransferReceived {
            sku: s,
            transfer: TransferId::new("TR-9").unwrap(),
            to: loc("STORE-LEEDS"),
            lot: None,
            qty: qty(9),
            variance: delta(-1),
        }),
        EventType::StockAdjusted => Event::StockAdjusted(StockAdjusted {
            sku: s,
            location: wh,
            lot: None,
            delta: delta(-3),
            reason: reason("damaged"),
            note: "wet damaged".into(),
            approved_by: Some(actor("manager-1")),
        }),
        EventType::StockCounted => Event::StockCounted(StockCounted {
            sku: s,
            location: wh,
            bin: Some(BinId::new("A-01-3").unwrap()),
            lot: None,
            counted: qty(58),
            expected: qty(61),
            variance: delta(-3),
            approved_by: None,
        }),
        EventType::QualityHeld => Event::QualityHeld(QualityHeld {
            sku: s,
            location: wh,
            lot: lot(),
            qty: qty(4),
            reason: reason("inspection"),
        }),
        EventType::QualityReleased => Event::QualityReleased(QualityReleased {
            sku: s,
            location: wh,
            lot: lot(),
            qty: qty(3),
        }),
        EventType::StockScrapped => Event::StockScrapped(StockScrapped {
            sku: s,
            location: wh,
            lot: lot(),
            qty: qty(1),
            reason: reason("broken"),
            from_quality_hold: true,
        }),
        EventType::ReturnReceived => Event::ReturnReceived(ReturnReceived {
            lot: Some(LotId::new("L-2011-03").unwrap()),
            ..return_received_v1().into()
        }),
        EventType::ReturnDispositioned => Event::ReturnDispositioned(ReturnDispositioned {
            lot: Some(LotId::new("L-2011-03").unwrap()),
            ..return_dispositioned_v1().into()
        }),
        EventType::ChannelAllocationSet => Event::ChannelAllocationSet(ChannelAllocationSet {
            sku: s,
            channel: ChannelId::new("amazon").unwrap(),
            rule: ChannelAllocationRule::Share {
                ratio: Ratio::parse("0.4").unwrap(),
            },
        }),
        EventType::OrderPlaced => Event::OrderPlaced(OrderPlaced {
            order: order(),
            channel: ChannelId::new("web").unwrap(),
            external_ref: "cust-17850".into(),
            lines: vec![OrderLine {
                line: 1,
                sku: s,
                qty: qty(6),
                unit_price: gbp("2.55"),
                discount: gbp("0.00"),
                tax: gbp("3.06"),
                fees: gbp("0.44"),
            }],
            shipping_charged: gbp("4.95"),
            ship_to_region: "UK".into(),
            promise_date: Some(date("2010-12-03")),
            priority: 5,
            policy: FulfilmentPolicy::Partial,
        }),
        EventType::OrderHeld => Event::OrderHeld(OrderHeld {
            order: order(),
            reason: reason("payment_review"),
        }),
        EventType::OrderReleased => Event::OrderReleased(OrderReleased { order: order() }),
        EventType::LineRouted => Event::LineRouted(LineRouted {
            order: order(),
            line: 1,
            location: wh,
            reason: "available; region UK matches; priority 1".into(),
        }),
        EventType::LineAllocated => Event::LineAllocated(LineAllocated {
            order: order(),
            line: 1,
            location: wh,
            qty: qty(6),
        }),
        EventType::LineBackordered => Event::LineBackordered(LineBackordered {
            order: order(),
            line: 2,
            qty: qty(12),
        }),
        EventType::OrderReleasedToPick => Event::OrderReleasedToPick(OrderReleasedToPick {
            order: order(),
            wave: WaveId::new("W-2010-12-01-1").unwrap(),
        }),
        EventType::LinePicked => Event::LinePicked(LinePicked {
            order: order(),
            line: 1,
            location: wh,
            qty: qty(6),
        }),
        EventType::OrderPacked => Event::OrderPacked(OrderPacked {
            order: order(),
            package: PackageId::new("PKG-1").unwrap(),
            lines: line_qty(1, 6),
        }),
        EventType::OrderShipped => Event::OrderShipped(OrderShipped {
            order: order(),
            package: PackageId::new("PKG-1").unwrap(),
            carrier: "Royal Mail".into(),
            tracking: "RM123456789GB".into(),
            freight_cost: gbp("3.10"),
            lines: line_qty(1, 6),
        }),
        EventType::LinesCancelled => Event::LinesCancelled(LinesCancelled {
            order: order(),
            lines: line_qty(2, 12),
            reason: reason("customer_request"),
        }),
        EventType::LinesAdded => Event::LinesAdded(LinesAdded {
            order: order(),
            lines: vec![AddedLine {
                line: OrderLine {
                    line: 3,
                    sku: Sku::new("85123B").unwrap(),
                    qty: qty(6),
                    unit_price: gbp("2.75"),
                    discount: gbp("0.00"),
                    tax: gbp("3.30"),
                    fees: gbp("0.00"),
                },
                replaces: Some(1),
                consent: Some("customer agreed by phone, call 7731".into()),
            }],
            reason: reason("customer_request"),
        }),
        EventType::ReturnAuthorised => Event::ReturnAuthorised(ReturnAuthorised {
            reason: Some(ReturnReason::SizeTooSmall),
            note: "runs a size small".into(),
            ..return_authorised_v1().into()
        }),
        EventType::OrderRefunded => Event::OrderRefunded(OrderRefunded {
            order: order(),
            return_id: ReturnId::new("RMA-5").unwrap(),
            amount: gbp("5.10"),
        }),
        EventType::LineUnallocated => Event::LineUnallocated(LineUnallocated {
            order: order(),
            line: 1,
            location: wh.clone(),
            qty: qty(2),
            reason: "a count at UK-DC found 3".into(),
        }),
        EventType::OrderDelivered => Event::OrderDelivered(OrderDelivered {
            order: order(),
            package: PackageId::new("PKG-1").unwrap(),
            proof: "POD 7731 signed J. SMITH".into(),
        }),
        EventType::ExceptionRuleSet => Event::ExceptionRuleSet(ExceptionRuleSet {
            kind: ExceptionKind::OrderUnshipped,
            rule: Some(ExceptionRule {
                threshold: 3,
                severity: Severity::High,
                blocks: true,
            }),
        }),
        EventType::DailyCapacitySet => Event::DailyCapacitySet(DailyCapacitySet {
            orders: Some(400),
            ..daily_capacity_v1().into()
        }),
        EventType::ClockTicked => Event::ClockTicked(ClockTicked {
            previous: Timestamp::parse("2011-03-04T09:12:30Z").unwrap(),
        }),
        EventType::ExceptionAssigned => Event::ExceptionAssigned(ExceptionAssigned {
            exception: ExceptionRef {
                kind: ExceptionKind::CountVariance,
                on: ExceptionSubject::Stock {
                    sku: s,
                    location: wh,
                },
            },
            owner: ActorId::new("clerk-7").unwrap(),
        }),
        EventType::ExceptionResolved => Event::ExceptionResolved(ExceptionResolved {
            exception: ExceptionRef {
                kind: ExceptionKind::ShipmentInTransit,
                on: ExceptionSubject::Shipment {
                    order: order(),
                    package: PackageId::new("PKG-1").unwrap(),
                },
            },
            resolution: Resolution::CustomerContacted,
            note: "carrier found it at the depot".into(),
        }),
        EventType::ExceptionSnoozed => Event::ExceptionSnoozed(ExceptionSnoozed {
            exception: ExceptionRef {
                kind: ExceptionKind::PurchaseOrderOverdue,
                on: ExceptionSubject::PurchaseOrder {
                    purchase_order: po(),
                },
            },
            until: Timestamp::parse("2011-01-10T09:00:00Z").unwrap(),
            note: "supplier promised Monday".into(),
        }),
        EventType::RecommendationRaised => Event::RecommendationRaised(RecommendationRaised {
            sku: s,
            location: wh,
            supplier: Some(SupplierId::new("SUP-1").unwrap()),
            qty: qty(128),
            order_by: date("2010-12-10"),
            reason: "projected 96 below reorder point 100 in 14 days".into(),
        }),
        EventType::PurchaseOrderCreated => Event::PurchaseOrderCreated(PurchaseOrderCreated {
            purchase_order: po(),
            supplier: SupplierId::new("SUP-1").unwrap(),
            currency: Currency::new("GBP").unwrap(),
            lines: vec![PurchaseLine {
                line: 1,
                sku: s,
                location: wh,
                qty: qty(128),
                unit_cost: gbp("1.25"),
            }],
            expected_on: date("2010-12-15"),
        }),
        EventType::PurchaseOrderApproved => Event::PurchaseOrderApproved(PurchaseOrderApproved {
            purchase_order: po(),
            approver: actor("manager-1"),
        }),
        EventType::PurchaseOrderSent => Event::PurchaseOrderSent(PurchaseOrderSent {
            purchase_order: po(),
        }),
        EventType::PurchaseOrderRejected => Event::PurchaseOrderRejected(PurchaseOrderRejected {
            purchase_order: po(),
            approver: actor("manager-1"),
            reason: "over budget".into(),
        }),
        EventType::ReceiptMatched => Event::ReceiptMatched(ReceiptMatched {
            purchase_order: po(),
            line: 1,
            qty_received: qty(130),
            qty_ordered: qty(128),
            variance: delta(2),
        }),
        EventType::LandedCostAllocated => Event::LandedCostAllocated(LandedCostAllocated {
            purchase_order: po(),
            charge: ChargeKind::Freight,
            amount: gbp("40.00"),
            basis: AllocationBasis::Value,
            shares: vec![ChargeShare {
                line: 1,
                sku: s,
                amount: gbp("40.00"),
            }],
        }),
        EventType::PurchaseOrderClosed => Event::PurchaseOrderClosed(PurchaseOrderClosed {
            purchase_order: po(),
            reason: "fully received".into(),
        }),
        EventType::CommandAccepted => Event::CommandAccepted(CommandAccepted {
            threshold: Some(threshold()),
            ..accepted_v2().into()
        }),
        EventType::CommandRejected => Event::CommandRejected(CommandRejected {
            on_behalf_of: Some(actor("customer-4711")),
            ..rejected_v2().into()
        }),
    }
}

fn envelope(event: Event) -> Envelope {
    Envelope {
        event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
        subject: Subject::Stock(sku()),
        command_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002),
        correlation_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0003),
        actor: Actor {
            id: actor("clerk-7"),
            role: Role::new("clerk").unwrap(),
        },
        legal_entity: EntityId::new("UK01").unwrap(),
        effective_at: Timestamp::parse("2010-12-01T08:26:00Z").unwrap(),
        prev_hash: EventHash([0xAB; 32]),
        event,
    }
}

fn fixture_path(t: EventType, version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(format!("{}.v{version}.bin", t.name()))
}

/// Reads a fixture, writing it first when blessing and it is missing.
fn fixture(t: EventType, version: u16, fresh: &[u8]) -> Vec<u8> {
    let path = fixture_path(t, version);
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(_) if std::env::var_os("ERP_BLESS_GOLDEN").is_some() => {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, fresh).unwrap();
            fresh.to_vec()
        }
        Err(e) => panic!(
            "golden fixture {} is missing ({e}); run `ERP_BLESS_GOLDEN=1 cargo test -p ledger golden` and commit it",
            path.display()
        ),
    }
}

#[test]
fn golden_every_current_version_decodes_and_encodes_unchanged() {
    for &t in EventType::ALL {
        let expected = envelope(sample(t));
        let fresh = encode_envelope(&expected).unwrap();
        let stored = fixture(t, t.current_version(), &fresh);
        let decoded = decode_envelope(&stored).unwrap_or_else(|e| panic!("{}: {e}", t.name()));
        assert_eq!(
            decoded.envelope,
            expected,
            "{} decodes to another value",
            t.name()
        );
        assert_eq!(decoded.stored_version, t.current_version());
        assert_eq!(
            stored,
            fresh,
            "{}: encoding changed; add a new version instead",
            t.name()
        );
    }
}

#[test]
fn golden_old_versions_decode_and_upcast() {
    for &(t, version) in OLD_VERSIONS {
        let (payload, expected) = match (t, version) {
            (EventType::ItemDefined, 1) => (
                codec::to_bytes(&item_v1()).unwrap(),
                Event::ItemDefined(item_v1().into()),
            ),
            (EventType::ItemChanged, 1) => (
                codec::to_bytes(&item_v1()).unwrap(),
                Event::ItemChanged(item_v1().into()),
            ),
            (EventType::CommandRejected, 1) => (
                codec::to_bytes(&rejected_v1()).unwrap(),
                Event::CommandRejected(rejected_v1().into()),
            ),
            (EventType::CommandRejected, 2) => (
                codec::to_bytes(&rejected_v2()).unwrap(),
                Event::CommandRejected(rejected_v2().into()),
            ),
            (EventType::CommandAccepted, 1) => (
                codec::to_bytes(&accepted_v1()).unwrap(),
                Event::CommandAccepted(accepted_v1().into()),
            ),
            (EventType::CommandAccepted, 2) => (
                codec::to_bytes(&accepted_v2()).unwrap(),
                Event::CommandAccepted(accepted_v2().into()),
            ),
            (EventType::LegalEntityDefined, 1) => (
                codec::to_bytes(&legal_entity_v1()).unwrap(),
                Event::LegalEntityDefined(legal_entity_v1().into()),
            ),
            (EventType::ReturnAuthorised, 1) => (
                codec::to_bytes(&return_authorised_v1()).unwrap(),
                Event::ReturnAuthorised(return_authorised_v1().into()),
            ),
            (EventType::ExceptionRuleSet, 1) => (
                codec::to_bytes(&exception_rule_set_v1()).unwrap(),
                Event::ExceptionRuleSet(exception_rule_set_v1().into()),
            ),
            (EventType::ReturnReceived, 1) => (
                codec::to_bytes(&return_received_v1()).unwrap(),
                Event::ReturnReceived(return_received_v1().into()),
            ),
            (EventType::ReturnDispositioned, 1) => (
                codec::to_bytes(&return_dispositioned_v1()).unwrap(),
                Event::ReturnDispositioned(return_dispositioned_v1().into()),
            ),
            (EventType::DailyCapacitySet, 1) => (
                codec::to_bytes(&daily_capacity_v1()).unwrap(),
                Event::DailyCapacitySet(daily_capacity_v1().into()),
            ),
            other => panic!("no sample for old version {other:?}"),
        };
        let expected = envelope(expected);
        let fresh = encode_parts(&expected, version, &payload).unwrap();
        let stored = fixture(t, version, &fresh);
        let decoded = decode_envelope(&stored).unwrap();
        assert_eq!(decoded.stored_version, version);
        assert_eq!(decoded.envelope, expected);
    }
}

#[test]
fn golden_v1_item_upcasts_with_the_documented_defaults() {
    let upcast: ItemDefined = item_v1().into();
    assert_eq!(upcast.cost_method, CostMethod::Fifo);
    assert!(!upcast.allow_negative);
}

#[test]
fn golden_refuses_versions_from_the_future_and_unknown_types() {
    let e = envelope(sample(EventType::OrderHeld));
    let payload = e.event.encode_payload().unwrap();
    let future = encode_parts(&e, 99, &payload).unwrap();
    let err = decode_envelope(&future).unwrap_err().to_string();
    assert!(err.contains("version 99 is newer than this build"), "{err}");
    assert!(matches!(
        decode_envelope(&[7, 1, 2]),
        Err(codec::CodecError::UnknownFormat(7))
    ));
    assert!(matches!(
        decode_envelope(&[]),
        Err(codec::CodecError::Empty)
    ));
}

#[test]
fn golden_every_truncation_of_every_fixture_fails_cleanly() {
    for &t in EventType::ALL {
        let bytes = encode_envelope(&envelope(sample(t))).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode_envelope(&bytes[..cut]).is_err(),
                "{} cut at {cut} decoded",
                t.name()
            );
        }
    }
}

fn any_envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<Event>(),
        any::<u128>(),
        any::<u128>(),
        any::<Actor>(),
        any::<EntityId>(),
        any::<Timestamp>(),
        any::<EventHash>(),
        any::<Sku>(),
    )
        .prop_map(
            |(event, id, cmd, actor, legal_entity, effective_at, prev_hash, sku)| Envelope {
                event_id: Uuid::from_u128(id),
                subject: Subject::Stock(sku),
                command_id: Uuid::from_u128(cmd),
                correlation_id: Uuid::from_u128(cmd ^ 1),
                actor,
                legal_entity,
                effective_at,
                prev_hash,
                event,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Every event type, any valid content: encode then decode gives the same envelope.
    #[test]
    fn round_trip_any_envelope(envelope in any_envelope()) {
        let bytes = encode_envelope(&envelope).unwrap();
        let decoded = decode_envelope(&bytes).unwrap();
        prop_assert_eq!(decoded.envelope, envelope);
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_envelope(&bytes);
        let mut framed = vec![codec::ENVELOPE_FORMAT];
        framed.extend(&bytes);
        let _ = decode_envelope(&framed);
    }
}

#[test]
fn round_trip_covers_every_event_type() {
    // The `Event` strategy picks variants uniformly; check it reaches all of them, so the
    // property above covers the whole catalogue.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5000 {
        let event = any::<Event>().new_tree(&mut runner).unwrap().current();
        seen.insert(event.event_type());
    }
    assert_eq!(seen.len(), EventType::ALL.len());
}
