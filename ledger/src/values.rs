//! Domain values. Every constructor validates, so a value that exists is valid: code that takes
//! a `Sku` never re-checks it. Deserialisation goes through the same constructors (serde
//! `try_from`), so bytes or JSON cannot smuggle in an invalid value either.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use rust_decimal::Decimal;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest external identifier accepted, in bytes of UTF-8. Long enough for any SKU, order
/// number or location code seen in practice, short enough that an escaped subject token
/// (at most 3 bytes per input byte) stays far inside NATS limits.
pub const ID_BYTES_MAX: usize = 128;

/// Largest quantity of base units in one figure (10^12). Sums over a year of a large catalogue
/// stay far from `i64::MAX`, so arithmetic on quantities cannot overflow silently.
pub const QTY_MAX: i64 = 1_000_000_000_000;

/// Most decimal places a money amount or ratio may carry.
pub const DECIMAL_SCALE_MAX: u32 = 10;

/// Why a value was refused. Each variant names the field and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{field}: must not be empty; expected 1 to {ID_BYTES_MAX} bytes of printable text")]
    Empty { field: &'static str },
    #[error("{field}: is {len} bytes long; at most {ID_BYTES_MAX} bytes of UTF-8 are allowed")]
    TooLong { field: &'static str, len: usize },
    #[error(
        "{field}: contains the control character U+{code:04X} at byte {index}; expected printable text"
    )]
    ControlChar {
        field: &'static str,
        code: u32,
        index: usize,
    },
    #[error("{field}: {value} is negative; expected a whole number of base units, 0 or more")]
    Negative { field: &'static str, value: i64 },
    #[error("{field}: {value} is out of range; expected a magnitude of at most {QTY_MAX}")]
    OutOfRange { field: &'static str, value: i64 },
    #[error(
        "{field}: `{value}` is not an ISO 4217 currency code; expected three upper-case letters such as GBP"
    )]
    Currency { field: &'static str, value: String },
    #[error(
        "{field}: `{value}` is not a decimal number; expected digits with an optional sign and point, e.g. \"12.50\""
    )]
    Decimal { field: &'static str, value: String },
    #[error("{field}: {value} has {scale} decimal places; at most {DECIMAL_SCALE_MAX} are allowed")]
    Scale {
        field: &'static str,
        value: String,
        scale: u32,
    },
    #[error("{field}: {value} is outside 0..=1; expected a fraction such as 0.15 for 15%")]
    Ratio { field: &'static str, value: String },
    #[error("{field}: {value} is not above 0; expected an exchange rate such as 1.2634")]
    Rate { field: &'static str, value: String },
    #[error(
        "{field}: `{value}` is not a timestamp; expected RFC 3339 such as 2026-11-26T09:30:00Z"
    )]
    Timestamp { field: &'static str, value: String },
    #[error("{field}: `{value}` is not a date; expected YYYY-MM-DD")]
    Date { field: &'static str, value: String },
    #[error("{field}: `{value}` is not an accounting period; expected a month as YYYY-MM")]
    Period { field: &'static str, value: String },
    #[error(
        "{field}: `{value}` is not an ISO 3166-1 country code; expected two upper-case letters such as GB"
    )]
    Country { field: &'static str, value: String },
}

fn validate_id(field: &'static str, text: &str) -> Result<(), ValueError> {
    if text.is_empty() {
        return Err(ValueError::Empty { field });
    }
    if text.len() > ID_BYTES_MAX {
        return Err(ValueError::TooLong {
            field,
            len: text.len(),
        });
    }
    if let Some((index, ch)) = text.char_indices().find(|(_, c)| c.is_control()) {
        return Err(ValueError::ControlChar {
            field,
            code: ch as u32,
            index,
        });
    }
    Ok(())
}

/// Defines a validated text identifier: arbitrary printable UTF-8, 1 to `ID_BYTES_MAX` bytes,
/// case preserved (`15056bl` and `15056BL` are different SKUs).
macro_rules! text_id {
    ($(#[$meta:meta])* $name:ident, $field:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Box<str>);

        impl $name {
            /// The field name used in error messages.
            pub const FIELD: &'static str = $field;

            pub fn new(text: impl Into<String>) -> Result<Self, ValueError> {
                let text = text.into();
                validate_id($field, &text)?;
                Ok(Self(text.into_boxed_str()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValueError;
            fn try_from(text: String) -> Result<Self, ValueError> {
                Self::new(text)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ValueError;
            fn try_from(text: &str) -> Result<Self, ValueError> {
                Self::new(text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.into()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": ID_BYTES_MAX,
                    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$",
                    "description": concat!(
                        "Identifier (", $field, "): printable UTF-8, 1 to 128 bytes, case preserved."
                    )
                })
            }
        }

        #[cfg(test)]
        impl proptest::arbitrary::Arbitrary for $name {
            type Parameters = ();
            type Strategy = proptest::strategy::BoxedStrategy<Self>;
            fn arbitrary_with(_: ()) -> Self::Strategy {
                use proptest::strategy::Strategy;
                crate::values::arbitrary_id_text()
                    .prop_map(|t| $name::new(t).expect("strategy yields valid ids"))
                    .boxed()
            }
        }
    };
}

text_id!(
    /// Stock-keeping unit code, as the merchant writes it (`85123A`, `BANK CHARGES`).
    Sku,
    "sku"
);
text_id!(
    /// A stocking node: warehouse, store, 3PL site or drop-ship supplier.
    LocationId,
    "location"
);
text_id!(
    /// A storage bin inside a location.
    BinId,
    "bin"
);
text_id!(
    /// A customer order number, unique per legal entity.
    OrderId,
    "order"
);
text_id!(
    /// A sales channel: web shop, marketplace, wholesale portal, store.
    ChannelId,
    "channel"
);
text_id!(
    /// A production or supplier lot.
    LotId,
    "lot"
);
text_id!(
    /// A serial number of one unit.
    SerialNo,
    "serial"
);
text_id!(
    /// A supplier (vendor).
    SupplierId,
    "supplier"
);
text_id!(
    /// A purchase order number.
    PurchaseOrderId,
    "purchase_order"
);
text_id!(
    /// A legal entity (company) that owns stock and books.
    EntityId,
    "legal_entity"
);
text_id!(
    /// Who issued a command: a user, a service account or an integration.
    ActorId,
    "actor"
);
text_id!(
    /// A role name from the role table (`clerk`, `buyer`, `approver`, `upstream`...).
    Role,
    "role"
);
text_id!(
    /// A hold (reservation with expiry) chosen by the caller, e.g. a checkout session.
    HoldId,
    "hold"
);
text_id!(
    /// A stock transfer between locations.
    TransferId,
    "transfer"
);
text_id!(
    /// A return merchandise authorisation.
    ReturnId,
    "return"
);
text_id!(
    /// A package (parcel) packed for an order.
    PackageId,
    "package"
);
text_id!(
    /// A pick wave.
    WaveId,
    "wave"
);
text_id!(
    /// A reason code (`damaged`, `found`, `count_correction`...).
    ReasonCode,
    "reason"
);
text_id!(
    /// A unit of measure (`each`, `box`, `kg`).
    UnitName,
    "unit"
);

#[cfg(test)]
pub(crate) fn arbitrary_id_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        "[A-Za-z0-9]{1,12}",
        "[A-Za-z0-9 .*>~_%-]{1,20}",
        proptest::string::string_regex("[^\\p{Cc}]{1,30}").expect("valid regex"),
    ]
    .prop_filter("fits ID_BYTES_MAX", |s| s.len() <= ID_BYTES_MAX)
}

/// Who acted, in which role. Every command and every event names one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Actor {
    pub id: ActorId,
    pub role: Role,
}

/// A non-negative whole number of base units.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Qty(i64);

impl Qty {
    pub const ZERO: Qty = Qty(0);

    pub fn new(value: i64) -> Result<Self, ValueError> {
        Self::for_field("qty", value)
    }

    /// Like `new`, naming `field` in the error.
    pub fn for_field(field: &'static str, value: i64) -> Result<Self, ValueError> {
        if value < 0 {
            return Err(ValueError::Negative { field, value });
        }
        if value > QTY_MAX {
            return Err(ValueError::OutOfRange { field, value });
        }
        Ok(Qty(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl TryFrom<i64> for Qty {
    type Error = ValueError;
    fn try_from(value: i64) -> Result<Self, ValueError> {
        Qty::new(value)
    }
}

impl From<Qty> for i64 {
    fn from(q: Qty) -> i64 {
        q.0
    }
}

impl fmt::Debug for Qty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Qty({})", self.0)
    }
}

impl fmt::Display for Qty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl JsonSchema for Qty {
    fn schema_name() -> Cow<'static, str> {
        "Qty".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "integer", "minimum": 0, "maximum": QTY_MAX,
            "description": "Whole number of the item's base units, 0 or more."
        })
    }
}

/// A signed change of base units (an adjustment or a count variance).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct QtyDelta(i64);

impl QtyDelta {
    pub fn new(value: i64) -> Result<Self, ValueError> {
        Self::for_field("delta", value)
    }

    pub fn for_field(field: &'static str, value: i64) -> Result<Self, ValueError> {
        if value.unsigned_abs() > QTY_MAX as u64 {
            return Err(ValueError::OutOfRange { field, value });
        }
        Ok(QtyDelta(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for QtyDelta {
    type Error = ValueError;
    fn try_from(value: i64) -> Result<Self, ValueError> {
        QtyDelta::new(value)
    }
}

impl From<QtyDelta> for i64 {
    fn from(q: QtyDelta) -> i64 {
        q.0
    }
}

impl fmt::Debug for QtyDelta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QtyDelta({})", self.0)
    }
}

impl JsonSchema for QtyDelta {
    fn schema_name() -> Cow<'static, str> {
        "QtyDelta".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "integer", "minimum": -QTY_MAX, "maximum": QTY_MAX,
            "description": "Signed change in base units."
        })
    }
}

/// ISO 4217 currency code: three upper-case ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn new(code: &str) -> Result<Self, ValueError> {
        let bytes = code.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(ValueError::Currency {
                field: "currency",
                value: code.to_owned(),
            });
        }
        Ok(Currency([bytes[0], bytes[1], bytes[2]]))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("constructor admits ASCII only")
    }

    /// Decimal places of the currency's minor unit per ISO 4217 (JPY 0, GBP 2, BHD 3), from
    /// the `iso_currency` crate's copy of the standard's list. `None` for a code the list does
    /// not hold, or one without a minor unit (XAU, XXX). Commands must use a code with one
    /// (`commands::command`); stored events are read whatever they hold.
    pub fn iso_minor_units(&self) -> Option<u32> {
        iso_currency::Currency::from_code(self.as_str())?
            .exponent()
            .map(u32::from)
    }

    /// Decimal places figures in this currency are shown and rounded to: the ISO 4217 minor
    /// unit, or 2 for a code outside the list (only a ledger written before commands were
    /// checked can hold one).
    pub fn minor_units(&self) -> u32 {
        self.iso_minor_units().unwrap_or(2)
    }
}

