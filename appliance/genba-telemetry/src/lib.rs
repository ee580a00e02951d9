//! HACCP temperature readings (requirements H1, H2, H5).
//!
//! - [`parse`]: the telemetry body, checked field by field (errors name the field) with the
//!   firmware core's rules, so the device and the appliance share one wire format.
//! - [`keys`]: per-device API keys, stored as SHA-256 digests, with scopes and an enabled flag.
//! - [`limiter`]: token buckets per API key and per source address.
//! - [`rate`]: the token bucket itself, also the pace of every sink (`genba_sinks`).
//!
//! Where readings become durable: `genba_store::Journal::store_readings` (unique per device,
//! device time and probe; a resend inserts nothing).

pub mod keys;
pub mod limiter;
pub mod parse;
pub mod rate;
pub mod signing;

pub use parse::{parse, FieldError};

/// The MQTT topic filter devices publish telemetry on.
pub const TELEMETRY_FILTER: &str = "devices/+/telemetry";
/// The journal consumer that moves MQTT telemetry into the readings table.
pub const READINGS_SINK: &str = "readings";
