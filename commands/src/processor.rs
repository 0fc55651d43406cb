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
use ledger::values::{ChannelId, EntityId, LocationId, OrderId, PurchaseOrderId, Sku, SupplierId};
use ledger::walk::{WalkError, WalkUntil, Walked, walk};
use ledger::{
    AppendBatch, AppendError, Envelope, EventDraft, EventHash, EventLog, Expectation,
    ForeignRecord, Head, Subject,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::Command;
use crate::decide::{Rejection, code, decide};
use crate::recall::RecallError;
use crate::roles::Roles;
use crate::snapshot;
use crate::state::{
    CommandRecord, Defined, EntityState, OrderState, PurchaseOrderState, RecordedOutcome, State,
    StockState,
};

/// How many times a tick is decided again after conflicts before its commands are answered
/// `unavailable` (the client retries; nothing was stored).
pub const CONFLICT_RETRIES_MAX: u32 = 16;

/// How long one catch-up read after a failed append may go without finishing before it is
/// started again from where it got to (it keeps what it applied). Longer than a walk waits
/// for an unterminated tail to grow (`ledger::walk::TAIL_SETTLE`, 1.48 s in all), so that a
/// foreign tail is still classified.
const CATCH_UP_SLICE: std::time::Duration = std::time::Duration::from_secs(2);

/// The same for the first read after a new leader was elected: in the failover bench that
/// read made no progress in 2 s about one kill in three, and the read after it went through.
const CATCH_UP_SLICE_AFTER_ELECTION: std::time::Duration = std::time::Duration::from_millis(750);

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

/// Where a recovery started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// No snapshot: the whole log was replayed.
    FromScratch,
    /// The snapshot taken at this sequence, then the records after it.
    FromSnapshot { seq: u64 },
    /// The snapshot was not used (damaged, another format, another ledger): the whole log
    /// was replayed.
    SnapshotRefused { reason: snapshot::SnapshotError },
}

/// How many archived command records are read back from the log at once.
const RECALL_READS_IN_FLIGHT: usize = 64;
/// How far down the queue archived orders are read back ahead of their batch.
const RECALL_LOOKAHEAD: usize = 4096;

/// How many foreign messages the processor remembers in detail (it counts all of them).
const FOREIGN_RECENT_MAX: usize = 20;

/// Foreign messages the processor has passed over in the ledger (see `ledger::walk`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Orders held in memory (open, or finished and named by a command in flight).
    pub orders_in_memory: usize,
    /// Finished orders archived: out of memory, read back from the ledger when named.
    pub orders_archived: usize,
    /// Orders and command records read back from the ledger since this process started.
    pub recalled: u64,
    /// Batches stored since this process started, and what they held.
    pub batches: BatchCounts,
    /// Batches sent and not yet acknowledged, now.
    pub in_flight: usize,
    /// From a command's arrival at the processor to its answer being sent, since this
    /// process started (filled in by the service, which sees both ends).
    pub answer_latency: crate::latency::LatencyCounts,
}

/// Upper bounds of the commands-per-batch histogram's buckets.
pub const BATCH_SIZE_BUCKETS: [usize; 10] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];

/// What the processor's batches held, counted since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchCounts {
    /// Batches acknowledged by the log.
    pub committed: u64,
    /// Commands and events in them.
    pub commands: u64,
    pub events: u64,
    /// Committed batches by commands held: `commands_per_batch[i]` counts those of at most
    /// `BATCH_SIZE_BUCKETS[i]` commands (and more than the bound before).
    pub commands_per_batch: [u64; BATCH_SIZE_BUCKETS.len()],
    /// Failures that rolled batches back (a conflict with another writer, a refusal, a lost
    /// or unknown acknowledgement), and how many batches they took with them.
    pub rollbacks: u64,
    pub rolled_back_batches: u64,
}

impl BatchCounts {
    fn committed(&mut self, commands: usize, events: usize) {
        self.committed += 1;
        self.commands += commands as u64;
        self.events += events as u64;
        let bucket = BATCH_SIZE_BUCKETS
            .iter()
            .position(|b| commands <= *b)
            .unwrap_or(BATCH_SIZE_BUCKETS.len() - 1);
        self.commands_per_batch[bucket] += 1;
    }
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
    Item(Sku, Option<Defined<crate::state::ItemRules>>),
    /// A location's definition, the entity it belongs to, its shipping rates and its daily
    /// capacity.
    Location(LocationId, Box<SavedLocation>),
    /// A channel's definition and the shelf life it wants.
    Channel(
        ChannelId,
        Option<Defined<ledger::events::ChannelDefined>>,
        Option<u32>,
    ),
    Supplier(SupplierId, Option<Defined<ledger::events::SupplierDefined>>),
    Stock(Sku, Option<StockState>),
    Order(OrderId, Option<OrderState>),
    Command(Uuid, Option<CommandRecord>),
    PurchaseOrder(PurchaseOrderId, Option<PurchaseOrderState>),
    Entity(EntityId, Option<EntityState>),
    /// Events per legal entity and month: every event counts, so a tick saves the table
    /// once, before its first change (it holds a few entries per entity and month).
    PeriodEvents(std::collections::BTreeMap<EntityId, std::collections::BTreeMap<u32, u64>>),
    /// The legal entities that confirm deliveries, saved with the period table.
    DeliveryEntities(std::collections::BTreeSet<EntityId>),
    /// The business clock of each legal entity, saved with the period table.
    BusinessClock(std::collections::BTreeMap<EntityId, ledger::values::Timestamp>),
    /// What each location with a daily capacity took on today (allocations name locations
    /// on stock subjects), saved with the period table.
    DayUse(std::collections::BTreeMap<LocationId, crate::state::DayUse>),
}

