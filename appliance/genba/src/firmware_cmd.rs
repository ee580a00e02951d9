//! `genba firmware`: the firmware images the appliance keeps for device updates. `add` checks
//! an image with the firmware core (an ESP32-C3 app image that matches the SHA-256 it carries,
//! small enough for an OTA slot), stores the file as `DATA_DIR/firmware/SHA256.bin` (written
//! atomically, then the row) and devices fetch it from `GET /firmware/SHA256.bin`. A board
//! image (the whole flash) is checked with the core's `board` module: its app is kept as above,
//! and the whole file as `SHA256-board.bin` for new boards.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use genba_firmware_core::{board, image};
use genba_store::firmware::{self, FirmwareImage};
use sha2::{Digest, Sha256};

use crate::firstboot::{dir_owner, write_file};
use crate::lifecycle::load_config;
use crate::platform_cmd::{print_json, when};
use crate::Common;

#[derive(Subcommand)]
pub enum FirmwareCommand {
    /// Keep a firmware image for device updates: the app .bin that scripts/build-firmware
    /// writes (firmware/esp32c3/target/images/genba-fw-esp32c3.bin), not the ELF; or the
    /// whole-flash board image of `scripts/build-firmware --full`
    /// (genba-fw-esp32c3-full-4MB.bin), whose app is kept for updates and the whole file for
    /// new boards. Its version is read from the image.
    Add {
        #[command(flatten)]
        common: Common,
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The images kept, newest first.
    List {
        #[command(flatten)]
        common: Common,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Forget an image, by its SHA-256 or its version (the newest with it).
    Remove {
        #[command(flatten)]
        common: Common,
        image: String,
    },
}

pub fn run(cmd: FirmwareCommand) -> Result<()> {
    match cmd {
        FirmwareCommand::Add { common, file, json } => {
            let config = load_config(&common)?;
            let data_dir = config.data_dir();
            let size = std::fs::metadata(&file)
                .with_context(|| format!("{}", file.display()))?
                .len();
            if size > board::FLASH_LEN as u64 {
                anyhow::bail!(
                    "{}: {size} bytes, larger than a device's flash ({} bytes)",
                    file.display(),
                    board::FLASH_LEN
                );
            }
            let bytes = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
            let (app, board_image) = if board::is_board_image(&bytes) {
                let (app, _) = board::app_in_board(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: board image: {e}", file.display()))?;
                (app, Some(&bytes[..]))
            } else if bytes.len() > image::SLOT_LEN {
                anyhow::bail!(
                    "{}: {size} bytes, larger than a device's OTA slot ({} bytes), and not a \
                     board image (no partition table at {:#x})",
                    file.display(),
                    image::SLOT_LEN,
                    board::TABLE_AT
                );
            } else {
                (&bytes[..], None)
            };
            let info =
                image::check_image(app).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            // devices report the version they run as `fw`: it must be one they can send
            genba_firmware_core::telemetry::validate_firmware(&info.version).map_err(|e| {
                anyhow::anyhow!(
                    "{}: version {:?}: {e} (devices report at most {} characters from A-Z a-z 0-9 - _ . +)",
                    file.display(),
                    info.version.as_str(),
                    genba_firmware_core::telemetry::FW_MAX
                )
            })?;
            let sha256 =
                genba_firmware_core::discovery::hex(&Sha256::digest(app).into()).to_string();
            let kept = FirmwareImage {
                sha256: sha256.clone(),
                version: info.version.to_string(),
                project: info.project.to_string(),
                size: app.len() as i64,
                added_at_ms: chrono::Utc::now().timestamp_millis(),
                board_size: board_image.map(|b| b.len() as i64),
            };
            let dir = firmware::dir(&data_dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            // the files first, then the row: a row always has its files
            let owner = dir_owner(&dir)?;
            write_file(&firmware::file(&data_dir, &sha256), app, 0o644, owner)?;
            if let Some(b) = board_image {
                write_file(
                    &dir.join(firmware::board_file_name(&sha256)),
                    b,
                    0o644,
                    owner,
                )?;
            }
            let db = genba_store::Db::new(&genba_store::db_path(&data_dir));
            let new = db.run_blocking(|c| firmware::add(c, &kept))?;
            if json {
                return print_json(&serde_json::json!({"image": kept, "new": new}));
            }
            println!(
                "firmware {} ({}, {} bytes) {}; devices fetch it from /firmware/{sha256}.bin",
                kept.version,
                kept.project,
                kept.size,
                if new { "kept" } else { "was kept already" },
            );
            if board_image.is_some() {
                println!(
                    "its board image (bootloader, partition table and app) for new boards: {}",
                    firmware::board_download_path(&sha256)
                );
            }
        }
        FirmwareCommand::List { common, json } => {
            let config = load_config(&common)?;
            let db = genba_store::Db::new(&genba_store::db_path(&config.data_dir()));
            let list = db.run_blocking(firmware::list)?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no firmware images yet (`genba firmware add FILE`)");
            }
            for i in &list {
                println!(
                    "{:<16} {:>9} bytes  added {}  {}  {}",
                    i.version,
                    i.size,
                    when(Some(i.added_at_ms)),
                    i.project,
                    i.sha256
                );
            }
        }
        FirmwareCommand::Remove { common, image } => {
            let config = load_config(&common)?;
            let data_dir = config.data_dir();
            let db = genba_store::Db::new(&genba_store::db_path(&data_dir));
            let found = db
                .run_blocking(|c| firmware::find(c, &image))?
                .with_context(|| {
                    format!("no firmware image {image:?} (see `genba firmware list`)")
                })?;
            db.run_blocking(|c| firmware::remove(c, &found.sha256))?;
            let dir = firmware::dir(&data_dir);
            for name in [
                firmware::file_name(&found.sha256),
                firmware::board_file_name(&found.sha256),
            ] {
                let path = dir.join(name);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("removing {}", path.display()))
                    }
                    _ => {}
                }
            }
            println!("firmware {} ({}) removed", found.version, found.sha256);
        }
    }
    Ok(())
}
