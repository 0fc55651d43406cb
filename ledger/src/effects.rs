//! What each stock event does to the figures of a SKU at a location. This is the meaning of the
//! events (docs/EVENTS.md), stated once: the write model and every projector use it, so they
//! cannot disagree on arithmetic.

use crate::events::{Disposition, Event};
use crate::values::{LocationId, LotId};

/// A change to the figures of one SKU at one location, in base units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockDelta {
    pub location: LocationId,
    pub on_hand: i64,
    pub allocated: i64,
    pub reserved: i64,
    pub quality_hold: i64,
    pub in_transit: i64,
}

impl StockDelta {
    /// No change, at `location`.
    pub fn at(location: &LocationId) -> StockDelta {
        StockDelta {
            location: location.clone(),
            on_hand: 0,
            allocated: 0,
            reserved: 0,
            quality_hold: 0,
            in_transit: 0,
        }
    }
}

/// The changes a stock event makes, per location (none for events that move no figure).
pub fn stock_deltas(event: &Event) -> Vec<StockDelta> {
    use Event as E;
    let one = |location: &LocationId, f: &dyn Fn(&mut StockDelta)| {
        let mut d = StockDelta::at(location);
        f(&mut d);
        vec![d]
    };
    match event {
        E::StockReceived(e) => one(&e.location, &|d| d.on_hand = e.qty.get()),
        E::StockReserved(e) => one(&e.location, &|d| d.reserved = e.qty.get()),
        E::ReservationReleased(e) => one(&e.location, &|d| d.reserved = -e.qty.get()),
        E::ReservationExpired(e) => one(&e.location, &|d| d.reserved = -e.qty.get()),
        E::StockAllocated(e) => one(&e.location, &|d| d.allocated = e.qty.get()),
        E::AllocationReleased(e) => one(&e.location, &|d| d.allocated = -e.qty.get()),
        E::StockShipped(e) => one(&e.location, &|d| {
            d.on_hand = -e.qty.get();
            d.allocated = -e.qty.get();
        }),
        E::TransferShipped(e) => {
            let mut from = StockDelta::at(&e.from);
            from.on_hand = -e.qty.get();
            let mut to = StockDelta::at(&e.to);
            to.in_transit = e.qty.get();
            vec![from, to]
        }
        // What was shipped leaves transit; what arrived is on hand (variance = arrived - shipped).
        E::TransferReceived(e) => one(&e.to, &|d| {
            d.in_transit = -(e.qty.get() - e.variance.get());
            d.on_hand = e.qty.get();
        }),
        E::StockAdjusted(e) => one(&e.location, &|d| d.on_hand = e.delta.get()),
        E::StockCounted(e) => one(&e.location, &|d| d.on_hand = e.variance.get()),
        E::QualityHeld(e) => one(&e.location, &|d| d.quality_hold = e.qty.get()),
        E::QualityReleased(e) => one(&e.location, &|d| d.quality_hold = -e.qty.get()),
        E::StockScrapped(e) => one(&e.location, &|d| {
            d.on_hand = -e.qty.get();
            if e.from_quality_hold {
                d.quality_hold = -e.qty.get();
            }
        }),
        E::ReturnReceived(e) => one(&e.location, &|d| {
            d.on_hand = e.qty.get();
            d.quality_hold = e.qty.get();
        }),
        E::ReturnDispositioned(e) => one(&e.location, &|d| {
            d.quality_hold = -e.qty.get();
            if e.disposition != Disposition::Restock {
                d.on_hand = -e.qty.get();
            }
        }),
        _ => Vec::new(),
    }
}

/// A change to the units of one lot at one location: `units` are on the shelf (received, not yet
/// picked, moved away, scrapped or counted out), `held` of them in quality hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotDelta {
    pub location: LocationId,
    pub lot: LotId,
    pub units: i64,
    pub held: i64,
}

/// The changes a stock event makes to the lots it names (none for events without a lot).
/// Picked units leave their lot's shelf units at the pick: they wait for the carrier, not on
/// the shelf, and cannot be picked again. Returned units come back into quality hold.
pub fn lot_deltas(event: &Event) -> Vec<LotDelta> {
    use Event as E;
    let one = |location: &LocationId, lot: &Option<LotId>, units: i64, held: i64| match lot {
        Some(lot) => vec![LotDelta {
            location: location.clone(),
            lot: lot.clone(),
            units,
            held,
        }],
        None => Vec::new(),
    };
    match event {
        E::StockReceived(e) => one(&e.location, &e.lot, e.qty.get(), 0),
        E::StockPicked(e) => one(&e.location, &e.lot, -e.qty.get(), 0),
        E::TransferShipped(e) => one(&e.from, &e.lot, -e.qty.get(), 0),
        E::TransferReceived(e) => one(&e.to, &e.lot, e.qty.get(), 0),
        E::StockAdjusted(e) => one(&e.location, &e.lot, e.delta.get(), 0),
        E::StockCounted(e) => one(&e.location, &e.lot, e.variance.get(), 0),
        E::QualityHeld(e) => one(&e.location, &e.lot, 0, e.qty.get()),
        E::QualityReleased(e) => one(&e.location, &e.lot, 0, -e.qty.get()),
        E::StockScrapped(e) => one(
            &e.location,
            &e.lot,
            -e.qty.get(),
            if e.from_quality_hold { -e.qty.get() } else { 0 },
        ),
        E::ReturnReceived(e) => one(&e.location, &e.lot, e.qty.get(), e.qty.get()),
        E::ReturnDispositioned(e) => one(
            &e.location,
            &e.lot,
            if e.disposition == Disposition::Restock {
                0
            } else {
                -e.qty.get()
            },
            -e.qty.get(),
        ),
        _ => Vec::new(),
    }
}

/// The most units of a SKU one channel may take under the SKU's channel rules, given the SKU's
/// free units over all locations: other channels' ring-fenced quantities are not its to take,
/// and its own share caps it. `rules` yields each rule with whether it is the channel's own.
/// `i64::MAX` when no rule limits the channel. The deciders and the ATS view both use this.
pub fn channel_cap<'a>(
    rules: impl IntoIterator<Item = (bool, &'a crate::events::ChannelAllocationRule)>,
    total_free: i64,
) -> i64 {
    use crate::events::ChannelAllocationRule as Rule;
    use rust_decimal::prelude::ToPrimitive;
    let mut cap = i64::MAX;
    for (own, rule) in rules {
        match rule {
            Rule::RingFenced { qty } if !own => cap = cap.min(total_free - qty.get()),
            Rule::Share { ratio } if own => {
                let share = (rust_decimal::Decimal::from(total_free.max(0)) * ratio.get()).floor();
                cap = cap.min(share.to_i64().unwrap_or(0));
            }
            _ => {}
        }
    }
    cap
}
