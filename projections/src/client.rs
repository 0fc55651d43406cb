//! Asking a view: `view.<name>.<op>` request/reply.

use std::time::Duration;

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("no answer from view {view}: {detail}")]
    Unavailable { view: String, detail: String },
    #[error("view {view} at sequence {seq}: {code}: {message}")]
    Refused {
        view: String,
        seq: u64,
        code: String,
        message: String,
    },
}

/// A view's answer: the value and the ledger sequence it reflects.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub seq: u64,
    pub result: Value,
}

#[derive(Debug, Clone)]
pub struct ViewClient {
    nats: async_nats::Client,
}

impl ViewClient {
    pub fn new(nats: async_nats::Client) -> ViewClient {
        ViewClient { nats }
    }

    /// Asks `view.<view>.<op>`. With `min_seq`, the view answers only once it has applied the
    /// ledger up to that sequence (read-your-writes), or with a `timeout` error.
    pub async fn ask(
        &self,
        view: &str,
        op: &str,
        mut body: Value,
        min_seq: Option<u64>,
        timeout: Duration,
    ) -> Result<Answer, ViewError> {
        if let Some(min_seq) = min_seq {
            body["min_seq"] = json!(min_seq);
            body["timeout_ms"] = json!(timeout.as_millis() as u64);
        }
        let unavailable = |detail: String| ViewError::Unavailable {
            view: view.into(),
            detail,
        };
        let request = self.nats.request(
            format!("view.{view}.{op}"),
            serde_json::to_vec(&body).expect("json").into(),
        );
        let msg = tokio::time::timeout(timeout + Duration::from_secs(2), request)
            .await
            .map_err(|_| unavailable(format!("no answer within {timeout:?}")))?
            .map_err(|e| unavailable(e.to_string()))?;
        let answer: Value =
            serde_json::from_slice(&msg.payload).map_err(|e| unavailable(e.to_string()))?;
        let seq = answer.get("seq").and_then(Value::as_u64).unwrap_or(0);
        if let Some(error) = answer.get("error") {
            return Err(ViewError::Refused {
                view: view.into(),
                seq,
                code: error
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                message: error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
            });
        }
        Ok(Answer {
            seq,
            result: answer.get("result").cloned().unwrap_or(Value::Null),
        })
    }
}
