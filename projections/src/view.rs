//! What a view is: a `Model` (events in, rows out by key) that a projector keeps current and
//! replay rebuilds, with typed rows and typed queries.
//!
//! Queries arrive as `view.<name>.<op>` with a JSON object body; the runtime reads them as the
//! view's `Query` type, an enum tagged by `op`, so an unknown operation or a missing or wrong
//! field is refused naming it. Every list an answer holds is paged: no valid question gets an
//! answer too large for a message.

use std::collections::BTreeSet;

use ledger::{RecordedEvent, Subject};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::key::KeyShape;

/// Why a query could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{code}: {message}")]
pub struct QueryError {
    pub code: &'static str,
    pub message: String,
}

impl QueryError {
    pub fn bad_query(message: impl Into<String>) -> QueryError {
        QueryError {
            code: "bad_query",
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> QueryError {
        QueryError {
            code: "not_found",
            message: message.into(),
        }
    }
}

/// A state built by applying ledger events in order: a projection view, or the processor's
/// write model in a replay. `apply` must be deterministic: the same events in the same order
/// give the same state, whatever happened in between (restarts, snapshots).
pub trait Model: Default + Send {
    /// Applies one event and adds the keys of the rows whose values it changed.
    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>);
    /// A row's current value; `None` when the row does not exist (or no longer does).
    fn value(&self, key: &str) -> Option<serde_json::Value>;
    /// A message in the ledger its writer did not write, passed over by the walk: never
    /// applied, but a model may note that it is there.
    fn foreign(&mut self, _record: &ledger::ForeignRecord, _changed: &mut BTreeSet<String>) {}
}

/// A projection of the ledger, run by a projector and answered over `view.<NAME>.<op>`.
pub trait View: Model + Serialize + DeserializeOwned + Sync + 'static {
    /// The view's name: `view.<NAME>.*` queries, KV bucket `view_<NAME>_...`.
    const NAME: &'static str;
    /// Bumped whenever what the view computes changes: a new version is built from sequence 1.
    const VERSION: u32;
    /// The shapes of its row keys (`crate::key`).
    const KEYS: &'static [KeyShape];
    /// What its rows hold (one type; an enum where kinds of rows differ).
    type Row: Serialize + JsonSchema;
    /// Its queries, tagged by `op`.
    type Query: DeserializeOwned + JsonSchema + Send + Sync;

    /// Every key that has a row, in key order.
    fn keys(&self) -> Box<dyn Iterator<Item = String> + '_>;

    /// Answers a query from memory, or says which events to read back.
    fn answer(&self, query: &Self::Query) -> Result<Answer, QueryError>;

    /// One event read back for `query` (an explanation line, an audit row); `None` leaves it
    /// out of the answer.
    fn render(&self, _query: &Self::Query, _event: &RecordedEvent) -> Option<serde_json::Value> {
        None
    }
}

/// What a query answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Value(serde_json::Value),
    /// Events read back from the ledger (up to the view's checkpoint), each rendered by the
    /// view, a page at a time: `{"events": [...], "next_after_seq": N or null}`.
    Read(Read),
}

/// Which events to read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub from: ReadSource,
    /// Only events after this sequence (the previous page's `next_after_seq`).
    pub after_seq: u64,
    /// Most events in one page.
    pub limit: usize,
    pub range: TimeRange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadSource {
    /// These sequences, ascending.
    Seqs(Vec<u64>),
    /// Every event of one subject.
    Subject(Subject),
}

/// Most items in one page, and the default.
pub const PAGE_MAX: u32 = 1000;
pub const PAGE_DEFAULT: u32 = 100;

/// The page size a query asked for, bounded.
pub fn page_limit(limit: Option<u32>) -> Result<usize, QueryError> {
    match limit {
        Some(0) => Err(QueryError::bad_query(
            "limit: 0; expected 1 to 1000 items per page",
        )),
        Some(n) if n > PAGE_MAX => Err(QueryError::bad_query(format!(
            "limit: {n}; at most {PAGE_MAX} items per page"
        ))),
        Some(n) => Ok(n as usize),
        None => Ok(PAGE_DEFAULT as usize),
    }
}

/// One page of keyed items after `after`, in key order: `(items, next_after)`.
pub fn page<T>(
    items: impl Iterator<Item = (String, T)>,
    after: Option<&str>,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    let mut out = Vec::new();
    let mut last = None;
    let mut more = false;
    for (key, item) in items.filter(|(k, _)| after.is_none_or(|a| k.as_str() > a)) {
        if out.len() == limit {
            more = true;
            break;
        }
        last = Some(key);
        out.push(item);
    }
    (out, if more { last } else { None })
}

/// Which time a window is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeBasis {
    /// Business time (the event's `effective_at`).
    #[default]
    Effective,
    /// When the ledger stored it.
    Recorded,
}

/// A time window: `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TimeRange {
    #[serde(default)]
    pub time: TimeBasis,
    #[serde(default)]
    pub from: Option<ledger::values::Timestamp>,
    #[serde(default)]
    pub to: Option<ledger::values::Timestamp>,
}

impl TimeRange {
    pub fn contains(&self, event: &RecordedEvent) -> bool {
        let at = match self.time {
            TimeBasis::Recorded => event.recorded_at,
            TimeBasis::Effective => event.envelope.effective_at,
        };
        self.from.is_none_or(|f| at >= f) && self.to.is_none_or(|t| at < t)
    }
}

/// Reads `view.<NAME>.<op>` with `body` as the view's query.
pub fn read_query<V: View>(op: &str, body: &serde_json::Value) -> Result<V::Query, QueryError> {
    let mut object = match body {
        serde_json::Value::Object(map) => map.clone(),
        serde_json::Value::Null => serde_json::Map::new(),
        other => {
            return Err(QueryError::bad_query(format!(
                "the body of view.{}.{op} is {other}; expected a JSON object",
                V::NAME
            )));
        }
    };
    // The runtime's own fields.
    object.remove("min_seq");
    object.remove("timeout_ms");
    object.insert("op".into(), serde_json::Value::String(op.to_owned()));
    serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|e| QueryError::bad_query(format!("view.{}.{op}: {e}", V::NAME)))
}

/// A view's contract for its consumers: key shapes, and the JSON Schema of its rows and
/// queries (`schemas/views/<NAME>.schema.json`, kept current by a test).
pub fn contract<V: View>() -> serde_json::Value {
    serde_json::json!({
        "view": V::NAME,
        "version": V::VERSION,
        "subjects": {
            "queries": format!("view.{}.<op>", V::NAME),
            "operations_of_every_view": ["status", "rows"],
        },
        "keys": V::KEYS,
        "row": schemars::schema_for!(V::Row),
        "query": schemars::schema_for!(V::Query),
    })
}
