//! How subjects are spelled. Only this module knows it.
//!
//! A ledger subject is `<prefix>.<kind>.<token>`: `led.sku.85123A`, `led.ord.536365`.
//! The token is the external id escaped reversibly: ASCII letters, digits, `-` and `_` stand for
//! themselves; every other byte of the UTF-8 text becomes `=` and two upper-case hex digits.
//! So `BANK CHARGES` is `BANK=20CHARGES`, `A.B*C>` is `A=2EB=2AC=3E`, case is preserved, and a
//! token never holds `.`, `*`, `>`, whitespace or non-ASCII, is never empty, and is also a
//! valid NATS KV key.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::values::{
    ChannelId, EntityId, LocationId, OrderId, PurchaseOrderId, Sku, SupplierId, ValueError,
};

/// The escape byte.
/// `=` is legal in NATS subject tokens and in KV keys, and rare in business codes.
const ESCAPE: u8 = b'=';

/// Escapes an id into one subject token. Never empty for non-empty input.
pub fn escape_token(id: &str) -> String {
    let mut token = String::with_capacity(id.len());
    for &b in id.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            token.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            token.push(ESCAPE as char);
            token.push(HEX[usize::from(b >> 4)] as char);
            token.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
    token
}

/// Why a token or subject could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject token `{token}`: {problem}")]
    Token {
        token: String,
        problem: &'static str,
    },
    #[error("subject `{subject}`: {problem}")]
    Subject {
        subject: String,
        problem: &'static str,
    },
    #[error("subject `{subject}`: {source}")]
    Value {
        subject: String,
        #[source]
        source: ValueError,
    },
}

/// Reverses `escape_token`. Refuses anything `escape_token` cannot have produced, so each id
/// has exactly one spelling.
pub fn unescape_token(token: &str) -> Result<String, SubjectError> {
    let bad = |problem| SubjectError::Token {
        token: token.to_owned(),
        problem,
    };
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == ESCAPE {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or_else(|| bad("truncated escape"))?;
            let digit = |h: u8| match h {
                b'0'..=b'9' => Some(h - b'0'),
                b'A'..=b'F' => Some(h - b'A' + 10),
                _ => None,
            };
            let (Some(hi), Some(lo)) = (digit(hex[0]), digit(hex[1])) else {
                return Err(bad("escape is not two upper-case hex digits"));
            };
            let decoded = hi << 4 | lo;
            if decoded.is_ascii_alphanumeric() || decoded == b'-' || decoded == b'_' {
                return Err(bad("escapes a byte that is never escaped"));
            }
            out.push(decoded);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b);
            i += 1;
        } else {
            return Err(bad("holds a byte that must be escaped"));
        }
    }
    if out.is_empty() {
        return Err(bad("is empty"));
    }
    String::from_utf8(out).map_err(|_| bad("does not decode to UTF-8"))
}

/// The aggregate an event belongs to. Each has its own hash chain and its own sequence for
/// optimistic concurrency.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Subject {
    /// Item master data of a SKU.
    Item(Sku),
    /// Stock of a SKU at every location.
    Stock(Sku),
    Location(LocationId),
    Channel(ChannelId),
    Supplier(SupplierId),
    LegalEntity(EntityId),
    Order(OrderId),
    PurchaseOrder(PurchaseOrderId),
    /// The outcome of one command (its record for durable idempotency and audit).
    Command(uuid::Uuid),
}

impl Subject {
    /// The kind token: the part after the prefix.
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Item(_) => "item",
            Subject::Stock(_) => "sku",
            Subject::Location(_) => "loc",
            Subject::Channel(_) => "chan",
            Subject::Supplier(_) => "sup",
            Subject::LegalEntity(_) => "ent",
            Subject::Order(_) => "ord",
            Subject::PurchaseOrder(_) => "po",
            Subject::Command(_) => "cmd",
        }
    }

    fn key_text(&self) -> String {
        match self {
            Subject::Item(id) | Subject::Stock(id) => id.to_string(),
            Subject::Location(id) => id.to_string(),
            Subject::Channel(id) => id.to_string(),
            Subject::Supplier(id) => id.to_string(),
            Subject::LegalEntity(id) => id.to_string(),
            Subject::Order(id) => id.to_string(),
            Subject::PurchaseOrder(id) => id.to_string(),
            Subject::Command(id) => id.simple().to_string(),
        }
    }

    /// `kind.token`, the subject without the stream prefix. This is what the envelope stores,
    /// so a copy of the log under another prefix still hashes the same.
    pub fn relative(&self) -> String {
        format!("{}.{}", self.kind(), escape_token(&self.key_text()))
    }

    /// Reads back a `kind.token` string.
    pub fn parse_relative(text: &str) -> Result<Subject, SubjectError> {
        let bad = |problem| SubjectError::Subject {
            subject: text.to_owned(),
            problem,
        };
        let (kind, token) = text
            .split_once('.')
            .ok_or_else(|| bad("has no `kind.` part"))?;
        let key = unescape_token(token)?;
        let value = |source| SubjectError::Value {
            subject: text.to_owned(),
            source,
        };
        Ok(match kind {
            "item" => Subject::Item(Sku::new(key).map_err(value)?),
            "sku" => Subject::Stock(Sku::new(key).map_err(value)?),
            "loc" => Subject::Location(LocationId::new(key).map_err(value)?),
            "chan" => Subject::Channel(ChannelId::new(key).map_err(value)?),
            "sup" => Subject::Supplier(SupplierId::new(key).map_err(value)?),
            "ent" => Subject::LegalEntity(EntityId::new(key).map_err(value)?),
            "ord" => Subject::Order(OrderId::new(key).map_err(value)?),
            "po" => Subject::PurchaseOrder(PurchaseOrderId::new(key).map_err(value)?),
            "cmd" => Subject::Command(
                uuid::Uuid::try_parse(&key).map_err(|_| bad("command subject is not a UUID"))?,
            ),
            _ => return Err(bad("has an unknown kind")),
        })
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.relative())
    }
}

