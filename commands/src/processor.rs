//! The processor: decides commands against the in-memory write model and commits the events of
//! many commands in one atomic append (group commit).
//!
//! `Processor` is independent of how commands arrive (it works on any `EventLog`);
//! `crate::service` connects it to NATS.
//!
//! A tick: every command is decided against the state *including the tentative effects of the
//! commands before it in the tick*; its events, plus its outcome record on `cmd.<id>`, join
//! the tick's batch. The batch is appended atomically with, per subject, the head the tick
//! started from. On success the heads are confirmed; on a conflict (another writer) or an
//! unknown outcome, the tentative changes are undone, the model catches up from the log, and
//! the tick is decided again (bounded).

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};

use ledger::events::{CommandAccepted, CommandRejected, Event};
use ledger::log::BATCH_EVENTS_MAX;
use ledger::values::{ChannelId, LocationId, OrderId, PurchaseOrderId, Sku, SupplierId};
use ledger::walk::{WalkError, WalkUntil, Walked, walk};
use ledger::{
    AppendBatch, AppendError, Envelope, EventDraft, EventHash, EventLog, Expectation,
    ForeignRecord, Head, Subject,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::Command;
use crate::decide::{Rejection, code, decide};
use crate::roles::Roles;
use crate::state::{
    CommandRecord, Defined, OrderState, PurchaseOrderState, RecordedOutcome, State, StockState,
};

/// How many times a tick is decided again after conflicts before its commands are answered
/// `unavailable` (the client retries; nothing was stored).
pub const CONFLICT_RETRIES_MAX: u32 = 16;

/// What became of a command. Serialised as the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Stored: the command's events are `first_seq .. first_seq + event_count`, its outcome
    /// record at `outcome_seq`.
    Accepted {
        command_id: Uuid,
        first_seq: u64,
        event_count: u32,
        outcome_seq: u64,
    },
    /// Refused by a business rule. Recorded at `outcome_seq` unless it is a retry with a
    /// different body (`duplicate_with_different_body`), which is not recorded again.
    Rejected {
        command_id: Uuid,
        code: String,
        message: String,
        outcome_seq: Option<u64>,
    },
    /// Not a valid command; nothing recorded. `field` is the JSON path of the problem.
    Invalid {
        command_id: Option<Uuid>,
        code: String,
        field: String,
        message: String,
    },
    /// Nothing was stored; retrying with the same id is safe.
    Unavailable { command_id: Uuid, message: String },
}

impl Outcome {
    pub fn is_accepted(&self) -> bool {
        matches!(self, Outcome::Accepted { .. })
    }
}

/// Why the processor cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("reading the ledger: {0}")]
    Read(#[from] WalkError),
    #[error("appending to the ledger: {0}")]
    Append(AppendError),
}

/// How many foreign messages the processor remembers in detail (it counts all of them).
const FOREIGN_RECENT_MAX: usize = 20;

/// Foreign messages the processor has passed over in the ledger (see `ledger::walk`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ForeignSeen {
    pub count: u64,
    /// The latest ones: sequence, subject as stored, and why each is foreign.
    pub recent: VecDeque<(u64, String, String)>,
}

impl ForeignSeen {
    fn note(&mut self, f: &ForeignRecord) {
        self.count += 1;
        if self.recent.len() == FOREIGN_RECENT_MAX {
            self.recent.pop_front();
        }
        self.recent
            .push_back((f.seq, f.stored_subject.clone(), f.reason.to_string()));
    }
}

/// What the processor reports about itself (`rpc.status`, `erp status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessorStatus {
    pub applied_seq: u64,
    pub commands_recorded: usize,
    pub foreign: ForeignSeen,
    /// Commands recorded `internal_error` since this process started (a decider failed).
    pub internal_errors: u64,
}

/// One of `command`'s events as the processor writes it: a new event id, the command's ids,
/// actor, legal entity and business time.
pub fn draft(command: &Command, subject: Subject, event: Event) -> EventDraft {
    EventDraft {
        event_id: Uuid::now_v7(),
        subject,
        command_id: command.command_id,
        correlation_id: command.correlation_id,
        actor: command.actor.clone(),
        legal_entity: command.legal_entity.clone(),
        effective_at: command.effective_at,
        event,
    }
}

