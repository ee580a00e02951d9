//! Hands journaled messages to the broker for live subscribers: in-process when the broker
//! runs in the same process (`genba up`), else over MQTT as the internal user.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use genba_config::split_host_port;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS};

/// The broker of this process, taking a journaled message for its live subscribers (QoS 1,
/// not retained) without a network hop.
pub trait LiveHandoff: Send + Sync {
    fn publish(&self, topic: &str, payload: Vec<u8>);
}

#[derive(Clone)]
pub enum Publisher {
    Mqtt {
        client: AsyncClient,
        connected: Arc<AtomicBool>,
    },
    InProcess(Arc<dyn LiveHandoff>),
}

impl Publisher {
    /// Connects (and keeps reconnecting) to `broker` (`host:port`) as the internal user.
    pub fn start(broker: &str, user: &str, secret: &str) -> Publisher {
        let (host, port) = split_host_port(broker);
        let id = format!("genba-bridge-{}", std::process::id());
        let mut opts = MqttOptions::new(id, host, port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_credentials(user, secret);
        opts.set_inflight(500);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 4096);
        let connected = Arc::new(AtomicBool::new(false));
        let flag = connected.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        flag.store(true, Ordering::Relaxed);
                        tracing::debug!("bridge connected to the broker");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if flag.swap(false, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "bridge lost the broker; reconnecting");
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Publisher::Mqtt { client, connected }
    }

    /// Queues a QoS 1 publish; false when the broker link is down or its queue is full
    /// (the message is journaled either way, so sinks still get it).
    pub fn publish(&self, topic: &str, payload: Vec<u8>) -> bool {
        match self {
            Publisher::Mqtt { client, connected } => {
                connected.load(Ordering::Relaxed)
                    && client
                        .try_publish(topic, QoS::AtLeastOnce, false, payload)
                        .is_ok()
            }
            Publisher::InProcess(broker) => {
                broker.publish(topic, payload);
                true
            }
        }
    }

    pub fn connected(&self) -> bool {
        match self {
            Publisher::Mqtt { connected, .. } => connected.load(Ordering::Relaxed),
            Publisher::InProcess(_) => true,
        }
    }
}

/// Liveness of the broker at `broker` (`host:port`): a fresh MQTT CONNECT as the internal user
/// must get CONNACK "accepted" within two seconds (the broker takes new connections, not only
/// keeps the bridge's own).
pub async fn probe(broker: &str, user: &str, secret: &str) -> bool {
    let (host, port) = split_host_port(broker);
    let mut opts = MqttOptions::new(format!("genba-probe-{}", std::process::id()), host, port);
    opts.set_credentials(user, secret);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 1);
    let accepted = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return ack.code == ConnectReturnCode::Success
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    };
    let ok = tokio::time::timeout(Duration::from_secs(2), accepted)
        .await
        .unwrap_or(false);
    if ok {
        // DISCONNECT goes out with the next poll; the broker closes the connection.
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    }
    ok
}
