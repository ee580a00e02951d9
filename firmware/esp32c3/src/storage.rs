//! The device config in the `config` flash partition (see `partitions.csv`): read once at
//! boot, and written back when commands change the report interval or a probe offset.
//!
//! The record format, its checks, the slot rotation and the write pacing (30 s of quiet, at
//! most one write per 10 minutes) are `genba_firmware_core::config`, tested on the host; this
//! module finds the partition and runs them.

use embassy_futures::select::{Either, select};
use embassy_time::{Duration, Instant, Timer};
use esp_bootloader_esp_idf::partitions::{
    self, FlashRegion, FlashStorage, NorFlashRegion, PARTITION_TABLE_MAX_LEN,
};
use genba_firmware_core::config::{self, DeviceConfig, PARTITION_LABEL, Saved, Store, WritePacer};
use log::{error, info, warn};
use static_cell::StaticCell;

use crate::state::{self, SETTINGS, SETTINGS_CHANGED};

/// Partition type "data".
const DATA: u8 = 0x01;

/// The config store on the flash partition.
pub type ConfigStore = Store<NorFlashRegion<'static, 'static, 'static>>;

/// Why there is no usable config.
#[derive(Debug)]
pub enum ConfigError {
    /// The partition table could not be read.
    Table(partitions::Error),
    /// No data partition labelled `config`.
    NoPartition,
    /// The partition is encrypted or read-only.
    Region(partitions::Error),
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
            ConfigError::Region(e) => write!(f, "config partition not usable: {e:?}"),
            ConfigError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// Opens the `config` partition and loads the newest valid record.
pub fn open(flash: FlashStorage<'static>) -> Result<(ConfigStore, DeviceConfig), ConfigError> {
    static FLASH: StaticCell<FlashStorage<'static>> = StaticCell::new();
    static REGION: StaticCell<FlashRegion<'static, 'static>> = StaticCell::new();
    let flash = FLASH.init(flash);
    let mut table = [0u8; PARTITION_TABLE_MAX_LEN];
    let table = partitions::read_partition_table(flash, &mut table).map_err(ConfigError::Table)?;
    let entry = table
        .iter()
        .find(|p| p.raw_type() == DATA && p.label_as_str() == PARTITION_LABEL)
        .ok_or(ConfigError::NoPartition)?;
    info!(
        "config partition at {:#x}, {} KiB",
        entry.offset(),
        entry.len() / 1024
    );
    let region = REGION.init(entry.as_flash_region(flash));
    let nor = region.as_nor_flash().map_err(ConfigError::Region)?;
    let mut store = Store::new(nor).map_err(ConfigError::Store)?;
    let loaded = store.load().map_err(ConfigError::Store)?;
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
    Ok((store, loaded.config))
}

/// Writes the settings commands change back to flash, paced by [`WritePacer`].
#[embassy_executor::task]
pub async fn persist_task(mut store: ConfigStore, mut config: DeviceConfig) {
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
                let result = store.save(&config);
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