/// Spells full NATS subjects for one ledger stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectSpace {
    prefix: String,
}

/// Kind token of the per-writer chain markers (`<prefix>.w.<instance>`). Not an aggregate:
/// readers skip these messages, and they are never part of a view.
pub const WRITER_KIND: &str = "w";

impl SubjectSpace {
    /// `prefix` must be a valid single NATS token (letters, digits, `-`, `_`).
    pub fn new(prefix: &str) -> Result<Self, SubjectError> {
        if prefix.is_empty()
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SubjectError::Token {
                token: prefix.to_owned(),
                problem: "a subject prefix must be letters, digits, `-` or `_`",
            });
        }
        Ok(SubjectSpace {
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream's subject filter: `<prefix>.>`.
    pub fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }

    pub fn full(&self, subject: &Subject) -> String {
        format!("{}.{}", self.prefix, subject.relative())
    }

    /// Strips the prefix; `None` when the subject is not in this space.
    pub fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(&self.prefix)?.strip_prefix('.')
    }

    pub fn writer_marker(&self, instance: uuid::Uuid) -> String {
        format!("{}.{WRITER_KIND}.{}", self.prefix, instance.simple())
    }

    /// Whether a full subject is a writer chain marker.
    pub fn is_writer_marker(&self, full: &str) -> bool {
        self.relative(full).is_some_and(|rel| {
            rel.starts_with(WRITER_KIND) && rel[WRITER_KIND.len()..].starts_with('.')
        })
    }
}

/// Subjects of the command intake. Upstream systems publish commands to
/// `cmd.<legal entity token>` (durably, through the `COMMANDS` stream) or send a request to
/// `rpc.cmd.<legal entity token>` and get the outcome as the reply. On a server with
/// credentials (`erp auth`) the user's name follows as one more token
/// (`rpc.cmd.UK01.shop-a`): the server lets each user publish only on its own, so the processor
/// knows who sent what. `rpc.outcome` answers "what became of command <id>?", `rpc.status`
/// reports the processor's state.
pub mod commands {
    use super::{SubjectError, escape_token, unescape_token};
    use crate::values::EntityId;

    /// What the `COMMANDS` stream binds.
    pub const INTAKE_ALL: &str = "cmd.>";
    /// What the processor's request/reply service listens on.
    pub const RPC_ALL: &str = "rpc.cmd.>";
    /// Request with a command id (text) as the body; the reply is its outcome.
    pub const OUTCOME_QUERY: &str = "rpc.outcome";
    /// Request with an empty body; the reply is the processor's state (JSON).
    pub const STATUS_QUERY: &str = "rpc.status";
    /// Header naming a subject where the outcome of a command sent through the stream is
    /// published.
    pub const REPLY_TO_HEADER: &str = "Erp-Reply-To";
    /// With credentials, outcomes of durable commands go to the sender's own answer subjects
    /// only (`erp.answer.<user>.<anything>`): the server delivers them to the sender's account
    /// and lets only that user subscribe.
    pub const ANSWERS_PREFIX: &str = "erp.answer";

    /// The prefix of `user`'s answer subjects (`erp.answer.<user>.`).
    pub fn answers_of(user: &str) -> String {
        format!("{ANSWERS_PREFIX}.{user}.")
    }

    fn with_user(base: String, user: Option<&str>) -> String {
        match user {
            Some(user) => format!("{base}.{user}"),
            None => base,
        }
    }

    /// The durable intake subject for `entity`, as `user` (with credentials) or anonymous.
    pub fn intake(entity: &EntityId, user: Option<&str>) -> String {
        with_user(format!("cmd.{}", escape_token(entity.as_str())), user)
    }

    /// The request/reply subject for `entity`, as `user` or anonymous.
    pub fn rpc(entity: &EntityId, user: Option<&str>) -> String {
        with_user(format!("rpc.cmd.{}", escape_token(entity.as_str())), user)
    }

