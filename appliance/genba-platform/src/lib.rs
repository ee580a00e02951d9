//! The device platform (requirements P1-P3, P8): where device telemetry is watched.
//!
//! - [`message`]: one device message read from its topic and body (the HACCP body, or any
//!   JSON object) into the values of the device's streams;
//! - [`fields`]: how a JSON object becomes named values (`env.temp`), its time and firmware;
//! - [`consumer`]: the journal consumer that stores every telemetry row exactly once as
//!   points (with per-minute and per-hour rollups), readings and records;
//! - [`rules`]: the rules engine (thresholds with duration and hysteresis, silence, rate of
//!   change, escalation), pure logic whose effects commit with the values it saw;
//! - [`updates`]: the `update` command for a kept firmware image;
//! - [`provisioning`]: a new thermometer's registration, device key and config record;
//! - [`query`]: time ranges and aggregations as the `/v2` API and the console ask for them.
//!
//! Where it becomes durable: `genba_store::ingest` inside the journal writer's transaction.
//! The registry and the stream queries themselves are `genba_store::{devices, streams}`.

pub mod board_flash;
pub mod consumer;
pub mod fields;
pub mod message;
pub mod provisioning;
pub mod query;
pub mod retention;
pub mod rules;
pub mod updates;
