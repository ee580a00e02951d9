//! `genba devices provision` against a real data dir and config file: the config file it writes
//! decodes with the firmware core (the code the device runs), corrupt or truncated copies are
//! refused, and the credential inside works: the HTTP device's key posts telemetry at once, the
//! MQTT device logs in with its id and key with the firmware's own MQTT client at once,
//! and `genba simulate --device-config` runs devices from such files.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::http::Http;
use common::Appliance;
use embedded_io_adapters::tokio_1::FromTokio;
use genba_firmware_core::config::{
    decode_area, Credential, DeviceConfig, Error, Loaded, Transport, AREA_LEN, SLOT_LEN,
};
use genba_firmware_core::telemetry::{Reading, Telemetry};

fn appliance() -> Appliance {
    let hash = common::hash_password("admin-password");
    Appliance::start(
        &format!("[mqtt]\nallow_anonymous = false\n[[mqtt.users]]\nname = \"admin\"\npassword_hash = \"{hash}\"\n"),
        "",
    )
}

fn provision(a: &Appliance, id: &str, transport: &str, extra: &[&str]) -> (bool, String) {
    provision_for(a, "192.168.1.10", id, transport, extra)
}

fn provision_for(
    a: &Appliance,
    appliance: &str,
    id: &str,
    transport: &str,
    extra: &[&str],
) -> (bool, String) {
    let out = a.dir.path().join(format!("{id}.bin"));
    let out = out.to_str().unwrap();
    let args: Vec<&str> = ["--out", out].iter().chain(extra).copied().collect();
    common::provision(a, id, appliance, transport, &args)
}

fn decoded(a: &Appliance, id: &str) -> Loaded {
    let bytes = std::fs::read(a.dir.path().join(format!("{id}.bin"))).unwrap();
    assert_eq!(bytes.len(), AREA_LEN);
    decode_area(&bytes).expect("the firmware core decodes the provisioning file")
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn readings(a: &Appliance, device: &str) -> i64 {
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM readings WHERE device_id = ?1",
        [device],
        |r| r.get(0),
    )
    .unwrap()
}

