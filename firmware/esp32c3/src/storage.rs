//! The device config in the `config` flash partition (see `partitions.csv`): read once at
//! boot, and written back when commands change the report interval or a probe offset.
//!
//! The record format, its checks, the slot rotation and the write pacing (30 s of quiet, at
//! most one write per 10 minutes) are `genba_firmware_core::config`, tested on the host; this
//! module finds the partition and runs them. The flash is shared with the update writer
//! (`flash.rs`): a save holds it only while it reads and writes the partition.

use embassy_futures::select::{Either, select};
use embassy_time::{Duration, Instant, Timer};
use esp_bootloader_esp_idf::partitions::{self, PartitionEntry};
use genba_firmware_core::config::{
    self, DeviceConfig, PARTITION_LABEL, Saved, Store, StoreError, WritePacer,
};
use log::{error, info, warn};

use crate::flash::{Flash, SharedFlash};
use crate::state::{self, SETTINGS, SETTINGS_CHANGED};

/// Why there is no usable config.
#[derive(Debug)]
pub enum ConfigError {
    /// The partition table could not be read.
    Table(partitions::Error),
    /// No data partition labelled `config`.
    NoPartition,
    /// The store refused the partition or found no valid record.
    Store(config::StoreError<partitions::Error>),
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::Table(e) => write!(f, "partition table unreadable: {e:?}"),
            ConfigError::NoPartition => write!(
                f,
                "no data partition labelled \"{PARTITION_LABEL}\" (flash the Genba partition table)"
            ),
            ConfigError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// The config store on a view of the flash partition.
type ConfigStore<'r, 'a> = Store<partitions::NorFlashRegion<'r, 'a, 'static>>;

/// Runs `f` on the config store of the `config` partition.
fn with_store<R>(
    flash: &mut Flash,
    entry: PartitionEntry,
    f: impl FnOnce(&mut ConfigStore<'_, '_>) -> Result<R, StoreError<partitions::Error>>,
) -> Result<R, StoreError<partitions::Error>> {
    let mut region = flash.region(entry);
    let nor = region.as_nor_flash().map_err(StoreError::Flash)?;
    f(&mut Store::new(nor)?)
}

/// Finds the `config` partition and loads the newest valid record.
pub fn open(flash: &mut Flash) -> Result<(PartitionEntry, DeviceConfig), ConfigError> {
    let entry = flash.parts.config.ok_or(ConfigError::NoPartition)?;
    info!(
        "config partition at {:#x}, {} KiB",
        entry.offset(),
        entry.len() / 1024
    );
    let loaded = with_store(flash, entry, |store| store.load()).map_err(ConfigError::Store)?;
    if loaded.bad_slots > 0 {
        warn!(
            "config: {} slot(s) hold a torn or corrupt record; using sequence {} from slot {}",
            loaded.bad_slots, loaded.sequence, loaded.slot
        );
    }
    info!(
        "config: sequence {} from slot {}",
        loaded.sequence, loaded.slot
    );
    Ok((entry, loaded.config))
}

/// Writes the settings commands change back to the `config` partition (`entry`), paced by
/// [`WritePacer`].
#[embassy_executor::task]
pub async fn persist_task(
    flash: &'static SharedFlash,
    entry: PartitionEntry,
    mut config: DeviceConfig,
) {
    let mut pacer = WritePacer::new();
    loop {
        let now = || Instant::now().as_millis();
        match pacer.due_in(now()) {
            None => {
                SETTINGS_CHANGED.wait().await;
                pacer.changed(now());
            }
            Some(0) => {
                let (interval_s, offsets) =
                    state::with(&SETTINGS, |s| (s.interval_s, s.offsets.clone()));
                config.interval_s = interval_s;
                config.offsets = offsets;
                let result =
                    with_store(&mut *flash.lock().await, entry, |store| store.save(&config));
                match &result {
                    Ok(Saved::Unchanged) => info!("config: settings unchanged, nothing written"),
                    Ok(Saved::Written { slot, sequence }) => {
                        info!("config: settings saved (sequence {sequence}, slot {slot})")
                    }
                    Err(e) => error!(
                        "config: settings not saved ({e}); retrying in {} s",
                        config::MIN_WRITE_GAP_S
                    ),
                }
                pacer.saved(&result, now());
            }
            Some(ms) => {
                let woke = select(
                    Timer::after(Duration::from_millis(ms)),
                    SETTINGS_CHANGED.wait(),
                );
                if let Either::Second(()) = woke.await {
                    pacer.changed(now());
                }
            }
        }
    }
}
