//! One client's session: its subscriptions, the messages queued for it, the QoS 1/2 messages
//! in flight both ways, and the connection serving it now (if any). A session outlives its
//! connection when the client asked for it (Clean Session 0, MQTT 5 Session Expiry).
//!
//! Where a message leaves Genba: [`Session::drain`] turns queued messages into PUBLISH
//! packets for the connection's writer, within the client's Receive Maximum and Maximum
//! Packet Size.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::packet::{self, OutgoingPublish, Violation, Will, PUBREL};
use crate::persist::{Change, Persist};
use crate::topic::{ClientId, SubOptions};

/// A message as the broker routes it.
#[derive(Debug)]
pub struct Message {
    /// Unique per broker (across restarts): names a stored queued copy.
    pub id: u64,
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 properties passed on to subscribers (see [`packet::Publish::props`]).
    pub props: Bytes,
    /// When the message expires (MQTT 5 Message Expiry Interval), wall clock so it can be
    /// stored.
    pub expires_at: Option<SystemTime>,
    /// The publishing client (for No Local).
    pub origin: Option<ClientId>,
}

impl Message {
    /// Seconds left before expiry at `now`: `None` without expiry, `Some(0)` once expired.
    pub fn remaining(&self, now: SystemTime) -> Option<u32> {
        let at = self.expires_at?;
        let left = at.duration_since(now).map(|d| d.as_secs()).unwrap_or(0);
        Some(u32::try_from(left).unwrap_or(u32::MAX))
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// A message on its way to one subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    pub qos: u8,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flight {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
struct Inflight {
    pid: u16,
    delivery: Delivery,
    state: Flight,
}

/// The connection serving a session now.
pub struct Link {
    pub conn: u64,
    pub v5: bool,
    /// QoS 1/2 publishes the client takes unacknowledged.
    pub receive_maximum: usize,
    /// The largest packet the client takes.
    pub maximum_packet_size: usize,
    pub topic_alias_maximum: u16,
    /// Topics this client must not receive (access rules' `deny_subscribe`), checked for every
    /// delivery: a subscription may overlap them (`#`).
    pub read_denials: Vec<String>,
    /// Topic aliases given to this connection.
    aliases: HashMap<Arc<str>, u16>,
    /// Control packets (acknowledgements, SUBACK, PINGRESP) for the writer, in order.
    ctrl: Vec<u8>,
    /// Resend what is in flight before anything new (a resumed session).
    resend: bool,
    /// The connection is to end after `ctrl` is written, with this MQTT 5 reason.
    closing: Option<Option<Violation>>,
    pub wake: Arc<Notify>,
}

impl Link {
    pub fn new(conn: u64, v5: bool, receive_maximum: u16, maximum_packet_size: u32) -> Self {
        Link {
            conn,
            v5,
            receive_maximum: usize::from(receive_maximum),
            maximum_packet_size: usize::try_from(maximum_packet_size).unwrap_or(usize::MAX),
            topic_alias_maximum: 0,
            read_denials: Vec::new(),
            aliases: HashMap::new(),
            ctrl: Vec::new(),
            resend: false,
            closing: None,
            wake: Arc::new(Notify::new()),
        }
    }
}

/// What the writer of connection `conn` is to do after [`Session::drain`].
#[derive(Debug, PartialEq)]
pub enum Drain {
    /// Write what was added, then wait for the next wake-up.
    Idle,
    /// Write what was added, then drain again at once: more is queued than one round takes
    /// (the session's lock is not held for long).
    More,
    /// Write what was added, then close (with an MQTT 5 DISCONNECT reason, if any, already in
    /// the bytes).
    Close,
    /// Another connection took the session over: close (MQTT 5: DISCONNECT 0x8E).
    TakenOver,
}

/// Control packets beyond this (a client that sends but never reads) end the connection.
const CTRL_BACKLOG: usize = 1 << 20;
/// QoS 1/2 messages in flight to one client at most, whatever its Receive Maximum (MQTT 3.1.1
/// clients announce none); as Mosquitto's `max_inflight_messages`.
const MAX_INFLIGHT: usize = 100;
/// Bytes one drain adds at most before it lets the session's lock go.
const DRAIN_BYTES: usize = 64 * 1024;

pub struct Session {
    pub client_id: ClientId,
    /// Seconds the session outlives its connection (`u32::MAX`: forever, MQTT 3.1.1 Clean
    /// Session 0).
    pub expiry: u32,
    pub subscriptions: HashMap<String, SubOptions>,
    queue: VecDeque<Delivery>,
    inflight: VecDeque<Inflight>,
    next_pid: u16,
    /// QoS 2 packet ids received from the client (PUBREC sent), until its PUBREL.
    pub incoming_qos2: HashSet<u16>,
    pub link: Option<Link>,
    /// The will of the connection serving the session now.
    pub will: Option<Will>,
    /// A will waiting for its delay after the connection ended.
    pub will_due: Option<(Instant, Will)>,
    /// When the connection ended (for expiry).
    pub ended_at: Option<Instant>,
    /// Messages not queued because the queue was full.
    pub dropped: u64,
    persist: Persist,
}

pub type SessionRef = Arc<Mutex<Session>>;

/// Locks a session; a panic elsewhere does not make the session unusable.
pub fn lock(s: &SessionRef) -> MutexGuard<'_, Session> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    pub fn new(client_id: ClientId, persist: Persist) -> Self {
        Session {
            persist,
            client_id,
            expiry: 0,
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            next_pid: 1,
            incoming_qos2: HashSet::new(),
            link: None,
            will: None,
            will_due: None,
            ended_at: None,
            dropped: 0,
        }
    }

