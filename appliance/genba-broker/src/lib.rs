//! The MQTT broker role: rumqttd in-process on loopback, behind the front door on the public port.

mod auth;
mod frontdoor;
pub mod packet;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use genba_config::MqttConfig;
use genba_store::Journal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use auth::{Access, Verifier, INTERNAL_USER};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
    #[error("the embedded broker did not become ready on {0}")]
    NotReady(SocketAddr),
}

/// A broker that is serving.
pub struct RunningBroker {
    /// The public address (the one clients use).
    pub addr: SocketAddr,
}

/// Starts rumqttd and the front door. Returns once both accept connections.
pub async fn start(
    cfg: &MqttConfig,
    journal: Journal,
    internal_secret: &str,
) -> Result<RunningBroker, BrokerError> {
    let verifier = Verifier::new(
        &cfg.users,
        internal_secret.to_owned(),
        cfg.anonymous_allowed(),
    );
    let v4 = free_loopback_port()?;
    let v5 = free_loopback_port()?;
    let mut broker = rumqttd::Broker::new(rumqttd_config(cfg, v4, v5, &verifier));
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    for addr in [v4] {
        wait_ready(addr, internal_secret).await?;
    }
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| BrokerError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| BrokerError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let door = Arc::new(frontdoor::FrontDoor {
        v4,
        v5,
        verifier,
        journal,
        max_packet: cfg.max_payload + 64 * 1024,
        connections: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
    });
    tokio::spawn(door.serve(listener));
    Ok(RunningBroker { addr })
}

fn rumqttd_config(
    cfg: &MqttConfig,
    v4: SocketAddr,
    v5: SocketAddr,
    verifier: &Verifier,
) -> rumqttd::Config {
    let server = |name: &str, listen| {
        let mut s = rumqttd::ServerSettings {
            name: name.into(),
            listen,
            tls: None,
            next_connection_delay_ms: 0,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 10_000,
                max_payload_size: cfg.max_payload,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        if !verifier.anonymous_allowed() {
            // The loopback listeners check credentials too, so they are no way around auth.
            let v = verifier.clone();
            s.set_auth_handler(move |_client, user: String, pass: String| {
                let v = v.clone();
                async move { v.check(Some(&user), Some(pass.as_bytes())).await != Access::Denied }
            });
        }
        s
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: cfg.max_connections + 16,
            max_outgoing_packet_count: 200,
            max_segment_size: cfg.segment_size.max(cfg.max_payload + 1024),
            max_segment_count: cfg.segment_count.max(1),
            ..Default::default()
        },
        v4: Some(HashMap::from([("v4".to_string(), server("v4", v4))])),
        v5: Some(HashMap::from([("v5".to_string(), server("v5", v5))])),
        ..Default::default()
    }
}

fn free_loopback_port() -> Result<SocketAddr, BrokerError> {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let l =
        std::net::TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
    l.local_addr()
        .map_err(|source| BrokerError::Bind { addr, source })
}

async fn wait_ready(addr: SocketAddr, secret: &str) -> Result<(), BrokerError> {
    for _ in 0..100 {
        if probe(addr, secret).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(BrokerError::NotReady(addr))
}

/// Liveness: a real MQTT 3.1.1 CONNECT as the internal user must get CONNACK "accepted".
pub async fn probe(addr: SocketAddr, secret: &str) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let id = format!("genba-probe-{}", rand_suffix());
        s.write_all(&packet::connect_v4(&id, INTERNAL_USER, secret))
            .await
            .ok()?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await.ok()?;
        let _ = s.write_all(&[0xE0, 0x00]).await;
        Some(ack == [0x20, 0x02, 0x00, 0x00] || ack == [0x20, 0x02, 0x01, 0x00])
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (std::process::id() as u64) << 32
}
