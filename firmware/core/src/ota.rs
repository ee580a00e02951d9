//! Installing a firmware update without losing the device: the check of a download as it
//! arrives, and the try-once life of a new image (confirmed by its first delivered batch,
//! otherwise given up for the image that ran before).
//!
//! # The download
//!
//! The `update` command ([`Command::Update`](crate::command::Command::Update)) names the
//! image's SHA-256 and size. [`Download`] takes the bytes in any chunks as they are written to
//! the inactive slot and refuses, as early as it can: more bytes than announced, a head that is
//! not an ESP32-C3 app image, and at the end fewer bytes, a SHA-256 other than the command's, or
//! an image that does not match the SHA-256 it carries. Only a download [`Download::finish`]
//! accepted may be made the boot image.
//!
//! # The trial
//!
//! The slot states are ESP-IDF's `otadata` states, which the bootloader and the firmware share.
//! A freshly written image is [`SlotState::New`]. At its first boot the firmware marks it
//! [`SlotState::PendingVerify`] ([`on_boot`] says so) and runs it. The first batch the
//! appliance acknowledges confirms it ([`on_delivered`]: [`SlotState::Valid`]). If the device
//! restarts before that (a crash, the watchdog, or the firmware's own deadline,
//! [`TRIAL_DEADLINE_S`]), the image is still pending at the next boot: [`on_boot`] then marks it
//! [`SlotState::Invalid`] and boots the other slot, which runs the version from before the
//! update, and that firmware reports its version again, so the appliance sees the update did not
//! take. The rollback is done by the firmware, not the bootloader (espflash's bootloader is
//! built without ESP-IDF's rollback option), so it needs an image that reaches `main`; one that
//! cannot boot at all is caught only by a bootloader with rollback enabled.
//!
//! While a new image is on trial the device takes no further update ([`may_update`]): the
//! other slot holds the image to return to.
//!
//! # The slot
//!
//! [`SlotWriter`] writes the download into the inactive app slot as it arrives, a sector at a
//! time, each erased just before it is written; [`check_slot`] then reads the slot back through
//! a fresh [`Download`], so what becomes the boot image is what the flash holds, not only what
//! arrived.

use core::fmt;

use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use sha2::{Digest, Sha256};

use crate::discovery::Fingerprint;
use crate::image::{self, AppInfo, ImageError, HEAD_LEN};

/// How long a new image may run without a delivered batch before the firmware restarts (and so
/// returns to the previous image), seconds.
pub const TRIAL_DEADLINE_S: u32 = 600;

/// Why a download was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadError {
    /// More bytes arrived than the command announced.
    TooLong,
    /// Fewer bytes arrived than the command announced.
    TooShort {
        /// Bytes received.
        got: u32,
    },
    /// The file's SHA-256 is not the command's.
    WrongHash,
    /// The bytes are not an image this device can run.
    Image(ImageError),
}

impl fmt::Display for DownloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownloadError::TooLong => f.write_str("download longer than the update announced"),
            DownloadError::TooShort { got } => {
                write!(
                    f,
                    "download ended after {got} bytes, short of the update's size"
                )
            }
            DownloadError::WrongHash => {
                f.write_str("download does not have the SHA-256 the update named")
            }
            DownloadError::Image(e) => write!(f, "downloaded image refused: {e}"),
        }
    }
}

crate::impl_error!(DownloadError);

/// A download being checked; see the module documentation.
pub struct Download {
    sha256: Fingerprint,
    size: u32,
    got: u32,
    /// Every byte: the file's SHA-256.
    file: Sha256,
    /// Every byte but the last 32: the SHA-256 the image carries at its end.
    body: Sha256,
    tail: [u8; 32],
    head: [u8; HEAD_LEN],
    info: Option<AppInfo>,
}

impl Download {
    /// A download of `size` bytes with this SHA-256 (from the `update` command).
    pub fn new(sha256: Fingerprint, size: u32) -> Download {
        Download {
            sha256,
            size,
            got: 0,
            file: Sha256::new(),
            body: Sha256::new(),
            tail: [0; 32],
            head: [0; HEAD_LEN],
            info: None,
        }
    }

    /// Bytes taken so far.
    pub fn received(&self) -> u32 {
        self.got
    }