fn batch(device: &str) -> Vec<u8> {
    let mut t = Telemetry::new(device, "2026-02-15T12:00:00Z", 1_771_156_800_000, -60).unwrap();
    t.push(Reading::new("28FF4C3A91160457", 3.5, -0.25).unwrap())
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = t.to_json(&mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn an_http_device_gets_a_config_file_whose_api_key_posts_telemetry() {
    let a = appliance();
    let (ok, out) = provision(
        &a,
        "fridge-http",
        "http",
        &[
            "--interval",
            "300",
            "--onewire-gpio",
            "5",
            "--offset",
            "28FF4C3A91160457=-0.25",
            "--json",
        ],
    );
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["flash_command"].as_str().unwrap().split(' ').nth(2),
        Some("0x3f0000")
    );
    assert_eq!(answer["credential"]["kind"], "api_key");
    assert!(
        !out.contains("wifi-pass-1234"),
        "a secret was printed: {out}"
    );

    let file = a.dir.path().join("fridge-http.bin");
    assert_eq!(mode(&file), 0o600);
    let loaded = decoded(&a, "fridge-http");
    let c: &DeviceConfig = &loaded.config;
    assert_eq!((loaded.slot, loaded.sequence), (0, 1));
    assert_eq!(c.device_id.as_str(), "fridge-http");
    assert_eq!(
        (c.wifi_ssid.as_str(), c.wifi_pass.as_str()),
        ("shop-floor", "wifi-pass-1234")
    );
    assert_eq!(c.host.as_str(), "192.168.1.10");
    assert_eq!((c.mqtt_port, c.http_port), (a.mqtt.port(), a.http.port()));
    assert_eq!((c.interval_s, c.pins.onewire, c.pins.led), (300, 5, 8));
    assert_eq!(c.offsets.get("28FF4C3A91160457"), -0.25);
    assert_eq!(c.transport(), Transport::Http);
    // no TLS on this appliance, so no local CA: nothing pinned
    assert_eq!(c.ca_sha256, None);
    assert_eq!(answer["pin"], serde_json::Value::Null);
    let Credential::ApiKey(key) = &c.credential else {
        panic!("an HTTP device carries an API key")
    };

    // the device is registered and its key works now, as the firmware sends it
    let (ok, list) = a.genba(&["devices", "list", "--json"]);
    assert!(ok && list.contains("\"fridge-http\""), "{list}");
    let http = Http::new();
    let url = a.url(c.telemetry_url().path);
    let post = |device: &str, headers: &[(&str, &str)]| {
        http.post(&url, "application/json", batch(device), headers)
    };
    let reply = post("fridge-http", &[]);
    assert_eq!(reply.status, 401, "no key: {}", reply.text);
    let with_key = [("X-API-Key", key.as_str())];
    let reply = post("fridge-http", &with_key);
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(readings(&a, "fridge-http"), 1);
    // the key is the device's own: it cannot post for another device
    let reply = post("fridge-other", &with_key);
    assert_eq!(reply.status, 403, "{}", reply.text);
}

/// SHA-256 of the certificate in a PEM file, computed here (not by genba).
fn pem_sha256(path: &Path) -> [u8; 32] {
    use base64::Engine as _;
    use sha2::Digest as _;
    let pem = std::fs::read_to_string(path).unwrap();
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    sha2::Sha256::digest(&der).into()
}

/// TLS on both transports, with a device account for MQTT devices.
fn tls_appliance() -> Appliance {
    let hash = common::hash_password("admin-password");
    Appliance::start(
        &format!(
            "[mqtt]\nallow_anonymous = false\ntls_listen = \"127.0.0.1:0\"\n\
             [[mqtt.users]]\nname = \"admin\"\npassword_hash = \"{hash}\"\n\
             [http]\ntls_listen = \"127.0.0.1:0\"\n"
        ),
        "",
    )
}

#[test]
fn a_device_pins_the_appliances_local_ca_or_what_pin_names_and_gets_the_tls_ports() {
    // With TLS on, the appliance makes its local CA at start.
    let a = tls_appliance();
    let ca = pem_sha256(&a.data_dir().join("tls").join("ca.pem"));
    let hex: String = ca.iter().map(|b| format!("{b:02x}")).collect();
    let (mqtts, https) = (a.endpoint("mqtts"), a.endpoint("https"));

    let (ok, out) = provision(&a, "fridge-pinned", "http", &["--json"]);
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["pin"].as_str(), Some(hex.as_str()), "{out}");
    let pinned = decoded(&a, "fridge-pinned").config;
    assert_eq!(pinned.ca_sha256, Some(ca));
    // a pinned device speaks only TLS: it is given the TLS ports
    assert_eq!(
        (pinned.mqtt_port, pinned.http_port),
        (mqtts.port(), https.port())
    );

    let (ok, out) = provision(&a, "fridge-unpinned", "http", &["--pin", "none"]);
    assert!(ok, "{out}");
    assert!(out.contains("pins no TLS fingerprint"), "{out}");
    let unpinned = decoded(&a, "fridge-unpinned").config;
    assert_eq!(unpinned.ca_sha256, None);
    assert_eq!(
        (unpinned.mqtt_port, unpinned.http_port),
        (a.mqtt.port(), a.http.port())
    );

    let other = "AB".repeat(32);
    let (ok, out) = provision(&a, "fridge-other", "http", &["--pin", &other]);
    assert!(ok, "{out}");
    assert!(out.contains(&"ab".repeat(32)), "{out}");
    assert!(
        out.contains(&format!("HTTPS (port {})", https.port())),
        "{out}"
    );
    assert_eq!(
        decoded(&a, "fridge-other").config.ca_sha256,
        Some([0xab; 32])
    );

    // A bad pin is refused before anything is created.
    let (ok, out) = provision(&a, "fridge-bad", "http", &["--pin", "abc"]);
    assert!(
        !ok && out.contains("--pin: \"abc\" is not a SHA-256"),
        "{out}"
    );
    assert!(!a.dir.path().join("fridge-bad.bin").exists());
    let (_, list) = a.genba(&["devices", "list", "--json"]);
    assert!(!list.contains("fridge-bad"), "{list}");
}

