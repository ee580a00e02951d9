//! DS18B20 probes on one 1-Wire bus: ROM search, one CONVERT T for all probes, then a
//! scratchpad read per probe, decoded and checked by `genba_firmware_core::ds18b20`.
//!
//! The bus is bit-banged (onewire crate) on an open-drain GPIO. Wi-Fi interrupts can stretch
//! a bit slot; the CRC check catches the corrupted reads that causes and each read is
//! retried, so a disturbed slot costs a retry, not a wrong temperature.

use embassy_futures::select::select;
use embassy_time::{Duration, Instant, Timer};
use esp_hal::delay::Delay;
use esp_hal::gpio::Flex;
use genba_firmware_core::ds18b20::{self, Resolution, RomCode, Scratchpad};
use genba_firmware_core::telemetry::{MAX_READINGS, Reading, Telemetry};
use heapless::Vec;
use log::{info, warn};

use crate::state::{self, BACKLOG, CLOCK, DATA_READY, RSSI, SETTINGS, TLS_REFUSED, WAKE_SENSORS};

/// Scratchpad reads per probe before giving up for this cycle.
const READ_ATTEMPTS: usize = 3;
/// Search the bus again every this many cycles (probes added while running are found).
const RESCAN_EVERY: u32 = 30;

/// A bus failure.
#[derive(Debug)]
pub enum BusError {
    /// The data line stays low (short circuit, or the pull-up is missing).
    WireLow,
    /// No presence pulse: nothing is connected.
    NoPresence,
    /// A probe answered with bytes that did not decode.
    Decode(ds18b20::Error),
}

/// The 1-Wire bus.
pub struct Bus {
    pin: Flex<'static>,
    delay: Delay,
}

impl Bus {
    /// Takes a `Flex` pin already configured as open-drain input/output with pull-up.
    pub fn new(pin: Flex<'static>) -> Self {
        Bus {
            pin,
            delay: Delay::new(),
        }
    }

    /// Finds every DS18B20 on the bus (other 1-Wire families and bad ROM codes are skipped).
    pub fn scan(&mut self) -> Vec<RomCode, MAX_READINGS> {
        let mut found = Vec::new();
        let mut wire = onewire::OneWire::new(&mut self.pin, false);
        let mut search = onewire::DeviceSearch::new();
        loop {
            match wire.search_next(&mut search, &mut self.delay) {
                Ok(Some(device)) => match RomCode::ds18b20(device.address) {
                    Ok(rom) => {
                        if found.push(rom).is_err() {
                            warn!("more than {MAX_READINGS} DS18B20 on the bus; ignoring the rest");
                            break;
                        }
                    }
                    Err(e) => warn!("skipping 1-Wire device {:02X?}: {e}", device.address),
                },
                Ok(None) => break,
                Err(e) => {
                    warn!("1-Wire search failed: {e:?}");
                    break;
                }
            }
        }
        found
    }

    /// Starts a conversion on every probe at once (SKIP ROM, CONVERT T).
    pub fn start_conversion(&mut self) -> Result<(), BusError> {
        let mut wire = onewire::OneWire::new(&mut self.pin, false);
        match wire.reset(&mut self.delay) {
            Ok(true) => {}
            Ok(false) => return Err(BusError::NoPresence),
            Err(_) => return Err(BusError::WireLow),
        }
        wire.write_bytes(
            &mut self.delay,
            &[ds18b20::CMD_SKIP_ROM, ds18b20::CMD_CONVERT_T],
        )
        .map_err(|_| BusError::WireLow)
    }

    /// Reads and decodes one probe's scratchpad, retrying CRC failures.
    pub fn read(&mut self, rom: &RomCode) -> Result<Scratchpad, BusError> {
        let device = onewire::Device {
            address: rom.bytes(),
        };
        let mut last = BusError::NoPresence;
        for _ in 0..READ_ATTEMPTS {
            let mut wire = onewire::OneWire::new(&mut self.pin, false);
            let mut pad = [0u8; 9];
            match wire.reset_select_write_read(
                &mut self.delay,
                &device,
                &[ds18b20::CMD_READ_SCRATCHPAD],
                &mut pad,
            ) {
                Ok(()) => match ds18b20::decode_scratchpad(&pad) {
                    Ok(sp) => return Ok(sp),
                    // the power-on value is not a transmission error: retrying cannot help
                    Err(ds18b20::Error::PowerOnValue) => {
                        return Err(BusError::Decode(ds18b20::Error::PowerOnValue));
                    }
                    Err(e) => last = BusError::Decode(e),
                },
                Err(_) => last = BusError::WireLow,
            }
        }
        Err(last)
    }
}

