//! Writing a thermometer's flash from this machine (`genba devices provision --write PORT`): a
//! board plugged into the Pi's own USB port gets the board image with its config area inside,
//! or the config area alone, so the shop needs no flashing tool on a computer of its own.
//!
//! The serial protocol is espflash's library, speaking to the chip's ROM loader (no RAM stub):
//! compressed writes, then an MD5 of the flash compared with what was sent.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::Flasher;
use espflash::target::{Chip, ProgressCallbacks};
use serialport::{SerialPortType, UsbPortInfo};

/// Espressif's USB vendor id: the ESP32-C3's own USB serial port (and Espressif's bridges).
const ESPRESSIF_VID: u16 = 0x303a;
const BAUD: u32 = 115_200;

/// How the chip gets into its ROM loader and out of it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    /// The serial lines reset it into the loader before and into the new firmware after (the
    /// ESP32-C3's USB serial port, or a bridge with DTR/RTS wired), as espflash does.
    Lines,
    /// The chip is in its loader already (held BOOT while plugging in) and stays there: unplug
    /// it, or press RESET, to start the new firmware.
    None,
}

/// A serial port to write to: the one named, or with `auto` the only one with Espressif's USB
/// vendor id.
pub fn find_port(asked: &str) -> Result<(String, UsbPortInfo)> {
    let ports = serialport::available_ports().unwrap_or_default();
    let usb = |t: &SerialPortType| match t {
        SerialPortType::UsbPort(info) => Some(info.clone()),
        _ => None,
    };
    if asked != "auto" {
        let info = ports
            .iter()
            .find(|p| p.port_name == asked)
            .and_then(|p| usb(&p.port_type))
            .unwrap_or(UsbPortInfo {
                vid: 0,
                pid: 0,
                serial_number: None,
                manufacturer: None,
                product: None,
            });
        return Ok((asked.to_owned(), info));
    }
    let espressif: Vec<(String, UsbPortInfo)> = ports
        .iter()
        .filter_map(|p| usb(&p.port_type).map(|u| (p.port_name.clone(), u)))
        .filter(|(_, u)| u.vid == ESPRESSIF_VID)
        .collect();
    match espressif.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "--write auto: no ESP32 board on this machine's USB (no serial port with Espressif's \
             vendor id {ESPRESSIF_VID:04x}); plug the board in with a data cable, or name the \
             port (e.g. --write /dev/ttyUSB0 for a board with a USB-serial bridge)"
        ),
        several => bail!(
            "--write auto: {} ESP32 boards are plugged in ({}); name the one to write",
            several.len(),
            several
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Writes `data` at `offset` of the ESP32-C3's flash on `port`, checks it by MD5 and (with
/// [`Reset::Lines`]) restarts the chip into it. `progress` is told the blocks written.
pub fn write(
    port: &str,
    usb: UsbPortInfo,
    reset: Reset,
    offset: u32,
    data: &[u8],
    progress: &mut dyn ProgressCallbacks,
) -> Result<()> {
    let serial = serialport::new(port, BAUD)
        .flow_control(serialport::FlowControl::None)
        .timeout(Duration::from_secs(3))
        .open_native()
        .with_context(|| format!("opening the serial port {port}"))?;
    let (before, after) = match reset {
        Reset::Lines => (
            ResetBeforeOperation::DefaultReset,
            ResetAfterOperation::HardReset,
        ),
        Reset::None => (ResetBeforeOperation::NoReset, ResetAfterOperation::NoReset),
    };
    let connection = Connection::new(serial, usb, after, before, BAUD);
    let mut flasher = Flasher::connect(connection, false, true, false, Some(Chip::Esp32c3), None)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "no ESP32-C3 loader answered on {port} (hold BOOT while plugging the board in, \
                 then try again with --no-reset)"
            )
        })?;
    flasher
        .write_bin_to_flash(offset, data, progress)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {} bytes at {offset:#x} on {port}", data.len()))?;
    Ok(())
}

/// An indicatif bar for [`write`] on stderr (hidden when stderr is not a terminal).
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            bar: indicatif::ProgressBar::new(0),
        }
    }
}

impl ProgressCallbacks for Progress {
    fn init(&mut self, addr: u32, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_message(format!("{addr:#x}"));
    }

    fn update(&mut self, current: usize) {
        self.bar.set_position(current as u64);
    }

    fn verifying(&mut self) {
        self.bar.set_message("verifying");
    }

    fn finish(&mut self, _skipped: bool) {
        self.bar.finish_and_clear();
    }
}
