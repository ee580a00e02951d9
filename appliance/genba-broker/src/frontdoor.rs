//! The public MQTT port. Where an MQTT message enters Genba.
//!
//! Each connection's CONNECT is read here: MQTT 3.1.1 goes to rumqttd's v4 listener, MQTT 5
//! to its v5 listener (both on loopback), so one port serves both. Bad credentials get a
//! CONNACK with the reason code (rumqttd would just close), and keep-alive 0 is accepted.
//! Every PUBLISH from a client is checked (topic, packet id, size) and appended to the journal;
//! QoS 1/2 publishes are forwarded to the broker only after the commit, so a PUBACK/PUBREC
//! always means "durable". A publish the front door refuses is neither journaled nor forwarded:
//! MQTT 5 clients get a DISCONNECT with the reason code, MQTT 3.1.1 clients are disconnected.
//!
//! A connection takes its slot when it is accepted, so sockets that never send CONNECT count
//! against `max_connections`. When the slots are full, genba's own roles (the health probe)
//! still get in through a few reserved slots, and clients get CONNACK "server busy".

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use genba_store::{Journal, NewMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::auth::{Access, Verifier, INTERNAL_USER};
use crate::packet::{
    self, connack_refusal, read_frame, Frame, PacketError, Refusal, Violation, PUBACK, PUBREC,
};

/// Keep-alive that replaces 0 (rumqttd refuses 0): the longest MQTT allows, about 18 hours.
const KEEP_ALIVE_FOR_ZERO: u16 = u16::MAX;
/// Packets in flight between a client's reader and its journal-ordered forwarder.
const FORWARD_QUEUE: usize = 256;
/// How long a connection holding a slot may take to send CONNECT.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long a connection without a slot may take to send CONNECT (to be told "busy").
const BUSY_CONNECT_WAIT: Duration = Duration::from_secs(2);
/// The Receive Maximum announced to MQTT 5 clients and kept here (rumqttd announces and keeps
/// none): QoS 1/2 publishes a client may have unacknowledged; one more is DISCONNECT 0x93.
pub(crate) const RECEIVE_MAXIMUM: u16 = 100;
/// How long the last packet to a client (a DISCONNECT) may wait for the packet in front of it.
const LAST_WORD_WAIT: Duration = Duration::from_secs(2);

/// Counters the front door keeps.
#[derive(Debug, Default)]
pub struct DoorStats {
    /// Connections refused because every slot was taken (CONNACK "server busy" or closed).
    pub refused_busy: AtomicU64,
}

pub(crate) struct FrontDoor {
    pub v4: SocketAddr,
    pub v5: SocketAddr,
    pub verifier: Verifier,
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

/// `DEVICE_TOKEN/json/DEVICE_ID[/TAG]` (ThingScale's MQTT device connector).
fn thingscale_topic(topic: &str) -> Option<(&str, &str, Option<&str>)> {
    let levels: Vec<&str> = topic.split('/').collect();
    match levels[..] {
        [token, "json", device] if !token.is_empty() && !device.is_empty() => {
            Some((token, device, None))
        }
        [token, "json", device, tag]
            if !token.is_empty() && !device.is_empty() && !tag.is_empty() =>
        {
            Some((token, device, Some(tag)))
        }
        _ => None,
    }
}

/// The device of a `devices/{id}/...` topic.
fn device_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("devices/")?;
    rest.split('/').next().filter(|d| !d.is_empty())
}

/// The registry's disabled devices, read again at most every [`DisabledDevices::FRESH`].
#[derive(Default)]
pub(crate) struct DisabledDevices {
    cache: tokio::sync::Mutex<Option<(Instant, HashSet<String>)>>,
}

impl DisabledDevices {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(2);

    async fn contains(&self, db: &genba_store::Db, device: &str) -> bool {
        let mut cache = self.cache.lock().await;
        let stale = cache
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= Self::FRESH);
        if stale {
            let read = db.run(genba_store::devices::disabled_ids).await;
            match read {
                Ok(set) => *cache = Some((Instant::now(), set)),
                // Unreadable registry: keep what was known (accepting is the safe side: the
                // consumer parks a disabled device's rows anyway).
                Err(e) => tracing::warn!(error = %e, "disabled devices: cannot read the registry"),
            }
        }
        cache.as_ref().is_some_and(|(_, set)| set.contains(device))
    }
}

/// How a client's side of a connection ended without a violation.
enum ClientEnd {
    /// It sent DISCONNECT (forwarded to the broker).
    Disconnect,
    /// It closed the connection (or the broker side went away).
    Closed,
}

