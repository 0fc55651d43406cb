//! Entity keys: how the audit trail names what an event or a command is about
//! (`sku:85123A`, `location:UK-DC`, `order:536365`, `purchase_order:…`, `channel:web`,
//! `supplier:…`, `actor:clerk-7`). Ids appear raw after the colon.

use std::collections::BTreeSet;

/// Catalogue field names and the entity kind they name. Events and commands use the same
/// names, so one table serves both.
const FIELDS: &[(&str, &str)] = &[
    ("sku", "sku"),
    ("location", "location"),
    ("from", "location"),
    ("to", "location"),
    ("order", "order"),
    ("purchase_order", "purchase_order"),
    ("channel", "channel"),
    ("supplier", "supplier"),
    ("suppliers", "supplier"),
];

/// Fields holding lists of lines whose entries mention entities too.
const NESTED: &[&str] = &["lines", "shares"];

/// The entity keys mentioned by the JSON data of an event or command.
pub fn mentioned(data: &serde_json::Value) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    collect(data, &mut keys, 0);
    keys
}

fn collect(data: &serde_json::Value, keys: &mut BTreeSet<String>, depth: usize) {
    let Some(object) = data.as_object() else {
        return;
    };
    for (field, kind) in FIELDS {
        match object.get(*field) {
            Some(serde_json::Value::String(id)) => {
                keys.insert(format!("{kind}:{id}"));
            }
            Some(serde_json::Value::Array(ids)) => {
                keys.extend(
                    ids.iter()
                        .filter_map(|v| v.as_str())
                        .map(|id| format!("{kind}:{id}")),
                );
            }
            _ => {}
        }
    }
    if depth == 0 {
        for nested in NESTED {
            for entry in object
                .get(*nested)
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                collect(entry, keys, depth + 1);
            }
        }
    }
}

/// The entity key of an actor.
pub fn actor(id: &crate::values::ActorId) -> String {
    format!("actor:{id}")
}

#[cfg(test)]
mod tests {
    //! Goal: events name what they are about, including SKUs inside order lines.
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_and_lines_are_found() {
        let data = json!({"order": "536365", "channel": "web", "lines": [{"sku": "85123A"}, {"sku": "71053"}], "from": "A", "to": "B", "qty": 3});
        let keys: Vec<String> = mentioned(&data).into_iter().collect();
        assert_eq!(
            keys,
            [
                "channel:web",
                "location:A",
                "location:B",
                "order:536365",
                "sku:71053",
                "sku:85123A"
            ]
        );
        assert!(mentioned(&json!("text")).is_empty());
    }
}
