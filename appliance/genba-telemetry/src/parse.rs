//! The telemetry body of `POST /api/telemetry` and `devices/{id}/telemetry`:
//! `{device_id, recorded_at, ts_device, rssi, readings: [{sensor_hw_id, raw_celsius, offset_c, celsius}]}`.
//! Types are checked here so an error names its field (`readings[2].celsius`); the limits are
//! the firmware core's ([`genba_firmware_core::telemetry`]).

use genba_firmware_core::telemetry::{self, Error as CoreError, Reading, Telemetry, MAX_READINGS};
use genba_store::NewReading;
use serde_json::{Map, Value};

/// A refused body: the field at fault and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A checked batch: the device and its readings, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub device_id: String,
    pub readings: Vec<NewReading>,
}

pub fn parse(body: &[u8]) -> Result<Batch, FieldError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| FieldError::new("body", format!("is not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| FieldError::new("body", "must be a JSON object"))?;
    let device_id = string(obj, "device_id", "device_id")?
        .ok_or_else(|| FieldError::new("device_id", "is required"))?;
    let recorded_at = string(obj, "recorded_at", "recorded_at")?.unwrap_or_default();
    let ts_device = match obj.get("ts_device") {
        Some(v) => v
            .as_u64()
            .filter(|&t| t <= i64::MAX as u64)
            .ok_or_else(|| {
                FieldError::new("ts_device", "must be a non-negative integer (epoch ms)")
            })?,
        None => return Err(FieldError::new("ts_device", "is required")),
    };
    let rssi = match obj.get("rssi") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .and_then(|r| i16::try_from(r).ok())
            .ok_or_else(|| FieldError::new("rssi", "must be an integer (dBm)"))?,
    };
    let items = match obj.get("readings") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(FieldError::new("readings", "must be an array")),
        None => return Err(FieldError::new("readings", "is required")),
    };
    if items.is_empty() {
        return Err(FieldError::new("readings", "no readings"));
    }
    if items.len() > MAX_READINGS {
        return Err(FieldError::new(
            "readings",
            format!("at most {MAX_READINGS} readings per request"),
        ));
    }
    // The core checks ids, lengths and the time format.
    Telemetry::new(&device_id, &recorded_at, ts_device, rssi).map_err(|e| core_error(e, ""))?;

    let mut readings = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("readings[{i}]");
        let r = item
            .as_object()
            .ok_or_else(|| FieldError::new(at.clone(), "must be an object"))?;
        let sensor = string(r, "sensor_hw_id", &format!("{at}.sensor_hw_id"))?.unwrap_or_default();
        let raw = number(r, "raw_celsius", &at)?
            .ok_or_else(|| FieldError::new(format!("{at}.raw_celsius"), "is required"))?;
        let offset = number(r, "offset_c", &at)?.unwrap_or(0.0);
        let celsius = number(r, "celsius", &at)?
            .ok_or_else(|| FieldError::new(format!("{at}.celsius"), "is required"))?;
        let reading = Reading {
            sensor_hw_id: sensor
                .as_str()
                .try_into()
                .map_err(|_| core_error(CoreError::TooLong(telemetry::Field::SensorHwId), &at))?,
            raw_celsius: raw as f32,
            offset_c: offset as f32,
            celsius: celsius as f32,
        };
        reading.validate().map_err(|e| core_error(e, &at))?;
        readings.push(NewReading {
            device_id: device_id.clone(),
            recorded_at: recorded_at.clone(),
            ts_device: ts_device as i64,
            sensor_hw_id: sensor,
            raw_celsius: raw,
            offset_c: offset,
            celsius,
            rssi: rssi as i64,
        });
    }
    Ok(Batch {
        device_id,
        readings,
    })
}

fn string(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<String>, FieldError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(FieldError::new(field, "must be a string")),
    }
}

fn number(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<f64>, FieldError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|n| n.is_finite())
            .map(Some)
            .ok_or_else(|| FieldError::new(format!("{at}.{key}"), "must be a number (°C)")),
    }
}

/// Names the field of a core error; `at` is `readings[i]` for per-reading fields.
fn core_error(e: CoreError, at: &str) -> FieldError {
    let field = |f: telemetry::Field| {
        if at.is_empty() {
            f.name().to_owned()
        } else {
            format!("{at}.{}", f.name())
        }
    };
    match e {
        CoreError::Invalid(f) => FieldError::new(field(f), describe(f)),
        CoreError::TooLong(f) => FieldError::new(field(f), "is too long"),
        CoreError::NoReadings => FieldError::new("readings", "no readings"),
        other => FieldError::new("body", other.to_string()),
    }
}