/// Everything the write model keeps under a location's subject.
struct SavedLocation {
    defined: Option<Defined<ledger::events::LocationDefined>>,
    entity: Option<EntityId>,
    rates: Option<std::collections::BTreeMap<String, ledger::values::Money>>,
    capacity: Option<u32>,
    order_capacity: Option<u32>,
}

fn save(state: &State, subject: &Subject) -> Saved {
    match subject {
        Subject::Item(k) => Saved::Item(k.clone(), state.items.get(k).cloned()),
        Subject::Location(k) => Saved::Location(
            k.clone(),
            Box::new(SavedLocation {
                defined: state.locations.get(k).cloned(),
                entity: state.location_entities.get(k).cloned(),
                rates: state.shipping_rates.get(k).cloned(),
                capacity: state.daily_capacity.get(k).copied(),
                order_capacity: state.daily_order_capacity.get(k).copied(),
            }),
        ),
        Subject::Channel(k) => Saved::Channel(
            k.clone(),
            state.channels.get(k).cloned(),
            state.shelf_life.get(k).copied(),
        ),
        Subject::Supplier(k) => Saved::Supplier(k.clone(), state.suppliers.get(k).cloned()),
        Subject::Stock(k) => Saved::Stock(k.clone(), state.stock.get(k).cloned()),
        Subject::Order(k) => Saved::Order(k.clone(), state.orders.get(k).cloned()),
        Subject::Command(k) => Saved::Command(*k, state.commands.get(k).cloned()),
        Subject::PurchaseOrder(k) => {
            Saved::PurchaseOrder(k.clone(), state.purchase_orders.get(k).cloned())
        }
        Subject::LegalEntity(k) => Saved::Entity(k.clone(), state.entities.get(k).cloned()),
    }
}

fn put<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    };
}

fn put_ordered<K: Ord, V>(map: &mut std::collections::BTreeMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    };
}

/// Puts back an entry of a dense map. Entries added by the rolled-back batch are at the end,
/// so removing them keeps the order a replay would build, at the cost of a short shift.
fn put_dense<K: std::hash::Hash + Eq, V>(
    map: &mut crate::state::IndexMap<K, V>,
    key: K,
    value: Option<V>,
) {
    match value {
        Some(v) => map.insert(key, v),
        None => map.shift_remove(&key),
    };
}

fn restore(state: &mut State, saved: Saved) {
    match saved {
        Saved::Item(k, v) => put_dense(&mut state.items, k, v),
        Saved::Location(k, saved) => {
            let SavedLocation {
                defined,
                entity,
                rates,
                capacity,
                order_capacity,
            } = *saved;
            put_ordered(&mut state.location_entities, k.clone(), entity);
            put_ordered(&mut state.shipping_rates, k.clone(), rates);
            put_ordered(&mut state.daily_capacity, k.clone(), capacity);
            put_ordered(&mut state.daily_order_capacity, k.clone(), order_capacity);
            put_ordered(&mut state.locations, k, defined);
        }
        Saved::Channel(k, v, days) => {
            put(&mut state.channels, k.clone(), v);
            put_ordered(&mut state.shelf_life, k, days);
        }
        Saved::Supplier(k, v) => put(&mut state.suppliers, k, v),
        Saved::Stock(k, v) => put_dense(&mut state.stock, k, v),
        Saved::Order(k, v) => {
            state.index_backorders(&k, false);
            put_ordered(&mut state.orders, k.clone(), v);
            state.index_backorders(&k, true);
        }
        Saved::Command(k, v) => put_ordered(&mut state.commands, k, v),
        Saved::PurchaseOrder(k, v) => put(&mut state.purchase_orders, k, v),
        Saved::Entity(k, v) => put_ordered(&mut state.entities, k, v),
        Saved::PeriodEvents(table) => state.period_events = table,
        Saved::DeliveryEntities(set) => state.delivery_entities = set,
        Saved::BusinessClock(clocks) => state.business_clock = clocks,
        Saved::DayUse(used) => state.day_use = used,
    }
}

