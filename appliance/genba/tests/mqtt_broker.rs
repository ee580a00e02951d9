//! The broker with real clients: rumqttc (3.1.1 and 5), mosquitto_pub/sub, raw packets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{wait_until, Appliance};
use rumqttc::{Client, Event, LastWill, MqttOptions, Packet, QoS};

const AUTH_CONFIG_USER: &str = "sensor";
const AUTH_CONFIG_PASS: &str = "s3cret-pw";

fn auth_config() -> String {
    let hash = common::hash_password(AUTH_CONFIG_PASS);
    format!("[mqtt]\nallow_anonymous = false\n[[mqtt.users]]\nname = \"{AUTH_CONFIG_USER}\"\npassword_hash = \"{hash}\"\n")
}

fn v4_client(a: &Appliance, id: &str) -> (Client, rumqttc::Connection) {
    let mut o = MqttOptions::new(id, "127.0.0.1", a.mqtt.port());
    o.set_keep_alive(Duration::from_secs(10));
    Client::new(o, 100)
}

/// Polls a v4 connection until a publish on `topic` arrives.
fn next_publish(conn: &mut rumqttc::Connection, topic: &str) -> rumqttc::Publish {
    for event in conn.iter() {
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => return p,
            Ok(_) => {}
            Err(e) => panic!("mqtt error: {e}"),
        }
    }
    panic!("connection ended");
}

fn wait_suback(conn: &mut rumqttc::Connection) {
    for event in conn.iter() {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = event {
            return;
        }
    }
}

#[test]
fn mqtt_311_and_mqtt_5_clients_exchange_messages_both_ways_on_one_port() {
    let a = Appliance::start("", "");
    let (v4, mut v4_conn) = v4_client(&a, "v4-client");
    v4.subscribe("from5/#", QoS::AtLeastOnce).unwrap();
    wait_suback(&mut v4_conn);

    let mut o5 = rumqttc::v5::MqttOptions::new("v5-client", "127.0.0.1", a.mqtt.port());
    o5.set_keep_alive(Duration::from_secs(10));
    let (v5, mut v5_conn) = rumqttc::v5::Client::new(o5, 100);
    v5.subscribe("from4/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .unwrap();
    for e in v5_conn.iter() {
        if let Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::SubAck(_))) = e {
            break;
        }
    }

    // Drive the v5 connection on its own thread so its publish goes out while the v4 side waits.
    let (tx5, rx5) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for e in v5_conn.iter() {
            match e {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(
                    p,
                ))) => {
                    let _ = tx5.send(p);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    v5.publish(
        "from5/x",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "hello from 5",
    )
    .unwrap();
    let got = next_publish(&mut v4_conn, "from5/x");
    assert_eq!(&got.payload[..], b"hello from 5");

    v4.publish("from4/y", QoS::AtLeastOnce, false, "hello from 4")
        .unwrap();
    // Keep the v4 connection polled so its publish is sent, while waiting for the v5 side.
    std::thread::spawn(move || for _ in v4_conn.iter() {});
    let got5 = rx5.recv_timeout(Duration::from_secs(10)).ok();
    let p = got5.unwrap();
    assert_eq!(&p.topic[..], b"from4/y");
    assert_eq!(&p.payload[..], b"hello from 4");

    // Both publishes are in the journal, once each.
    assert!(
        wait_until(Duration::from_secs(5), || a.journal().len() == 2),
        "{:?}",
        a.journal()
    );
    let j = a.journal();
    assert!(j.contains(&("from5/x".into(), "hello from 5".into())));
    assert!(j.contains(&("from4/y".into(), "hello from 4".into())));
}

