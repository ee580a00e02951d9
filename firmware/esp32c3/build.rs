//! Reads the provisioning file and generates `$OUT_DIR/provisioning.rs` (constants plus the
//! pin-selection macros), after checking every value with the firmware core's own rules.
//!
//! File: `$GENBA_FW_CFG` if set, else `cfg.toml`, else `cfg.toml.example` (with a warning).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

use genba_firmware_core::command::{MAX_INTERVAL_S, MIN_INTERVAL_S};
use genba_firmware_core::offsets::Offsets;
use genba_firmware_core::{http, telemetry};

/// GPIOs that are free on ESP32-C3 modules: 11-17 are the SPI flash, 18/19 the USB serial/JTAG.
const FREE_GPIOS: &[i64] = &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 21];

fn main() {
    linker_args();
    if let Err(e) = generate() {
        eprintln!("error: provisioning: {e}");
        std::process::exit(1);
    }
}

fn linker_args() {
    // esp-hal's linker script; it must come last
    println!("cargo:rustc-link-arg=-Tlinkall.x");
}

fn config_path(dir: &Path) -> (PathBuf, bool) {
    println!("cargo:rerun-if-env-changed=GENBA_FW_CFG");
    println!("cargo:rerun-if-changed=cfg.toml");
    println!("cargo:rerun-if-changed=cfg.toml.example");
    if let Some(p) = env::var_os("GENBA_FW_CFG") {
        let p = PathBuf::from(p);
        println!("cargo:rerun-if-changed={}", p.display());
        return (p, false);
    }
    let real = dir.join("cfg.toml");
    if real.exists() {
        (real, false)
    } else {
        (dir.join("cfg.toml.example"), true)
    }
}

struct Cfg {
    table: toml::Table,
}

impl Cfg {
    fn get(&self, section: &str, key: &str) -> Result<&toml::Value, String> {
        self.table
            .get(section)
            .and_then(|s| s.get(key))
            .ok_or_else(|| format!("missing [{section}] {key}"))
    }
    fn str(&self, section: &str, key: &str) -> Result<String, String> {
        self.get(section, key)?
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("[{section}] {key} must be a string"))
    }
    fn int(
        &self,
        section: &str,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, String> {
        let v = self
            .get(section, key)?
            .as_integer()
            .ok_or_else(|| format!("[{section}] {key} must be an integer"))?;
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(format!("[{section}] {key} = {v} is outside {range:?}"))
        }
    }
    fn bool(&self, section: &str, key: &str) -> Result<bool, String> {
        self.get(section, key)?
            .as_bool()
            .ok_or_else(|| format!("[{section}] {key} must be true or false"))
    }
}