#[test]
fn a_pin_needs_the_transports_tls_listener() {
    // TLS on MQTT only: an HTTP device is not pinned by default, and cannot be pinned.
    let a = Appliance::start("[mqtt]\ntls_listen = \"127.0.0.1:0\"\n", "");
    let (ok, out) = provision(&a, "fridge-plain", "http", &[]);
    assert!(ok, "{out}");
    assert_eq!(decoded(&a, "fridge-plain").config.ca_sha256, None);
    let (ok, out) = provision(&a, "fridge-tls", "http", &["--pin", &"ab".repeat(32)]);
    assert!(!ok, "{out}");
    assert!(out.contains("serves no [http] tls_listen"), "{out}");
    assert!(!a.dir.path().join("fridge-tls.bin").exists());
}

#[test]
fn pinned_devices_deliver_over_tls_and_refuse_a_server_without_their_pin() {
    let a = tls_appliance();
    for (id, transport) in [("tls-mqtt", "mqtt"), ("tls-http", "http")] {
        let (ok, out) = provision_for(&a, "127.0.0.1", id, transport, &[]);
        assert!(ok, "{out}");
    }
    let (ok, out) = provision_for(
        &a,
        "127.0.0.1",
        "tls-stranger",
        "http",
        &["--pin", &"ab".repeat(32)],
    );
    assert!(ok, "{out}");
    // the broker takes the new MQTT account from its config file within seconds; the simulated
    // device retries until then
    let file = |id: &str| a.dir.path().join(format!("{id}.bin")).display().to_string();
    // MQTT over TLS (rumqttc under the core's pin rule) and HTTPS (the core's own session
    // and request, as the firmware sends it)
    let (ok, out) = a.genba(&[
        "simulate",
        "--device-config",
        &file("tls-mqtt"),
        "--device-config",
        &file("tls-http"),
        "--batches",
        "2",
        "--interval",
        "0.2",
    ]);
    assert!(ok, "{out}\nlog:\n{}", a.log());
    let stored = common::wait_until(Duration::from_secs(15), || {
        readings(&a, "tls-mqtt") == 4 && readings(&a, "tls-http") == 4
    });
    assert!(
        stored,
        "readings: {} MQTT, {} HTTPS; {out}",
        readings(&a, "tls-mqtt"),
        readings(&a, "tls-http")
    );

    // A device pinning another certificate refuses this appliance and sends nothing.
    let (ok, out) = a.genba(&[
        "simulate",
        "--device-config",
        &file("tls-stranger"),
        "--batches",
        "1",
        "--drain-timeout",
        "2",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "server certificate refused: no certificate of the server has the pinned SHA-256"
        ),
        "{out}"
    );
    assert_eq!(readings(&a, "tls-stranger"), 0);
}

