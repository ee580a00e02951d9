//! One device message, read: the topic names the device (and an optional tag), the body is the
//! HACCP telemetry body (its probes become streams) or any JSON object (its fields do).

use genba_firmware_core::telemetry::validate_device_id;
use genba_store::{DeviceMessage, Field, FieldValue};
use serde_json::Value;

use crate::fields::flatten;

/// Largest body read as telemetry; larger ones are parked.
pub const MAX_BODY: usize = 64 * 1024;
/// The stream of a thermometer's refused TLS servers (the batch's `tls_refused`).
pub const TLS_REFUSED: &str = "tls_refused";
/// A device time before this (2001-09-09) means the device clock was never set.
const PLAUSIBLE_MS: i64 = 1_000_000_000_000;

/// `devices/{id}/telemetry` or `devices/{id}/telemetry/{tag}`: the device id and tag.
pub fn topic_device(topic: &str) -> Option<(&str, Option<&str>)> {
    let mut levels = topic.split('/');
    if levels.next()? != "devices" {
        return None;
    }
    let device = levels.next().filter(|d| !d.is_empty())?;
    if levels.next()? != "telemetry" {
        return None;
    }
    let tag = levels.next().filter(|t| !t.is_empty());
    if levels.next().is_some() {
        return None;
    }
    Some((device, tag))
}

