//! The processor as a NATS service.
//!
//! Commands arrive two ways, into one bounded queue:
//! - request/reply on `rpc.cmd.<entity>` (queue group `processor`): the reply is the outcome;
//! - the durable `COMMANDS` stream (`cmd.<entity>`), read by the durable consumer `processor`:
//!   the message is acknowledged only once its outcome is stored in the ledger, so a crash
//!   before that redelivers it (and the ledger's outcome record makes the retry harmless).
//!   If the message has an `Erp-Reply-To` header, the outcome is published there.
//!
//! `rpc.outcome` answers "what became of command <id>?" from the recorded outcomes.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use ledger::jetstream::{JetStreamLog, provision_commands};
use ledger::subject::commands as subjects;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::command::{Command, decode};
use crate::decide::code;
use crate::processor::{Outcome, Processor, ProcessorError};

/// The NATS client type the service runs on.
pub type NatsClient = async_nats::Client;

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub commands_stream: String,
    pub consumer: String,
    /// Commands waiting to be decided; intake waits when it is full (backpressure).
    pub queue_capacity: usize,
    /// Most commands decided per tick.
    pub tick_commands_max: usize,
    /// How long the COMMANDS stream keeps intake messages.
    pub commands_max_age: Duration,
    /// How often holds are checked for expiry.
    pub hold_expiry_interval: Duration,
    /// Which roles may send which commands.
    pub roles: crate::roles::Roles,
    /// Purchase order approval limit and over-receipt tolerance.
    pub purchase_policy: crate::state::PurchasePolicy,
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        ServiceConfig {
            commands_stream: "COMMANDS".into(),
            consumer: "processor".into(),
            queue_capacity: 8192,
            tick_commands_max: 1000,
            commands_max_age: Duration::from_secs(7 * 24 * 3600),
            hold_expiry_interval: Duration::from_secs(1),
            roles: crate::roles::Roles::default(),
            purchase_policy: crate::state::PurchasePolicy::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    Open(#[from] ledger::jetstream::OpenError),
}

fn nats(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Nats(e.to_string())
}

enum Incoming {
    Rpc {
        payload: Bytes,
        reply: Option<async_nats::Subject>,
    },
    Stream(jetstream::Message),
    Query {
        payload: Bytes,
        reply: Option<async_nats::Subject>,
    },
}

enum ReplyTo {
    Rpc(Option<async_nats::Subject>),
    Stream(Box<jetstream::Message>),
}

/// A processor that has recovered its state and subscribed to its intake: from here on,
/// commands sent are queued and answered.
pub struct Service {
    client: async_nats::Client,
    processor: Processor<JetStreamLog>,
    config: ServiceConfig,
    rx: mpsc::Receiver<Incoming>,
    intake: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("applied_seq", &self.processor.applied_seq())
            .finish()
    }
}

impl Service {
    /// Rebuilds the write model from the ledger and subscribes to the intake.
    pub async fn start(
        client: async_nats::Client,
        log: JetStreamLog,
        config: ServiceConfig,
    ) -> Result<Service, ServiceError> {
        let started = std::time::Instant::now();
        let mut processor = Processor::recover(log).await?;
        processor.set_roles(config.roles.clone());
        processor.set_purchase_policy(config.purchase_policy.clone());
        tracing::info!(
            applied_seq = processor.applied_seq(),
            commands = processor.state().commands.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "processor recovered its state from the ledger"
        );
        let (tx, rx) = mpsc::channel::<Incoming>(config.queue_capacity);
        let intake = spawn_intake(&client, processor.log().jetstream(), &config, tx).await?;
        Ok(Service {
            client,
            processor,
            config,
            rx,
            intake,
        })
    }

    /// Decides commands until `shutdown` resolves.
    pub async fn serve(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServiceError> {
        tokio::pin!(shutdown);
        let mut clock = tokio::time::interval(self.config.hold_expiry_interval);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                _ = &mut shutdown => break,
                _ = clock.tick() => {
                    self.expire_holds().await;
                    continue;
                }
                incoming = self.rx.recv() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < self.config.tick_commands_max {
                match self.rx.try_recv() {
                    Ok(incoming) => batch.push(incoming),
                    Err(_) => break,
                }
            }
            handle(&self.client, &mut self.processor, batch).await;
        }
        for task in &self.intake {
            task.abort();
        }
        Ok(())
    }
}

impl Service {
    /// Ends holds whose time has passed: the clock enters here, as the effective time of the
    /// expiry commands, never inside a decider.
    async fn expire_holds(&mut self) {
        let now = ledger::values::Timestamp::new(chrono::Utc::now());
        let expired = self.processor.expiry_commands(now);
        if expired.is_empty() {
            return;
        }
        let outcomes = self.processor.process(&expired).await;
        let done = outcomes.iter().filter(|o| o.is_accepted()).count();
        tracing::info!(expired = done, of = expired.len(), "holds expired");
    }
}

