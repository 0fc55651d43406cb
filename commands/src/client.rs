//! A small client for upstream systems and tools: send a command, get its outcome.

use std::time::Duration;

use bytes::Bytes;
use ledger::subject::commands as subjects;
use ledger::subject::escape_token;
use uuid::Uuid;

use crate::command::Command;
use crate::processor::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no answer from the processor: {0}")]
    Request(String),
    #[error("the processor's answer is not an outcome: {0}")]
    Answer(String),
}

#[derive(Debug, Clone)]
pub struct CommandClient {
    nats: async_nats::Client,
    timeout: Duration,
}

impl CommandClient {
    pub fn new(nats: async_nats::Client, timeout: Duration) -> CommandClient {
        CommandClient { nats, timeout }
    }

    /// Sends command JSON as it is (it may be invalid: the answer says why).
    pub async fn submit_json(&self, json: Bytes) -> Result<Outcome, ClientError> {
        let entity = serde_json::from_slice::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| {
                v.get("legal_entity")
                    .and_then(|e| e.as_str())
                    .map(escape_token)
            })
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "unknown".into());
        self.request(format!("rpc.cmd.{entity}"), json).await
    }

    pub async fn submit(&self, command: &Command) -> Result<Outcome, ClientError> {
        let json = serde_json::to_vec(command).expect("commands serialise");
        self.request(subjects::rpc(&command.legal_entity), json.into())
            .await
    }

    /// The recorded outcome of a command; `None` if the ledger has none.
    pub async fn outcome(&self, command_id: Uuid) -> Result<Option<Outcome>, ClientError> {
        let answer = self
            .raw_request(
                subjects::OUTCOME_QUERY.into(),
                command_id.to_string().into(),
            )
            .await?;
        let value: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| ClientError::Answer(e.to_string()))?;
        if value.get("status").and_then(|s| s.as_str()) == Some("unknown") {
            return Ok(None);
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| ClientError::Answer(e.to_string()))
    }

    async fn request(&self, subject: String, body: Bytes) -> Result<Outcome, ClientError> {
        let answer = self.raw_request(subject, body).await?;
        serde_json::from_slice(&answer).map_err(|e| ClientError::Answer(e.to_string()))
    }

    async fn raw_request(&self, subject: String, body: Bytes) -> Result<Bytes, ClientError> {
        let request = self.nats.request(subject, body);
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(msg)) => Ok(msg.payload),
            Ok(Err(e)) => Err(ClientError::Request(e.to_string())),
            Err(_) => Err(ClientError::Request(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }
}
