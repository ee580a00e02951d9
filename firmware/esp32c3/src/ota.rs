//! Firmware updates on the device: the flash and `otadata` side of the core's `ota` rules.
//!
//! - At boot, [`boot`] reads the running slot's `otadata` state and does what `ota::on_boot`
//!   says: a new image's first boot starts a trial ([`trial_task`] restarts the device after
//!   `ota::TRIAL_DEADLINE_S` without a delivered batch), and a pending image that booted again
//!   is marked invalid and the other slot is booted.
//! - [`delivered`], called after every batch the appliance acknowledged, wakes the trial, which
//!   runs `ota::on_delivered` and marks the running slot valid.
//! - The `update` command ([`request`]) hands the download to [`update_task`]: an HTTP `GET`
//!   of `/firmware/SHA256.bin` from the appliance in use, each chunk checked by
//!   `ota::Download` and written to the inactive slot by `ota::SlotWriter`, the slot read back
//!   through `ota::check_slot`, and only then `otadata` switched to it. Any error ends the
//!   update with a log line and leaves `otadata`, and so the boot slot, as it was. Once the
//!   backlog is sent, the device restarts into the new image.
//!
//! The rules are `genba_firmware_core::ota`, tested on the host and run by `genba simulate`.

use core::cell::RefCell;
use core::fmt;

use embassy_net::Stack;
use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Instant, Timer, with_deadline};
use embedded_io_async::{Read as _, Write as _};
use esp_bootloader_esp_idf::ota::{Ota, OtaImageState};
use esp_bootloader_esp_idf::partitions::{self, AppPartitionSubType};
use genba_firmware_core::command::Command;
use genba_firmware_core::config::HOST_MAX;
use genba_firmware_core::discovery::Fingerprint;
use genba_firmware_core::http;
use genba_firmware_core::image;
use genba_firmware_core::ota::{
    self as rules, BootAction, Download, DownloadError, SlotError, SlotState, SlotWriter,
};
use genba_firmware_core::telemetry::FW_MAX;
use heapless::String;
use log::{error, info, warn};

use crate::flash::{Flash, SharedFlash};
use crate::link::{self, TlsBuffers};
use crate::net::NetError;
use crate::state::{self, BACKLOG, Shared};

/// This firmware's version.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// OTA app slots in `partitions.csv`.
const OTA_SLOTS: usize = 2;
/// How long the download may wait for the appliance before it gives up.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// The running slot's state, as [`boot`] found or left it.
static RUNNING: Shared<SlotState> = Mutex::new(RefCell::new(SlotState::Undefined));
/// The appliance acknowledged a batch.
static DELIVERED: Signal<CriticalSectionRawMutex, ()> = Signal::new();
/// An update for [`update_task`].
static REQUEST: Signal<CriticalSectionRawMutex, Request> = Signal::new();
/// An update is being downloaded, or was installed and waits for the restart.
static BUSY: Shared<bool> = Mutex::new(RefCell::new(false));

/// An `update` command, and the appliance it came from.
struct Request {
    version: String<FW_MAX>,
    sha256: Fingerprint,
    size: u32,
    host: String<HOST_MAX>,
    http_port: u16,
    /// The device's pin: the download is HTTPS under it, as every other connection.
    pin: Option<Fingerprint>,
}

/// Why an update was not installed.
#[derive(Debug)]
enum InstallError {
    /// The partition table has no app slot besides the running one, or no `otadata`.
    NoSlot,
    Net(NetError),
    Http(http::Error),
    /// The response head did not fit the buffer.
    HeadTooLong,
    Status(u16),
    /// The response's `Content-Length` is not the update's size.
    Length(u32),
    Download(DownloadError),
    Slot(SlotError<partitions::Error>),
    Otadata(partitions::Error),
    /// The image says another version than the command.
    Version(String<{ image::NAME_MAX }>),
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::NoSlot => f.write_str("no inactive OTA app slot or no otadata partition"),
            InstallError::Net(e) => write!(f, "{e}"),
            InstallError::Http(e) => write!(f, "HTTP: {e}"),
            InstallError::HeadTooLong => f.write_str("HTTP response head too long"),
            InstallError::Status(s) => write!(f, "HTTP status {s}"),
            InstallError::Length(n) => write!(f, "the appliance sends {n} bytes"),
            InstallError::Download(e) => write!(f, "{e}"),
            InstallError::Slot(e) => write!(f, "{e}"),
            InstallError::Otadata(e) => write!(f, "otadata not switched: {e:?}"),
            InstallError::Version(v) => write!(f, "the image says version {v}"),
        }
    }
}

