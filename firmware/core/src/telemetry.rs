//! The telemetry payload (requirement H1) and the device MQTT topics.
//!
//! ```json
//! {"device_id":"kitchen-fridge-1","recorded_at":"2026-02-15T12:00:00Z","ts_device":1771156800000,
//!  "rssi":-61,"fw":"0.1.0","readings":[{"sensor_hw_id":"28FF4C3A91160457","raw_celsius":3.5,"offset_c":-0.25,"celsius":3.25}]}
//! ```
//!
//! `fw` is the firmware version the device runs (left out when empty); the appliance keeps
//! the last one per device, so it shows which devices run which version.
//!
//! The same body is published on `devices/{device_id}/telemetry` and POSTed to
//! `/api/telemetry` (with `X-API-Key`).
//!
//! Time: `ts_device` is Unix epoch milliseconds once the device clock is synchronised and
//! `recorded_at` is then the same instant in RFC 3339 UTC. **Before the first sync
//! `recorded_at` is the empty string** ([`UNSYNCED`]) and `ts_device` is milliseconds since
//! boot; see [`crate::clock`]. The firmware rewrites unsynced batches still in its backlog
//! once the clock syncs ([`Telemetry::resolve_time`]).
//!
//! Limits (checked by [`Telemetry::validate`], on both serialize and parse): `device_id`
//! 1..=32 characters from `A-Z a-z 0-9 - _ .` (it is a topic level); `sensor_hw_id` 0..=16
//! characters from the same set; `fw` 0..=[`FW_MAX`] characters from that set and `+`;
//! 1..=[`MAX_READINGS`] readings; temperatures within the
//! DS18B20 range, offsets within ±[`crate::offsets::MAX_OFFSET_C`], and
//! `celsius == raw_celsius + offset_c` (to 0.001 °C).

use core::fmt;

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use crate::ds18b20;
use crate::offsets::MAX_OFFSET_C;

/// Longest `device_id`.
pub const DEVICE_ID_MAX: usize = 32;
/// Longest `sensor_hw_id` (a DS18B20 ROM code in hex is exactly 16).
pub const SENSOR_ID_MAX: usize = 16;
/// Longest `recorded_at` string accepted.
pub const RECORDED_AT_MAX: usize = 32;
/// Longest firmware version (`fw`), e.g. `1.12.3-rc.1+c3`.
pub const FW_MAX: usize = 16;
/// Most readings in one batch.
pub const MAX_READINGS: usize = 16;
/// A buffer of this size always holds a valid [`Telemetry`] as JSON.
pub const JSON_MAX_LEN: usize = 200 + MAX_READINGS * 112;
/// `recorded_at` value meaning "device clock not synchronised yet".
pub const UNSYNCED: &str = "";
/// Longest topic produced by [`telemetry_topic`] / [`commands_topic`].
pub const TOPIC_MAX: usize = 64;

/// A device id (1..=32 characters, `A-Z a-z 0-9 - _ .`).
pub type DeviceId = String<DEVICE_ID_MAX>;
/// A sensor hardware id (0..=16 characters, `A-Z a-z 0-9 - _ .`).
pub type SensorId = String<SENSOR_ID_MAX>;
/// An MQTT topic for one device.
pub type Topic = String<TOPIC_MAX>;

/// One sensor's reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The sensor's hardware id, e.g. the DS18B20 ROM code in hex.
    pub sensor_hw_id: SensorId,
    /// What the sensor measured, °C.
    pub raw_celsius: f32,
    /// Calibration offset applied, °C.
    #[serde(default)]
    pub offset_c: f32,
    /// `raw_celsius + offset_c`, °C.
    pub celsius: f32,
}

impl Reading {
    /// Builds a reading from a measured value and the sensor's offset;
    /// `celsius` is `raw + offset` rounded to 0.0001 °C.
    pub fn new(sensor_hw_id: &str, raw_celsius: f32, offset_c: f32) -> Result<Self, Error> {
        let r = Reading {
            sensor_hw_id: bounded(sensor_hw_id, Field::SensorHwId)?,
            raw_celsius,
            offset_c,
            celsius: crate::round4(raw_celsius + offset_c),
        };
        r.validate()?;
        Ok(r)
    }

