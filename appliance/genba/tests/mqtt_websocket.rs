//! MQTT over WebSocket (and WebSocket over TLS), as browser clients use it: rumqttc's
//! WebSocket transport against `genba up`, messages both ways with a plain TCP client.

mod common;

use std::time::Duration;

use common::{wait_until, Appliance};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS, Transport};

#[test]
fn a_websocket_client_publishes_and_subscribes_like_any_other() {
    common::install_crypto();
    let a = Appliance::start("[mqtt]\nws_listen = \"127.0.0.1:0\"\n", "");
    let ws = a.endpoint("mqtt_ws");
    let mut o = MqttOptions::new("browser-1", format!("ws://{ws}/mqtt"), ws.port());
    o.set_transport(Transport::Ws);
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut conn) = Client::new(o, 10);
    client.subscribe("notify/#", QoS::AtLeastOnce).unwrap();
    let mut subscribed = false;
    for event in conn.iter().take(20) {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = event {
            subscribed = true;
            break;
        }
        assert!(event.is_ok(), "{event:?}");
    }
    assert!(subscribed, "SUBACK over WebSocket");
    // A plain TCP client's message reaches the WebSocket client...
    let out = common::mosquitto_pub(
        a.mqtt.port(),
        &["-q", "1", "-t", "notify/tcp", "-m", "to ws"],
    );
    assert!(out.status.success());
    let mut got = None;
    for event in conn.iter().take(20) {
        if let Ok(Event::Incoming(Packet::Publish(p))) = event {
            got = Some(p);
            break;
        }
    }
    let p = got.expect("publish over WebSocket");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("notify/tcp", &b"to ws"[..])
    );
    // ...and the WebSocket client's publish is journaled like any other.
    client
        .publish("notify/ws", QoS::AtLeastOnce, false, "from ws")
        .unwrap();
    for event in conn.iter().take(20) {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = event {
            break;
        }
    }
    assert!(wait_until(Duration::from_secs(5), || a
        .journal()
        .iter()
        .any(|(t, p)| t == "notify/ws" && p == "from ws")));
}

#[test]
fn a_plain_http_request_to_the_websocket_port_is_refused_and_the_port_stays_up() {
    let a = Appliance::start("[mqtt]\nws_listen = \"127.0.0.1:0\"\n", "");
    let ws = a.endpoint("mqtt_ws");
    let answer = common::http::raw_exchange(
        ws,
        b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(!answer.starts_with("HTTP/1.1 101"), "{answer}");
    // A real WebSocket client still gets in.
    let mut o = MqttOptions::new("browser-2", format!("ws://{ws}/mqtt"), ws.port());
    o.set_transport(Transport::Ws);
    let (_client, mut conn) = Client::new(o, 10);
    let connected = conn
        .iter()
        .take(5)
        .any(|e| matches!(e, Ok(Event::Incoming(Packet::ConnAck(_)))));
    assert!(connected);
}
