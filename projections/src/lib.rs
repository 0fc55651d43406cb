//! Projector runtime and the views. Depends only on `ledger`; reads the ledger, never writes
//! to it.
//!
//! - `runtime`: checkpointed snapshots, ordered reads with gap and chain-break refusal,
//!   coalesced KV publishing, queries (`view.<name>.<op>`) with wait-for-sequence, rebuilds.
//! - `ats`: available to sell per SKU × location and per SKU × channel, with `explain`.
//! - `allocation`: per order and line: node, state, quantities, routing reasons.
//! - `audit`: per entity, every event and refused command, read back from the ledger.
//! - `books`: inventory valuation (FIFO or moving average, landed cost) and the balanced
//!   journal lines of every event; `margin` and `finance` are built from them.
//! - `replenish`: purchase recommendations per SKU × location (reorder point, order-up-to,
//!   safety stock from demand variability), the view that keeps them current, and a backtest.
//! - `trace`: per lot, the receipts and suppliers it came from and the orders it went to.

pub mod allocation;
pub mod ats;
pub mod audit;
pub mod books;
pub mod client;
pub mod exceptions;
pub mod finance;
pub mod key;
pub mod kpis;
pub mod margin;
pub mod replenish;
pub mod runtime;
pub mod trace;
pub mod translate;
pub mod view;

pub use runtime::{Mode, Projector, ProjectorConfig, RunEnd};
pub use view::{Model, View};

#[cfg(test)]
mod ats_tests;

#[cfg(test)]
mod books_tests;

#[cfg(test)]
mod exceptions_tests;

#[cfg(test)]
mod kpis_tests;

#[cfg(test)]
mod trace_tests;
