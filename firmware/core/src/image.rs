//! The firmware's app image, as the appliance keeps it for updates and the device checks it
//! before it boots it: the ESP-IDF app image format (what `esptool elf2image` and espflash
//! write, what the second-stage bootloader loads), read far enough to know what an image is.
//!
//! ```text
//! 0    image header (24 bytes): magic 0xE9, segment count, flash settings, entry point,
//!      chip id (offset 12, u16 LE), chip revisions, hash_appended (offset 23)
//! 24   first segment header (load address, length), then its data, which starts with
//! 32   the app descriptor (256 bytes): magic 0xABCD5432, secure version, version[32],
//!      project_name[32], time[16], date[16], idf_ver[32], app_elf_sha256[32], ...
//! ...  further segments, padding, a checksum byte, then, when hash_appended is 1, the
//!      SHA-256 of every byte before it (32 bytes)
//! ```
//!
//! [`AppInfo::read`] takes the first [`HEAD_LEN`] bytes; [`check_image`] checks a whole image:
//! its head, and its appended SHA-256 against its bytes. Both ends use this code: the appliance
//! when an image is added (`genba firmware add`), the device when an update has been written.

use core::fmt;

use heapless::String;
use sha2::{Digest, Sha256};

/// Bytes [`AppInfo::read`] needs: the image header, the first segment header and the app
/// descriptor.
pub const HEAD_LEN: usize = DESC_AT + DESC_LEN;
/// The chip id of the ESP32-C3 in an image header.
pub const CHIP_ESP32C3: u16 = 0x0005;
/// Longest version and project name in an app descriptor.
pub const NAME_MAX: usize = 32;
/// Size of an OTA app slot (`ota_0`, `ota_1` in `firmware/esp32c3/partitions.csv`): the
/// largest image a device can take.
pub const SLOT_LEN: usize = 0x1F_0000;
/// Where the appliance serves its images: [`download_path`].
pub const DOWNLOAD_PREFIX: &str = "/firmware/";

/// The HTTP path of the image with this SHA-256 on the appliance: `/firmware/HEX.bin`.
pub fn download_path(sha256: &crate::discovery::Fingerprint) -> String<{ 10 + 64 + 4 }> {
    let mut path = String::new();
    // fits by construction: prefix, 64 hex digits, suffix
    let _ = path.push_str(DOWNLOAD_PREFIX);
    let _ = path.push_str(&crate::discovery::hex(sha256));
    let _ = path.push_str(".bin");
    path
}

/// Smallest image: a head and the appended SHA-256.
pub const MIN_LEN: usize = HEAD_LEN + SHA_LEN;

const IMAGE_MAGIC: u8 = 0xE9;
const DESC_MAGIC: u32 = 0xABCD_5432;
const DESC_AT: usize = 24 + 8;
const DESC_LEN: usize = 256;
const SHA_LEN: usize = 32;

/// Why bytes are not a firmware image this code takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageError {
    /// Shorter than an image head and its hash.
    TooShort,
    /// The first byte is not the app image magic 0xE9.
    NotAnImage,
    /// An image for another chip (its chip id).
    WrongChip(u16),
    /// No app descriptor at the start of the first segment.
    NoDescriptor,
    /// The version or project name is not UTF-8 text.
    BadName,
    /// The image carries no SHA-256 of itself, so a damaged copy cannot be told apart.
    NoHash,
    /// Its bytes do not match the SHA-256 it carries: damaged.
    HashMismatch,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::TooShort => f.write_str("too short for a firmware app image"),
            ImageError::NotAnImage => {
                f.write_str("not an ESP app image (no 0xE9 magic): give the app .bin, not the ELF")
            }
            ImageError::WrongChip(id) => {
                write!(
                    f,
                    "an image for chip id {id:#06x}, not the ESP32-C3 ({CHIP_ESP32C3:#06x})"
                )
            }
            ImageError::NoDescriptor => {
                f.write_str("no app descriptor (esp_app_desc) in the image")
            }
            ImageError::BadName => f.write_str("the app descriptor's version or name is not text"),
            ImageError::NoHash => f.write_str("the image has no appended SHA-256"),
            ImageError::HashMismatch => {
                f.write_str("the image does not match its appended SHA-256: it is damaged")
            }
        }
    }
}