    /// Checks the limits of one reading.
    pub fn validate(&self) -> Result<(), Error> {
        check_id(&self.sensor_hw_id, Field::SensorHwId, false)?;
        if ds18b20::check_celsius(self.raw_celsius).is_err() {
            return Err(Error::Invalid(Field::RawCelsius));
        }
        if !self.offset_c.is_finite() || self.offset_c.abs() > MAX_OFFSET_C {
            return Err(Error::Invalid(Field::OffsetC));
        }
        if !self.celsius.is_finite()
            || (self.raw_celsius + self.offset_c - self.celsius).abs() > 0.001
        {
            return Err(Error::Invalid(Field::Celsius));
        }
        Ok(())
    }
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// One telemetry batch: every sensor of one device read at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// The device id (also its MQTT client id and topic level).
    pub device_id: DeviceId,
    /// RFC 3339 UTC time of the reading, or [`UNSYNCED`] before the clock is set.
    #[serde(default)]
    pub recorded_at: String<RECORDED_AT_MAX>,
    /// Epoch milliseconds when synced, milliseconds since boot when not.
    pub ts_device: u64,
    /// Wi-Fi signal strength in dBm (0 when unknown).
    #[serde(default)]
    pub rssi: i16,
    /// The firmware version the device runs; empty (and left out of the JSON) when unknown.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub fw: String<FW_MAX>,
    /// TLS servers the device refused since its previous batch (their certificate chain did not
    /// hold its pin: another appliance, or someone in between); left out of the JSON when 0.
    /// The appliance keeps it as the device's `tls_refused` stream.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tls_refused: u16,
    /// The readings, at least one.
    pub readings: Vec<Reading, MAX_READINGS>,
}

impl Telemetry {
    /// An empty batch (add readings with [`Telemetry::push`]).
    pub fn new(
        device_id: &str,
        recorded_at: &str,
        ts_device: u64,
        rssi: i16,
    ) -> Result<Self, Error> {
        let t = Telemetry {
            device_id: bounded(device_id, Field::DeviceId)?,
            recorded_at: bounded(recorded_at, Field::RecordedAt)?,
            ts_device,
            rssi,
            fw: String::new(),
            tls_refused: 0,
            readings: Vec::new(),
        };
        check_id(&t.device_id, Field::DeviceId, true)?;
        check_recorded_at(&t.recorded_at)?;
        Ok(t)
    }

    /// Names the firmware version the device runs (`fw`).
    pub fn set_firmware(&mut self, version: &str) -> Result<(), Error> {
        validate_firmware(version)?;
        self.fw = bounded(version, Field::Firmware)?;
        Ok(())
    }

    /// Adds a reading; fails when the batch already holds [`MAX_READINGS`].
    pub fn push(&mut self, reading: Reading) -> Result<(), Error> {
        self.readings
            .push(reading)
            .map_err(|_| Error::TooManyReadings)
    }

    /// Whether `recorded_at` carries real time.
    pub fn is_time_synced(&self) -> bool {
        !self.recorded_at.is_empty()
    }

    /// Turns an unsynced batch (boot-relative `ts_device`) into a synced one, given the
    /// epoch time at boot. Synced batches are left alone. Returns whether it changed.
    pub fn resolve_time(&mut self, boot_epoch_ms: u64) -> bool {
        if self.is_time_synced() {
            return false;
        }
        self.ts_device = self.ts_device.saturating_add(boot_epoch_ms);
        self.recorded_at = crate::clock::rfc3339(self.ts_device);
        true
    }

    /// Checks every limit (see the module documentation).
    pub fn validate(&self) -> Result<(), Error> {
        check_id(&self.device_id, Field::DeviceId, true)?;
        check_recorded_at(&self.recorded_at)?;
        validate_firmware(&self.fw)?;
        if self.readings.is_empty() {
            return Err(Error::NoReadings);
        }
        for r in &self.readings {
            r.validate()?;
        }
        Ok(())
    }

    /// Validates and writes the JSON body into `buf`, returning its length.
    /// A buffer of [`JSON_MAX_LEN`] bytes is always large enough.
    pub fn to_json(&self, buf: &mut [u8]) -> Result<usize, Error> {
        self.validate()?;
        serde_json_core::to_slice(self, buf).map_err(|_| Error::BufferTooSmall)
    }

