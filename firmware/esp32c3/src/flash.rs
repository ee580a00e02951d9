//! The flash chip. The config writer (`storage.rs`) and the update writer (`ota.rs`) both erase
//! and write it, so it has one owner, [`SharedFlash`], an async mutex: one of them writes at a
//! time, and each holds it only for one synchronous flash operation, never across a network
//! wait.
//!
//! The partition table is read once, at boot; [`Partitions`] keeps the entries this firmware
//! uses.

use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::mutex::Mutex;
use esp_bootloader_esp_idf::partitions::{
    self, AppPartitionSubType, FlashRegion, FlashStorage, PARTITION_TABLE_MAX_LEN, PartitionEntry,
};
use genba_firmware_core::config::PARTITION_LABEL;

/// The flash, shared by the tasks that write it.
pub type SharedFlash = Mutex<CriticalSectionRawMutex, Flash>;

/// Partition type "app".
const APP: u8 = 0x00;
/// Partition type "data".
const DATA: u8 = 0x01;
/// Data subtype "ota": the `otadata` partition.
const OTADATA: u8 = 0x00;

/// The partitions this firmware uses (`partitions.csv`).
#[derive(Clone, Copy)]
pub struct Partitions {
    /// The data partition labelled `config`.
    pub config: Option<PartitionEntry>,
    /// ESP-IDF's `otadata`: which app slot boots, and its state.
    pub otadata: Option<PartitionEntry>,
    /// `ota_0` and `ota_1`.
    pub slots: [Option<(AppPartitionSubType, PartitionEntry)>; 2],
    /// The app slot this firmware runs from (the one the MMU maps).
    pub running: Option<(AppPartitionSubType, PartitionEntry)>,
}

impl Partitions {
    /// The app slot that does not run: where an update goes.
    pub fn inactive_slot(&self) -> Option<(AppPartitionSubType, PartitionEntry)> {
        let (running, _) = self.running?;
        self.slots
            .iter()
            .flatten()
            .copied()
            .find(|(s, _)| *s != running)
    }
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
        let slot = |p: PartitionEntry| {
            let subtype = AppPartitionSubType::try_from(p.raw_subtype()).ok()?;
            let ota = matches!(
                subtype,
                AppPartitionSubType::Ota0 | AppPartitionSubType::Ota1
            );
            (p.raw_type() == APP && ota).then_some((subtype, p))
        };
        let mut slots = table.iter().filter_map(slot);
        let parts = Partitions {
            config: table
                .iter()
                .find(|p| p.raw_type() == DATA && p.label_as_str() == PARTITION_LABEL),
            otadata: table
                .iter()
                .find(|p| p.raw_type() == DATA && p.raw_subtype() == OTADATA),
            slots: [slots.next(), slots.next()],
            // unknown (an error, or no app slot at the mapped address): no updates, no trial
            running: table.booted_partition().ok().flatten().and_then(slot),
        };
        Ok(Flash { storage, parts })
    }

    /// A view of one partition, for as long as the flash is borrowed.
    pub fn region(&mut self, entry: PartitionEntry) -> FlashRegion<'_, 'static> {
        entry.as_flash_region(&mut self.storage)
    }
}
