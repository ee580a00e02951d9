//! One client connection after its CONNECT was accepted. Where an MQTT message enters Genba:
//! every PUBLISH is checked (topic, size, access rules, disabled devices), appended to the
//! journal, and routed and acknowledged only after the journal commit, in arrival order, so
//! a PUBACK/PUBREC always means "durable".
//!
//! Three parts per connection: the reader (this task) parses packets; the steps task takes
//! publishes and subscriptions in order, waits for each publish's commit, routes it and
//! acknowledges it; the writer writes the session's control packets and deliveries.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use genba_store::NewMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::acl::Who;
use crate::auth::Access;
use crate::broker::{message_from, will_message, NEVER};
use crate::frontdoor::{FrontDoor, Reader, Writer};
use crate::packet::{
    self, ConnackProperties, Connect, Frame, PacketError, Refusal, Subscribe, Violation, PUBACK,
    PUBCOMP, PUBREC,
};
use crate::persist::{Change, ClientChange};
use crate::session::{self, Drain, Link, Message, SessionRef};
use crate::topic::ClientId;

/// The Receive Maximum announced to MQTT 5 clients and kept for every client: QoS 1/2
/// publishes it may have unacknowledged; one more is DISCONNECT 0x93.
pub(crate) const RECEIVE_MAXIMUM: u16 = 100;
/// Publishes and subscriptions read but not yet committed and routed, per connection.
const STEPS_QUEUE: usize = 256;
/// How long the end of a connection waits for its steps and its last packet.
const LAST_WORD_WAIT: Duration = Duration::from_secs(2);

/// How the client's side of a connection ended without a violation.
enum ClientEnd {
    /// DISCONNECT with its reason code and, MQTT 5, a new Session Expiry Interval.
    Disconnect(u8, Option<u32>),
    /// The socket closed, or the session was taken over.
    Closed,
}

use genba_store::Commit;

/// What the steps task does, in the order the client sent it.
enum Step {
    Publish {
        /// Boxed: a connection's step queue holds many of these.
        msg: Box<Message>,
        commit: Option<Commit>,
        /// The acknowledgement to send once routed: kind and packet id.
        ack: Option<(u8, u16)>,
    },
    /// A packet to send in order with the acknowledgements (a refusal's acknowledgement).
    Say(Vec<u8>),
    Subscribe(Subscribe),
    Unsubscribe(u16, Vec<String>),
}

/// The connection's own facts, fixed at CONNECT.
struct Client {
    conn: u64,
    v5: bool,
    id: ClientId,
    user: Option<String>,
    /// The device whose key opened this connection ([`crate::acl::Who::device`]).
    device: Option<String>,
    access: Access,
    clean_start: bool,
    /// The session existed before this connection (CONNACK Session Present).
    resumed: bool,
    source: String,
    session: SessionRef,
    /// The client's QoS 1/2 publishes not yet acknowledged (PUBACK / PUBCOMP sent).
    unacked: Arc<AtomicUsize>,
    /// This client's row in the session list (genba's own roles have none).
    registered: Option<i64>,
    /// Session Expiry Interval asked at CONNECT (MQTT 5: a DISCONNECT may not raise it from 0).
    connect_expiry: u32,
}

impl Client {
    fn say(&self, bytes: &[u8]) -> bool {
        session::lock(&self.session).say(self.conn, bytes)
    }
    fn who(&self) -> Who<'_> {
        Who {
            user: self.user.as_deref(),
            client_id: &self.id,
            device: self.device.as_deref(),
        }
    }
}

/// A client id the broker makes up for a client that sent none.
fn assigned_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("genba-{:016x}", h.finish())
}

