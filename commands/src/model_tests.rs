//! Goal: random sequences of commands never break the stock model. A trivial reference model
//! counts what the accepted commands say happened (received, held, adjusted, transferred,
//! ordered, cancelled, shipped); after every step the write model must agree with it, its
//! aggregates must agree with each other, and no location may ever be oversold. `FRESH` is
//! kept by lot with expiry dates around the commands' day: its lots' units add up to what is
//! on hand, and every pick takes the lots that expire first among those not expired.

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::json;

use crate::decide_tests::World;

const SKUS: [&str; 3] = ["A", "B", "FRESH"];
/// Expiry dates of `FRESH` receipts: one already past on the commands' day (2011-01-01).
const EXPIRIES: [&str; 3] = ["2010-12-31", "2011-01-05", "2011-02-01"];
const LOCATIONS: [&str; 2] = ["WH1", "WH2"];

#[derive(Debug, Clone)]
enum Op {
    Receive {
        sku: usize,
        location: usize,
        qty: i64,
        expiry: usize,
    },
    Place {
        sku: usize,
        qty: i64,
        complete: bool,
        priority: u32,
    },
    Cancel {
        order: usize,
    },
    Fulfil {
        order: usize,
    },
    Allocate {
        order: usize,
    },
    Hold {
        sku: usize,
        location: usize,
        qty: i64,
    },
    ReleaseHold {
        hold: usize,
    },
    AdjustDown {
        sku: usize,
        location: usize,
        qty: i64,
        lot: usize,
    },
    QualityHold {
        sku: usize,
        location: usize,
        qty: i64,
        lot: usize,
    },
    Transfer {
        sku: usize,
        qty: i64,
        lot: usize,
    },
    TransferReceive {
        transfer: usize,
        short: i64,
    },
    /// `order.amend`: the order's current line replaced by one of the same SKU with `extra`
    /// more units than it has open (its stock freed for the new line in the same batch).
    Amend {
        order: usize,
        extra: i64,
    },
    /// A count that finds `counted` (often less than is allocated).
    Count {
        sku: usize,
        location: usize,
        counted: i64,
        lot: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let sku = 0..SKUS.len();
    let location = 0..LOCATIONS.len();
    let lot = 0usize..4;
    prop_oneof![
        (sku.clone(), location.clone(), 1i64..20, 0..EXPIRIES.len()).prop_map(
            |(sku, location, qty, expiry)| Op::Receive {
                sku,
                location,
                qty,
                expiry
            }
        ),
        (sku.clone(), 1i64..15, any::<bool>(), 1u32..4).prop_map(
            |(sku, qty, complete, priority)| Op::Place {
                sku,
                qty,
                complete,
                priority
            }
        ),
        (0usize..40).prop_map(|order| Op::Cancel { order }),
        (0usize..40).prop_map(|order| Op::Fulfil { order }),
        (0usize..40).prop_map(|order| Op::Allocate { order }),
        (0usize..40, 0i64..4).prop_map(|(order, extra)| Op::Amend { order, extra }),
        (sku.clone(), location.clone(), 1i64..8).prop_map(|(sku, location, qty)| Op::Hold {
            sku,
            location,
            qty
        }),
        (0usize..20).prop_map(|hold| Op::ReleaseHold { hold }),
        (sku.clone(), location.clone(), 1i64..6, lot.clone()).prop_map(
            |(sku, location, qty, lot)| Op::AdjustDown {
                sku,
                location,
                qty,
                lot
            }
        ),
        (sku.clone(), location.clone(), 1i64..4, lot.clone()).prop_map(
            |(sku, location, qty, lot)| Op::QualityHold {
                sku,
                location,
                qty,
                lot
            }
        ),
        (sku.clone(), 1i64..6, lot.clone()).prop_map(|(sku, qty, lot)| Op::Transfer {
            sku,
            qty,
            lot
        }),
        (0usize..20, 0i64..2).prop_map(|(transfer, short)| Op::TransferReceive { transfer, short }),
        (sku.clone(), location.clone(), 0i64..12, lot).prop_map(|(sku, location, counted, lot)| {
            Op::Count {
                sku,
                location,
                counted,
                lot,
            }
        }),
    ]
}

/// What the accepted commands say, per SKU, in total over locations.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    on_hand: i64,
    reserved: i64,
    quality_hold: i64,
    in_transit: i64,
    ordered: i64,
    cancelled: i64,
    shipped: i64,
}