    /// Takes the next bytes. An error means the download is refused: stop writing.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), DownloadError> {
        let start = self.got as usize;
        let end = start
            .checked_add(chunk.len())
            .filter(|&e| e <= self.size as usize)
            .ok_or(DownloadError::TooLong)?;
        self.file.update(chunk);
        let body_end = (self.size as usize).saturating_sub(self.tail.len());
        for (i, &b) in (start..end).zip(chunk) {
            if i < HEAD_LEN {
                self.head[i] = b;
            }
            if i >= body_end {
                self.tail[i - body_end] = b;
            }
        }
        if start < body_end {
            self.body.update(&chunk[..body_end.min(end) - start]);
        }
        self.got = end as u32;
        if self.info.is_none() && end >= HEAD_LEN {
            self.info = Some(AppInfo::read(&self.head).map_err(DownloadError::Image)?);
        }
        Ok(())
    }

    /// Ends the download: the image's description when every check passed.
    pub fn finish(self) -> Result<AppInfo, DownloadError> {
        if self.got < self.size {
            return Err(DownloadError::TooShort { got: self.got });
        }
        if self.file.finalize().as_slice() != self.sha256 {
            return Err(DownloadError::WrongHash);
        }
        let info = self
            .info
            .ok_or(DownloadError::Image(ImageError::TooShort))?;
        if (self.size as usize) < image::MIN_LEN {
            return Err(DownloadError::Image(ImageError::TooShort));
        }
        if !info.hash_appended {
            return Err(DownloadError::Image(ImageError::NoHash));
        }
        if self.body.finalize().as_slice() != self.tail {
            return Err(DownloadError::Image(ImageError::HashMismatch));
        }
        Ok(info)
    }
}

/// The state of an app slot, as ESP-IDF's `otadata` keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Written by an update, never booted.
    New,
    /// Booted once, not confirmed yet.
    PendingVerify,
    /// Confirmed.
    Valid,
    /// Given up: it did not confirm.
    Invalid,
    /// No state recorded (a slot flashed over USB): treated as confirmed.
    Undefined,
}

/// What the firmware does at boot about the slot it runs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootAction {
    /// A confirmed image: run.
    Run,
    /// A new image's first boot: mark it [`SlotState::PendingVerify`], run, and restart after
    /// [`TRIAL_DEADLINE_S`] without a delivered batch.
    Try,
    /// A pending image booted again without confirming: mark it [`SlotState::Invalid`] and
    /// boot the other slot.
    RollBack,
}

/// What to do at boot with the running slot in `state`.
pub fn on_boot(state: SlotState) -> BootAction {
    match state {
        SlotState::New => BootAction::Try,
        SlotState::PendingVerify | SlotState::Invalid => BootAction::RollBack,
        SlotState::Valid | SlotState::Undefined => BootAction::Run,
    }
}

/// The running slot's state after the appliance acknowledged a batch: a pending image is
/// confirmed; any other state stays.
pub fn on_delivered(state: SlotState) -> SlotState {
    match state {
        SlotState::PendingVerify => SlotState::Valid,
        other => other,
    }
}

/// Whether the device takes an update while its running image is in `running`: not while a new
/// image is on trial (the other slot holds the image to return to, which the update would
/// overwrite).
pub fn may_update(running: SlotState) -> bool {
    matches!(running, SlotState::Valid | SlotState::Undefined)
}

/// The sector [`SlotWriter`] erases and writes at a time: the ESP32-C3 flash's erase size.
pub const SECTOR_LEN: usize = 4096;

/// Why an update could not be written to, or read back from, its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotError<E> {
    /// More bytes than the slot holds.
    TooLong,
    /// The flash's erase, write or read size does not divide [`SECTOR_LEN`].
    Geometry,
    /// The flash refused an erase, a write or a read.
    Flash(E),
    /// What the slot holds does not pass the download's checks.
    Check(DownloadError),
}

impl<E: fmt::Debug> fmt::Display for SlotError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotError::TooLong => f.write_str("the image does not fit the app slot"),
            SlotError::Geometry => f.write_str("the flash's sector or word size does not fit"),
            SlotError::Flash(e) => write!(f, "flash error: {e:?}"),
            SlotError::Check(e) => write!(f, "the slot read back: {e}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for SlotError<E> {}

/// A sector's bytes, word-aligned so the flash writes them without another copy.
#[repr(align(4))]
struct Sector([u8; SECTOR_LEN]);

/// Writes a download into an app slot (a [`NorFlash`] view of the partition) as it arrives;
/// see the module documentation. The flash is passed to each call, so its owner can lend it
/// to other writers in between.
pub struct SlotWriter {
    sector: Sector,
    /// Bytes of `sector` filled.
    filled: usize,
    /// Where `sector` goes in the slot.
    offset: u32,
}

impl Default for SlotWriter {
    fn default() -> Self {
        SlotWriter::new()
    }
}

impl SlotWriter {
    /// A writer at the start of the slot.
    pub const fn new() -> SlotWriter {
        SlotWriter {
            sector: Sector([0xFF; SECTOR_LEN]),
            filled: 0,
            offset: 0,
        }
    }

    /// Takes the next bytes; writes every sector they complete.
    pub fn write<F: NorFlash>(
        &mut self,
        flash: &mut F,
        mut bytes: &[u8],
    ) -> Result<(), SlotError<F::Error>> {
        let end = (self.offset as usize + self.filled).saturating_add(bytes.len());
        if end > flash.capacity() {
            return Err(SlotError::TooLong);
        }
        while !bytes.is_empty() {
            let n = (SECTOR_LEN - self.filled).min(bytes.len());
            self.sector.0[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == SECTOR_LEN {
                self.flush(flash)?;
            }
        }
        Ok(())
    }

    /// Writes the last, partly filled sector (the rest of it stays erased).
    pub fn finish<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), SlotError<F::Error>> {
        self.flush(flash)
    }

    fn flush<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), SlotError<F::Error>> {
        if self.filled == 0 {
            return Ok(());
        }
        if !SECTOR_LEN.is_multiple_of(F::ERASE_SIZE) || !SECTOR_LEN.is_multiple_of(F::WRITE_SIZE) {
            return Err(SlotError::Geometry);
        }
        // an erased byte is 0xFF: writing it changes nothing
        self.sector.0[self.filled..].fill(0xFF);
        let end = self.offset + SECTOR_LEN as u32;
        flash.erase(self.offset, end).map_err(SlotError::Flash)?;
        flash
            .write(self.offset, &self.sector.0)
            .map_err(SlotError::Flash)?;
        self.offset = end;
        self.filled = 0;
        Ok(())
    }
}