/// Reads a body sent by `device_id` at `received_ms`. The error says why it cannot be stored.
pub fn parse(
    device_id: &str,
    tag: Option<&str>,
    body: &[u8],
    received_ms: i64,
) -> Result<DeviceMessage, String> {
    if body.len() > MAX_BODY {
        return Err(format!("body: larger than {MAX_BODY} bytes"));
    }
    validate_device_id(device_id)
        .map_err(|_| format!("device id {device_id:?}: 1-32 characters from A-Z a-z 0-9 - _ ."))?;
    let text = std::str::from_utf8(body).map_err(|_| "body: is not valid UTF-8".to_owned())?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("body: is not valid JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| "body: must be a JSON object".to_owned())?;
    let mut message = DeviceMessage {
        device_id: device_id.to_owned(),
        source: String::new(),
        at_ms: received_ms,
        address: None,
        firmware: None,
        rssi: None,
        readings: Vec::new(),
        fields: Vec::new(),
        record: Some((tag.map(str::to_owned), text.to_owned())),
        journal: None,
        provision: false,
    };
    if obj.contains_key("readings") {
        // The HACCP body: one stream per probe, at the device's time when its clock is set.
        let batch = genba_telemetry::parse(body).map_err(|e| e.to_string())?;
        if batch.device_id != device_id {
            return Err(format!(
                "device_id: {:?} does not match the device {device_id:?}",
                batch.device_id
            ));
        }
        message.rssi = batch.readings.first().map(|r| r.rssi);
        if let Some(ts) = batch
            .readings
            .first()
            .map(|r| r.ts_device)
            .filter(|&t| t >= PLAUSIBLE_MS)
        {
            message.at_ms = ts;
        }
        if let Some(fw) = obj.get("fw").and_then(Value::as_str) {
            message.firmware = Some(fw.chars().take(64).collect());
        }
        message.fields = batch
            .readings
            .iter()
            .map(|r| Field {
                name: r.sensor_hw_id.clone(),
                value: FieldValue::Number(r.celsius),
                unit: Some("°C".into()),
                at_ms: Some(message.at_ms),
            })
            .collect();
        // TLS servers the device refused since its previous batch (the firmware's pin check):
        // a stream of its own, so it shows on the device's page and a rule can alarm on it.
        if let Some(n) = obj
            .get(TLS_REFUSED)
            .and_then(Value::as_u64)
            .filter(|&n| n > 0)
        {
            message.fields.push(Field {
                name: TLS_REFUSED.into(),
                value: FieldValue::Number(n as f64),
                unit: None,
                at_ms: Some(message.at_ms),
            });
        }
        message.readings = batch.readings;
        return Ok(message);
    }
    let flat = flatten(obj)?;
    if let Some(id) = &flat.device_id {
        if id != device_id {
            return Err(format!(
                "device_id: {id:?} does not match the device {device_id:?}"
            ));
        }
    }
    if flat.fields.is_empty() {
        return Err("body: no numeric, boolean or text field to store".into());
    }
    message.at_ms = flat.at_ms.unwrap_or(received_ms);
    message.firmware = flat.firmware;
    message.rssi = flat.rssi;
    message.fields = flat.fields;
    Ok(message)
}

/// Whether [`parse`] would take this body: for answers before it is journaled.
pub fn check(device_id: &str, tag: Option<&str>, body: &[u8]) -> Result<(), String> {
    parse(device_id, tag, body, 0).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_the_device_and_an_optional_tag() {
        assert_eq!(
            topic_device("devices/esp32-device-01/telemetry"),
            Some(("esp32-device-01", None))
        );
        assert_eq!(
            topic_device("devices/d1/telemetry/env"),
            Some(("d1", Some("env")))
        );
        assert_eq!(topic_device("devices/d1/commands"), None);
        assert_eq!(topic_device("devices//telemetry"), None);
        assert_eq!(topic_device("devices/d1/telemetry/a/b"), None);
    }

    #[test]
    fn the_seed_payload_is_a_stream_at_the_time_received() {
        let m = parse("esp32-device-01", None, br#"{"temperature": 25.5}"#, 1234).unwrap();
        assert_eq!(m.at_ms, 1234);
        assert_eq!(m.fields.len(), 1);
        assert_eq!(m.fields[0].name, "temperature");
        assert!(m.readings.is_empty());
    }

    #[test]
    fn the_haccp_body_gives_readings_and_one_stream_per_probe() {
        let body = br#"{"device_id":"fridge-1","recorded_at":"2026-02-15T12:00:00Z",
            "ts_device":1771156800000,"rssi":-60,"readings":[
            {"sensor_hw_id":"28FF01","raw_celsius":3.4,"offset_c":0.1,"celsius":3.5},
            {"sensor_hw_id":"28FF02","raw_celsius":4.0,"offset_c":0.0,"celsius":4.0}]}"#;
        let m = parse("fridge-1", None, body, 5).unwrap();
        assert_eq!(m.readings.len(), 2);
        assert_eq!(m.at_ms, 1_771_156_800_000);
        assert_eq!(m.rssi, Some(-60));
        let names: Vec<_> = m.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["28FF01", "28FF02"]);
        assert_eq!(m.fields[0].unit.as_deref(), Some("°C"));
        let other = parse("fridge-2", None, body, 5).unwrap_err();
        assert!(other.starts_with("device_id"), "{other}");
    }

    #[test]
    fn refused_tls_servers_in_a_haccp_body_are_a_stream_of_the_device() {
        let body = |refused: &str| {
            format!(
                r#"{{"device_id":"fridge-1","ts_device":1771156800000,{refused}"readings":[
                {{"sensor_hw_id":"28FF01","raw_celsius":3.5,"offset_c":0.0,"celsius":3.5}}]}}"#
            )
        };
        let m = parse("fridge-1", None, body(r#""tls_refused":2,"#).as_bytes(), 5).unwrap();
        let f = m.fields.iter().find(|f| f.name == TLS_REFUSED).unwrap();
        assert_eq!(f.value, FieldValue::Number(2.0));
        assert_eq!(f.at_ms, Some(1_771_156_800_000));
        assert_eq!(m.readings.len(), 1);
        // none refused: no stream, as before
        let m = parse("fridge-1", None, body("").as_bytes(), 5).unwrap();
        assert!(m.fields.iter().all(|f| f.name != TLS_REFUSED));
    }

    #[test]
    fn bodies_that_cannot_be_streams_say_why() {
        for (body, want) in [
            (&b"\xff\xfe"[..], "UTF-8"),
            (b"not json", "not valid JSON"),
            (b"[1,2]", "JSON object"),
            (b"{}", "no numeric"),
            (
                br#"{"device_id":"d1","ts_device":1,"readings":5}"#,
                "readings",
            ),
        ] {
            let e = parse("d1", None, body, 0).unwrap_err();
            assert!(e.contains(want), "{e} should say {want}");
        }
        let big = vec![b' '; MAX_BODY + 1];
        assert!(parse("d1", None, &big, 0).unwrap_err().contains("larger"));
        assert!(parse("bad id!", None, b"{\"a\":1}", 0)
            .unwrap_err()
            .starts_with("device id"));
    }
}
