//! Genba firmware core.
//!
//! Everything in here is plain, allocation-free Rust that runs the same on the ESP32-C3
//! firmware (`firmware/esp32c3`) and on the host (the appliance and its device simulator),
//! so both ends of the wire share one format and one set of rules:
//!
//! - [`telemetry`]: the H1 telemetry payload, its JSON form, its limits and the MQTT topics;
//! - [`ds18b20`]: DS18B20 scratchpad / ROM-code decoding with CRC checks;
//! - [`offsets`]: per-sensor calibration offsets;
//! - [`backlog`]: a bounded, oldest-first queue of unsent batches;
//! - [`backoff`]: reconnect backoff with a cap and jitter;
//! - [`command`]: commands received on `devices/{id}/commands`;
//! - [`config`]: the device config record in the `config` flash partition and its store;
//! - [`clock`]: wall-clock bookkeeping (SNTP packets, RFC 3339 formatting, unsynced marking);
//! - [`http`]: the HTTP/1.1 `POST /api/telemetry` request and response status line, and the
//!   `GET` of a firmware image with the response head that gives its length;
//! - [`discovery`]: the `_genba._tcp` mDNS announcement's TXT record and the choice between
//!   the announced address and the stored one;
//! - [`image`]: the firmware's app image (ESP-IDF format): its version and its appended
//!   SHA-256, checked by the appliance when an image is added and by the device after an update;
//! - [`ota`]: installing an update: the check of a download as it arrives, its writing into the
//!   inactive app slot and the read-back, and the try-once, confirm-or-roll-back life of a new
//!   image;
//! - [`mdns`]: the one-shot mDNS query a device sends to find the appliance, and the reading
//!   of the answers.
//!
//! The crate is `no_std` and needs no allocator. Its error types implement
//! `core::error::Error`, so `?` into `anyhow`/`Box<dyn Error>` works on the host; the `std`
//! feature only forwards `std` to serde. Unit tests run on the host with `cargo test`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backlog;
pub mod backoff;
pub mod board;
pub mod clock;
pub mod command;
pub mod config;
pub mod discovery;
pub mod ds18b20;
pub mod http;
pub mod image;
pub mod mdns;
pub mod offsets;
pub mod ota;
#[cfg(test)]
mod ram_flash;
pub mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;

/// Implements `core::error::Error` for error types that already implement `Display`.
macro_rules! impl_error {
    ($($t:ty),* $(,)?) => {
        $(
            impl core::error::Error for $t {}
        )*
    };
}
pub(crate) use impl_error;

/// Rounds a temperature to 4 decimal places (0.0001 °C), which is finer than the
/// DS18B20's 0.0625 °C step and keeps `raw + offset` free of float noise on the wire.
pub(crate) fn round4(x: f32) -> f32 {
    let scaled = x * 10_000.0;
    let r = if scaled >= 0.0 {
        scaled + 0.5
    } else {
        scaled - 0.5
    };
    // `as` saturates; the caller validates the range, so this never wraps silently.
    (r as i32) as f32 / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::round4;

    #[test]
    fn round4_removes_float_noise() {
        assert_eq!(round4(25.0625 + -0.3), 24.7625);
        assert_eq!(round4(-10.125 + 0.05), -10.075);
        assert_eq!(round4(0.0), 0.0);
    }
}