impl TryFrom<String> for Currency {
    type Error = ValueError;
    fn try_from(code: String) -> Result<Self, ValueError> {
        Currency::new(&code)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JsonSchema for Currency {
    fn schema_name() -> Cow<'static, str> {
        "Currency".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217 code."})
    }
}

fn parse_decimal(field: &'static str, text: &str) -> Result<Decimal, ValueError> {
    let value = Decimal::from_str_exact(text).map_err(|_| ValueError::Decimal {
        field,
        value: text.to_owned(),
    })?;
    check_scale(field, value)
}

fn check_scale(field: &'static str, value: Decimal) -> Result<Decimal, ValueError> {
    if value.scale() > DECIMAL_SCALE_MAX {
        return Err(ValueError::Scale {
            field,
            value: value.to_string(),
            scale: value.scale(),
        });
    }
    Ok(value)
}

/// Decimals travel as their exact text ("12.50") in every encoding: never a float, never
/// `deserialize_any`, and the scale survives a round trip.
mod decimal_text {
    use super::*;
    use serde::de::{Error, Visitor};

    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = Decimal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal number written as a string, e.g. \"12.50\"")
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Decimal, E> {
                parse_decimal("amount", v).map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

/// An amount of money in one currency. Negative amounts are allowed (credits, refunds); the
/// commands that must not take them say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Money {
    #[serde(with = "decimal_text")]
    #[schemars(with = "DecimalText")]
    pub amount: Decimal,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount: Decimal, currency: Currency) -> Result<Self, ValueError> {
        Ok(Money {
            amount: check_scale("amount", amount)?,
            currency,
        })
    }