impl FrontDoor {
    /// Serves a client whose CONNECT was accepted (credentials checked, slot taken).
    pub(crate) async fn serve_client(
        self: &Arc<Self>,
        mut rd: Reader,
        mut wr: Writer,
        peer: SocketAddr,
        connect: Connect,
        access: Access,
        device: Option<String>,
    ) -> Result<(), PacketError> {
        let v5 = connect.level == 5;
        if connect.auth_method.is_some() {
            wr.write_all(&packet::connack_refusal(
                connect.level,
                Refusal::BadAuthMethod,
            ))
            .await?;
            return Ok(());
        }
        let mut assigned = None;
        let client_id = if connect.client_id.is_empty() {
            if !v5 && !connect.clean_start {
                // MQTT-3.1.3-8: an empty id needs Clean Session 1.
                wr.write_all(&packet::connack_refusal(4, Refusal::IdentifierRejected))
                    .await?;
                return Ok(());
            }
            let id = assigned_id();
            assigned = Some(id.clone());
            id
        } else {
            connect.client_id.clone()
        };
        let expiry = match (v5, connect.clean_start) {
            (true, _) => connect.session_expiry,
            (false, true) => 0,
            (false, false) => NEVER,
        };
        let limits = &self.broker.limits;
        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        if v5
            && limits.max_keep_alive > 0
            && (keep_alive == 0 || keep_alive > limits.max_keep_alive)
        {
            keep_alive = limits.max_keep_alive;
            server_keep_alive = Some(keep_alive);
        }
        let mut link = Link::new(
            0,
            v5,
            connect.receive_maximum.unwrap_or(u16::MAX),
            connect.maximum_packet_size.unwrap_or(u32::MAX),
        );
        link.topic_alias_maximum = if v5 { connect.topic_alias_maximum } else { 0 };
        link.read_denials = self.accounts.now().acl.read_denials(&Who {
            user: connect.username.as_deref(),
            client_id: &client_id,
            device: device.as_deref(),
        });
        let (attached, old_will) = self.broker.connect(
            &client_id,
            connect.clean_start,
            expiry,
            connect.will.clone(),
            link,
        );
        // A will is stored before the CONNACK: if the broker stops before the client leaves,
        // the will is due after the restart.
        if connect.will.is_some() {
            if let Some(stored) = self.broker.persist().sync() {
                let _ = stored.await;
            }
        }
        let granted_expiry = session::lock(&attached.session).expiry;
        let props = v5.then(|| ConnackProperties {
            assigned_client_id: assigned,
            receive_maximum: RECEIVE_MAXIMUM,
            topic_alias_maximum: packet::TOPIC_ALIAS_MAX,
            maximum_packet_size: u32::try_from(self.max_packet + 5).unwrap_or(u32::MAX),
            server_keep_alive,
            session_expiry: (granted_expiry != expiry).then_some(granted_expiry),
        });
        // The CONNACK goes first; the writer (which may resend what was in flight) after it.
        wr.write_all(&packet::connack_accepted(attached.present, props.as_ref()))
            .await?;
        metrics::counter!("genba_mqtt_connections_total").increment(1);
        let connected = metrics::gauge!("genba_mqtt_connections");
        connected.increment(1.0);
        if let Some(w) = old_will {
            let _ = self
                .broker
                .publish(will_message(w, Some(client_id.as_str().into())));
        }
        // The session list (/v2/session) is written by the broker's state writer, in batches
        // and without an fsync: a thousand clients connecting at once cost a few commits, not
        // a thousand blocking threads with a SQLite connection each.
        let registered = if access == Access::Client {
            let id = attached.conn as i64;
            let row = genba_store::sessions::MqttSession {
                id,
                client_id: client_id.clone(),
                username: connect.username.clone(),
                address: peer.to_string(),
                protocol: connect.level,
                keep_alive: connect.keep_alive,
                clean_start: connect.clean_start,
                connected_at_ms: 0,
                subscriptions: Vec::new(),
            };
            self.broker
                .persist()
                .send(Change::Client(ClientChange::Opened(row)));
            Some(id)
        } else {
            None
        };
        let client = Arc::new(Client {
            conn: attached.conn,
            v5,
            id: client_id.as_str().into(),
            user: connect.username.clone(),
            device,
            access,
            clean_start: connect.clean_start,
            resumed: attached.present,
            source: format!("mqtt:{client_id}"),
            session: attached.session.clone(),
            unacked: Arc::new(AtomicUsize::new(0)),
            registered,
            connect_expiry: expiry,
        });
        let mut writer = tokio::spawn(write_loop(
            attached.session.clone(),
            attached.conn,
            attached.wake.clone(),
            wr,
            v5,
        ));
        let (steps_tx, steps_rx) = mpsc::channel(STEPS_QUEUE);
        let steps = tokio::spawn(run_steps(self.clone(), client.clone(), steps_rx));
        let result = self
            .read_client(&mut rd, &client, keep_alive, &steps_tx, &mut writer)
            .await;
        // What was read before the end is committed, routed and acknowledged first.
        drop(steps_tx);
        let _ = tokio::time::timeout(LAST_WORD_WAIT, steps).await;
        let (graceful, new_expiry, violation) = match &result {
            Ok(ClientEnd::Disconnect(reason, expiry)) => (*reason != 0x04, *expiry, None),
            Ok(ClientEnd::Closed) => (false, None, None),
            Err(e) => (false, None, e.violation()),
        };
        if let Some(v) = violation {
            tracing::info!(source = %client.source, error = ?result.as_ref().err(), reason = v as u8,
                "mqtt client disconnected for a protocol violation");
        }
        session::lock(&client.session).close(client.conn, violation);
        let wrote_last = tokio::time::timeout(LAST_WORD_WAIT, &mut writer)
            .await
            .is_ok();
        if !wrote_last {
            writer.abort();
        }
        self.broker
            .disconnect(&client.session, client.conn, graceful, new_expiry);
        connected.decrement(1.0);
        if let Some(id) = client.registered {
            self.broker
                .persist()
                .send(Change::Client(ClientChange::Closed(id)));
        }
        if violation.is_some() && v5 && wrote_last {
            // Read what the client still sends for a moment instead of resetting the
            // connection under it, so it reads the DISCONNECT and its reason.
            let drain = async {
                let mut sink = [0u8; 4096];
                while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
            };
            let _ = tokio::time::timeout(LAST_WORD_WAIT, drain).await;
        }
        result.map(|_| ())
    }