#[derive(Default)]
struct Reference {
    receipts: usize,
    counts: HashMap<usize, Counts>,
    orders: Vec<(String, usize, i64)>,
    holds: Vec<(String, usize, i64, bool)>,
    transfers: Vec<(String, usize, i64, bool)>,
}

fn cost() -> serde_json::Value {
    json!({"amount": "1.00", "currency": "GBP"})
}

/// An order's last line: the one still open after any replacements (each order has one SKU).
fn current_line(world: &World, id: &str) -> (u32, crate::state::LineState) {
    let (n, line) = world.state.orders[&ledger::values::OrderId::new(id).unwrap()]
        .lines
        .iter()
        .last()
        .expect("an order has lines");
    (*n, line.clone())
}

/// `FRESH`'s lot number `n` (of those with units at `location`, in id order), for commands
/// that name one; `None` for other SKUs or when it has none there.
fn lot_of(world: &World, sku: usize, location: &str, n: usize) -> Option<String> {
    if SKUS[sku] != "FRESH" {
        return None;
    }
    let stock = world
        .state
        .stock
        .get(&ledger::values::Sku::new("FRESH").unwrap())?;
    let location = ledger::values::LocationId::new(location).unwrap();
    let lots: Vec<String> = stock
        .extras()
        .lots
        .iter()
        .filter(|(_, l)| l.at.contains_key(&location))
        .map(|(id, _)| id.to_string())
        .collect();
    (!lots.is_empty()).then(|| lots[n % lots.len()].clone())
}

/// Adds `lot` to a command's data when there is one.
fn with_lot(mut data: serde_json::Value, lot: Option<String>) -> serde_json::Value {
    if let Some(lot) = lot {
        data["lot"] = json!(lot);
    }
    data
}

/// The lots a pick of `FRESH` at each location should take, first expiry first among the lots
/// not expired on the commands' day (2011-01-01), by the reference's own reckoning.
fn fefo(world: &World, picks: &[(String, i64)]) -> Vec<(String, String, i64)> {
    let stock = &world.state.stock[&ledger::values::Sku::new("FRESH").unwrap()];
    let today = chrono::NaiveDate::from_ymd_opt(2011, 1, 1).unwrap();
    let mut out = Vec::new();
    for (location, n) in picks {
        let at = ledger::values::LocationId::new(location.as_str()).unwrap();
        let mut lots: Vec<(chrono::NaiveDate, String, i64)> = stock
            .extras()
            .lots
            .iter()
            .filter_map(|(id, l)| {
                let expiry = l.expires_on.expect("FRESH lots have an expiry").get();
                let free = l.at(&at).units - l.at(&at).held;
                (expiry >= today && free > 0).then(|| (expiry, id.to_string(), free))
            })
            .collect();
        lots.sort();
        let mut left = *n;
        for (_, id, free) in lots {
            if left == 0 {
                break;
            }
            let take = free.min(left);
            left -= take;
            out.push((location.clone(), id, take));
        }
    }
    out
}

