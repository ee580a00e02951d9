//! The bridge's MQTT client: hands journaled messages to the broker for live subscribers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    connected: Arc<AtomicBool>,
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
        Publisher { client, connected }
    }

    /// Queues a QoS 1 publish; false when the broker link is down or its queue is full
    /// (the message is journaled either way, so sinks still get it).
    pub fn publish(&self, topic: &str, payload: Vec<u8>) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
                .is_ok()
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Splits `host:port` (port 1883 when absent; `[v6]:port` understood).
pub fn split_host_port(addr: &str) -> (String, u16) {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once("]:") {
            return (h.to_owned(), p.parse().unwrap_or(1883));
        }
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_owned(), p.parse().unwrap_or(1883)),
        _ => (addr.to_owned(), 1883),
    }
}