    pub fn online(&self) -> bool {
        self.link.is_some()
    }

    /// Queued and in-flight messages.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }

    /// Queues a message; `false` when it is not taken (QoS 0 for a client that is away, or the
    /// queue holds `max_queued` already). A QoS 1/2 message for a session that outlives its
    /// connection is stored.
    pub fn enqueue(&mut self, d: Delivery, max_queued: usize) -> bool {
        if self.link.is_none() && d.qos == 0 {
            return false;
        }
        if self.queue.len() >= max_queued {
            self.dropped += 1;
            return false;
        }
        if self.expiry > 0 && d.qos > 0 {
            self.persist
                .send(Change::Queued(self.client_id.to_string(), d.clone()));
        }
        self.queue.push_back(d);
        true
    }

    /// Puts back a message that was stored queued for this session (at start: it is in the
    /// stored state already, so it is not written again).
    pub fn requeue(&mut self, d: Delivery) {
        self.queue.push_back(d);
    }

    /// The writer of the connection serving the session, to wake after queueing.
    pub fn waker(&self) -> Option<Arc<Notify>> {
        self.link.as_ref().map(|l| l.wake.clone())
    }

    /// A stored message is done with (acknowledged, expired, or dropped as delivered).
    fn done(&self, d: &Delivery) {
        if self.expiry > 0 && d.qos > 0 {
            self.persist
                .send(Change::Delivered(self.client_id.to_string(), d.msg.id));
        }
    }

    /// Attaches a connection; what was in flight is resent on it first.
    pub fn attach(&mut self, mut link: Link) {
        link.resend = !self.inflight.is_empty();
        self.link = Some(link);
        self.ended_at = None;
    }

    /// Adds a control packet for connection `conn`'s writer; `false` if that connection no
    /// longer serves the session or does not read what it is sent.
    pub fn say(&mut self, conn: u64, bytes: &[u8]) -> bool {
        match self.link.as_mut() {
            Some(l) if l.conn == conn && l.ctrl.len() < CTRL_BACKLOG => {
                l.ctrl.extend_from_slice(bytes);
                l.wake.notify_one();
                true
            }
            _ => false,
        }
    }

    /// Asks connection `conn`'s writer to close after what it has, with `reason` (MQTT 5).
    pub fn close(&mut self, conn: u64, reason: Option<Violation>) {
        if let Some(l) = self.link.as_mut().filter(|l| l.conn == conn) {
            l.closing = Some(reason);
            l.wake.notify_one();
        }
    }