    /// Parses and validates a JSON body. Unknown fields are ignored; `recorded_at`,
    /// `rssi` and `offset_c` may be omitted. Trailing whitespace is allowed, trailing data is not.
    pub fn from_json(json: &[u8]) -> Result<Self, Error> {
        let (t, used): (Telemetry, usize) =
            serde_json_core::from_slice(json).map_err(Error::Json)?;
        if json[used..].iter().any(|b| !b.is_ascii_whitespace()) {
            return Err(Error::Json(serde_json_core::de::Error::TrailingCharacters));
        }
        t.validate()?;
        Ok(t)
    }
}

/// Which field an [`Error::Invalid`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `device_id`
    DeviceId,
    /// `recorded_at`
    RecordedAt,
    /// `readings[].sensor_hw_id`
    SensorHwId,
    /// `readings[].raw_celsius`
    RawCelsius,
    /// `readings[].offset_c`
    OffsetC,
    /// `readings[].celsius`
    Celsius,
    /// `fw`
    Firmware,
}

impl Field {
    /// The JSON field name.
    pub fn name(self) -> &'static str {
        match self {
            Field::DeviceId => "device_id",
            Field::RecordedAt => "recorded_at",
            Field::SensorHwId => "sensor_hw_id",
            Field::RawCelsius => "raw_celsius",
            Field::OffsetC => "offset_c",
            Field::Celsius => "celsius",
            Field::Firmware => "fw",
        }
    }
}

/// Why a telemetry batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not valid JSON for this shape (or a string longer than its limit).
    Json(serde_json_core::de::Error),
    /// A field is present but breaks its limits.
    Invalid(Field),
    /// A string field is longer than its limit.
    TooLong(Field),
    /// `readings` is empty.
    NoReadings,
    /// More than [`MAX_READINGS`] readings.
    TooManyReadings,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Json(e) => write!(f, "invalid telemetry JSON: {e}"),
            Error::Invalid(field) => write!(f, "invalid {}", field.name()),
            Error::TooLong(field) => write!(f, "{} is too long", field.name()),
            Error::NoReadings => f.write_str("readings must hold at least one reading"),
            Error::TooManyReadings => write!(f, "at most {MAX_READINGS} readings per batch"),
            Error::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

crate::impl_error!(Error);

fn bounded<const N: usize>(s: &str, field: Field) -> Result<String<N>, Error> {
    String::try_from(s).map_err(|_| Error::TooLong(field))
}

/// Whether `c` may appear in a device or sensor id.
fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn check_id(s: &str, field: Field, required: bool) -> Result<(), Error> {
    if (required && s.is_empty()) || !s.chars().all(id_char) {
        return Err(Error::Invalid(field));
    }
    Ok(())
}

/// Checks a firmware version (`fw`): 0..=[`FW_MAX`] characters from `A-Z a-z 0-9 - _ . +`.
pub fn validate_firmware(fw: &str) -> Result<(), Error> {
    if fw.len() > FW_MAX {
        return Err(Error::TooLong(Field::Firmware));
    }
    if fw.chars().all(|c| id_char(c) || c == '+') {
        Ok(())
    } else {
        Err(Error::Invalid(Field::Firmware))
    }
}

/// Checks a device id: 1..=32 characters from `A-Z a-z 0-9 - _ .`.
pub fn validate_device_id(id: &str) -> Result<(), Error> {
    if id.len() > DEVICE_ID_MAX {
        return Err(Error::TooLong(Field::DeviceId));
    }
    check_id(id, Field::DeviceId, true)
}

/// `recorded_at` is either [`UNSYNCED`] or a date-time `YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]`
/// (a space instead of `T` and a missing zone, the seed's local form, are accepted on input).
fn check_recorded_at(s: &str) -> Result<(), Error> {
    if s.is_empty() || crate::clock::is_date_time(s) {
        Ok(())
    } else {
        Err(Error::Invalid(Field::RecordedAt))
    }
}

fn topic(device_id: &str, kind: &str) -> Result<Topic, Error> {
    validate_device_id(device_id)?;
    let mut t = Topic::new();
    for part in ["devices/", device_id, "/", kind] {
        t.push_str(part)
            .map_err(|_| Error::TooLong(Field::DeviceId))?;
    }
    Ok(t)
}

/// `devices/{device_id}/telemetry`
pub fn telemetry_topic(device_id: &str) -> Result<Topic, Error> {
    topic(device_id, "telemetry")
}

/// `devices/{device_id}/commands`
pub fn commands_topic(device_id: &str) -> Result<Topic, Error> {
    topic(device_id, "commands")
}

