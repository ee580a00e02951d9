//! `genba devices provision --write PORT`: the appliance writes a thermometer plugged into its
//! own USB port, with espflash's library. No board can be plugged in here, so the port is a
//! pseudo-terminal with genba-testkit's `fake_esp_rom.py` behind it: a stand-in for the ESP32-C3's ROM loader
//! that follows Espressif's documented serial protocol and keeps the 4 MB flash it was sent.
//! What is checked is that flash, byte for byte: the board image with the config inside, whose
//! key is the one registered; the config alone; and nothing registered when the write fails.

mod common;

use common::Appliance;
use genba_firmware_core::board::{self, FLASH_LEN};
use genba_firmware_core::config::{decode_area, Credential, AREA_LEN, PARTITION_OFFSET};
use genba_firmware_core::image;
use genba_testkit::fake_esp_rom::FakeBoard;

fn provision(a: &Appliance, id: &str, port: &str, extra: &[&str]) -> (bool, String) {
    let args: Vec<&str> = ["--write", port, "--no-reset"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    common::provision(a, id, "192.168.1.10", "http", &args)
}

fn registered(a: &Appliance, id: &str) -> bool {
    let conn = genba_store::open(&a.db_path()).unwrap();
    genba_store::devices::get(&conn, id).unwrap().is_some()
}

/// The config area on a flash, as the firmware reads it at boot.
fn config_on(flash: &[u8]) -> genba_firmware_core::config::DeviceConfig {
    let at = PARTITION_OFFSET as usize;
    decode_area(&flash[at..at + AREA_LEN])
        .expect("the firmware core decodes the config on the flash")
        .config
}

/// The device key inside a config is one the appliance accepts for that device.
fn key_accepted(a: &Appliance, id: &str, credential: &Credential) -> bool {
    let Credential::ApiKey(key) = credential else {
        panic!("an HTTP device holds an API key")
    };
    let conn = genba_store::open(&a.db_path()).unwrap();
    genba_telemetry::keys::authorize(&conn, key.as_str(), "telemetry:write")
        .is_ok_and(|k| k.device_id == id)
}

#[test]
fn a_board_on_this_machines_usb_gets_the_board_image_with_its_config_in_one_write() {
    let a = Appliance::start("", "");
    let dir = a.dir.path();
    let app = image::sample("1.5.0", "genba-fw-esp32c3");
    let board_image = board::sample(&app);
    std::fs::write(dir.join("full.bin"), &board_image).unwrap();
    let (ok, out) = a.genba(&["firmware", "add", dir.join("full.bin").to_str().unwrap()]);
    assert!(ok, "{out}");
    let fake = FakeBoard::start(dir, false);

    let (ok, out) = provision(&a, "fridge-usb", &fake.port, &["--json"]);
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["written"]["port"], fake.port.as_str());
    assert_eq!(answer["written"]["offset"], "0x0");
    assert_eq!(answer["written"]["bytes"], FLASH_LEN);
    assert_eq!(answer["written"]["firmware"], "1.5.0");
    // the secrets went to the board only: no config file was written
    assert_eq!(answer["file"], serde_json::Value::Null, "{out}");

    // The board holds the board image byte for byte, with the device's config at its partition.
    let flash = fake.flash();
    assert_eq!(flash.len(), FLASH_LEN);
    let (found, info) = board::app_in_board(&flash).unwrap();
    assert_eq!((found, info.version.as_str()), (&app[..], "1.5.0"));
    let at = PARTITION_OFFSET as usize;
    assert_eq!(&flash[..at], &board_image[..at]);
    assert_eq!(&flash[at + AREA_LEN..], &board_image[at + AREA_LEN..]);
    let config = config_on(&flash);
    assert_eq!(config.device_id.as_str(), "fridge-usb");
    assert!(registered(&a, "fridge-usb"));
    assert!(key_accepted(&a, "fridge-usb", &config.credential));

    // A board that runs Genba's firmware gets the config alone; the rest stays as it was.
    let (ok, out) = provision(&a, "fridge-usb-2", &fake.port, &["--config-only"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("written to {}: the config", fake.port)),
        "{out}"
    );
    let again = fake.flash();
    assert_eq!(&again[..at], &flash[..at]);
    assert_eq!(&again[at + AREA_LEN..], &flash[at + AREA_LEN..]);
    let config = config_on(&again);
    assert_eq!(config.device_id.as_str(), "fridge-usb-2");
    assert!(key_accepted(&a, "fridge-usb-2", &config.credential));
}

#[test]
fn nothing_is_registered_when_the_board_cannot_be_written() {
    let a = Appliance::start("", "");
    let dir = a.dir.path();

    // `auto` with no ESP32 on this machine's USB: refused, with what to do.
    let (ok, out) = provision(&a, "fridge-auto", "auto", &[]);
    assert!(
        !ok && out.contains("no ESP32 board on this machine's USB"),
        "{out}"
    );
    assert!(!registered(&a, "fridge-auto"));

    // No board image kept: refused before anything else, with what to do.
    let (ok, out) = provision(&a, "fridge-no-image", "/dev/null", &[]);
    assert!(!ok && out.contains("keeps no board image"), "{out}");
    assert!(!registered(&a, "fridge-no-image"));

    // A port with no loader behind it: the write fails and the device is not registered.
    let silent = FakeBoard::start(dir, true);
    let (ok, out) = provision(&a, "fridge-silent", &silent.port, &["--config-only"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("no ESP32-C3 loader answered on {}", silent.port)),
        "{out}"
    );
    assert!(!registered(&a, "fridge-silent"));
}
