//! `genba firmware` (issue 13 item 5, the appliance's side of updates): an image is checked by
//! the firmware core before it is kept, kept once under its SHA-256, listed, served to devices
//! at `GET /firmware/SHA256.bin` byte for byte, named in the `update` command `genba devices
//! update` publishes (as the core parses it), and removed. A whole-flash board image keeps its
//! app for updates and the whole file for new boards.

mod common;

use common::http::Http;
use common::Appliance;
use genba_firmware_core::{board, image};
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `genba firmware add FILE --json`: (ok, output).
fn add_image(a: &Appliance, file: &std::path::Path) -> (bool, String) {
    a.genba(&["firmware", "add", file.to_str().unwrap(), "--json"])
}

#[test]
fn an_image_is_checked_kept_once_listed_served_and_removed() {
    let a = Appliance::start("", "");
    let dir = a.dir.path();
    let good = image::sample("1.4.0", "genba-fw-esp32c3");
    let sha = sha256_hex(&good);
    std::fs::write(dir.join("good.bin"), &good).unwrap();
    let add = |file: &str| add_image(&a, &dir.join(file));

    let (ok, out) = add("good.bin");
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["new"], true);
    assert_eq!(answer["image"]["version"], "1.4.0");
    assert_eq!(answer["image"]["project"], "genba-fw-esp32c3");
    assert_eq!(answer["image"]["sha256"], sha.as_str());
    assert_eq!(answer["image"]["size"], good.len());
    let (ok, out) = add("good.bin");
    assert!(ok, "{out}");
    assert!(out.contains("\"new\": false"), "the same file twice: {out}");

    // Refused, each with its reason, and nothing kept.
    let mut damaged = good.clone();
    damaged[300] ^= 0x40;
    std::fs::write(dir.join("damaged.bin"), &damaged).unwrap();
    let mut other_chip = image::sample("1.4.0", "genba-fw-esp32c3");
    other_chip[12] = 0x09; // the ESP32-S3's chip id; its hash no longer matches either
    std::fs::write(dir.join("s3.bin"), &other_chip).unwrap();
    std::fs::write(
        dir.join("fw.elf"),
        b"\x7fELF\x01\x01\x01 not an app image at all, no",
    )
    .unwrap();
    std::fs::write(dir.join("huge.bin"), vec![0xe9u8; image::SLOT_LEN + 1]).unwrap();
    let spaced = image::sample("1.4.0 beta", "genba-fw-esp32c3");
    std::fs::write(dir.join("spaced.bin"), spaced).unwrap();
    for (file, reason) in [
        ("damaged.bin", "does not match its appended SHA-256"),
        ("s3.bin", "not the ESP32-C3"),
        ("fw.elf", "too short"),
        ("huge.bin", "larger than a device's OTA slot"),
        ("spaced.bin", "devices report at most 16 characters"),
        ("missing.bin", "No such file"),
    ] {
        let (ok, out) = add(file);
        assert!(!ok && out.contains(reason), "{file}: {out}");
    }
    let (ok, list) = a.genba(&["firmware", "list", "--json"]);
    assert!(ok, "{list}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let kept: Vec<_> = std::fs::read_dir(a.data_dir().join("firmware"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(kept, [format!("{sha}.bin")]);

    // Devices fetch it by its SHA-256, without credentials, byte for byte.
    let http = Http::new();
    let client = http.client();
    let url = a.url(&format!("/firmware/{sha}.bin"));
    let (status, etag, body) = http.block_on(async {
        let r = client.get(&url).send().await.unwrap();
        let etag = r
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        (r.status().as_u16(), etag, r.bytes().await.unwrap())
    });
    assert_eq!(status, 200);
    assert_eq!(etag, Some(format!("\"{sha}\"")));
    assert_eq!(&body[..], &good[..]);
    for path in [
        format!("/firmware/{}.bin", "0".repeat(64)),
        "/firmware/..%2Fgenba.sqlite3".to_owned(),
        format!("/firmware/{}.bin", sha.to_uppercase()),
    ] {
        let r = http.get(&a.url(&path), &[]);
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        assert!(r.json["error"].is_string(), "{path}: {}", r.text);
    }

    // `genba devices update` tells a device to install it: a command the firmware core parses
    // into the image's version, SHA-256 and size, whose download path serves these bytes.
    let (ok, out) = a.genba(&["devices", "add", "fridge-1"]);
    assert!(ok, "{out}");
    let sub = common::mosquitto_sub(
        a.mqtt.port(),
        &["-t", "devices/fridge-1/commands", "-C", "1", "-W", "10"],
    );
    let (ok, out) = a.genba(&["devices", "update", "fridge-1", "1.4.0"]);
    assert!(ok, "{out}");
    let got = sub.wait_with_output().unwrap();
    let payload = String::from_utf8_lossy(&got.stdout).trim().to_owned();
    let cmd = genba_firmware_core::command::Command::parse(payload.as_bytes())
        .unwrap_or_else(|e| panic!("{e}: {payload}"));
    let genba_firmware_core::command::Command::Update {
        version,
        sha256,
        size,
    } = cmd
    else {
        panic!("not an update: {payload}")
    };
    assert_eq!((version.as_str(), size as usize), ("1.4.0", good.len()));
    let path = image::download_path(&sha256);
    assert_eq!(path.as_str(), format!("/firmware/{sha}.bin"));
    let fetched = http.block_on(async {
        let r = client.get(a.url(&path)).send().await.unwrap();
        r.bytes().await.unwrap()
    });
    assert_eq!(sha256_hex(&fetched), sha);
    // The request is recorded for the console's Firmware page.
    let asked: (String, String, String) = rusqlite::Connection::open(a.db_path())
        .unwrap()
        .query_row(
            "SELECT version, sha256, requested_by FROM update_requests WHERE device_id = 'fridge-1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(asked, ("1.4.0".into(), sha.clone(), "cli".into()));
    for (args, reason) in [
        (
            vec!["devices", "update", "fridge-1", "9.9.9"],
            "no firmware image",
        ),
        (vec!["devices", "update", "nobody", "1.4.0"], "no device"),
    ] {
        let (ok, out) = a.genba(&args);
        assert!(!ok && out.contains(reason), "{args:?}: {out}");
    }

    // The API lists it with the devices whose last batch reported its version.
    let (ok, out) = a.genba(&["tokens", "add", "--name", "ro", "--scope", "read", "--json"]);
    assert!(ok, "{out}");
    let token: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let (ok, out) = a.genba(&["keys", "add", "--device", "fridge-1", "--json"]);
    assert!(ok, "{out}");
    let key: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    let body = r#"{"device_id":"fridge-1","recorded_at":"2026-02-15T12:00:00Z","ts_device":1771156800000,"fw":"1.4.0","readings":[{"sensor_hw_id":"28FF4C3A91160457","raw_celsius":3.5,"offset_c":0,"celsius":3.5}]}"#;
    let posted = http.post(
        &a.url("/api/telemetry"),
        "application/json",
        body.as_bytes().to_vec(),
        &[("X-API-Key", key.as_str())],
    );
    assert_eq!(posted.status, 200, "{}", posted.text);
    let listed = || http.get(&a.url("/v2/firmware"), &[("x-apitoken", token.as_str())]);
    assert!(
        common::wait_until(std::time::Duration::from_secs(15), || {
            listed().json[0]["devices"] == serde_json::json!(["fridge-1"])
        }),
        "{}",
        listed().text
    );
    let first = &listed().json[0];
    assert_eq!(first["sha256"], sha.as_str());
    assert_eq!(first["version"], "1.4.0");
    assert_eq!(first["path"], format!("/firmware/{sha}.bin"));
    assert_eq!(http.get(&a.url("/v2/firmware"), &[]).status, 401);

    // The API asks for an update as the console and the CLI do, and says where it stands.
    let (ok, out) = a.genba(&[
        "tokens", "add", "--name", "ops", "--scope", "write", "--json",
    ]);
    assert!(ok, "{out}");
    let ops: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ops = ops["token"].as_str().unwrap().to_owned();
    let ask = |device: &str, body: &str, token: &str| {
        http.post(
            &a.url(&format!("/v2/device/{device}/update")),
            "application/json",
            body.as_bytes().to_vec(),
            &[("x-apitoken", token)],
        )
    };
    for (device, body, token, status, field) in [
        ("fridge-1", r#"{}"#, ops.as_str(), 400, "firmware"),
        (
            "fridge-1",
            r#"{"firmware":42}"#,
            ops.as_str(),
            400,
            "firmware",
        ),
        (
            "fridge-1",
            r#"{"firmware":"9.9.9"}"#,
            ops.as_str(),
            404,
            "firmware",
        ),
        (
            "nobody",
            r#"{"firmware":"1.4.0"}"#,
            ops.as_str(),
            404,
            "device_id",
        ),
        (
            "fridge-1",
            r#"{"firmware":"1.4.0"}"#,
            token.as_str(),
            403,
            "",
        ),
        ("fridge-1", r#"{"firmware":"1.4.0"}"#, "", 401, ""),
    ] {
        let r = ask(device, body, token);
        assert_eq!(r.status, status, "{device} {body}: {}", r.text);
        if !field.is_empty() {
            assert_eq!(r.json["field"], field, "{}", r.text);
        }
    }
    let sub = common::mosquitto_sub(
        a.mqtt.port(),
        &["-t", "devices/fridge-1/commands", "-C", "1", "-W", "10"],
    );
    std::thread::sleep(std::time::Duration::from_millis(300)); // subscribed first
    let r = ask("fridge-1", r#"{"firmware":"1.4.0"}"#, &ops);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["requested_by"], "api:ops");
    assert_eq!(
        r.json["state"], "running",
        "fridge-1 reported 1.4.0 already"
    );
    let got = sub.wait_with_output().unwrap();
    let payload = String::from_utf8_lossy(&got.stdout).trim().to_owned();
    assert!(
        payload.contains(&format!("\"sha256\":\"{sha}\""))
            && payload.contains("\"cmd\":\"update\""),
        "{payload}"
    );
    let r = http.get(
        &a.url("/v2/device/fridge-1/update"),
        &[("x-apitoken", token.as_str())],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (r.json["version"].as_str(), r.json["firmware"].as_str()),
        (Some("1.4.0"), Some("1.4.0"))
    );

    // Removed by version: the row and the file go, and it is no longer served.
    let (ok, out) = a.genba(&["firmware", "remove", "1.4.0"]);
    assert!(ok && out.contains(&sha), "{out}");
    assert!(!a
        .data_dir()
        .join("firmware")
        .join(format!("{sha}.bin"))
        .exists());
    assert_eq!(http.get(&url, &[]).status, 404);
    let (ok, out) = a.genba(&["firmware", "remove", "1.4.0"]);
    assert!(!ok && out.contains("no firmware image"), "{out}");
}

/// A multipart/form-data body: (field name, file name, bytes) in order.
#[test]
fn a_board_image_keeps_its_app_for_updates_and_the_whole_flash_for_new_boards() {
    let a = Appliance::start("", "");
    let dir = a.dir.path();
    let app = image::sample("1.5.0", "genba-fw-esp32c3");
    let sha = sha256_hex(&app);
    let whole = board::sample(&app);
    std::fs::write(dir.join("full.bin"), &whole).unwrap();
    let mut moved = whole.clone();
    // the config partition (the 6th entry) somewhere the firmware does not read it
    let at = board::TABLE_AT + 5 * 32 + 4;
    moved[at..at + 4].copy_from_slice(&0x3e_0000u32.to_le_bytes());
    std::fs::write(dir.join("moved.bin"), &moved).unwrap();
    let add = |file: &str| add_image(&a, &dir.join(file));

    let (ok, out) = add("moved.bin");
    assert!(!ok && out.contains("no config partition"), "{out}");
    let (ok, out) = add("full.bin");
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["image"]["sha256"],
        sha.as_str(),
        "the app's hash names it"
    );
    assert_eq!(answer["image"]["size"], app.len());
    assert_eq!(answer["image"]["version"], "1.5.0");
    assert_eq!(answer["image"]["board_size"], board::FLASH_LEN);

    let http = Http::new();
    for (path, expected) in [
        (format!("/firmware/{sha}.bin"), &app[..]),
        (format!("/firmware/{sha}-board.bin"), &whole[..]),
    ] {
        let url = a.url(&path);
        let body = http.block_on(async {
            let r = http.client().get(&url).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "{path}");
            r.bytes().await.unwrap()
        });
        assert!(&body[..] == expected, "{path}: {} bytes", body.len());
    }

    let (ok, out) = a.genba(&["firmware", "remove", "1.5.0"]);
    assert!(ok, "{out}");
    let left = std::fs::read_dir(a.data_dir().join("firmware"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "the app and the board image are both removed");
    let r = http.get(&a.url(&format!("/firmware/{sha}-board.bin")), &[]);
    assert_eq!(r.status, 404, "{}", r.text);
}

fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "genba-test-7d3f1a";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn a_pi_update_bundle_uploaded_on_the_console_is_kept_whole_for_the_installer() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let page = h.get(&a.url("/firmware"), &[]);
    assert_eq!(page.status, 200);
    assert!(page.text.contains("id=\"pi-upload\""), "{}", page.text);
    assert!(page.text.contains("not the SD-card image"), "{}", page.text);
    let csrf = page
        .text
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let kept = a.data_dir().join("updates").join("genba-update.raucb");

    // Larger than the bridge's body limit for forms (1 MiB) and axum's default (2 MiB).
    let mut bundle = b"hsqs".to_vec();
    bundle.extend((0..3_000_000u32).map(|i| (i % 251) as u8));
    let upload = |parts: &[(&str, Option<&str>, &[u8])]| {
        let (content_type, body) = multipart(parts);
        h.post(&a.url("/firmware/pi-update"), &content_type, body, &[])
    };

    // Refused, each with its reason, and nothing kept.
    let r = upload(&[
        ("csrf", None, b"wrong"),
        ("bundle", Some("u.raucb"), &bundle),
    ]);
    assert_eq!(r.status, 403, "{}", r.text);
    let r = upload(&[
        ("csrf", None, csrf.as_bytes()),
        (
            "bundle",
            Some("fw.bin"),
            b"\xe9\x03 an ESP32 image, not a bundle",
        ),
    ]);
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("not a RAUC update bundle"), "{}", r.text);
    let r = upload(&[
        ("csrf", None, csrf.as_bytes()),
        ("bundle", Some("e.raucb"), b""),
    ]);
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("empty"), "{}", r.text);
    let r = upload(&[("csrf", None, csrf.as_bytes())]);
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("Choose the update bundle"), "{}", r.text);
    assert!(!kept.exists());
    let left: Vec<_> = std::fs::read_dir(a.data_dir().join("updates"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no partial files left: {left:?}");

    // Kept byte for byte, and the page says a bundle waits.
    let r = upload(&[
        ("csrf", None, csrf.as_bytes()),
        ("bundle", Some("genba-0.1.0-rpi-arm64.raucb"), &bundle),
    ]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("Update bundle received"), "{}", r.text);
    assert!(r.text.contains("id=\"pi-pending\""), "{}", r.text);
    assert_eq!(std::fs::read(&kept).unwrap(), bundle);

    // The installer's results show on the page, newest first.
    std::fs::write(
        a.data_dir().join("updates").join("result.txt"),
        "2026-12-01T10:00:00Z refused genba-update.raucb: signature\n2026-12-02T10:00:00Z updated: slot B (0.1.0 abc) is ready and kept\n",
    )
    .unwrap();
    let page = h.get(&a.url("/firmware"), &[]);
    let results = page
        .text
        .split("id=\"pi-results\"")
        .nth(1)
        .unwrap_or_default();
    let kept_at = results.find("is ready and kept").unwrap();
    let refused_at = results.find("refused genba-update.raucb").unwrap();
    assert!(kept_at < refused_at, "{results}");
}

#[test]
fn a_pi_update_bundle_put_on_the_api_is_kept_for_the_installer_and_its_state_is_read_back() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let (admin, write) = (a.api_token("admin"), a.api_token("write"));
    let url = a.url("/v2/system/update");
    let kept = a.data_dir().join("updates").join("genba-update.raucb");
    let put = |token: &str, body: &[u8]| {
        let req = h
            .client()
            .put(&url)
            .header("x-apitoken", token)
            .header("content-type", "application/octet-stream")
            .body(body.to_vec());
        h.block_on(common::http::send(req))
    };
    let mut bundle = b"hsqs".to_vec();
    // Larger than a socket buffer: a refusal must read it, or the client gets a broken pipe.
    bundle.extend((0..12_000_000u32).map(|i| (i % 253) as u8));

    // Off the SD-card image: no slot, no release, nothing waiting.
    let r = h.get(&url, &[("x-apitoken", &write)]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["slot"], serde_json::Value::Null);
    assert_eq!(r.json["pending"], false);

    // Refused: no token, a token below admin, a file that is not a bundle, an empty body.
    let r = h.call("PUT", &url, &[], Some(b"hsqs"));
    assert_eq!(r.status, 401, "{}", r.text);
    let r = put(&write, &bundle);
    assert_eq!(r.status, 403, "{}", r.text);
    let r = put(&admin, b"\xe9\x03 an ESP32 image");
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (422, Some("NOT_A_BUNDLE"))
    );
    assert_eq!(r.json["field"], "body");
    let r = put(&admin, b"");
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(
        r.json["message"].as_str().unwrap().contains("empty"),
        "{}",
        r.text
    );
    assert!(!kept.exists());

    // Kept byte for byte, and shown as waiting with the installer's results.
    let r = put(&admin, &bundle);
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["bytes"], bundle.len());
    assert_eq!(std::fs::read(&kept).unwrap(), bundle);
    std::fs::write(
        a.data_dir().join("updates").join("result.txt"),
        "2026-12-01T10:00:00Z refused genba-update.raucb: signature\n2026-12-02T10:00:00Z updated: slot B (0.1.0 abc) is ready and kept\n",
    )
    .unwrap();
    let r = h.get(&url, &[("x-apitoken", &write)]);
    assert_eq!(r.json["pending"], true);
    let results = r.json["results"].as_array().unwrap();
    assert!(
        results[0].as_str().unwrap().contains("is ready and kept"),
        "{}",
        r.text
    );
    assert_eq!(results.len(), 2);
}
