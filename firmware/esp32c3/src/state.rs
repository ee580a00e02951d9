//! State shared between the tasks (sensor loop, network loop, Wi-Fi supervisor).
//!
//! Everything sits behind a critical-section mutex; every access is short and never held
//! across an `.await`.

use core::cell::RefCell;

use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use genba_firmware_core::backlog::Backlog;
use genba_firmware_core::clock::Clock;
use genba_firmware_core::command::Settings;
use genba_firmware_core::config::DEFAULT_INTERVAL_S;
use genba_firmware_core::offsets::Offsets;
use genba_firmware_core::telemetry::{MAX_READINGS, Telemetry};

/// Unsent batches kept in RAM during Wi-Fi or appliance outages (at 60 s, 48 minutes).
pub const BACKLOG_LEN: usize = 48;

/// A value shared between tasks.
pub type Shared<T> = Mutex<CriticalSectionRawMutex, RefCell<T>>;

/// Batches not yet accepted by the appliance, oldest first.
pub static BACKLOG: Shared<Backlog<Telemetry, BACKLOG_LEN>> =
    Mutex::new(RefCell::new(Backlog::new()));

/// LED, report interval and per-sensor offsets (from the config, then changed by commands).
pub static SETTINGS: Shared<Settings<MAX_READINGS>> = Mutex::new(RefCell::new(Settings {
    led_on: false,
    interval_s: DEFAULT_INTERVAL_S,
    offsets: Offsets::new(),
}));

/// Uptime to wall-clock mapping, set by SNTP.
pub static CLOCK: Shared<Clock> = Mutex::new(RefCell::new(Clock::new()));

/// TLS servers refused (their chain did not hold the pin) since the last batch was made; the
/// next batch carries the count to the appliance (`tls_refused`).
pub static TLS_REFUSED: Shared<u16> = Mutex::new(RefCell::new(0));

/// Last Wi-Fi RSSI in dBm (0 = unknown).
pub static RSSI: Shared<i16> = Mutex::new(RefCell::new(0));

/// Wakes the sensor loop early (send-now command, interval change).
pub static WAKE_SENSORS: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// Tells the config writer that a command changed the interval or an offset.
pub static SETTINGS_CHANGED: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// Tells the network loop that a new batch is in the backlog.
pub static DATA_READY: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// Runs `f` with exclusive access to a shared value.
pub fn with<T, R>(shared: &Shared<T>, f: impl FnOnce(&mut T) -> R) -> R {
    shared.lock(|cell| f(&mut cell.borrow_mut()))
}