    /// Parses `"12.50"` in `currency` ("GBP").
    pub fn parse(amount: &str, currency: &str) -> Result<Self, ValueError> {
        Ok(Money {
            amount: parse_decimal("amount", amount)?,
            currency: Currency::new(currency)?,
        })
    }

    pub fn zero(currency: Currency) -> Self {
        Money {
            amount: Decimal::ZERO,
            currency,
        }
    }
}

/// Schema stand-in for a decimal written as text.
#[derive(JsonSchema)]
#[schemars(description = "Exact decimal number written as a string, e.g. \"12.50\".")]
#[allow(dead_code)]
struct DecimalText(#[schemars(regex(pattern = r"^-?[0-9]+(\.[0-9]+)?$"))] String);

/// A fraction in 0..=1 (fee rates, channel percentages).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RatioText", into = "RatioText")]
pub struct Ratio(Decimal);

#[derive(Serialize, Deserialize)]
struct RatioText(#[serde(with = "decimal_text")] Decimal);

impl Ratio {
    pub fn new(value: Decimal) -> Result<Self, ValueError> {
        let value = check_scale("ratio", value)?;
        if value < Decimal::ZERO || value > Decimal::ONE {
            return Err(ValueError::Ratio {
                field: "ratio",
                value: value.to_string(),
            });
        }
        Ok(Ratio(value))
    }

    pub fn parse(text: &str) -> Result<Self, ValueError> {
        Ratio::new(parse_decimal("ratio", text)?)
    }

    pub fn get(self) -> Decimal {
        self.0
    }
}

impl TryFrom<RatioText> for Ratio {
    type Error = ValueError;
    fn try_from(t: RatioText) -> Result<Self, ValueError> {
        Ratio::new(t.0)
    }
}

impl From<Ratio> for RatioText {
    fn from(r: Ratio) -> RatioText {
        RatioText(r.0)
    }
}

impl fmt::Debug for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ratio({})", self.0)
    }
}

