//! The broker started in-process on a listener the test bound itself (port 0), with a real
//! journal in a temporary SQLite file and a real MQTT client (rumqttc): no binary to spawn and
//! no port picked in advance.

use std::time::Duration;

use genba_broker::{start, Listeners};
use genba_config::MqttConfig;
use genba_store::{Journal, Reader};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::net::TcpListener;

async fn client(id: &str, port: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    AsyncClient::new(o, 10)
}

/// Polls until a publish arrives (panics if the connection fails first).
async fn next_publish(events: &mut rumqttc::EventLoop) -> rumqttc::Publish {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => return p,
            Ok(_) => {}
            Err(e) => panic!("subscriber connection: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_on_a_bound_listener_journals_a_publish_and_routes_it_to_a_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("genba.sqlite3");
    let journal = Journal::start(&db, 64, 64).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker = start(
        &MqttConfig::default(),
        Listeners::mqtt_only(listener),
        journal,
        "an internal secret of some length",
        None,
    )
    .await
    .unwrap();
    let port = broker.addr.port();

    let (sub, mut sub_events) = client("in-process-sub", port).await;
    sub.subscribe("sensors/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        match sub_events.poll().await.unwrap() {
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => continue,
        }
    }
    let (publisher, mut pub_events) = client("in-process-pub", port).await;
    publisher
        .publish("sensors/fridge-1", QoS::AtLeastOnce, false, "4.5")
        .await
        .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = pub_events.poll().await.unwrap() {
                return;
            }
        }
    });
    acked.await.expect("no PUBACK within 10 s");

    // Acknowledged only once committed: the row is in the journal now.
    let rows = Reader::open(&db).unwrap().after(0, 10).unwrap();
    let row = rows
        .iter()
        .find(|r| r.topic == "sensors/fridge-1")
        .expect("the acknowledged publish is not in the journal");
    assert_eq!(row.payload, b"4.5");
    assert_eq!(row.qos, 1);

    let got = tokio::time::timeout(Duration::from_secs(10), next_publish(&mut sub_events))
        .await
        .expect("the subscriber got nothing within 10 s");
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("sensors/fridge-1", &b"4.5"[..])
    );

    // Stopped: the port takes no new connection.
    broker.stop_accepting();
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if tokio::net::TcpStream::connect(broker.addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    refused
        .await
        .expect("the port still accepts after stop_accepting");
}
