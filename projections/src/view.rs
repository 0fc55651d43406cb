//! What a view is to the runtime.

use std::collections::BTreeSet;

use ledger::{RecordedEvent, Subject};
use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// An `explain` request: list the events of `subject` and what each did at `location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explain {
    pub subject: Subject,
    pub location: ledger::values::LocationId,
}

/// A projection of the ledger. `apply` must be deterministic: the same events in the same
/// order give the same state, whatever happened in between (restarts, snapshots).
pub trait View: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The view's name: `view.<NAME>.*` queries, KV bucket `view_<NAME>_...`.
    const NAME: &'static str;
    /// Bumped whenever what the view computes changes: a new version is built from sequence 1.
    const VERSION: u32;

    /// Applies one event and adds the KV keys whose values it changed.
    fn apply(&mut self, event: &RecordedEvent, changed: &mut BTreeSet<String>);

    /// The current value of a KV key; `None` means the key has no value (deleted).
    fn value(&self, key: &str) -> Option<serde_json::Value>;

    /// Answers `view.<NAME>.<op>`.
    fn query(&self, op: &str, body: &serde_json::Value) -> Result<serde_json::Value, QueryError>;

    /// Queries answered with events read back from the ledger: `Some` for the ops the view
    /// handles this way.
    fn events(
        &self,
        _op: &str,
        _body: &serde_json::Value,
    ) -> Option<Result<EventsQuery, QueryError>> {
        None
    }

    /// For `view.<NAME>.explain`: which events explain a figure.
    fn explain(&self, _body: &serde_json::Value) -> Result<Explain, QueryError> {
        Err(QueryError::bad_query(format!(
            "view {} has no explain",
            Self::NAME
        )))
    }
}

/// Which events to read back and show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    /// Candidates, ascending.
    pub seqs: Vec<u64>,
    pub range: TimeRange,
    /// Most events in one answer; the answer says where to continue (`after_seq`).
    pub limit: usize,
}

/// A time window on business time (`effective`) or on recorded time (`recorded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeRange {
    pub recorded: bool,
    pub from: Option<ledger::values::Timestamp>,
    pub to: Option<ledger::values::Timestamp>,
}

impl TimeRange {
    /// Reads `from`, `to` (RFC 3339, `to` exclusive) and `time` (`effective`, the default, or
    /// `recorded`).
    pub fn from_body(body: &serde_json::Value) -> Result<TimeRange, QueryError> {
        let time = |name: &str| -> Result<Option<ledger::values::Timestamp>, QueryError> {
            match body.get(name).and_then(|v| v.as_str()) {
                None => Ok(None),
                Some(text) => ledger::values::Timestamp::parse(text)
                    .map(Some)
                    .map_err(|e| QueryError::bad_query(format!("{name}: {e}"))),
            }
        };
        let recorded = match body.get("time").and_then(|v| v.as_str()) {
            None | Some("effective") => false,
            Some("recorded") => true,
            Some(other) => {
                return Err(QueryError::bad_query(format!(
                    "time: `{other}`; expected effective or recorded"
                )));
            }
        };
        Ok(TimeRange {
            recorded,
            from: time("from")?,
            to: time("to")?,
        })
    }

    pub fn contains(&self, event: &ledger::RecordedEvent) -> bool {
        let at = if self.recorded {
            event.recorded_at
        } else {
            event.envelope.effective_at
        };
        self.from.is_none_or(|f| at >= f) && self.to.is_none_or(|t| at < t)
    }
}

/// Reads a required string field of a query body.
pub fn field<'a>(body: &'a serde_json::Value, name: &str) -> Result<&'a str, QueryError> {
    body.get(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| QueryError::bad_query(format!("{name}: expected a string")))
}
