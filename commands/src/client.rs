//! A small client for upstream systems and tools: send a command, get its outcome.

use std::time::Duration;

use bytes::Bytes;
use ledger::subject::commands as subjects;
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
    /// The NATS user the connection authenticated as, if it did: its commands go to the
    /// subjects that end in its name (the only ones the server lets it publish on).
    user: Option<String>,
}

impl CommandClient {
    pub fn new(nats: async_nats::Client, timeout: Duration) -> CommandClient {
        CommandClient {
            nats,
            timeout,
            user: None,
        }
    }

    /// Sends as `user` (the NATS user the connection authenticated as).
    pub fn as_user(mut self, user: Option<String>) -> CommandClient {
        self.user = user;
        self
    }

    /// The request subject for command JSON: by its legal entity when it names a valid one
    /// (otherwise a subject the processor answers `invalid`, naming the field).
    fn rpc_subject_for(&self, json: &[u8]) -> String {
        let entity = serde_json::from_slice::<serde_json::Value>(json)
            .ok()
            .and_then(|v| {
                v.get("legal_entity")
                    .and_then(|e| e.as_str())
                    .and_then(|e| ledger::values::EntityId::new(e).ok())
            })
            .unwrap_or_else(|| ledger::values::EntityId::new("unknown").expect("valid id"));
        subjects::rpc(&entity, self.user.as_deref())
    }

    /// Sends command JSON as it is (it may be invalid: the answer says why).
    pub async fn submit_json(&self, json: Bytes) -> Result<Outcome, ClientError> {
        self.request(self.rpc_subject_for(&json), json).await
    }

    pub async fn submit(&self, command: &Command) -> Result<Outcome, ClientError> {
        let json = serde_json::to_vec(command).expect("commands serialise");
        self.request(
            subjects::rpc(&command.legal_entity, self.user.as_deref()),
            json.into(),
        )
        .await
    }

    /// Sends commands strictly in order on this connection, with up to `window` waiting for
    /// their answers at once (so the processor can group-commit them), and hands each answer
    /// to `on_outcome` in order. Publishing is sequential, so a command never overtakes one
    /// sent before it (an order's pick never arrives before its placement).
    pub async fn submit_all(
        &self,
        commands: impl IntoIterator<Item = Bytes>,
        window: usize,
        mut on_outcome: impl FnMut(usize, Result<Outcome, ClientError>),
    ) {
        use futures::StreamExt;
        let commands: Vec<Bytes> = commands.into_iter().collect();
        let prefix = self.nats.new_inbox();
        let mut replies = match self.nats.subscribe(format!("{prefix}.*")).await {
            Ok(sub) => sub,
            Err(e) => {
                for i in 0..commands.len() {
                    on_outcome(i, Err(ClientError::Request(e.to_string())));
                }
                return;
            }
        };
        // Each command's answer: awaited, received, or handed over. Only an awaited one takes
        // a reply: a late or repeated reply (after a timeout, a reconnect) is ignored.
        enum Slot {
            Unsent,
            Awaited,
            Received(Result<Outcome, ClientError>),
            Delivered,
        }
        let mut slots: Vec<Slot> = (0..commands.len()).map(|_| Slot::Unsent).collect();
        let (mut sent, mut delivered, mut waiting) = (0, 0, 0usize);
        while delivered < commands.len() {
            while sent < commands.len() && waiting < window.max(1) {
                let subject = self.rpc_subject_for(&commands[sent]);
                let reply = format!("{prefix}.{sent}");
                slots[sent] = match self
                    .nats
                    .publish_with_reply(subject, reply, commands[sent].clone())
                    .await
                {
                    Err(e) => Slot::Received(Err(ClientError::Request(e.to_string()))),
                    Ok(()) => {
                        waiting += 1;
                        Slot::Awaited
                    }
                };
                sent += 1;
            }
            while delivered < sent && matches!(slots[delivered], Slot::Received(_)) {
                if let Slot::Received(answer) =
                    std::mem::replace(&mut slots[delivered], Slot::Delivered)
                {
                    on_outcome(delivered, answer);
                }
                delivered += 1;
            }
            if delivered == commands.len() || waiting == 0 {
                continue;
            }
            match tokio::time::timeout(self.timeout, replies.next()).await {
                Ok(Some(msg)) => {
                    let index = msg
                        .subject
                        .rsplit('.')
                        .next()
                        .and_then(|i| i.parse::<usize>().ok());
                    if let Some(slot) = index
                        .and_then(|i| slots.get_mut(i))
                        .filter(|s| matches!(s, Slot::Awaited))
                    {
                        *slot = Slot::Received(
                            serde_json::from_slice(&msg.payload)
                                .map_err(|e| ClientError::Answer(e.to_string())),
                        );
                        waiting -= 1;
                    }
                }
                Ok(None) | Err(_) => {
                    // No answer in time: the rest are unknown (sending them again is safe).
                    for slot in slots.iter_mut().filter(|s| matches!(s, Slot::Awaited)) {
                        *slot = Slot::Received(Err(ClientError::Request(format!(
                            "no answer within {:?}",
                            self.timeout
                        ))));
                    }
                    waiting = 0;
                }
            }
        }
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
