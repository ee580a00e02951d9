//! The MQTT broker role: Genba's own MQTT 3.1.1 / 5.0 broker on one public port.
//!
//! Where a message enters: [`connection`] (each client's PUBLISH, journaled before it is
//! acknowledged). Where it is routed: [`broker::Broker::publish`]. Where it leaves:
//! [`session::Session::drain`]. What survives a restart: [`persist`] (retained messages,
//! sessions that outlive their connection, their queued messages), in the same SQLite file
//! as the journal.

pub mod acl;
mod auth;
pub mod broker;
mod connection;
mod frontdoor;
pub mod packet;
pub mod persist;
pub mod session;
pub mod topic;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use genba_config::MqttConfig;
use genba_store::Journal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use auth::{Access, Accounts, Verifier, INTERNAL_USER};

/// Slots for genba's own roles (health probe, bridge, recorder) beyond `max_connections`.
const INTERNAL_SLOTS: usize = 8;
/// Sockets being told "server busy" at once.
const REFUSING_SLOTS: usize = 32;
/// File descriptors each client costs: its socket.
const FDS_PER_CONNECTION: u64 = 1;
/// File descriptors kept for everything else (SQLite, HTTP clients, listeners, logs).
const FDS_RESERVED: u64 = 256;
/// How often expired sessions and delayed wills are looked at.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Bind(#[from] genba_config::listen::BindError),
    #[error("broker state in {path}: {source}")]
    State {
        path: std::path::PathBuf,
        source: genba_store::StoreError,
    },
}

/// The broker's bound sockets: the public MQTT port and, when configured, MQTT over TLS, over
/// WebSocket, and over WebSocket and TLS. [`bind`] binds what the config names; a test binds
/// its own (port 0) and starts the broker in-process with [`Listeners::mqtt_only`].
pub struct Listeners {
    pub mqtt: TcpListener,
    pub tls: Option<TcpListener>,
    pub ws: Option<TcpListener>,
    pub wss: Option<TcpListener>,
}

impl Listeners {
    pub fn mqtt_only(mqtt: TcpListener) -> Listeners {
        Listeners {
            mqtt,
            tls: None,
            ws: None,
            wss: None,
        }
    }
}

/// Binds the listeners `cfg` names; the TLS ones only when `tls` (a certificate) is available.
pub async fn bind(cfg: &MqttConfig, tls: bool) -> Result<Listeners, BrokerError> {
    async fn one(key: &'static str, listen: SocketAddr) -> Result<TcpListener, BrokerError> {
        let bind_err = |cause| genba_config::listen::BindError::new(key, listen, cause);
        Ok(TcpListener::bind(listen).await.map_err(bind_err)?)
    }
    async fn optional(
        key: &'static str,
        listen: Option<SocketAddr>,
        wanted: bool,
    ) -> Result<Option<TcpListener>, BrokerError> {
        match listen {
            Some(listen) if wanted => Ok(Some(one(key, listen).await?)),
            _ => Ok(None),
        }
    }
    Ok(Listeners {
        mqtt: one("mqtt.listen", cfg.listen).await?,
        tls: optional("mqtt.tls_listen", cfg.tls_listen, tls).await?,
        ws: optional("mqtt.ws_listen", cfg.ws_listen, true).await?,
        wss: optional("mqtt.wss_listen", cfg.wss_listen, tls).await?,
    })
}

/// A broker that is serving.
pub struct RunningBroker {
    /// The public address (the one clients use).
    pub addr: SocketAddr,
    /// MQTT over TLS, over WebSocket, over WebSocket and TLS, when configured.
    pub tls_addr: Option<SocketAddr>,
    pub ws_addr: Option<SocketAddr>,
    pub wss_addr: Option<SocketAddr>,
    pub broker: Arc<broker::Broker>,
    stop: tokio::sync::watch::Sender<bool>,
    stats: Arc<frontdoor::DoorStats>,
    accounts: Accounts,
}

impl RunningBroker {
    /// Stops accepting connections on the public port (connections already in stay).
    pub fn stop_accepting(&self) {
        let _ = self.stop.send(true);
    }

