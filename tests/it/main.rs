//! The integration tests: one binary, real nats-server processes started by `harness` on free
//! loopback ports with temporary storage.

mod client;
mod cluster;
mod console;
mod dataset;
mod faults;
mod gateway;
mod governance;
mod harness;
mod log;
mod lots;
mod operations;
mod processor;
mod projections;
mod purchasing;
mod replay;
mod schemas;
mod security;
mod snapshots;