#[test]
fn retained_message_reaches_a_later_subscriber_and_last_will_fires_on_abrupt_disconnect() {
    let a = Appliance::start("", "");
    let (pubc, mut pub_conn) = v4_client(&a, "retainer");
    pubc.publish("status/line1", QoS::AtLeastOnce, true, "running")
        .unwrap();
    for e in pub_conn.iter() {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = e {
            break;
        }
    }
    let (late, mut late_conn) = v4_client(&a, "late");
    late.subscribe("status/#", QoS::AtLeastOnce).unwrap();
    let p = next_publish(&mut late_conn, "status/line1");
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"running");

    // A client with a will, killed without DISCONNECT.
    late.subscribe("wills/#", QoS::AtLeastOnce).unwrap();
    wait_suback(&mut late_conn);
    let mut o = MqttOptions::new("doomed", "127.0.0.1", a.mqtt.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_last_will(LastWill::new(
        "wills/doomed",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (_doomed, mut doomed_conn) = Client::new(o, 10);
    for e in doomed_conn.iter() {
        if let Ok(Event::Incoming(Packet::ConnAck(_))) = e {
            break;
        }
    }
    drop(doomed_conn); // closes the socket without DISCONNECT
    let will = next_publish(&mut late_conn, "wills/doomed");
    assert_eq!(&will.payload[..], b"gone");
}

#[test]
fn wrong_password_and_anonymous_get_a_connack_refusal_when_auth_is_on() {
    let a = Appliance::start(&auth_config(), "");
    // Wrong password: MQTT 3.1.1 CONNACK code 4 (bad user name or password).
    let mut o = MqttOptions::new("intruder", "127.0.0.1", a.mqtt.port());
    o.set_credentials(AUTH_CONFIG_USER, "wrong");
    let (_c, mut conn) = Client::new(o, 10);
    match conn.iter().next().unwrap() {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::BadUserNamePassword)
        }
        other => panic!("wrong password was not refused: {other:?}"),
    }
    // Anonymous: code 5 (not authorized).
    let (_c, mut conn) = Client::new(MqttOptions::new("anon", "127.0.0.1", a.mqtt.port()), 10);
    match conn.iter().next().unwrap() {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::NotAuthorized)
        }
        other => panic!("anonymous was not refused: {other:?}"),
    }
    // MQTT 5 client with a wrong password: reason code 0x86.
    let mut o5 = rumqttc::v5::MqttOptions::new("intruder5", "127.0.0.1", a.mqtt.port());
    o5.set_credentials(AUTH_CONFIG_USER, "wrong");
    let (_c5, mut conn5) = rumqttc::v5::Client::new(o5, 10);
    match conn5.iter().next().unwrap() {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(
                code,
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::BadUserNamePassword
            )
        }
        other => panic!("v5 wrong password was not refused: {other:?}"),
    }
    // The right password works, through mosquitto_pub from Debian.
    let out = common::mosquitto_pub(
        a.mqtt.port(),
        &[
            "-u",
            AUTH_CONFIG_USER,
            "-P",
            AUTH_CONFIG_PASS,
            "-q",
            "1",
            "-t",
            "batch/done",
            "-m",
            "ok",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = common::mosquitto_pub(
        a.mqtt.port(),
        &[
            "-u",
            AUTH_CONFIG_USER,
            "-P",
            "nope",
            "-t",
            "batch/done",
            "-m",
            "bad",
        ],
    );
    assert!(!refused.status.success());
    assert!(wait_until(Duration::from_secs(5), || a.journal()
        == vec![("batch/done".to_string(), "ok".to_string())]));
}

#[test]
fn keep_alive_zero_is_accepted() {
    let a = Appliance::start("", "");
    let mut s = TcpStream::connect(a.mqtt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // MQTT 3.1.1 CONNECT, clean session, keep-alive 0, client id "ka0".
    let body = [
        0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 3, b'k', b'a', b'0',
    ];
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    s.write_all(&packet).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    // And the session works: PINGREQ -> PINGRESP.
    s.write_all(&[0xC0, 0x00]).unwrap();
    let mut pong = [0u8; 2];
    s.read_exact(&mut pong).unwrap();
    assert_eq!(pong, [0xD0, 0x00]);
}

#[test]
fn mosquitto_sub_receives_what_mosquitto_pub_and_http_send() {
    let a = Appliance::start("", "");
    let sub = common::mosquitto_sub(
        a.mqtt.port(),
        &[
            "-t", "notify/#", "-t", "alert/#", "-v", "-C", "2", "-W", "20",
        ],
    );
    let out = common::mosquitto_pub(
        a.mqtt.port(),
        &["-q", "1", "-t", "alert/stock", "-m", "stock low: bolts M6"],
    );
    assert!(out.status.success());
    common::install_crypto();
    let r =
        reqwest::blocking_get(&a.url("/notify?message=reception%20call&topic=notify/reception"));
    assert_eq!(r, 200);
    let out = sub.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("alert/stock stock low: bolts M6"), "{text}");
    assert!(text.contains("notify/reception reception call"), "{text}");
    // Each message is journaled once (the bridge's own publish is not journaled again).
    let j = a.journal();
    assert_eq!(j.len(), 2, "{j:?}");
}

mod reqwest {
    /// A GET on a real socket; returns the status code.
    pub fn blocking_get(url: &str) -> u16 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { ::reqwest::get(url).await.unwrap().status().as_u16() })
    }
}
