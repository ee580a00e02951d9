//! The MQTT broker role: rumqttd in-process on loopback, behind the front door on the public port.

mod auth;
mod frontdoor;
pub mod packet;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use genba_config::MqttConfig;
use genba_store::Journal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use auth::{Access, Verifier, INTERNAL_USER};

/// Log filter directives for the embedded broker, to add to the process's defaults
/// (`info,{LOG_DIRECTIVES}`).
///
/// rumqttd's `server::broker` module logs at ERROR what is normal operation: "router-drop" for
/// every client that sends DISCONNECT (each /health probe too), "disconnected" for every
/// client that goes away without one or misses its keep-alive, "Error while handling MQTT
/// connect packet" for a client's bad CONNECT. That module is cut to OFF; the rest of rumqttd
/// stays at WARN, so its router's real failures still show. (The router's own "no-connection
/// id N is already gone" race is avoided at the source: the front door and the probe let
/// rumqttd close first after a DISCONNECT.) Measured with scripts/conformance: 169 ERROR lines
/// in one run before, 0 with these directives.
pub const LOG_DIRECTIVES: &str = "rumqttd=warn,rumqttd::server::broker=off";

/// Slots for genba's own roles (health probe, bridge, recorder) beyond `max_connections`.
const INTERNAL_SLOTS: usize = 8;
/// Sockets being told "server busy" at once.
const REFUSING_SLOTS: usize = 32;
/// File descriptors each client costs: its socket, the front door's loopback connection to
/// rumqttd, and rumqttd's end of it.
const FDS_PER_CONNECTION: u64 = 3;
/// File descriptors kept for everything else (SQLite, HTTP clients, listeners, logs).
const FDS_RESERVED: u64 = 256;

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
    stop: tokio::sync::watch::Sender<bool>,
    stats: Arc<frontdoor::DoorStats>,
}

impl RunningBroker {
    /// Stops accepting connections on the public port (connections already in stay).
    pub fn stop_accepting(&self) {
        let _ = self.stop.send(true);
    }

    /// Connections refused because every client slot was taken.
    pub fn refused_busy(&self) -> u64 {
        self.stats.refused_busy.load(Ordering::Relaxed)
    }
}

/// Raises the soft open-file limit to the hard one; returns the soft limit in force.
fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the open-file limit");
                return Some(hard);
            }
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        }
    }
    Some(soft)
}

/// How many client connections fit in `fd_limit` open files (at least 1).
fn connections_within(fd_limit: u64, wanted: usize) -> usize {
    let extra = (INTERNAL_SLOTS + REFUSING_SLOTS) as u64;
    let fit = fd_limit.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION;
    let fit = fit.saturating_sub(extra).max(1);
    wanted.min(usize::try_from(fit).unwrap_or(usize::MAX))
}

/// Starts rumqttd and the front door. Returns once both accept connections.
pub async fn start(
    cfg: &MqttConfig,
    journal: Journal,
    internal_secret: &str,
) -> Result<RunningBroker, BrokerError> {
    let mut max_connections = cfg.max_connections;
    if let Some(limit) = raise_open_file_limit() {
        max_connections = connections_within(limit, cfg.max_connections);
        if max_connections < cfg.max_connections {
            tracing::warn!(
                max_connections = cfg.max_connections,
                open_file_limit = limit,
                serving = max_connections,
                "the open-file limit is too low for max_connections (3 per client); serving fewer (raise LimitNOFILE)"
            );
        }
    }
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
    let stats = Arc::new(frontdoor::DoorStats::default());
    // Nobody is connected to a broker that is starting.
    let sessions = genba_store::Db::new(journal.path());
    if let Err(e) = sessions.run(genba_store::sessions::clear).await {
        tracing::warn!(error = %e, "session list: cannot clear it");
    }
    let door = Arc::new(frontdoor::FrontDoor {
        v4,
        v5,
        verifier,
        journal,
        max_payload: cfg.max_payload,
        max_packet: max_packet(cfg),
        connections: Arc::new(tokio::sync::Semaphore::new(max_connections)),
        internal: Arc::new(tokio::sync::Semaphore::new(INTERNAL_SLOTS)),
        refusing: Arc::new(tokio::sync::Semaphore::new(REFUSING_SLOTS)),
        stats: stats.clone(),
        sessions,
        disabled: Default::default(),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(door.serve(listener, stopped));
    Ok(RunningBroker { addr, stop, stats })
}

/// The largest packet (remaining length) the front door reads and rumqttd accepts: a payload
/// of `max_payload` with room for a topic and MQTT 5 properties. rumqttd's own limit counts the
/// whole packet, so it is set to this, and the front door enforces `max_payload` itself (a
/// refused publish is never journaled).
fn max_packet(cfg: &MqttConfig) -> usize {
    cfg.max_payload + 64 * 1024
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
                max_payload_size: max_packet(cfg),
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
            max_connections: cfg.max_connections + INTERNAL_SLOTS + 16,
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
        let ok = ack == [0x20, 0x02, 0x00, 0x00] || ack == [0x20, 0x02, 0x01, 0x00];
        // DISCONNECT, then let the broker close first: closing right after DISCONNECT makes
        // rumqttd's router log an ERROR ("no-connection id N is already gone") per probe.
        if ok && s.write_all(&[0xE0, 0x00]).await.is_ok() {
            let mut rest = [0u8; 64];
            while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
        }
        Some(ok)
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
