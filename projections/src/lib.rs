//! Projector runtime and the views (available-to-sell, allocation, audit, margin).
//! Depends only on `ledger`; never writes to the ledger stream.
