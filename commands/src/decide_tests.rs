//! Given/when/then tests of the deciders: given the events of earlier commands, when this
//! command, then these events or this rejection. One helper drives the API; cases are data.

use ledger::Subject;
use ledger::events::*;
use ledger::values::*;
use ledger::{Envelope, EventHash};
use serde_json::json;

use crate::command::{Command, decode};
use crate::decide::{Decision, Rejection, code, decide};
use crate::state::State;

/// A world with two warehouses (WH1 in UK, priority 1; WH2 in DE, priority 2), channels
/// `web` and `amazon`, and items A (plain), LOT (lot-tracked), SER (serials), EXP (expiry),
/// NEG (may go negative), SAFE (safety stock 5).
pub(crate) struct World {
    pub state: State,
    seq: u64,
}

pub(crate) fn command(kind: &str, data: serde_json::Value, at: &str) -> Command {
    let json = json!({
        "command_id": uuid::Uuid::now_v7(),
        "actor": {"id": "tester", "role": "clerk"},
        "legal_entity": "UK01",
        "effective_at": at,
        "type": kind,
        "data": data,
    });
    decode(json.to_string().as_bytes()).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

impl World {
    pub(crate) fn new() -> World {
        let mut w = World {
            state: State::default(),
            seq: 0,
        };
        w.given(
            "location.define",
            json!({"location": "WH1", "kind": "Warehouse", "region": "UK", "routing_priority": 1}),
        );
        w.given(
            "location.define",
            json!({"location": "WH2", "kind": "Warehouse", "region": "DE", "routing_priority": 2}),
        );
        w.given("channel.define", json!({"channel": "web"}));
        w.given("channel.define", json!({"channel": "amazon"}));
        w.given("item.define", json!({"sku": "A"}));
        w.given(
            "item.define",
            json!({"sku": "LOT", "tracking": {"lot": true, "serial": false, "expiry": false}}),
        );
        w.given(
            "item.define",
            json!({"sku": "SER", "tracking": {"lot": false, "serial": true, "expiry": false}}),
        );
        w.given(
            "item.define",
            json!({"sku": "EXP", "tracking": {"lot": false, "serial": false, "expiry": true}}),
        );
        w.given("item.define", json!({"sku": "NEG", "allow_negative": true}));
        w.given("item.define", json!({"sku": "SAFE", "safety_stock": 5}));
        w
    }

    pub(crate) fn when_at(
        &self,
        kind: &str,
        data: serde_json::Value,
        at: &str,
    ) -> Result<Decision, Rejection> {
        decide(&self.state, &command(kind, data, at))
    }

    pub(crate) fn when(&self, kind: &str, data: serde_json::Value) -> Result<Decision, Rejection> {
        self.when_at(kind, data, "2011-01-01T10:00:00Z")
    }

    pub(crate) fn apply(&mut self, decision: &Decision) {
        self.apply_at(decision, "2011-01-01T10:00:00Z");
    }

    /// As `apply`, effective at `at`.
    pub(crate) fn apply_at(&mut self, decision: &Decision, at: &str) {
        for (subject, event) in decision {
            self.seq += 1;
            let envelope = Envelope {
                event_id: uuid::Uuid::now_v7(),
                subject: subject.clone(),
                command_id: uuid::Uuid::nil(),
                correlation_id: uuid::Uuid::nil(),
                actor: Actor {
                    id: ActorId::new("t").unwrap(),
                    role: Role::new("clerk").unwrap(),
                },
                legal_entity: EntityId::new("UK01").unwrap(),
                effective_at: Timestamp::parse(at).unwrap(),
                prev_hash: EventHash::GENESIS,
                event: event.clone(),
            };
            self.state.apply(
                &envelope,
                Some(ledger::Head {
                    seq: self.seq,
                    hash: EventHash::GENESIS,
                }),
            );
        }
    }

    /// Decides and applies at `at`; the command must be accepted.
    pub(crate) fn given_at(&mut self, kind: &str, data: serde_json::Value, at: &str) -> Decision {
        let decision = self
            .when_at(kind, data, at)
            .unwrap_or_else(|r| panic!("given {kind}: {r}"));
        self.apply_at(&decision, at);
        decision
    }

    /// Decides and applies; the command must be accepted.
    pub(crate) fn given(&mut self, kind: &str, data: serde_json::Value) -> Decision {
        let decision = self
            .when(kind, data)
            .unwrap_or_else(|r| panic!("given {kind}: {r}"));
        self.apply(&decision);
        decision
    }

    pub(crate) fn balance(&self, sku: &str, location: &str) -> crate::state::Balance {
        let sku = Sku::new(sku).unwrap();
        self.state
            .stock
            .get(&sku)
            .map(|s| s.balance(&LocationId::new(location).unwrap()))
            .unwrap_or_default()
    }

    fn receive(&mut self, sku: &str, location: &str, qty: i64) {
        self.given("stock.receive", json!({"sku": sku, "location": location, "qty": qty, "unit_cost": {"amount": "1.00", "currency": "GBP"}}));
    }

    fn order(&mut self, order: &str, lines: serde_json::Value) -> Decision {
        self.given(
            "order.place",
            json!({"order": order, "channel": "web", "ship_to_region": "UK", "lines": lines}),
        )
    }
}

fn line(n: u32, sku: &str, qty: i64) -> serde_json::Value {
    json!({"line": n, "sku": sku, "qty": qty, "unit_price": {"amount": "2.55", "currency": "GBP"}})
}

/// The reason of the decision's first routing.
fn routed_reason(decision: &Decision) -> String {
    decision
        .iter()
        .find_map(|(_, e)| match e {
            Event::LineRouted(r) => Some(r.reason.clone()),
            _ => None,
        })
        .expect("a line was routed")
}

pub(crate) fn types(decision: &Decision) -> Vec<&'static str> {
    decision
        .iter()
        .map(|(_, e)| e.event_type().name())
        .collect()
}

fn rejected(result: Result<Decision, Rejection>) -> &'static str {
    match result {
        Ok(d) => panic!("expected a rejection, got {:?}", types(&d)),
        Err(r) => {
            assert!(!r.message.is_empty());
            r.code
        }
    }
}

fn gbp(amount: &str) -> serde_json::Value {
    json!({"amount": amount, "currency": "GBP"})
}

#[test]
fn master_data_commands_define_and_redefine() {
    let mut w = World::new();
    let d = w.given(
        "item.define",
        json!({"sku": "85123A", "description": "HEART T-LIGHT"}),
    );
    assert_eq!(types(&d), ["item.defined"]);
    assert_eq!(d[0].0, Subject::Item(Sku::new("85123A").unwrap()));
    let d = w.given("item.define", json!({"sku": "85123A", "safety_stock": 2}));
    assert_eq!(types(&d), ["item.changed"]);
    assert_eq!(
        types(&w.given(
            "supplier.define",
            json!({"supplier": "S1", "currency": "GBP"})
        )),
        ["supplier.defined"]
    );
    assert_eq!(
        types(&w.given(
            "channel.define",
            json!({"channel": "shop", "fee_rate": "0.15"})
        )),
        ["channel.defined"]
    );
    assert_eq!(
        types(&w.given(
            "location.define",
            json!({"location": "S1", "kind": "Store", "region": "UK"})
        )),
        ["location.defined"]
    );
}

#[test]
fn receive_adds_on_hand_and_checks_tracking() {
    let mut w = World::new();
    w.receive("A", "WH1", 10);
    assert_eq!(w.balance("A", "WH1").on_hand, 10);
    let cost = gbp("1.00");
    for (data, expected) in [
        (
            json!({"sku": "NOPE", "location": "WH1", "qty": 1, "unit_cost": cost}),
            code::UNKNOWN_SKU,
        ),
        (
            json!({"sku": "A", "location": "NOWHERE", "qty": 1, "unit_cost": cost}),
            code::UNKNOWN_LOCATION,
        ),
        (
            json!({"sku": "A", "location": "WH1", "qty": 0, "unit_cost": cost}),
            code::INVALID_QUANTITY,
        ),
        (
            json!({"sku": "A", "location": "WH1", "qty": 1, "unit_cost": gbp("-1")}),
            code::NEGATIVE_AMOUNT,
        ),
        (
            json!({"sku": "LOT", "location": "WH1", "qty": 1, "unit_cost": cost}),
            code::LOT_REQUIRED,
        ),
        (
            json!({"sku": "EXP", "location": "WH1", "qty": 1, "unit_cost": cost}),
            code::EXPIRY_REQUIRED,
        ),
        (
            json!({"sku": "SER", "location": "WH1", "qty": 2, "unit_cost": cost, "serials": ["S1"]}),
            code::SERIALS_MISMATCH,
        ),
    ] {
        assert_eq!(
            rejected(w.when("stock.receive", data.clone())),
            expected,
            "{data}"
        );
    }
    w.given("stock.receive", json!({"sku": "SER", "location": "WH1", "qty": 2, "unit_cost": cost, "serials": ["S1", "S2"]}));
    w.given(
        "stock.receive",
        json!({"sku": "LOT", "location": "WH1", "qty": 2, "unit_cost": cost, "lot": "L1"}),
    );
}

#[test]
fn bin_moves_transfers_and_variance() {
    let mut w = World::new();
    w.receive("A", "WH1", 10);
    assert_eq!(
        types(&w.given(
            "stock.move_bin",
            json!({"sku": "A", "location": "WH1", "to_bin": "B-1", "qty": 10})
        )),
        ["stock.bin_moved"]
    );
    assert_eq!(
        rejected(w.when(
            "stock.move_bin",
            json!({"sku": "A", "location": "WH1", "to_bin": "B-1", "qty": 11})
        )),
        code::INSUFFICIENT_STOCK
    );
    w.given(
        "stock.transfer_ship",
        json!({"sku": "A", "transfer": "T1", "from": "WH1", "to": "WH2", "qty": 4}),
    );
    assert_eq!(
        (
            w.balance("A", "WH1").on_hand,
            w.balance("A", "WH2").in_transit
        ),
        (6, 4)
    );
    assert_eq!(
        rejected(w.when(
            "stock.transfer_ship",
            json!({"sku": "A", "transfer": "T1", "from": "WH1", "to": "WH2", "qty": 1})
        )),
        code::ALREADY_EXISTS
    );
    assert_eq!(
        rejected(w.when(
            "stock.transfer_ship",
            json!({"sku": "A", "transfer": "T2", "from": "WH1", "to": "WH1", "qty": 1})
        )),
        code::INVALID_TRANSITION
    );
    assert_eq!(
        rejected(w.when(
            "stock.transfer_ship",
            json!({"sku": "A", "transfer": "T2", "from": "WH1", "to": "WH2", "qty": 7})
        )),
        code::INSUFFICIENT_STOCK
    );
    let d = w.given(
        "stock.transfer_receive",
        json!({"sku": "A", "transfer": "T1", "qty": 3}),
    );
    let Event::TransferReceived(e) = &d[0].1 else {
        panic!()
    };
    assert_eq!(e.variance.get(), -1);
    assert_eq!(
        (
            w.balance("A", "WH2").on_hand,
            w.balance("A", "WH2").in_transit
        ),
        (3, 0)
    );
    assert_eq!(
        rejected(w.when(
            "stock.transfer_receive",
            json!({"sku": "A", "transfer": "T1", "qty": 3})
        )),
        code::INVALID_TRANSITION
    );
    assert_eq!(
        rejected(w.when(
            "stock.transfer_receive",
            json!({"sku": "A", "transfer": "T9", "qty": 3})
        )),
        code::UNKNOWN_TRANSFER
    );
}

