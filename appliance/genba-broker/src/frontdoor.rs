//! The public MQTT port: accepts connections, bounds them, reads each CONNECT, checks the
//! credentials and answers refusals with a CONNACK reason code. An accepted client is served
//! by [`crate::connection`].
//!
//! A connection takes its slot when it is accepted, so sockets that never send CONNECT count
//! against `max_connections`. When the slots are full, genba's own roles (the health probe)
//! still get in through a few reserved slots, and clients get CONNACK "server busy".

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use genba_store::Journal;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::auth::{Access, Accounts, INTERNAL_USER};
use crate::broker::Broker;
use crate::connection::DisabledDevices;
use crate::packet::{self, connack_refusal, read_frame, PacketError, Refusal};
use genba_config::acl::is_device_id;

/// How long a connection holding a slot may take to send CONNECT.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long a connection without a slot may take to send CONNECT (to be told "busy").
const BUSY_CONNECT_WAIT: Duration = Duration::from_secs(2);
/// The largest CONNECT read (a will payload counts).
const MAX_CONNECT: usize = 64 * 1024;

/// A client connection's read side (plain TCP or TLS), buffered.
pub(crate) type Reader = BufReader<Box<dyn AsyncRead + Send + Unpin>>;
/// A client connection's write side.
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// How a listener's connections carry MQTT: plain TCP, TLS, WebSocket, or WebSocket over TLS.
#[derive(Clone, Default)]
pub(crate) struct Transport {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub websocket: bool,
}

impl Transport {
    async fn open(
        &self,
        stream: tokio::net::TcpStream,
    ) -> Result<(Box<dyn AsyncRead + Send + Unpin>, Writer), String> {
        match (&self.tls, self.websocket) {
            (None, false) => {
                let (rd, wr) = stream.into_split();
                Ok((Box::new(rd), Box::new(wr)))
            }
            (None, true) => websocket(stream).await,
            (Some(tls), ws) => {
                let s = tls.accept(stream).await.map_err(|e| format!("TLS: {e}"))?;
                if ws {
                    websocket(s).await
                } else {
                    let (rd, wr) = tokio::io::split(s);
                    Ok((Box::new(rd), Box::new(wr)))
                }
            }
        }
    }
}

/// MQTT over WebSocket (MQTT 5 section 6): the HTTP upgrade, with the `mqtt` subprotocol when
/// the client asks for it; then binary frames carry the byte stream.
// The upgrade callback's error type is tungstenite's (an HTTP response), not ours to shrink.
#[allow(clippy::result_large_err)]
async fn websocket<S>(stream: S) -> Result<(Box<dyn AsyncRead + Send + Unpin>, Writer), String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let choose = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let asked = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let mqtt = asked
            .split(',')
            .map(str::trim)
            .find(|p| *p == "mqtt" || *p == "mqttv3.1");
        if let Some(p) = mqtt.and_then(|p| p.parse().ok()) {
            resp.headers_mut().insert("sec-websocket-protocol", p);
        }
        Ok(resp)
    };
    let ws = async_tungstenite::tokio::accept_hdr_async(stream, choose)
        .await
        .map_err(|e| format!("WebSocket: {e}"))?;
    let (rd, wr) = tokio::io::split(ws_stream_tungstenite::WsStream::new(ws));
    Ok((Box::new(rd), Box::new(wr)))
}

/// Counters the front door keeps.
#[derive(Debug, Default)]
pub struct DoorStats {
    /// Connections refused because every slot was taken (CONNACK "server busy" or closed).
    pub refused_busy: AtomicU64,
}

pub(crate) struct FrontDoor {
    pub broker: Arc<Broker>,
    pub accounts: Accounts,
    pub journal: Journal,
    /// Largest PUBLISH payload accepted (bytes); larger is refused, never journaled.
    pub max_payload: usize,
    /// Largest packet read at all (remaining length).
    pub max_packet: usize,
    /// Client slots, taken when a connection is accepted.
    pub connections: Arc<Semaphore>,
    /// Slots for genba's own roles when the client slots are full.
    pub internal: Arc<Semaphore>,
    /// Connections being told "server busy" (bounded: beyond it they are just closed).
    pub refusing: Arc<Semaphore>,
    pub stats: Arc<DoorStats>,
    /// The clients connected now, for `/v2/session` (its own connections: their commits skip
    /// the fsync, which the registry's other users must not inherit).
    pub sessions: genba_store::Db,
    /// Devices disabled in the registry: their publishes are refused, not journaled.
    pub disabled: DisabledDevices,
}

