//! The device platform end to end against `genba up`: any JSON telemetry (seed 003's
//! `{"temperature": 25.5}`, Servwatch-style metrics) becomes streams of an auto-provisioned
//! device; the ThingScale-style `/v2` API and `/post_v2/` connector; commands to devices;
//! disabled devices; and the bad-input table of every new endpoint.

mod common;

use std::time::Duration;

use common::http::{raw_exchange, raw_json, Http, Reply};
use common::{mosquitto_pub, mosquitto_sub, wait_until, Appliance};
use serde_json::{json, Value};

const HACCP_BODY: &str = r#"{"device_id":"fridge-7","recorded_at":"2026-02-15T12:00:00Z","ts_device":1771156800000,"rssi":-61,"readings":[{"sensor_hw_id":"28FF4C3A91160457","raw_celsius":3.5,"offset_c":-0.25,"celsius":3.25}]}"#;

fn token(a: &Appliance, scope: &str) -> String {
    a.api_token(scope)
}

fn device_key(a: &Appliance, device: &str) -> String {
    let (ok, out) = a.genba(&["keys", "add", "--device", device, "--json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    v["key"].as_str().unwrap().to_owned()
}

/// `mosquitto_pub -V mqttv5 -q 1`, which the broker must refuse with "not authorized".
fn refused_v5(a: &Appliance, topic: &str, body: &str) {
    let out = mosquitto_pub(
        a.mqtt.port(),
        &["-V", "mqttv5", "-q", "1", "-t", topic, "-m", body],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Not authorized"),
        "{topic}: {out:?}"
    );
}

fn get(h: &Http, a: &Appliance, path: &str, token: &str) -> Reply {
    h.get(&a.url(path), &[("x-apitoken", token)])
}

/// Waits until `path` answers 200 with `pred` true of its JSON.
fn wait_json(
    h: &Http,
    a: &Appliance,
    path: &str,
    token: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(15), || {
        let r = get(h, a, path, token);
        last = r.json.clone();
        r.status == 200 && pred(&r.json)
    });
    assert!(ok, "{path} never matched; last answer {last}");
    last
}

#[test]
fn seed_and_servwatch_telemetry_over_mqtt_become_streams_read_back_through_v2() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let read = token(&a, "read");
    let port = a.mqtt.port();
    // Seed 003's firmware message: the device id is in the topic only.
    let out = mosquitto_pub(
        port,
        &[
            "-q",
            "1",
            "-t",
            "devices/esp32-device-01/telemetry",
            "-m",
            r#"{"temperature": 25.5}"#,
        ],
    );
    assert!(out.status.success());
    let out = mosquitto_pub(
        port,
        &[
            "-q",
            "1",
            "-t",
            "devices/server-01/telemetry",
            "-m",
            r#"{"cpu_idle": 97.5, "mem_used": 1234}"#,
        ],
    );
    assert!(out.status.success());
    let out = mosquitto_pub(
        port,
        &[
            "-q",
            "1",
            "-t",
            "devices/fridge-7/telemetry",
            "-m",
            HACCP_BODY,
        ],
    );
    assert!(out.status.success());

    let d = wait_json(&h, &a, "/v2/device/esp32-device-01", &read, |v| {
        v["last_seen_at"].is_string()
    });
    assert_eq!(d["provisioned"], "auto");
    assert_eq!(d["enabled"], true);
    let s = get(
        &h,
        &a,
        "/v2/stream/esp32-device-01/temperature?start=0",
        &read,
    );
    assert_eq!(s.status, 200, "{}", s.json);
    assert_eq!(s.json["points"].as_array().unwrap().len(), 1);
    assert_eq!(s.json["points"][0]["value"], 25.5);

    let metrics = wait_json(&h, &a, "/v2/device/server-01/streams", &read, |v| {
        v["streams"].as_array().is_some_and(|s| s.len() == 2)
    });
    let names: Vec<_> = metrics["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cpu_idle", "mem_used"]);
    // With aggregation, from the rollups.
    let agg = get(
        &h,
        &a,
        "/v2/stream/server-01/mem_used?start=0&aggregate=max&resolution=hour",
        &read,
    );
    assert_eq!(agg.status, 200, "{}", agg.json);
    assert_eq!(agg.json["buckets"][0]["max"], 1234.0);
    assert_eq!(agg.json["buckets"][0]["count"], 1);
    // ThingScale's channel stream: the JSON records, latest first by default.
    let channel = metrics_channel(&h, &a, &read, "server-01");
    let records = h.get(
        &a.url(&format!("/v2/stream/{channel}")),
        &[("x-apitoken", &read), ("x-starttime", "2020-01-01 00:00")],
    );
    assert_eq!(records.status, 200, "{}", records.json);
    assert_eq!(records.json["stream"][0]["value"]["cpu_idle"], 97.5);
    let whole = h.get(
        &a.url(&format!("/v2/stream/{channel}")),
        &[
            ("x-apitoken", &read),
            ("x-starttime", "0"),
            ("x-aggregate", "avg"),
        ],
    );
    assert_eq!(whole.json["aggr_type"], "avg", "{}", whole.json);
    let result = whole.json["result"].as_array().unwrap();
    assert!(
        result
            .iter()
            .any(|r| r["key"] == "cpu_idle" && r["value"] == 97.5),
        "{result:?}"
    );

    // The HACCP body works as before (readings table) and its probe is a stream in °C.
    let probe = wait_json(&h, &a, "/v2/device/fridge-7/streams", &read, |v| {
        v["streams"].as_array().is_some_and(|s| !s.is_empty())
    });
    assert_eq!(probe["streams"][0]["name"], "28FF4C3A91160457");
    assert_eq!(probe["streams"][0]["unit"], "°C");
    assert_eq!(probe["streams"][0]["last_value"], 3.25);
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    let readings: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM readings WHERE device_id = 'fridge-7'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(readings, 1);

    // The CLI sees the same registry.
    let (ok, out) = a.genba(&["devices", "show", "esp32-device-01"]);
    assert!(
        ok && out.contains("temperature") && out.contains("25.5"),
        "{out}"
    );
}