    /// The accounts in force, to replace when the config changes.
    pub fn accounts(&self) -> Accounts {
        self.accounts.clone()
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

/// Starts the broker on bound `listeners`: restores its stored state from the journal's SQLite
/// file, then serves. Returns once it accepts connections; [`RunningBroker::stop_accepting`]
/// stops it.
pub async fn start(
    cfg: &MqttConfig,
    listeners: Listeners,
    journal: Journal,
    internal_secret: &str,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<RunningBroker, BrokerError> {
    let mut max_connections = cfg.max_connections;
    if let Some(limit) = raise_open_file_limit() {
        max_connections = connections_within(limit, cfg.max_connections);
        if max_connections < cfg.max_connections {
            tracing::warn!(
                max_connections = cfg.max_connections,
                open_file_limit = limit,
                serving = max_connections,
                "the open-file limit is too low for max_connections; serving fewer (raise LimitNOFILE)"
            );
        }
    }
    let accounts = Accounts::new(cfg, internal_secret.to_owned());
    let path = journal.path().to_owned();
    let state_err = |source| BrokerError::State {
        path: path.clone(),
        source,
    };
    let stored = persist::load(&path).map_err(state_err)?;
    let (n_retained, n_sessions, n_wills) = (
        stored.retained.len(),
        stored.sessions.len(),
        stored.wills.len(),
    );
    let persist = persist::Persist::start(&path).map_err(state_err)?;
    let broker = Arc::new(broker::Broker::new(
        broker::Limits {
            max_queued: cfg.max_queued_messages,
            max_keep_alive: cfg.max_keep_alive,
            max_session_expiry: cfg.max_session_expiry_secs,
        },
        persist,
    ));
    broker.restore(stored);
    if n_retained + n_sessions + n_wills > 0 {
        tracing::info!(
            retained = n_retained,
            sessions = n_sessions,
            wills = n_wills,
            "broker state restored"
        );
    }
    let addr = local_addr("mqtt.listen", &listeners.mqtt)?;
    let stats = Arc::new(frontdoor::DoorStats::default());
    // Nobody is connected to a broker that is starting.
    let sessions = genba_store::Db::new(journal.path());
    if let Err(e) = sessions.run(genba_store::sessions::clear).await {
        tracing::warn!(error = %e, "session list: cannot clear it");
    }
    let door = Arc::new(frontdoor::FrontDoor {
        broker: broker.clone(),
        accounts: accounts.clone(),
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
    // The other listeners: MQTT over TLS, over WebSocket, over WebSocket and TLS (a TLS
    // listener without a certificate is not served).
    let others = [
        ("mqtt.tls_listen", listeners.tls, true, false),
        ("mqtt.ws_listen", listeners.ws, false, true),
        ("mqtt.wss_listen", listeners.wss, true, true),
    ];
    let mut extra = Vec::new();
    for (key, listener, needs_tls, websocket) in others {
        let (Some(listener), true) = (listener, !needs_tls || tls.is_some()) else {
            extra.push(None);
            continue;
        };
        extra.push(Some(local_addr(key, &listener)?));
        let tls = if needs_tls { tls.clone() } else { None };
        let transport = frontdoor::Transport { tls, websocket };
        tokio::spawn(door.clone().serve(listener, stopped.clone(), transport));
    }
    tokio::spawn(door.serve(listeners.mqtt, stopped, frontdoor::Transport::default()));
    let sweeper = Arc::downgrade(&broker);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            let Some(b) = sweeper.upgrade() else { return };
            b.sweep(std::time::Instant::now());
        }
    });
    Ok(RunningBroker {
        addr,
        tls_addr: extra[0],
        ws_addr: extra[1],
        wss_addr: extra[2],
        broker,
        stop,
        stats,
        accounts,
    })
}

/// The address a bound listener serves (`key` names it in an error).
fn local_addr(key: &'static str, l: &TcpListener) -> Result<SocketAddr, BrokerError> {
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    let bind_err = |cause| genba_config::listen::BindError::new(key, unknown, cause);
    Ok(l.local_addr().map_err(bind_err)?)
}

/// The largest packet (remaining length) read from a client: a payload of `max_payload` with
/// room for a topic and MQTT 5 properties. The front door enforces `max_payload` itself (a
/// refused publish is never journaled).
fn max_packet(cfg: &MqttConfig) -> usize {
    cfg.max_payload + 64 * 1024
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
        // DISCONNECT, then let the broker close first.
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