/// MQTT DISCONNECT packet type.
const DISCONNECT: u8 = 14;

/// What the client is to be told before its connection is closed.
enum LastWord {
    /// Nothing: close (MQTT 3.1.1, or the client went away).
    None,
    Packet(Vec<u8>),
}

impl FrontDoor {
    /// Whether `token` is an enabled `telemetry:write` key of `device` (`genba keys add`).
    async fn device_key_ok(&self, token: &str, device: &str) -> bool {
        let digest = genba_config::passwords::api_key_digest(token);
        let device = device.to_owned();
        self.sessions
            .run(move |c| genba_store::devices::key_owner(c, &digest))
            .await
            .ok()
            .flatten()
            .is_some_and(|(owner, enabled, scopes)| {
                enabled && owner == device && scopes.split(' ').any(|s| s == "telemetry:write")
            })
    }

    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut stop: watch::Receiver<bool>,
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
            tokio::spawn(async move {
                if let Err(e) = door.handle(stream, peer, slot).await {
                    tracing::debug!(%peer, error = %e, "mqtt connection ended");
                }
            });
        }
    }

    async fn handle(
        &self,
        stream: TcpStream,
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
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(16 * 1024, rd);
        let wait = if slot.is_some() {
            CONNECT_WAIT
        } else {
            BUSY_CONNECT_WAIT
        };
        let first = tokio::time::timeout(wait, read_frame(&mut rd, 64 * 1024))
            .await
            .map_err(|_| PacketError::Malformed("no CONNECT in time"))??;
        if first.kind() != packet::CONNECT {
            return Err(PacketError::Malformed("first packet is not CONNECT"));
        }
        let mut connect_frame = first;
        let connect = packet::parse_connect(&connect_frame.body)?;
        let refuse = |why| connack_refusal(connect.level, why);
        let upstream_addr = match connect.level {
            4 => self.v4,
            5 => self.v5,
            _ => {
                wr.write_all(&refuse(Refusal::BadVersion)).await?;
                return Ok(());
            }
        };
        let claims_internal = connect.username.as_deref() == Some(INTERNAL_USER);
        if slot.is_none() && !claims_internal {
            self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
            wr.write_all(&refuse(Refusal::ServerBusy)).await?;
            return Ok(());
        }
        let access = self
            .verifier
            .check(connect.username.as_deref(), connect.password.as_deref())
            .await;
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
        if connect.keep_alive == 0 {
            let at = connect.keep_alive_at;
            connect_frame.body[at..at + 2].copy_from_slice(&KEEP_ALIVE_FOR_ZERO.to_be_bytes());
        }
        let upstream = TcpStream::connect(upstream_addr).await?;
        let _ = upstream.set_nodelay(true);
        let (up_rd, up_wr) = upstream.into_split();
        let mut up_wr = BufWriter::with_capacity(16 * 1024, up_wr);
        up_wr.write_all(&connect_frame.encode()).await?;
        up_wr.flush().await?;
        let mut up_rd = up_rd;
        // MQTT 5: rumqttd's CONNACK, with the Receive Maximum the front door keeps.
        let unacked = if connect.level == 5 {
            let connack = read_frame(&mut up_rd, 64 * 1024).await?;
            let connack = if connack.kind() == packet::CONNACK {
                packet::connack_with_receive_maximum(connack, RECEIVE_MAXIMUM)
            } else {
                connack
            };
            wr.write_all(&connack.encode()).await?;
            Some(Arc::new(AtomicUsize::new(0)))
        } else {
            None
        };

        // Broker -> client: bytes as they come, with the front door's own packets slotted in
        // between two of the broker's.
        let (say_tx, say_rx) = mpsc::channel(16);
        // Client -> broker: packets, publishes held until their journal commit.
        let (fwd_tx, fwd_rx) = mpsc::channel(FORWARD_QUEUE);
        // An MQTT 5 client's Receive Maximum and Maximum Packet Size, which rumqttd ignores,
        // are kept here: such a client's downstream goes packet by packet.
        let limits = (connect.level == 5)
            .then(|| ClientLimits::new(connect.receive_maximum, connect.maximum_packet_size))
            .flatten();
        let credits = limits.map(|l| Arc::new(Semaphore::new(usize::from(l.receive_maximum))));
        let outstanding = SharedOutstanding::default();
        let mut down = match (limits, &credits) {
            (Some(limits), Some(credits)) => tokio::spawn(pump_frames(
                up_rd,
                wr,
                say_rx,
                FramePump {
                    limits,
                    credits: credits.clone(),
                    outstanding: outstanding.clone(),
                    to_broker: fwd_tx.downgrade(),
                    max_frame: self.max_packet,
                    unacked: unacked.clone(),
                },
            )),
            _ => tokio::spawn(pump_down(up_rd, wr, say_rx, unacked.clone())),
        };
        let forward = tokio::spawn(forward_in_order(fwd_rx, up_wr));
        let registered = if access == Access::Client {
            let row = genba_store::sessions::MqttSession {
                id: 0,
                client_id: connect.client_id.clone(),
                username: connect.username.clone(),
                address: peer.to_string(),
                protocol: connect.level,
                keep_alive: connect.keep_alive,
                clean_start: connect.clean_start,
                connected_at_ms: 0,
                subscriptions: Vec::new(),
            };
            self.sessions
                .run(move |c| genba_store::sessions::open(c, &row))
                .await
                .map_err(|e| tracing::warn!(error = %e, "session list: cannot record a client"))
                .ok()
        } else {
            None
        };
        let session = Session {
            registered,
            v5: connect.level == 5,
            journal_it: access == Access::Client,
            clean_start: connect.clean_start,
            source: format!("mqtt:{}", connect.client_id),
            credits: credits.zip(limits.map(|l| usize::from(l.receive_maximum))),
            outstanding,
            unacked,
        };
        let result = self.read_client(&mut rd, &session, fwd_tx, &say_tx).await;
        if let Some(id) = registered {
            let _ = self
                .sessions
                .run(move |c| genba_store::sessions::close(c, id))
                .await;
        }
        // Keep the broker connection open until the client has had the last word.
        let up_wr = forward.await.ok().flatten();
        let result = match result {
            Ok(ClientEnd::Disconnect) => {
                // The client said DISCONNECT: let rumqttd close first. Closing right behind
                // the DISCONNECT races its router, which then logs an ERROR per client.
                let _ = tokio::time::timeout(LAST_WORD_WAIT, &mut down).await;
                Ok(())
            }
            Ok(ClientEnd::Closed) => Ok(()),
            Err(e) => {
                let last = match e.violation() {
                    Some(v) if session.v5 => LastWord::Packet(packet::disconnect_v5(v)),
                    _ => LastWord::None,
                };
                if let Some(v) = e.violation() {
                    tracing::info!(source = %session.source, error = %e, reason = v as u8, "mqtt client disconnected for a protocol violation");
                }
                if let LastWord::Packet(p) = last {
                    if say_tx.send(Say::Last(p)).await.is_ok()
                        && tokio::time::timeout(LAST_WORD_WAIT, &mut down)
                            .await
                            .is_ok()
                    {
                        drop(up_wr);
                        // Read what the client still sends (a PUBREL for a PUBREC it got
                        // before the DISCONNECT) for a moment instead of resetting the
                        // connection under it, so it reads the DISCONNECT and its reason.
                        let drain = async {
                            let mut sink = [0u8; 4096];
                            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
                        };
                        let _ = tokio::time::timeout(LAST_WORD_WAIT, drain).await;
                        return Err(e);
                    }
                }
                Err(e)
            }
        };
        drop(up_wr);
        down.abort();
        result
    }

    async fn read_client(
        &self,
        rd: &mut BufReader<OwnedReadHalf>,
        session: &Session,
        fwd: mpsc::Sender<(Frame, Option<Commit>)>,
        say: &mpsc::Sender<Say>,
    ) -> Result<ClientEnd, PacketError> {
        let mut aliases = HashMap::new();
        // QoS 2 packet ids the front door answered itself (PUBREC), so it answers their PUBREL.
        let mut own_qos2: HashSet<u16> = HashSet::new();
        // QoS 1/2 packet ids journaled on this connection (for the DUP check below).
        let mut journaled = PidSet::default();
        loop {
            let frame = match read_frame(rd, self.max_packet).await {
                Ok(f) => f,
                Err(PacketError::Closed) => return Ok(ClientEnd::Closed),
                Err(e) => return Err(e),
            };
            let mut commit = None;
            match frame.kind() {
                packet::CONNECT => {
                    return Err(PacketError::Refused(
                        Violation::Protocol,
                        "second CONNECT on a connection",
                    ))
                }
                packet::PUBLISH => {
                    let mut p = packet::parse_publish(&frame, session.v5, &mut aliases)?;
                    if p.payload.len() > self.max_payload {
                        return Err(PacketError::Refused(
                            Violation::TooLarge,
                            "publish payload over max_payload",
                        ));
                    }
                    // ThingScale's MQTT device connector: DEVICE_TOKEN/json/DEVICE_ID[/TAG] is
                    // journaled as devices/DEVICE_ID/telemetry[/TAG] once the token is that
                    // device's key (the token itself is never stored).
                    let mut wrong_token = false;
                    if let (Some((token, device, tag)), true) =
                        (thingscale_topic(&p.topic), session.journal_it)
                    {
                        if self.device_key_ok(token, device).await {
                            p.topic = match tag {
                                Some(t) => format!("devices/{device}/telemetry/{t}"),
                                None => format!("devices/{device}/telemetry"),
                            };
                        } else {
                            wrong_token = true;
                            tracing::info!(source = %session.source, %device,
                                "ThingScale-style publish with a wrong device token refused");
                        }
                    }
                    let disabled = match device_of(&p.topic) {
                        Some(device) if session.journal_it => {
                            self.disabled.contains(&self.sessions, device).await
                        }
                        _ => false,
                    };
                    if disabled {
                        tracing::info!(source = %session.source, topic = %p.topic,
                            "publish of a disabled device refused; not journaled");
                    }
                    if p.topic.starts_with("$SYS") || disabled || wrong_token {
                        // Clients do not write the broker's own topics, nor disabled devices'.
                        // Like Mosquitto's denials: MQTT 5 gets "not authorized" in its
                        // acknowledgement; 3.1.1 has no code for it and gets a plain
                        // acknowledgement so it does not resend forever.
                        if let Some(pid) = p.pid {
                            let kind = if p.qos == 1 { PUBACK } else { PUBREC };
                            let ack = if session.v5 {
                                packet::ack_v5(kind, pid, 0x87)
                            } else {
                                let [hi, lo] = pid.to_be_bytes();
                                if p.qos == 2 {
                                    own_qos2.insert(pid);
                                }
                                vec![kind << 4, 0x02, hi, lo]
                            };
                            if say.send(Say::Packet(ack)).await.is_err() {
                                return Ok(ClientEnd::Closed);
                            }
                        }
                        continue;
                    }
                    if let (Some(unacked), 1..) = (&session.unacked, p.qos) {
                        if unacked.fetch_add(1, Ordering::Relaxed) >= usize::from(RECEIVE_MAXIMUM) {
                            return Err(PacketError::Refused(
                                Violation::ReceiveMaximumExceeded,
                                "more unacknowledged QoS 1/2 publishes than Receive Maximum",
                            ));
                        }
                    }
                    if session.journal_it && !p.topic.starts_with('$') {
                        let qos = p.qos;
                        // A resend (DUP) can only repeat a publish of this connection when it
                        // started clean: the client dropped whatever it had in flight before.
                        // Otherwise it is a new publication, and the journal must not match
                        // it against an older row with the same packet id and content.
                        let dup = match p.pid {
                            Some(pid) => {
                                let seen = journaled.insert(pid);
                                p.dup && (seen || !session.clean_start)
                            }
                            None => false,
                        };
                        let rx = self
                            .journal
                            .submit(NewMessage {
                                source: session.source.clone(),
                                topic: p.topic,
                                payload: p.payload,
                                qos,
                                retain: p.retain,
                                mqtt_pid: p.pid,
                                dup,
                            })
                            .await
                            .map_err(|e| std::io::Error::other(e.to_string()))?;
                        // QoS 0 has no acknowledgement to hold back.
                        if qos > 0 {
                            commit = Some(rx);
                        }
                    }
                }
                // The client acknowledging one of the broker's QoS 1/2 publishes: room for one
                // more under its Receive Maximum.
                PUBACK | packet::PUBCOMP | PUBREC => {
                    let ends_flow = frame.kind() != PUBREC || frame.body.get(2) >= Some(&0x80);
                    if let (Some((credits, max)), true) = (&session.credits, ends_flow) {
                        if credits.available_permits() < *max {
                            credits.add_permits(1);
                        }
                    }
                    if session.credits.is_some() && frame.kind() != packet::PUBCOMP {
                        if let [hi, lo, ..] = frame.body[..] {
                            let due = {
                                let mut o = lock(&session.outstanding);
                                o.acked(u16::from_be_bytes([hi, lo]));
                                o.due()
                            };
                            if fwd.send((frame, None)).await.is_err() {
                                return Ok(ClientEnd::Closed);
                            }
                            for (kind, pid) in due {
                                if fwd.send((ack_frame(kind, pid), None)).await.is_err() {
                                    return Ok(ClientEnd::Closed);
                                }
                            }
                            continue;
                        }
                    }
                }
                kind @ (packet::SUBSCRIBE | packet::UNSUBSCRIBE) => {
                    if let (Some(id), Ok(filters)) = (
                        session.registered,
                        packet::filters(kind, &frame.body, session.v5),
                    ) {
                        let _ = self
                            .sessions
                            .run(move |c| {
                                genba_store::sessions::change_subscriptions(
                                    c,
                                    id,
                                    &filters,
                                    kind == packet::SUBSCRIBE,
                                )
                            })
                            .await;
                    }
                }
                packet::PUBREL if !own_qos2.is_empty() => {
                    if let [hi, lo, ..] = frame.body[..] {
                        if own_qos2.remove(&u16::from_be_bytes([hi, lo])) {
                            if say
                                .send(Say::Packet(vec![0x70, 0x02, hi, lo]))
                                .await
                                .is_err()
                            {
                                return Ok(ClientEnd::Closed);
                            }
                            continue;
                        }
                    }
                }
                _ => {}
            }
            let goodbye = frame.kind() == DISCONNECT;
            if fwd.send((frame, commit)).await.is_err() {
                return Ok(ClientEnd::Closed);
            }
            if goodbye {
                return Ok(ClientEnd::Disconnect);
            }
        }
    }
}