impl From<NetError> for InstallError {
    fn from(e: NetError) -> Self {
        InstallError::Net(e)
    }
}

fn slot_state(state: OtaImageState) -> SlotState {
    match state {
        OtaImageState::New => SlotState::New,
        OtaImageState::PendingVerify => SlotState::PendingVerify,
        OtaImageState::Valid => SlotState::Valid,
        OtaImageState::Invalid | OtaImageState::Aborted => SlotState::Invalid,
        OtaImageState::Undefined => SlotState::Undefined,
    }
}

fn image_state(state: SlotState) -> OtaImageState {
    match state {
        SlotState::New => OtaImageState::New,
        SlotState::PendingVerify => OtaImageState::PendingVerify,
        SlotState::Valid => OtaImageState::Valid,
        SlotState::Invalid => OtaImageState::Invalid,
        SlotState::Undefined => OtaImageState::Undefined,
    }
}

/// The `otadata` partition.
fn otadata(flash: &mut Flash) -> Result<Ota<'_, 'static>, partitions::Error> {
    let entry = flash.parts.otadata.ok_or(partitions::Error::Invalid)?;
    Ota::new(flash.region(entry), OTA_SLOTS)
}

/// The state `otadata` records for the running slot. Blank `otadata` (a freshly flashed chip),
/// or one that selects another slot than the one that runs (the bootloader fell back), says
/// nothing about this image: `Undefined`.
fn running_state(flash: &mut Flash) -> Result<SlotState, partitions::Error> {
    let (running, _) = flash.parts.running.ok_or(partitions::Error::Invalid)?;
    let mut ota = otadata(flash)?;
    let selected = ota.current_app_partition()?;
    if selected != running {
        if selected != AppPartitionSubType::Factory {
            warn!("otadata selects {selected:?}, but {running:?} runs");
        }
        return Ok(SlotState::Undefined);
    }
    ota.current_ota_state().map(slot_state)
}

/// Records `state` for the running slot (selected in `otadata` since boot: updates are refused
/// while a state change is due, see `ota::may_update`).
fn set_running_state(flash: &mut Flash, state: SlotState) -> Result<(), partitions::Error> {
    otadata(flash)?.set_current_ota_state(image_state(state))
}

/// Selects `slot` to boot next, with `state`. On blank `otadata` the running slot is recorded
/// first: the crate numbers a first selection of `ota_1` with sequence 0, which the bootloader
/// reads as `ota_1` only by unsigned wrap-around; recorded this way the sequence numbers are
/// ESP-IDF's own (1 for `ota_0`, 2 for `ota_1`).
fn select_slot(
    flash: &mut Flash,
    slot: AppPartitionSubType,
    state: SlotState,
) -> Result<(), partitions::Error> {
    let (running, _) = flash.parts.running.ok_or(partitions::Error::Invalid)?;
    let mut ota = otadata(flash)?;
    if ota.current_app_partition()? == AppPartitionSubType::Factory {
        ota.set_current_app_partition(running)?;
    }
    ota.set_current_app_partition(slot)?;
    ota.set_current_ota_state(image_state(state))
}

/// At boot, before the other tasks use the flash: runs `ota::on_boot` on the running slot's
/// state. Returns true when a trial starts (spawn [`trial_task`]). Does not return when it
/// rolls back.
pub fn boot(flash: &mut Flash) -> bool {
    let slot = flash.parts.running.map(|(s, _)| s);
    let state = match running_state(flash) {
        Ok(s) => s,
        Err(e) => {
            warn!("firmware {VERSION}: slot state unreadable ({e:?}); running without a trial");
            return false;
        }
    };
    state::with(&RUNNING, |r| *r = state);
    match rules::on_boot(state) {
        BootAction::Run => {
            info!("firmware {VERSION} from {slot:?} ({state:?})");
            false
        }
        BootAction::Try => match set_running_state(flash, SlotState::PendingVerify) {
            Ok(()) => {
                state::with(&RUNNING, |r| *r = SlotState::PendingVerify);
                info!(
                    "firmware {VERSION} from {slot:?} on trial: the first delivered batch confirms \
                     it, else it restarts after {} s and returns to the previous firmware",
                    rules::TRIAL_DEADLINE_S
                );
                true
            }
            Err(e) => {
                error!("firmware {VERSION}: cannot mark its trial in otadata ({e:?}); running");
                false
            }
        },
        BootAction::RollBack => {
            error!(
                "firmware {VERSION} from {slot:?} booted again without a delivered batch \
                 ({state:?}): marking it invalid and returning to the other slot"
            );
            match roll_back(flash) {
                Ok(()) => esp_hal::system::software_reset(),
                Err(e) => {
                    error!("rollback failed ({e:?}); running firmware {VERSION}");
                    false
                }
            }
        }
    }
}