crate::impl_error!(ImageError);

/// What an image says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    /// The chip id of the header.
    pub chip: u16,
    /// The app's version (the firmware's `CARGO_PKG_VERSION`).
    pub version: String<NAME_MAX>,
    /// The app's project name (`genba-fw-esp32c3`).
    pub project: String<NAME_MAX>,
    /// The header's `hash_appended` flag.
    pub hash_appended: bool,
}

impl AppInfo {
    /// Reads the head of an image (its first [`HEAD_LEN`] bytes, or more). Checks the magic
    /// numbers and the chip; not the hash ([`check_image`] does).
    pub fn read(head: &[u8]) -> Result<AppInfo, ImageError> {
        let head = head.get(..HEAD_LEN).ok_or(ImageError::TooShort)?;
        if head[0] != IMAGE_MAGIC {
            return Err(ImageError::NotAnImage);
        }
        let chip = u16::from_le_bytes([head[12], head[13]]);
        if chip != CHIP_ESP32C3 {
            return Err(ImageError::WrongChip(chip));
        }
        let desc = &head[DESC_AT..];
        if u32::from_le_bytes([desc[0], desc[1], desc[2], desc[3]]) != DESC_MAGIC {
            return Err(ImageError::NoDescriptor);
        }
        Ok(AppInfo {
            chip,
            version: c_string(&desc[16..48])?,
            project: c_string(&desc[48..80])?,
            hash_appended: head[23] == 1,
        })
    }
}

/// A NUL-padded string field.
fn c_string(field: &[u8]) -> Result<String<NAME_MAX>, ImageError> {
    let len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let text = core::str::from_utf8(&field[..len]).map_err(|_| ImageError::BadName)?;
    if text.chars().any(char::is_control) {
        return Err(ImageError::BadName);
    }
    String::try_from(text).map_err(|_| ImageError::BadName)
}

/// Checks a whole image: its head ([`AppInfo::read`]) and that its bytes match the SHA-256 it
/// carries at its end.
pub fn check_image(image: &[u8]) -> Result<AppInfo, ImageError> {
    if image.len() < MIN_LEN {
        return Err(ImageError::TooShort);
    }
    let info = AppInfo::read(image)?;
    if !info.hash_appended {
        return Err(ImageError::NoHash);
    }
    let (body, hash) = image.split_at(image.len() - SHA_LEN);
    if Sha256::digest(body).as_slice() != hash {
        return Err(ImageError::HashMismatch);
    }
    Ok(info)
}

/// The length of the image at the start of `bytes` (an app in a flash slot, followed by
/// erased flash): its header, its segments, the padding that ends with the checksum byte on a
/// 16-byte boundary and, when `hash_appended`, the SHA-256.
pub fn image_len(bytes: &[u8]) -> Result<usize, ImageError> {
    let head = bytes.get(..24).ok_or(ImageError::TooShort)?;
    if head[0] != IMAGE_MAGIC {
        return Err(ImageError::NotAnImage);
    }
    let mut at = 24usize;
    for _ in 0..head[1] {
        let h = bytes.get(at..at + 8).ok_or(ImageError::TooShort)?;
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        at = at
            .checked_add(8 + len)
            .filter(|&end| end <= bytes.len())
            .ok_or(ImageError::TooShort)?;
    }
    at = (at / 16 + 1) * 16;
    if head[23] == 1 {
        at += SHA_LEN;
    }
    if at > bytes.len() {
        return Err(ImageError::TooShort);
    }
    Ok(at)
}

#[cfg(feature = "std")]
extern crate std;

