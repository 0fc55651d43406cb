//! Lots and expiry in the deciders. An item that tracks lots or expiry keeps its shelf units by
//! lot (`state::Lot`): every command that takes units off a shelf names the lot, or has one
//! chosen for it (picks, first expiry first); stock past its expiry, or with less shelf life
//! left than a channel wants, is not available to that channel.

use std::collections::BTreeMap;

use ledger::values::{ChannelId, Date, LocationId, LotId, OrderId, Sku};

use crate::decide::{Decider, Rejection, code, reject};
use crate::state::Lot;

/// What a command does to a lot's shelf units at a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LotUse {
    /// Names the lot only (units arrive: the lot must exist).
    Name,
    /// Takes units that are on the shelf and not held, into quality hold (orders that lose
    /// them are routed again by the caller).
    Free(i64),
    /// Takes units that are on the shelf and not held, out of the location: units of a lot
    /// that is not expired may go only as far as orders and holds do not count on them.
    Take(i64),
    /// Takes units out of quality hold.
    Held(i64),
}

impl Decider<'_> {
    /// Whether `sku` keeps its stock by lot: it tracks lots, or expiry.
    pub(crate) fn by_lot(&self, sku: &Sku) -> bool {
        self.state
            .items
            .get(sku)
            .is_some_and(|d| d.value.tracking.lot || d.value.tracking.expiry)
    }

    pub(crate) fn lot(&self, sku: &Sku, lot: &LotId) -> Option<&Lot> {
        self.state
            .stock
            .get(sku)
            .and_then(|s| s.extras().lots.get(lot))
    }

    /// The business day of the command (UTC), against which expiry is judged.
    pub(crate) fn today(&self) -> chrono::NaiveDate {
        self.at.as_datetime().date_naive()
    }

    /// Days of shelf life `channel` wants left.
    pub(crate) fn min_shelf_life(&self, channel: Option<&ChannelId>) -> u32 {
        channel
            .and_then(|c| self.state.shelf_life.get(c))
            .copied()
            .unwrap_or(0)
    }

    /// Checks the lot a command names for units of a lot-kept `sku` at `location`: one is
    /// required, it must have been received, and it must have the units the command takes
    /// (`what`: "to scrap", ...).
    /// Items not kept by lot pass unchecked.
    pub(crate) fn check_lot(
        &self,
        sku: &Sku,
        location: &LocationId,
        lot: Option<&LotId>,
        use_: LotUse,
        what: &str,
    ) -> Result<(), Rejection> {
        if !self.by_lot(sku) {
            return Ok(());
        }
        let Some(lot) = lot else {
            return Err(reject(
                code::LOT_REQUIRED,
                format!("lot: {sku} is kept by lot; name the lot of the units {what}"),
            ));
        };
        let Some(known) = self.lot(sku, lot) else {
            return Err(reject(
                code::UNKNOWN_LOT,
                format!("lot: no lot `{lot}` of {sku} was received"),
            ));
        };
        let here = known.at(location);
        let (n, have, kind) = match use_ {
            LotUse::Name => return Ok(()),
            LotUse::Free(n) | LotUse::Take(n) => (n, here.free(), "on the shelf and not held"),
            LotUse::Held(n) => (n, here.held, "in quality hold"),
        };
        if n > have {
            return Err(reject(
                code::INSUFFICIENT_STOCK,
                format!(
                    "lot: lot {lot} of {sku} at {location} has {} {kind}; {n} needed",
                    have.max(0)
                ),
            ));
        }
        if let LotUse::Take(n) = use_
            && known.fresh_for(self.today(), 0)
            && !self.allows_negative(sku)
        {
            let fresh = self.fresh_free(sku, location);
            if n > fresh {
                return Err(reject(
                    code::INSUFFICIENT_STOCK,
                    format!(
                        "lot: taking {n} {sku} of lot {lot} at {location} would leave orders and holds short: {} units of lots not expired are free there",
                        fresh.max(0)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Units of `sku` at `location` that nothing counts on and that are not expired: free
    /// units less the expired ones (below zero when commitments rest on expired units).
    pub(crate) fn fresh_free(&self, sku: &Sku, location: &LocationId) -> i64 {
        let free = self
            .state
            .stock
            .get(sku)
            .map_or(0, |s| s.balance(location).free());
        free - self.short_dated(sku, location, None)
    }

    /// Free shelf units of `sku` at `location` in lots that are expired, or have less shelf
    /// life left than `channel` wants, on the command's day: units that may not be promised.
    pub(crate) fn short_dated(
        &self,
        sku: &Sku,
        location: &LocationId,
        channel: Option<&ChannelId>,
    ) -> i64 {
        let Some(stock) = self.state.stock.get(sku) else {
            return 0;
        };
        let lots = &stock.extras().lots;
        if lots.is_empty() || !self.by_lot(sku) {
            return 0;
        }
        let (today, min_days) = (self.today(), self.min_shelf_life(channel));
        lots.values()
            .filter(|l| !l.fresh_for(today, min_days))
            .map(|l| l.at(location).free().max(0))
            .sum()
    }

    /// The lot a receipt records: the one named, or, for an item that tracks expiry but not
    /// lots, one per expiry date (named by the date). A lot keeps the expiry of its first
    /// receipt; a receipt stating another is refused.
    pub(crate) fn receipt_lot(
        &self,
        sku: &Sku,
        lot: Option<&LotId>,
        expires_on: Option<Date>,
    ) -> Result<Option<LotId>, Rejection> {
        if !self.by_lot(sku) {
            return Ok(lot.cloned());
        }
        let lot = match (lot, expires_on) {
            (Some(lot), _) => lot.clone(),
            (None, Some(date)) => {
                LotId::new(date.get().to_string()).expect("a date is a valid lot id")
            }
            (None, None) => return Ok(None),
        };
        if let Some(known) = self.lot(sku, &lot)
            && known.expires_on.is_some()
            && known.expires_on != expires_on
        {
            let had = known
                .expires_on
                .map(|d| d.get().to_string())
                .unwrap_or_default();
            return Err(reject(
                code::LOT_EXPIRY_MISMATCH,
                format!(
                    "expires_on: lot {lot} of {sku} expires on {had}; a receipt into it must state the same date"
                ),
            ));
        }
        Ok(Some(lot))
    }

    /// The lots a pick of `n` units of `sku` at `location` for an order of `channel` takes:
    /// the named lot, or the lots that expire first among those with the channel's shelf life
    /// left (first expired, first out). `taken` holds what earlier lines of the same pick
    /// took (lot ids are a SKU's own: keyed by SKU too), and is updated.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pick_lots(
        &self,
        sku: &Sku,
        location: &LocationId,
        channel: &ChannelId,
        named: Option<&LotId>,
        n: i64,
        taken: &mut BTreeMap<(Sku, LocationId, LotId), i64>,
        what: &str,
    ) -> Result<Vec<(LotId, i64)>, Rejection> {
        let (today, min_days) = (self.today(), self.min_shelf_life(Some(channel)));
        let key = |lot: &LotId| (sku.clone(), location.clone(), lot.clone());
        let left_in = |lot: &LotId, l: &Lot| {
            l.at(location).free() - taken.get(&key(lot)).copied().unwrap_or(0)
        };
        let wants = match min_days {
            0 => String::from("not expired"),
            d => format!("with at least {d} days of shelf life left for channel {channel}"),
        };
        if let Some(lot) = named {
            let Some(l) = self.lot(sku, lot) else {
                return Err(reject(
                    code::UNKNOWN_LOT,
                    format!("{what}.lot: no lot `{lot}` of {sku} was received"),
                ));
            };
            if !l.fresh_for(today, min_days) {
                let expiry = l
                    .expires_on
                    .map(|d| d.get().to_string())
                    .unwrap_or_default();
                return Err(reject(
                    code::LOT_EXPIRED,
                    format!(
                        "{what}.lot: lot {lot} of {sku} expires on {expiry}; a pick on {today} needs a lot {wants}"
                    ),
                ));
            }
            let have = left_in(lot, l);
            if n > have {
                return Err(reject(
                    code::INSUFFICIENT_STOCK,
                    format!(
                        "{what}: picking {n} {sku} of lot {lot} at {location}: {} on the shelf and not held",
                        have.max(0)
                    ),
                ));
            }
            *taken.entry(key(lot)).or_default() += n;
            return Ok(vec![(lot.clone(), n)]);
        }
        let lots = self
            .state
            .stock
            .get(sku)
            .map(|s| &s.extras().lots)
            .into_iter()
            .flatten();
        let mut fresh: Vec<(Option<Date>, &LotId, i64)> = lots
            .filter(|(_, l)| l.fresh_for(today, min_days))
            .map(|(id, l)| (l.expires_on, id, left_in(id, l)))
            .filter(|(_, _, have)| *have > 0)
            .collect();
        // First expiry first; lots without an expiry last; then by id (deterministic).
        fresh.sort_by_key(|(expiry, id, _)| (expiry.is_none(), *expiry, (*id).clone()));
        let mut out = Vec::new();
        let mut left = n;
        for (_, id, have) in fresh {
            if left == 0 {
                break;
            }
            let take = have.min(left);
            left -= take;
            *taken.entry(key(id)).or_default() += take;
            out.push((id.clone(), take));
        }
        if left > 0 {
            let found = n - left;
            return Err(reject(
                code::INSUFFICIENT_STOCK,
                format!(
                    "{what}: picking {n} {sku} at {location} on {today} needs lots {wants}; they hold {found}"
                ),
            ));
        }
        Ok(out)
    }

    /// The lot a return of `sku` on `order` came from: the one named, which must have been
    /// picked for the order, or the only lot picked for it.
    pub(crate) fn return_lot(
        &self,
        sku: &Sku,
        order: &OrderId,
        named: Option<&LotId>,
    ) -> Result<Option<LotId>, Rejection> {
        if !self.by_lot(sku) {
            return Ok(named.cloned());
        }
        let picked: Vec<&LotId> = self
            .state
            .stock
            .get(sku)
            .map(|s| &s.extras().lots)
            .into_iter()
            .flatten()
            .filter(|(_, l)| l.picked_for.get(order).is_some_and(|n| *n > 0))
            .map(|(id, _)| id)
            .collect();
        match named {
            Some(lot) if picked.contains(&lot) => Ok(Some(lot.clone())),
            Some(lot) => Err(reject(
                code::UNKNOWN_LOT,
                format!(
                    "lot: no unit of lot `{lot}` of {sku} was picked for order {order} (picked: {})",
                    list(&picked)
                ),
            )),
            None if picked.len() == 1 => Ok(Some(picked[0].clone())),
            None => Err(reject(
                code::LOT_REQUIRED,
                format!(
                    "lot: {sku} is kept by lot and order {order} was picked from lots {}; name the lot of the returned units",
                    list(&picked)
                ),
            )),
        }
    }
}

fn list(lots: &[&LotId]) -> String {
    if lots.is_empty() {
        return "none".into();
    }
    lots.iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