    /// The client acknowledged one of the session's publishes (PUBACK, PUBREC or PUBCOMP
    /// `kind`). Returns the PUBREL to send for a PUBREC.
    pub fn acknowledged(&mut self, kind: u8, pid: u16, reason: u8) -> Option<Vec<u8>> {
        let v5 = self.link.as_ref().is_some_and(|l| l.v5);
        let at = self.inflight.iter().position(|f| f.pid == pid);
        match kind {
            packet::PUBREC => match at {
                Some(i) if self.inflight[i].state == Flight::Published => {
                    if reason >= 0x80 {
                        if let Some(f) = self.inflight.remove(i) {
                            self.done(&f.delivery);
                        }
                        None
                    } else {
                        self.inflight[i].state = Flight::Released;
                        Some(packet::ack(PUBREL, pid, 0, v5))
                    }
                }
                Some(_) => Some(packet::ack(PUBREL, pid, 0, v5)),
                // Not in flight: answer anyway, so the client's flow ends (0x92 in MQTT 5).
                None => Some(packet::ack(PUBREL, pid, 0x92, v5)),
            },
            _ => {
                let want = if kind == packet::PUBCOMP {
                    Flight::Released
                } else {
                    Flight::Published
                };
                if let Some(i) = at.filter(|&i| self.inflight[i].state == want) {
                    if let Some(f) = self.inflight.remove(i) {
                        self.done(&f.delivery);
                    }
                    if let Some(l) = &self.link {
                        l.wake.notify_one();
                    }
                }
                None
            }
        }
    }

    fn next_packet_id(&mut self) -> u16 {
        loop {
            let pid = self.next_pid;
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|f| f.pid == pid) {
                return pid;
            }
        }
    }

    /// Appends to `out` what connection `conn` is to write now: its control packets, then
    /// (once) what was in flight, then queued messages within the client's limits.
    pub fn drain(&mut self, conn: u64, out: &mut Vec<u8>, now: SystemTime) -> Drain {
        let Some(link) = self.link.as_mut().filter(|l| l.conn == conn) else {
            return Drain::TakenOver;
        };
        out.append(&mut link.ctrl);
        if let Some(reason) = link.closing {
            if let (true, Some(r)) = (link.v5, reason) {
                out.extend_from_slice(&packet::disconnect_v5(r));
            }
            return Drain::Close;
        }
        let v5 = link.v5;
        if std::mem::take(&mut link.resend) {
            link.aliases.clear();
            for f in &self.inflight {
                match f.state {
                    Flight::Published => {
                        put(out, link, &f.delivery, f.pid, true, now);
                    }
                    Flight::Released => packet::put_ack(out, PUBREL, f.pid, 0, v5),
                }
            }
        }
        let max_inflight = link.receive_maximum.min(MAX_INFLIGHT);
        let budget = out.len() + DRAIN_BYTES;
        while let Some(front) = self.queue.front() {
            if front.qos > 0 && self.inflight.len() >= max_inflight {
                break;
            }
            if out.len() >= budget {
                return Drain::More;
            }
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            let denied = |link: &Link| {
                link.read_denials
                    .iter()
                    .any(|p| crate::topic::matches(p, &d.msg.topic))
            };
            if d.msg.expired(now) || self.link.as_ref().is_some_and(denied) {
                self.done(&d);
                continue;
            }
            let pid = if d.qos > 0 { self.next_packet_id() } else { 0 };
            let Some(link) = self.link.as_mut() else {
                break;
            };
            // Too large for the client: dropped as if delivered (MQTT 5 3.1.2.11.4).
            let sent = put(out, link, &d, pid, false, now);
            if sent {
                metrics::counter!("genba_mqtt_messages_sent_total").increment(1);
            }
            if sent && d.qos > 0 {
                self.inflight.push_back(Inflight {
                    pid,
                    delivery: d,
                    state: Flight::Published,
                });
            } else if !sent {
                self.done(&d);
            }
        }
        Drain::Idle
    }

    /// Forgets everything queued and in flight (a session that starts clean; the caller
    /// removes the stored session).
    pub fn clear_messages(&mut self) {
        self.queue.clear();
        self.inflight.clear();
        self.incoming_qos2.clear();
    }
}