impl JsonSchema for Ratio {
    fn schema_name() -> Cow<'static, str> {
        "Ratio".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string", "pattern": r"^(0(\.[0-9]+)?|1(\.0+)?)$",
            "description": "Fraction from 0 to 1 written as a string, e.g. \"0.15\"."
        })
    }
}

/// An exchange rate: how many units of one currency one unit of another is worth. Positive.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RatioText", into = "RatioText")]
pub struct Rate(Decimal);

impl Rate {
    pub fn new(value: Decimal) -> Result<Self, ValueError> {
        let value = check_scale("rate", value)?;
        if value <= Decimal::ZERO {
            return Err(ValueError::Rate {
                field: "rate",
                value: value.to_string(),
            });
        }
        Ok(Rate(value))
    }

    pub fn parse(text: &str) -> Result<Self, ValueError> {
        Rate::new(parse_decimal("rate", text)?)
    }

    pub fn get(self) -> Decimal {
        self.0
    }
}

impl TryFrom<RatioText> for Rate {
    type Error = ValueError;
    fn try_from(t: RatioText) -> Result<Self, ValueError> {
        Rate::new(t.0)
    }
}

impl From<Rate> for RatioText {
    fn from(r: Rate) -> RatioText {
        RatioText(r.0)
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rate({})", self.0)
    }
}

