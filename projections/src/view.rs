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

    /// For `view.<NAME>.explain`: which events explain a figure.
    fn explain(&self, _body: &serde_json::Value) -> Result<Explain, QueryError> {
        Err(QueryError::bad_query(format!(
            "view {} has no explain",
            Self::NAME
        )))
    }
}

/// Reads a required string field of a query body.
pub fn field<'a>(body: &'a serde_json::Value, name: &str) -> Result<&'a str, QueryError> {
    body.get(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| QueryError::bad_query(format!("{name}: expected a string")))
}