fn run(world: &mut World, reference: &mut Reference, op: &Op) {
    let accepted = |world: &mut World, kind: &str, data: serde_json::Value| -> bool {
        match world.when(kind, data) {
            Ok(decision) => {
                world.apply(&decision);
                true
            }
            Err(_) => false,
        }
    };
    match *op {
        Op::Receive {
            sku,
            location,
            qty,
            expiry,
        } => {
            let mut data = json!({"sku": SKUS[sku], "location": LOCATIONS[location], "qty": qty, "unit_cost": cost()});
            if SKUS[sku] == "FRESH" {
                reference.receipts += 1;
                data["lot"] = json!(format!("R{}", reference.receipts));
                data["expires_on"] = json!(EXPIRIES[expiry]);
            }
            if accepted(world, "stock.receive", data) {
                reference.counts.entry(sku).or_default().on_hand += qty;
            }
        }
        Op::Place {
            sku,
            qty,
            complete,
            priority,
        } => {
            let id = format!("O{}", reference.orders.len());
            let policy = if complete { "ShipComplete" } else { "Partial" };
            let lines = json!([{"line": 1, "sku": SKUS[sku], "qty": qty, "unit_price": {"amount": "2", "currency": "GBP"}}]);
            let data = json!({"order": id, "channel": "web", "ship_to_region": "UK", "policy": policy, "priority": priority, "lines": lines});
            if accepted(world, "order.place", data) {
                reference.counts.entry(sku).or_default().ordered += qty;
                reference.orders.push((id, sku, qty));
            }
        }
        Op::Cancel { order } => {
            let Some((id, sku, _)) = reference.orders.get(order).cloned() else {
                return;
            };
            let cancellable: i64 = world.state.orders
                [&ledger::values::OrderId::new(id.as_str()).unwrap()]
                .lines
                .values()
                .map(|l| l.qty - l.shipped - l.cancelled - l.picked_total())
                .sum();
            if accepted(
                world,
                "order.cancel",
                json!({"order": id, "reason": "test"}),
            ) {
                reference.counts.entry(sku).or_default().cancelled += cancellable;
            }
        }
        Op::Allocate { order } => {
            if let Some((id, _, _)) = reference.orders.get(order).cloned() {
                accepted(world, "order.allocate", json!({"order": id}));
            }
        }
        Op::Fulfil { order } => {
            let Some((id, sku, _)) = reference.orders.get(order).cloned() else {
                return;
            };
            let (n, line) = current_line(world, &id);
            let pickable = line.allocated_total() - line.picked_total();
            let package = format!("P{}-{}", id, line.shipped);
            let released = accepted(
                world,
                "order.release_to_pick",
                json!({"order": id, "wave": "W"}),
            );
            let pick = json!({"order": id, "lines": [{"line": n, "qty": pickable}]});
            let picked = released
                && match world.when("order.pick", pick) {
                    Ok(decision) => {
                        if SKUS[sku] == "FRESH" {
                            let unpicked: Vec<(String, i64)> = line
                                .allocated
                                .iter()
                                .map(|(at, a)| {
                                    (
                                        at.to_string(),
                                        a - line.picked.get(at).copied().unwrap_or(0),
                                    )
                                })
                                .filter(|(_, n)| *n > 0)
                                .collect();
                            let took: Vec<(String, String, i64)> = decision
                                .iter()
                                .filter_map(|(_, e)| match e {
                                    ledger::events::Event::StockPicked(p) => Some((
                                        p.location.to_string(),
                                        p.lot.as_ref().expect("FRESH picks name a lot").to_string(),
                                        p.qty.get(),
                                    )),
                                    _ => None,
                                })
                                .collect();
                            assert_eq!(took, fefo(world, &unpicked), "first expiry first out");
                        }
                        world.apply(&decision);
                        true
                    }
                    Err(_) => false,
                };
            let shipped = picked
                && accepted(
                    world,
                    "order.pack",
                    json!({"order": id, "package": package, "lines": [{"line": n, "qty": pickable}]}),
                )
                && accepted(
                    world,
                    "order.ship",
                    json!({"order": id, "package": package, "carrier": "RM", "tracking": "T", "freight_cost": cost()}),
                );
            if shipped {
                let c = reference.counts.entry(sku).or_default();
                c.shipped += pickable;
                c.on_hand -= pickable;
            }
        }
        Op::Amend { order, extra } => {
            let Some((id, sku, _)) = reference.orders.get(order).cloned() else {
                return;
            };
            let (n, line) = current_line(world, &id);
            let open = line.qty - line.cancelled;
            let qty = open + extra;
            let by = json!({"line": n + 1, "sku": SKUS[sku], "qty": qty, "unit_price": {"amount": "2", "currency": "GBP"}});
            if qty > 0
                && accepted(
                    world,
                    "order.amend",
                    json!({"order": id, "reason": "test", "replace": [{"line": n, "by": by}]}),
                )
            {
                let c = reference.counts.entry(sku).or_default();
                c.ordered += qty;
                c.cancelled += open;
            }
        }
        Op::Hold { sku, location, qty } => {
            let id = format!("H{}", reference.holds.len());
            let data = json!({"sku": SKUS[sku], "hold": id, "location": LOCATIONS[location], "qty": qty, "ttl_seconds": 60});
            if accepted(world, "stock.place_hold", data) {
                reference.counts.entry(sku).or_default().reserved += qty;
                reference.holds.push((id, sku, qty, false));
            }
        }
        Op::ReleaseHold { hold } => {
            let Some((id, sku, qty, false)) = reference.holds.get(hold).cloned() else {
                return;
            };
            if accepted(
                world,
                "stock.release_hold",
                json!({"sku": SKUS[sku], "hold": id}),
            ) {
                reference.counts.entry(sku).or_default().reserved -= qty;
                reference.holds[hold].3 = true;
            }
        }
        Op::Count {
            sku,
            location,
            counted,
            lot,
        } => {
            let data = with_lot(
                json!({"sku": SKUS[sku], "location": LOCATIONS[location], "counted": counted}),
                lot_of(world, sku, LOCATIONS[location], lot),
            );
            if let Ok(decision) = world.when("stock.count", data) {
                // Event by event: the stock's invariants hold after each one, as `erp verify`
                // checks them.
                let code = ledger::values::Sku::new(SKUS[sku]).unwrap();
                for (subject, e) in &decision {
                    if let ledger::events::Event::StockCounted(c) = e {
                        reference.counts.entry(sku).or_default().on_hand += c.variance.get();
                    }
                    world.apply(&vec![(subject.clone(), e.clone())]);
                    assert_eq!(
                        world.state.invariant_violation(&code),
                        None,
                        "after {} of {decision:?}",
                        e.event_type().name()
                    );
                }
            }
        }
        Op::AdjustDown {
            sku,
            location,
            qty,
            lot,
        } => {
            let data = with_lot(
                json!({"sku": SKUS[sku], "location": LOCATIONS[location], "delta": -qty, "reason": "damaged"}),
                lot_of(world, sku, LOCATIONS[location], lot),
            );
            if accepted(world, "stock.adjust", data) {
                reference.counts.entry(sku).or_default().on_hand -= qty;
            }
        }
        Op::QualityHold {
            sku,
            location,
            qty,
            lot,
        } => {
            let data = with_lot(
                json!({"sku": SKUS[sku], "location": LOCATIONS[location], "qty": qty, "reason": "inspect"}),
                lot_of(world, sku, LOCATIONS[location], lot),
            );
            // A lot's hold may take back allocations (routed again or backordered): the
            // reference counts only the hold.
            if accepted(world, "stock.quality_hold", data) {
                reference.counts.entry(sku).or_default().quality_hold += qty;
            }
        }
        Op::Transfer { sku, qty, lot } => {
            let id = format!("T{}", reference.transfers.len());
            let data = with_lot(
                json!({"sku": SKUS[sku], "transfer": id, "from": "WH1", "to": "WH2", "qty": qty}),
                lot_of(world, sku, "WH1", lot),
            );
            if accepted(world, "stock.transfer_ship", data) {
                let c = reference.counts.entry(sku).or_default();
                c.on_hand -= qty;
                c.in_transit += qty;
                reference.transfers.push((id, sku, qty, false));
            }
        }
        Op::TransferReceive { transfer, short } => {
            let Some((id, sku, qty, false)) = reference.transfers.get(transfer).cloned() else {
                return;
            };
            let arrived = (qty - short).max(0);
            if accepted(
                world,
                "stock.transfer_receive",
                json!({"sku": SKUS[sku], "transfer": id, "qty": arrived}),
            ) {
                let c = reference.counts.entry(sku).or_default();
                c.in_transit -= qty;
                c.on_hand += arrived;
                reference.transfers[transfer].3 = true;
            }
        }
    }
}

