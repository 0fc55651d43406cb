//! The write side: the command catalogue (`command`), the write model (`state`), the pure
//! deciders (`decide`) and the processor service that turns commands into atomic appends.
//!
//! Depends only on `ledger`. Deciders and `apply` do no I/O, read no clock and draw no random
//! numbers: time and ids come in with the command.

pub mod access;
pub mod client;
pub mod command;
pub mod decide;
pub mod demo;
pub mod exceptions;
pub mod governance;
pub mod latency;
mod lots;
pub mod processor;
pub mod purchase;
pub mod recall;
pub mod roles;
pub mod service;
pub mod snapshot;
pub mod state;

pub use command::{Command, CommandBody, InvalidCommand, decode};
pub use decide::{Decision, Rejection, decide};
pub use processor::{Outcome, Processor};
pub use state::State;

#[cfg(test)]
mod decide_tests;

#[cfg(test)]
mod governance_tests;

#[cfg(test)]
mod lots_tests;

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod sim_tests;
