//! `genba exment`: HACCP check records to Exment (requirement H4).
//!
//! Where readings leave for Exment: [`Forwarder::drain_once`] groups committed readings into
//! check slots ([`slots`]), skips what the sent-ledger ([`ledger`]) says Exment has, looks up by
//! unique key every record whose outcome is unknown (a crash or timeout after sending), marks
//! the rest "unknown" *before* sending them in bulk ([`client`]), and "sent" after Exment's 200.
//! Exment has no upsert, so this ledger-then-lookup order is what keeps it free of duplicates.

pub mod client;
pub mod forwarder;
pub mod ledger;
pub mod slots;
pub mod token;

pub use forwarder::{DrainReport, ExmentError, Forwarder};
