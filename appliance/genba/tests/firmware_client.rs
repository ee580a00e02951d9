//! The firmware's own MQTT client (minimq 0.13, MQTT 5, as built into firmware/esp32c3) against
//! the real appliance broker on the host: it authenticates, publishes telemetry made by the
//! firmware core, which lands in the readings table, and receives a command sent by
//! mosquitto_pub over MQTT 3.1.1, which the firmware core's parser accepts; and, as a pinned
//! device, over the firmware core's TLS session to the broker's MQTT over TLS listener.

mod common;

use std::time::{Duration, Instant};

use common::{mosquitto_pub, Appliance};
use embedded_io_adapters::tokio_1::FromTokio;
use genba_firmware_core::command::Command as DeviceCommand;
use genba_firmware_core::telemetry::{Reading, Telemetry};

const USER: &str = "thermo";
const PASSWORD: &str = "c3-secret";
const DEVICE: &str = "genba-thermo-01";

fn appliance() -> Appliance {
    let hash = common::hash_password(PASSWORD);
    Appliance::start(
        &format!("[mqtt]\nallow_anonymous = false\n[[mqtt.users]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\n"),
        "",
    )
}

/// A minimq session configured as the firmware configures it (client id = device id, MQTT 5).
fn session<'a>(rx: &'a mut [u8], tx: &'a mut [u8], password: &'a str) -> minimq::Session<'a> {
    minimq::Session::new(
        minimq::ConfigBuilder::new(minimq::Buffers::new(rx, tx))
            .client_id(DEVICE)
            .unwrap()
            .auth(USER, password.as_bytes())
            .unwrap()
            .keepalive_interval(30),
    )
}

fn readings(a: &Appliance) -> i64 {
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM readings WHERE device_id = ?1",
        [DEVICE],
        |r| r.get(0),
    )
    .unwrap()
}

/// Publishes one batch of `probes` (id, raw °C, offset) made by the firmware core at QoS 1 and
/// drives the client (PUBACK, keep-alive) until its readings are stored.
async fn publish_until_stored<IO: minimq::Io>(
    a: &Appliance,
    conn: &mut minimq::Connection<'_, '_, IO>,
    probes: &[(&str, f32, f32)],
) {
    let mut t = Telemetry::new(DEVICE, "2026-02-15T12:00:00Z", 1_771_156_800_000, -58).unwrap();
    for &(id, raw, offset) in probes {
        t.push(Reading::new(id, raw, offset).unwrap()).unwrap();
    }
    let mut buf = [0u8; 1024];
    let n = t.to_json(&mut buf).unwrap();
    let topic = format!("devices/{DEVICE}/telemetry");
    conn.publish(minimq::Publication::new(topic.as_str(), &buf[..n]).qos(minimq::QoS::AtLeastOnce))
        .await
        .unwrap();
    let want = probes.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while readings(a) < want {
        assert!(
            Instant::now() < deadline,
            "telemetry from minimq did not reach the readings table\n{}",
            a.log()
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), conn.poll()).await;
    }
    assert_eq!(readings(a), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimq_publishes_telemetry_into_the_readings_table_and_receives_a_command() {
    let a = appliance();
    let (mut rx, mut tx) = ([0u8; 2048], [0u8; 2048]);
    let mut session = session(&mut rx, &mut tx, PASSWORD);
    let io = FromTokio::new(tokio::net::TcpStream::connect(a.mqtt).await.unwrap());
    let mut conn = session
        .connect(io)
        .await
        .expect("minimq connects with username/password");
    let commands = format!("devices/{DEVICE}/commands");
    conn.subscribe(&[minimq::TopicFilter::new(&commands)], &[])
        .await
        .unwrap();

    publish_until_stored(
        &a,
        &mut conn,
        &[
            ("28FF4C3A91160457", 3.5, -0.25),
            ("28FF4C3A91160458", -18.0625, 0.0),
        ],
    )
    .await;

    // A command from an MQTT 3.1.1 client reaches the MQTT 5 device.
    let port = a.mqtt.port();
    let sender = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(300));
        mosquitto_pub(
            port,
            &[
                "-V",
                "mqttv311",
                "-u",
                USER,
                "-P",
                PASSWORD,
                "-q",
                "1",
                "-t",
                &format!("devices/{DEVICE}/commands"),
                "-m",
                r#"{"cmd":"led","on":true}"#,
            ],
        )
    });
    let msg = tokio::time::timeout(Duration::from_secs(10), conn.recv())
        .await
        .expect("command received")
        .unwrap();
    assert_eq!(msg.topic(), commands);
    assert_eq!(
        DeviceCommand::parse(msg.payload()),
        Ok(DeviceCommand::Led(true))
    );
    assert!(sender.await.unwrap().status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimq_with_a_wrong_password_is_refused() {
    let a = appliance();
    let (mut rx, mut tx) = ([0u8; 1024], [0u8; 1024]);
    let mut session = session(&mut rx, &mut tx, "wrong");
    let io = FromTokio::new(tokio::net::TcpStream::connect(a.mqtt).await.unwrap());
    let refused = tokio::time::timeout(Duration::from_secs(10), session.connect(io))
        .await
        .expect("an answer");
    assert!(refused.is_err(), "a wrong password was accepted");
}

/// The firmware's whole stack for a pinned device: minimq over the firmware core's TLS session
/// (embedded-tls, pinned to the appliance's local CA) to the broker's MQTT over TLS listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimq_over_the_cores_pinned_tls_session_publishes_to_the_tls_listener() {
    use genba_firmware_core::{discovery, tls};
    let hash = common::hash_password(PASSWORD);
    let a = Appliance::start(
        &format!(
            "[mqtt]\nallow_anonymous = false\ntls_listen = \"127.0.0.1:0\"\n\
             [[mqtt.users]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\n"
        ),
        "",
    );
    let ca = genba_tls::local_ca_fingerprint(&a.data_dir())
        .unwrap()
        .expect("TLS on: the appliance made its local CA");
    let pin = discovery::parse_fingerprint(&ca).unwrap();
    let (mut read, mut write) = (
        vec![0u8; tls::READ_BUFFER_LEN],
        vec![0u8; tls::WRITE_BUFFER_LEN],
    );
    let tcp = tokio::net::TcpStream::connect(a.endpoint("mqtts"))
        .await
        .unwrap();
    let session_tls = tls::open(
        FromTokio::new(tcp),
        &pin,
        rand_core::OsRng,
        &mut read,
        &mut write,
    )
    .await
    .expect("the pinned handshake with the broker's TLS listener");
    let (mut rx, mut tx) = ([0u8; 2048], [0u8; 2048]);
    let mut session = session(&mut rx, &mut tx, PASSWORD);
    let mut conn = session
        .connect(session_tls)
        .await
        .expect("minimq connects over TLS");
    publish_until_stored(&a, &mut conn, &[("28FF4C3A91160457", 3.5, 0.0)]).await;
}
