//! Writing a thermometer plugged into this machine's USB port, for `genba devices provision
//! --write` and the console's "Add a thermometer": the newest board image the appliance keeps
//! with the device's config inside (a blank board is ready in one write), or the config area
//! alone, so no flashing tool is needed on any computer.
//!
//! The serial protocol is espflash's library, speaking to the chip's ROM loader (no RAM stub):
//! compressed writes, then the flash's MD5 compared with what was sent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::Flasher;
pub use espflash::target::ProgressCallbacks;
use espflash::target::{Chip, DefaultProgressCallback};
use genba_firmware_core::board;
use genba_firmware_core::config::PARTITION_OFFSET;
use serialport::{SerialPortType, UsbPortInfo};

/// Espressif's USB vendor id: the ESP32-C3's own USB serial port (and Espressif's bridges).
pub const ESPRESSIF_VID: u16 = 0x303a;
const BAUD: u32 = 115_200;

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error(
        "no ESP32 board on this machine's USB (no serial port with Espressif's vendor id \
         {ESPRESSIF_VID:04x}); plug the board in with a data cable, or name the port of a board \
         with a USB-serial bridge (/dev/ttyUSB0)"
    )]
    NoBoard,
    #[error("{} ESP32 boards are plugged in ({}); name the one to write", .0.len(), .0.join(", "))]
    SeveralBoards(Vec<String>),
    #[error(
        "this appliance keeps no board image; add one with `genba firmware add \
         genba-fw-esp32c3-full-4MB.bin` (scripts/build-firmware --full), or write the config \
         alone to a board that runs Genba's firmware"
    )]
    NoBoardImage,
    #[error("board image {}: {detail}", .path.display())]
    BoardImage { path: PathBuf, detail: String },
    #[error("reading the appliance's firmware table: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("opening the serial port {port}: {source}")]
    Open {
        port: String,
        source: serialport::Error,
    },
    #[error(
        "no ESP32-C3 loader answered on {port} ({detail}); hold BOOT while plugging the board \
         in, and write it without the reset"
    )]
    NoLoader { port: String, detail: String },
    #[error("writing {bytes} bytes at {offset:#x} on {port}: {detail}")]
    Write {
        port: String,
        bytes: usize,
        offset: u32,
        detail: String,
    },
}

/// A serial port to write to, with what USB says about it (espflash picks its reset sequence
/// by it).
#[derive(Debug, Clone)]
pub struct Port {
    pub name: String,
    usb: UsbPortInfo,
}

/// The serial ports of this machine. (serialport 4.10 without libudev reads `/sys/class/tty`
/// and panics where there is none, as in some containers: then there are none.)
fn serial_ports() -> Vec<serialport::SerialPortInfo> {
    if cfg!(target_os = "linux") && !Path::new("/sys/class/tty").is_dir() {
        return Vec::new();
    }
    serialport::available_ports().unwrap_or_default()
}

/// The serial ports with Espressif's USB vendor id: the ESP32 boards plugged in.
pub fn espressif_ports() -> Vec<Port> {
    serial_ports()
        .into_iter()
        .filter_map(|p| match p.port_type {
            SerialPortType::UsbPort(usb) if usb.vid == ESPRESSIF_VID => Some(Port {
                name: p.port_name,
                usb,
            }),
            _ => None,
        })
        .collect()
}

/// The ports a page may offer: these (`fixed`), or the ESP32 boards plugged in.
pub fn offered(fixed: Option<&[String]>) -> Vec<Port> {
    match fixed {
        Some(names) => {
            let ports = serial_ports();
            names.iter().map(|n| named(n, &ports)).collect()
        }
        None => espressif_ports(),
    }
}

/// The port named, or with `auto` the one ESP32 board plugged in.
pub fn find_port(asked: &str) -> Result<Port, FlashError> {
    if asked != "auto" {
        return Ok(named(asked, &serial_ports()));
    }
    let mut found = espressif_ports();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(FlashError::NoBoard),
        _ => Err(FlashError::SeveralBoards(
            found.into_iter().map(|p| p.name).collect(),
        )),
    }
}

