//! The one way views spell their row keys: `<kind>.<part>.<part>...`, each part an external id
//! escaped as a subject token (`ledger::subject::escape_token`). A key is therefore a valid KV
//! key, never holds a separator inside a part (`A/B` at `C` and `A` at `B/C` are different
//! keys), and reads back to the same parts. Keys of one kind sort by their parts' tokens.

use ledger::subject::{escape_token, unescape_token};

/// The key of kind `kind` (a fixed word of letters, digits, `_` or `-`) with `parts`.
pub fn key<S: AsRef<str>>(kind: &str, parts: &[S]) -> String {
    debug_assert!(
        !kind.is_empty() && !kind.contains('.'),
        "a key kind is one token: {kind}"
    );
    let mut key = String::with_capacity(kind.len() + parts.len() * 12);
    key.push_str(kind);
    for part in parts {
        key.push('.');
        key.push_str(&escape_token(part.as_ref()));
    }
    key
}

/// The parts of `key` if it is of kind `kind` with exactly `count` parts.
pub fn parts(key: &str, kind: &str, count: usize) -> Option<Vec<String>> {
    let rest = key.strip_prefix(kind)?.strip_prefix('.')?;
    let parts: Vec<String> = rest
        .split('.')
        .map(|t| unescape_token(t).ok())
        .collect::<Option<_>>()?;
    (parts.len() == count).then_some(parts)
}

/// The prefix every key of `kind` whose first parts are `parts` starts with.
pub fn prefix<S: AsRef<str>>(kind: &str, parts: &[S]) -> String {
    key(kind, parts) + "."
}

/// A key's shape, as a view declares it (for its schema and docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KeyShape {
    pub kind: &'static str,
    pub parts: &'static [&'static str],
    pub row: &'static str,
}

#[cfg(test)]
mod tests {
    //! Goal: keys round-trip for any ids, and ids that contain separators never collide.
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn separators_inside_ids_do_not_collide() {
        assert_ne!(
            key("value", &["E", "A/B", "C"]),
            key("value", &["E", "A", "B/C"])
        );
        assert_ne!(key("loc", &["A.B", "C"]), key("loc", &["A", "B.C"]));
        assert_eq!(key("loc", &["A.B", "C"]), "loc.A=2EB.C");
        assert_eq!(parts("loc.A=2EB.C", "loc", 2).unwrap(), vec!["A.B", "C"]);
        assert!(parts("loc.A.B.C", "loc", 2).is_none());
        assert!(parts("chan.A.B", "loc", 2).is_none());
    }

    proptest! {
        #[test]
        fn any_parts_round_trip(a in "\\PC{1,12}", b in "\\PC{1,12}") {
            let k = key("x", &[&a, &b]);
            prop_assert_eq!(parts(&k, "x", 2).unwrap(), vec![a, b]);
        }
    }
}
