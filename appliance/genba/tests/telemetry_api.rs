//! HACCP telemetry end to end: `genba keys`, `POST /api/telemetry` with curl and the seed's
//! body shape, idempotent storage, key revocation and scopes, rate limits, and the same JSON
//! over MQTT on `devices/{id}/telemetry` landing in the same table.

mod common;

use std::process::Command;
use std::time::Duration;

use common::http::Http;
use common::{mosquitto_pub, mosquitto_sub, wait_until, Appliance};

const SEED_BODY: &str = r#"{"device_id":"esp32-kitchen-01","recorded_at":"2026-02-15 12:00:00","ts_device":1771156800000,"rssi":-61,"readings":[{"sensor_hw_id":"28FF4C3A91160457","raw_celsius":3.5,"offset_c":-0.25,"celsius":3.25},{"sensor_hw_id":"28FF4C3A91160458","raw_celsius":-18.0625,"offset_c":0.0,"celsius":-18.0625}]}"#;

fn add_key(a: &Appliance, device: &str, scope: Option<&str>) -> (i64, String) {
    let mut args = vec!["keys", "add", "--device", device, "--json"];
    if let Some(s) = scope {
        args.extend(["--scope", s]);
    }
    let (ok, out) = a.genba(&args);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    (
        v["id"].as_i64().unwrap(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

fn readings_count(a: &Appliance) -> i64 {
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    conn.query_row("SELECT COUNT(*) FROM readings", [], |r| r.get(0))
        .unwrap()
}

fn curl_telemetry(a: &Appliance, key: &str, body: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            &a.url("/api/telemetry"),
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "-H",
            &format!("X-API-Key: {key}"),
            "-d",
            body,
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

#[test]
fn the_seed_request_with_curl_stores_readings_once_and_a_resend_inserts_nothing() {
    let a = Appliance::start("", "");
    let (_, key) = add_key(&a, "esp32-kitchen-01", None);
    let (status, json) = curl_telemetry(&a, &key, SEED_BODY);
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        json,
        serde_json::json!({"ok": true, "inserted": 2, "readings": 2})
    );
    let (status, json) = curl_telemetry(&a, &key, SEED_BODY);
    assert_eq!(status, 200);
    assert_eq!(json["inserted"], 0, "a resend inserts nothing: {json}");
    assert_eq!(readings_count(&a), 2);
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    let (c, src): (f64, String) = conn
        .query_row(
            "SELECT celsius, source FROM readings WHERE sensor_hw_id = '28FF4C3A91160458'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(c, -18.0625);
    assert!(src.starts_with("http:127.0.0.1"), "{src}");
}

#[test]
fn keys_are_checked_per_device_revocation_is_immediate_and_scopes_are_enforced() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let url = a.url("/api/telemetry");
    let (id1, key1) = add_key(&a, "esp32-kitchen-01", None);
    let (_, key2) = add_key(&a, "esp32-freezer-02", None);
    let (_, reader_key) = add_key(&a, "dashboard", Some("telemetry:read"));
    let body2 = SEED_BODY.replace("esp32-kitchen-01", "esp32-freezer-02");
    let post = |key: Option<&str>, body: &str| {
        let headers: Vec<(&str, &str)> = key.map(|k| vec![("x-api-key", k)]).unwrap_or_default();
        h.post(&url, "application/json", body.to_owned(), &headers)
    };

    let r = post(None, SEED_BODY);
    assert_eq!(
        (r.status, r.json["field"].as_str()),
        (401, Some("x-api-key"))
    );
    assert_eq!(post(Some("wrong-key"), SEED_BODY).status, 401);
    assert_eq!(
        post(Some(&reader_key), SEED_BODY).status,
        403,
        "telemetry:read cannot write"
    );
    let r = post(Some(&key2), SEED_BODY);
    assert_eq!(
        (r.status, r.json["field"].as_str()),
        (403, Some("device_id")),
        "a key posts only its own device"
    );

    assert_eq!(post(Some(&key1), SEED_BODY).status, 200);
    let (ok, out) = a.genba(&["keys", "revoke", &id1.to_string()]);
    assert!(ok && out.contains("REVOKED"), "{out}");
    let r = post(Some(&key1), SEED_BODY);
    assert_eq!(r.status, 401, "revoked key refused at once: {}", r.json);
    assert_eq!(
        post(Some(&key2), &body2).status,
        200,
        "other devices unaffected"
    );
    let (ok, _) = a.genba(&["keys", "enable", &id1.to_string()]);
    assert!(ok);
    assert_eq!(post(Some(&key1), SEED_BODY).status, 200);

    // Bad bodies: 400 naming the field; nothing stored from them.
    let before = readings_count(&a);
    let bad = [
        (
            r#"{"device_id":"esp32-kitchen-01","ts_device":1,"readings":[]}"#,
            "readings",
        ),
        (
            r#"{"device_id":"esp32-kitchen-01","ts_device":"soon","readings":[{"raw_celsius":1,"celsius":1}]}"#,
            "ts_device",
        ),
        (
            r#"{"device_id":"esp32-kitchen-01","ts_device":1,"readings":[{"raw_celsius":"cold","celsius":1}]}"#,
            "readings[0].raw_celsius",
        ),
        (
            r#"{"device_id":"esp32-kitchen-01","ts_device":1,"readings":[{"raw_celsius":85.0,"celsius":85.0}]}"#,
            "readings[0].raw_celsius",
        ),
        ("not json", "body"),
    ];
    for (body, field) in bad {
        let r = post(Some(&key1), body);
        assert_eq!(
            (r.status, r.json["field"].as_str()),
            (400, Some(field)),
            "{body}: {}",
            r.json
        );
    }
    let r = h.post(
        &url,
        "application/json",
        b"{\"device_id\":\"\xff\"}".to_vec(),
        &[("x-api-key", &key1)],
    );
    assert_eq!(
        (r.status, r.json["field"].as_str()),
        (400, Some("body")),
        "invalid UTF-8"
    );
    let huge = format!(r#"{{"device_id":"{}"}}"#, "x".repeat(100_000));
    assert_eq!(post(Some(&key1), &huge).status, 413);
    assert_eq!(readings_count(&a), before);
    let (ok, list) = a.genba(&["keys", "list", "--json"]);
    assert!(ok);
    assert!(!list.contains(&key1), "keys list never shows a key");
}

#[test]
fn a_key_over_its_rate_gets_429_with_retry_after() {
    let a = Appliance::start("[telemetry]\nrate_per_sec = 0.5\nburst = 2\n", "");
    let h = Http::new();
    let (_, key) = add_key(&a, "esp32-kitchen-01", None);
    let statuses: Vec<_> = (0..4)
        .map(|i| {
            let body = SEED_BODY.replace("1771156800000", &(1771156800000u64 + i).to_string());
            h.post(
                &a.url("/api/telemetry"),
                "application/json",
                body,
                &[("x-api-key", &key)],
            )
        })
        .collect();
    assert_eq!(
        statuses.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 200, 429, 429]
    );
    let retry: u64 = statuses[2].headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(
        readings_count(&a),
        4,
        "only the two accepted batches were stored"
    );
}

#[test]
fn telemetry_over_mqtt_lands_in_the_same_table_once_and_http_batches_are_published_live() {
    let a = Appliance::start("", "");
    let sub = mosquitto_sub(
        a.mqtt.port(),
        &["-t", "devices/+/telemetry", "-C", "1", "-W", "20", "-v"],
    );
    let mqtt_body = SEED_BODY.replace("esp32-kitchen-01", "esp32-mqtt-03");
    for _ in 0..2 {
        let out = mosquitto_pub(
            a.mqtt.port(),
            &[
                "-q",
                "1",
                "-t",
                "devices/esp32-mqtt-03/telemetry",
                "-m",
                &mqtt_body,
            ],
        );
        assert!(out.status.success());
    }
    let out = sub.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("devices/esp32-mqtt-03/telemetry"));
    assert!(
        wait_until(Duration::from_secs(10), || readings_count(&a) == 2),
        "readings: {}",
        readings_count(&a)
    );

    // A body that is not JSON is parked with its reason, not stored (any JSON object is
    // stored as streams; a HACCP body with a bad field is parked naming the field).
    for body in [
        "not json",
        "{\"device_id\":\"esp32-mqtt-03\",\"readings\":[]}",
    ] {
        let out = mosquitto_pub(
            a.mqtt.port(),
            &[
                "-q",
                "1",
                "-t",
                "devices/esp32-mqtt-03/telemetry",
                "-m",
                body,
            ],
        );
        assert!(out.status.success());
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            let status = a.genba(&["status"]).1;
            status.contains("not valid JSON") && status.contains("ts_device")
        }),
        "{}",
        a.genba(&["status"]).1
    );

    // An HTTP batch is published for live subscribers.
    let sub = mosquitto_sub(
        a.mqtt.port(),
        &[
            "-t",
            "devices/esp32-kitchen-01/telemetry",
            "-C",
            "1",
            "-W",
            "20",
        ],
    );
    let (_, key) = add_key(&a, "esp32-kitchen-01", None);
    assert_eq!(curl_telemetry(&a, &key, SEED_BODY).0, 200);
    let out = sub.wait_with_output().unwrap();
    let live: serde_json::Value = serde_json::from_slice(&out.stdout).expect("live batch");
    assert_eq!(live["device_id"], "esp32-kitchen-01");
    assert_eq!(readings_count(&a), 4);
}

