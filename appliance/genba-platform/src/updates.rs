//! Firmware updates as the appliance asks for them: the `update` command for a kept image
//! (`genba_store::firmware`), built once here for `genba devices update`, the console's update
//! button and the `/v2` API, and checked with the firmware core's own parser, so the appliance
//! never sends a command a device would refuse.

use genba_store::firmware::{FirmwareImage, UpdateRequest};

/// Why an image cannot be offered to devices.
#[derive(Debug, thiserror::Error)]
#[error("firmware image {version} ({sha256}): a device would refuse its update command: {reason}")]
pub struct RefusedUpdate {
    pub version: String,
    pub sha256: String,
    pub reason: genba_firmware_core::command::Error,
}

/// The payload of the `update` command for `image` (published on `devices/ID/commands`):
/// `{"cmd":"update","version":…,"sha256":…,"size":…}`.
pub fn update_command(image: &FirmwareImage) -> Result<String, RefusedUpdate> {
    let payload = serde_json::json!({
        "cmd": "update",
        "version": image.version,
        "sha256": image.sha256,
        "size": image.size,
    })
    .to_string();
    match genba_firmware_core::command::Command::parse(payload.as_bytes()) {
        Ok(_) => Ok(payload),
        Err(reason) => Err(RefusedUpdate {
            version: image.version.clone(),
            sha256: image.sha256.clone(),
            reason,
        }),
    }
}

/// What to record (`genba_store::firmware::record_request`) once the command for `image` is
/// queued for `device_id` by `by` (`cli`, `console:USER`).
pub fn request(image: &FirmwareImage, device_id: &str, by: &str) -> UpdateRequest {
    UpdateRequest {
        device_id: device_id.to_owned(),
        version: image.version.clone(),
        sha256: image.sha256.clone(),
        requested_at_ms: chrono::Utc::now().timestamp_millis(),
        requested_by: by.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genba_firmware_core::command::Command;

    fn image(version: &str, size: i64) -> FirmwareImage {
        FirmwareImage {
            sha256: "ab".repeat(32),
            version: version.into(),
            project: "genba-fw-esp32c3".into(),
            size,
            added_at_ms: 0,
            board_size: None,
        }
    }

    #[test]
    fn the_update_command_is_what_the_firmware_core_reads_as_an_update() {
        let payload = update_command(&image("1.2.0", 676_960)).unwrap();
        match Command::parse(payload.as_bytes()).unwrap() {
            Command::Update {
                version,
                sha256,
                size,
            } => {
                assert_eq!(version.as_str(), "1.2.0");
                assert_eq!(size, 676_960);
                assert_eq!(
                    genba_firmware_core::discovery::hex(&sha256).as_str(),
                    "ab".repeat(32)
                );
            }
            other => panic!("not an update: {other:?}"),
        }
    }

    #[test]
    fn the_store_and_the_firmware_core_name_the_same_download_path() {
        let sha = [0x3fu8; 32];
        let hex = genba_firmware_core::discovery::hex(&sha);
        assert_eq!(
            genba_store::firmware::download_path(&hex),
            genba_firmware_core::image::download_path(&sha).as_str()
        );
    }

    #[test]
    fn an_image_larger_than_an_ota_slot_is_not_offered() {
        let too_big = genba_firmware_core::image::SLOT_LEN as i64 + 1;
        let e = update_command(&image("1.2.0", too_big)).unwrap_err();
        assert!(e.to_string().contains("1.2.0"), "{e}");
    }
}