/// Resolves once `stop` says true; never if its sender is gone (the caller dropped the
/// `RunningBroker` handle, which does not mean "stop").
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What the front door knows about one client connection.
struct Session {
    /// This client's row in the session list (genba's own roles have none).
    registered: Option<i64>,
    v5: bool,
    journal_it: bool,
    clean_start: bool,
    /// The client's Receive Maximum credits (shared with `pump_frames`) and the maximum.
    credits: Option<(Arc<Semaphore>, usize)>,
    /// The broker's publishes to this client not acknowledged yet (with `pump_frames`).
    outstanding: SharedOutstanding,
    /// MQTT 5: the client's QoS 1/2 publishes the broker has not acknowledged yet (the down
    /// pump counts the PUBACKs and PUBCOMPs it passes).
    unacked: Option<Arc<AtomicUsize>>,
    source: String,
}

/// A set of packet ids: one bit each, allocated on first use (8 KiB).
#[derive(Default)]
struct PidSet(Option<Box<[u64; 1024]>>);

impl PidSet {
    /// Adds `pid`; returns whether it was already there.
    fn insert(&mut self, pid: u16) -> bool {
        let bits = self.0.get_or_insert_with(|| Box::new([0; 1024]));
        let (word, bit) = (usize::from(pid / 64), pid % 64);
        let seen = bits[word] & (1 << bit) != 0;
        bits[word] |= 1 << bit;
        seen
    }
}