    async fn read_client(
        &self,
        rd: &mut Reader,
        client: &Client,
        keep_alive: u16,
        steps: &mpsc::Sender<Step>,
        writer: &mut tokio::task::JoinHandle<()>,
    ) -> Result<ClientEnd, PacketError> {
        let mut aliases = HashMap::new();
        // QoS 1/2 packet ids journaled on this connection (for the DUP check below).
        let mut journaled = PidSet::default();
        // MQTT-3.1.2-24: one and a half keep-alive periods without a packet end the connection.
        let patience =
            (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        loop {
            let read = async {
                match patience {
                    Some(p) => tokio::time::timeout(p, packet::read_frame(rd, self.max_packet))
                        .await
                        .unwrap_or(Err(PacketError::Refused(
                            Violation::KeepAliveTimeout,
                            "keep-alive expired",
                        ))),
                    None => packet::read_frame(rd, self.max_packet).await,
                }
            };
            let frame = tokio::select! {
                f = read => match f {
                    Ok(f) => f,
                    Err(PacketError::Closed) => return Ok(ClientEnd::Closed),
                    Err(e) => return Err(e),
                },
                // The writer ended: the socket is gone or the session was taken over.
                _ = &mut *writer => return Ok(ClientEnd::Closed),
            };
            let step = match frame.kind() {
                packet::CONNECT => {
                    return Err(PacketError::Refused(
                        Violation::Protocol,
                        "second CONNECT on a connection",
                    ))
                }
                packet::PUBLISH => {
                    match self
                        .publish_step(client, &frame, &mut aliases, &mut journaled)
                        .await?
                    {
                        Some(step) => step,
                        None => continue,
                    }
                }
                PUBACK | PUBREC | PUBCOMP => {
                    let (pid, reason) = packet::parse_ack(&frame)?;
                    let mut s = session::lock(&client.session);
                    if let Some(reply) = s.acknowledged(frame.kind(), pid, reason) {
                        s.say(client.conn, &reply);
                    }
                    continue;
                }
                packet::PUBREL => {
                    let (pid, _) = packet::parse_ack(&frame)?;
                    let known = session::lock(&client.session).incoming_qos2.remove(&pid);
                    if known {
                        release(&client.unacked);
                    }
                    let reason = if known { 0 } else { 0x92 };
                    Step::Say(packet::ack(PUBCOMP, pid, reason, client.v5))
                }
                packet::SUBSCRIBE => Step::Subscribe(packet::parse_subscribe(&frame, client.v5)?),
                packet::UNSUBSCRIBE => {
                    let (pid, filters) = packet::parse_unsubscribe(&frame, client.v5)?;
                    Step::Unsubscribe(pid, filters)
                }
                packet::PINGREQ => {
                    client.say(&packet::pingresp());
                    continue;
                }
                packet::DISCONNECT => {
                    let (reason, expiry) = if client.v5 {
                        packet::parse_disconnect(&frame)?
                    } else {
                        (0, None)
                    };
                    if expiry.is_some_and(|e| e > 0) && client.connect_expiry == 0 {
                        return Err(PacketError::Refused(
                            Violation::Protocol,
                            "session expiry set at DISCONNECT after 0 at CONNECT",
                        ));
                    }
                    return Ok(ClientEnd::Disconnect(reason, expiry));
                }
                _ => {
                    return Err(PacketError::Refused(
                        Violation::Protocol,
                        "unexpected packet",
                    ))
                }
            };
            if steps.send(step).await.is_err() {
                return Ok(ClientEnd::Closed);
            }
        }
    }

    /// Checks a client's PUBLISH and journals it; returns the step that routes and
    /// acknowledges it after the commit (`None`: nothing more to do).
    async fn publish_step(
        &self,
        client: &Client,
        frame: &Frame,
        aliases: &mut HashMap<u16, String>,
        journaled: &mut PidSet,
    ) -> Result<Option<Step>, PacketError> {
        let mut p = packet::parse_publish(frame, client.v5, aliases)?;
        if p.payload.len() > self.max_payload {
            return Err(PacketError::Refused(
                Violation::TooLarge,
                "publish payload over max_payload",
            ));
        }
        let ack_kind = match p.qos {
            1 => Some(PUBACK),
            2 => Some(PUBREC),
            _ => None,
        };
        let from_client = client.access == Access::Client;
        // A QoS 2 resend of a publish this session has already taken (PUBREC sent or on its
        // way): acknowledge again, never route it twice.
        if let (2, Some(pid)) = (p.qos, p.pid) {
            if session::lock(&client.session).incoming_qos2.contains(&pid) {
                return Ok(Some(Step::Say(packet::ack(PUBREC, pid, 0, client.v5))));
            }
        }
        // ThingScale's MQTT device connector: DEVICE_TOKEN/json/DEVICE_ID[/TAG] is journaled
        // as devices/DEVICE_ID/telemetry[/TAG] once the token is that device's key (the token
        // itself is never stored).
        let mut refused = None;
        if let (Some((token, device, tag)), true) = (thingscale_topic(&p.topic), from_client) {
            if self.device_key_ok(token, device).await {
                p.topic = match tag {
                    Some(t) => format!("devices/{device}/telemetry/{t}"),
                    None => format!("devices/{device}/telemetry"),
                };
            } else {
                refused = Some("ThingScale-style publish with a wrong device token");
            }
        }
        if from_client && refused.is_none() {
            if p.topic.starts_with("$SYS") {
                refused = Some("publish to $SYS");
            } else if !self.accounts.now().acl.may_publish(&client.who(), &p.topic) {
                refused = Some("publish denied by the access rules");
            } else if let Some(device) = device_of(&p.topic) {
                if self.disabled.contains(&self.sessions, device).await {
                    refused = Some("publish of a disabled device");
                }
            }
        }
        if let Some(why) = refused {
            // Like Mosquitto's denials: MQTT 5 gets "not authorized" in its acknowledgement;
            // 3.1.1 has no code for it and gets a plain acknowledgement so it does not resend
            // forever. Never journaled, never routed.
            tracing::info!(source = %client.source, topic = %p.topic, "{why}; dropped");
            let (Some(kind), Some(pid)) = (ack_kind, p.pid) else {
                return Ok(None);
            };
            if !client.v5 && p.qos == 2 {
                session::lock(&client.session).incoming_qos2.insert(pid);
                client.unacked.fetch_add(1, Ordering::Relaxed);
            }
            let reason = if client.v5 { 0x87 } else { 0 };
            return Ok(Some(Step::Say(packet::ack(kind, pid, reason, client.v5))));
        }
        // MQTT 5 clients were told the Receive Maximum and are held to it. A 3.1.1 client
        // cannot be told: it is slowed down instead (the steps queue is bounded, so reading
        // waits while its publishes wait for their commits).
        if p.qos > 0
            && client.unacked.fetch_add(1, Ordering::Relaxed) >= usize::from(RECEIVE_MAXIMUM)
            && client.v5
        {
            return Err(PacketError::Refused(
                Violation::ReceiveMaximumExceeded,
                "more unacknowledged QoS 1/2 publishes than Receive Maximum",
            ));
        }
        if let (2, Some(pid)) = (p.qos, p.pid) {
            session::lock(&client.session).incoming_qos2.insert(pid);
        }
        let mut commit = None;
        if from_client && !p.topic.starts_with('$') {
            // Whether the journal is to check for an earlier copy (the latest row of this
            // client with this packet id, same topic and payload):
            // - on a connection that started clean, only a DUP of a packet id already used on
            //   it can be a resend (the client dropped what it had in flight before);
            // - on a resumed session, the first use of a packet id may resend the previous
            //   connection's in-flight publish, with or without DUP (rumqttc, for one, resends
            //   without it, against MQTT-3.3.1-1);
            // - otherwise the DUP flag decides.
            let dup = match p.pid {
                Some(pid) => {
                    let seen = journaled.insert(pid);
                    if client.clean_start {
                        p.dup && seen
                    } else if client.resumed && !seen {
                        true
                    } else {
                        p.dup
                    }
                }
                None => false,
            };
            let rx = self
                .journal
                .submit(NewMessage {
                    source: client.source.clone(),
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                    qos: p.qos,
                    retain: p.retain,
                    mqtt_pid: p.pid,
                    dup,
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            // QoS 0 has no acknowledgement to hold back: it is routed without waiting for its
            // commit (still behind the publishes before it).
            if p.qos > 0 {
                commit = Some(rx);
            }
        }
        let ack = ack_kind.zip(p.pid);
        Ok(Some(Step::Publish {
            msg: Box::new(message_from(p, Some(client.id.clone()))),
            commit,
            ack,
        }))
    }
}

/// The client acknowledged or completed one of its publishes' flows.
fn release(unacked: &AtomicUsize) {
    let _ = unacked.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
        Some(u.saturating_sub(1))
    });
}

/// Takes the steps of one connection in order: waits for each publish's journal commit,
/// routes it, and hands its acknowledgement to [`send_acks`]. A failed commit ends the
/// connection, so the client never gets an acknowledgement for it (and resends it).
async fn run_steps(door: Arc<FrontDoor>, client: Arc<Client>, mut rx: mpsc::Receiver<Step>) {
    let (acks, acks_rx) = mpsc::channel(STEPS_QUEUE);
    // Acknowledgements handed to the acker and not sent yet: while there are none, one that
    // waits for nothing is sent from here, in order, without the hop.
    let queued = Arc::new(AtomicUsize::new(0));
    let acker = tokio::spawn(send_acks(client.clone(), acks_rx, queued.clone()));
    let reply = |bytes: Vec<u8>, durable: Option<oneshot::Receiver<()>>, ends_qos1: bool| {
        let (acks, queued, client) = (&acks, &queued, &client);
        async move {
            if durable.is_none() && queued.load(Ordering::Acquire) == 0 {
                client.say(&bytes);
                if ends_qos1 {
                    release(&client.unacked);
                }
                return true;
            }
            queued.fetch_add(1, Ordering::AcqRel);
            acks.send((bytes, durable, ends_qos1)).await.is_ok()
        }
    };
    while let Some(step) = rx.recv().await {
        match step {
            Step::Publish { msg, commit, ack } => {
                metrics::counter!("genba_mqtt_messages_received_total").increment(1);
                if let Some(commit) = commit {
                    let ok = match commit.await {
                        Ok(_) => true,
                        Err(e) => {
                            // The writer and the storage check log the cause once; one line
                            // per refused client would flood the log of a full card.
                            tracing::debug!(error = %e, "journal commit failed; closing the client connection");
                            false
                        }
                    };
                    if !ok {
                        if let Some((_, pid)) = ack {
                            session::lock(&client.session).incoming_qos2.remove(&pid);
                        }
                        session::lock(&client.session).close(client.conn, None);
                        break;
                    }
                }
                let durable = door.broker.publish(*msg);
                if let Some((kind, pid)) = ack {
                    let bytes = packet::ack(kind, pid, 0, client.v5);
                    if !reply(bytes, durable, kind == PUBACK).await {
                        break;
                    }
                }
            }
            Step::Say(bytes) => {
                if !reply(bytes, None, false).await {
                    break;
                }
            }
            Step::Subscribe(sub) => {
                let who = client.who();
                let internal = client.access == Access::Internal;
                let rules = door.accounts.now();
                let codes = door.broker.subscribe(
                    &client.session,
                    client.conn,
                    &sub,
                    |f| internal || rules.acl.may_subscribe(&who, f),
                    client.v5,
                );
                if let Some(id) = client.registered {
                    let filters: Vec<String> = sub
                        .filters
                        .iter()
                        .zip(&codes)
                        .filter(|(_, c)| **c < 0x80)
                        .map(|(f, _)| f.filter.clone())
                        .collect();
                    record_filters(&door, id, filters, true);
                }
            }
            Step::Unsubscribe(pid, filters) => {
                let codes = door.broker.unsubscribe(&client.session, &filters);
                client.say(&packet::unsuback(pid, &codes, client.v5));
                if let Some(id) = client.registered {
                    record_filters(&door, id, filters, false);
                }
            }
        }
    }
    drop(acks);
    let _ = acker.await;
}

/// An acknowledgement (or other reply) to send in order, once the broker state it depends on
/// is committed; whether it ends a QoS 1 flow.
type Ack = (Vec<u8>, Option<oneshot::Receiver<()>>, bool);

/// Sends acknowledgements in the order of the publishes (MQTT-4.6.0-2), each only once what
/// its publish changed in the broker's stored state is committed.
async fn send_acks(client: Arc<Client>, mut rx: mpsc::Receiver<Ack>, queued: Arc<AtomicUsize>) {
    while let Some((bytes, durable, ends_qos1)) = rx.recv().await {
        if let Some(d) = durable {
            if d.await.is_err() {
                tracing::error!(source = %client.source, "broker state not stored; closing the client connection");
                session::lock(&client.session).close(client.conn, None);
                return;
            }
        }
        client.say(&bytes);
        if ends_qos1 {
            release(&client.unacked);
        }
        queued.fetch_sub(1, Ordering::AcqRel);
    }
}

fn record_filters(door: &FrontDoor, id: i64, filters: Vec<String>, add: bool) {
    door.broker
        .persist()
        .send(Change::Client(ClientChange::Subscriptions(
            id, filters, add,
        )));
}

/// Writes what the session has for this connection each time it is woken, until the
/// connection is to close or the session is taken over.
async fn write_loop(session: SessionRef, conn: u64, wake: Arc<Notify>, mut wr: Writer, v5: bool) {
    let mut buf = Vec::new();
    loop {
        let drain = session::lock(&session).drain(conn, &mut buf, SystemTime::now());
        if drain == Drain::TakenOver && v5 {
            buf.extend_from_slice(&packet::disconnect_v5(Violation::SessionTakenOver));
        }
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() {
                break;
            }
            buf.clear();
            if buf.capacity() > 256 * 1024 {
                buf.shrink_to(4096);
            }
        }
        match drain {
            Drain::More => tokio::task::yield_now().await,
            Drain::Idle => wake.notified().await,
            Drain::Close | Drain::TakenOver => break,
        }
    }
    let _ = wr.shutdown().await;
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
    const FRESH: Duration = Duration::from_secs(2);