impl JsonSchema for Rate {
    fn schema_name() -> Cow<'static, str> {
        "Rate".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$",
            "description": "Exchange rate above 0 written as a string, e.g. \"1.2634\"."
        })
    }
}

/// A point in time, UTC, microsecond resolution. In bincode it is an `i64` of microseconds
/// since the Unix epoch; in JSON it is RFC 3339 text.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// Truncates to whole microseconds so that every timestamp round-trips exactly.
    pub fn new(at: DateTime<Utc>) -> Self {
        Timestamp(at.trunc_subsecs(6))
    }

    pub fn from_micros(micros: i64) -> Option<Self> {
        DateTime::from_timestamp_micros(micros).map(Timestamp)
    }

    pub fn parse(text: &str) -> Result<Self, ValueError> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| Timestamp::new(t.with_timezone(&Utc)))
            .map_err(|_| ValueError::Timestamp {
                field: "timestamp",
                value: text.to_owned(),
            })
    }

    pub fn as_datetime(self) -> DateTime<Utc> {
        self.0
    }

    pub fn micros(self) -> i64 {
        self.0.timestamp_micros()
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.0.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_i64(self.micros())
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let text = Cow::<str>::deserialize(d)?;
            Timestamp::parse(&text).map_err(D::Error::custom)
        } else {
            let micros = i64::deserialize(d)?;
            Timestamp::from_micros(micros)
                .ok_or_else(|| D::Error::custom(format!("timestamp {micros} µs is out of range")))
        }
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "format": "date-time", "description": "RFC 3339, UTC."})
    }
}

/// A calendar date (promise dates, expected receipt dates, expiry dates).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Cow<'_, str>", into = "String")]
pub struct Date(NaiveDate);

impl Date {
    pub fn new(date: NaiveDate) -> Self {
        Date(date)
    }

    pub fn get(self) -> NaiveDate {
        self.0
    }
}

impl FromStr for Date {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map(Date)
            .map_err(|_| ValueError::Date {
                field: "date",
                value: text.to_owned(),
            })
    }
}

impl TryFrom<Cow<'_, str>> for Date {
    type Error = ValueError;
    fn try_from(text: Cow<'_, str>) -> Result<Self, ValueError> {
        text.parse()
    }
}

impl From<Date> for String {
    fn from(d: Date) -> String {
        d.0.format("%Y-%m-%d").to_string()
    }
}

impl fmt::Debug for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Date({})", self.0)
    }
}

impl JsonSchema for Date {
    fn schema_name() -> Cow<'static, str> {
        "Date".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "format": "date", "description": "YYYY-MM-DD."})
    }
}

/// An accounting period: a calendar month of effective time, in UTC. Written `YYYY-MM`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Cow<'_, str>", into = "String")]
pub struct Period {
    year: u16,
    month: u8,
}

impl Period {
    /// The period `at` falls in.
    pub fn of(at: Timestamp) -> Period {
        use chrono::Datelike;
        let d = at.as_datetime();
        Period {
            year: u16::try_from(d.year()).unwrap_or(0),
            month: d.month() as u8,
        }
    }

    /// Months since year 0: a dense key.
    pub fn index(self) -> u32 {
        u32::from(self.year) * 12 + u32::from(self.month) - 1
    }

    pub fn from_index(index: u32) -> Period {
        Period {
            year: u16::try_from(index / 12).unwrap_or(u16::MAX),
            month: (index % 12) as u8 + 1,
        }
    }

    /// The first instant after the period.
    pub fn end(self) -> Timestamp {
        let next = Period::from_index(self.index() + 1);
        let date = NaiveDate::from_ymd_opt(i32::from(next.year), u32::from(next.month), 1)
            .expect("a valid month");
        Timestamp::new(date.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
    }
}

impl FromStr for Period {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::Period {
            field: "period",
            value: text.to_owned(),
        };
        let b = text.as_bytes();
        if b.len() != 7 || b[4] != b'-' || !b[..4].iter().chain(&b[5..]).all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let year: u16 = text[..4].parse().map_err(|_| bad())?;
        let month: u8 = text[5..].parse().map_err(|_| bad())?;
        if year == 0 || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Period { year, month })
    }
}