/// A TCP proxy on loopback that sends connections to `decoy` until one of them has carried a
/// client's bytes (a TLS handshake tried there), and to `real` from then on: a device that
/// meets a stranger's server first and then finds its own appliance.
fn decoy_then_real(decoy: std::net::SocketAddr, real: std::net::SocketAddr) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn pipe(mut from: TcpStream, mut to: TcpStream) -> u64 {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
            total += n as u64;
        }
        let _ = to.shutdown(Shutdown::Write);
        total
    }

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let met_decoy = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let to_decoy = !met_decoy.load(Ordering::SeqCst);
            let Ok(server) = TcpStream::connect(if to_decoy { decoy } else { real }) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pipe(s2, c2));
            let met = met_decoy.clone();
            std::thread::spawn(move || {
                if pipe(client, server) > 0 && to_decoy {
                    met.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    port
}

#[test]
fn a_refused_server_is_counted_into_the_next_batch_that_reaches_the_appliance() {
    // The device pins appliance A's CA; its first connection meets appliance B (another CA).
    let a = tls_appliance();
    let b = tls_appliance();
    let (ok, out) = provision_for(&a, "127.0.0.1", "tls-met-stranger", "http", &[]);
    assert!(ok, "{out}");
    let mut device = decoded(&a, "tls-met-stranger").config;
    assert!(device.ca_sha256.is_some());
    device.http_port = decoy_then_real(b.endpoint("https"), a.endpoint("https"));
    let mut area = vec![0u8; AREA_LEN];
    device.area_image(&mut area).unwrap();
    let file = a.dir.path().join("tls-met-stranger-moved.bin");
    std::fs::write(&file, &area).unwrap();

    let (ok, out) = a.genba(&[
        "simulate",
        "--device-config",
        file.to_str().unwrap(),
        "--batches",
        "4",
        "--sensors",
        "1",
        "--interval",
        "0.5",
    ]);
    assert!(ok, "{out}\nlog:\n{}", a.log());
    assert!(
        out.contains(
            "server certificate refused: no certificate of the server has the pinned SHA-256"
        ),
        "{out}"
    );
    // Every batch arrives, and the one made after the refusal says so: one refused server.
    let counted = || -> Option<f64> {
        let conn = rusqlite::Connection::open(a.db_path()).unwrap();
        conn.query_row(
            "SELECT SUM(p.value) FROM points p JOIN streams s ON s.id = p.stream_id \
             WHERE s.device_id = ?1 AND s.name = 'tls_refused'",
            ["tls-met-stranger"],
            |r| r.get(0),
        )
        .unwrap()
    };
    let stored = common::wait_until(Duration::from_secs(15), || {
        readings(&a, "tls-met-stranger") == 4 && counted().is_some()
    });
    assert!(
        stored,
        "readings: {}; {out}",
        readings(&a, "tls-met-stranger")
    );
    assert_eq!(counted(), Some(1.0), "{out}");
}

#[test]
fn a_corrupt_or_truncated_provisioning_file_is_refused_by_the_core() {
    let a = appliance();
    let (ok, out) = provision(&a, "freezer-1", "http", &[]);
    assert!(ok, "{out}");
    assert!(out.contains("espflash write-bin 0x3f0000"), "{out}");
    let bytes = std::fs::read(a.dir.path().join("freezer-1.bin")).unwrap();
    let mut corrupt = bytes.clone();
    corrupt[40] ^= 0x01;
    assert!(matches!(
        decode_area(&corrupt),
        Err(Error::BadChecksum { .. })
    ));
    assert_eq!(decode_area(&bytes[..SLOT_LEN - 1]), Err(Error::Truncated));
    let record_len = 12 + usize::from(u16::from_le_bytes([bytes[6], bytes[7]])) + 4;
    let mut cut = bytes.clone();
    cut[record_len - 2..].fill(0xFF);
    assert!(
        decode_area(&cut).is_err(),
        "a record cut short (torn write) decoded"
    );
    let mut future = bytes;
    future[4] = 9;
    assert_eq!(decode_area(&future), Err(Error::UnsupportedVersion(9)));
}

#[test]
fn bad_settings_are_refused_before_anything_is_created() {
    let a = appliance();
    for (args, expect) in [
        (vec!["--led-gpio", "4"], "LED GPIO"),
        (vec!["--onewire-gpio", "12"], "1-Wire GPIO"),
        (vec!["--interval", "2"], "report interval"),
        (vec!["--offset", "28FF=11"], "--offset"),
    ] {
        let (ok, out) = provision(&a, "bad-1", "http", &args);
        assert!(!ok, "{args:?} accepted: {out}");
        assert!(out.contains(expect), "{args:?}: {out}");
    }
    let (ok, out) = provision(&a, "no/slash", "http", &[]);
    assert!(!ok && out.contains("device id"), "{out}");
    let (_, keys) = a.genba(&["keys", "list", "--json"]);
    assert!(
        !keys.contains("bad-1"),
        "a key was made for a refused device: {keys}"
    );
    let (_, list) = a.genba(&["devices", "list", "--json"]);
    assert!(!list.contains("bad-1"), "{list}");
    assert!(!a.dir.path().join("bad-1.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_device_logs_in_with_its_device_key_at_once_with_the_firmware_client() {
    let a = appliance();
    let config_before = std::fs::read_to_string(a.dir.path().join("genba.toml")).unwrap();
    let (ok, out) = provision(&a, "fridge-mqtt", "mqtt", &["--json"]);
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["credential"]["kind"], "device_key", "{out}");
    assert_eq!(answer["credential"]["username"], "fridge-mqtt", "{out}");
    // the credential is a device key in the database: the config file is left alone
    let config_after = std::fs::read_to_string(a.dir.path().join("genba.toml")).unwrap();
    assert_eq!(config_before, config_after);
    let (_, keys) = a.genba(&["keys", "list", "--json"]);
    assert!(keys.contains("\"fridge-mqtt\""), "{keys}");

    let loaded = decoded(&a, "fridge-mqtt");
    let c = loaded.config;
    assert_eq!(c.transport(), Transport::Mqtt);
    assert_eq!(c.mqtt_port, a.mqtt.port());
    let Credential::Mqtt { username, password } = &c.credential else {
        panic!("an MQTT device carries a user and password")
    };
    assert_eq!(username.as_str(), "fridge-mqtt");
    // in force at once, with a stock MQTT client too
    let out = common::mosquitto_pub(
        a.mqtt.port(),
        &[
            "-u",
            username.as_str(),
            "-P",
            password.as_str(),
            "-t",
            "devices/fridge-mqtt/hello",
            "-m",
            "x",
            "-q",
            "1",
        ],
    );
    assert!(out.status.success(), "{out:?}\nlog:\n{}", a.log());
    // the firmware's client, configured from the decoded file as the firmware configures it
    let (mut rx, mut tx) = ([0u8; 2048], [0u8; 2048]);
    let mut session = minimq::Session::new(
        minimq::ConfigBuilder::new(minimq::Buffers::new(&mut rx, &mut tx))
            .client_id(&c.device_id)
            .unwrap()
            .auth(username, password.as_bytes())
            .unwrap()
            .keepalive_interval(30),
    );
    let io = FromTokio::new(tokio::net::TcpStream::connect(a.mqtt).await.unwrap());
    let mut conn = session
        .connect(io)
        .await
        .expect("the provisioned device logs in");
    let json = batch("fridge-mqtt");
    let topic = format!("devices/{}/telemetry", c.device_id);
    conn.publish(
        minimq::Publication::new(topic.as_str(), json.as_slice()).qos(minimq::QoS::AtLeastOnce),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while readings(&a, "fridge-mqtt") < 1 {
        assert!(
            Instant::now() < deadline,
            "no reading stored; log:\n{}",
            a.log()
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), conn.poll()).await;
    }
}

#[test]
fn simulated_devices_run_from_their_provisioning_files() {
    let mut a = appliance();
    for (id, transport) in [("sim-mqtt", "mqtt"), ("sim-http", "http")] {
        let (ok, out) = provision_for(&a, "127.0.0.1", id, transport, &[]);
        assert!(ok, "{out}");
    }
    a.terminate();
    a.spawn();
    let files: Vec<String> = ["sim-mqtt", "sim-http"]
        .iter()
        .map(|id| a.dir.path().join(format!("{id}.bin")).display().to_string())
        .collect();
    let (ok, out) = a.genba(&[
        "simulate",
        "--device-config",
        &files[0],
        "--device-config",
        &files[1],
        "--batches",
        "2",
        "--interval",
        "0.2",
    ]);
    assert!(ok, "{out}\nlog:\n{}", a.log());
    let summary: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(
        (summary["devices"].as_u64(), summary["sent"].as_u64()),
        (Some(2), Some(4)),
        "{out}"
    );
    // two batches of two probes each, per device, under the ids in the files (MQTT readings
    // reach the table through the journal's consumer, a moment after the PUBACK)
    let stored = common::wait_until(Duration::from_secs(15), || {
        readings(&a, "sim-mqtt") == 4 && readings(&a, "sim-http") == 4
    });
    assert!(
        stored,
        "readings: {} MQTT, {} HTTP",
        readings(&a, "sim-mqtt"),
        readings(&a, "sim-http")
    );
}