/// One command's part of a tick.
struct Pending {
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
        if self.saved.is_empty() {
            self.saved
                .push(Saved::PeriodEvents(state.period_events.clone()));
            self.saved
                .push(Saved::DeliveryEntities(state.delivery_entities.clone()));
            self.saved
                .push(Saved::BusinessClock(state.business_clock.clone()));
            self.saved.push(Saved::DayUse(state.day_use.clone()));
        }
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

/// Identifies a queued command's outcome (`Processor::enqueue`, `Processor::settle_next`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// How many batches may be in flight, and how large they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Batches sent and not yet acknowledged, at most (1 on a replicated ledger, where
    /// per-subject checks cannot see batches not yet applied).
    pub in_flight_max: usize,
    /// Commands in one batch, at most (events are bounded by the atomic batch limit anyway).
    pub batch_commands_max: usize,
    /// Another batch goes in flight only when at least this many commands wait.
    pub full_batch_commands: usize,
}

impl Default for PipelineConfig {
    fn default() -> PipelineConfig {
        PipelineConfig {
            in_flight_max: 4,
            batch_commands_max: 1000,
            full_batch_commands: 250,
        }
    }
}

/// A queued command.
#[derive(Debug)]
struct Member {
    ticket: Ticket,
    command: Command,
    /// Batches it was decided in that did not store.
    attempts: u32,
    /// Its decision's place in its batch (`Tick::pending`); `None`: no events of its own.
    decided: Option<usize>,
    /// An answer known without its batch (a duplicate with another body, too many events).
    answer: Option<Outcome>,
}

/// A batch sent and not yet settled: what it decided, how to undo it, and its
/// acknowledgement (`None` when it held no events).
struct Flight {
    tick: Tick,
    members: Vec<Member>,
    pending: Option<(ledger::Appended, ledger::PendingAppend)>,
    /// Its acknowledgement, once it came (`Ok(None)`: it held no events).
    result: Option<Result<Option<ledger::Appended>, AppendError>>,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("members", &self.members.len())
            .field(
                "events",
                &self.pending.as_ref().map(|(a, _)| a.events.len()),
            )
            .finish()
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
    /// The log's end once every batch in flight is stored (`applied_seq` when none is).
    predicted_seq: u64,
    pipeline: PipelineConfig,
    queue: std::collections::VecDeque<Member>,
    flights: std::collections::VecDeque<Flight>,
    next_ticket: Ticket,
    /// A batch could not even be sent: nothing goes until it has settled (rolled back).
    send_failed: bool,
    roles: Roles,
    foreign: ForeignSeen,
    /// Commands whose decision panicked, with what the panic said.
    poisoned: HashMap<Uuid, String>,
    internal_errors: u64,
    fault_panic_sku: Option<String>,
    /// Orders and command records brought back from the archive since the last settle: they
    /// leave memory again when it settles (`retire`), unless a batch in flight wrote them.
    recalled: Vec<Subject>,
    recalled_total: u64,
    batches: BatchCounts,
}

impl<L: EventLog> Processor<L> {
    /// Rebuilds the write model from the whole log.
    pub async fn recover(log: L) -> Result<Processor<L>, ProcessorError> {
        let mut processor = Processor::blank(log);
        processor.catch_up().await?;
        processor.predicted_seq = processor.applied_seq;
        Ok(processor)
    }

    /// Rebuilds the write model from `snapshot` (the bytes of `snapshot::encode`) and the
    /// records after it, if the snapshot decodes, is of this format and matches the log;
    /// otherwise from the whole log. Says which.
    pub async fn recover_from(
        log: L,
        snapshot: Option<&[u8]>,
    ) -> Result<(Processor<L>, Recovered), ProcessorError> {
        let Some(bytes) = snapshot else {
            return Ok((Processor::recover(log).await?, Recovered::FromScratch));
        };
        let body = match snapshot::decode(bytes) {
            Ok(body) => match snapshot::verify(&log, &body).await {
                Ok(()) => body,
                Err(reason) => {
                    let processor = Processor::recover(log).await?;
                    return Ok((processor, Recovered::SnapshotRefused { reason }));
                }
            },
            Err(reason) => {
                let processor = Processor::recover(log).await?;
                return Ok((processor, Recovered::SnapshotRefused { reason }));
            }
        };
        let mut processor = Processor::blank(log);
        let seq = body.applied_seq;
        processor.state = body.state;
        processor.foreign = body.foreign;
        processor.applied_seq = seq;
        processor.catch_up().await?;
        processor.predicted_seq = processor.applied_seq;
        Ok((processor, Recovered::FromSnapshot { seq }))
    }

    fn blank(log: L) -> Processor<L> {
        let pipeline = PipelineConfig {
            in_flight_max: if log.pipelines() {
                PipelineConfig::default().in_flight_max
            } else {
                1
            },
            ..PipelineConfig::default()
        };
        Processor {
            log,
            state: State::default(),
            applied_seq: 0,
            predicted_seq: 0,
            pipeline,
            queue: Default::default(),
            flights: Default::default(),
            next_ticket: Ticket(0),
            send_failed: false,
            roles: Roles::default(),
            foreign: ForeignSeen::default(),
            poisoned: HashMap::new(),
            internal_errors: 0,
            fault_panic_sku: fault_panic_sku(),
            recalled: Vec::new(),
            recalled_total: 0,
            batches: BatchCounts::default(),
        }
    }