type Commit = oneshot::Receiver<genba_store::Result<i64>>;

/// Writes packets to the broker in arrival order, each after its journal commit. A failed
/// commit ends the connection, so the client never gets an acknowledgement for it. Returns
/// the writer (flushed, still open) unless the connection to the broker failed.
async fn forward_in_order(
    mut rx: mpsc::Receiver<(Frame, Option<Commit>)>,
    mut up: BufWriter<OwnedWriteHalf>,
) -> Option<BufWriter<OwnedWriteHalf>> {
    while let Some((frame, commit)) = rx.recv().await {
        if let Some(commit) = commit {
            match commit.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "journal commit failed; closing the client connection");
                    return None;
                }
                Err(_) => return None,
            }
        }
        if up.write_all(&frame.encode()).await.is_err() {
            return None;
        }
        if rx.is_empty() && up.flush().await.is_err() {
            return None;
        }
    }
    up.flush().await.ok()?;
    Some(up)
}

/// A packet the front door itself sends to a client.
enum Say {
    Packet(Vec<u8>),
    /// The last packet: the connection is closed after it.
    Last(Vec<u8>),
}

/// Copies the broker's bytes to the client, and slots the front door's own packets in at
/// packet boundaries of that stream; counts the broker's acknowledgements into `unacked`.
async fn pump_down(
    mut up: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    mut say: mpsc::Receiver<Say>,
    unacked: Option<Arc<AtomicUsize>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut framing = Framing::default();
    let mut acks = 0usize;
    let mut pending: Vec<Say> = Vec::new();
    let mut say_open = true;
    loop {
        if framing.at_boundary() && !pending.is_empty() {
            match write_said(&mut client, &mut pending).await {
                Ok(true) => {}
                Ok(false) | Err(_) => break,
            }
        }
        tokio::select! {
            msg = say.recv(), if say_open => match msg {
                Some(m) => pending.push(m),
                None => say_open = false,
            },
            n = up.read(&mut buf) => {
                let n = match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut chunk = &buf[..n];
                while !pending.is_empty() && !chunk.is_empty() {
                    let k = framing.advance(chunk, true, &mut acks);
                    if client.write_all(&chunk[..k]).await.is_err() {
                        return;
                    }
                    chunk = &chunk[k..];
                    if framing.at_boundary() {
                        match write_said(&mut client, &mut pending).await {
                            Ok(true) => {}
                            Ok(false) | Err(_) => return shutdown(client).await,
                        }
                    }
                }
                framing.advance(chunk, false, &mut acks);
                if let Some(u) = &unacked {
                    release(u, std::mem::take(&mut acks));
                }
                if client.write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
    }
    if framing.at_boundary() && !pending.is_empty() {
        let _ = write_said(&mut client, &mut pending).await;
    }
    shutdown(client).await;
}

/// The limits an MQTT 5 client announced in its CONNECT.
#[derive(Debug, Clone, Copy)]
struct ClientLimits {
    receive_maximum: u16,
    maximum_packet_size: usize,
}

impl ClientLimits {
    /// `None` when the client announced neither (then bytes are copied as they come).
    fn new(receive_maximum: Option<u16>, maximum_packet_size: Option<u32>) -> Option<Self> {
        if receive_maximum.is_none() && maximum_packet_size.is_none() {
            return None;
        }
        Some(ClientLimits {
            receive_maximum: receive_maximum.unwrap_or(u16::MAX),
            maximum_packet_size: maximum_packet_size
                .and_then(|m| usize::try_from(m).ok())
                .unwrap_or(usize::MAX),
        })
    }
}

/// The broker's QoS 1/2 publishes to a client that are not acknowledged yet, in the order
/// sent: rumqttd takes acknowledgements only in that order, so one for a publish the front
/// door dropped (too large for the client) waits for the client's acks before it.
#[derive(Debug, Default)]
struct Outstanding(std::collections::VecDeque<(u16, bool, u8)>);

impl Outstanding {
    /// Records a publish (`dropped` by the front door or sent to the client).
    fn push(&mut self, pid: u16, dropped: bool, qos: u8) {
        self.0.push_back((pid, dropped, qos));
    }

    /// The client acknowledged `pid`.
    fn acked(&mut self, pid: u16) {
        if let Some(i) = self
            .0
            .iter()
            .position(|(p, dropped, _)| *p == pid && !dropped)
        {
            self.0.remove(i);
        }
    }

    /// Acknowledgements now due for dropped publishes (PUBACK or PUBREC, packet id).
    fn due(&mut self) -> Vec<(u8, [u8; 2])> {
        let mut due = Vec::new();
        while let Some(&(pid, true, qos)) = self.0.front() {
            self.0.pop_front();
            due.push((if qos == 1 { PUBACK } else { PUBREC }, pid.to_be_bytes()));
        }
        due
    }
}

type SharedOutstanding = Arc<std::sync::Mutex<Outstanding>>;

fn lock(o: &SharedOutstanding) -> std::sync::MutexGuard<'_, Outstanding> {
    o.lock().unwrap_or_else(|e| e.into_inner())
}

/// An acknowledgement from the front door to the broker, on the client's behalf.
fn ack_frame(kind: u8, pid: [u8; 2]) -> Frame {
    Frame {
        header: kind << 4 | if kind == packet::PUBREL { 0x02 } else { 0 },
        body: pid.to_vec(),
    }
}

/// The size of a packet on the wire.
fn wire_len(frame: &Frame) -> usize {
    let n = frame.body.len();
    let len_bytes = match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_bytes + n
}

/// What `pump_frames` shares with the client's side of the connection.
struct FramePump {
    limits: ClientLimits,
    credits: Arc<Semaphore>,
    outstanding: SharedOutstanding,
    /// For acknowledgements on the client's behalf (weak: it must not keep the forwarder up).
    to_broker: mpsc::WeakSender<(Frame, Option<Commit>)>,
    max_frame: usize,
    unacked: Option<Arc<AtomicUsize>>,
}

/// The broker's packets to a client that announced limits, one packet at a time:
/// - a QoS 1/2 PUBLISH waits while the client holds `receive_maximum` unacknowledged ones
///   (other packets pass it);
/// - a packet larger than the client's Maximum Packet Size is not sent; a QoS 1/2 PUBLISH
///   dropped so is acknowledged to the broker on the client's behalf, "as if delivered"
///   (MQTT 5 section 3.1.2.11.4).
async fn pump_frames(
    up: OwnedReadHalf,
    client: OwnedWriteHalf,
    mut say: mpsc::Receiver<Say>,
    pump: FramePump,
) {
    let FramePump {
        limits,
        credits,
        outstanding,
        to_broker,
        max_frame,
        unacked,
    } = pump;
    // A reader task, so that no packet is lost half-read when another branch wins below.
    let (frames_tx, mut frames) = mpsc::channel::<Frame>(64);
    let reader = tokio::spawn(async move {
        let mut up = BufReader::with_capacity(16 * 1024, up);
        while let Ok(f) = read_frame(&mut up, max_frame).await {
            if frames_tx.send(f).await.is_err() {
                break;
            }
        }
    });
    let mut client = BufWriter::with_capacity(16 * 1024, client);
    let mut held: std::collections::VecDeque<Frame> = std::collections::VecDeque::new();
    let mut dropped_qos2: HashSet<u16> = HashSet::new();
    let mut say_open = true;
    let acks_to_broker = |acks: Vec<(u8, [u8; 2])>| {
        let to_broker = to_broker.clone();
        async move {
            if let Some(tx) = to_broker.upgrade() {
                for (kind, pid) in acks {
                    let _ = tx.send((ack_frame(kind, pid), None)).await;
                }
            }
        }
    };
    loop {
        let wrote = tokio::select! {
            msg = say.recv(), if say_open => match msg {
                Some(Say::Packet(p)) => client.write_all(&p).await.is_ok(),
                Some(Say::Last(p)) => {
                    let _ = client.write_all(&p).await;
                    break;
                }
                None => {
                    say_open = false;
                    true
                }
            },
            permit = credits.clone().acquire_owned(), if !held.is_empty() => {
                let (Ok(permit), Some(f)) = (permit, held.pop_front()) else { break };
                permit.forget();
                client.write_all(&f.encode()).await.is_ok()
            },
            frame = frames.recv() => {
                let Some(frame) = frame else { break };
                if let (Some(u), PUBACK | packet::PUBCOMP) = (&unacked, frame.kind()) {
                    release(u, 1);
                }
                let pid = |f: &Frame, at: usize| -> Option<[u8; 2]> {
                    Some([*f.body.get(at)?, *f.body.get(at + 1)?])
                };
                match frame.kind() {
                    packet::PUBLISH => {
                        let qos = (frame.header >> 1) & 0x03;
                        let topic_len = pid(&frame, 0).map(|b| usize::from(u16::from_be_bytes(b)));
                        let id = topic_len.and_then(|t| pid(&frame, 2 + t));
                        if wire_len(&frame) > limits.maximum_packet_size {
                            if let (1 | 2, Some(id)) = (qos, id) {
                                let due = {
                                    let mut o = lock(&outstanding);
                                    o.push(u16::from_be_bytes(id), true, qos);
                                    o.due()
                                };
                                if qos == 2 {
                                    dropped_qos2.insert(u16::from_be_bytes(id));
                                }
                                acks_to_broker(due).await;
                            }
                            true
                        } else if qos == 0 {
                            client.write_all(&frame.encode()).await.is_ok()
                        } else {
                            if let Some(id) = id {
                                lock(&outstanding).push(u16::from_be_bytes(id), false, qos);
                            }
                            if held.is_empty() {
                                match credits.clone().try_acquire_owned() {
                                    Ok(permit) => {
                                        permit.forget();
                                        client.write_all(&frame.encode()).await.is_ok()
                                    }
                                    Err(_) => {
                                        held.push_back(frame);
                                        true
                                    }
                                }
                            } else {
                                held.push_back(frame);
                                true
                            }
                        }
                    }
                    packet::PUBREL => match pid(&frame, 0) {
                        Some(id) if dropped_qos2.remove(&u16::from_be_bytes(id)) => {
                            acks_to_broker(vec![(packet::PUBCOMP, id)]).await;
                            true
                        }
                        _ => client.write_all(&frame.encode()).await.is_ok(),
                    },
                    _ if wire_len(&frame) > limits.maximum_packet_size => true,
                    _ => client.write_all(&frame.encode()).await.is_ok(),
                }
            },
        };
        if !wrote {
            break;
        }
        if frames.is_empty() && client.flush().await.is_err() {
            break;
        }
    }
    reader.abort();
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}

/// The broker acknowledged `n` of the client's publishes.
fn release(unacked: &AtomicUsize, n: usize) {
    if n > 0 {
        let _ = unacked.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
            Some(u.saturating_sub(n))
        });
    }
}