/// Marks the running slot invalid and selects the other one. That one ran before the update
/// (an update starts only from a confirmed image), so it is selected as valid.
fn roll_back(flash: &mut Flash) -> Result<(), partitions::Error> {
    let (other, _) = flash
        .parts
        .inactive_slot()
        .ok_or(partitions::Error::Invalid)?;
    set_running_state(flash, SlotState::Invalid)?;
    select_slot(flash, other, SlotState::Valid)
}

/// The appliance acknowledged a batch: ends a trial ([`trial_task`]).
pub fn delivered() {
    DELIVERED.signal(());
}

/// Runs the running image's trial: the first delivered batch confirms it
/// (`ota::on_delivered`, written to `otadata`); without one within `ota::TRIAL_DEADLINE_S`
/// the device restarts, and [`boot`] then returns to the previous image.
#[embassy_executor::task]
pub async fn trial_task(flash: &'static SharedFlash) {
    let deadline = Instant::now() + Duration::from_secs(u64::from(rules::TRIAL_DEADLINE_S));
    loop {
        if with_deadline(deadline, DELIVERED.wait()).await.is_err() {
            error!(
                "firmware {VERSION} delivered nothing within {} s; restarting (back to the \
                 previous firmware)",
                rules::TRIAL_DEADLINE_S
            );
            Timer::after(Duration::from_millis(100)).await;
            esp_hal::system::software_reset()
        }
        let state = state::with(&RUNNING, |s| *s);
        let next = rules::on_delivered(state);
        if next == state {
            return;
        }
        let written = set_running_state(&mut *flash.lock().await, next);
        match written {
            Ok(()) => {
                state::with(&RUNNING, |s| *s = next);
                info!("firmware {VERSION} confirmed by its first delivered batch");
                return;
            }
            Err(e) => warn!("firmware {VERSION}: confirmation not written ({e:?}); trying again"),
        }
    }
}

/// Takes an `update` command received from the appliance at `host`: hands it to
/// [`update_task`], unless the running image is on trial or another update is underway.
pub fn request(cmd: &Command, host: &str, http_port: u16, pin: Option<Fingerprint>) {
    let Command::Update {
        version,
        sha256,
        size,
    } = cmd
    else {
        return;
    };
    let running = state::with(&RUNNING, |s| *s);
    if !rules::may_update(running) {
        warn!("command: update to {version} refused: firmware {VERSION} is on trial ({running:?})");
        return;
    }
    let Ok(host) = String::try_from(host) else {
        // not reached: the host is the config's or an IPv4 literal, both within HOST_MAX
        warn!("command: update to {version} refused: appliance host name too long");
        return;
    };
    if state::with(&BUSY, |b| core::mem::replace(b, true)) {
        warn!("command: update to {version} refused: another update is underway");
        return;
    }
    info!("command: update to {version} ({size} bytes)");
    REQUEST.signal(Request {
        version: version.clone(),
        sha256: *sha256,
        size: *size,
        host,
        http_port,
        pin,
    });
}

/// Installs the updates [`request`] hands over, one at a time; restarts into one that
/// installed once the backlog is sent.
#[embassy_executor::task]
pub async fn update_task(stack: Stack<'static>, flash: &'static SharedFlash) {
    loop {
        let req = REQUEST.wait().await;
        match install(stack, flash, &req).await {
            Ok(slot) => {
                info!(
                    "update to {}: written to {slot:?} and checked; restarting into it once the \
                     backlog is sent",
                    req.version
                );
                while !state::with(&BACKLOG, |b| b.is_empty()) {
                    Timer::after(Duration::from_secs(1)).await;
                }
                info!("restarting into firmware {}", req.version);
                // let the log line out
                Timer::after(Duration::from_millis(100)).await;
                esp_hal::system::software_reset()
            }
            Err(e) => {
                error!(
                    "update to {} refused: {e}; firmware {VERSION} keeps running and booting",
                    req.version
                );
                state::with(&BUSY, |b| *b = false);
            }
        }
    }
}