/// A command's saved aggregate, to undo a tick's tentative changes.
enum Saved {
    Item(Sku, Option<Defined<Box<ledger::events::ItemDefined>>>),
    Location(LocationId, Option<Defined<ledger::events::LocationDefined>>),
    Channel(ChannelId, Option<Defined<ledger::events::ChannelDefined>>),
    Supplier(SupplierId, Option<Defined<ledger::events::SupplierDefined>>),
    Stock(Sku, Option<StockState>),
    Order(OrderId, Option<OrderState>),
    Command(Uuid, Option<CommandRecord>),
    PurchaseOrder(PurchaseOrderId, Option<PurchaseOrderState>),
    Other(Subject, Option<Head>),
}

fn save(state: &State, subject: &Subject) -> Saved {
    match subject {
        Subject::Item(k) => Saved::Item(k.clone(), state.items.get(k).cloned()),
        Subject::Location(k) => Saved::Location(k.clone(), state.locations.get(k).cloned()),
        Subject::Channel(k) => Saved::Channel(k.clone(), state.channels.get(k).cloned()),
        Subject::Supplier(k) => Saved::Supplier(k.clone(), state.suppliers.get(k).cloned()),
        Subject::Stock(k) => Saved::Stock(k.clone(), state.stock.get(k).cloned()),
        Subject::Order(k) => Saved::Order(k.clone(), state.orders.get(k).cloned()),
        Subject::Command(k) => Saved::Command(*k, state.commands.get(k).cloned()),
        Subject::PurchaseOrder(k) => {
            Saved::PurchaseOrder(k.clone(), state.purchase_orders.get(k).cloned())
        }
        other => Saved::Other(other.clone(), state.other_heads.get(other).copied()),
    }
}

fn put<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    };
}

fn restore(state: &mut State, saved: Saved) {
    match saved {
        Saved::Item(k, v) => put(&mut state.items, k, v),
        Saved::Location(k, v) => {
            match v {
                Some(v) => state.locations.insert(k, v),
                None => state.locations.remove(&k),
            };
        }
        Saved::Channel(k, v) => put(&mut state.channels, k, v),
        Saved::Supplier(k, v) => put(&mut state.suppliers, k, v),
        Saved::Stock(k, v) => put(&mut state.stock, k, v),
        Saved::Order(k, v) => {
            state.index_backorders(&k, false);
            put(&mut state.orders, k.clone(), v);
            state.index_backorders(&k, true);
        }
        Saved::Command(k, v) => put(&mut state.commands, k, v),
        Saved::PurchaseOrder(k, v) => put(&mut state.purchase_orders, k, v),
        Saved::Other(k, v) => put(&mut state.other_heads, k, v),
    }
}

/// One command's part of a tick.
struct Pending {
    index: usize,
    command_id: Uuid,
    /// Position of its first event in the batch, and how many (outcome record excluded).
    first: usize,
    events: usize,
    rejection: Option<Rejection>,
}

/// The batch being built, and how to take it back.
#[derive(Default)]
struct Tick {
    saved: Vec<Saved>,
    touched: HashSet<Subject>,
    expectations: Vec<Expectation>,
    drafts: Vec<EventDraft>,
    pending: Vec<Pending>,
}

impl Tick {
    fn touch(&mut self, state: &State, subject: &Subject) {
        if self.touched.insert(subject.clone()) {
            self.expectations.push(Expectation {
                subject: subject.clone(),
                head: state.expected_head(subject),
            });
            self.saved.push(save(state, subject));
        }
    }

    fn undo(&mut self, state: &mut State) {
        for saved in self.saved.drain(..).rev() {
            restore(state, saved);
        }
    }
}

/// A command deciding which panicked: recorded `internal_error`, never decided again.
#[derive(Debug)]
struct Poisoned;