/// Reads the first `size` bytes of a slot back through a [`Download`] for `sha256`: the image
/// the slot holds when every check passes. `buf` is the read size (a multiple of the flash's
/// read size).
pub fn check_slot<F: ReadNorFlash>(
    flash: &mut F,
    sha256: Fingerprint,
    size: u32,
    buf: &mut [u8],
) -> Result<AppInfo, SlotError<F::Error>> {
    if buf.is_empty() || !buf.len().is_multiple_of(F::READ_SIZE) {
        return Err(SlotError::Geometry);
    }
    if size as usize > flash.capacity() {
        return Err(SlotError::TooLong);
    }
    let mut check = Download::new(sha256, size);
    let mut offset = 0u32;
    while offset < size {
        let want = ((size - offset) as usize).min(buf.len());
        // whole read units; the bytes past `size` are not fed
        let read = want.next_multiple_of(F::READ_SIZE).min(buf.len());
        let chunk = &mut buf[..read];
        let readable = (flash.capacity() - offset as usize).min(read);
        flash
            .read(offset, &mut chunk[..readable])
            .map_err(SlotError::Flash)?;
        check.feed(&chunk[..want]).map_err(SlotError::Check)?;
        offset += want as u32;
    }
    check.finish().map_err(SlotError::Check)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::sample;
    use crate::ram_flash::RamFlash;

    fn sha(bytes: &[u8]) -> Fingerprint {
        Sha256::digest(bytes).into()
    }

    fn download(img: &[u8], chunk: usize) -> Result<AppInfo, DownloadError> {
        let mut d = Download::new(sha(img), img.len() as u32);
        for c in img.chunks(chunk) {
            d.feed(c)?;
        }
        d.finish()
    }

    #[test]
    fn a_good_download_passes_in_any_chunk_size() {
        let img = sample("1.5.0", "genba-fw-esp32c3");
        for chunk in [1, 7, 32, 33, 100, 288, 1024, img.len()] {
            let info = download(&img, chunk).unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
            assert_eq!(info.version.as_str(), "1.5.0");
        }
    }

    #[test]
    fn a_damaged_short_long_or_foreign_download_is_refused() {
        let img = sample("1.5.0", "genba-fw-esp32c3");
        let expected = sha(&img);
        // damaged in transit: the file's hash is not the command's
        let mut damaged = img.clone();
        damaged[360] ^= 1;
        let mut d = Download::new(expected, img.len() as u32);
        d.feed(&damaged).unwrap();
        assert_eq!(d.finish().unwrap_err(), DownloadError::WrongHash);
        // cut short
        let mut d = Download::new(expected, img.len() as u32);
        d.feed(&img[..300]).unwrap();
        assert_eq!(
            d.finish().unwrap_err(),
            DownloadError::TooShort { got: 300 }
        );
        // longer than announced: refused at once
        let mut d = Download::new(expected, img.len() as u32);
        d.feed(&img).unwrap();
        assert_eq!(d.feed(&[0]), Err(DownloadError::TooLong));
        // not an image: refused as soon as the head is in
        let mut elf = img.clone();
        elf[0] = 0x7f;
        let mut d = Download::new(sha(&elf), elf.len() as u32);
        assert_eq!(
            d.feed(&elf[..HEAD_LEN]),
            Err(DownloadError::Image(ImageError::NotAnImage))
        );
        // the command's hash matches, but the image is internally damaged (its own hash)
        let mut inner = img.clone();
        inner[350] ^= 1;
        assert_eq!(
            download(&inner, 64),
            Err(DownloadError::Image(ImageError::HashMismatch))
        );
    }

    #[test]
    fn a_new_image_is_tried_once_confirmed_by_a_delivery_or_rolled_back() {
        // update written, first boot: try it
        assert_eq!(on_boot(SlotState::New), BootAction::Try);
        // it delivered: confirmed, and later boots just run
        assert_eq!(on_delivered(SlotState::PendingVerify), SlotState::Valid);
        assert_eq!(on_boot(SlotState::Valid), BootAction::Run);
        // it restarted before delivering: back to the other slot
        assert_eq!(on_boot(SlotState::PendingVerify), BootAction::RollBack);
        assert_eq!(on_boot(SlotState::Invalid), BootAction::RollBack);
        // a USB-flashed slot has no state: it runs, and deliveries change nothing
        assert_eq!(on_boot(SlotState::Undefined), BootAction::Run);
        assert_eq!(on_delivered(SlotState::Undefined), SlotState::Undefined);
        assert_eq!(on_delivered(SlotState::Valid), SlotState::Valid);
    }

    #[test]
    fn no_update_is_taken_while_a_new_image_is_on_trial() {
        assert!(may_update(SlotState::Valid));
        assert!(may_update(SlotState::Undefined));
        assert!(!may_update(SlotState::PendingVerify));
        assert!(!may_update(SlotState::New));
        assert!(!may_update(SlotState::Invalid));
    }

    /// An image of `len` bytes: the sample with a body of counting bytes.
    fn big_image(len: usize) -> std::vec::Vec<u8> {
        let mut img = sample("1.6.0", "genba-fw-esp32c3");
        img.truncate(img.len() - 32);
        img.extend((0..len - img.len() - 32).map(|i| (i % 251) as u8));
        let hash = Sha256::digest(&img);
        img.extend_from_slice(&hash);
        img
    }

    #[test]
    fn the_slot_writer_erases_and_writes_only_the_sectors_the_image_needs() {
        let img = big_image(3 * SECTOR_LEN + 100);
        for chunk in [1, 3, 100, 1460, SECTOR_LEN, SECTOR_LEN + 1, img.len()] {
            let mut flash = RamFlash::new(8 * SECTOR_LEN);
            flash.mem.fill(0); // an old image: every bit must be erased first
            let mut writer = SlotWriter::new();
            for c in img.chunks(chunk) {
                writer.write(&mut flash, c).unwrap();
            }
            writer.finish(&mut flash).unwrap();
            assert_eq!(&flash.mem[..img.len()], &img[..], "chunk {chunk}");
            assert!(flash.mem[img.len()..4 * SECTOR_LEN]
                .iter()
                .all(|&b| b == 0xFF));
            assert_eq!(flash.erases, [1, 1, 1, 1, 0, 0, 0, 0], "chunk {chunk}");
            let mut buf = [0u8; 1024];
            let info = check_slot(&mut flash, sha(&img), img.len() as u32, &mut buf).unwrap();
            assert_eq!(info.version.as_str(), "1.6.0");
        }
    }

    #[test]
    fn the_slot_writer_refuses_an_image_larger_than_the_slot() {
        let mut flash = RamFlash::new(2 * SECTOR_LEN);
        let mut writer = SlotWriter::new();
        writer.write(&mut flash, &[0; 2 * SECTOR_LEN - 1]).unwrap();
        assert_eq!(writer.write(&mut flash, &[0; 2]), Err(SlotError::TooLong));
        writer.write(&mut flash, &[0; 1]).unwrap();
        writer.finish(&mut flash).unwrap();
        assert_eq!(flash.erases, [1, 1]);
    }

    #[test]
    fn a_slot_that_does_not_hold_the_download_fails_the_read_back() {
        let img = big_image(2 * SECTOR_LEN + 10);
        let mut flash = RamFlash::new(4 * SECTOR_LEN);
        let mut writer = SlotWriter::new();
        // a write cut short (a flash fault): the rest of that sector stays 0xFF
        flash.cut_after = Some(SECTOR_LEN / 2);
        writer.write(&mut flash, &img).unwrap();
        writer.finish(&mut flash).unwrap();
        let mut buf = [0u8; 512];
        assert_eq!(
            check_slot(&mut flash, sha(&img), img.len() as u32, &mut buf),
            Err(SlotError::Check(DownloadError::WrongHash))
        );
        // larger than the slot, or a read size the flash cannot do
        assert_eq!(
            check_slot(&mut flash, sha(&img), 5 * SECTOR_LEN as u32, &mut buf),
            Err(SlotError::TooLong)
        );
        assert_eq!(
            check_slot(&mut flash, sha(&img), img.len() as u32, &mut buf[..3]),
            Err(SlotError::Geometry)
        );
    }
}
