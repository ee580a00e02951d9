//! A whole-flash board image: what a blank ESP32-C3 needs in one file, as
//! `scripts/build-firmware --full` writes it (`espflash save-image --merge`) and the appliance
//! hands it out for new boards.
//!
//! ```text
//! 0x0       second-stage bootloader (an ESP image itself)
//! 0x8000    partition table: 32-byte entries, magic 0xAA 0x50, type, subtype, offset,
//!           size, label[16], flags; ended by an MD5 entry (0xEB 0xEB) or erased flash
//! 0x10000   the app in ota_0 (`firmware/esp32c3/partitions.csv`)
//! 0x3f0000  the config partition, erased (0xFF): a board image carries no settings
//! ```
//!
//! [`app_in_board`] finds the app and checks the table has what Genba's firmware uses: two
//! OTA slots, `otadata`, and the config partition at [`crate::config::PARTITION_OFFSET`].

use core::fmt;

use crate::config::{AREA_LEN, PARTITION_OFFSET};
use crate::image::{self, AppInfo, ImageError, SLOT_LEN};

/// The flash of the boards Genba supports (4 MB), and so the length of a board image.
pub const FLASH_LEN: usize = 0x40_0000;
/// Where the partition table is.
pub const TABLE_AT: usize = 0x8000;
const TABLE_LEN: usize = 0xC00;
const ENTRY_LEN: usize = 32;
const ENTRY_MAGIC: [u8; 2] = [0xAA, 0x50];
const TYPE_APP: u8 = 0x00;
const TYPE_DATA: u8 = 0x01;
const SUBTYPE_OTA_0: u8 = 0x10;
const SUBTYPE_OTA_1: u8 = 0x11;
const SUBTYPE_OTADATA: u8 = 0x00;

/// Whether `bytes` look like a board image rather than an app image: a partition table
/// where a board image has one.
pub fn is_board_image(bytes: &[u8]) -> bool {
    bytes.get(TABLE_AT..TABLE_AT + 2) == Some(&ENTRY_MAGIC[..])
}

/// Why bytes are not a board image Genba's firmware runs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoardError {
    /// Not the length of the flash ([`FLASH_LEN`]).
    WrongLength(usize),
    /// No partition table at [`TABLE_AT`].
    NoTable,
    /// The table lacks a partition the firmware uses (its name).
    Missing(&'static str),
    /// The app in `ota_0` is not a good image.
    App(ImageError),
}

impl fmt::Display for BoardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoardError::WrongLength(n) => write!(
                f,
                "a board image is {FLASH_LEN} bytes (the whole 4 MB flash), this is {n}"
            ),
            BoardError::NoTable => write!(f, "no partition table at {TABLE_AT:#x}"),
            BoardError::Missing(what) => write!(
                f,
                "its partition table has no {what} where Genba's firmware needs it \
                 (firmware/esp32c3/partitions.csv)"
            ),
            BoardError::App(e) => write!(f, "the app in ota_0: {e}"),
        }
    }
}

crate::impl_error!(BoardError);

struct Entry {
    kind: u8,
    subtype: u8,
    offset: usize,
    size: usize,
}

fn entries(table: &[u8]) -> impl Iterator<Item = Entry> + '_ {
    table
        .chunks_exact(ENTRY_LEN)
        .take_while(|e| e[..2] == ENTRY_MAGIC)
        .map(|e| Entry {
            kind: e[2],
            subtype: e[3],
            offset: u32::from_le_bytes([e[4], e[5], e[6], e[7]]) as usize,
            size: u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as usize,
        })
}

/// The app image inside a board image, its info, and where it starts; the partition table
/// checked for both OTA slots, `otadata` and the config partition.
pub fn app_in_board(board: &[u8]) -> Result<(&[u8], AppInfo), BoardError> {
    if board.len() != FLASH_LEN {
        return Err(BoardError::WrongLength(board.len()));
    }
    if !is_board_image(board) {
        return Err(BoardError::NoTable);
    }
    let table = &board[TABLE_AT..TABLE_AT + TABLE_LEN];
    let find = |kind, subtype, name| {
        entries(table)
            .find(|e| e.kind == kind && e.subtype == subtype)
            .ok_or(BoardError::Missing(name))
    };
    let ota_0 = find(TYPE_APP, SUBTYPE_OTA_0, "ota_0")?;
    let ota_1 = find(TYPE_APP, SUBTYPE_OTA_1, "ota_1")?;
    find(TYPE_DATA, SUBTYPE_OTADATA, "otadata")?;
    if ota_0.size < SLOT_LEN || ota_1.size < SLOT_LEN {
        return Err(BoardError::Missing("OTA slots of the size updates need"));
    }
    entries(table)
        .find(|e| {
            e.kind == TYPE_DATA && e.offset == PARTITION_OFFSET as usize && e.size >= AREA_LEN
        })
        .ok_or(BoardError::Missing("config partition"))?;
    let slot = board
        .get(ota_0.offset..ota_0.offset.saturating_add(ota_0.size))
        .ok_or(BoardError::Missing("ota_0 inside the flash"))?;
    let len = image::image_len(slot).map_err(BoardError::App)?;
    let app = &slot[..len];
    let info = image::check_image(app).map_err(BoardError::App)?;
    Ok((app, info))
}

