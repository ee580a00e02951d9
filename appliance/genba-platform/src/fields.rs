//! Any JSON object a device sends becomes named values (requirement P8): numbers, booleans
//! (1/0) and strings are streams; nested objects and arrays give paths (`env.temp`,
//! `probes.0`). A few top-level keys describe the message instead: its time (`ts`, `time`,
//! `timestamp`, `at`), the device (`device_id`) and its firmware (`fw`, `firmware`).

use genba_store::{Field, FieldValue};
use serde_json::{Map, Value};

/// Fields one message may carry; beyond, the message is refused (and parked).
pub const MAX_FIELDS: usize = 128;
/// Longest stream name (a field path).
pub const MAX_NAME: usize = 100;
/// Longest text value kept.
pub const MAX_TEXT: usize = 1024;
const MAX_DEPTH: usize = 6;

const TIME_KEYS: &[&str] = &["ts", "time", "timestamp", "at"];
const FIRMWARE_KEYS: &[&str] = &["fw", "firmware", "firmware_version"];

/// What one JSON object says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Flattened {
    pub fields: Vec<Field>,
    pub at_ms: Option<i64>,
    pub device_id: Option<String>,
    pub firmware: Option<String>,
    pub rssi: Option<i64>,
}

pub fn flatten(obj: &Map<String, Value>) -> Result<Flattened, String> {
    let mut out = Flattened::default();
    for (key, value) in obj {
        if TIME_KEYS.contains(&key.as_str()) {
            out.at_ms = Some(time_of(value).ok_or_else(|| {
                format!("{key}: must be epoch seconds or milliseconds, or an RFC 3339 time")
            })?);
            continue;
        }
        if key == "device_id" {
            out.device_id = Some(
                value
                    .as_str()
                    .ok_or("device_id: must be a string")?
                    .to_owned(),
            );
            continue;
        }
        if FIRMWARE_KEYS.contains(&key.as_str()) {
            if let Some(v) = value.as_str() {
                out.firmware = Some(v.chars().take(64).collect());
                continue;
            }
        }
        if key == "rssi" {
            out.rssi = value.as_i64();
        }
        walk(key, value, 0, &mut out.fields)?;
    }
    Ok(out)
}

fn walk(path: &str, value: &Value, depth: usize, out: &mut Vec<Field>) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path}: nested deeper than {MAX_DEPTH} levels"));
    }
    let scalar = match value {
        Value::Null => return Ok(()),
        Value::Bool(b) => FieldValue::Number(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() => FieldValue::Number(f),
            _ => return Err(format!("{path}: number out of range")),
        },
        Value::String(s) => FieldValue::Text(s.chars().take(MAX_TEXT).collect()),
        Value::Object(map) => {
            for (k, v) in map {
                walk(&format!("{path}.{k}"), v, depth + 1, out)?;
            }
            return Ok(());
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(&format!("{path}.{i}"), v, depth + 1, out)?;
            }
            return Ok(());
        }
    };
    if path.is_empty() || path.len() > MAX_NAME || path.chars().any(char::is_control) {
        return Err(format!(
            "field name {:?}: 1-{MAX_NAME} bytes, no control characters",
            path.chars().take(MAX_NAME).collect::<String>()
        ));
    }
    if out.len() == MAX_FIELDS {
        return Err(format!("more than {MAX_FIELDS} fields in one message"));
    }
    out.push(Field {
        name: path.to_owned(),
        value: scalar,
        unit: None,
        at_ms: None,
    });
    Ok(())
}

/// Epoch seconds or milliseconds (told apart by size), or an RFC 3339 string.
pub fn time_of(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => {
            let v = n.as_f64()?;
            if !v.is_finite() || v < 0.0 {
                return None;
            }
            // Below 1e11 it can only be seconds (1e11 ms is 1973).
            let ms = if v < 1e11 { v * 1000.0 } else { v };
            (ms < 1e15).then_some(ms as i64)
        }
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(f: &Flattened) -> Vec<(&str, &FieldValue)> {
        f.fields
            .iter()
            .map(|f| (f.name.as_str(), &f.value))
            .collect()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn seed_and_servwatch_bodies_become_streams() {
        let f = flatten(&obj(json!({"temperature": 25.5}))).unwrap();
        assert_eq!(names(&f), vec![("temperature", &FieldValue::Number(25.5))]);
        let f = flatten(&obj(json!({"cpu_idle": 97.5, "mem_used": 1234}))).unwrap();
        assert_eq!(f.fields.len(), 2);
    }

    #[test]
    fn nested_fields_are_paths_and_special_keys_describe_the_message() {
        let f = flatten(&obj(json!({
            "env": {"temp": 4.5, "door": true, "mode": "cool"},
            "probes": [1.5, null, 2.5],
            "ts": 1_764_500_000,
            "fw": "1.2.0",
            "rssi": -61,
            "device_id": "fridge-1"
        })))
        .unwrap();
        assert_eq!(
            names(&f),
            vec![
                ("env.door", &FieldValue::Number(1.0)),
                ("env.mode", &FieldValue::Text("cool".into())),
                ("env.temp", &FieldValue::Number(4.5)),
                ("probes.0", &FieldValue::Number(1.5)),
                ("probes.2", &FieldValue::Number(2.5)),
                ("rssi", &FieldValue::Number(-61.0)),
            ]
        );
        assert_eq!(f.at_ms, Some(1_764_500_000_000));
        assert_eq!(f.firmware.as_deref(), Some("1.2.0"));
        assert_eq!(f.rssi, Some(-61));
        assert_eq!(f.device_id.as_deref(), Some("fridge-1"));
    }

    #[test]
    fn times_in_seconds_milliseconds_and_rfc3339_agree() {
        let want = Some(1_764_500_000_000);
        assert_eq!(time_of(&json!(1_764_500_000)), want);
        assert_eq!(time_of(&json!(1_764_500_000_000i64)), want);
        assert_eq!(time_of(&json!("2025-11-30T10:53:20Z")), want);
        assert_eq!(time_of(&json!("2025-11-30T19:53:20+09:00")), want);
        assert_eq!(time_of(&json!("yesterday")), None);
        assert_eq!(time_of(&json!(-5)), None);
    }

    #[test]
    fn bad_bodies_are_refused_with_the_field_named() {
        let e = flatten(&obj(json!({"ts": "soon"}))).unwrap_err();
        assert!(e.starts_with("ts:"), "{e}");
        let many: Map<String, Value> = (0..=MAX_FIELDS)
            .map(|i| (format!("f{i}"), json!(i)))
            .collect();
        assert!(flatten(&many).unwrap_err().contains("more than"));
        let long = "x".repeat(MAX_NAME + 1);
        assert!(flatten(&obj(json!({ long: 1 })))
            .unwrap_err()
            .contains("field name"));
        let deep = json!({"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":1}}}}}}}});
        assert!(flatten(&obj(deep)).unwrap_err().contains("deeper"));
    }
}