    async fn contains(&self, db: &genba_store::Db, device: &str) -> bool {
        let mut cache = self.cache.lock().await;
        let stale = cache
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= Self::FRESH);
        if stale {
            match db.run(genba_store::devices::disabled_ids).await {
                Ok(set) => *cache = Some((Instant::now(), set)),
                // Unreadable registry: keep what was known (accepting is the safe side: the
                // consumer parks a disabled device's rows anyway).
                Err(e) => tracing::warn!(error = %e, "disabled devices: cannot read the registry"),
            }
        }
        cache.as_ref().is_some_and(|(_, set)| set.contains(device))
    }
}

impl FrontDoor {
    /// Whether `token` is an enabled `telemetry:write` key of `device` (`genba keys add`).
    pub(crate) async fn device_key_ok(&self, token: &str, device: &str) -> bool {
        let digest = genba_auth::passwords::api_key_digest(token);
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn thingscale_topics_name_token_device_and_tag() {
        assert_eq!(thingscale_topic("T/json/d"), Some(("T", "d", None)));
        assert_eq!(thingscale_topic("T/json/d/x"), Some(("T", "d", Some("x"))));
        assert_eq!(thingscale_topic("T/csv/d"), None);
        assert_eq!(device_of("devices/fridge-1/telemetry"), Some("fridge-1"));
        assert_eq!(device_of("devices//x"), None);
    }

    #[test]
    fn assigned_client_ids_differ() {
        assert_ne!(assigned_id(), assigned_id());
    }
}