/// Test hook: in debug builds, `ERP_FAULT_PANIC_ON_SKU=<sku>` makes deciding any command that
/// names that SKU panic, as a decider bug would (release builds ignore it).
fn fault_panic_sku() -> Option<String> {
    if cfg!(debug_assertions) {
        std::env::var("ERP_FAULT_PANIC_ON_SKU").ok()
    } else {
        None
    }
}

/// The write side over one event log.
#[derive(Debug)]
pub struct Processor<L> {
    log: L,
    state: State,
    /// Every log record up to here is in `state` (or was foreign and passed over).
    applied_seq: u64,
    roles: Roles,
    foreign: ForeignSeen,
    /// Commands whose decision panicked, with what the panic said.
    poisoned: HashMap<Uuid, String>,
    internal_errors: u64,
    fault_panic_sku: Option<String>,
}

impl<L: EventLog> Processor<L> {
    /// Rebuilds the write model from the whole log.
    pub async fn recover(log: L) -> Result<Processor<L>, ProcessorError> {
        let mut processor = Processor {
            log,
            state: State::default(),
            applied_seq: 0,
            roles: Roles::default(),
            foreign: ForeignSeen::default(),
            poisoned: HashMap::new(),
            internal_errors: 0,
            fault_panic_sku: fault_panic_sku(),
        };
        processor.catch_up().await?;
        Ok(processor)
    }

    /// Makes deciding any command that names `sku` panic, as a decider bug would (tests).
    #[cfg(test)]
    pub(crate) fn inject_decider_panic(&mut self, sku: &str) {
        self.fault_panic_sku = Some(sku.to_owned());
    }

    /// What the processor reports about itself.
    pub fn status(&self) -> ProcessorStatus {
        ProcessorStatus {
            applied_seq: self.applied_seq,
            commands_recorded: self.state.commands.len(),
            foreign: self.foreign.clone(),
            internal_errors: self.internal_errors,
        }
    }

    /// Replaces the role table (the built-in one is used until then).
    pub fn set_roles(&mut self, roles: Roles) {
        self.roles = roles;
    }

    /// Sets the purchasing rules (approval limit, over-receipt tolerance) that decisions use
    /// from now on.
    pub fn set_purchase_policy(&mut self, policy: crate::state::PurchasePolicy) {
        self.state.purchase_policy = policy;
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    pub fn log(&self) -> &L {
        &self.log
    }

    /// Applies every batch after `applied_seq`; passes over foreign messages (noting where
    /// they sit, since the next append to their subject must expect them), and reports them.
    pub async fn catch_up(&mut self) -> Result<u64, WalkError> {
        let mut walker = walk(&self.log, self.applied_seq + 1, WalkUntil::CaughtUp, None).await?;
        let mut applied = 0;
        while let Some(item) = walker.next().await {
            match item? {
                Walked::Batch(batch) => {
                    for e in &batch.events {
                        self.state.apply(
                            &e.envelope,
                            Some(Head {
                                seq: e.seq,
                                hash: e.hash,
                            }),
                        );
                        applied += 1;
                    }
                    self.applied_seq = batch.marker.seq;
                }
                Walked::Foreign(f) => {
                    tracing::warn!(
                        seq = f.seq,
                        subject = %f.stored_subject,
                        reason = %f.reason,
                        "a message in the ledger that this writer did not write: passed over, never applied"
                    );
                    if let Some(subject) = &f.subject {
                        self.state.note_foreign(subject, f.seq);
                    }
                    self.foreign.note(&f);
                    self.applied_seq = f.seq;
                }
            }
        }
        Ok(applied)
    }

    /// `stock.expire_hold` commands for every hold whose expiry is at or before `now`. Their
    /// ids are derived from the hold (SKU, id, expiry), so two processors expiring the same
    /// hold send the same command and the second gets the first one's outcome.
    pub fn expiry_commands(&self, now: ledger::values::Timestamp) -> Vec<Command> {
        const NAMESPACE: Uuid = Uuid::from_u128(0x2d0e_55a1_8f7c_4e1b_b1a4_77c2_90de_31f5);
        let mut expired = Vec::new();
        for (sku, stock) in &self.state.stock {
            for (hold_id, hold) in stock
                .extras()
                .holds
                .iter()
                .filter(|(_, h)| h.expires_at <= now)
            {
                let name = format!("expire:{sku}:{hold_id}:{}", hold.expires_at.micros());
                expired.push(Command {
                    command_id: Uuid::new_v5(&NAMESPACE, name.as_bytes()),
                    correlation_id: Uuid::new_v5(&NAMESPACE, name.as_bytes()),
                    actor: ledger::values::Actor {
                        id: ledger::values::ActorId::new("processor").expect("valid id"),
                        role: ledger::values::Role::new("system").expect("valid role"),
                    },
                    on_behalf_of: None,
                    legal_entity: hold.legal_entity.clone(),
                    effective_at: hold.expires_at,
                    body: crate::command::CommandBody::ExpireHold(crate::command::ExpireHold {
                        sku: sku.clone(),
                        hold: hold_id.clone(),
                    }),
                    sender: None,
                });
            }
        }
        expired
    }

    /// The recorded outcome of a command, if it has one.
    pub fn outcome_of(&self, command_id: Uuid) -> Option<Outcome> {
        self.state
            .commands
            .get(&command_id)
            .map(|r| recorded_outcome(command_id, r))
    }

    /// Decides and commits a group of commands; one outcome per command, in order.
    pub async fn process(&mut self, commands: &[Command]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; commands.len()];
        let mut start = 0;
        while start < commands.len() {
            start = self.commit_from(commands, start, &mut outcomes).await;
        }
        outcomes
            .into_iter()
            .zip(commands)
            .map(|(o, c)| {
                o.unwrap_or_else(|| Outcome::Unavailable {
                    command_id: c.command_id,
                    message: "not processed".into(),
                })
            })
            .collect()
    }