/// Puts a device's config area (a provisioning file, [`AREA_LEN`] bytes) into a board image at
/// the config partition, so one write sets up a blank board: the same bytes as writing the
/// board image and then the config file. The board image is checked first.
pub fn put_config(board: &mut [u8], area: &[u8]) -> Result<(), BoardError> {
    app_in_board(board)?;
    if area.len() != AREA_LEN {
        return Err(BoardError::Missing("a config area of the partition's size"));
    }
    board[PARTITION_OFFSET as usize..PARTITION_OFFSET as usize + AREA_LEN].copy_from_slice(area);
    Ok(())
}

#[cfg(any(test, feature = "std"))]
extern crate std;

/// A board image around `app`, laid out as `firmware/esp32c3/partitions.csv` says (the
/// bootloader a stub), for tests.
#[cfg(any(test, feature = "std"))]
pub fn sample(app: &[u8]) -> std::vec::Vec<u8> {
    let mut board = std::vec![0xFFu8; FLASH_LEN];
    board[..16].copy_from_slice(&[0xE9, 3, 2, 0x20, 0, 0, 0, 0, 0xee, 0, 0, 0, 5, 0, 0, 0]);
    let table: [(&str, u8, u8, u32, u32); 6] = [
        ("nvs", TYPE_DATA, 0x02, 0x9000, 0x4000),
        ("otadata", TYPE_DATA, SUBTYPE_OTADATA, 0xd000, 0x2000),
        ("phy_init", TYPE_DATA, 0x01, 0xf000, 0x1000),
        ("ota_0", TYPE_APP, SUBTYPE_OTA_0, 0x10000, SLOT_LEN as u32),
        ("ota_1", TYPE_APP, SUBTYPE_OTA_1, 0x200000, SLOT_LEN as u32),
        ("config", TYPE_DATA, 0x06, PARTITION_OFFSET, AREA_LEN as u32),
    ];
    for (i, (label, kind, subtype, offset, size)) in table.into_iter().enumerate() {
        let e = &mut board[TABLE_AT + i * ENTRY_LEN..TABLE_AT + (i + 1) * ENTRY_LEN];
        e[..2].copy_from_slice(&ENTRY_MAGIC);
        e[2] = kind;
        e[3] = subtype;
        e[4..8].copy_from_slice(&offset.to_le_bytes());
        e[8..12].copy_from_slice(&size.to_le_bytes());
        e[12..28].fill(0);
        e[12..12 + label.len()].copy_from_slice(label.as_bytes());
        e[28..32].fill(0);
    }
    board[0x10000..0x10000 + app.len()].copy_from_slice(app);
    board
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_area_goes_in_at_the_config_partition_and_nothing_else_changes() {
        let app = image::sample("1.4.0", "genba-fw-esp32c3");
        let board = sample(&app);
        let area = [0x5Au8; AREA_LEN];
        let mut whole = board.clone();
        put_config(&mut whole, &area).unwrap();
        let at = PARTITION_OFFSET as usize;
        assert_eq!(&whole[at..at + AREA_LEN], &area[..]);
        assert_eq!(&whole[..at], &board[..at]);
        assert_eq!(&whole[at + AREA_LEN..], &board[at + AREA_LEN..]);
        // a short area, or an app image instead of a board image, is refused
        assert!(put_config(&mut board.clone(), &area[1..]).is_err());
        let mut not_board = app.clone();
        not_board.resize(FLASH_LEN, 0xFF);
        assert_eq!(put_config(&mut not_board, &area), Err(BoardError::NoTable));
    }

    #[test]
    fn the_app_in_ota_0_is_found_whole_with_its_version() {
        let app = image::sample("1.4.0", "genba-fw-esp32c3");
        let board = sample(&app);
        assert!(is_board_image(&board) && !is_board_image(&app));
        let (found, info) = app_in_board(&board).unwrap();
        assert_eq!(found, &app[..]);
        assert_eq!(info.version.as_str(), "1.4.0");
    }

    #[test]
    fn a_board_image_without_what_the_firmware_needs_is_refused_with_the_reason() {
        let app = image::sample("1.4.0", "genba-fw-esp32c3");
        let board = sample(&app);
        assert_eq!(
            app_in_board(&board[..FLASH_LEN - 1]),
            Err(BoardError::WrongLength(FLASH_LEN - 1))
        );
        let mut no_table = board.clone();
        no_table[TABLE_AT] = 0xFF;
        assert_eq!(app_in_board(&no_table), Err(BoardError::NoTable));
        // the config entry (the 6th) moved elsewhere
        let mut moved = board.clone();
        let at = TABLE_AT + 5 * ENTRY_LEN + 4;
        moved[at..at + 4].copy_from_slice(&0x3e_0000u32.to_le_bytes());
        assert_eq!(
            app_in_board(&moved),
            Err(BoardError::Missing("config partition"))
        );
        let mut damaged = board.clone();
        damaged[0x10000 + 400] ^= 1;
        assert_eq!(
            app_in_board(&damaged),
            Err(BoardError::App(ImageError::HashMismatch))
        );
        let empty = sample(&[]);
        assert_eq!(
            app_in_board(&empty),
            Err(BoardError::App(ImageError::NotAnImage))
        );
    }
}