/// Downloads the update into the inactive slot, checks it, reads it back and selects it to
/// boot; see the module documentation.
async fn install(
    stack: Stack<'static>,
    flash: &SharedFlash,
    req: &Request,
) -> Result<AppPartitionSubType, InstallError> {
    let (slot, entry) = {
        let flash = flash.lock().await;
        match (flash.parts.inactive_slot(), flash.parts.otadata) {
            (Some(slot), Some(_)) => slot,
            _ => return Err(InstallError::NoSlot),
        }
    };
    if req.size > entry.len() {
        return Err(InstallError::Slot(SlotError::TooLong));
    }
    let path = image::download_path(&req.sha256);
    let url = http::Url {
        tls: req.pin.is_some(),
        host: &req.host,
        port: req.http_port,
        path: &path,
    };
    info!(
        "update to {}: GET {}://{}:{}{} into {slot:?}",
        req.version,
        if url.tls { "https" } else { "http" },
        url.host,
        url.port,
        url.path
    );
    let (mut rx, mut tx) = ([0u8; 4096], [0u8; 256]);
    let mut tls = TlsBuffers::new();
    let server = (url.host, url.port);
    let pin = req.pin.as_ref();
    let bufs = (&mut rx[..], &mut tx[..]);
    let mut socket = link::open(stack, server, pin, bufs, &mut tls, DOWNLOAD_TIMEOUT).await?;
    let mut buf = [0u8; 1024];
    let n = http::write_get(&mut buf, &url).map_err(InstallError::Http)?;
    socket.write_all(&buf[..n]).await.map_err(NetError::Link)?;
    socket.flush().await.map_err(NetError::Link)?;

    // the head; the first body bytes may come with it
    let mut got = 0;
    let head = loop {
        if got == buf.len() {
            return Err(InstallError::HeadTooLong);
        }
        let n = socket.read(&mut buf[got..]).await.map_err(NetError::Link)?;
        if n == 0 {
            return Err(InstallError::Http(http::Error::BadResponse));
        }
        got += n;
        if let Some(head) = http::read_head(&buf[..got]).map_err(InstallError::Http)? {
            break head;
        }
    };
    if head.status != 200 {
        return Err(InstallError::Status(head.status));
    }
    if let Some(len) = head.content_length.filter(|&len| len != req.size) {
        return Err(InstallError::Length(len));
    }

    // the body: checked, then written, chunk by chunk
    let mut download = Download::new(req.sha256, req.size);
    let mut writer = SlotWriter::new();
    let mut body = head.len..got;
    loop {
        let chunk = &buf[body];
        if !chunk.is_empty() {
            download.feed(chunk).map_err(InstallError::Download)?;
            with_slot(flash, entry, |nor| writer.write(nor, chunk)).await?;
        }
        if download.received() == req.size {
            break;
        }
        let n = socket.read(&mut buf).await.map_err(NetError::Link)?;
        if n == 0 {
            break; // the appliance closed early: `finish` says what is missing
        }
        body = 0..n;
    }
    socket.close().await;
    with_slot(flash, entry, |nor| writer.finish(nor)).await?;
    let info = download.finish().map_err(InstallError::Download)?;
    if info.version.as_str() != req.version.as_str() {
        return Err(InstallError::Version(info.version));
    }
    // what the flash holds, not only what arrived
    with_slot(flash, entry, |nor| {
        rules::check_slot(nor, req.sha256, req.size, &mut buf).map(|_| ())
    })
    .await?;
    select_slot(&mut *flash.lock().await, slot, SlotState::New).map_err(InstallError::Otadata)?;
    Ok(slot)
}

/// Runs `f` on the slot `entry`, holding the flash.
async fn with_slot(
    flash: &SharedFlash,
    entry: partitions::PartitionEntry,
    f: impl FnOnce(
        &mut partitions::NorFlashRegion<'_, '_, 'static>,
    ) -> Result<(), SlotError<partitions::Error>>,
) -> Result<(), InstallError> {
    let mut flash = flash.lock().await;
    let mut region = flash.region(entry);
    let mut nor = region
        .as_nor_flash()
        .map_err(|e| InstallError::Slot(SlotError::Flash(e)))?;
    f(&mut nor).map_err(InstallError::Slot)
}