impl TryFrom<Cow<'_, str>> for Period {
    type Error = ValueError;
    fn try_from(text: Cow<'_, str>) -> Result<Self, ValueError> {
        text.parse()
    }
}

impl From<Period> for String {
    fn from(p: Period) -> String {
        p.to_string()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl fmt::Debug for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Period({self})")
    }
}

impl JsonSchema for Period {
    fn schema_name() -> Cow<'static, str> {
        "Period".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$",
            "description": "An accounting period: a month of effective time in UTC, YYYY-MM."})
    }
}

/// An ISO 3166-1 alpha-2 country code (`GB`, `DE`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Cow<'_, str>", into = "String")]
pub struct Country(String);

impl Country {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Country {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        if text.len() == 2 && text.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Country(text.to_owned()))
        } else {
            Err(ValueError::Country {
                field: "country",
                value: text.to_owned(),
            })
        }
    }
}

impl TryFrom<Cow<'_, str>> for Country {
    type Error = ValueError;
    fn try_from(text: Cow<'_, str>) -> Result<Self, ValueError> {
        text.parse()
    }
}

impl From<Country> for String {
    fn from(c: Country) -> String {
        c.0
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Country({})", self.0)
    }
}

impl JsonSchema for Country {
    fn schema_name() -> Cow<'static, str> {
        "Country".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^[A-Z]{2}$",
            "description": "ISO 3166-1 alpha-2 country code, e.g. GB."})
    }
}

#[cfg(test)]
mod arbitrary_impls {
    //! Generators for the values that cannot derive them, used by the round-trip properties.
    use super::*;
    use proptest::prelude::*;