/// Reads every probe and returns one batch (None when no probe gave a valid reading).
fn take_batch(
    bus: &mut Bus,
    device_id: &str,
    roms: &[RomCode],
    uptime_ms: u64,
) -> Option<Telemetry> {
    let stamp = state::with(&CLOCK, |c| c.stamp(uptime_ms));
    let rssi = state::with(&RSSI, |r| *r);
    let mut batch = match Telemetry::new(device_id, &stamp.recorded_at, stamp.ts_device, rssi) {
        Ok(b) => b,
        Err(e) => {
            warn!("cannot build a batch: {e}");
            return None;
        }
    };
    // every batch names the firmware, so the appliance shows which devices run which version
    if let Err(e) = batch.set_firmware(env!("CARGO_PKG_VERSION")) {
        warn!("firmware version not sent: {e}");
    }
    for rom in roms {
        let id = rom.to_hex();
        match bus.read(rom) {
            Ok(sp) => {
                let raw = sp.temperature.celsius();
                let offset = state::with(&SETTINGS, |s| s.offsets.get(&id));
                match Reading::new(&id, raw, offset) {
                    Ok(r) => {
                        info!("{id}: {raw} °C (offset {offset}) -> {} °C", r.celsius);
                        // cannot overflow: at most MAX_READINGS roms
                        let _ = batch.push(r);
                    }
                    Err(e) => warn!("{id}: reading refused: {e}"),
                }
            }
            Err(BusError::Decode(e)) => warn!("{id}: {e}"),
            Err(e) => warn!("{id}: {e:?}"),
        }
    }
    if batch.readings.is_empty() {
        return None;
    }
    // the TLS servers refused since the previous batch travel with this one
    batch.tls_refused = state::with(&TLS_REFUSED, core::mem::take);
    Some(batch)
}

/// Reads the probes every report interval (or at once on a send-now command) and queues
/// each batch in the backlog for the network loop.
#[embassy_executor::task]
pub async fn sensor_task(mut bus: Bus, device_id: &'static str) {
    let mut roms = bus.scan();
    info!("1-Wire scan: {} DS18B20", roms.len());
    for rom in &roms {
        info!("  probe {}", rom.to_hex());
    }
    let mut cycle: u32 = 0;
    loop {
        if cycle > 0 && (roms.is_empty() || cycle.is_multiple_of(RESCAN_EVERY)) {
            roms = bus.scan();
        }
        cycle = cycle.wrapping_add(1);
        if roms.is_empty() {
            warn!("no DS18B20 found on the 1-Wire bus");
        } else {
            let uptime_ms = Instant::now().as_millis();
            match bus.start_conversion() {
                Ok(()) => {
                    Timer::after(Duration::from_millis(u64::from(
                        Resolution::Bits12.conversion_time_ms(),
                    )))
                    .await;
                    if let Some(batch) = take_batch(&mut bus, device_id, &roms, uptime_ms) {
                        let (evicted, waiting) = state::with(&BACKLOG, |b| {
                            let evicted = b.push(batch).is_some();
                            (evicted, b.len())
                        });
                        if evicted {
                            let dropped = state::with(&BACKLOG, |b| b.dropped());
                            warn!(
                                "backlog full: dropped the oldest batch ({dropped} dropped so far)"
                            );
                        }
                        info!("batch queued ({waiting} waiting)");
                        DATA_READY.signal(());
                    }
                }
                Err(e) => warn!("1-Wire conversion failed: {e:?}"),
            }
        }
        let interval = state::with(&SETTINGS, |s| s.interval_s);
        select(
            Timer::after(Duration::from_secs(u64::from(interval))),
            WAKE_SENSORS.wait(),
        )
        .await;
    }
}