#[test]
fn a_signing_key_needs_a_fresh_valid_signature_and_a_replay_is_refused() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let (ok, out) = a.genba(&[
        "keys",
        "add",
        "--device",
        "esp32-kitchen-01",
        "--sign",
        "--json",
    ]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let secret = v["signing_secret"].as_str().unwrap().to_owned();
    let key = v["key"].as_str().unwrap().to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let sig = genba_telemetry::signing::sign(&secret, &now, SEED_BODY.as_bytes());
    let post = |ts: &str, sig: &str| {
        h.post(
            &a.url("/api/telemetry"),
            "application/json",
            SEED_BODY,
            &[
                ("x-api-key", &key),
                ("x-genba-timestamp", ts),
                ("x-genba-signature", sig),
            ],
        )
    };
    let unsigned = h.post(
        &a.url("/api/telemetry"),
        "application/json",
        SEED_BODY,
        &[("x-api-key", &key)],
    );
    assert_eq!(
        (unsigned.status, unsigned.json["field"].as_str()),
        (401, Some("x-genba-signature"))
    );
    assert_eq!(post(&now, &"0".repeat(64)).status, 401, "wrong signature");
    let r = post(&now, &sig);
    assert_eq!(r.status, 200, "{}", r.json);
    let replay = post(&now, &sig);
    assert_eq!(replay.status, 401, "replay: {}", replay.json);
    let old = "1000000000";
    assert_eq!(
        post(
            old,
            &genba_telemetry::signing::sign(&secret, old, SEED_BODY.as_bytes())
        )
        .status,
        401,
        "skew"
    );
    assert_eq!(readings_count(&a), 2);
}