    impl Arbitrary for Qty {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            (0..=QTY_MAX).prop_map(Qty).boxed()
        }
    }

    impl Arbitrary for Period {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            (1u16..=9999, 1u8..=12)
                .prop_map(|(year, month)| Period { year, month })
                .boxed()
        }
    }

    impl Arbitrary for QtyDelta {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            (-QTY_MAX..=QTY_MAX).prop_map(QtyDelta).boxed()
        }
    }

    impl Arbitrary for Currency {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            "[A-Z]{3}"
                .prop_map(|c| Currency::new(&c).expect("three capitals"))
                .boxed()
        }
    }

    fn decimal() -> impl Strategy<Value = Decimal> {
        (any::<i64>(), 0..=DECIMAL_SCALE_MAX).prop_map(|(m, s)| Decimal::new(m, s))
    }

    impl Arbitrary for Money {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            (decimal(), any::<Currency>())
                .prop_map(|(amount, currency)| Money { amount, currency })
                .boxed()
        }
    }

    impl Arbitrary for Rate {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            (1i64..=100_000_000)
                .prop_map(|r| Rate(Decimal::new(r, 6)))
                .boxed()
        }
    }

    impl Arbitrary for Ratio {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            (0i64..=10_000)
                .prop_map(|bp| Ratio(Decimal::new(bp, 4)))
                .boxed()
        }
    }

    impl Arbitrary for Timestamp {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            // Years 1970 to about 2500.
            (0i64..16_700_000_000_000_000)
                .prop_map(|m| Timestamp::from_micros(m).expect("in range"))
                .boxed()
        }
    }

    impl Arbitrary for Date {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            (0i64..200_000)
                .prop_map(|d| {
                    Date(
                        NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")
                            + chrono::Days::new(d as u64),
                    )
                })
                .boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    //! Goal: every constructor refuses bad input with an error that names the field and says
    //! what was expected, and accepts the real codes merchants use.
    use super::*;

    #[test]
    fn ids_reject_empty_control_and_overlong_text_naming_the_field() {
        let cases: Vec<(Result<Sku, ValueError>, &str)> = vec![
            (Sku::new(""), "sku: must not be empty"),
            (
                Sku::new("A\u{0}B"),
                "sku: contains the control character U+0000 at byte 1",
            ),
            (
                Sku::new("tab\there"),
                "sku: contains the control character U+0009 at byte 3",
            ),
            (
                Sku::new("x".repeat(129)),
                "sku: is 129 bytes long; at most 128",
            ),
        ];
        for (result, expected) in cases {
            let err = result.expect_err(expected).to_string();
            assert!(
                err.starts_with(expected),
                "{err:?} should start with {expected:?}"
            );
        }
        let loc = LocationId::new("").unwrap_err().to_string();
        assert!(loc.starts_with("location:"), "{loc}");
        let order = OrderId::new("\n").unwrap_err().to_string();
        assert!(order.starts_with("order:"), "{order}");
        for (err, field) in [
            (ChannelId::new("").unwrap_err(), "channel"),
            (LotId::new("").unwrap_err(), "lot"),
            (EntityId::new("").unwrap_err(), "legal_entity"),
            (ActorId::new("").unwrap_err(), "actor"),
            (Role::new("").unwrap_err(), "role"),
        ] {
            assert!(err.to_string().starts_with(&format!("{field}:")), "{err}");
        }
    }

    #[test]
    fn ids_keep_real_codes_and_case() {
        for code in [
            "85123A",
            "15056bl",
            "BANK CHARGES",
            "A.B*C>",
            "gift_0001_40",
            "DCGS0076",
        ] {
            assert_eq!(Sku::new(code).unwrap().as_str(), code);
        }
        assert_ne!(Sku::new("15056bl").unwrap(), Sku::new("15056BL").unwrap());
        assert!(Sku::new("x".repeat(128)).is_ok());
    }

    #[test]
    fn quantities_refuse_negative_and_out_of_range_values() {
        assert_eq!(
            Qty::new(-1).unwrap_err().to_string(),
            "qty: -1 is negative; expected a whole number of base units, 0 or more"
        );
        assert!(matches!(
            Qty::for_field("received_qty", QTY_MAX + 1),
            Err(ValueError::OutOfRange {
                field: "received_qty",
                ..
            })
        ));
        assert!(QtyDelta::new(-QTY_MAX).is_ok());
        assert!(QtyDelta::new(i64::MIN).is_err());
    }

    #[test]
    fn money_and_ratio_parse_exactly_and_refuse_bad_text() {
        let m = Money::parse("12.50", "GBP").unwrap();
        assert_eq!(m.amount.to_string(), "12.50");
        assert!(
            Money::parse("1e3", "GBP")
                .unwrap_err()
                .to_string()
                .starts_with("amount:")
        );
        assert!(
            Money::parse("1", "gbp")
                .unwrap_err()
                .to_string()
                .starts_with("currency:")
        );
        assert!(
            Money::parse("0.00000000001", "GBP")
                .unwrap_err()
                .to_string()
                .contains("11 decimal places")
        );
        assert!(
            Ratio::parse("1.5")
                .unwrap_err()
                .to_string()
                .starts_with("ratio:")
        );
        assert_eq!(Ratio::parse("0.15").unwrap().get().to_string(), "0.15");
    }

    #[test]
    fn deserialisation_runs_the_same_validation() {
        let err = serde_json::from_str::<Sku>("\"\"").unwrap_err().to_string();
        assert!(err.contains("sku: must not be empty"), "{err}");
        let err = serde_json::from_str::<Qty>("-5").unwrap_err().to_string();
        assert!(err.contains("qty: -5 is negative"), "{err}");
        let err = serde_json::from_str::<Money>(r#"{"amount": 1.5, "currency": "GBP"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("decimal number written as a string"), "{err}");
    }

    #[test]
    fn timestamps_render_rfc3339_in_json_and_truncate_to_microseconds() {
        let t = Timestamp::parse("2011-12-09T12:50:00.123456789Z").unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2011-12-09T12:50:00.123456Z\""
        );
        assert!(
            Timestamp::parse("yesterday")
                .unwrap_err()
                .to_string()
                .starts_with("timestamp:")
        );
    }
}