    /// Commits as many commands from `start` as fit one append; returns where the next
    /// append starts.
    async fn commit_from(
        &mut self,
        commands: &[Command],
        start: usize,
        outcomes: &mut [Option<Outcome>],
    ) -> usize {
        let mut attempt = 0;
        while attempt < CONFLICT_RETRIES_MAX {
            let (mut tick, end) = match self.build_tick(commands, start, outcomes) {
                Ok(built) => built,
                // A decision panicked: its command is poisoned; decide the tick again without
                // it (each command is poisoned at most once, so this ends).
                Err(Poisoned) => continue,
            };
            attempt += 1;
            if tick.drafts.is_empty() {
                return end;
            }
            let batch = AppendBatch {
                // Decided against everything up to here: anything appended since is a conflict.
                expected_last_seq: Some(self.applied_seq),
                expectations: tick.expectations.clone(),
                events: tick.drafts.clone(),
            };
            match self.log.append(batch).await {
                Ok(appended) => {
                    for (subject, head) in appended.heads() {
                        self.state.confirm(subject, head);
                    }
                    self.applied_seq = appended.last_seq;
                    for p in &tick.pending {
                        outcomes[p.index] = Some(committed_outcome(p, &appended.events));
                    }
                    // Retries of a command decided earlier in the same tick get its outcome.
                    for (i, c) in commands.iter().enumerate().take(end).skip(start) {
                        if outcomes[i].is_none() {
                            outcomes[i] = self.outcome_of(c.command_id);
                        }
                    }
                    return end;
                }
                Err(AppendError::Conflict { .. } | AppendError::OutcomeUnknown(_)) => {
                    tick.undo(&mut self.state);
                    if let Err(e) = self.catch_up().await {
                        tracing::warn!(error = %e, "catching up after a conflict failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    for p in &tick.pending {
                        outcomes[p.index] = None;
                    }
                }
                Err(e) => {
                    tick.undo(&mut self.state);
                    tracing::error!(error = %e, "append failed");
                    for p in &tick.pending {
                        outcomes[p.index] = Some(Outcome::Unavailable {
                            command_id: p.command_id,
                            message: e.to_string(),
                        });
                    }
                    if let AppendError::FencingBreach(reason) = &e {
                        // Another writer is active in a way the checks did not stop: this
                        // process must not write again. A supervisor restarts it from the log.
                        panic!("fencing breach: {reason}");
                    }
                    return end;
                }
            }
        }
        for (i, c) in commands.iter().enumerate().skip(start) {
            outcomes[i].get_or_insert_with(|| Outcome::Unavailable {
                command_id: c.command_id,
                message: format!(
                    "the ledger kept changing under {CONFLICT_RETRIES_MAX} attempts; retry"
                ),
            });
        }
        commands.len()
    }

    /// Decides commands from `start` into one batch, applying them tentatively. If deciding a
    /// command panics, the tick is undone, the command is marked poisoned (it will be recorded
    /// `internal_error`), and `Err(Poisoned)` asks the caller to build the tick again.
    fn build_tick(
        &mut self,
        commands: &[Command],
        start: usize,
        outcomes: &mut [Option<Outcome>],
    ) -> Result<(Tick, usize), Poisoned> {
        let mut tick = Tick::default();
        let mut in_tick = HashSet::new();
        let mut index = start;
        while index < commands.len() {
            let command = &commands[index];
            let body_sha256 = command.body_sha256();
            if let Some(record) = self.state.commands.get(&command.command_id) {
                // Answered from the record once the tick commits (it may be in this tick).
                if record.body_sha256 != body_sha256 {
                    outcomes[index] = Some(different_body(command.command_id));
                } else if !in_tick.contains(&command.command_id) {
                    outcomes[index] = Some(recorded_outcome(command.command_id, record));
                }
                index += 1;
                continue;
            }
            let decided = match self.poisoned.get(&command.command_id) {
                Some(what) => Ok(internal_error(what)),
                None => catch_unwind(AssertUnwindSafe(|| self.decide_one(command))),
            };
            let decision = match decided {
                Ok(decision) => decision,
                Err(panic) => return Err(self.poison(&mut tick, command, panic.as_ref())),
            };
            let events = decision.as_ref().map_or(0, Vec::len);
            if tick.drafts.len() + events + 1 > BATCH_EVENTS_MAX {
                if tick.drafts.is_empty() {
                    outcomes[index] = Some(Outcome::Unavailable {
                        command_id: command.command_id,
                        message: format!(
                            "the command produces {events} events; at most {} fit one atomic append",
                            BATCH_EVENTS_MAX - 1
                        ),
                    });
                    index += 1;
                    continue;
                }
                break;
            }
            let added = catch_unwind(AssertUnwindSafe(|| {
                self.add_to_tick(&mut tick, index, command, body_sha256, decision);
            }));
            if let Err(panic) = added {
                return Err(self.poison(&mut tick, command, panic.as_ref()));
            }
            in_tick.insert(command.command_id);
            index += 1;
        }
        Ok((tick, index))
    }

    /// Who may send it, then the business rules.
    fn decide_one(&self, command: &Command) -> Result<Vec<(Subject, Event)>, Rejection> {
        if let Some(sku) = &self.fault_panic_sku
            && command.targets().contains(&format!("sku:{sku}"))
        {
            panic!("injected fault: deciding a command for SKU {sku}");
        }
        crate::access::check_sender(command)?;
        self.roles.check(command)?;
        decide(&self.state, command)
    }

    /// Undoes the tick after a panic while deciding `command`, and marks the command so that it
    /// is recorded `internal_error` instead of being decided again.
    fn poison(
        &mut self,
        tick: &mut Tick,
        command: &Command,
        panic: &(dyn std::any::Any + Send),
    ) -> Poisoned {
        tick.undo(&mut self.state);
        self.state.reindex_backorders();
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".to_owned());
        tracing::error!(
            command_id = %command.command_id,
            command_type = command.body.type_name(),
            panic = %what,
            "deciding a command failed inside the processor; it is recorded internal_error and never decided again"
        );
        self.internal_errors += 1;
        self.poisoned.insert(command.command_id, what);
        Poisoned
    }

    fn add_to_tick(
        &mut self,
        tick: &mut Tick,
        index: usize,
        command: &Command,
        body_sha256: [u8; 32],
        decision: Result<Vec<(Subject, Event)>, Rejection>,
    ) {
        let first = tick.drafts.len();
        let command_type = command.body.type_name().to_owned();
        let (events, outcome, rejection) = match decision {
            Ok(events) => {
                let count = events.len() as u32;
                let accepted = Event::CommandAccepted(CommandAccepted {
                    command_type,
                    body_sha256,
                    event_count: count,
                    on_behalf_of: command.on_behalf_of.clone(),
                });
                (events, accepted, None)
            }
            Err(rejection) => {
                let rejected = Event::CommandRejected(CommandRejected {
                    command_type,
                    body_sha256,
                    code: rejection.code.to_owned(),
                    message: rejection.message.clone(),
                    targets: command.targets(),
                    on_behalf_of: command.on_behalf_of.clone(),
                });
                (Vec::new(), rejected, Some(rejection))
            }
        };
        let count = events.len();
        let skus: Vec<Sku> = events
            .iter()
            .filter_map(|(s, _)| match s {
                Subject::Stock(sku) => Some(sku.clone()),
                _ => None,
            })
            .collect();
        let clean_before: Vec<bool> = skus
            .iter()
            .map(|s| self.state.invariant_violation(s).is_none())
            .collect();
        let all = events.into_iter().chain(std::iter::once((
            Subject::Command(command.command_id),
            outcome,
        )));
        let actor = crate::access::recorded_actor(command);
        for (subject, event) in all {
            tick.touch(&self.state, &subject);
            let mut draft = draft(command, subject, event);
            draft.actor = actor.clone();
            self.state.apply(
                &Envelope::from_draft(draft.clone(), EventHash::GENESIS),
                None,
            );
            tick.drafts.push(draft);
        }
        for (sku, clean) in skus.iter().zip(clean_before) {
            if clean && let Some(violation) = self.state.invariant_violation(sku) {
                // A decider let through what the invariants forbid: stop before it is stored.
                panic!(
                    "invariant broken by {} {}: {violation}",
                    command.body.type_name(),
                    command.command_id
                );
            }
        }
        tick.pending.push(Pending {
            index,
            command_id: command.command_id,
            first,
            events: count,
            rejection,
        });
    }
}

fn internal_error(what: &str) -> Result<Vec<(Subject, Event)>, Rejection> {
    Err(Rejection {
        code: code::INTERNAL_ERROR,
        message: format!(
            "deciding this command failed inside the processor ({what}); it is recorded so that it is never decided again, and nothing else was stored; report it"
        ),
    })
}

fn different_body(command_id: Uuid) -> Outcome {
    Outcome::Rejected {
        command_id,
        code: code::DUPLICATE_WITH_DIFFERENT_BODY.into(),
        message:
            "this command id was used before with a different body; use a new id for a new command"
                .into(),
        outcome_seq: None,
    }
}

fn recorded_outcome(command_id: Uuid, record: &CommandRecord) -> Outcome {
    let outcome_seq = record.head.map_or(0, |h| h.seq);
    match &record.outcome {
        RecordedOutcome::Accepted { event_count } => Outcome::Accepted {
            command_id,
            first_seq: outcome_seq - u64::from(*event_count),
            event_count: *event_count,
            outcome_seq,
        },
        RecordedOutcome::Rejected(rejection) => Outcome::Rejected {
            command_id,
            code: rejection.code.clone(),
            message: rejection.message.clone(),
            outcome_seq: Some(outcome_seq),
        },
    }
}

fn committed_outcome(p: &Pending, appended: &[ledger::log::AppendedEvent]) -> Outcome {
    let outcome_seq = appended[p.first + p.events].seq;
    match &p.rejection {
        None => Outcome::Accepted {
            command_id: p.command_id,
            first_seq: outcome_seq - p.events as u64,
            event_count: p.events as u32,
            outcome_seq,
        },
        Some(r) => Outcome::Rejected {
            command_id: p.command_id,
            code: r.code.into(),
            message: r.message.clone(),
            outcome_seq: Some(outcome_seq),
        },
    }
}