    /// Whether a snapshot can be taken now: nothing in flight (the model otherwise holds
    /// decisions the log may never store).
    pub fn snapshot_ready(&self) -> bool {
        self.flights.is_empty()
    }

    /// The model encoded as a snapshot body (`snapshot::frame` makes it a snapshot), tied to
    /// the record at `applied_seq` by `record_hash`; `None` while batches are in flight.
    /// Encodes in place: the command path pauses for the encoding, and memory grows by the
    /// encoded bytes only.
    /// `capacity`: bytes to reserve for it (the previous snapshot's size).
    pub fn encode_snapshot(
        &self,
        record_hash: EventHash,
        capacity: usize,
    ) -> Option<Result<Vec<u8>, snapshot::SnapshotError>> {
        self.snapshot_ready().then(|| {
            snapshot::encode_body(
                self.applied_seq,
                record_hash,
                &self.state,
                &self.foreign,
                capacity,
            )
        })
    }

    /// Sets how batches are pipelined (a replicated ledger keeps one in flight whatever this
    /// says).
    pub fn set_pipeline(&mut self, config: PipelineConfig) {
        let in_flight_max = if self.log.pipelines() {
            config.in_flight_max.max(1)
        } else {
            1
        };
        self.pipeline = PipelineConfig {
            in_flight_max,
            batch_commands_max: config.batch_commands_max.max(1),
            full_batch_commands: config.full_batch_commands.max(1),
        };
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
            commands_recorded: self.state.commands_recorded(),
            foreign: self.foreign.clone(),
            internal_errors: self.internal_errors,
            orders_in_memory: self.state.orders.len(),
            orders_archived: self.state.archive.orders(),
            recalled: self.recalled_total,
            batches: self.batches.clone(),
            in_flight: self.flights.len(),
            answer_latency: crate::latency::LatencyCounts::default(),
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
                        if let Subject::Order(id) = &e.envelope.subject {
                            // A finished order that changes again (a return) comes back first.
                            if crate::recall::restore_order(&self.log, &mut self.state, id)
                                .await
                                .map_err(recall_failed)?
                            {
                                self.recalled_total += 1;
                            }
                        }
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
                    let written = batch.events.iter().map(|e| &e.envelope.subject);
                    retire(&mut self.state, &self.flights, self.applied_seq, written);
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

    /// `clock.tick` commands for the legal entities whose business clocks are behind
    /// (`clock_ticks`).
    pub fn clock_ticks(
        &self,
        now: ledger::values::Timestamp,
        every: std::time::Duration,
    ) -> Vec<Command> {
        clock_ticks(&self.state, now, every)
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
                    actor: system_actor(),
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

    /// Decides and commits a group of commands; one outcome per command, in order.
    pub async fn process(&mut self, commands: &[Command]) -> Vec<Outcome> {
        let first = self.next_ticket;
        for command in commands {
            self.enqueue(command.clone());
        }
        let mut outcomes: Vec<Option<Outcome>> = vec![None; commands.len()];
        while self.busy() {
            while self.wants_to_send() {
                self.send_next().await;
            }
            for (ticket, outcome) in self.settle_next().await {
                if let Some(slot) = ticket
                    .0
                    .checked_sub(first.0)
                    .and_then(|i| outcomes.get_mut(i as usize))
                {
                    *slot = Some(outcome);
                }
            }
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

    /// Queues a command; its outcome comes back from `settle_next` with the ticket returned.
    pub fn enqueue(&mut self, command: Command) -> Ticket {
        let ticket = self.next_ticket;
        self.next_ticket.0 += 1;
        self.queue.push_back(Member {
            ticket,
            command,
            attempts: 0,
            decided: None,
            answer: None,
        });
        ticket
    }

    /// Takes every command not yet sent out of the queue (a stopping service answers them).
    pub fn drain_queue(&mut self) -> Vec<(Ticket, Uuid)> {
        self.queue
            .drain(..)
            .map(|m| (m.ticket, m.command.command_id))
            .collect()
    }

    /// Commands queued or in flight.
    pub fn busy(&self) -> bool {
        !self.queue.is_empty() || !self.flights.is_empty()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Whether to send a batch now: at once when nothing is in flight (a lone command costs
    /// one stored batch), and another one in flight only when a full batch is waiting (the
    /// server stores one batch at a time, so more in flight only adds latency otherwise).
    pub fn wants_to_send(&self) -> bool {
        !self.queue.is_empty()
            && !self.send_failed
            && self.flights.len() < self.pipeline.in_flight_max
            && (self.flights.is_empty() || self.queue.len() >= self.pipeline.full_batch_commands)
    }

    /// Decides the next batch from the queue on top of everything in flight, and sends it
    /// without waiting for its acknowledgement.
    pub async fn send_next(&mut self) {
        self.recall_for_next_batch().await;
        let (mut tick, members) = loop {
            match self.build_tick() {
                Ok(built) => break built,
                // A decision panicked: its command is poisoned (recorded `internal_error`
                // from now on); build the batch again (each command is poisoned at most once).
                Err(Poisoned) => continue,
            }
        };
        let pending = if tick.drafts.is_empty() {
            None
        } else {
            let batch = AppendBatch {
                // Decided against everything up to here, in-flight batches included:
                // anything else appended since is a conflict.
                expected_last_seq: Some(self.predicted_seq),
                expectations: tick.expectations.clone(),
                events: std::mem::take(&mut tick.drafts),
            };
            match self.log.send(batch).await {
                Ok((appended, pending)) => {
                    // The next batch chains onto these events and expects their sequences.
                    for (subject, head) in appended.heads() {
                        self.state.confirm(subject, head);
                    }
                    self.predicted_seq = appended.last_seq;
                    Some((appended, pending))
                }
                Err(e) => {
                    // Nothing more may be sent on top of a batch that did not go: it would
                    // count on decisions the log may never hold. Settling this one rolls back.
                    self.send_failed = true;
                    let nothing = ledger::Appended {
                        events: Vec::new(),
                        last_seq: self.predicted_seq,
                    };
                    Some((nothing, Box::pin(std::future::ready(Err(e))) as _))
                }
            }
        };
        self.flights.push_back(Flight {
            tick,
            members,
            pending,
            result: None,
        });
    }

    /// Waits for the oldest batch in flight and returns the outcomes it settles, in the order
    /// the commands were queued. A batch that failed takes every later one with it: they are
    /// all awaited, undone, the model catches up from the log, and their commands are decided
    /// again (a command whose batch was stored after all is then answered from its record).
    pub async fn settle_next(&mut self) -> Vec<(Ticket, Outcome)> {
        self.wait_for_oldest().await;
        let Some(mut flight) = self.flights.pop_front() else {
            return Vec::new();
        };
        let result = flight.result.take().expect("waited for above");
        match result {
            Ok(appended) => {
                if let Some(appended) = &appended {
                    self.applied_seq = appended.last_seq;
                } else if self.flights.is_empty() {
                    self.predicted_seq = self.applied_seq;
                }
                let events = appended.as_ref().map_or(&[][..], |a| &a.events[..]);
                if appended.is_some() {
                    self.batches.committed(flight.members.len(), events.len());
                }
                let tick = &flight.tick;
                let settled = flight
                    .members
                    .into_iter()
                    .map(|m| {
                        let outcome = match (m.answer, m.decided) {
                            (Some(answer), _) => answer,
                            (None, Some(i)) => committed_outcome(&tick.pending[i], events),
                            (None, None) => self.settled_by_record(&m.command),
                        };
                        (m.ticket, outcome)
                    })
                    .collect();
                let recalled = self.take_recalled();
                let written = tick.touched.iter().chain(&recalled);
                retire(&mut self.state, &self.flights, self.applied_seq, written);
                settled
            }
            Err(AppendError::FencingBreach(reason)) => {
                // Another writer is active in a way the checks did not stop: this process
                // must not write again. A supervisor restarts it from the log.
                panic!("fencing breach: {reason}");
            }
            Err(e) => self.roll_back(flight, e).await,
        }
    }

    /// Waits until the oldest batch in flight is acknowledged (or failed), changing nothing
    /// else: cancel-safe, so it can race other work (`settle_next` then settles it).
    pub async fn wait_for_oldest(&mut self) {
        let Some(flight) = self.flights.front_mut() else {
            return;
        };
        if flight.result.is_none() {
            let result = match flight.pending.as_mut() {
                None => Ok(None),
                Some((_, pending)) => pending.await.map(Some),
            };
            flight.result = Some(result);
        }
    }

    /// The answer of a command that needed no events in its batch: its record, now stored.
    fn settled_by_record(&self, command: &Command) -> Outcome {
        match self.state.commands.get(&command.command_id) {
            Some(record) if record.body_sha256 != command.body_sha256() => {
                different_body(command.command_id)
            }
            Some(record) => recorded_outcome(command.command_id, record),
            None => Outcome::Unavailable {
                command_id: command.command_id,
                message: "not processed".into(),
            },
        }
    }

    /// Catches up after a failed append, which may have lost the log's leader: each read is
    /// given `CATCH_UP_SLICE` to make progress (a read sent to a lost leader would otherwise
    /// wait out the whole API timeout) and is cut short when a new leader is elected; a read
    /// that fails or makes no progress counts against `CONFLICT_RETRIES_MAX`.
    async fn catch_up_after_failure(&mut self) {
        enum Attempt {
            Done(Result<u64, WalkError>),
            Elected,
            Slow,
        }
        let mut elected = Box::pin(self.log.leader_elected());
        let mut failures = 0;
        let mut slice = CATCH_UP_SLICE;
        loop {
            let before = self.applied_seq;
            let attempt = tokio::select! {
                done = self.catch_up() => Attempt::Done(done),
                () = &mut elected => Attempt::Elected,
                () = tokio::time::sleep(slice) => Attempt::Slow,
            };
            let given = std::mem::replace(&mut slice, CATCH_UP_SLICE);
            let error = match attempt {
                Attempt::Done(Ok(_)) => return,
                Attempt::Elected => {
                    tracing::info!("the ledger has a new leader: catching up from it at once");
                    elected = Box::pin(self.log.leader_elected());
                    // The first read on a new leader sometimes hangs; the next one does not.
                    slice = CATCH_UP_SLICE_AFTER_ELECTION;
                    continue;
                }
                Attempt::Slow if self.applied_seq > before => continue,
                Attempt::Slow => format!("no progress within {given:?}"),
                Attempt::Done(Err(e)) => e.to_string(),
            };
            failures += 1;
            if failures >= CONFLICT_RETRIES_MAX {
                tracing::error!(%error, "cannot catch up with the ledger");
                return;
            }
            tracing::warn!(%error, "catching up after a failed append; retrying");
            let pause = tokio::time::sleep(std::time::Duration::from_millis(50));
            if tokio::select! { () = pause => false, () = &mut elected => true } {
                elected = Box::pin(self.log.leader_elected());
            }
        }
    }

    /// After `failed` (the oldest in flight) did not store: awaits and undoes every batch in
    /// flight, catches up from the log, and queues their commands again at the front.
    async fn roll_back(&mut self, failed: Flight, error: AppendError) -> Vec<(Ticket, Outcome)> {
        let mut later: Vec<Flight> = self.flights.drain(..).collect();
        for flight in &mut later {
            let result = match (flight.result.take(), flight.pending.as_mut()) {
                (Some(result), _) => result,
                (None, Some((_, pending))) => pending.await.map(Some),
                (None, None) => Ok(None),
            };
            if let Err(AppendError::FencingBreach(reason)) = result {
                panic!("fencing breach: {reason}");
            }
        }
        let mut flights = vec![failed];
        flights.extend(later);
        self.batches.rollbacks += 1;
        self.batches.rolled_back_batches += flights.len() as u64;
        for flight in flights.iter_mut().rev() {
            flight.tick.undo(&mut self.state);
        }
        self.predicted_seq = self.applied_seq;
        self.send_failed = false;
        let refused = matches!(
            error,
            AppendError::Refused { .. } | AppendError::Invalid(_) | AppendError::Encode(_)
        );
        if refused {
            tracing::error!(error = %error, "append refused");
        }
        self.catch_up_after_failure().await;
        self.predicted_seq = self.applied_seq;
        let recalled = self.take_recalled();
        let undone = flights
            .iter()
            .flat_map(|f| &f.tick.touched)
            .chain(&recalled);
        retire(&mut self.state, &self.flights, self.applied_seq, undone);
        let mut settled = Vec::new();
        let mut again = Vec::new();
        for (i, flight) in flights.into_iter().enumerate() {
            for mut member in flight.members {
                member.attempts += 1;
                member.decided = None;
                let give_up = if refused && i == 0 {
                    // Refused (storage full, a limit): nothing of it was stored; the sender
                    // retries later.
                    Some(error.to_string())
                } else if member.attempts >= CONFLICT_RETRIES_MAX {
                    Some(format!(
                        "the ledger kept changing under {CONFLICT_RETRIES_MAX} attempts; retry"
                    ))
                } else {
                    None
                };
                match give_up {
                    // An answer already known (a duplicate, a record) does not depend on
                    // this batch being stored.
                    Some(_) if member.answer.is_some() => {
                        let answer = member.answer.take().expect("checked");
                        settled.push((member.ticket, answer));
                    }
                    Some(message) => settled.push((
                        member.ticket,
                        Outcome::Unavailable {
                            command_id: member.command.command_id,
                            message,
                        },
                    )),
                    None => {
                        member.answer = None;
                        again.push(member);
                    }
                }
            }
        }
        for member in again.into_iter().rev() {
            self.queue.push_front(member);
        }
        settled
    }

    /// The recalled subjects that may leave memory again: all but the orders a queued command
    /// still names (those stay until their command is decided).
    fn take_recalled(&mut self) -> Vec<Subject> {
        let recalled = std::mem::take(&mut self.recalled);
        if recalled.is_empty() || self.queue.is_empty() {
            return recalled;
        }
        let named: HashSet<&OrderId> = self
            .queue
            .iter()
            .filter_map(|m| m.command.order())
            .collect();
        let (keep, leave): (Vec<Subject>, Vec<Subject>) = recalled
            .into_iter()
            .partition(|s| matches!(s, Subject::Order(o) if named.contains(o)));
        self.recalled = keep;
        leave
    }

    /// Brings back into memory the archived command records and orders that the commands of
    /// the next batch name, so that they are decided as if nothing had left memory. A command
    /// whose record or order cannot be read back is answered unavailable (the sender retries)
    /// instead of being decided without it.
    async fn recall_for_next_batch(&mut self) {
        use futures::StreamExt;
        let next = self.pipeline.batch_commands_max;
        // Records first: a repeat is answered from its record and needs nothing else.
        let records: Vec<(usize, Uuid, Vec<u64>)> = self
            .queue
            .iter()
            .take(next)
            .enumerate()
            .filter(|(_, m)| m.answer.is_none())
            .filter(|(_, m)| !self.state.commands.contains_key(&m.command.command_id))
            .filter_map(|(i, m)| {
                let id = m.command.command_id;
                let seqs = self.state.archive.command_seqs(&id);
                (!seqs.is_empty()).then_some((i, id, seqs))
            })
            .collect();
        if !records.is_empty() {
            let log = &self.log;
            let read: Vec<_> = futures::stream::iter(records)
                .map(|(i, id, seqs)| async move {
                    (i, id, crate::recall::command(log, id, &seqs).await)
                })
                .buffered(RECALL_READS_IN_FLIGHT)
                .collect()
                .await;
            for (i, id, result) in read {
                match result {
                    Ok(Some(record)) => {
                        if !self.state.commands.contains_key(&id) {
                            self.state.restore_command(id, record);
                            self.recalled.push(Subject::Command(id));
                            self.recalled_total += 1;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => self.queue[i].answer = Some(recall_unavailable(id, "record", &e)),
                }
            }
        }
        // Orders for the commands queued well beyond the next batch too: one round of
        // concurrent reads serves many batches (a recalled order stays while a queued command
        // names it, `take_recalled`).
        let orders: Vec<(usize, OrderId)> = self
            .queue
            .iter()
            .take(next.max(RECALL_LOOKAHEAD))
            .enumerate()
            .filter(|(_, m)| m.answer.is_none())
            .filter(|(_, m)| !self.state.commands.contains_key(&m.command.command_id))
            .filter_map(|(i, m)| Some((i, m.command.order()?.clone())))
            .filter(|(_, o)| !self.state.orders.contains_key(o))
            .collect();
        // Each archived order once, read back concurrently (a carrier's delivery confirmations
        // name orders that left memory when they shipped).
        let mut wanted: Vec<(Vec<usize>, OrderId, Vec<u64>)> = Vec::new();
        let mut index: HashMap<OrderId, usize> = HashMap::new();
        for (i, order) in orders {
            if let Some(&at) = index.get(&order) {
                wanted[at].0.push(i);
                continue;
            }
            let seqs = self.state.archive.order_seqs(&order);
            if !seqs.is_empty() {
                index.insert(order.clone(), wanted.len());
                wanted.push((vec![i], order, seqs));
            }
        }
        let log = &self.log;
        let read: Vec<_> = futures::stream::iter(wanted)
            .map(|(members, id, seqs)| async move {
                let result = crate::recall::order(log, &id, &seqs).await;
                (members, id, result)
            })
            .buffered(RECALL_READS_IN_FLIGHT)
            .collect()
            .await;
        for (members, id, result) in read {
            match result {
                Ok(Some(order)) => {
                    if !self.state.orders.contains_key(&id) {
                        self.state.restore_order(id.clone(), order);
                        self.recalled.push(Subject::Order(id));
                        self.recalled_total += 1;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    for i in members {
                        let command_id = self.queue[i].command.command_id;
                        self.queue[i].answer = Some(recall_unavailable(command_id, "order", &e));
                    }
                }
            }
        }
    }

    /// Takes commands from the queue into one batch, deciding each against the state that
    /// includes every earlier decision (in flight or in this batch) and applying it
    /// tentatively. If deciding one panics, the batch is undone, the command marked poisoned,
    /// its members put back, and `Err(Poisoned)` asks for the batch to be built again.
    fn build_tick(&mut self) -> Result<(Tick, Vec<Member>), Poisoned> {
        let mut tick = Tick::default();
        let mut members: Vec<Member> = Vec::new();
        let mut in_tick = HashSet::new();
        while let Some(mut member) = self.queue.pop_front() {
            if members.len() == self.pipeline.batch_commands_max {
                self.queue.push_front(member);
                break;
            }
            if member.answer.is_some() {
                // Answered before deciding (an archived order or record could not be read).
                members.push(member);
                continue;
            }
            let command = &member.command;
            let body_sha256 = command.body_sha256();
            if let Some(record) = self.state.commands.get(&command.command_id) {
                // Answered from the record once this batch settles (it may be in flight).
                if record.body_sha256 != body_sha256 {
                    member.answer = Some(different_body(command.command_id));
                } else if !in_tick.contains(&command.command_id) && record.head.is_some() {
                    member.answer = Some(recorded_outcome(command.command_id, record));
                }
                members.push(member);
                continue;
            }
            let decided = match self.poisoned.get(&command.command_id) {
                Some(what) => Ok(internal_error(what)),
                None => catch_unwind(AssertUnwindSafe(|| self.decide_one(command))),
            };
            let decision = match decided {
                Ok(decision) => decision,
                Err(panic) => {
                    let poisoned = self.poison(&mut tick, &member.command, panic.as_ref());
                    self.queue.push_front(member);
                    for m in members.into_iter().rev() {
                        self.queue.push_front(m);
                    }
                    return Err(poisoned);
                }
            };
            let events = decision.as_ref().map_or(0, Vec::len);
            if tick.drafts.len() + events + 1 > BATCH_EVENTS_MAX {
                if tick.drafts.is_empty() {
                    member.answer = Some(Outcome::Unavailable {
                        command_id: command.command_id,
                        message: format!(
                            "the command produces {events} events; at most {} fit one atomic append",
                            BATCH_EVENTS_MAX - 1
                        ),
                    });
                    members.push(member);
                    continue;
                }
                self.queue.push_front(member);
                break;
            }
            let index = tick.pending.len();
            let added = catch_unwind(AssertUnwindSafe(|| {
                self.add_to_tick(&mut tick, &member.command, body_sha256, decision);
            }));
            if let Err(panic) = added {
                let poisoned = self.poison(&mut tick, &member.command, panic.as_ref());
                self.queue.push_front(member);
                for m in members.into_iter().rev() {
                    self.queue.push_front(m);
                }
                return Err(poisoned);
            }
            in_tick.insert(member.command.command_id);
            member.decided = Some(index);
            members.push(member);
        }
        Ok((tick, members))
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
                    threshold: crate::governance::threshold_in_force(&self.state, command, &events),
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

/// Retires (`State::retire`) each order and command record among `subjects` that no batch in
/// `flights` wrote: its last record is stored at or before `stored_seq`.
fn retire<'a>(
    state: &mut State,
    flights: &VecDeque<Flight>,
    stored_seq: u64,
    subjects: impl IntoIterator<Item = &'a Subject>,
) {
    for subject in subjects {
        if matches!(subject, Subject::Order(_) | Subject::Command(_))
            && !flights.iter().any(|f| f.tick.touched.contains(subject))
        {
            state.retire(subject, stored_seq);
        }
    }
}

fn recall_unavailable(command_id: Uuid, what: &str, e: &RecallError) -> Outcome {
    if matches!(e, RecallError::Broken(_)) {
        tracing::error!(%command_id, error = %e, "an archived {what} does not read back from the ledger");
    }
    Outcome::Unavailable {
        command_id,
        message: format!(
            "the command's {what} left memory and could not be read back from the ledger ({e}); nothing was stored, send it again"
        ),
    }
}

fn recall_failed(e: RecallError) -> WalkError {
    WalkError::Read(ledger::ReadError::Unavailable(format!(
        "reading an archived order back: {e}"
    )))
}

/// The recorded outcome of a command in `state`, if it has one, read back from `log` if its
/// record left memory. (A function of the parts, not a method: a future holding the whole
/// processor could not move between threads, its appends in flight are not `Sync`.)
pub async fn outcome_of<L: EventLog>(
    log: &L,
    state: &State,
    command_id: Uuid,
) -> Result<Option<Outcome>, RecallError> {
    if let Some(record) = state.commands.get(&command_id) {
        return Ok(Some(recorded_outcome(command_id, record)));
    }
    let seqs = state.archive.command_seqs(&command_id);
    if seqs.is_empty() {
        return Ok(None);
    }
    let record = crate::recall::command(log, command_id, &seqs).await?;
    Ok(record.map(|r| recorded_outcome(command_id, &r)))
}

/// `clock.tick` commands for every legal entity with no event in the last `every` of
/// business time before `now`, effective at `now` rounded down to a whole `every` (since the
/// epoch), so two processors, or one asked twice, send the same command (its id comes from
/// the entity and the tick's time).
pub fn clock_ticks(
    state: &crate::state::State,
    now: ledger::values::Timestamp,
    every: std::time::Duration,
) -> Vec<Command> {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6c1b_03d2_41a7_4f3e_9b55_0e8d_7a26_c4b9);
    let step = i64::try_from(every.as_micros()).unwrap_or(i64::MAX).max(1);
    let micros = now.micros().div_euclid(step) * step;
    let Some(at) = ledger::values::Timestamp::from_micros(micros) else {
        return Vec::new();
    };
    state
        .business_clock
        .iter()
        .filter(|(_, clock)| clock.micros().saturating_add(step) <= micros)
        .map(|(entity, _)| {
            let name = format!("tick:{entity}:{micros}");
            Command {
                command_id: Uuid::new_v5(&NAMESPACE, name.as_bytes()),
                correlation_id: Uuid::new_v5(&NAMESPACE, name.as_bytes()),
                actor: system_actor(),
                on_behalf_of: None,
                legal_entity: entity.clone(),
                effective_at: at,
                body: crate::command::CommandBody::TickClock(crate::command::TickClock {}),
                sender: None,
            }
        })
        .collect()
}

/// Who the processor's own commands (hold expiry, clock ticks) are from.
fn system_actor() -> ledger::values::Actor {
    ledger::values::Actor {
        id: ledger::values::ActorId::new("processor").expect("valid id"),
        role: ledger::values::Role::new("system").expect("valid role"),
    }
}