#[test]
fn adjustments_never_undercut_commitments_and_a_short_count_is_booked() {
    let mut w = World::new();
    w.receive("A", "WH1", 10);
    w.order("O1", json!([line(1, "A", 6)]));
    let adjust =
        |delta: i64| json!({"sku": "A", "location": "WH1", "delta": delta, "reason": "damaged"});
    assert_eq!(
        rejected(w.when("stock.adjust", adjust(-5))),
        code::INSUFFICIENT_STOCK
    );
    assert_eq!(
        rejected(w.when("stock.adjust", adjust(0))),
        code::INVALID_QUANTITY
    );
    w.given("stock.adjust", adjust(-4));
    assert_eq!(w.balance("A", "WH1").on_hand, 6);
    // Negative stock where the item allows it.
    w.given(
        "stock.adjust",
        json!({"sku": "NEG", "location": "WH1", "delta": -3, "reason": "write_off"}),
    );
    assert_eq!(w.balance("NEG", "WH1").on_hand, -3);
    // A count books the variance the decider computes.
    let d = w.given(
        "stock.count",
        json!({"sku": "A", "location": "WH1", "counted": 7}),
    );
    let Event::StockCounted(c) = &d[0].1 else {
        panic!()
    };
    assert_eq!((c.expected.get(), c.variance.get()), (6, 1));
    // A count below what is allocated is booked: the shortage is backordered (no other
    // location has stock).
    let d = w.given(
        "stock.count",
        json!({"sku": "A", "location": "WH1", "counted": 5}),
    );
    assert_eq!(
        types(&d),
        [
            "stock.allocation_released",
            "order.line_unallocated",
            "order.line_backordered",
            "stock.counted"
        ]
    );
    assert_eq!(w.balance("A", "WH1").allocated, 5);
    assert_eq!(
        w.state.orders[&OrderId::new("O1").unwrap()]
            .lines
            .get(&1)
            .unwrap()
            .backordered,
        1
    );
}