async fn shutdown(mut client: OwnedWriteHalf) {
    let _ = client.shutdown().await;
}

/// Writes the pending packets; `false` once the last one is written (close now).
async fn write_said(client: &mut OwnedWriteHalf, pending: &mut Vec<Say>) -> std::io::Result<bool> {
    for m in pending.drain(..) {
        match m {
            Say::Packet(p) => client.write_all(&p).await?,
            Say::Last(p) => {
                client.write_all(&p).await?;
                client.flush().await?;
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Follows MQTT packet boundaries in a byte stream without buffering it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Framing {
    /// Next byte is a fixed header's first byte.
    #[default]
    Boundary,
    /// In the remaining length (value so far, shift of the next byte).
    Length(usize, u32),
    /// Body bytes still to come.
    Body(usize),
    /// The stream is not MQTT (never from rumqttd): no boundary is ever found again.
    Lost,
}

impl Framing {
    fn at_boundary(&self) -> bool {
        *self == Framing::Boundary
    }

    /// Consumes `chunk` (or, with `stop`, its bytes up to the next packet boundary); returns
    /// how many bytes were consumed. Counts the PUBACKs and PUBCOMPs that start in it in `acks`.
    fn advance(&mut self, chunk: &[u8], stop: bool, acks: &mut usize) -> usize {
        let mut i = 0;
        loop {
            if (stop && self.at_boundary()) || i == chunk.len() {
                return i;
            }
            *self = match *self {
                Framing::Boundary => {
                    if matches!(chunk[i] >> 4, PUBACK | packet::PUBCOMP) {
                        *acks += 1;
                    }
                    i += 1;
                    Framing::Length(0, 0)
                }
                Framing::Length(value, shift) => {
                    let b = chunk[i];
                    i += 1;
                    let value = value | ((b & 0x7f) as usize) << shift;
                    if b & 0x80 == 0 {
                        if value == 0 {
                            Framing::Boundary
                        } else {
                            Framing::Body(value)
                        }
                    } else if shift >= 21 {
                        Framing::Lost
                    } else {
                        Framing::Length(value, shift + 7)
                    }
                }
                Framing::Body(rest) => {
                    let take = rest.min(chunk.len() - i);
                    i += take;
                    if take == rest {
                        Framing::Boundary
                    } else {
                        Framing::Body(rest - take)
                    }
                }
                Framing::Lost => return chunk.len(),
            };
        }
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
    fn framing_finds_packet_boundaries_across_chunks() {
        // PINGRESP, then a PUBLISH with a 200-byte body (two-byte length), then PUBACK.
        let mut stream = vec![0xD0, 0x00, 0x30, 0xC8, 0x01];
        stream.extend(std::iter::repeat_n(7u8, 200));
        stream.extend([0x40, 0x02, 0x00, 0x01]);
        let mut boundaries = Vec::new();
        let mut acks = 0;
        let mut f = Framing::default();
        let mut pos = 0;
        // Feed in small chunks, stopping at each boundary.
        for chunk in stream.chunks(3) {
            let mut c = chunk;
            while !c.is_empty() {
                let k = f.advance(c, true, &mut acks);
                let k = if k == 0 {
                    boundaries.push(pos);
                    f.advance(&c[..1], false, &mut acks)
                } else {
                    k
                };
                pos += k;
                c = &c[k..];
            }
        }
        assert!(f.at_boundary());
        assert_eq!(boundaries, vec![0, 2, 205]);
        assert_eq!(acks, 1, "one PUBACK");
    }

    #[test]
    fn acks_for_dropped_publishes_wait_for_the_clients_acks_before_them() {
        let mut o = Outstanding::default();
        o.push(1, false, 1);
        o.push(2, true, 1);
        o.push(3, true, 2);
        o.push(4, false, 1);
        assert!(o.due().is_empty(), "publish 1 is still with the client");
        o.acked(1);
        assert_eq!(o.due(), vec![(PUBACK, [0, 2]), (PUBREC, [0, 3])]);
        o.acked(4);
        assert!(o.due().is_empty());
        assert!(o.0.is_empty());
    }

    #[test]
    fn wire_length_counts_the_fixed_header() {
        let f = |n| Frame {
            header: 0x30,
            body: vec![0; n],
        };
        for n in [0, 127, 128, 16_383, 16_384] {
            assert_eq!(wire_len(&f(n)), f(n).encode().len());
        }
    }

    #[test]
    fn pid_set_remembers_packet_ids() {
        let mut s = PidSet::default();
        assert!(!s.insert(1));
        assert!(s.insert(1));
        assert!(!s.insert(65535));
        assert!(s.insert(65535));
        assert!(!s.insert(64));
    }

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