/// The port `name`, with what `ports` (this machine's) say about its USB side, if anything.
fn named(name: &str, ports: &[serialport::SerialPortInfo]) -> Port {
    let usb = ports
        .iter()
        .find(|p| p.port_name == name)
        .and_then(|p| match &p.port_type {
            SerialPortType::UsbPort(usb) => Some(usb.clone()),
            _ => None,
        })
        .unwrap_or(UsbPortInfo {
            vid: 0,
            pid: 0,
            serial_number: None,
            manufacturer: None,
            product: None,
        });
    Port {
        name: name.to_owned(),
        usb,
    }
}

/// How the chip gets into its ROM loader and out of it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    /// The serial lines reset it into the loader before and into the new firmware after (the
    /// ESP32-C3's USB serial port, or a bridge with DTR/RTS wired), as espflash does.
    Lines,
    /// The chip is in its loader already (BOOT held while plugging it in) and stays there:
    /// unplug it, or press RESET, to start the new firmware.
    None,
}

/// What goes on the board: where, the bytes, and the firmware version of a board image.
pub struct Plan {
    pub offset: u32,
    pub data: Vec<u8>,
    pub firmware: Option<String>,
}

impl Plan {
    /// The config area alone, at its partition, for a board that runs Genba's firmware.
    pub fn config_only(record: &[u8]) -> Plan {
        Plan {
            offset: PARTITION_OFFSET,
            data: record.to_vec(),
            firmware: None,
        }
    }

    /// The newest board image the appliance keeps in `firmware_dir` (`genba firmware add`),
    /// with the device's config area (`record`) inside.
    pub fn board(
        conn: &rusqlite::Connection,
        firmware_dir: &Path,
        record: &[u8],
    ) -> Result<Plan, FlashError> {
        let image = genba_store::firmware::newest_board(conn)?.ok_or(FlashError::NoBoardImage)?;
        let path = firmware_dir.join(genba_store::firmware::board_file_name(&image.sha256));
        let board_error = |detail: String| FlashError::BoardImage {
            path: path.clone(),
            detail,
        };
        let mut data = std::fs::read(&path).map_err(|e| board_error(e.to_string()))?;
        board::put_config(&mut data, record).map_err(|e| board_error(e.to_string()))?;
        Ok(Plan {
            offset: 0,
            data,
            firmware: Some(image.version),
        })
    }

    /// What was written, in words: "firmware 1.5.0 with the config (4194304 bytes at 0x0)".
    pub fn what(&self) -> String {
        let what = match &self.firmware {
            Some(v) => format!("firmware {v} with the config"),
            None => "the config".to_owned(),
        };
        format!("{what} ({} bytes at {:#x})", self.data.len(), self.offset)
    }
}

/// Writes `plan` to the ESP32-C3 on `port`, checks it by MD5 and (with [`Reset::Lines`])
/// restarts the chip into it. Blocking: up to a minute for a whole board image.
pub fn write(
    port: &Port,
    reset: Reset,
    plan: &Plan,
    progress: Option<&mut dyn ProgressCallbacks>,
) -> Result<(), FlashError> {
    let serial = serialport::new(&port.name, BAUD)
        .flow_control(serialport::FlowControl::None)
        .timeout(Duration::from_secs(3))
        .open_native()
        .map_err(|source| FlashError::Open {
            port: port.name.clone(),
            source,
        })?;
    let (before, after) = match reset {
        Reset::Lines => (
            ResetBeforeOperation::DefaultReset,
            ResetAfterOperation::HardReset,
        ),
        Reset::None => (ResetBeforeOperation::NoReset, ResetAfterOperation::NoReset),
    };
    let connection = Connection::new(serial, port.usb.clone(), after, before, BAUD);
    let mut flasher = Flasher::connect(connection, false, true, false, Some(Chip::Esp32c3), None)
        .map_err(|e| FlashError::NoLoader {
        port: port.name.clone(),
        detail: e.to_string(),
    })?;
    let mut quiet = DefaultProgressCallback;
    flasher
        .write_bin_to_flash(plan.offset, &plan.data, progress.unwrap_or(&mut quiet))
        .map_err(|e| FlashError::Write {
            port: port.name.clone(),
            bytes: plan.data.len(),
            offset: plan.offset,
            detail: e.to_string(),
        })
}
