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
    #[error(
        "no processor is answering on {subject} (none running, or it is restarting); nothing was decided, sending it again is safe"
    )]
    NoProcessor { subject: String },
    #[error("the processor's answer is not an outcome: {0}")]
    Answer(String),
}

impl ClientError {
    /// Whether the command may simply not have reached a processor (sending it again with
    /// the same id is safe either way).
    fn retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Request(_) | ClientError::NoProcessor { .. }
        )
    }
}

/// Whether an answer is worth sending the command again for: no answer, no processor, or
/// `unavailable` (nothing stored).
fn retryable(answer: &Result<Outcome, ClientError>) -> bool {
    match answer {
        Ok(outcome) => matches!(outcome, Outcome::Unavailable { .. }),
        Err(e) => e.retryable(),
    }
}

/// Reads a reply: an outcome, or the server's "no responders" status.
fn read_reply(subject: &str, msg: &async_nats::Message) -> Result<Outcome, ClientError> {
    if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS)
        || (msg.payload.is_empty() && msg.status.is_some())
    {
        return Err(ClientError::NoProcessor {
            subject: subject.to_owned(),
        });
    }
    serde_json::from_slice(&msg.payload).map_err(|e| ClientError::Answer(e.to_string()))
}

/// How many windows of commands `submit_all` sends before it retries what got no answer.
const RETRY_STRETCH: usize = 16;

#[derive(Debug, Clone)]
pub struct CommandClient {
    nats: async_nats::Client,
    timeout: Duration,
    /// How long `submit_all` keeps sending again the commands that got no answer, no
    /// processor, or `unavailable` (zero: once only).
    retry_for: Duration,
    /// The NATS user the connection authenticated as, if it did: its commands go to the
    /// subjects that end in its name (the only ones the server lets it publish on).
    user: Option<String>,
}

impl CommandClient {
    pub fn new(nats: async_nats::Client, timeout: Duration) -> CommandClient {
        CommandClient {
            nats,
            timeout,
            retry_for: Duration::ZERO,
            user: None,
        }
    }

    /// Makes `submit_all` send again, with the same ids (safe: a command has one outcome),
    /// every command that got no answer in time, no processor, or `unavailable`, with growing
    /// pauses (0.1 s doubling to 1 s: a failover lasts seconds, so a longer pause only adds to
    /// it), for up to `retry_for`; what still has none then is handed over as it stands.
    pub fn retrying(mut self, retry_for: Duration) -> CommandClient {
        self.retry_for = retry_for;
        self
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
    /// sent before it (an order's pick never arrives before its placement). With `retrying`,
    /// commands without a definitive answer are sent again (in their order) until they get
    /// one or the time is up.
    pub async fn submit_all(
        &self,
        commands: impl IntoIterator<Item = Bytes>,
        window: usize,
        mut on_outcome: impl FnMut(usize, Result<Outcome, ClientError>),
    ) {
        let commands: Vec<Bytes> = commands.into_iter().collect();
        let mut answers: Vec<Option<Result<Outcome, ClientError>>> =
            (0..commands.len()).map(|_| None).collect();
        let mut delivered = 0;
        // Commands go in stretches of `RETRY_STRETCH` windows, each retried to the end before
        // the next: a command that got no answer is sent again within seconds, not after
        // every other command of a long file, and answers keep coming in order.
        let stretch = window.max(1) * RETRY_STRETCH;
        for start in (0..commands.len()).step_by(stretch) {
            let end = (start + stretch).min(commands.len());
            self.submit_stretch(
                &commands,
                (start..end).collect(),
                window,
                &mut answers,
                &mut delivered,
                &mut on_outcome,
            )
            .await;
        }
    }

    /// `submit_all` over `pending` (of `commands`), retried until each has an answer or
    /// `retry_for` has passed; answers handed over in order from `delivered` on.
    async fn submit_stretch(
        &self,
        commands: &[Bytes],
        mut pending: Vec<usize>,
        window: usize,
        answers: &mut [Option<Result<Outcome, ClientError>>],
        delivered: &mut usize,
        on_outcome: &mut impl FnMut(usize, Result<Outcome, ClientError>),
    ) {
        let deadline = std::time::Instant::now() + self.retry_for;
        let mut pause = Duration::from_millis(100);
        while !pending.is_empty() {
            let last_round = std::time::Instant::now() >= deadline;
            let mut again = Vec::new();
            self.send_round(commands, &pending, window, |i, answer| {
                if !last_round && retryable(&answer) {
                    again.push(i);
                } else {
                    answers[i] = Some(answer);
                }
                while let Some(answer) = answers.get_mut(*delivered).and_then(Option::take) {
                    on_outcome(*delivered, answer);
                    *delivered += 1;
                }
            })
            .await;
            pending = again;
            if !pending.is_empty() {
                tracing::debug!(
                    commands = pending.len(),
                    "no definitive answer yet; sending them again"
                );
                tokio::time::sleep(
                    pause.min(deadline.saturating_duration_since(std::time::Instant::now())),
                )
                .await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }

    /// One pass of `submit_all` over `indices` (of `commands`), answers handed over in order.
    async fn send_round(
        &self,
        commands: &[Bytes],
        indices: &[usize],
        window: usize,
        mut on_outcome: impl FnMut(usize, Result<Outcome, ClientError>),
    ) {
        use futures::StreamExt;
        let prefix = self.nats.new_inbox();
        let mut replies = match self.nats.subscribe(format!("{prefix}.*")).await {
            Ok(sub) => sub,
            Err(e) => {
                for &i in indices {
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
        let total = indices.len();
        let mut slots: Vec<Slot> = (0..total).map(|_| Slot::Unsent).collect();
        let subjects: Vec<String> = indices
            .iter()
            .map(|&i| self.rpc_subject_for(&commands[i]))
            .collect();
        let (mut sent, mut delivered, mut waiting) = (0, 0, 0usize);
        while delivered < total {
            while sent < total && waiting < window.max(1) {
                let reply = format!("{prefix}.{sent}");
                slots[sent] = match self
                    .nats
                    .publish_with_reply(
                        subjects[sent].clone(),
                        reply,
                        commands[indices[sent]].clone(),
                    )
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
                    on_outcome(indices[delivered], answer);
                }
                delivered += 1;
            }
            if delivered == total || waiting == 0 {
                continue;
            }
            match tokio::time::timeout(self.timeout, replies.next()).await {
                Ok(Some(msg)) => {
                    let index = msg
                        .subject
                        .rsplit('.')
                        .next()
                        .and_then(|i| i.parse::<usize>().ok());
                    if let Some(k) = index.filter(|&k| matches!(slots.get(k), Some(Slot::Awaited)))
                    {
                        slots[k] = Slot::Received(read_reply(&subjects[k], &msg));
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
        // The request's own timeout is this client's, not the connection's default (10 s).
        let request = self.nats.send_request(
            subject.clone(),
            async_nats::Request::new()
                .payload(body)
                .timeout(Some(self.timeout + std::time::Duration::from_millis(500))),
        );
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(msg)) => Ok(msg.payload),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Err(ClientError::NoProcessor { subject })
            }
            Ok(Err(e)) => Err(ClientError::Request(e.to_string())),
            Err(_) => Err(ClientError::Request(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }
}
