//! The flash chip, which the config writer (`storage.rs`) writes. It has one owner,
//! [`SharedFlash`], an async mutex, so that another writer (updates) can share it: one writes
//! at a time, and each holds it only for one synchronous flash operation.
//!
//! The partition table is read once, at boot; [`Partitions`] keeps the entries this firmware
//! uses.

use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::mutex::Mutex;
use esp_bootloader_esp_idf::partitions::{
    self, FlashRegion, FlashStorage, PARTITION_TABLE_MAX_LEN, PartitionEntry,
};
use genba_firmware_core::config::PARTITION_LABEL;

/// The flash, shared by the tasks that write it.
pub type SharedFlash = Mutex<CriticalSectionRawMutex, Flash>;

/// Partition type "data".
const DATA: u8 = 0x01;

/// The partitions this firmware uses (`partitions.csv`).
#[derive(Clone, Copy)]
pub struct Partitions {
    /// The data partition labelled `config`.
    pub config: Option<PartitionEntry>,
}

/// The flash and its partitions.
pub struct Flash {
    storage: FlashStorage<'static>,
    /// The partitions, from the table read at boot.
    pub parts: Partitions,
}

impl Flash {
    /// Reads the partition table.
    pub fn new(mut storage: FlashStorage<'static>) -> Result<Flash, partitions::Error> {
        let mut buf = [0u8; PARTITION_TABLE_MAX_LEN];
        let table = partitions::read_partition_table(&mut storage, &mut buf)?;
        // raw type numbers: an entry of a type this crate does not know is skipped, not a panic
        let parts = Partitions {
            config: table
                .iter()
                .find(|p| p.raw_type() == DATA && p.label_as_str() == PARTITION_LABEL),
        };
        Ok(Flash { storage, parts })
    }

    /// A view of one partition, for as long as the flash is borrowed.
    pub fn region(&mut self, entry: PartitionEntry) -> FlashRegion<'_, 'static> {
        entry.as_flash_region(&mut self.storage)
    }
}
