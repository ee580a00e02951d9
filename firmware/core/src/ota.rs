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

use core::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::sample;

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
}