/// Writes one PUBLISH for `link` into `out`; `false` (nothing written) when it is larger than
/// the client's Maximum Packet Size.
fn put(
    out: &mut Vec<u8>,
    link: &mut Link,
    d: &Delivery,
    pid: u16,
    dup: bool,
    now: SystemTime,
) -> bool {
    let mut alias = None;
    let mut topic: &str = &d.msg.topic;
    if link.v5 && link.topic_alias_maximum > 0 {
        match link.aliases.get(&d.msg.topic) {
            Some(&a) => {
                alias = Some(a);
                topic = "";
            }
            None if link.aliases.len() < usize::from(link.topic_alias_maximum) => {
                let a = link.aliases.len() as u16 + 1;
                link.aliases.insert(d.msg.topic.clone(), a);
                alias = Some(a);
            }
            None => {}
        }
    }
    let start = out.len();
    let n = packet::put_publish(
        out,
        &OutgoingPublish {
            topic,
            payload: &d.msg.payload,
            qos: d.qos,
            retain: d.retain,
            dup: dup && d.qos > 0,
            pid,
            props: &d.msg.props,
            expiry: d.msg.remaining(now),
            subscription_ids: &d.subscription_ids,
            alias,
        },
        link.v5,
    );
    if n > link.maximum_packet_size {
        out.truncate(start);
        if alias.is_some() && !topic.is_empty() {
            link.aliases.remove(&d.msg.topic);
        }
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(qos: u8) -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                id: 1,
                topic: "t".into(),
                payload: Bytes::from_static(b"x"),
                qos,
                retain: false,
                props: Bytes::new(),
                expires_at: None,
                origin: None,
            }),
            qos,
            retain: false,
            subscription_ids: vec![],
        }
    }

    #[test]
    fn receive_maximum_holds_qos1_until_acknowledged() {
        let mut s = Session::new("c".into(), Persist::default());
        s.attach(Link::new(1, true, 1, u32::MAX));
        s.enqueue(delivery(1), 10);
        s.enqueue(delivery(1), 10);
        let mut out = Vec::new();
        assert_eq!(s.drain(1, &mut out, SystemTime::now()), Drain::Idle);
        assert_eq!(s.inflight.len(), 1, "only one in flight");
        assert_eq!(s.queue.len(), 1);
        let pid = s.inflight[0].pid;
        assert!(s.acknowledged(packet::PUBACK, pid, 0).is_none());
        out.clear();
        s.drain(1, &mut out, SystemTime::now());
        assert_eq!(s.inflight.len(), 1);
        assert!(s.queue.is_empty());
    }

    #[test]
    fn qos2_flow_releases_then_completes() {
        let mut s = Session::new("c".into(), Persist::default());
        s.attach(Link::new(1, false, 10, u32::MAX));
        s.enqueue(delivery(2), 10);
        let mut out = Vec::new();
        s.drain(1, &mut out, SystemTime::now());
        let pid = s.inflight[0].pid;
        let rel = s.acknowledged(packet::PUBREC, pid, 0).unwrap();
        assert_eq!(rel[0], 0x62);
        assert_eq!(s.inflight.len(), 1);
        s.acknowledged(packet::PUBCOMP, pid, 0);
        assert!(s.inflight.is_empty());
    }

    #[test]
    fn an_offline_session_keeps_qos1_not_qos0_and_resends_with_dup() {
        let mut s = Session::new("c".into(), Persist::default());
        s.expiry = 60;
        assert!(!s.enqueue(delivery(0), 10));
        s.enqueue(delivery(1), 10);
        assert_eq!(s.pending(), 1);
        s.attach(Link::new(1, false, 10, u32::MAX));
        let mut out = Vec::new();
        s.drain(1, &mut out, SystemTime::now());
        assert_eq!(out[0] & 0x08, 0, "first send is not DUP");
        // Connection lost before the PUBACK; the next connection gets it again with DUP.
        s.link = None;
        s.attach(Link::new(2, false, 10, u32::MAX));
        out.clear();
        s.drain(2, &mut out, SystemTime::now());
        assert_eq!(out[0] & 0x08, 0x08, "resend is DUP");
        assert_eq!(s.drain(1, &mut out, SystemTime::now()), Drain::TakenOver);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut s = Session::new("c".into(), Persist::default());
        s.expiry = 60;
        for _ in 0..5 {
            s.enqueue(delivery(1), 3);
        }
        assert_eq!(s.pending(), 3);
        assert_eq!(s.dropped, 2);
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut s = Session::new("c".into(), Persist::default());
        s.next_pid = u16::MAX;
        assert_eq!(s.next_packet_id(), u16::MAX);
        assert_eq!(s.next_packet_id(), 1);
    }

    #[test]
    fn a_publish_over_the_clients_maximum_packet_size_is_dropped() {
        let mut s = Session::new("c".into(), Persist::default());
        s.attach(Link::new(1, true, 10, 5));
        s.enqueue(delivery(1), 10);
        let mut out = Vec::new();
        s.drain(1, &mut out, SystemTime::now());
        assert!(out.is_empty());
        assert!(s.inflight.is_empty());
    }
}
