//! Who may send what: every command's actor names a role, and the role table says which
//! command types that role may send. A command whose role does not allow it is refused with
//! `forbidden`, and the refusal is recorded like any other (so the attempt shows in the audit
//! trail of the actor and of what it named).
//!
//! The table is JSON, role -> list of patterns: a command type (`order.place`), a family
//! (`stock.*`) or everything (`*`). Roles not in the table may send nothing.

use std::collections::BTreeMap;

use crate::command::Command;
use crate::decide::{Rejection, code};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Roles(BTreeMap<String, Vec<String>>);

impl Default for Roles {
    /// The built-in table: `admin` all; `upstream` (shop and marketplace integrations) master
    /// data, stock and orders (delivery confirmations included), and `clerk` (back office)
    /// the same plus purchasing and working exceptions (assign, resolve, snooze); `buyer`
    /// suppliers and purchasing; `warehouse` receiving, moves, counts, quality, returns,
    /// pick/pack/ship, delivery confirmations and working exceptions; `controller` legal
    /// entities, thresholds, approvals, period close, rates and exception rules; `system` hold
    /// expiry (the processor's own clock); `auditor` nothing.
    fn default() -> Roles {
        let table = [
            ("admin", vec!["*"]),
            (
                "upstream",
                vec![
                    "item.*",
                    "location.*",
                    "channel.*",
                    "supplier.*",
                    "stock.*",
                    "order.*",
                ],
            ),
            (
                "clerk",
                vec![
                    "item.*",
                    "location.*",
                    "channel.*",
                    "supplier.*",
                    "stock.*",
                    "order.*",
                    "purchase.*",
                    "exception.assign",
                    "exception.resolve",
                    "exception.snooze",
                ],
            ),
            ("buyer", vec!["supplier.*", "purchase.*"]),
            (
                "warehouse",
                vec![
                    "stock.receive",
                    "stock.move_bin",
                    "stock.transfer_ship",
                    "stock.transfer_receive",
                    "stock.count",
                    "stock.quality_hold",
                    "stock.quality_release",
                    "stock.scrap",
                    "stock.receive_return",
                    "stock.disposition_return",
                    "order.release_to_pick",
                    "order.pick",
                    "order.pack",
                    "order.ship",
                    "order.confirm_delivery",
                    "exception.assign",
                    "exception.resolve",
                    "exception.snooze",
                ],
            ),
            (
                "controller",
                vec![
                    "legal_entity.*",
                    "policy.*",
                    "approval.*",
                    "period.*",
                    "fx.*",
                    "exception.*",
                ],
            ),
            (
                "system",
                vec![
                    "stock.expire_hold",
                    "order.hold",
                    "order.release",
                    "clock.tick",
                ],
            ),
            ("auditor", vec![]),
        ];
        Roles(
            table
                .into_iter()
                .map(|(role, patterns)| {
                    (
                        role.to_owned(),
                        patterns.into_iter().map(str::to_owned).collect(),
                    )
                })
                .collect(),
        )
    }
}

impl Roles {
    /// Reads a table; every pattern must be `*`, `<family>.*` or a known command type.
    pub fn from_json(text: &str) -> Result<Roles, String> {
        let roles: Roles = serde_json::from_str(text).map_err(|e| {
            format!("role table: {e}; expected {{\"role\": [\"stock.*\", \"order.place\"]}}")
        })?;
        for (role, patterns) in &roles.0 {
            for pattern in patterns {
                let known = pattern == "*"
                    || crate::command::CommandBody::TYPES.iter().any(|t| {
                        t == pattern
                            || pattern
                                .strip_suffix(".*")
                                .is_some_and(|family| t.split('.').next() == Some(family))
                    });
                if !known {
                    return Err(format!(
                        "role table: role `{role}`: `{pattern}` matches no command type; expected `*`, `<family>.*` or one of {}",
                        crate::command::CommandBody::TYPES.join(", ")
                    ));
                }
            }
        }
        Ok(roles)
    }

    /// Whether the table names `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.0.contains_key(role)
    }

    pub fn allows(&self, role: &str, command_type: &str) -> bool {
        self.0.get(role).is_some_and(|patterns| {
            patterns.iter().any(|p| {
                p == "*"
                    || p == command_type
                    || p.strip_suffix(".*").is_some_and(|family| {
                        command_type
                            .strip_prefix(family)
                            .is_some_and(|rest| rest.starts_with('.'))
                    })
            })
        })
    }

    /// `Err(forbidden)` unless the command's actor's role may send it.
    pub fn check(&self, command: &Command) -> Result<(), Rejection> {
        let role = command.actor.role.as_str();
        let kind = command.body.type_name();
        if self.allows(role, kind) {
            return Ok(());
        }
        Err(Rejection {
            code: code::FORBIDDEN,
            message: match self.0.get(role) {
                None => format!(
                    "actor `{}` has role `{role}`, which is not in the role table; no command is allowed",
                    command.actor.id
                ),
                Some(patterns) => format!(
                    "actor `{}` has role `{role}`, which may not send `{kind}` (allowed: {})",
                    command.actor.id,
                    if patterns.is_empty() {
                        "nothing".to_owned()
                    } else {
                        patterns.join(", ")
                    }
                ),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_types_families_and_everything() {
        let roles = Roles::default();
        assert!(roles.allows("admin", "order.refund"));
        assert!(roles.allows("clerk", "stock.receive"));
        assert!(!roles.allows("warehouse", "location.define"));
        assert!(roles.allows("warehouse", "order.ship"));
        assert!(!roles.allows("warehouse", "order.refund"));
        assert!(!roles.allows("auditor", "stock.receive"));
        assert!(!roles.allows("nobody", "stock.receive"));
        // A family pattern does not match a longer family name.
        let roles = Roles::from_json(r#"{"r": ["stock.*"]}"#).unwrap();
        assert!(!roles.allows("r", "stockx.receive"));
    }

    #[test]
    fn a_table_naming_no_command_is_refused() {
        let err = Roles::from_json(r#"{"r": ["stok.*"]}"#).unwrap_err();
        assert!(err.contains("`stok.*` matches no command type"), "{err}");
        let err = Roles::from_json(r#"["stock.*"]"#).unwrap_err();
        assert!(err.contains("role table"), "{err}");
    }
}
