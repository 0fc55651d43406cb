//! The ATS view with lots: lot figures per location, units past their expiry leaving what is
//! available as the business date passes it, and channels that want shelf life left.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::ats::Ats;
use crate::books_tests::{gbp, recorded_on};
use crate::view::Model;

fn food() -> Value {
    json!({"type": "item.defined", "data": {"sku": "FOOD", "description": "", "base_unit": "each",
        "pack_sizes": [], "tracking": {"lot": true, "serial": false, "expiry": true},
        "reorder_point": 0, "safety_stock": 0, "lead_time_days": 0, "min_order_qty": 0,
        "suppliers": [], "cost_method": "Fifo", "allow_negative": false}})
}

fn receipt(sku: &str, lot: &str, expires_on: &str, qty: i64) -> Value {
    json!({"type": "stock.received", "data": {"sku": sku, "location": "WH1", "bin": null,
        "lot": lot, "expires_on": expires_on, "serials": [], "qty": qty, "unit_cost": gbp("1.00"),
        "purchase": null}})
}

struct Story {
    ats: Ats,
    seq: u64,
}

impl Story {
    fn then(&mut self, at: &str, event: Value) -> BTreeSet<String> {
        self.seq += 1;
        let mut changed = BTreeSet::new();
        self.ats
            .apply(&recorded_on(self.seq, at, event), &mut changed);
        changed
    }

    fn row(&self) -> crate::ats::AtsRow {
        self.ats.row("loc.FOOD.WH1").cloned().expect("a row")
    }

    fn channel(&self, channel: &str) -> i64 {
        let value = self
            .ats
            .value(&format!("chan.FOOD.{channel}"))
            .expect("a row");
        value["available_to_sell"].as_i64().expect("a figure")
    }
}

#[test]
fn expired_units_leave_available_when_the_business_date_passes_their_expiry() {
    let mut s = Story {
        ats: Ats::default(),
        seq: 0,
    };
    const DAY1: &str = "2011-01-10T09:00:00Z";
    s.then(DAY1, food());
    s.then(
        DAY1,
        json!({"type": "channel.defined", "data": {"channel": "amazon", "name": "",
        "fee_rate": "0.15", "reservation_policy": "None"}}),
    );
    s.then(DAY1, receipt("FOOD", "L-LATE", "2011-03-01", 5));
    s.then(DAY1, receipt("FOOD", "L-EARLY", "2011-01-20", 5));
    s.then(
        DAY1,
        json!({"type": "stock.allocated", "data": {"sku": "FOOD", "order": "O1",
        "line": 1, "location": "WH1", "qty": 3}}),
    );
    s.then(
        DAY1,
        json!({"type": "stock.picked", "data": {"sku": "FOOD", "order": "O1",
        "line": 1, "location": "WH1", "bin": null, "lot": "L-EARLY", "qty": 3}}),
    );
    let row = s.row();
    assert_eq!(
        (row.on_hand, row.allocated, row.expired, row.available),
        (10, 3, 0, 7)
    );
    assert_eq!(row.lots["L-EARLY"].units, 2);
    assert_eq!(
        row.lots["L-EARLY"].expires_on.as_deref(),
        Some("2011-01-20")
    );

    // The 20th is L-EARLY's last day; any event of the 21st passes it.
    s.then(
        "2011-01-20T23:00:00Z",
        receipt("OTHER", "X", "2012-01-01", 1),
    );
    assert_eq!(s.row().expired, 0);
    let changed = s.then(
        "2011-01-21T00:10:00Z",
        receipt("OTHER", "X", "2012-01-01", 1),
    );
    assert!(changed.contains("loc.FOOD.WH1"), "{changed:?}");
    assert!(changed.contains("chan.FOOD.amazon"), "{changed:?}");
    let row = s.row();
    assert_eq!((row.expired, row.available), (2, 5));
    assert_eq!(s.channel("amazon"), 5);

    // A channel that wants 45 days left may not have L-LATE (good through 2011-03-01).
    s.then(
        "2011-01-21T01:00:00Z",
        json!({"type": "channel.shelf_life_set",
        "data": {"channel": "amazon", "min_days": 45}}),
    );
    assert_eq!(s.channel("amazon"), 0);
    s.then(
        "2011-01-21T01:00:00Z",
        json!({"type": "channel.shelf_life_set",
        "data": {"channel": "amazon", "min_days": 30}}),
    );
    assert_eq!(s.channel("amazon"), 5);

    // Quarantined expired units are in quality hold, no longer counted as expired.
    s.then(
        "2011-01-21T02:00:00Z",
        json!({"type": "stock.quality_held", "data": {"sku": "FOOD",
        "location": "WH1", "lot": "L-EARLY", "qty": 2, "reason": "expired"}}),
    );
    let row = s.row();
    assert_eq!((row.quality_hold, row.expired, row.available), (2, 0, 5));
    s.then("2011-01-21T03:00:00Z", json!({"type": "stock.scrapped", "data": {"sku": "FOOD",
        "location": "WH1", "lot": "L-EARLY", "qty": 2, "reason": "expired", "from_quality_hold": true}}));
    assert!(!s.row().lots.contains_key("L-EARLY"));
}