fn metrics_channel(h: &Http, a: &Appliance, token: &str, device: &str) -> i64 {
    get(h, a, &format!("/v2/device/{device}"), token).json["mapped_ch"]
        .as_i64()
        .unwrap()
}

#[test]
fn thingscale_walkthrough_device_post_v2_stream_and_command() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let write = token(&a, "write");
    // Create a device, then give it a device token.
    let created = h.call("POST", &a.url("/v2/device"), &[("x-apitoken", &write)],
        Some(json!({"device_id": "line-3", "name": "Line 3", "location": "hall B", "tags": ["press"]}).to_string().as_bytes()));
    assert_eq!(created.status, 201, "{}", created.json);
    assert_eq!(created.json["mapped_ch"], 1);
    let key = device_key(&a, "line-3");
    // Post through the HTTP device connector, with a tag.
    for (i, t) in [21.5, 22.0, 23.5].iter().enumerate() {
        let body = json!({"temp": t, "ts": 1_796_083_200_000i64 + i as i64 * 60_000});
        let r = h.call(
            "POST",
            &a.url("/post_v2/"),
            &[
                ("x-devicetoken", &key),
                ("x-deviceid", "line-3"),
                ("x-tagname", "env"),
            ],
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(r.status, 200, "{}", r.json);
    }
    // Query the channel stream with ThingScale's headers.
    let headers = [
        ("x-apitoken", write.as_str()),
        ("x-starttime", "2026-12-01T00:00:00Z"),
        ("x-endtime", "2026-12-01T01:00:00Z"),
        ("x-pagelimit", "2"),
        ("x-pagesort", "asc"),
        ("x-tagname", "env"),
    ];
    let mut last = Value::Null;
    assert!(
        wait_until(Duration::from_secs(15), || {
            let r = h.get(&a.url("/v2/stream/1"), &headers);
            last = r.json;
            last["stream"].as_array().is_some_and(|s| s.len() == 2)
        }),
        "{last}"
    );
    assert_eq!(last["stream"][0]["value"]["temp"], 21.5);
    assert_eq!(last["stream"][0]["tag"], "env");
    assert_eq!(last["stream"][0]["at"], "2026-12-01T00:00:00.000Z");
    // Per-minute buckets of the stream (all three posts stored: the consumer may lag).
    let mut buckets = Value::Null;
    assert!(
        wait_until(Duration::from_secs(15), || {
            buckets = h.get(&a.url("/v2/stream/line-3/temp?start=2026-12-01T00:00:00Z&end=2026-12-01T00:10:00Z&aggregate=avg&resolution=minute&sort=asc"),
                &[("x-apitoken", &write)]).json;
            buckets["buckets"].as_array().is_some_and(|b| b.len() == 3)
        }),
        "{buckets}"
    );
    assert_eq!(buckets["resolution"], "minute");
    assert_eq!(buckets["buckets"][2]["avg"], 23.5);
    // A ThingScale event: threshold on the channel's "temp", HTTP notification; it fires
    // when a value crosses it.
    let hook = common::http::Receiver::start();
    let event = h.call(
        "POST",
        &a.url("/v2/event"),
        &[("x-apitoken", &write)],
        Some(
            json!({"mapped_ch": 1, "description": "line 3 hot", "notify_type": "http",
                   "post_url": hook.url, "enabled": true, "source": "temp",
                   "operator": ">", "threshold": "30"})
            .to_string()
            .as_bytes(),
        ),
    );
    assert_eq!(event.status, 201, "{}", event.json);
    assert_eq!(
        (
            event.json["event_id"].as_i64(),
            event.json["threshold"].as_str()
        ),
        (Some(1), Some("30"))
    );
    for (body, field) in [
        (
            json!({"mapped_ch": 1, "source": "temp", "operator": ">>", "threshold": "30", "post_url": hook.url}),
            "operator",
        ),
        (
            json!({"mapped_ch": 1, "source": "temp", "operator": ">", "threshold": "hot", "post_url": hook.url}),
            "threshold",
        ),
        (
            json!({"mapped_ch": 9, "source": "temp", "operator": ">", "threshold": "1", "post_url": hook.url}),
            "mapped_ch",
        ),
        (
            json!({"mapped_ch": 1, "source": "temp", "operator": ">", "threshold": "1", "notify_type": "email"}),
            "notify_type",
        ),
        (
            json!({"mapped_ch": 1, "source": "temp", "operator": ">", "threshold": "1", "post_url": "ftp://x"}),
            "post_url",
        ),
    ] {
        let r = h.call(
            "POST",
            &a.url("/v2/event"),
            &[("x-apitoken", &write)],
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(r.json["field"].as_str(), Some(field), "{body}: {}", r.json);
    }
    std::thread::sleep(Duration::from_secs(6)); // the rules engine reloads within 5 s
    let hot = h.call(
        "POST",
        &a.url("/post_v2/"),
        &[("x-devicetoken", &key), ("x-deviceid", "line-3")],
        Some(br#"{"temp": 31.5}"#),
    );
    assert_eq!(hot.status, 200);
    assert!(
        wait_until(Duration::from_secs(20), || !hook.bodies().is_empty()),
        "no notification"
    );
    let note: Value = serde_json::from_str(&hook.bodies()[0]).unwrap();
    assert_eq!(
        (
            note["event"].as_str(),
            note["event_id"].as_i64(),
            note["device_id"].as_str()
        ),
        (Some("raised"), Some(1), Some("line-3"))
    );
    assert!(note["message"].as_str().unwrap().contains("31.5"), "{note}");
    let listed = h.get(&a.url("/v2/event"), &[("x-apitoken", &write)]);
    assert_eq!(listed.json.as_array().unwrap().len(), 1);
    // A command reaches an MQTT client on the device's topic, and is journaled.
    let sub = mosquitto_sub(
        a.mqtt.port(),
        &["-t", "devices/line-3/commands", "-C", "1", "-W", "10"],
    );
    let r = h.call(
        "POST",
        &a.url("/v2/publish/line-3"),
        &[("x-apitoken", &write)],
        Some(br#"{"qos":1,"payload":"FAN_ON"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.json);
    let got = sub.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "FAN_ON");
    assert!(a
        .journal()
        .iter()
        .any(|(t, p)| t == "devices/line-3/commands" && p == "FAN_ON"));
    // The CLI's send takes the same way.
    let sub = mosquitto_sub(
        a.mqtt.port(),
        &["-t", "devices/line-3/commands", "-C", "1", "-W", "10"],
    );
    let (ok, out) = a.genba(&["devices", "send", "line-3", r#"{"cmd":"led","on":true}"#]);
    assert!(ok, "{out}");
    let got = sub.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        r#"{"cmd":"led","on":true}"#
    );
    // Edit, then delete needs admin.
    let put = h.call(
        "PUT",
        &a.url("/v2/device/line-3"),
        &[("x-apitoken", &write)],
        Some(br#"{"location":"hall C"}"#),
    );
    assert_eq!(
        (
            put.status,
            put.json["location"].as_str(),
            put.json["name"].as_str()
        ),
        (200, Some("hall C"), Some("Line 3"))
    );
    let del = h.call(
        "DELETE",
        &a.url("/v2/device/line-3"),
        &[("x-apitoken", &write)],
        None,
    );
    assert_eq!(
        (del.status, del.json["error"].as_str()),
        (403, Some("FORBIDDEN"))
    );
}

#[test]
fn a_disabled_device_is_refused_everywhere_and_keeps_what_it_sent() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let read = token(&a, "read");
    let key = device_key(&a, "fridge-7");
    let post = |body: &str| {
        h.call(
            "POST",
            &a.url("/post_v2/"),
            &[("x-devicetoken", &key), ("x-deviceid", "fridge-7")],
            Some(body.as_bytes()),
        )
    };
    let first = post(r#"{"t": 3.0}"#);
    assert_eq!(
        (first.status, first.json["result"].as_str()),
        (201, Some("NEW_DEVICE_FOUND"))
    );
    wait_json(&h, &a, "/v2/stream/fridge-7/t?start=0", &read, |v| {
        v["points"].as_array().is_some_and(|p| p.len() == 1)
    });
    let (ok, out) = a.genba(&["devices", "disable", "fridge-7"]);
    assert!(ok && out.contains("DISABLED"), "{out}");
    let refused = post(r#"{"t": 9.0}"#);
    assert_eq!(
        (
            refused.status,
            refused.json["error"].as_str(),
            refused.json["field"].as_str()
        ),
        (403, Some("DEVICE_DISABLED"), Some("device_id"))
    );
    let api = h.post(
        &a.url("/api/telemetry"),
        "application/json",
        HACCP_BODY,
        &[("x-api-key", &key)],
    );
    assert_eq!(api.status, 403, "{}", api.json);
    // Over MQTT the broker refuses it: MQTT 5 gets PUBACK "not authorized" (0x87), 3.1.1 a
    // plain PUBACK (it has no code for it); neither is journaled.
    refused_v5(&a, "devices/fridge-7/telemetry", r#"{"t": 8.0}"#);
    let v4 = mosquitto_pub(
        a.mqtt.port(),
        &[
            "-q",
            "1",
            "-t",
            "devices/fridge-7/telemetry",
            "-m",
            r#"{"t": 8.5}"#,
        ],
    );
    assert!(v4.status.success());
    assert!(
        !a.journal()
            .iter()
            .any(|(_, p)| p.contains("8.0") || p.contains("8.5")),
        "a disabled device's publish was journaled"
    );
    // What it sent before is still there.
    let s = get(&h, &a, "/v2/stream/fridge-7/t?start=0", &read);
    assert_eq!(s.json["points"].as_array().unwrap().len(), 1);
    assert_eq!(s.json["points"][0]["value"], 3.0);
    let (ok, _) = a.genba(&["devices", "enable", "fridge-7"]);
    assert!(ok);
    assert_eq!(post(r#"{"t": 4.0}"#).status, 200);
}

#[test]
fn bad_inputs_to_the_v2_api_get_thingscale_codes_naming_the_field() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let read = token(&a, "read");
    let write = token(&a, "write");
    let key = device_key(&a, "d1");
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Option<&'a [u8]>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/v2/device",
            vec![],
            None,
            401,
            "AUTH_REQUIRED",
            Some("x-apitoken"),
        ),
        (
            "GET",
            "/v2/device",
            vec![("x-apitoken", "wrong")],
            None,
            401,
            "AUTH_REQUIRED",
            Some("x-apitoken"),
        ),
        (
            "GET",
            "/v2/device",
            vec![("authorization", "Bearer wrong")],
            None,
            401,
            "AUTH_REQUIRED",
            Some("x-apitoken"),
        ),
        (
            "POST",
            "/v2/device",
            vec![("x-apitoken", &read)],
            Some(br#"{"device_id":"x"}"#),
            403,
            "FORBIDDEN",
            Some("x-apitoken"),
        ),
        (
            "GET",
            "/v2/device/nope",
            vec![("x-apitoken", &read)],
            None,
            404,
            "NO_DEVICE",
            Some("device_id"),
        ),
        (
            "GET",
            "/v2/channel/99",
            vec![("x-apitoken", &read)],
            None,
            404,
            "NO_CHANNEL",
            Some("channel"),
        ),
        (
            "POST",
            "/v2/device",
            vec![("x-apitoken", &write)],
            Some(b"{not json"),
            400,
            "BAD_JSON_FORMAT",
            Some("body"),
        ),
        (
            "POST",
            "/v2/device",
            vec![("x-apitoken", &write)],
            Some(b"\xff\xfe"),
            400,
            "BAD_JSON_FORMAT",
            Some("body"),
        ),
        (
            "POST",
            "/v2/device",
            vec![("x-apitoken", &write)],
            Some(b"[1]"),
            400,
            "BAD_JSON_FORMAT",
            Some("body"),
        ),
        (
            "POST",
            "/v2/device",
            vec![("x-apitoken", &write)],
            Some(br#"{"name":"x"}"#),
            400,
            "BAD_REQUEST",
            Some("device_id"),
        ),
        (
            "POST",
            "/v2/device",
            vec![("x-apitoken", &write)],
            Some(br#"{"device_id":5}"#),
            400,
            "BAD_REQUEST",
            Some("device_id"),
        ),
        (
            "POST",
            "/v2/device",
            vec![("x-apitoken", &write)],
            Some(br#"{"device_id":"0"}"#),
            400,
            "DEVICE_ID_ZERO",
            Some("device_id"),
        ),
        (
            "POST",
            "/v2/device",
            vec![("x-apitoken", &write)],
            Some(br#"{"device_id":"a/b"}"#),
            400,
            "BAD_REQUEST",
            Some("device_id"),
        ),
        (
            "POST",
            "/v2/device",
            vec![("x-apitoken", &write)],
            Some(br#"{"device_id":"ok","enabled":"yes"}"#),
            400,
            "BAD_REQUEST",
            Some("enabled"),
        ),
        (
            "POST",
            "/v2/device",
            vec![("x-apitoken", &write)],
            Some(br#"{"device_id":"ok","tags":[1]}"#),
            400,
            "BAD_REQUEST",
            Some("tags[0]"),
        ),
        (
            "POST",
            "/v2/device",
            vec![("x-apitoken", &write)],
            Some(br#"{"device_id":"ok","colour":"red"}"#),
            400,
            "BAD_REQUEST",
            Some("colour"),
        ),
        (
            "POST",
            "/v2/device",
            vec![("x-apitoken", &write)],
            Some(br#"{"device_id":"d1"}"#),
            409,
            "DEVICE_EXISTS",
            Some("device_id"),
        ),
        (
            "GET",
            "/v2/stream/d1/t?start=soon",
            vec![("x-apitoken", &read)],
            None,
            400,
            "BAD_REQUEST",
            Some("start"),
        ),
        (
            "GET",
            "/v2/stream/d1/t?limit=0",
            vec![("x-apitoken", &read)],
            None,
            400,
            "BAD_REQUEST",
            Some("limit"),
        ),
        (
            "GET",
            "/v2/stream/d1/t?sort=up",
            vec![("x-apitoken", &read)],
            None,
            400,
            "BAD_REQUEST",
            Some("sort"),
        ),
        (
            "GET",
            "/v2/stream/d1/t?aggregate=median",
            vec![("x-apitoken", &read)],
            None,
            400,
            "BAD_REQUEST",
            Some("aggregate"),
        ),
        (
            "GET",
            "/v2/stream/d1/t?start=2026-12-02T00:00:00Z&end=2026-12-01T00:00:00Z",
            vec![("x-apitoken", &read)],
            None,
            400,
            "BAD_REQUEST",
            Some("start"),
        ),
        (
            "GET",
            "/v2/stream/d1/nothing",
            vec![("x-apitoken", &read)],
            None,
            404,
            "NO_STREAM",
            Some("stream"),
        ),
        (
            "POST",
            "/v2/publish/d1",
            vec![("x-apitoken", &write)],
            Some(br#"{"qos":2,"payload":"x"}"#),
            400,
            "BAD_REQUEST",
            Some("qos"),
        ),
        (
            "POST",
            "/v2/publish/d1",
            vec![("x-apitoken", &write)],
            Some(br#"{"qos":1}"#),
            400,
            "BAD_REQUEST",
            Some("payload"),
        ),
        (
            "POST",
            "/v2/publish/zz",
            vec![("x-apitoken", &write)],
            Some(br#"{"payload":"x"}"#),
            404,
            "NO_DEVICE",
            Some("device_id"),
        ),
        (
            "POST",
            "/post_v2/",
            vec![("x-deviceid", "d1")],
            Some(br#"{"t":1}"#),
            401,
            "AUTH_REQUIRED",
            Some("x-devicetoken"),
        ),
        (
            "POST",
            "/post_v2/",
            vec![("x-deviceid", "d1"), ("x-devicetoken", "nope")],
            Some(br#"{"t":1}"#),
            401,
            "AUTH_REQUIRED",
            Some("x-devicetoken"),
        ),
        (
            "POST",
            "/post_v2/",
            vec![("x-devicetoken", &key)],
            Some(br#"{"t":1}"#),
            400,
            "BAD_REQUEST",
            Some("x-deviceid"),
        ),
        (
            "POST",
            "/post_v2/",
            vec![("x-deviceid", "d2"), ("x-devicetoken", &key)],
            Some(br#"{"t":1}"#),
            403,
            "FORBIDDEN",
            Some("x-deviceid"),
        ),
        (
            "POST",
            "/post_v2/",
            vec![("x-deviceid", "d1"), ("x-devicetoken", &key)],
            Some(b"nope"),
            400,
            "BAD_JSON_FORMAT",
            Some("body"),
        ),
        (
            "POST",
            "/post_v2/",
            vec![("x-deviceid", "d1"), ("x-devicetoken", &key)],
            Some(b"\xff"),
            400,
            "BAD_JSON_FORMAT",
            Some("body"),
        ),
        (
            "POST",
            "/post_v2/",
            vec![("x-deviceid", "d1"), ("x-devicetoken", &key)],
            Some(br#"{"ts":"soon","t":1}"#),
            400,
            "BAD_JSON_FORMAT",
            Some("ts"),
        ),
        (
            "POST",
            "/post_v2/",
            vec![
                ("x-deviceid", "d1"),
                ("x-devicetoken", &key),
                ("x-tagname", "a/b"),
            ],
            Some(br#"{"t":1}"#),
            400,
            "BAD_REQUEST",
            Some("x-tagname"),
        ),
        (
            "DELETE",
            "/v2/channel",
            vec![("x-apitoken", &read)],
            None,
            405,
            "",
            None,
        ),
    ];
    // d1 exists for the cases that need it.
    let made = h.call(
        "POST",
        &a.url("/v2/device"),
        &[("x-apitoken", &write)],
        Some(br#"{"device_id":"d1"}"#),
    );
    assert_eq!(made.status, 201);
    let journal_before = a.journal().len();
    for (method, path, headers, body, status, code, field) in &cases {
        let r = h.call(method, &a.url(path), headers, *body);
        let what = format!("{method} {path} {headers:?}: {} {}", r.status, r.json);
        assert_eq!(r.status, *status, "{what}");
        if !code.is_empty() {
            assert_eq!(r.json["error"], *code, "{what}");
        }
        assert!(
            r.json["message"].is_string() || r.json["error"].is_string(),
            "{what}"
        );
        assert_eq!(r.json["field"].as_str(), *field, "{what}");
    }
    // Oversized bodies are refused from their Content-Length, before they are read.
    for (path, auth) in [
        ("/v2/device", format!("X-APITOKEN: {write}")),
        (
            "/post_v2/",
            format!("X-DEVICETOKEN: {key}\r\nX-DEVICEID: d1"),
        ),
    ] {
        let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: 300000\r\n\r\n{{");
        let answer = raw_exchange(a.http, request.as_bytes(), Duration::from_secs(5));
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        let body = raw_json(&answer);
        assert_eq!(
            (body["error"].as_str(), body["field"].as_str()),
            (Some("BODY_TOO_LARGE"), Some("body")),
            "{answer}"
        );
    }
    assert_eq!(
        a.journal().len(),
        journal_before,
        "refused requests journal nothing"
    );
    let devices = get(&h, &a, "/v2/device", &read);
    assert_eq!(
        devices.json.as_array().unwrap().len(),
        1,
        "{}",
        devices.json
    );
    // Revocation takes effect at once.
    let (ok, out) = a.genba(&["tokens", "list", "--json"]);
    assert!(ok);
    let list: Value = serde_json::from_str(&out).unwrap();
    let id = list[0]["id"].as_i64().unwrap().to_string();
    assert!(a.genba(&["tokens", "revoke", &id]).0);
    assert_eq!(get(&h, &a, "/v2/device", &read).status, 401);
}

#[test]
fn the_openapi_document_is_served_and_describes_every_v2_path() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let r = h.get(&a.url("/v2/openapi.json"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json["openapi"], "3.1.0");
    let paths = r.json["paths"].as_object().unwrap();
    for p in [
        "/v2/device",
        "/v2/device/{id}",
        "/v2/stream/{id}",
        "/v2/stream/{id}/{name}",
        "/v2/publish/{id}",
        "/v2/device/{id}/update",
        "/v2/rule",
        "/v2/alarm/{id}/ack",
        "/post_v2/",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
}

#[test]
fn a_token_flood_gets_429_with_retry_after() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let read = token(&a, "read");
    // 16 clients at once, 25 requests each: far over 20/s with bursts of 40, however slow the
    // machine is.
    let (client, url) = (h.client(), a.url("/v2/device"));
    let replies = h.block_on(async move {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (client, url, token) = (client.clone(), url.clone(), read.clone());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for _ in 0..25 {
                        out.push(
                            common::http::send(client.get(&url).header("x-apitoken", &token)).await,
                        );
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 429));
    let limited = replies.into_iter().find(|r| r.status == 429);
    let r = limited.expect("a flood of 400 requests is rate limited");
    assert_eq!(r.json["error"], "RATE_LIMITED");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(r.headers.contains_key("x-ratelimit-limit"));
}

#[test]
#[should_panic(expected = "does not match openapi.json")]
fn an_answer_that_is_off_the_document_is_caught_by_the_check() {
    // The check every /v2 answer of these tests goes through can fail.
    common::openapi::check(
        "GET",
        "/v2/device/d1",
        200,
        &json!({"device_id": 5, "mapped_ch": 1}),
    );
}

#[test]
fn sessions_list_the_connected_mqtt_clients_with_their_subscriptions() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let read = token(&a, "read");
    let sub = mosquitto_sub(
        a.mqtt.port(),
        &[
            "-i",
            "kitchen-display",
            "-t",
            "devices/+/telemetry",
            "-t",
            "alarms/#",
            "-C",
            "1",
            "-W",
            "20",
        ],
    );
    let mut last = Value::Null;
    let found = wait_until(Duration::from_secs(15), || {
        last = get(&h, &a, "/v2/session", &read).json;
        last.as_array().is_some_and(|l| {
            l.iter().any(|s| {
                s["client_id"] == "kitchen-display"
                    && s["subscriptions"].as_array().is_some_and(|f| f.len() == 2)
            })
        })
    });
    assert!(found, "{last}");
    let s = last
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["client_id"] == "kitchen-display")
        .unwrap()
        .clone();
    assert_eq!(
        (s["proto_ver"].as_u64(), s["clean_sess"].as_bool()),
        (Some(4), Some(true))
    );
    assert!(s["ipaddress"].as_str().unwrap().starts_with("127.0.0.1:"));
    // Genba's own connections (bridge, command sink, probes) are not client sessions.
    assert!(last
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["username"] != "genba-internal"));
    // Gone once it disconnects.
    assert!(
        mosquitto_pub(a.mqtt.port(), &["-t", "alarms/x/y", "-m", "bye"])
            .status
            .success()
    );
    assert!(sub.wait_with_output().unwrap().status.success());
    assert!(wait_until(Duration::from_secs(10), || {
        get(&h, &a, "/v2/session", &read)
            .json
            .as_array()
            .is_some_and(|l| l.iter().all(|s| s["client_id"] != "kitchen-display"))
    }));
}

#[test]
fn telemetry_of_an_unknown_device_is_parked_and_stored_after_adding_it_and_retrying() {
    let a = Appliance::start("[devices]\nauto_provision = \"off\"\n", "");
    let h = Http::new();
    let read = token(&a, "read");
    assert!(mosquitto_pub(
        a.mqtt.port(),
        &[
            "-q",
            "1",
            "-t",
            "devices/walk-in/telemetry",
            "-m",
            r#"{"t": 8.0}"#
        ]
    )
    .status
    .success());
    assert!(wait_until(Duration::from_secs(15), || {
        let conn = rusqlite::Connection::open(a.db_path()).unwrap();
        conn.query_row(
            "SELECT COUNT(*) FROM parked WHERE reason LIKE '%unknown device%'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    }));
    assert_eq!(get(&h, &a, "/v2/device/walk-in", &read).status, 404);
    let (ok, out) = a.genba(&["devices", "add", "walk-in", "--name", "Walk-in"]);
    assert!(ok, "{out}");
    // Once the device is added, the console's Delivery page retries what was parked: the
    // message sent while it was unknown is stored then.
    let page = h.get(&a.url("/delivery"), &[]);
    assert_eq!(page.status, 200);
    let html = h.block_on(async {
        reqwest::get(a.url("/delivery"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(html.contains("Retry parked"), "{html}");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let retried = h.post(
        &a.url("/delivery/retry"),
        "application/x-www-form-urlencoded",
        format!("csrf={csrf}&sink=readings"),
        &[],
    );
    assert_eq!(retried.status, 200);
    let forged = h.post(
        &a.url("/delivery/retry"),
        "application/x-www-form-urlencoded",
        "csrf=wrong&sink=readings",
        &[],
    );
    assert_eq!(forged.status, 403, "no retry without the form's token");
    assert!(wait_until(Duration::from_secs(20), || {
        let s = get(
            &h,
            &a,
            "/v2/stream/walk-in/t?start=0&limit=10&sort=asc",
            &read,
        );
        s.json["points"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["value"] == 8.0))
    }));
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    let parked: i64 = conn
        .query_row("SELECT COUNT(*) FROM parked", [], |r| r.get(0))
        .unwrap();
    assert_eq!(parked, 0);
}

#[test]
fn cli_commands_refuse_bad_input_and_say_what_is_wrong() {
    let a = Appliance::start("", "");
    let (ok, out) = a.genba(&["devices", "add", "d1"]);
    assert!(ok, "{out}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["devices", "add", "bad id!"], "device id"),
        (vec!["devices", "add", "d1"], "exists already"),
        (vec!["devices", "show", "nope"], "no device"),
        (vec!["devices", "disable", "nope"], "no device"),
        (vec!["devices", "send", "nope", "x"], "no device"),
        (vec!["devices", "send", "d1", ""], "PAYLOAD"),
        (
            vec!["tokens", "add", "--name", "x", "--scope", "root"],
            "scope",
        ),
        (
            vec!["tokens", "add", "--name", "", "--scope", "read"],
            "name",
        ),
        (vec!["tokens", "revoke", "99"], "no API token"),
        (vec!["rules", "add", "{not json"], "does not read"),
        (
            vec![
                "rules",
                "add",
                r#"{"name":"x","stream":"t","condition":">"}"#,
            ],
            "threshold",
        ),
        (vec!["rules", "remove", "nope"], "no rule"),
        (vec!["alarms", "ack", "99", "--note", "fixed"], "no alarm"),
        (vec!["alarms", "ack", "1", "--note", " "], "--note"),
    ];
    for (args, needle) in cases {
        let (ok, out) = a.genba(&args);
        assert!(
            !ok && out.contains(needle),
            "{args:?} should fail saying {needle:?}: {out}"
        );
    }
}

#[test]
fn thingscale_mqtt_connector_and_user_service() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let admin = token(&a, "admin");
    let key = device_key(&a, "press-1");
    // DEVICE_TOKEN/json/DEVICE_ID/TAG with the device's key: stored as its telemetry, without
    // the token; a wrong token is refused and nothing is stored.
    let topic = format!("{key}/json/press-1/env");
    assert!(mosquitto_pub(
        a.mqtt.port(),
        &["-q", "1", "-t", &topic, "-m", r#"{"temp": 41.5}"#]
    )
    .status
    .success());
    refused_v5(&a, "not-the-key/json/press-1", r#"{"temp": 99}"#);
    let s = wait_json(
        &h,
        &a,
        "/v2/stream/press-1/temp?start=0&limit=10",
        &admin,
        |v| v["points"].as_array().is_some_and(|p| !p.is_empty()),
    );
    assert_eq!(s["points"].as_array().unwrap().len(), 1);
    assert_eq!(s["points"][0]["value"], 41.5);
    let journal = a.journal();
    assert!(journal
        .iter()
        .any(|(t, _)| t == "devices/press-1/telemetry/env"));
    assert!(
        !journal
            .iter()
            .any(|(t, p)| t.contains(&key) || p.contains("99")),
        "{journal:?}"
    );
    // The user service: API tokens, admin only.
    let made = h.call(
        "POST",
        &a.url("/v2/user"),
        &[("x-apitoken", &admin)],
        Some(br#"{"name":"dashboard","scope":"read"}"#),
    );
    assert_eq!(made.status, 201, "{}", made.json);
    let new_token = made.json["api_token"].as_str().unwrap().to_owned();
    assert_eq!(get(&h, &a, "/v2/device", &new_token).status, 200);
    assert_eq!(
        get(&h, &a, "/v2/user", &new_token).status,
        403,
        "read scope may not list users"
    );
    let listed = get(&h, &a, "/v2/user", &admin);
    assert_eq!(listed.json.as_array().unwrap().len(), 2);
    assert!(listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u.get("api_token").is_none()));
    let id = made.json["user_id"].as_i64().unwrap();
    let revoked = h.call(
        "DELETE",
        &a.url(&format!("/v2/user/{id}")),
        &[("x-apitoken", &admin)],
        None,
    );
    assert_eq!(
        (revoked.status, revoked.json["enabled"].as_bool()),
        (200, Some(false))
    );
    assert_eq!(get(&h, &a, "/v2/device", &new_token).status, 401);
    let bad = h.call(
        "POST",
        &a.url("/v2/user"),
        &[("x-apitoken", &admin)],
        Some(br#"{"name":"x","scope":"root"}"#),
    );
    assert_eq!(
        (bad.status, bad.json["field"].as_str()),
        (400, Some("scope"))
    );
}
