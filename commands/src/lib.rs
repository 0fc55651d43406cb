//! Command catalogue, validation, write-model state, deciders and the processor service.
//! The catalogue and deciders arrive with the command processor; the crate exists now so the
//! workspace layout and its dependency rules (`commands` depends only on `ledger`) hold from the start.