fn check(world: &World, reference: &Reference) -> Result<(), TestCaseError> {
    for (i, sku_code) in SKUS.iter().enumerate() {
        let sku = ledger::values::Sku::new(*sku_code).unwrap();
        prop_assert_eq!(world.state.invariant_violation(&sku), None);
        let expected = reference.counts.get(&i).copied().unwrap_or_default();
        let mut actual = Counts::default();
        let mut allocated_at_locations = 0;
        for location in LOCATIONS {
            let b = world.balance(sku_code, location);
            prop_assert!(
                b.allocated + b.reserved + b.quality_hold <= b.on_hand,
                "oversold {sku_code} at {location}: {b:?}"
            );
            actual.on_hand += b.on_hand;
            actual.reserved += b.reserved;
            actual.quality_hold += b.quality_hold;
            actual.in_transit += b.in_transit;
            allocated_at_locations += b.allocated;
        }
        let (mut allocated_on_orders, mut backordered) = (0, 0);
        let lines: Vec<_> = reference
            .orders
            .iter()
            .filter(|(_, s, _)| *s == i)
            .flat_map(|(order, _, _)| {
                world.state.orders[&ledger::values::OrderId::new(order.as_str()).unwrap()]
                    .lines
                    .values()
                    .map(move |line| (order, line))
            })
            .collect();
        for &(order, line) in &lines {
            allocated_on_orders += line.allocated_total();
            backordered += line.backordered;
            actual.shipped += line.shipped;
            actual.cancelled += line.cancelled;
            prop_assert_eq!(
                line.qty,
                line.allocated_total() + line.backordered + line.shipped + line.cancelled,
                "order {} does not add up: {:?}",
                order,
                line
            );
        }
        actual.ordered = expected.ordered;
        prop_assert_eq!(actual, expected, "{}", sku_code);
        prop_assert_eq!(
            allocated_at_locations,
            allocated_on_orders,
            "stock and orders disagree on allocated {}",
            sku_code
        );
        if *sku_code == "FRESH"
            && let Some(stock) = world.state.stock.get(&sku)
        {
            for location in LOCATIONS {
                let at = ledger::values::LocationId::new(location).unwrap();
                let in_lots: i64 = stock.extras().lots.values().map(|l| l.at(&at).units).sum();
                let held: i64 = stock.extras().lots.values().map(|l| l.at(&at).held).sum();
                let picked: i64 = lines
                    .iter()
                    .map(|(_, l)| l.picked.get(&at).copied().unwrap_or(0))
                    .sum();
                let b = world.balance(sku_code, location);
                prop_assert_eq!(in_lots + picked, b.on_hand, "FRESH's lots at {}", location);
                prop_assert_eq!(held, b.quality_hold, "FRESH's held lots at {}", location);
            }
        }
        let indexed: i64 = world
            .state
            .backorders
            .get(&sku)
            .map_or(0, |b| b.values().sum());
        prop_assert_eq!(indexed, backordered, "backorder index of {}", sku_code);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_commands_agree_with_the_reference_model_and_never_oversell(ops in proptest::collection::vec(op(), 1..80)) {
        let mut world = World::new();
        world.given("item.define", json!({"sku": "B"}));
        world.given(
            "item.define",
            json!({"sku": "FRESH", "tracking": {"lot": true, "serial": false, "expiry": true}}),
        );
        let mut reference = Reference::default();
        for op in &ops {
            run(&mut world, &mut reference, op);
            check(&world, &reference)?;
        }
    }
}
