//! Point-in-time reconstruction, hash-chain verification and exports for auditors.