/// Starts the processor and runs it until `shutdown` resolves.
pub async fn run(
    client: async_nats::Client,
    log: JetStreamLog,
    config: ServiceConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServiceError> {
    Service::start(client, log, config)
        .await?
        .serve(shutdown)
        .await
}

async fn spawn_intake(
    client: &async_nats::Client,
    js: &jetstream::Context,
    config: &ServiceConfig,
    tx: mpsc::Sender<Incoming>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServiceError> {
    let mut rpc = client
        .queue_subscribe(subjects::RPC_ALL, "processor".into())
        .await
        .map_err(nats)?;
    let mut queries = client
        .queue_subscribe(subjects::OUTCOME_QUERY, "processor".into())
        .await
        .map_err(nats)?;
    let stream = provision_commands(
        js,
        &config.commands_stream,
        subjects::INTAKE_ALL,
        config.commands_max_age,
    )
    .await?;
    let consumer = stream
        .get_or_create_consumer(
            &config.consumer,
            consumer::pull::Config {
                durable_name: Some(config.consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: config.queue_capacity as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(nats)?;
    let mut messages = consumer.messages().await.map_err(nats)?;
    let rpc_tx = tx.clone();
    let query_tx = tx.clone();
    Ok(vec![
        tokio::spawn(async move {
            while let Some(msg) = rpc.next().await {
                let incoming = Incoming::Rpc {
                    payload: msg.payload,
                    reply: msg.reply,
                };
                if rpc_tx.send(incoming).await.is_err() {
                    break;
                }
            }
        }),
        tokio::spawn(async move {
            while let Some(msg) = queries.next().await {
                let incoming = Incoming::Query {
                    payload: msg.payload,
                    reply: msg.reply,
                };
                if query_tx.send(incoming).await.is_err() {
                    break;
                }
            }
        }),
        tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                match msg {
                    Ok(msg) => {
                        if tx.send(Incoming::Stream(msg)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "command stream consumer"),
                }
            }
        }),
    ])
}

/// Decodes, decides and answers one batch of incoming messages.
async fn handle<L: ledger::EventLog>(
    client: &async_nats::Client,
    processor: &mut Processor<L>,
    batch: Vec<Incoming>,
) {
    let mut commands: Vec<Command> = Vec::with_capacity(batch.len());
    let mut replies: Vec<ReplyTo> = Vec::with_capacity(batch.len());
    for incoming in batch {
        let (payload, reply) = match incoming {
            Incoming::Rpc { payload, reply } => (payload, ReplyTo::Rpc(reply)),
            Incoming::Stream(msg) => (msg.payload.clone(), ReplyTo::Stream(Box::new(msg))),
            Incoming::Query { payload, reply } => {
                let answer = query(processor, &payload);
                if let Some(reply) = reply {
                    let _ = client.publish(reply, answer.into()).await;
                }
                continue;
            }
        };
        match decode(&payload) {
            Ok(command) => {
                commands.push(command);
                replies.push(reply);
            }
            Err(invalid) => {
                let outcome = Outcome::Invalid {
                    command_id: command_id_hint(&payload),
                    code: code::INVALID_COMMAND.into(),
                    field: invalid.field,
                    message: invalid.message,
                };
                answer(client, reply, &outcome).await;
            }
        }
    }
    if commands.is_empty() {
        return;
    }
    let outcomes = processor.process(&commands).await;
    for (reply, outcome) in replies.into_iter().zip(&outcomes) {
        answer(client, reply, outcome).await;
    }
}

fn query<L: ledger::EventLog>(processor: &Processor<L>, payload: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(payload);
    let value = match Uuid::try_parse(text.trim()) {
        Ok(id) => match processor.outcome_of(id) {
            Some(outcome) => serde_json::to_value(outcome).expect("outcomes serialise"),
            None => serde_json::json!({"status": "unknown", "command_id": id}),
        },
        Err(_) => {
            serde_json::json!({"status": "invalid", "code": code::INVALID_COMMAND, "field": "command_id", "message": "expected a UUID"})
        }
    };
    serde_json::to_vec(&value).expect("json")
}

/// The command id of an invalid command, if it can be read at all, so the caller can match
/// the answer.
fn command_id_hint(payload: &[u8]) -> Option<Uuid> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Uuid::try_parse(value.get("command_id")?.as_str()?).ok()
}

async fn answer(client: &async_nats::Client, reply: ReplyTo, outcome: &Outcome) {
    let body: Bytes = serde_json::to_vec(outcome)
        .expect("outcomes serialise")
        .into();
    match reply {
        ReplyTo::Rpc(Some(subject)) => {
            if let Err(e) = client.publish(subject, body).await {
                tracing::warn!(error = %e, "replying to a command");
            }
        }
        ReplyTo::Rpc(None) => {}
        ReplyTo::Stream(msg) => {
            if let Some(to) = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(subjects::REPLY_TO_HEADER))
            {
                let _ = client.publish(to.to_string(), body).await;
            }
            // Nothing stored: let the stream deliver it again later. Anything else is final.
            let ack = match outcome {
                Outcome::Unavailable { .. } => {
                    msg.ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                        .await
                }
                _ => msg.ack().await,
            };
            if let Err(e) = ack {
                tracing::warn!(error = %e, "acknowledging a command message");
            }
        }
    }
}