#[test]
fn a_count_that_finds_less_moves_the_least_urgent_allocations_elsewhere_or_backorders_them() {
    let mut w = World::new();
    w.receive("A", "WH1", 10);
    w.receive("A", "WH2", 5);
    let place = |order: &str, priority: u32| {
        json!({"order": order, "channel": "web", "ship_to_region": "UK", "priority": priority,
               "lines": [line(1, "A", 4)]})
    };
    w.given("order.place", place("URGENT", 1));
    w.given("order.place", place("LATER", 5));
    assert_eq!(w.balance("A", "WH1").allocated, 8);
    // Three found where eight are allocated and two were free: five units short. The least
    // urgent order gives its four first, then the urgent one one; WH2 has five to give.
    let d = w.given(
        "stock.count",
        json!({"sku": "A", "location": "WH1", "counted": 3}),
    );
    let moved: Vec<(String, String, i64)> = d
        .iter()
        .filter_map(|(_, e)| match e {
            Event::LineUnallocated(u) => {
                Some((u.order.to_string(), u.location.to_string(), -u.qty.get()))
            }
            Event::LineAllocated(a) => {
                Some((a.order.to_string(), a.location.to_string(), a.qty.get()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        moved,
        [
            ("LATER".into(), "WH1".into(), -4),
            ("LATER".into(), "WH2".into(), 4),
            ("URGENT".into(), "WH1".into(), -1),
            ("URGENT".into(), "WH2".into(), 1),
        ]
    );
    let routed = d.iter().find_map(|(_, e)| match e {
        Event::LineRouted(r) => Some(r.reason.clone()),
        _ => None,
    });
    assert!(routed.unwrap().starts_with("a count at WH1 found 3"));
    let (wh1, wh2) = (w.balance("A", "WH1"), w.balance("A", "WH2"));
    assert_eq!((wh1.on_hand, wh1.allocated), (3, 3));
    assert_eq!((wh2.on_hand, wh2.allocated), (5, 5));
    // Nothing left anywhere: the next shortage is backordered.
    let d = w.given(
        "stock.count",
        json!({"sku": "A", "location": "WH1", "counted": 1}),
    );
    assert_eq!(
        types(&d)[types(&d).len() - 2],
        "order.line_backordered",
        "{:?}",
        types(&d)
    );
    // Picked units cannot be counted away: release or ship them first.
    w.given(
        "order.release_to_pick",
        json!({"order": "URGENT", "wave": "W1"}),
    );
    w.given(
        "order.pick",
        json!({"order": "URGENT", "lines": [{"line": 1, "qty": 1}]}),
    );
    let refused = w.when(
        "stock.count",
        json!({"sku": "A", "location": "WH1", "counted": 0}),
    );
    assert_eq!(rejected(refused), code::INSUFFICIENT_STOCK);
}

#[test]
fn quality_hold_release_and_scrap() {
    let mut w = World::new();
    w.receive("A", "WH1", 10);
    w.given(
        "stock.quality_hold",
        json!({"sku": "A", "location": "WH1", "qty": 4, "reason": "inspection"}),
    );
    assert_eq!(w.balance("A", "WH1").free(), 6);
    assert_eq!(
        rejected(w.when(
            "stock.quality_hold",
            json!({"sku": "A", "location": "WH1", "qty": 7, "reason": "x"})
        )),
        code::INSUFFICIENT_AVAILABLE
    );
    assert_eq!(
        rejected(w.when(
            "stock.quality_release",
            json!({"sku": "A", "location": "WH1", "qty": 5})
        )),
        code::INSUFFICIENT_STOCK
    );
    w.given(
        "stock.quality_release",
        json!({"sku": "A", "location": "WH1", "qty": 1}),
    );
    w.given("stock.scrap", json!({"sku": "A", "location": "WH1", "qty": 3, "reason": "broken", "from_quality_hold": true}));
    assert_eq!(
        (
            w.balance("A", "WH1").on_hand,
            w.balance("A", "WH1").quality_hold
        ),
        (7, 0)
    );
    assert_eq!(rejected(w.when("stock.scrap", json!({"sku": "A", "location": "WH1", "qty": 1, "reason": "x", "from_quality_hold": true}))), code::INSUFFICIENT_STOCK);
    w.given(
        "stock.scrap",
        json!({"sku": "A", "location": "WH1", "qty": 7, "reason": "flood"}),
    );
    assert_eq!(w.balance("A", "WH1").on_hand, 0);
}

#[test]
fn holds_reserve_release_and_expire_by_business_time() {
    let mut w = World::new();
    w.receive("A", "WH1", 10);
    let hold = json!({"sku": "A", "hold": "H1", "location": "WH1", "qty": 8, "ttl_seconds": 900});
    w.given("stock.place_hold", hold.clone());
    assert_eq!(w.balance("A", "WH1").reserved, 8);
    assert_eq!(
        rejected(w.when("stock.place_hold", hold)),
        code::ALREADY_EXISTS
    );
    assert_eq!(
        rejected(w.when(
            "stock.place_hold",
            json!({"sku": "A", "hold": "H2", "location": "WH1", "qty": 3, "ttl_seconds": 60})
        )),
        code::INSUFFICIENT_AVAILABLE
    );
    let expire = json!({"sku": "A", "hold": "H1"});
    assert_eq!(
        rejected(w.when_at("stock.expire_hold", expire.clone(), "2011-01-01T10:14:59Z")),
        code::HOLD_NOT_EXPIRED
    );
    let d = w
        .when_at("stock.expire_hold", expire.clone(), "2011-01-01T10:15:00Z")
        .unwrap();
    assert_eq!(types(&d), ["stock.reservation_expired"]);
    w.given("stock.release_hold", expire.clone());
    assert_eq!(w.balance("A", "WH1").reserved, 0);
    assert_eq!(
        rejected(w.when("stock.release_hold", expire)),
        code::UNKNOWN_HOLD
    );
}

#[test]
fn orders_route_by_availability_then_region_then_priority() {
    let mut w = World::new();
    w.receive("A", "WH1", 3);
    w.receive("A", "WH2", 10);
    // WH1 (UK, priority 1) cannot fill 5; WH2 can, so availability wins over region.
    let d = w.order("O1", json!([line(1, "A", 5)]));
    assert_eq!(
        types(&d),
        [
            "order.placed",
            "order.line_routed",
            "stock.allocated",
            "order.line_allocated"
        ]
    );
    let Event::LineRouted(r) = &d[1].1 else {
        panic!()
    };
    assert_eq!(r.location.as_str(), "WH2");
    assert!(r.reason.contains("outside region UK"), "{}", r.reason);
    // Both can fill 2: the UK node wins.
    let d = w.order("O2", json!([line(1, "A", 2)]));
    let Event::LineRouted(r) = &d[1].1 else {
        panic!()
    };
    assert_eq!(r.location.as_str(), "WH1");
    // Nothing can fill 20: the line is split, the node with more first, the rest backordered.
    let d = w.order("O3", json!([line(1, "A", 20)]));
    assert_eq!(
        types(&d),
        [
            "order.placed",
            "order.line_routed",
            "stock.allocated",
            "order.line_allocated",
            "order.line_routed",
            "stock.allocated",
            "order.line_allocated",
            "order.line_backordered"
        ]
    );
    let Event::LineRouted(r) = &d[1].1 else {
        panic!()
    };
    assert_eq!(r.location.as_str(), "WH2");
    assert_eq!(
        w.balance("A", "WH1").allocated + w.balance("A", "WH2").allocated,
        13
    );
}

#[test]
fn ship_complete_orders_allocate_all_or_nothing() {
    let mut w = World::new();
    w.receive("A", "WH1", 5);
    let d = w.given(
        "order.place",
        json!({"order": "O1", "channel": "web", "ship_to_region": "UK", "policy": "ShipComplete", "lines": [line(1, "A", 5), line(2, "NEG", 1)]}),
    );
    assert_eq!(
        types(&d),
        [
            "order.placed",
            "order.line_backordered",
            "order.line_backordered"
        ]
    );
    assert_eq!(w.balance("A", "WH1").allocated, 0);
    assert_eq!(
        rejected(w.when(
            "order.release_to_pick",
            json!({"order": "O1", "wave": "W1"})
        )),
        code::INVALID_TRANSITION
    );
}

#[test]
fn backorders_fill_on_receipt_in_priority_order() {
    let mut w = World::new();
    w.given("order.place", json!({"order": "LOW", "channel": "web", "ship_to_region": "UK", "priority": 9, "lines": [line(1, "A", 4)]}));
    w.given("order.place", json!({"order": "HIGH", "channel": "web", "ship_to_region": "UK", "priority": 1, "lines": [line(1, "A", 4)]}));
    assert_eq!(
        rejected(w.when("order.allocate", json!({"order": "HIGH"}))),
        code::INSUFFICIENT_AVAILABLE
    );
    let d = w.given(
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": 6, "unit_cost": gbp("1")}),
    );
    let allocated: Vec<(String, i64)> = d
        .iter()
        .filter_map(|(_, e)| match e {
            Event::LineAllocated(a) => Some((a.order.to_string(), a.qty.get())),
            _ => None,
        })
        .collect();
    assert_eq!(allocated, [("HIGH".to_owned(), 4), ("LOW".to_owned(), 2)]);
    w.receive("A", "WH1", 5);
    assert_eq!(w.balance("A", "WH1").allocated, 8);
    assert_eq!(
        rejected(w.when("order.allocate", json!({"order": "LOW"}))),
        code::INVALID_TRANSITION
    );
}

#[test]
fn order_validation_rejections() {
    let mut w = World::new();
    w.order("O1", json!([line(1, "A", 1)]));
    let place = |order: &str, channel: &str, lines: serde_json::Value| json!({"order": order, "channel": channel, "ship_to_region": "UK", "lines": lines});
    for (data, expected) in [
        (
            place("O1", "web", json!([line(1, "A", 1)])),
            code::ALREADY_EXISTS,
        ),
        (
            place("O2", "nope", json!([line(1, "A", 1)])),
            code::UNKNOWN_CHANNEL,
        ),
        (
            place("O2", "web", json!([line(1, "NOPE", 1)])),
            code::UNKNOWN_SKU,
        ),
        (place("O2", "web", json!([])), code::INVALID_QUANTITY),
        (
            place("O2", "web", json!([line(1, "A", 0)])),
            code::INVALID_QUANTITY,
        ),
        (
            place("O2", "web", json!([line(1, "A", 1), line(1, "A", 1)])),
            code::INVALID_QUANTITY,
        ),
        (
            place(
                "O2",
                "web",
                json!([line(1, "A", 1), {"line": 2, "sku": "A", "qty": 1, "unit_price": {"amount": "1", "currency": "EUR"}}]),
            ),
            code::CURRENCY_MISMATCH,
        ),
    ] {
        assert_eq!(
            rejected(w.when("order.place", data.clone())),
            expected,
            "{data}"
        );
    }
    assert_eq!(
        rejected(w.when("order.hold", json!({"order": "NOPE", "reason": "fraud"}))),
        code::UNKNOWN_ORDER
    );
}

#[test]
fn order_life_cycle_hold_pick_pack_ship_return_refund() {
    let mut w = World::new();
    w.receive("A", "WH1", 10);
    w.order("O1", json!([line(1, "A", 6)]));
    assert_eq!(
        rejected(w.when("order.release", json!({"order": "O1"}))),
        code::INVALID_TRANSITION
    );
    w.given(
        "order.hold",
        json!({"order": "O1", "reason": "payment_review"}),
    );
    assert_eq!(
        rejected(w.when("order.hold", json!({"order": "O1", "reason": "again"}))),
        code::INVALID_TRANSITION
    );
    assert_eq!(
        rejected(w.when(
            "order.release_to_pick",
            json!({"order": "O1", "wave": "W1"})
        )),
        code::INVALID_TRANSITION
    );
    w.given("order.release", json!({"order": "O1"}));
    assert_eq!(
        rejected(w.when(
            "order.pick",
            json!({"order": "O1", "lines": [{"line": 1, "qty": 6}]})
        )),
        code::INVALID_TRANSITION
    );
    w.given(
        "order.release_to_pick",
        json!({"order": "O1", "wave": "W1"}),
    );
    assert_eq!(
        rejected(w.when(
            "order.pick",
            json!({"order": "O1", "lines": [{"line": 9, "qty": 1}]})
        )),
        code::UNKNOWN_LINE
    );
    assert_eq!(
        rejected(w.when(
            "order.pick",
            json!({"order": "O1", "lines": [{"line": 1, "qty": 7}]})
        )),
        code::INSUFFICIENT_STOCK
    );
    assert_eq!(
        types(&w.given(
            "order.pick",
            json!({"order": "O1", "lines": [{"line": 1, "qty": 6}]})
        )),
        ["stock.picked", "order.line_picked"]
    );
    assert_eq!(
        rejected(w.when(
            "order.pack",
            json!({"order": "O1", "package": "P1", "lines": [{"line": 1, "qty": 5}]})
        )),
        code::PACK_MISMATCH
    );
    w.given(
        "order.pack",
        json!({"order": "O1", "package": "P1", "lines": [{"line": 1, "qty": 6}]}),
    );
    assert_eq!(rejected(w.when("order.ship", json!({"order": "O1", "package": "P9", "carrier": "RM", "tracking": "T", "freight_cost": gbp("3")}))), code::UNKNOWN_PACKAGE);
    let d = w.given("order.ship", json!({"order": "O1", "package": "P1", "carrier": "RM", "tracking": "T", "freight_cost": gbp("3")}));
    assert_eq!(types(&d), ["stock.shipped", "order.shipped"]);
    assert_eq!(
        (
            w.balance("A", "WH1").on_hand,
            w.balance("A", "WH1").allocated
        ),
        (4, 0)
    );

    assert_eq!(
        rejected(w.when(
            "order.authorise_return",
            json!({"order": "O1", "return_id": "R1", "lines": [{"line": 1, "qty": 7}], "reason": "WrongItem"})
        )),
        code::INVALID_QUANTITY
    );
    w.given(
        "order.authorise_return",
        json!({"order": "O1", "return_id": "R1", "lines": [{"line": 1, "qty": 2}], "reason": "SizeTooSmall"}),
    );
    let refund = json!({"order": "O1", "return_id": "R1", "amount": gbp("5.10")});
    assert_eq!(
        rejected(w.when("order.refund", refund.clone())),
        code::NOT_INSPECTED
    );
    let receive = |qty: i64| json!({"sku": "A", "return_id": "R1", "order": "O1", "line": 1, "location": "WH1", "qty": qty});
    assert_eq!(
        rejected(w.when("stock.receive_return", receive(3))),
        code::INVALID_QUANTITY
    );
    assert_eq!(rejected(w.when("stock.receive_return", json!({"sku": "A", "return_id": "R9", "order": "O1", "line": 1, "location": "WH1", "qty": 1}))), code::UNKNOWN_RETURN);
    w.given("stock.receive_return", receive(2));
    assert_eq!(
        (
            w.balance("A", "WH1").on_hand,
            w.balance("A", "WH1").quality_hold
        ),
        (6, 2)
    );
    assert_eq!(
        rejected(w.when(
            "stock.disposition_return",
            json!({"sku": "A", "return_id": "R9", "qty": 1, "disposition": "Restock"})
        )),
        code::UNKNOWN_RETURN
    );
    w.given(
        "stock.disposition_return",
        json!({"sku": "A", "return_id": "R1", "qty": 1, "disposition": "Restock"}),
    );
    w.given(
        "stock.disposition_return",
        json!({"sku": "A", "return_id": "R1", "qty": 1, "disposition": "Scrap"}),
    );
    assert_eq!(
        (
            w.balance("A", "WH1").on_hand,
            w.balance("A", "WH1").quality_hold
        ),
        (5, 0)
    );
    assert_eq!(
        rejected(w.when(
            "order.refund",
            json!({"order": "O1", "return_id": "R1", "amount": {"amount": "5", "currency": "EUR"}})
        )),
        code::CURRENCY_MISMATCH
    );
    assert_eq!(
        types(&w.given("order.refund", refund.clone())),
        ["order.refunded"]
    );
    assert_eq!(
        rejected(w.when("order.refund", refund)),
        code::INVALID_TRANSITION
    );
}

#[test]
fn cancel_releases_allocations_and_backorders() {
    let mut w = World::new();
    w.receive("A", "WH1", 4);
    w.order("O1", json!([line(1, "A", 6), line(2, "NEG", 2)]));
    assert_eq!(w.balance("A", "WH1").allocated, 4);
    assert_eq!(
        rejected(w.when(
            "order.cancel",
            json!({"order": "O1", "lines": [{"line": 1, "qty": 7}], "reason": "customer"})
        )),
        code::INVALID_QUANTITY
    );
    let d = w.given(
        "order.cancel",
        json!({"order": "O1", "lines": [{"line": 1, "qty": 3}], "reason": "customer"}),
    );
    // 2 of the 3 come off the backorder, 1 off the allocation.
    assert_eq!(
        types(&d),
        ["stock.allocation_released", "order.lines_cancelled"]
    );
    assert_eq!(w.balance("A", "WH1").allocated, 3);
    w.given("order.cancel", json!({"order": "O1", "reason": "customer"}));
    assert_eq!(w.balance("A", "WH1").allocated, 0);
    assert!(w.state.backorders.values().all(|b| b.is_empty()));
    assert_eq!(
        rejected(w.when("order.cancel", json!({"order": "O1", "reason": "again"}))),
        code::INVALID_TRANSITION
    );
}

#[test]
fn channel_rules_and_safety_stock_limit_what_is_promised() {
    let mut w = World::new();
    w.receive("A", "WH1", 10);
    w.given(
        "stock.set_channel_allocation",
        json!({"sku": "A", "channel": "amazon", "rule": {"RingFenced": {"qty": 6}}}),
    );
    assert_eq!(
        rejected(w.when(
            "stock.set_channel_allocation",
            json!({"sku": "A", "channel": "nope", "rule": "Unrestricted"})
        )),
        code::UNKNOWN_CHANNEL
    );
    // web may only take what amazon's ring fence leaves.
    let d = w.order("O1", json!([line(1, "A", 5)]));
    assert!(types(&d).contains(&"order.line_backordered"));
    assert_eq!(w.balance("A", "WH1").allocated, 4);
    w.receive("SAFE", "WH1", 7);
    let d = w.order("O2", json!([line(1, "SAFE", 3)]));
    assert!(
        types(&d).contains(&"order.line_backordered"),
        "safety stock 5 leaves 2"
    );
}

// ---------------------------------------------------------------------------------------------
// Purchasing
// ---------------------------------------------------------------------------------------------

pub(crate) fn as_actor(actor: &str, kind: &str, data: serde_json::Value) -> Command {
    let mut c = command(kind, data, "2011-01-01T10:00:00Z");
    c.actor.id = ActorId::new(actor).unwrap();
    c
}

impl World {
    /// Decides as `actor` and applies with that actor on the envelopes.
    fn by(
        &mut self,
        actor: &str,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<Decision, Rejection> {
        self.act(&as_actor(actor, kind, data))
    }

    /// Decides `c` and applies its events with its actor, entity and effective time on the
    /// envelopes, as the processor writes them.
    pub(crate) fn act(&mut self, c: &Command) -> Result<Decision, Rejection> {
        let decision = decide(&self.state, c)?;
        for (subject, event) in &decision {
            self.seq += 1;
            let envelope = Envelope {
                event_id: uuid::Uuid::now_v7(),
                subject: subject.clone(),
                command_id: c.command_id,
                correlation_id: c.correlation_id,
                actor: c.actor.clone(),
                legal_entity: c.legal_entity.clone(),
                effective_at: c.effective_at,
                prev_hash: EventHash::GENESIS,
                event: event.clone(),
            };
            let head = ledger::Head {
                seq: self.seq,
                hash: EventHash::GENESIS,
            };
            self.state.apply(&envelope, Some(head));
        }
        Ok(decision)
    }

    pub(crate) fn purchasing() -> World {
        let mut w = World::new();
        w.given(
            "supplier.define",
            json!({"supplier": "ACME", "currency": "GBP"}),
        );
        w
    }
}

fn po(id: &str, lines: serde_json::Value) -> serde_json::Value {
    json!({"purchase_order": id, "supplier": "ACME", "currency": "GBP", "lines": lines,
           "expected_on": "2011-01-15"})
}

fn po_line(n: u32, sku: &str, qty: i64, cost: &str) -> serde_json::Value {
    json!({"line": n, "sku": sku, "location": "WH1", "qty": qty,
           "unit_cost": {"amount": cost, "currency": "GBP"}})
}

fn receive_po(sku: &str, qty: i64, po: &str, line: u32) -> serde_json::Value {
    json!({"sku": sku, "location": "WH1", "qty": qty,
           "unit_cost": {"amount": "2.00", "currency": "GBP"},
           "purchase": {"purchase_order": po, "line": line}})
}

pub(crate) fn refusal(r: Result<Decision, Rejection>) -> Rejection {
    r.expect_err("must be rejected")
}

#[test]
fn a_purchase_order_within_the_limit_is_approved_when_created() {
    let mut w = World::purchasing();
    let d = w
        .by(
            "buyer-1",
            "purchase.create_order",
            po("PO1", json!([po_line(1, "A", 100, "2.00")])),
        )
        .unwrap();
    assert_eq!(
        types(&d),
        ["purchase.order_created", "purchase.order_approved"]
    );
    let Event::PurchaseOrderApproved(a) = &d[1].1 else {
        panic!()
    };
    assert_eq!(a.approver.as_str(), crate::purchase::AUTO_APPROVER);
    // Exactly at the limit (5,000) still auto-approves.
    let d = w
        .by(
            "buyer-1",
            "purchase.create_order",
            po("PO2", json!([po_line(1, "A", 2500, "2.00")])),
        )
        .unwrap();
    assert_eq!(d.len(), 2);
}

#[test]
fn above_the_limit_the_requester_may_not_approve_or_reject() {
    let mut w = World::purchasing();
    let d = w
        .by(
            "buyer-1",
            "purchase.create_order",
            po("PO1", json!([po_line(1, "A", 2501, "2.00")])),
        )
        .unwrap();
    assert_eq!(
        types(&d),
        ["purchase.order_created"],
        "5,002.00 waits for approval"
    );
    let r = refusal(w.by(
        "buyer-1",
        "purchase.approve",
        json!({"purchase_order": "PO1"}),
    ));
    assert_eq!(r.code, code::APPROVER_IS_REQUESTER);
    assert!(
        r.message.contains("buyer-1") && r.message.contains("5000"),
        "{r}"
    );
    let r = refusal(w.by(
        "buyer-1",
        "purchase.reject",
        json!({"purchase_order": "PO1", "reason": "x"}),
    ));
    assert_eq!(r.code, code::APPROVER_IS_REQUESTER);
    // Nothing can be received before approval.
    let r = refusal(w.by("clerk-2", "stock.receive", receive_po("A", 1, "PO1", 1)));
    assert_eq!(r.code, code::INVALID_TRANSITION);
    assert!(r.message.contains("pending approval"), "{r}");
    let d = w
        .by(
            "manager-1",
            "purchase.approve",
            json!({"purchase_order": "PO1"}),
        )
        .unwrap();
    let Event::PurchaseOrderApproved(a) = &d[0].1 else {
        panic!()
    };
    assert_eq!(a.approver.as_str(), "manager-1");
    let r = refusal(w.by(
        "manager-2",
        "purchase.approve",
        json!({"purchase_order": "PO1"}),
    ));
    assert_eq!(r.code, code::INVALID_TRANSITION);
    // A lower limit from the processor's configuration applies to new orders.
    w.state.purchase_policy.approval_limit = rust_decimal::Decimal::from(100);
    let d = w
        .by(
            "buyer-1",
            "purchase.create_order",
            po("PO2", json!([po_line(1, "A", 51, "2.00")])),
        )
        .unwrap();
    assert_eq!(d.len(), 1);
}

#[test]
fn purchase_orders_need_a_known_supplier_and_valid_lines() {
    let mut w = World::purchasing();
    let mut bad = po("PO1", json!([po_line(1, "A", 1, "2.00")]));
    bad["supplier"] = json!("NOBODY");
    assert_eq!(
        refusal(w.by("b", "purchase.create_order", bad)).code,
        code::UNKNOWN_SUPPLIER
    );
    let r = refusal(w.by(
        "b",
        "purchase.create_order",
        po("PO1", json!([po_line(1, "ZZZ", 1, "2.00")])),
    ));
    assert_eq!(r.code, code::UNKNOWN_SKU);
    let r = refusal(w.by(
        "b",
        "purchase.create_order",
        po("PO1", json!([po_line(1, "A", 0, "2.00")])),
    ));
    assert_eq!(r.code, code::INVALID_QUANTITY);
    let mut eur = po_line(1, "A", 1, "2.00");
    eur["unit_cost"]["currency"] = json!("EUR");
    let r = refusal(w.by("b", "purchase.create_order", po("PO1", json!([eur]))));
    assert_eq!(r.code, code::CURRENCY_MISMATCH);
    let r = refusal(w.by(
        "b",
        "purchase.create_order",
        po(
            "PO1",
            json!([po_line(1, "A", 1, "2.00"), po_line(1, "A", 1, "2.00")]),
        ),
    ));
    assert_eq!(r.code, code::ALREADY_EXISTS);
    w.by(
        "b",
        "purchase.create_order",
        po("PO1", json!([po_line(1, "A", 1, "2.00")])),
    )
    .unwrap();
    let r = refusal(w.by(
        "b",
        "purchase.create_order",
        po("PO1", json!([po_line(1, "A", 1, "2.00")])),
    ));
    assert_eq!(r.code, code::ALREADY_EXISTS);
    let r = refusal(w.by("b", "purchase.send", json!({"purchase_order": "PO9"})));
    assert_eq!(r.code, code::UNKNOWN_PURCHASE_ORDER);
}

#[test]
fn receipts_match_their_line_within_the_tolerance() {
    let mut w = World::purchasing();
    w.by(
        "b",
        "purchase.create_order",
        po(
            "PO1",
            json!([po_line(1, "A", 100, "2.00"), po_line(2, "LOT", 5, "1.00")]),
        ),
    )
    .unwrap();
    w.by("b", "purchase.send", json!({"purchase_order": "PO1"}))
        .unwrap();
    let r = refusal(w.by("c", "stock.receive", receive_po("SAFE", 1, "PO1", 1)));
    assert_eq!(r.code, code::PURCHASE_LINE_MISMATCH);
    let r = refusal(w.by("c", "stock.receive", receive_po("A", 1, "PO1", 7)));
    assert_eq!(r.code, code::UNKNOWN_LINE);
    let d = w
        .by("c", "stock.receive", receive_po("A", 60, "PO1", 1))
        .unwrap();
    assert_eq!(types(&d), ["stock.received", "purchase.receipt_matched"]);
    let Event::ReceiptMatched(m) = &d[1].1 else {
        panic!()
    };
    assert_eq!(
        (m.qty_received.get(), m.qty_ordered.get(), m.variance.get()),
        (60, 100, -40)
    );
    // 10% tolerance: up to 110 in total.
    let r = refusal(w.by("c", "stock.receive", receive_po("A", 51, "PO1", 1)));
    assert_eq!(r.code, code::OVER_RECEIPT);
    assert!(
        r.message.contains("111") && r.message.contains("110"),
        "{r}"
    );
    let d = w
        .by("c", "stock.receive", receive_po("A", 50, "PO1", 1))
        .unwrap();
    let Event::ReceiptMatched(m) = &d[1].1 else {
        panic!()
    };
    assert_eq!(m.variance.get(), 10);
    assert_eq!(w.balance("A", "WH1").on_hand, 110);
    // Line 2 is open: the order cannot be closed, only its remainder cancelled.
    let r = refusal(w.by("b", "purchase.close", json!({"purchase_order": "PO1"})));
    assert_eq!(r.code, code::LINES_OPEN);
    assert!(r.message.contains("line 2 (0 of 5 received)"), "{r}");
    let d = w
        .by(
            "b",
            "purchase.cancel_remaining",
            json!({"purchase_order": "PO1", "reason": "supplier out of stock"}),
        )
        .unwrap();
    assert_eq!(types(&d), ["purchase.order_closed"]);
    let r = refusal(w.by("c", "stock.receive", receive_po("A", 1, "PO1", 1)));
    assert_eq!(r.code, code::INVALID_TRANSITION);
}

#[test]
fn landed_cost_is_spread_to_the_cent_over_received_lines() {
    let mut w = World::purchasing();
    w.by(
        "b",
        "purchase.create_order",
        po(
            "PO1",
            json!([
                po_line(1, "A", 10, "1.00"),
                po_line(2, "SAFE", 10, "1.00"),
                po_line(3, "NEG", 10, "1.00"),
                po_line(4, "LOT", 10, "1.00")
            ]),
        ),
    )
    .unwrap();
    let charge = |basis: &str| {
        json!({"purchase_order": "PO1", "charge": "Freight",
        "amount": {"amount": "100.00", "currency": "GBP"}, "basis": basis,
        "weights": [{"line": 1, "weight": 1}, {"line": 2, "weight": 2}, {"line": 3, "weight": 1}]})
    };
    let r = refusal(w.by("b", "purchase.allocate_landed_cost", charge("Value")));
    assert_eq!(r.code, code::INVALID_TRANSITION, "nothing received yet");
    for (sku, line) in [("A", 1), ("SAFE", 2), ("NEG", 3)] {
        w.by("c", "stock.receive", receive_po(sku, 10, "PO1", line))
            .unwrap();
    }
    let shares = |d: &Decision| -> Vec<String> {
        let Event::LandedCostAllocated(e) = &d[0].1 else {
            panic!()
        };
        e.shares
            .iter()
            .map(|s| format!("{}:{}", s.line, s.amount.amount))
            .collect()
    };
    // Three received lines of equal value: 33.33 + 33.33 + 33.34 = 100.00; line 4 gets none.
    let d = w
        .by("b", "purchase.allocate_landed_cost", charge("Value"))
        .unwrap();
    assert_eq!(shares(&d), ["1:33.33", "2:33.33", "3:33.34"]);
    let d = w
        .by("b", "purchase.allocate_landed_cost", charge("Weight"))
        .unwrap();
    assert_eq!(shares(&d), ["1:25.00", "2:50.00", "3:25.00"]);
    let mut no_weights = charge("Weight");
    no_weights["weights"] = json!([]);
    let r = refusal(w.by("b", "purchase.allocate_landed_cost", no_weights));
    assert_eq!(r.code, code::UNKNOWN_LINE);
    let mut usd = charge("Quantity");
    usd["amount"]["currency"] = json!("USD");
    assert_eq!(
        refusal(w.by("b", "purchase.allocate_landed_cost", usd)).code,
        code::CURRENCY_MISMATCH
    );
}

#[test]
fn every_rejection_code_is_exercised_by_a_test() {
    // Goal: the list of codes stays in step with these tests (a new code needs a case).
    let source = concat!(
        include_str!("decide_tests.rs"),
        include_str!("governance_tests.rs"),
        include_str!("lots_tests.rs")
    );
    for code in code::ALL {
        let constant = code.to_uppercase();
        assert!(
            source.contains(&format!("code::{constant}")),
            "no test rejects with {code}"
        );
    }
}

#[test]
fn figures_beyond_the_largest_quantity_are_refused_not_panicked() {
    // Goal: two receipts of 10^12 then a count used to reach `QtyDelta::new(..).expect` and
    // panic the processor; now the second receipt is refused `quantity_limit`, and no command
    // can take any figure past QTY_MAX.
    let mut w = World::new();
    let max = QTY_MAX;
    w.given(
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": max, "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
    );
    let r = refusal(w.when(
        "stock.receive",
        json!({"sku": "A", "location": "WH1", "qty": 1, "unit_cost": {"amount": "1.00", "currency": "GBP"}}),
    ));
    assert_eq!(r.code, code::QUANTITY_LIMIT);
    assert!(
        r.message.contains("on hand would be 1000000000001"),
        "{}",
        r.message
    );
    let r = refusal(w.when(
        "stock.adjust",
        json!({"sku": "A", "location": "WH1", "delta": 1, "reason": "Found"}),
    ));
    assert_eq!(r.code, code::QUANTITY_LIMIT);
    // A count at the limit is fine, and nothing is beyond it afterwards.
    w.given(
        "stock.count",
        json!({"sku": "A", "location": "WH1", "counted": 0}),
    );
    assert_eq!(w.balance("A", "WH1").on_hand, 0);
    // Negative stock is bounded too.
    w.given(
        "stock.adjust",
        json!({"sku": "NEG", "location": "WH1", "delta": -max, "reason": "Oversold"}),
    );
    let r = refusal(w.when(
        "stock.adjust",
        json!({"sku": "NEG", "location": "WH1", "delta": -1, "reason": "Oversold"}),
    ));
    assert_eq!(r.code, code::QUANTITY_LIMIT);
    assert!(
        w.state
            .invariant_violation(&Sku::new("NEG").unwrap())
            .is_none()
    );
}

/// An order of 2 A shipped in package P1 at 2011-01-01T10:00:00Z, with return R1 authorised.
fn shipped_order(w: &mut World) {
    w.receive("A", "WH1", 10);
    w.order("O1", json!([line(1, "A", 2)]));
    w.given(
        "order.release_to_pick",
        json!({"order": "O1", "wave": "W1"}),
    );
    w.given(
        "order.pick",
        json!({"order": "O1", "lines": [{"line": 1, "qty": 2}]}),
    );
    w.given(
        "order.pack",
        json!({"order": "O1", "package": "P1", "lines": [{"line": 1, "qty": 2}]}),
    );
    w.given("order.ship", json!({"order": "O1", "package": "P1", "carrier": "RM", "tracking": "T", "freight_cost": gbp("3")}));
    w.given(
        "order.authorise_return",
        json!({"order": "O1", "return_id": "R1", "lines": [{"line": 1, "qty": 1}], "reason": "Defective"}),
    );
}

#[test]
fn a_delivery_is_confirmed_once_per_shipped_package_and_not_before_it_left() {
    let mut w = World::new();
    shipped_order(&mut w);
    let delivery = json!({"order": "O1", "package": "P1", "proof": "POD-1"});
    assert_eq!(
        rejected(w.when(
            "order.confirm_delivery",
            json!({"order": "O1", "package": "P9"})
        )),
        code::UNKNOWN_PACKAGE
    );
    assert_eq!(
        rejected(w.when(
            "order.confirm_delivery",
            json!({"order": "NOPE", "package": "P1"})
        )),
        code::UNKNOWN_ORDER
    );
    assert_eq!(
        rejected(w.when_at(
            "order.confirm_delivery",
            delivery.clone(),
            "2011-01-01T09:59:59Z"
        )),
        code::INVALID_TRANSITION
    );
    let d = w.given("order.confirm_delivery", delivery.clone());
    assert_eq!(types(&d), ["order.delivered"]);
    assert_eq!(
        rejected(w.when("order.confirm_delivery", delivery)),
        code::INVALID_TRANSITION
    );
}

#[test]
fn exception_actions_name_a_kind_with_its_subject_shape_and_a_subject_that_exists() {
    let mut w = World::new();
    shipped_order(&mut w);
    let on_order = json!({"kind": "OrderUnshipped", "on": {"Order": {"order": "O1"}}});
    // A kind with a subject of another shape.
    assert_eq!(
        rejected(w.when(
            "exception.assign",
            json!({"exception": {"kind": "CountVariance", "on": {"Order": {"order": "O1"}}}, "owner": "x"})
        )),
        code::INVALID_EXCEPTION
    );
    // Subjects that do not exist.
    for (exception, code) in [
        (
            json!({"kind": "OrderUnshipped", "on": {"Order": {"order": "NOPE"}}}),
            code::UNKNOWN_ORDER,
        ),
        (
            json!({"kind": "ShipmentInTransit", "on": {"Shipment": {"order": "O1", "package": "P9"}}}),
            code::UNKNOWN_PACKAGE,
        ),
        (
            json!({"kind": "ReturnNotInspected", "on": {"Return": {"order": "O1", "return_id": "R9"}}}),
            code::UNKNOWN_RETURN,
        ),
        (
            json!({"kind": "PurchaseOrderOverdue", "on": {"PurchaseOrder": {"purchase_order": "PO9"}}}),
            code::UNKNOWN_PURCHASE_ORDER,
        ),
        (
            json!({"kind": "CountVariance", "on": {"Stock": {"sku": "NOPE", "location": "WH1"}}}),
            code::UNKNOWN_SKU,
        ),
        (
            json!({"kind": "BelowSafetyStock", "on": {"Stock": {"sku": "A", "location": "NOWHERE"}}}),
            code::UNKNOWN_LOCATION,
        ),
    ] {
        assert_eq!(
            rejected(w.when(
                "exception.assign",
                json!({"exception": exception, "owner": "x"})
            )),
            code,
            "{exception}"
        );
    }
    // Accepted, on the subject the exception is about.
    let d = w.given(
        "exception.assign",
        json!({"exception": on_order, "owner": "picker-9"}),
    );
    assert_eq!(types(&d), ["exception.assigned"]);
    assert_eq!(d[0].0, Subject::Order(OrderId::new("O1").unwrap()));
    let d = w.given(
        "exception.assign",
        json!({"exception": {"kind": "CountVariance", "on": {"Stock": {"sku": "A", "location": "WH1"}}}, "owner": "x"}),
    );
    assert_eq!(d[0].0, Subject::Stock(Sku::new("A").unwrap()));
    // A resolution of Other needs a note; a snooze must end after now, within a year.
    assert_eq!(
        rejected(w.when(
            "exception.resolve",
            json!({"exception": on_order, "resolution": "Other"})
        )),
        code::REASON_REQUIRED
    );
    assert_eq!(
        types(&w.given(
            "exception.resolve",
            json!({"exception": on_order, "resolution": "Other", "note": "split shipment agreed"})
        )),
        ["exception.resolved"]
    );
    for until in ["2011-01-01T10:00:00Z", "2012-06-01T00:00:00Z"] {
        assert_eq!(
            rejected(w.when(
                "exception.snooze",
                json!({"exception": on_order, "until": until})
            )),
            code::INVALID_TRANSITION
        );
    }
    assert_eq!(
        types(&w.given(
            "exception.snooze",
            json!({"exception": on_order, "until": "2011-01-02T10:00:00Z"})
        )),
        ["exception.snoozed"]
    );
}

#[test]
fn exception_rules_are_set_per_entity_with_thresholds_in_range() {
    let w = World::new();
    assert_eq!(
        rejected(w.when(
            "exception.set_rule",
            json!({"kind": "OrderUnshipped", "rule": {"threshold": 400, "severity": "High"}})
        )),
        code::INVALID_THRESHOLD
    );
    let d = w
        .when(
            "exception.set_rule",
            json!({"kind": "CountVariance", "rule": {"threshold": 400, "severity": "Critical"}}),
        )
        .unwrap();
    assert_eq!(types(&d), ["exception.rule_set"]);
    assert_eq!(d[0].0, Subject::LegalEntity(EntityId::new("UK01").unwrap()));
    assert_eq!(
        types(
            &w.when(
                "exception.set_rule",
                json!({"kind": "BelowSafetyStock", "rule": null})
            )
            .unwrap()
        ),
        ["exception.rule_set"]
    );
}

#[test]
fn only_exceptions_about_an_order_that_can_still_ship_may_block_fulfilment() {
    let w = World::new();
    for kind in [
        "CountVariance",
        "ShipmentInTransit",
        "PurchaseOrderOverdue",
        "ReturnNotInspected",
    ] {
        assert_eq!(
            rejected(w.when(
                "exception.set_rule",
                json!({"kind": kind, "rule": {"threshold": 1, "severity": "High", "blocks": true}})
            )),
            code::INVALID_EXCEPTION,
            "{kind}"
        );
    }
    for kind in ["OrderUnshipped", "BackorderPastPromise"] {
        let d = w
            .when(
                "exception.set_rule",
                json!({"kind": kind, "rule": {"threshold": 1, "severity": "High", "blocks": true}}),
            )
            .unwrap();
        let Event::ExceptionRuleSet(set) = &d[0].1 else {
            panic!("{d:?}")
        };
        assert!(set.rule.as_ref().unwrap().blocks);
    }
}

#[test]
fn resolving_a_blocking_exception_releases_the_hold_it_placed_and_no_other() {
    let mut w = World::new();
    w.receive("A", "WH1", 10);
    w.order("O1", json!([line(1, "A", 2)]));
    w.order("O2", json!([line(1, "A", 2)]));
    let unshipped =
        |order: &str| json!({"kind": "OrderUnshipped", "on": {"Order": {"order": order}}});
    // O1 held by the exception holder, O2 by a person for fraud.
    w.given(
        "order.hold",
        json!({"order": "O1", "reason": "exception.order_unshipped"}),
    );
    w.given("order.hold", json!({"order": "O2", "reason": "fraud"}));
    // A conditional release names the reason the order must be held for.
    assert_eq!(
        rejected(w.when(
            "order.release",
            json!({"order": "O2", "reason": "exception.order_unshipped"})
        )),
        code::INVALID_TRANSITION
    );
    let d = w.given(
        "exception.resolve",
        json!({"exception": unshipped("O1"), "resolution": "CustomerContacted"}),
    );
    assert_eq!(types(&d), ["exception.resolved", "order.released"]);
    let d = w.given(
        "exception.resolve",
        json!({"exception": unshipped("O2"), "resolution": "Expedited"}),
    );
    assert_eq!(types(&d), ["exception.resolved"], "the fraud hold stays");
    assert_eq!(
        types(&w.given("order.release", json!({"order": "O2", "reason": "fraud"}))),
        ["order.released"]
    );
}

#[test]
fn an_integrity_exception_is_about_a_ledger_sequence_and_worked_on_the_entitys_subject() {
    let w = World::new();
    let on = |seq: u64| json!({"kind": "ForeignMessage", "on": {"Ledger": {"seq": seq}}});
    assert_eq!(
        rejected(w.when(
            "exception.resolve",
            json!({"exception": on(0), "resolution": "NoActionNeeded"})
        )),
        code::INVALID_EXCEPTION
    );
    assert_eq!(
        rejected(w.when(
            "exception.assign",
            json!({"exception": {"kind": "UnbalancedJournal", "on": {"Order": {"order": "O1"}}}, "owner": "x"})
        )),
        code::INVALID_EXCEPTION
    );
    let d = w
        .when(
            "exception.resolve",
            json!({"exception": on(25), "resolution": "NoActionNeeded"}),
        )
        .unwrap();
    assert_eq!(types(&d), ["exception.resolved"]);
    assert_eq!(d[0].0, Subject::LegalEntity(EntityId::new("UK01").unwrap()));
}

#[test]
fn quantities_stated_in_a_pack_unit_are_decided_in_base_units() {
    let mut w = World::new();
    w.given(
        "item.define",
        json!({"sku": "MUG", "base_unit": "each", "pack_sizes": [{"unit": "case", "base_units": 12}]}),
    );
    // Two cases received: 24 on hand; the event speaks base units.
    let d = w.given(
        "stock.receive",
        json!({"sku": "MUG", "location": "WH1", "qty": 2, "unit": "case",
               "unit_cost": {"amount": "1.50", "currency": "GBP"}}),
    );
    let Event::StockReceived(r) = &d[0].1 else {
        panic!("{d:?}")
    };
    assert_eq!(r.qty.get(), 24);
    // A case ordered allocates twelve; the base unit by name counts one.
    let d = w.given(
        "order.place",
        json!({"order": "M1", "channel": "web", "ship_to_region": "UK", "lines": [
            {"line": 1, "sku": "MUG", "qty": 1, "unit": "case", "unit_price": {"amount": "3.00", "currency": "GBP"}},
            {"line": 2, "sku": "MUG", "qty": 2, "unit": "each", "unit_price": {"amount": "3.00", "currency": "GBP"}}]}),
    );
    let Event::OrderPlaced(p) = &d[0].1 else {
        panic!("{d:?}")
    };
    assert_eq!((p.lines[0].qty.get(), p.lines[1].qty.get()), (12, 2));
    assert_eq!(w.balance("MUG", "WH1").allocated, 14);
    // An adjustment and a count in cases.
    w.given(
        "stock.adjust",
        json!({"sku": "MUG", "location": "WH1", "delta": 1, "unit": "case", "reason": "found"}),
    );
    assert_eq!(w.balance("MUG", "WH1").on_hand, 36);
    w.given(
        "stock.count",
        json!({"sku": "MUG", "location": "WH1", "counted": 2, "unit": "case"}),
    );
    assert_eq!(w.balance("MUG", "WH1").on_hand, 24);
    // A unit the item does not have, and a product beyond the ledger's figures.
    let refused = w.when(
        "stock.receive",
        json!({"sku": "MUG", "location": "WH1", "qty": 1, "unit": "pallet",
               "unit_cost": {"amount": "1.50", "currency": "GBP"}}),
    );
    let Err(r) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(r.code, code::INVALID_QUANTITY);
    assert!(
        r.message.contains("`pallet` is not a unit of MUG"),
        "{}",
        r.message
    );
    assert!(r.message.contains("`case` (12 each)"), "{}", r.message);
    assert_eq!(
        rejected(w.when(
            "stock.receive",
            json!({"sku": "MUG", "location": "WH1", "qty": ledger::values::QTY_MAX, "unit": "case",
                   "unit_cost": {"amount": "1.50", "currency": "GBP"}}),
        )),
        code::QUANTITY_LIMIT
    );
}

/// (line, location) of each route.
fn lines_at(routes: &[(u32, String, String)]) -> Vec<(u32, &str)> {
    routes.iter().map(|(l, at, _)| (*l, at.as_str())).collect()
}

/// Where each line of `d` was routed: (line, location, reason).
fn routes(d: &Decision) -> Vec<(u32, String, String)> {
    d.iter()
        .filter_map(|(_, e)| match e {
            Event::LineRouted(r) => Some((r.line, r.location.to_string(), r.reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn an_order_one_node_can_fill_whole_ships_from_it_in_one_shipment() {
    // Given WH1 (UK, priority 1) has A only and WH2 (DE, priority 2) has A and SAFE; when a
    // UK order asks for both, then both come from WH2: one shipment beats the better node
    // for line 1 and a second parcel from WH2.
    let mut w = World::new();
    w.receive("A", "WH1", 10);
    w.receive("A", "WH2", 10);
    w.receive("SAFE", "WH2", 10);
    let d = w.order("O1", json!([line(1, "A", 2), line(2, "SAFE", 3)]));
    let r = routes(&d);
    assert_eq!(lines_at(&r), [(1, "WH2"), (2, "WH2")]);
    assert!(r[0].2.contains("one shipment"), "{}", r[0].2);
    assert!(r[0].2.contains("outside region UK"), "{}", r[0].2);
    assert_eq!(w.balance("A", "WH2").allocated, 2);
    assert_eq!(w.balance("A", "WH1").allocated, 0);
    // Two lines of one SKU count together: WH1 holds 10 A, the order wants 6 + 6, so no
    // node fills it whole and line 1 goes to the better node, line 2 to WH2 (8 left there
    // after O1's 2).
    let d = w.order("O2", json!([line(1, "A", 6), line(2, "A", 6)]));
    let r = routes(&d);
    assert_eq!(lines_at(&r), [(1, "WH1"), (2, "WH2")]);
    // A single line keeps its own routing: the UK node that has it all.
    let d = w.order("O3", json!([line(1, "A", 1)]));
    assert_eq!(routes(&d)[0].1, "WH1");
}

#[test]
fn without_a_node_for_everything_a_line_goes_where_another_line_already_ships() {
    // Given WH3 (UK, priority 3) is the only node with SAFE, A is at WH1 and WH3, and NEG
    // only at WH2; when an order asks SAFE, A, NEG, then A joins SAFE at WH3 (two shipments)
    // instead of going to the better WH1 (three).
    let mut w = World::new();
    w.given(
        "location.define",
        json!({"location": "WH3", "kind": "Warehouse", "region": "UK", "routing_priority": 3}),
    );
    w.receive("SAFE", "WH3", 10);
    w.receive("A", "WH1", 10);
    w.receive("A", "WH3", 10);
    w.receive("NEG", "WH2", 10);
    let d = w.order(
        "O1",
        json!([line(1, "SAFE", 1), line(2, "A", 1), line(3, "NEG", 1)]),
    );
    let r = routes(&d);
    assert_eq!(lines_at(&r), [(1, "WH3"), (2, "WH3"), (3, "WH2")]);
    assert!(r[1].2.contains("ships another line"), "{}", r[1].2);
}

fn rate(location: &str, region: &str, amount: &str, currency: &str) -> serde_json::Value {
    json!({"location": location, "region": region, "cost": {"amount": amount, "currency": currency}})
}

#[test]
fn among_nodes_that_ship_in_as_few_parcels_the_cheapest_rate_wins() {
    // Given WH1 (UK, priority 1) and WH2 (DE, priority 2) both hold A and SAFE, and a parcel
    // to the UK costs 5.00 from WH1 and 3.00 from WH2; when UK orders come, then they go to
    // WH2, whole orders and single lines alike, and the reason names the rate.
    let mut w = World::new();
    for at in ["WH1", "WH2"] {
        w.receive("A", at, 10);
        w.receive("SAFE", at, 10);
    }
    let d = w.given(
        "location.set_shipping_rate",
        rate("WH1", "UK", "5.00", "GBP"),
    );
    assert_eq!(types(&d), ["location.shipping_rate_set"]);
    assert_eq!(d[0].0, Subject::Location(LocationId::new("WH1").unwrap()));
    w.given(
        "location.set_shipping_rate",
        rate("WH2", "UK", "3.00", "GBP"),
    );
    let d = w.order("O1", json!([line(1, "A", 1)]));
    let r = routes(&d);
    assert_eq!(r[0].1, "WH2");
    assert!(r[0].2.contains("costs 3.00 GBP"), "{}", r[0].2);
    let d = w.order("O2", json!([line(1, "A", 1), line(2, "SAFE", 1)]));
    let r = routes(&d);
    assert_eq!(lines_at(&r), [(1, "WH2"), (2, "WH2")]);
    assert!(
        r[0].2
            .contains("one shipment; a shipment to UK costs 3.00 GBP"),
        "{}",
        r[0].2
    );
    // Fewer parcels still come first: WH2 runs out of SAFE, so the whole order ships from
    // WH1 however much dearer.
    w.given(
        "stock.adjust",
        json!({"sku": "SAFE", "location": "WH2", "delta": -9, "reason": "damaged"}),
    );
    let d = w.order("O3", json!([line(1, "A", 1), line(2, "SAFE", 1)]));
    assert_eq!(
        routes(&d)
            .iter()
            .map(|(_, at, _)| at.as_str())
            .collect::<Vec<_>>(),
        ["WH1", "WH1"]
    );
    // A rate changes by setting it again; a node with no rate to a region comes after the
    // nodes that have one.
    w.given(
        "location.set_shipping_rate",
        rate("WH2", "UK", "9.00", "GBP"),
    );
    let d = w.order("O4", json!([line(1, "A", 1)]));
    assert_eq!(routes(&d)[0].1, "WH1");
}

#[test]
fn a_shipping_rate_is_refused_for_an_unknown_node_an_empty_region_a_negative_cost_or_a_second_currency()
 {
    let mut w = World::new();
    let refused = |w: &World, data, code: &str, says: &str| {
        let r = w.when("location.set_shipping_rate", data).unwrap_err();
        assert_eq!(r.code, code, "{}", r.message);
        assert!(r.message.contains(says), "{}", r.message);
    };
    let cases = [
        (
            rate("NOWHERE", "UK", "1.00", "GBP"),
            code::UNKNOWN_LOCATION,
            "NOWHERE",
        ),
        (
            rate("WH1", " ", "1.00", "GBP"),
            code::INVALID_COMMAND,
            "data.region",
        ),
        (
            rate("WH1", "UK", "-0.01", "GBP"),
            code::NEGATIVE_AMOUNT,
            "data.cost.amount",
        ),
    ];
    for (data, code, says) in cases {
        refused(&w, data, code, says);
    }
    w.given(
        "location.set_shipping_rate",
        rate("WH1", "UK", "4.00", "GBP"),
    );
    refused(
        &w,
        rate("WH2", "DE", "4.00", "EUR"),
        code::CURRENCY_MISMATCH,
        "WH1 to UK is in GBP",
    );
    // The one rate there is may change currency: nothing else compares with it then.
    w.given(
        "location.set_shipping_rate",
        rate("WH1", "UK", "4.50", "EUR"),
    );
}

#[test]
fn a_backorder_allocated_later_joins_the_node_that_already_ships_the_order() {
    // Given order O1 ships A from WH2 and waits for SAFE; when SAFE turns up at both nodes
    // and the order is allocated again, then SAFE comes from WH2 too (one parcel), not from
    // the otherwise better WH1.
    let mut w = World::new();
    w.receive("A", "WH2", 10);
    let d = w.order("O1", json!([line(1, "A", 2), line(2, "SAFE", 1)]));
    assert_eq!(routes(&d)[0].1, "WH2");
    for at in ["WH1", "WH2"] {
        w.given(
            "stock.adjust",
            json!({"sku": "SAFE", "location": at, "delta": 10, "reason": "found"}),
        );
    }
    let d = w.given("order.allocate", json!({"order": "O1"}));
    let r = routes(&d);
    assert_eq!((r[0].0, r[0].1.as_str()), (2, "WH2"));
    assert!(r[0].2.contains("ships the order already"), "{}", r[0].2);
}

#[test]
fn a_clock_tick_moves_a_quiet_entitys_clock_on_once_per_tick_and_never_back() {
    let mut w = World::new();
    let every = std::time::Duration::from_secs(15 * 60);
    let at = |t: &str| Timestamp::parse(t).unwrap();
    // The last event was at 10:00: at 10:14 a whole tick has not passed since.
    assert!(crate::processor::clock_ticks(&w.state, at("2011-01-01T10:14:59Z"), every).is_empty());
    // At 10:31 the clock is behind by more than a tick: one tick, at 10:30.
    let ticks = crate::processor::clock_ticks(&w.state, at("2011-01-01T10:31:07Z"), every);
    assert_eq!(ticks.len(), 1);
    let tick = &ticks[0];
    assert_eq!(tick.effective_at, at("2011-01-01T10:30:00Z"));
    assert_eq!(tick.legal_entity.as_str(), "UK01");
    assert_eq!(tick.actor.role.as_str(), "system");
    // Asked again within the same tick: the same command (same id), so it is stored once.
    let again = crate::processor::clock_ticks(&w.state, at("2011-01-01T10:44:59Z"), every);
    assert_eq!(again[0].command_id, tick.command_id);
    let decision = decide(&w.state, tick).expect("accepted");
    assert_eq!(types(&decision), ["clock.ticked"]);
    assert_eq!(
        decision[0].0,
        ledger::Subject::LegalEntity(EntityId::new("UK01").unwrap())
    );
    let Event::ClockTicked(e) = &decision[0].1 else {
        panic!("{decision:?}")
    };
    assert_eq!(e.previous, at("2011-01-01T10:00:00Z"));
    // Not after the entity's latest effective time: refused, the clock never goes back.
    assert_eq!(
        rejected(w.when_at("clock.tick", json!({}), "2011-01-01T10:00:00Z")),
        code::CLOCK_NOT_BEHIND
    );
    assert_eq!(
        rejected(w.when_at("clock.tick", json!({}), "2011-01-01T09:00:00Z")),
        code::CLOCK_NOT_BEHIND
    );
    // Once the tick is stored, nothing more is due until the next whole tick has passed.
    let mut envelope_time = w.state.clone();
    for (subject, event) in &decision {
        envelope_time.apply(
            &Envelope {
                event_id: uuid::Uuid::now_v7(),
                subject: subject.clone(),
                command_id: tick.command_id,
                correlation_id: tick.correlation_id,
                actor: tick.actor.clone(),
                legal_entity: tick.legal_entity.clone(),
                effective_at: tick.effective_at,
                prev_hash: EventHash::GENESIS,
                event: event.clone(),
            },
            None,
        );
    }
    w.state = envelope_time;
    assert!(crate::processor::clock_ticks(&w.state, at("2011-01-01T10:44:59Z"), every).is_empty());
    let next = crate::processor::clock_ticks(&w.state, at("2011-01-01T10:45:00Z"), every);
    assert_eq!(next[0].effective_at, at("2011-01-01T10:45:00Z"));
    assert_ne!(next[0].command_id, tick.command_id);
    // An unknown `data` field is refused like any other command's.
    assert!(super::command::decode(
        json!({"command_id": uuid::Uuid::now_v7(), "actor": {"id": "processor", "role": "system"},
            "legal_entity": "UK01", "effective_at": "2011-01-01T11:00:00Z",
            "type": "clock.tick", "data": {"to": "2030-01-01T00:00:00Z"}})
        .to_string()
        .as_bytes()
    )
    .is_err());
}

fn order_line_of<'s>(w: &'s World, order: &str, line: u32) -> &'s crate::state::LineState {
    let order = &w.state.orders[&ledger::values::OrderId::new(order).unwrap()];
    order.lines.get(&line).expect("the line exists")
}

#[test]
fn an_amendment_adds_lines_and_replaces_one_with_more_units_using_the_stock_it_frees() {
    let mut w = World::new();
    w.receive("A", "WH1", 3);
    w.receive("SAFE", "WH1", 20);
    w.order("O1", json!([line(1, "A", 2)]));
    assert_eq!(w.balance("A", "WH1").allocated, 2);
    // Line 1 grows from 2 to 3: replaced by line 2, which takes the 2 line 1 frees and the
    // 1 left; a new line 3 of another SKU is added beside it.
    let d = w.given(
        "order.amend",
        json!({"order": "O1", "reason": "customer_request",
               "replace": [{"line": 1, "by": line(2, "A", 3)}],
               "add": [line(3, "SAFE", 4)]}),
    );
    assert_eq!(
        types(&d),
        [
            "stock.allocation_released",
            "order.lines_added",
            "order.lines_cancelled",
            "order.line_routed",
            "stock.allocated",
            "order.line_allocated",
            "order.line_routed",
            "stock.allocated",
            "order.line_allocated",
        ]
    );
    let Event::LinesAdded(added) = &d[1].1 else {
        panic!("{d:?}")
    };
    assert_eq!(added.lines[0].replaces, Some(1));
    assert_eq!(added.lines[0].consent, None);
    assert_eq!(added.lines[1].replaces, None);
    assert_eq!(w.balance("A", "WH1").allocated, 3);
    assert_eq!(w.balance("SAFE", "WH1").allocated, 4);
    let (l1, l2) = (order_line_of(&w, "O1", 1), order_line_of(&w, "O1", 2));
    assert_eq!((l1.qty, l1.cancelled, l1.allocated_total()), (2, 2, 0));
    assert_eq!((l2.qty, l2.allocated_total(), l2.backordered), (3, 3, 0));
    // A cancellation in an amendment is an order.cancel of those units.
    let d = w.given(
        "order.amend",
        json!({"order": "O1", "reason": "customer_request", "cancel": [{"line": 3, "qty": 1}]}),
    );
    assert_eq!(
        types(&d),
        ["stock.allocation_released", "order.lines_cancelled"]
    );
    assert_eq!(w.balance("SAFE", "WH1").allocated, 3);
}

#[test]
fn a_substitution_needs_the_customers_consent_and_backorders_what_no_node_has() {
    let mut w = World::new();
    w.receive("A", "WH1", 2);
    w.order("O1", json!([line(1, "A", 2)]));
    let substitute = |consent: serde_json::Value| {
        json!({"order": "O1", "reason": "out_of_stock",
               "replace": [{"line": 1, "by": line(2, "NEG", 2), "consent": consent}]})
    };
    for missing in [json!(null), json!(""), json!("   ")] {
        let refused = w.when("order.amend", substitute(missing.clone()));
        assert_eq!(
            rejected(refused.clone()),
            code::REASON_REQUIRED,
            "{missing}"
        );
        let message = refused.unwrap_err().message;
        assert!(
            message.contains("replace[0].consent") && message.contains("substitution"),
            "{message}"
        );
    }
    let d = w.given(
        "order.amend",
        substitute(json!("customer agreed by email, 2011-01-01 09:40")),
    );
    let Event::LinesAdded(added) = &d[1].1 else {
        panic!("{d:?}")
    };
    assert_eq!(
        added.lines[0].consent.as_deref(),
        Some("customer agreed by email, 2011-01-01 09:40")
    );
    // NEG has no stock: the substitute waits as a backorder; A's 2 are free again.
    assert_eq!(order_line_of(&w, "O1", 2).backordered, 2);
    assert_eq!(w.balance("A", "WH1").allocated, 0);
}

#[test]
fn an_amendment_is_refused_whole_when_any_part_is_wrong() {
    let mut w = World::new();
    w.receive("A", "WH1", 10);
    w.order("O1", json!([line(1, "A", 2), line(2, "A", 2)]));
    w.given(
        "order.release_to_pick",
        json!({"order": "O1", "wave": "W1"}),
    );
    w.given(
        "order.pick",
        json!({"order": "O1", "lines": [{"line": 2, "qty": 1}]}),
    );
    let amend = |data: serde_json::Value| {
        let mut body = json!({"order": "O1", "reason": "customer_request"});
        body.as_object_mut()
            .unwrap()
            .extend(data.as_object().unwrap().clone());
        rejected(w.when("order.amend", body))
    };
    // Nothing to change.
    assert_eq!(amend(json!({})), code::INVALID_QUANTITY);
    // A picked line cannot be replaced.
    assert_eq!(
        amend(json!({"replace": [{"line": 2, "by": line(3, "A", 2)}]})),
        code::INVALID_TRANSITION
    );
    // A line number the order already has, or one used twice in the amendment.
    assert_eq!(
        amend(json!({"add": [line(1, "A", 1)]})),
        code::ALREADY_EXISTS
    );
    assert_eq!(
        amend(json!({"add": [line(5, "A", 1), line(5, "A", 1)]})),
        code::ALREADY_EXISTS
    );
    // One line changed twice.
    assert_eq!(
        amend(json!({"cancel": [{"line": 1, "qty": 1}],
                     "replace": [{"line": 1, "by": line(3, "A", 1)}]})),
        code::INVALID_QUANTITY
    );
    // An unknown SKU, another currency, a line the order does not have, more than is open.
    assert_eq!(
        amend(json!({"add": [line(3, "NOPE", 1)]})),
        code::UNKNOWN_SKU
    );
    assert_eq!(
        amend(
            json!({"add": [{"line": 3, "sku": "A", "qty": 1, "unit_price": {"amount": "2.00", "currency": "EUR"}}]})
        ),
        code::CURRENCY_MISMATCH
    );
    assert_eq!(
        amend(json!({"replace": [{"line": 9, "by": line(3, "A", 1)}]})),
        code::UNKNOWN_LINE
    );
    assert_eq!(
        amend(json!({"cancel": [{"line": 2, "qty": 2}]})),
        code::INVALID_QUANTITY
    );
    // Good lines beside a bad one change nothing: the whole amendment is refused.
    assert_eq!(
        amend(json!({"add": [line(3, "A", 1)], "cancel": [{"line": 2, "qty": 5}]})),
        code::INVALID_QUANTITY
    );
    assert_eq!(
        w.state.orders[&ledger::values::OrderId::new("O1").unwrap()]
            .lines
            .len(),
        2
    );
    // An order with nothing open cannot be amended; an unknown one is unknown.
    w.order("O2", json!([line(1, "A", 1)]));
    w.given(
        "order.cancel",
        json!({"order": "O2", "reason": "customer_request"}),
    );
    let refused = w.when(
        "order.amend",
        json!({"order": "O2", "reason": "customer_request", "add": [line(2, "A", 1)]}),
    );
    assert_eq!(rejected(refused), code::INVALID_TRANSITION);
    let refused = w.when(
        "order.amend",
        json!({"order": "NOPE", "reason": "customer_request", "add": [line(2, "A", 1)]}),
    );
    assert_eq!(rejected(refused), code::UNKNOWN_ORDER);
}

#[test]
fn an_amendment_states_new_lines_in_pack_units() {
    let mut w = World::new();
    w.given(
        "item.define",
        json!({"sku": "MUG", "base_unit": "each", "pack_sizes": [{"unit": "case", "base_units": 12}]}),
    );
    w.receive("MUG", "WH1", 30);
    w.order("O1", json!([line(1, "MUG", 1)]));
    let d = w.given(
        "order.amend",
        json!({"order": "O1", "reason": "customer_request",
               "add": [{"line": 2, "sku": "MUG", "qty": 2, "unit": "case",
                        "unit_price": {"amount": "3.00", "currency": "GBP"}}]}),
    );
    let Event::LinesAdded(added) = &d[0].1 else {
        panic!("{d:?}")
    };
    assert_eq!(added.lines[0].line.qty.get(), 24);
    assert_eq!(w.balance("MUG", "WH1").allocated, 25);
}

#[test]
fn a_location_takes_on_no_more_than_its_daily_capacity_and_a_cancellation_gives_room_back() {
    let mut w = World::new();
    w.receive("A", "WH1", 20);
    w.receive("A", "WH2", 20);
    let day1 = "2011-01-01T10:00:00Z";
    let day1_later = "2011-01-01T18:00:00Z";
    let day2 = "2011-01-02T08:00:00Z";
    let at = |w: &mut World, kind: &str, data: serde_json::Value, when: &str| {
        w.given_at(kind, data, when)
    };
    let place = |order: &str, qty: i64| json!({"order": order, "channel": "web", "ship_to_region": "UK", "lines": [line(1, "A", qty)]});
    let capacity = |w: &mut World, location: &str, units: serde_json::Value, when: &str| {
        at(
            w,
            "location.set_daily_capacity",
            json!({"location": location, "units": units}),
            when,
        );
    };
    let node = |d: &Decision| -> Vec<String> {
        d.iter()
            .filter_map(|(_, e)| match e {
                Event::StockAllocated(a) => Some(format!("{}:{}", a.location, a.qty.get())),
                _ => None,
            })
            .collect()
    };
    let placed = |w: &mut World, order: &str, qty: i64, when: &str| {
        node(&at(w, "order.place", place(order, qty), when))
    };
    capacity(&mut w, "WH1", json!(5), day1);
    // WH1 (the first by priority) takes 4; then it has room for 1 only, so 3 go to WH2 whole.
    assert_eq!(placed(&mut w, "O1", 4, day1), ["WH1:4"]);
    assert_eq!(placed(&mut w, "O2", 3, day1), ["WH2:3"]);
    let d = at(&mut w, "order.place", place("O3", 1), day1);
    assert_eq!(node(&d), ["WH1:1"]);
    let reason = routed_reason(&d);
    assert!(
        reason.contains("room for 1 more units today (daily capacity 5)"),
        "{reason}"
    );
    // WH1's day is full: a unit it has in stock goes to WH2.
    assert_eq!(placed(&mut w, "O4", 1, day1), ["WH2:1"]);
    // A cancellation the same day gives its 4 units of room back.
    at(
        &mut w,
        "order.cancel",
        json!({"order": "O1", "reason": "customer_request"}),
        day1_later,
    );
    assert_eq!(placed(&mut w, "O5", 4, day1_later), ["WH1:4"]);
    // A new day starts empty.
    assert_eq!(placed(&mut w, "O6", 5, day2), ["WH1:5"]);
    // Both nodes full for the day: what neither can take waits as a backorder.
    capacity(&mut w, "WH2", json!(0), day2);
    let d = at(&mut w, "order.place", place("O7", 2), day2);
    assert_eq!(node(&d), Vec::<String>::new());
    assert_eq!(types(&d), ["order.placed", "order.line_backordered"]);
    // No limit again: WH1 ships as much as it has.
    capacity(&mut w, "WH1", json!(null), day2);
    assert_eq!(placed(&mut w, "O8", 6, day2), ["WH1:6"]);
    // Refused: a location nobody defined; a negative or fractional number of units.
    assert_eq!(
        rejected(w.when(
            "location.set_daily_capacity",
            json!({"location": "NOPE", "units": 5})
        )),
        code::UNKNOWN_LOCATION
    );
    for bad in [json!(-1), json!(2.5), json!("many")] {
        let body = json!({"command_id": uuid::Uuid::now_v7(), "actor": {"id": "a", "role": "admin"},
            "legal_entity": "UK01", "effective_at": day2, "type": "location.set_daily_capacity",
            "data": {"location": "WH1", "units": bad}});
        let error = super::command::decode(body.to_string().as_bytes()).unwrap_err();
        assert!(error.to_string().contains("units"), "{bad}: {error}");
    }
}

#[test]
fn a_location_takes_on_no_more_orders_a_day_than_its_order_capacity() {
    // Goal: WH1 packs at most 2 orders a day. Two orders take it (the second's second line
    // joins it, the same order); the third order goes to WH2; a cancellation frees its order
    // slot; a new day starts empty; the routing reason says how many orders are left.
    let mut w = World::new();
    w.receive("A", "WH1", 50);
    w.receive("A", "WH2", 50);
    w.receive("SAFE", "WH1", 50);
    let day1 = "2011-01-01T10:00:00Z";
    let day2 = "2011-01-02T08:00:00Z";
    let at = |w: &mut World, kind: &str, data: serde_json::Value, when: &str| {
        w.given_at(kind, data, when)
    };
    let nodes = |d: &Decision| -> Vec<String> {
        d.iter()
            .filter_map(|(_, e)| match e {
                Event::StockAllocated(a) => {
                    Some(format!("{}:{}:{}", a.line, a.location, a.qty.get()))
                }
                _ => None,
            })
            .collect()
    };
    let place = |order: &str, lines: serde_json::Value| json!({"order": order, "channel": "web", "ship_to_region": "UK", "lines": lines});
    at(
        &mut w,
        "location.set_daily_capacity",
        json!({"location": "WH1", "orders": 2}),
        day1,
    );
    let d = at(
        &mut w,
        "order.place",
        place("O1", json!([line(1, "A", 1)])),
        day1,
    );
    assert_eq!(nodes(&d), ["1:WH1:1"]);
    let reason = routed_reason(&d);
    assert!(
        reason.contains("room for 2 more orders today (daily capacity 2 orders)"),
        "{reason}"
    );
    let d = at(
        &mut w,
        "order.place",
        place("O2", json!([line(1, "A", 1), line(2, "SAFE", 1)])),
        day1,
    );
    assert_eq!(nodes(&d), ["1:WH1:1", "2:WH1:1"]);
    // One line of A each: where it goes, in turn. WH1 has taken two orders on day 1, so the
    // third goes to WH2; cancelling O1 frees its slot; day 2 starts empty.
    for (order, when, cancel_first, expected) in [
        ("O3", day1, None, "1:WH2:1"),
        ("O4", day1, Some("O1"), "1:WH1:1"),
        ("O5", day2, None, "1:WH1:1"),
        ("O6", day2, None, "1:WH1:1"),
        ("O7", day2, None, "1:WH2:1"),
    ] {
        if let Some(cancelled) = cancel_first {
            at(
                &mut w,
                "order.cancel",
                json!({"order": cancelled, "reason": "customer_request"}),
                when,
            );
        }
        let d = at(
            &mut w,
            "order.place",
            place(order, json!([line(1, "A", 1)])),
            when,
        );
        assert_eq!(nodes(&d), [expected], "{order}");
    }
    // Units and orders together; then no limit of either.
    at(
        &mut w,
        "location.set_daily_capacity",
        json!({"location": "WH1", "units": 100, "orders": null}),
        day2,
    );
    let d = at(
        &mut w,
        "order.place",
        place("O8", json!([line(1, "A", 1)])),
        day2,
    );
    assert_eq!(nodes(&d), ["1:WH1:1"]);
}