impl FrontDoor {
    /// Accepts on `listener` until `stop`. Each connection takes its slot, then does its
    /// TLS handshake and WebSocket upgrade (if `transport` says so) within the CONNECT wait.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut stop: watch::Receiver<bool>,
        transport: Transport,
    ) {
        let mut backoff = AcceptBackoff::default();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop_requested(&mut stop) => return,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE/ENFILE: waiting is the only cure; do not spin or flood the log.
                    let wait = backoff.failed(&e, Instant::now());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop_requested(&mut stop) => return,
                    }
                    continue;
                }
            };
            backoff.succeeded();
            let slot = self.connections.clone().try_acquire_owned().ok();
            let _ = stream.set_nodelay(true);
            let door = self.clone();
            let transport = transport.clone();
            tokio::spawn(async move {
                let opened = tokio::time::timeout(CONNECT_WAIT, transport.open(stream)).await;
                let (rd, wr) = match opened {
                    Ok(Ok(halves)) => halves,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "mqtt connection refused before CONNECT");
                        return;
                    }
                    Err(_) => return,
                };
                if let Err(e) = door.handle(rd, wr, peer, slot).await {
                    tracing::debug!(%peer, error = %e, "mqtt connection ended");
                }
            });
        }
    }

    async fn handle(
        self: Arc<Self>,
        rd: Box<dyn AsyncRead + Send + Unpin>,
        mut wr: Writer,
        peer: SocketAddr,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<(), PacketError> {
        // Without a client slot: read the CONNECT only to say "busy" (or let genba's own
        // probe in), and only for a bounded number of sockets at once.
        let refusing = match slot {
            Some(_) => None,
            None => match self.refusing.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            },
        };
        let mut rd: Reader = BufReader::with_capacity(4 * 1024, rd);
        let wait = if slot.is_some() {
            CONNECT_WAIT
        } else {
            BUSY_CONNECT_WAIT
        };
        let first = tokio::time::timeout(wait, read_frame(&mut rd, MAX_CONNECT))
            .await
            .map_err(|_| PacketError::Malformed("no CONNECT in time"))??;
        if first.kind() != packet::CONNECT {
            return Err(PacketError::Malformed("first packet is not CONNECT"));
        }
        let connect = match packet::parse_connect(&first.body) {
            Ok(c) => c,
            Err(e) => {
                // A CONNECT this broker cannot take: tell an MQTT 5 client why (its level is
                // the 7th byte), close on anything else.
                if first.body.get(6) == Some(&5) {
                    if let Some(v) = e.violation() {
                        let _ = wr.write_all(&[0x20, 0x03, 0x00, v as u8, 0x00]).await;
                    }
                }
                return Err(e);
            }
        };
        let refuse = |why| connack_refusal(connect.level, why);
        if connect.level != 4 && connect.level != 5 {
            wr.write_all(&refuse(Refusal::BadVersion)).await?;
            return Ok(());
        }
        let claims_internal = connect.username.as_deref() == Some(INTERNAL_USER);
        if slot.is_none() && !claims_internal {
            self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
            wr.write_all(&refuse(Refusal::ServerBusy)).await?;
            return Ok(());
        }
        let mut access = self
            .accounts
            .now()
            .verifier
            .check(connect.username.as_deref(), connect.password.as_deref())
            .await;
        // A thermometer may log in as itself with one of its device keys (user name = device
        // id, password = the key): no account in the config file needed.
        let mut device = None;
        if access == Access::Denied {
            if let (Some(user), Some(key)) = (&connect.username, &connect.password) {
                let key = std::str::from_utf8(key).unwrap_or_default();
                if is_device_id(user) && !key.is_empty() && self.device_key_ok(key, user).await {
                    access = Access::Client;
                    device = Some(user.clone());
                }
            }
        }
        if access == Access::Denied {
            let why = if connect.username.is_some() {
                Refusal::BadCredentials
            } else {
                Refusal::NotAuthorized
            };
            tracing::info!(client_id = %connect.client_id, user = ?connect.username, "mqtt connect refused");
            wr.write_all(&refuse(why)).await?;
            return Ok(());
        }
        // Genba's own roles use the reserved slots first, leaving client slots to clients.
        let _slot = if access == Access::Internal {
            match self.internal.clone().try_acquire_owned() {
                Ok(p) => {
                    drop(slot);
                    p
                }
                Err(_) => match slot {
                    Some(s) => s,
                    None => {
                        wr.write_all(&refuse(Refusal::ServerBusy)).await?;
                        return Ok(());
                    }
                },
            }
        } else {
            match slot {
                Some(s) => s,
                None => {
                    self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                    wr.write_all(&refuse(Refusal::ServerBusy)).await?;
                    return Ok(());
                }
            }
        };
        drop(refusing);
        self.serve_client(rd, wr, peer, connect, access, device)
            .await
    }
}

/// Resolves once `stop` says true; never if its sender is gone (the caller dropped the
/// `RunningBroker` handle, which does not mean "stop").
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Accept failures (the open-file limit): wait 100 ms, doubling to 1 s while they last, and
/// log at most once per `LOG_EVERY` with the number of failures since the last line.
#[derive(Debug)]
struct AcceptBackoff {
    wait: Duration,
    failures: u64,
    logged_at: Option<Instant>,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            wait: BACKOFF_FIRST,
            failures: 0,
            logged_at: None,
        }
    }
}

impl AcceptBackoff {
    /// Records a failure at `now`; returns how long to wait before accepting again.
    fn failed(&mut self, e: &std::io::Error, now: Instant) -> Duration {
        self.failures += 1;
        if self.should_log(now) {
            tracing::warn!(error = %e, failures = self.failures, "mqtt accept failing (open-file limit?); backing off");
            self.failures = 0;
            self.logged_at = Some(now);
        }
        let wait = self.wait;
        self.wait = (self.wait * 2).min(BACKOFF_MAX);
        wait
    }

    fn should_log(&self, now: Instant) -> bool {
        self.logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY)
    }

    fn succeeded(&mut self) {
        self.wait = BACKOFF_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_grows_to_a_second_and_logs_once_per_interval() {
        let mut b = AcceptBackoff::default();
        let e = std::io::Error::from_raw_os_error(24);
        let t0 = Instant::now();
        let waits: Vec<_> = (0..6)
            .map(|i| b.failed(&e, t0 + Duration::from_millis(i)))
            .collect();
        let ms: Vec<u128> = waits.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
        // Logged on the first failure only; the count restarts after each line.
        assert_eq!(b.logged_at, Some(t0));
        assert_eq!(b.failures, 5);
        assert!(!b.should_log(t0 + Duration::from_secs(9)));
        assert!(b.should_log(t0 + LOG_EVERY));
        b.succeeded();
        assert_eq!(b.failed(&e, t0 + LOG_EVERY), BACKOFF_FIRST);
        assert_eq!(b.failures, 0);
    }
}