fn describe(f: telemetry::Field) -> &'static str {
    use telemetry::Field::*;
    match f {
        DeviceId => "must be 1-32 characters from A-Z a-z 0-9 - _ .",
        RecordedAt => "must be empty (clock not synced) or a date-time like 2026-02-15T12:00:00Z",
        SensorHwId => "must be up to 16 characters from A-Z a-z 0-9 - _ .",
        RawCelsius => "is outside the DS18B20 range or a sensor error value (85.0 power-on, -127 disconnected)",
        OffsetC => "is outside the allowed offset range",
        Celsius => "must equal raw_celsius + offset_c",
        Firmware => "must be up to 16 characters from A-Z a-z 0-9 - _ . +",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_STYLE: &str = r#"{"device_id":"esp32-kitchen-01","recorded_at":"2026-02-15 12:00:00",
        "ts_device":1771156800000,"rssi":-61,
        "readings":[{"sensor_hw_id":"28FF4C3A91160457","raw_celsius":3.5,"offset_c":-0.25,"celsius":3.25},
                    {"sensor_hw_id":"28FF4C3A91160458","raw_celsius":-18.0625,"offset_c":0,"celsius":-18.0625}]}"#;

    #[test]
    fn a_seed_style_body_parses_into_one_row_per_reading() {
        let b = parse(SEED_STYLE.as_bytes()).unwrap();
        assert_eq!(b.device_id, "esp32-kitchen-01");
        assert_eq!(b.readings.len(), 2);
        assert_eq!(b.readings[1].celsius, -18.0625);
        assert_eq!(b.readings[0].rssi, -61);
        assert_eq!(b.readings[0].ts_device, 1771156800000);
    }

    #[test]
    fn what_the_firmware_core_serializes_the_appliance_parses() {
        let mut t = Telemetry::new("dev-1", "2026-02-15T12:00:00Z", 1771156800000, -70).unwrap();
        t.push(Reading::new("28AA", 4.5, 0.5).unwrap()).unwrap();
        let mut buf = [0u8; 512];
        let n = t.to_json(&mut buf).unwrap();
        let b = parse(&buf[..n]).unwrap();
        assert_eq!(b.readings[0].celsius, 5.0);
        assert_eq!(b.readings[0].sensor_hw_id, "28AA");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"device_id":"d","ts_device":1,"readings":[]}"#,
                "readings",
            ),
            (r#"{"device_id":"d","ts_device":1}"#, "readings"),
            (
                r#"{"device_id":5,"ts_device":1,"readings":[]}"#,
                "device_id",
            ),
            (
                r#"{"ts_device":1,"readings":[{"raw_celsius":1,"celsius":1}]}"#,
                "device_id",
            ),
            (
                r#"{"device_id":"d","ts_device":"x","readings":[]}"#,
                "ts_device",
            ),
            (
                r#"{"device_id":"d","ts_device":-1,"readings":[]}"#,
                "ts_device",
            ),
            (
                r#"{"device_id":"d","ts_device":1,"rssi":"x","readings":[{"raw_celsius":1,"celsius":1}]}"#,
                "rssi",
            ),
            (
                r#"{"device_id":"d","ts_device":1,"readings":[{"raw_celsius":"1","celsius":1}]}"#,
                "readings[0].raw_celsius",
            ),
            (
                r#"{"device_id":"d","ts_device":1,"readings":[{"raw_celsius":1,"celsius":1},{"raw_celsius":85.0,"celsius":85.0}]}"#,
                "readings[1].raw_celsius",
            ),
            (
                r#"{"device_id":"d","ts_device":1,"readings":[{"raw_celsius":1,"offset_c":1,"celsius":1}]}"#,
                "readings[0].celsius",
            ),
            (
                r#"{"device_id":"d","ts_device":1,"readings":[{"sensor_hw_id":"12345678901234567","raw_celsius":1,"celsius":1}]}"#,
                "readings[0].sensor_hw_id",
            ),
            (
                r#"{"device_id":"a-device-id-that-is-longer-than-32","ts_device":1,"readings":[{"raw_celsius":1,"celsius":1}]}"#,
                "device_id",
            ),
            (
                r#"{"device_id":"d/x","ts_device":1,"readings":[{"raw_celsius":1,"celsius":1}]}"#,
                "device_id",
            ),
            (r#"[1]"#, "body"),
            ("{\"device_id\":\"\u{00ff}", "body"),
        ];
        for (body, field) in cases {
            let e = parse(body.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
            assert!(!e.message.is_empty());
        }
        assert_eq!(
            parse(b"{\"device_id\":\"\xff\"}").unwrap_err().field,
            "body",
            "invalid UTF-8"
        );
    }
}