#[cfg(any(test, feature = "std"))]
/// A small but well-formed ESP32-C3 app image (header, one segment starting with an app
/// descriptor, padding with a checksum byte, the appended SHA-256), for tests and for
/// `genba simulate`'s devices. `version` and `project` fit [`NAME_MAX`].
pub fn sample(version: &str, project: &str) -> std::vec::Vec<u8> {
    let mut desc = [0u8; DESC_LEN];
    desc[..4].copy_from_slice(&DESC_MAGIC.to_le_bytes());
    desc[16..16 + version.len()].copy_from_slice(version.as_bytes());
    desc[48..48 + project.len()].copy_from_slice(project.as_bytes());
    let mut segment = desc.to_vec();
    segment.extend_from_slice(&[0x5a; 100]);
    let mut out = std::vec![IMAGE_MAGIC, 1, 2, 0x20];
    out.extend_from_slice(&0x4200_0000u32.to_le_bytes()); // entry
    out.extend_from_slice(&[0xee, 0, 0, 0]); // wp pin, drive settings
    out.extend_from_slice(&CHIP_ESP32C3.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 1]); // revisions, reserved, hash
    assert_eq!(out.len(), 24);
    out.extend_from_slice(&0x3c00_0020u32.to_le_bytes());
    out.extend_from_slice(&(segment.len() as u32).to_le_bytes());
    out.extend_from_slice(&segment);
    while out.len() % 16 != 15 {
        out.push(0);
    }
    out.push(0xef); // the checksum byte (not checked here)
    let hash = Sha256::digest(&out);
    out.extend_from_slice(&hash);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_image_says_its_version_and_project() {
        let img = sample("1.4.0", "genba-fw-esp32c3");
        let info = check_image(&img).unwrap();
        assert_eq!(info.version.as_str(), "1.4.0");
        assert_eq!(info.project.as_str(), "genba-fw-esp32c3");
        assert_eq!(info.chip, CHIP_ESP32C3);
        assert_eq!(AppInfo::read(&img[..HEAD_LEN]), Ok(info));
    }

    #[test]
    fn a_damaged_or_foreign_image_is_refused_with_the_reason() {
        let img = sample("1.4.0", "genba-fw-esp32c3");
        let mut flipped = img.clone();
        flipped[400] ^= 1;
        assert_eq!(check_image(&flipped), Err(ImageError::HashMismatch));
        assert_eq!(
            check_image(&img[..img.len() - 1]),
            Err(ImageError::HashMismatch)
        );
        assert_eq!(check_image(&img[..100]), Err(ImageError::TooShort));
        let mut elf = img.clone();
        elf[..4].copy_from_slice(b"\x7fELF");
        assert_eq!(check_image(&elf), Err(ImageError::NotAnImage));
        let mut esp32 = img.clone();
        esp32[12] = 0; // chip id 0: the ESP32
        assert_eq!(check_image(&esp32), Err(ImageError::WrongChip(0)));
        let mut no_desc = img.clone();
        no_desc[DESC_AT] = 0;
        assert_eq!(check_image(&no_desc), Err(ImageError::NoDescriptor));
        let mut no_hash = img.clone();
        no_hash[23] = 0;
        assert_eq!(check_image(&no_hash), Err(ImageError::NoHash));
        let mut bad_name = img;
        bad_name[DESC_AT + 16] = 0xff;
        assert_eq!(AppInfo::read(&bad_name), Err(ImageError::BadName));
    }

    #[test]
    fn slot_len_is_the_size_of_both_ota_slots_in_the_partition_table() {
        let table = include_str!("../../esp32c3/partitions.csv");
        let sizes: std::vec::Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("ota_0,") || l.starts_with("ota_1,"))
            .map(|l| l.split(',').nth(4).unwrap().trim())
            .collect();
        assert_eq!(sizes.len(), 2, "{table}");
        for size in sizes {
            let size = usize::from_str_radix(size.trim_start_matches("0x"), 16).unwrap();
            assert_eq!(size, SLOT_LEN);
        }
    }

    #[test]
    fn an_image_followed_by_erased_flash_is_measured_to_its_last_byte() {
        let img = sample("1.4.0", "genba-fw-esp32c3");
        let mut slot = img.clone();
        slot.extend_from_slice(&[0xFF; 4096]);
        assert_eq!(image_len(&slot), Ok(img.len()));
        assert_eq!(image_len(&img), Ok(img.len()));
        assert_eq!(image_len(&img[..img.len() - 1]), Err(ImageError::TooShort));
        assert_eq!(image_len(&[0xFF; 64]), Err(ImageError::NotAnImage));
    }

    #[test]
    fn every_truncation_is_refused_without_a_panic() {
        let img = sample("1.4.0", "genba-fw-esp32c3");
        for end in 0..img.len() {
            assert!(check_image(&img[..end]).is_err(), "cut at {end}");
        }
    }
}