    /// What a command subject says: its legal entity and, with credentials, its user.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Addressed {
        pub entity: EntityId,
        pub user: Option<String>,
    }

    /// Reads `rpc.cmd.<entity>[.<user>]` or `cmd.<entity>[.<user>]`; anything else (missing or
    /// extra tokens, an entity token that is not a canonical escape) is refused.
    pub fn parse(subject: &str) -> Result<Addressed, SubjectError> {
        let bad = |problem| SubjectError::Subject {
            subject: subject.to_owned(),
            problem,
        };
        let rest = subject
            .strip_prefix("rpc.cmd.")
            .or_else(|| subject.strip_prefix("cmd."))
            .ok_or_else(|| {
                bad("is not a command subject (`rpc.cmd.<entity>` or `cmd.<entity>`)")
            })?;
        let mut tokens = rest.split('.');
        let entity = tokens.next().unwrap_or_default();
        let user = tokens.next();
        if tokens.next().is_some() {
            return Err(bad(
                "has extra tokens: expected `<entity>` or `<entity>.<user>` after the prefix",
            ));
        }
        let entity =
            EntityId::new(unescape_token(entity)?).map_err(|source| SubjectError::Value {
                subject: subject.to_owned(),
                source,
            })?;
        if user.is_some_and(str::is_empty) {
            return Err(bad("has an empty user token"));
        }
        Ok(Addressed {
            entity,
            user: user.map(str::to_owned),
        })
    }
}

/// Whether `subject` (no wildcards) is matched by the NATS filter `filter` (`*` one token, `>`
/// the rest).
pub fn filter_matches(filter: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in filter.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    //! Goal: any valid id survives the trip into a subject token and back, and the token is
    //! always one legal NATS token.
    use super::*;
    use proptest::prelude::*;

    fn assert_legal_token(token: &str) {
        assert!(!token.is_empty());
        // Legal as a NATS subject token and as a KV key segment.
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=')),
            "illegal token {token:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn any_valid_id_round_trips_to_a_legal_token(sku in any::<Sku>()) {
            let token = escape_token(sku.as_str());
            assert_legal_token(&token);
            prop_assert_eq!(unescape_token(&token).unwrap(), sku.as_str());
            let subject = Subject::Stock(sku.clone());
            prop_assert_eq!(Subject::parse_relative(&subject.relative()).unwrap(), subject);
        }

        #[test]
        fn unescape_never_panics_and_accepts_only_canonical_tokens(token in "[=A-Za-z0-9 ._-]{0,12}") {
            if let Ok(id) = unescape_token(&token) {
                prop_assert_eq!(escape_token(&id), token);
            }
        }
    }

    #[test]
    fn real_codes_escape_as_documented() {
        for (code, token) in [
            ("85123A", "85123A"),
            ("15056bl", "15056bl"),
            ("BANK CHARGES", "BANK=20CHARGES"),
            ("A.B*C>", "A=2EB=2AC=3E"),
            ("ÄB", "=C3=84B"),
            ("=", "=3D"),
        ] {
            assert_eq!(escape_token(code), token);
            assert_eq!(unescape_token(token).unwrap(), code);
        }
        assert!(unescape_token("=41").is_err(), "A must not be escaped");
        assert!(
            unescape_token("=2e").is_err(),
            "lower-case hex is not canonical"
        );
        assert!(unescape_token("").is_err());
    }

    #[test]
    fn command_subjects_name_one_entity_and_at_most_one_user() {
        use commands::{Addressed, parse};
        let uk = EntityId::new("UK 01").unwrap();
        assert_eq!(commands::rpc(&uk, None), "rpc.cmd.UK=2001");
        assert_eq!(commands::intake(&uk, Some("shop-a")), "cmd.UK=2001.shop-a");
        assert_eq!(
            parse("rpc.cmd.UK=2001.shop-a").unwrap(),
            Addressed {
                entity: uk.clone(),
                user: Some("shop-a".into())
            }
        );
        assert_eq!(parse("cmd.UK=2001").unwrap().user, None);
        for bad in [
            "rpc.cmd.UK01.a.b",
            "rpc.cmd",
            "cmd.",
            "cmd.UK01.",
            "rpc.cmd.U=4B",
            "led.x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_match_as_nats_does() {
        assert!(filter_matches("led.>", "led.sku.X"));
        assert!(!filter_matches("led.>", "led"));
        assert!(filter_matches("a.*.c", "a.b.c"));
        assert!(!filter_matches("a.*.c", "a.b.c.d"));
        assert!(filter_matches("a.b", "a.b"));
        assert!(!filter_matches("a.b", "a.bc"));
    }

    #[test]
    fn subject_space_spells_and_recognises_subjects() {
        let space = SubjectSpace::new("led").unwrap();
        let sku = Sku::new("BANK CHARGES").unwrap();
        assert_eq!(space.full(&Subject::Stock(sku)), "led.sku.BANK=20CHARGES");
        let marker = space.writer_marker(uuid::Uuid::nil());
        assert!(space.is_writer_marker(&marker));
        assert!(!space.is_writer_marker("led.sku.w"));
        assert!(!space.is_writer_marker("led.wx.1"));
        assert!(SubjectSpace::new("a.b").is_err());
        assert!(Subject::parse_relative("nope.X").is_err());
        assert!(Subject::parse_relative("sku.=20").is_ok());
    }
}