/// Kinds of device topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// `devices/{id}/telemetry`
    Telemetry,
    /// `devices/{id}/commands`
    Commands,
}

/// Splits `devices/{id}/telemetry|commands` into the device id and the kind;
/// `None` for any other topic or an invalid id.
pub fn parse_device_topic(topic: &str) -> Option<(&str, TopicKind)> {
    let rest = topic.strip_prefix("devices/")?;
    let (id, kind) = rest.split_once('/')?;
    validate_device_id(id).ok()?;
    let kind = match kind {
        "telemetry" => TopicKind::Telemetry,
        "commands" => TopicKind::Commands,
        _ => return None,
    };
    Some((id, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Telemetry {
        let mut t = Telemetry::new(
            "kitchen-fridge-1",
            "2026-02-15T12:00:00Z",
            1_771_156_800_000,
            -61,
        )
        .unwrap();
        t.push(Reading::new("28FF4C3A91160457", 3.5, -0.25).unwrap())
            .unwrap();
        t.push(Reading::new("28AA000000000001", -18.0625, 0.0).unwrap())
            .unwrap();
        t
    }

    #[test]
    fn serializes_the_h1_shape() {
        let mut buf = [0u8; JSON_MAX_LEN];
        let n = sample().to_json(&mut buf).unwrap();
        let json = core::str::from_utf8(&buf[..n]).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"device_id":"kitchen-fridge-1","recorded_at":"2026-02-15T12:00:00Z","ts_device":1771156800000,"rssi":-61,"#,
                r#""readings":[{"sensor_hw_id":"28FF4C3A91160457","raw_celsius":3.5,"offset_c":-0.25,"celsius":3.25},"#,
                r#"{"sensor_hw_id":"28AA000000000001","raw_celsius":-18.0625,"offset_c":0.0,"celsius":-18.0625}]}"#
            )
        );
    }

    #[test]
    fn round_trips_through_json() {
        let t = sample();
        let mut buf = [0u8; JSON_MAX_LEN];
        let n = t.to_json(&mut buf).unwrap();
        assert_eq!(Telemetry::from_json(&buf[..n]), Ok(t));
    }

    #[test]
    fn interoperates_with_serde_json() {
        // the appliance side may read and write the same bytes with serde_json (std)
        let t = sample();
        let mut buf = [0u8; JSON_MAX_LEN];
        let n = t.to_json(&mut buf).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(v["device_id"], "kitchen-fridge-1");
        assert_eq!(v["ts_device"].as_u64(), Some(1_771_156_800_000));
        assert_eq!(v["rssi"].as_i64(), Some(-61));
        assert_eq!(v["readings"][0]["celsius"].as_f64(), Some(3.25));
        assert_eq!(v["readings"][1]["raw_celsius"].as_f64(), Some(-18.0625));
        // pretty-printed by serde_json, parsed back by the core
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        assert_eq!(Telemetry::from_json(&pretty), Ok(t));
    }

    #[test]
    fn max_batch_fits_json_max_len() {
        let mut t = Telemetry::new(
            &"d".repeat(32),
            "2026-12-31T23:59:59.999+09:00",
            u64::MAX,
            -128,
        )
        .unwrap();
        t.set_firmware(&"9".repeat(FW_MAX)).unwrap();
        t.tls_refused = u16::MAX;
        for i in 0..MAX_READINGS {
            let id = format!("{:016X}", u64::MAX - i as u64);
            t.push(Reading::new(&id, -54.9375, -9.9999).unwrap())
                .unwrap();
        }
        assert_eq!(
            t.push(Reading::new("x", 1.0, 0.0).unwrap()),
            Err(Error::TooManyReadings)
        );
        let mut buf = [0u8; JSON_MAX_LEN];
        let n = t.to_json(&mut buf).expect("fits");
        assert_eq!(Telemetry::from_json(&buf[..n]).unwrap(), t);
        let mut small = [0u8; 64];
        assert_eq!(t.to_json(&mut small), Err(Error::BufferTooSmall));
    }

    #[test]
    fn refused_tls_servers_are_counted_in_the_batch_and_left_out_when_none() {
        let mut t = sample();
        let mut buf = [0u8; JSON_MAX_LEN];
        let n = t.to_json(&mut buf).unwrap();
        assert!(!core::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("tls_refused"));
        t.tls_refused = 3;
        let n = t.to_json(&mut buf).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(v["tls_refused"].as_u64(), Some(3));
        assert_eq!(Telemetry::from_json(&buf[..n]), Ok(t));
    }

    #[test]
    fn parses_seed_style_bodies() {
        // seed form: local time with a space, rssi omitted, offset_c omitted, unknown field
        let body = br#"{"device_id":"esp32-01","recorded_at":"2026-02-15 12:00:00","ts_device":1771156800000,
            "fw":"1.2","readings":[{"sensor_hw_id":"","raw_celsius":23.5,"celsius":23.5}]}"#;
        let t = Telemetry::from_json(body).unwrap();
        assert_eq!(t.device_id.as_str(), "esp32-01");
        assert_eq!(t.rssi, 0);
        assert_eq!(t.readings[0].offset_c, 0.0);
        assert_eq!(t.readings[0].sensor_hw_id.as_str(), "");
        assert_eq!(t.fw.as_str(), "1.2");
        assert!(t.is_time_synced());
    }

    #[test]
    fn the_firmware_version_is_sent_when_set_and_checked() {
        let mut t = sample();
        t.set_firmware("0.1.0-rc.1+c3").unwrap();
        let mut buf = [0u8; JSON_MAX_LEN];
        let n = t.to_json(&mut buf).unwrap();
        let json = core::str::from_utf8(&buf[..n]).unwrap();
        assert!(
            json.contains(r#""rssi":-61,"fw":"0.1.0-rc.1+c3","readings""#),
            "{json}"
        );
        assert_eq!(Telemetry::from_json(&buf[..n]), Ok(t.clone()));
        assert_eq!(
            t.set_firmware(&"1".repeat(FW_MAX + 1)),
            Err(Error::TooLong(Field::Firmware))
        );
        assert_eq!(
            t.set_firmware("1.0 beta"),
            Err(Error::Invalid(Field::Firmware))
        );
        assert_eq!(
            t.fw.as_str(),
            "0.1.0-rc.1+c3",
            "a refused version changes nothing"
        );
        let quoted = json.replace("0.1.0-rc.1+c3", "1.0\\\"x");
        assert_eq!(
            Telemetry::from_json(quoted.as_bytes()),
            Err(Error::Invalid(Field::Firmware))
        );
    }

    #[test]
    fn limits_are_enforced() {
        let ok = |s: &str| Telemetry::from_json(s.as_bytes());
        let r = r#"{"sensor_hw_id":"28FF","raw_celsius":4.0,"offset_c":0.5,"celsius":4.5}"#;
        let body = |dev: &str, readings: &str| {
            format!(
                r#"{{"device_id":"{dev}","recorded_at":"","ts_device":5,"rssi":-40,"readings":[{readings}]}}"#
            )
        };
        assert!(ok(&body("dev-1", r)).is_ok());
        // device_id: 33 chars, empty, wildcard, slash
        assert!(matches!(ok(&body(&"a".repeat(33), r)), Err(Error::Json(_))));
        assert_eq!(
            ok(&body(&"a".repeat(32), r)).map(|t| t.device_id.len()),
            Ok(32)
        );
        assert_eq!(ok(&body("", r)), Err(Error::Invalid(Field::DeviceId)));
        assert_eq!(ok(&body("a/b", r)), Err(Error::Invalid(Field::DeviceId)));
        assert_eq!(ok(&body("a+", r)), Err(Error::Invalid(Field::DeviceId)));
        // no readings
        assert_eq!(ok(&body("dev-1", "")), Err(Error::NoReadings));
        // sensor_hw_id of 17 characters
        let long = r#"{"sensor_hw_id":"28FF4C3A911604571","raw_celsius":4.0,"celsius":4.0}"#;
        assert!(matches!(ok(&body("dev-1", long)), Err(Error::Json(_))));
        // 85.0 power-on value, -127 sentinel, inconsistent celsius, huge offset
        let bad = |raw: &str, off: &str, c: &str| {
            body(
                "dev-1",
                &format!(
                    r#"{{"sensor_hw_id":"s1","raw_celsius":{raw},"offset_c":{off},"celsius":{c}}}"#
                ),
            )
        };
        assert_eq!(
            ok(&bad("85.0", "0", "85.0")),
            Err(Error::Invalid(Field::RawCelsius))
        );
        assert_eq!(
            ok(&bad("-127", "0", "-127")),
            Err(Error::Invalid(Field::RawCelsius))
        );
        assert_eq!(
            ok(&bad("4.0", "0.5", "4.0")),
            Err(Error::Invalid(Field::Celsius))
        );
        assert_eq!(
            ok(&bad("4.0", "50", "54.0")),
            Err(Error::Invalid(Field::OffsetC))
        );
        // recorded_at garbage, trailing data, not JSON
        let t = r#"{"device_id":"d","recorded_at":"yesterday","ts_device":1,"readings":[{"sensor_hw_id":"s","raw_celsius":1,"celsius":1}]}"#;
        assert_eq!(ok(t), Err(Error::Invalid(Field::RecordedAt)));
        assert!(matches!(ok(&(body("dev-1", r) + "x")), Err(Error::Json(_))));
        assert!(ok(&(body("dev-1", r) + "\n")).is_ok());
        assert!(matches!(ok("not json"), Err(Error::Json(_))));
        // 17 readings
        let many = vec![r; MAX_READINGS + 1].join(",");
        assert!(ok(&body("dev-1", &many)).is_err());
    }

    #[test]
    fn constructors_validate() {
        assert_eq!(
            Telemetry::new(&"a".repeat(33), "", 0, 0),
            Err(Error::TooLong(Field::DeviceId))
        );
        assert_eq!(
            Telemetry::new("a b", "", 0, 0),
            Err(Error::Invalid(Field::DeviceId))
        );
        assert_eq!(
            Reading::new("28FF4C3A911604571", 1.0, 0.0),
            Err(Error::TooLong(Field::SensorHwId))
        );
        assert_eq!(
            Reading::new("s", 85.0, 0.0),
            Err(Error::Invalid(Field::RawCelsius))
        );
        let r = Reading::new("s", 25.0625, -0.3).unwrap();
        assert_eq!(r.celsius, 24.7625);
        let empty = Telemetry::new("d", "", 0, 0).unwrap();
        let mut buf = [0u8; 256];
        assert_eq!(empty.to_json(&mut buf), Err(Error::NoReadings));
    }

    #[test]
    fn unsynced_batches_are_marked_and_resolved() {
        let mut t = Telemetry::new("d1", UNSYNCED, 12_345, 0).unwrap();
        t.push(Reading::new("s", 1.0, 0.0).unwrap()).unwrap();
        assert!(!t.is_time_synced());
        let mut buf = [0u8; 256];
        let n = t.to_json(&mut buf).unwrap();
        assert!(core::str::from_utf8(&buf[..n])
            .unwrap()
            .contains(r#""recorded_at":"","ts_device":12345"#));
        // boot happened at 2026-02-15T12:00:00Z
        assert!(t.resolve_time(1_771_156_800_000));
        assert_eq!(t.ts_device, 1_771_156_812_345);
        assert_eq!(t.recorded_at.as_str(), "2026-02-15T12:00:12.345Z");
        // a second resolve does nothing
        assert!(!t.resolve_time(1));
        assert_eq!(t.ts_device, 1_771_156_812_345);
    }

    #[test]
    fn topics() {
        assert_eq!(
            telemetry_topic("kitchen-1").unwrap().as_str(),
            "devices/kitchen-1/telemetry"
        );
        assert_eq!(
            commands_topic("kitchen-1").unwrap().as_str(),
            "devices/kitchen-1/commands"
        );
        assert!(commands_topic(&"x".repeat(32)).is_ok());
        assert_eq!(telemetry_topic("a/#"), Err(Error::Invalid(Field::DeviceId)));
        assert_eq!(telemetry_topic(""), Err(Error::Invalid(Field::DeviceId)));
        assert_eq!(
            telemetry_topic(&"x".repeat(33)),
            Err(Error::TooLong(Field::DeviceId))
        );
        assert_eq!(
            parse_device_topic("devices/k1/telemetry"),
            Some(("k1", TopicKind::Telemetry))
        );
        assert_eq!(
            parse_device_topic("devices/k1/commands"),
            Some(("k1", TopicKind::Commands))
        );
        assert_eq!(parse_device_topic("devices/k1/other"), None);
        assert_eq!(parse_device_topic("devices/a/b/telemetry"), None);
        assert_eq!(parse_device_topic("notify/slack"), None);
    }
}