fn generate() -> Result<(), String> {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let (path, is_example) = config_path(&dir);
    if is_example {
        println!(
            "cargo:warning=no cfg.toml: building with cfg.toml.example (placeholder Wi-Fi and broker settings, for CI only)"
        );
    }
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let c = Cfg { table };

    let device_id = c.str("device", "id")?;
    telemetry::validate_device_id(&device_id).map_err(|e| format!("[device] id: {e}"))?;
    let interval = c.int(
        "device",
        "report_interval_s",
        i64::from(MIN_INTERVAL_S)..=i64::from(MAX_INTERVAL_S),
    )?;
    let offsets = c.str("device", "offsets")?;
    Offsets::<{ telemetry::MAX_READINGS }>::parse_list(&offsets)
        .map_err(|e| format!("[device] offsets: {e}"))?;
    let backlog = c.int("device", "backlog", 4..=64)?;

    let pin = |key: &str| -> Result<i64, String> {
        let n = c.int("pins", key, 0..=21)?;
        if FREE_GPIOS.contains(&n) {
            Ok(n)
        } else {
            Err(format!(
                "[pins] {key} = {n}: use one of GPIO {FREE_GPIOS:?}"
            ))
        }
    };
    let onewire = pin("onewire_gpio")?;
    let led = pin("led_gpio")?;
    if onewire == led {
        return Err("[pins] onewire_gpio and led_gpio must differ".into());
    }
    let led_active_low = c.bool("pins", "led_active_low")?;

    let ssid = c.str("wifi", "ssid")?;
    let wifi_pw = c.str("wifi", "password")?;
    if ssid.is_empty() || ssid.len() > 32 {
        return Err("[wifi] ssid must be 1..=32 bytes".into());
    }
    if !(wifi_pw.is_empty() || (8..=63).contains(&wifi_pw.len())) {
        return Err(
            "[wifi] password must be 8..=63 characters, or empty for an open network".into(),
        );
    }
    let ntp = c.str("time", "ntp_server")?;
    check_host(&ntp).map_err(|e| format!("[time] ntp_server: {e}"))?;

    let kind = c.str("transport", "kind")?;
    let (mqtt_host, mqtt_port, mqtt_user, mqtt_pw, http_url, api_key);
    match kind.as_str() {
        "mqtt" => {
            mqtt_host = c.str("mqtt", "host")?;
            check_host(&mqtt_host).map_err(|e| format!("[mqtt] host: {e}"))?;
            mqtt_port = c.int("mqtt", "port", 1..=65535)?;
            mqtt_user = c.str("mqtt", "username")?;
            mqtt_pw = c.str("mqtt", "password")?;
            if mqtt_user.is_empty() || mqtt_user.len() > 64 || mqtt_pw.len() > 128 {
                return Err(
                    "[mqtt] username (1..=64) and password (..=128) are required by the appliance"
                        .into(),
                );
            }
            (http_url, api_key) = (String::new(), String::new());
        }
        "http" => {
            http_url = c.str("http", "url")?;
            let url = http::parse_url(&http_url).map_err(|e| format!("[http] url: {e}"))?;
            if url.tls {
                return Err("[http] url: https is not supported by this firmware yet (see firmware/README.md)".into());
            }
            api_key = c.str("http", "api_key")?;
            if api_key.is_empty()
                || api_key.len() > 128
                || api_key.chars().any(|ch| ch.is_ascii_control())
            {
                return Err("[http] api_key must be 1..=128 printable characters".into());
            }
            (mqtt_host, mqtt_port, mqtt_user, mqtt_pw) =
                (String::new(), 0, String::new(), String::new());
        }
        other => {
            return Err(format!(
                "[transport] kind = {other:?}: use \"mqtt\" or \"http\""
            ));
        }
    }

    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "// generated by build.rs from {} - do not edit",
        path.display()
    );
    let _ = writeln!(w, "pub const FROM_EXAMPLE: bool = {is_example};");
    let _ = writeln!(w, "pub const DEVICE_ID: &str = {device_id:?};");
    let _ = writeln!(w, "pub const REPORT_INTERVAL_S: u32 = {interval};");
    let _ = writeln!(w, "pub const OFFSETS: &str = {offsets:?};");
    let _ = writeln!(w, "pub const BACKLOG_LEN: usize = {backlog};");
    let _ = writeln!(w, "pub const LED_ACTIVE_LOW: bool = {led_active_low};");
    let _ = writeln!(w, "pub const WIFI_SSID: &str = {ssid:?};");
    let _ = writeln!(w, "pub const WIFI_PASSWORD: &str = {wifi_pw:?};");
    let _ = writeln!(w, "pub const NTP_SERVER: &str = {ntp:?};");
    let _ = writeln!(w, "pub const TRANSPORT_HTTP: bool = {};", kind == "http");
    let _ = writeln!(w, "pub const MQTT_HOST: &str = {mqtt_host:?};");
    let _ = writeln!(w, "pub const MQTT_PORT: u16 = {mqtt_port};");
    let _ = writeln!(w, "pub const MQTT_USERNAME: &str = {mqtt_user:?};");
    let _ = writeln!(w, "pub const MQTT_PASSWORD: &str = {mqtt_pw:?};");
    let _ = writeln!(w, "pub const HTTP_URL: &str = {http_url:?};");
    let _ = writeln!(w, "pub const HTTP_API_KEY: &str = {api_key:?};");
    let _ = writeln!(w, "/// The 1-Wire data pin, GPIO{onewire}.");
    let _ = writeln!(
        w,
        "macro_rules! onewire_pin {{ ($p:ident) => {{ $p.GPIO{onewire} }}; }}"
    );
    let _ = writeln!(w, "/// The status LED pin, GPIO{led}.");
    let _ = writeln!(
        w,
        "macro_rules! led_pin {{ ($p:ident) => {{ $p.GPIO{led} }}; }}"
    );

    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    fs::write(out_dir.join("provisioning.rs"), out).map_err(|e| e.to_string())
}

/// An IPv4 literal or a DNS name.
fn check_host(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !host.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(format!("{host:?} is not an IPv4 address or DNS name"))
    }
}
