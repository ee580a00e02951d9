//! The HTTP bridge started in-process on a listener the test bound itself (port 0), with a
//! real journal in a temporary SQLite file, spoken to in plain HTTP/1.1 over a real socket: no
//! binary to spawn and no port picked in advance.

use std::net::SocketAddr;
use std::time::Duration;

use genba_bridge::{start, BridgeSettings, Listeners};
use genba_store::{Journal, Reader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One JSON request on its own connection; the raw answer.
async fn exchange(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    request(addr, method, path, "genba", "application/json", body).await
}

/// One request on its own connection, with this Host and Content-Type; the raw answer.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    content_type: &str,
    body: &str,
) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
}

fn json_body(answer: &str) -> serde_json::Value {
    let (_, body) = answer.split_once("\r\n\r\n").expect("no header end");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// A bridge on `db` without a broker (messages are journaled and answered all the same), whose
/// devices reach the broker on port 1883 of any address, without TLS.
fn settings(dir: &std::path::Path, db: &std::path::Path) -> BridgeSettings {
    BridgeSettings {
        http: genba_config::HttpConfig::default(),
        broker: "127.0.0.1:9".into(),
        internal_user: "genba-internal".into(),
        internal_secret: "an internal secret of some length".into(),
        db_path: db.to_owned(),
        telemetry: Default::default(),
        provision_http: false,
        console: Default::default(),
        exment: Default::default(),
        sinks: Vec::new(),
        tls: None,
        metrics_dir: None,
        firmware_dir: dir.join("firmware"),
        updates_dir: dir.join("updates"),
        live: None,
        device_mqtt: "0.0.0.0:1883".parse().unwrap(),
        device_mqtts: None,
        local_ca: None,
        usb_ports: None,
    }
}

/// A bridge started in-process on a port-0 listener, on a journal in `dir`'s `genba.sqlite3`;
/// the sender stops it.
async fn start_bridge(
    dir: &std::path::Path,
) -> (
    genba_bridge::RunningBridge,
    tokio::sync::watch::Sender<bool>,
    std::path::PathBuf,
) {
    start_bridge_with(dir, |_| {}).await
}

/// [`start_bridge`] with settings changed by `tweak`.
async fn start_bridge_with(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut BridgeSettings),
) -> (
    genba_bridge::RunningBridge,
    tokio::sync::watch::Sender<bool>,
    std::path::PathBuf,
) {
    let db = dir.join("genba.sqlite3");
    let journal = Journal::start(&db, 64, 64).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let listeners = Listeners {
        http: listener,
        https: None,
    };
    let mut settings = settings(dir, &db);
    tweak(&mut settings);
    let bridge = start(settings, listeners, journal, shutdown).await.unwrap();
    (bridge, stop, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_on_a_bound_listener_journals_a_notify_before_answering_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, stop, db) = start_bridge(dir.path()).await;

    let answer = exchange(
        bridge.addr,
        "POST",
        "/notify",
        r#"{"topic":"notify/line-2","message":"in process"}"#,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let id = json_body(&answer)["id"].as_i64().expect("an id");
    let rows = Reader::open(&db).unwrap().after(0, 10).unwrap();
    let row = rows
        .iter()
        .find(|r| r.id == id)
        .expect("answered but not journaled");
    assert_eq!(row.topic, "notify/line-2");

    // A bad body names its field and stores nothing.
    let refused = exchange(bridge.addr, "POST", "/notify", r#"{"message": 5}"#).await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert_eq!(json_body(&refused)["field"], "message", "{refused}");
    assert_eq!(
        Reader::open(&db).unwrap().after(0, 10).unwrap().len(),
        rows.len()
    );

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), bridge.done)
        .await
        .expect("the bridge did not stop within 15 s of shutdown")
        .unwrap();
    assert!(
        TcpStream::connect(bridge.addr).await.is_err(),
        "the port still accepts after shutdown"
    );
}

/// The text between `after` and the next `"` in `page`.
fn attribute_after<'a>(page: &'a str, after: &str) -> &'a str {
    let start = page
        .find(after)
        .unwrap_or_else(|| panic!("no {after} in {page}"))
        + after.len();
    let len = page[start..].find('"').expect("unterminated attribute");
    &page[start..start + len]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_provisions_a_thermometer_whose_file_holds_its_own_registered_key() {
    use base64::Engine;
    use genba_firmware_core::config::{decode_area, Credential};

    let dir = tempfile::tempdir().unwrap();
    let (bridge, stop, db) = start_bridge(dir.path()).await;
    let (addr, host) = (bridge.addr, "192.168.7.2:8080");
    let form = "application/x-www-form-urlencoded";

    // The form offers the address the browser reached the Pi at, and the defaults.
    let page = request(addr, "GET", "/provision", host, "", "").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert_eq!(
        attribute_after(&page, r#"name="appliance" value=""#),
        "192.168.7.2"
    );
    assert_eq!(
        attribute_after(
            &page,
            r#"name="interval" type="number" min="5" max="86400" value=""#
        ),
        "60"
    );
    let csrf = attribute_after(&page, r#"name="csrf" value=""#).to_owned();
    let post = |fields: &str| {
        format!("csrf={csrf}&{fields}&appliance=192.168.7.2&transport=mqtt&interval=30&onewire_gpio=4&led_gpio=8&offsets=&ntp_server=pool.ntp.org&pin=")
    };
    let registered = |id: &'static str| {
        let db = db.clone();
        move || {
            let conn = genba_store::open(&db).unwrap();
            genba_store::devices::get(&conn, id).unwrap().is_some()
        }
    };

    // A short pass phrase is refused with its field marked; nothing is registered.
    let refused = request(
        addr,
        "POST",
        "/provision",
        host,
        form,
        &post("id=fridge-9&wifi_ssid=shop&wifi_pass=short"),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 422"), "{refused}");
    assert!(
        refused.contains(
            r#"id="wifi_pass" name="wifi_pass" type="password" maxlength="63" aria-invalid="true""#
        ),
        "{refused}"
    );
    assert!(refused.contains("(wifi_pass)"), "{refused}");
    assert!(!refused.contains("short"), "the pass phrase is not echoed");
    assert!(!registered("fridge-9")());
    // A form without its CSRF token changes nothing either.
    let forged = request(addr, "POST", "/provision", host, form, "id=fridge-9&wifi_ssid=shop&wifi_pass=a+long+pass+phrase&interval=30&onewire_gpio=4&led_gpio=8").await;
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    assert!(!registered("fridge-9")());

    // A board image is kept: the answer offers it for a new board's first flash.
    let image = genba_store::firmware::FirmwareImage {
        sha256: "ab".repeat(32),
        version: "1.5.0".into(),
        project: "genba-fw-esp32c3".into(),
        size: 675_472,
        added_at_ms: 1,
        board_size: Some(4 << 20),
    };
    genba_store::firmware::add(&genba_store::open(&db).unwrap(), &image).unwrap();

    let done = request(
        addr,
        "POST",
        "/provision",
        host,
        form,
        &post("id=fridge-9&wifi_ssid=shop&wifi_pass=a+long+pass+phrase"),
    )
    .await;
    assert!(done.starts_with("HTTP/1.1 200"), "{done}");
    let board_link = format!(
        r#"href="/firmware/{}-board.bin" download="genba-fw-1.5.0-board.bin""#,
        image.sha256
    );
    assert!(done.contains(&board_link), "{done}");
    // the page's script puts the config into that board image at the config partition
    let whole = format!(
        r#"id="whole" hidden data-board="/firmware/{}-board.bin" data-name="fridge-9.genba-board.bin" data-offset="4128768""#,
        image.sha256
    );
    assert!(done.contains(&whole), "{done}");
    assert!(
        done.contains("espflash write-bin 0x0 genba-fw-1.5.0-board.bin"),
        "{done}"
    );
    assert!(
        done.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{done}"
    );
    assert!(
        done.contains("espflash write-bin 0x3f0000 fridge-9.genba-config.bin"),
        "{done}"
    );
    let file = base64::engine::general_purpose::STANDARD
        .decode(attribute_after(
            &done,
            "data:application/octet-stream;base64,",
        ))
        .unwrap();
    let device = decode_area(&file)
        .expect("the firmware core reads the file")
        .config;
    assert_eq!(device.device_id.as_str(), "fridge-9");
    assert_eq!(device.wifi_pass.as_str(), "a long pass phrase");
    assert_eq!(
        (device.host.as_str(), device.mqtt_port, device.interval_s),
        ("192.168.7.2", 1883, 30)
    );
    let Credential::Mqtt { username, password } = &device.credential else {
        panic!(
            "an MQTT device logs in with a username: {:?}",
            device.credential
        );
    };
    assert_eq!(username.as_str(), "fridge-9");
    assert!(registered("fridge-9")());
    let conn = genba_store::open(&db).unwrap();
    let key = genba_telemetry::keys::authorize(&conn, password, "telemetry:write")
        .expect("the key in the file is registered");
    assert_eq!(key.device_id, "fridge-9");

    stop.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(15), bridge.done).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_writes_a_board_plugged_into_the_pi_before_registering_it() {
    use genba_firmware_core::board;
    use genba_firmware_core::config::{decode_area, Credential, AREA_LEN, PARTITION_OFFSET};
    use genba_testkit::fake_esp_rom::FakeBoard;

    let dir = tempfile::tempdir().unwrap();
    // Two "boards": a stand-in for the ESP32-C3's ROM loader on a pty, and a port where
    // nothing answers.
    let board_on_usb = FakeBoard::start(dir.path(), false);
    let silent = FakeBoard::start(dir.path(), true);
    let ports = vec![board_on_usb.port.clone(), silent.port.clone()];
    let (bridge, stop, db) = start_bridge_with(dir.path(), |s| s.usb_ports = Some(ports)).await;
    let (addr, host) = (bridge.addr, "192.168.7.2:8080");
    let form = "application/x-www-form-urlencoded";
    // The newest board image the Pi keeps, as `genba firmware add` leaves it.
    let app = genba_firmware_core::image::sample("1.5.0", "genba-fw-esp32c3");
    let board_image = board::sample(&app);
    let sha = "cd".repeat(32);
    std::fs::create_dir_all(dir.path().join("firmware")).unwrap();
    std::fs::write(
        dir.path()
            .join("firmware")
            .join(genba_store::firmware::board_file_name(&sha)),
        &board_image,
    )
    .unwrap();
    let image = genba_store::firmware::FirmwareImage {
        sha256: sha,
        version: "1.5.0".into(),
        project: "genba-fw-esp32c3".into(),
        size: app.len() as i64,
        added_at_ms: 1,
        board_size: Some(board_image.len() as i64),
    };
    genba_store::firmware::add(&genba_store::open(&db).unwrap(), &image).unwrap();
    let registered = |id: &str| {
        let conn = genba_store::open(&db).unwrap();
        genba_store::devices::get(&conn, id).unwrap().is_some()
    };

    // The form offers the boards plugged in.
    let page = request(addr, "GET", "/provision", host, "", "").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    for port in [&board_on_usb.port, &silent.port] {
        assert!(
            page.contains(&format!(r#"<option value="{port}">"#)),
            "{page}"
        );
    }
    let csrf = attribute_after(&page, r#"name="csrf" value=""#).to_owned();
    let post = |id: &str, port: &str, extra: &str| {
        format!("csrf={csrf}&id={id}&wifi_ssid=shop&wifi_pass=a+long+pass+phrase&appliance=192.168.7.2&transport=http&interval=30&onewire_gpio=4&led_gpio=8&offsets=&ntp_server=pool.ntp.org&pin=&write_port={port}&no_reset=1{extra}")
    };

    let submit =
        |body: String| async move { request(addr, "POST", "/provision", host, form, &body).await };

    // A port that is not offered is refused; so is a board whose loader does not answer.
    // Nothing is registered either time.
    let refused = submit(post("fridge-x", "/dev/null", "")).await;
    assert!(refused.starts_with("HTTP/1.1 422"), "{refused}");
    assert!(
        refused.contains("no ESP32 board is plugged in at /dev/null"),
        "{refused}"
    );
    let refused = submit(post("fridge-x", &silent.port, "&config_only=1")).await;
    assert!(refused.starts_with("HTTP/1.1 422"), "{refused}");
    assert!(
        refused.contains(&format!("no ESP32-C3 loader answered on {}", silent.port)),
        "{refused}"
    );
    assert!(
        refused.contains(r#"id="write_port" name="write_port" aria-invalid="true""#),
        "{refused}"
    );
    assert!(!registered("fridge-x"));

    // The board on the USB port gets the board image with the config inside; the answer says
    // so and hands no file over.
    let done = submit(post("fridge-usb", &board_on_usb.port, "")).await;
    assert!(done.starts_with("HTTP/1.1 200"), "{done}");
    assert!(done.contains(r#"id="written""#), "{done}");
    assert!(
        done.contains("firmware 1.5.0 with the config (4194304 bytes at 0x0)"),
        "{done}"
    );
    assert!(!done.contains("data:application/octet-stream"), "{done}");
    assert!(registered("fridge-usb"));
    let flash = board_on_usb.flash();
    let at = PARTITION_OFFSET as usize;
    assert_eq!(&flash[..at], &board_image[..at]);
    assert_eq!(&flash[at + AREA_LEN..], &board_image[at + AREA_LEN..]);
    let device = decode_area(&flash[at..at + AREA_LEN]).unwrap().config;
    assert_eq!(device.device_id.as_str(), "fridge-usb");
    let Credential::ApiKey(key) = &device.credential else {
        panic!("an HTTP device holds an API key: {:?}", device.credential)
    };
    let conn = genba_store::open(&db).unwrap();
    let key = genba_telemetry::keys::authorize(&conn, key, "telemetry:write")
        .expect("the key on the board is registered");
    assert_eq!(key.device_id, "fridge-usb");

    stop.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(15), bridge.done).await;
}
