//! The broker's shared state: every session, the subscription tree and the retained
//! messages. Where a message is routed: [`Broker::publish`] finds the subscriptions that
//! match and queues one delivery per session (MQTT 3.1.1 / 5: at the lower of the publish
//! and the subscription QoS, No Local and Retain As Published kept, shared groups served in
//! turn, Subscription Identifiers passed on).
//!
//! Locks: the state first, then a session; a connection's writer takes only its session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use crate::packet::{self, Subscribe, Will};
use crate::persist::{Change, Persist, StoredSession};
use crate::session::{self, Delivery, Link, Message, Session, SessionRef};
use crate::topic::{self, ClientId, SubOptions, Tree};

/// Sessions that never expire (MQTT 3.1.1 Clean Session 0).
pub const NEVER: u32 = u32::MAX;

/// Limits the broker keeps for every client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Messages queued per session (in flight not counted); beyond, new ones are dropped.
    pub max_queued: usize,
    /// Longest keep-alive granted (MQTT 5 Server Keep Alive); 0 = as the client asks.
    pub max_keep_alive: u16,
    /// Longest session expiry granted, seconds.
    pub max_session_expiry: u32,
}

#[derive(Default)]
struct State {
    sessions: HashMap<ClientId, SessionRef>,
    tree: Tree,
    retained: HashMap<Arc<str>, Arc<Message>>,
}

pub struct Broker {
    state: Mutex<State>,
    pub limits: Limits,
    next_conn: AtomicU64,
    /// The next message id (see [`Message::id`]): microseconds since the epoch at start, so
    /// ids stay unique across restarts.
    next_msg: AtomicU64,
    persist: Persist,
}

/// What [`Broker::connect`] gives a new connection.
pub struct Attached {
    pub session: SessionRef,
    pub conn: u64,
    pub present: bool,
    pub wake: Arc<Notify>,
}

impl Broker {
    pub fn new(limits: Limits, persist: Persist) -> Self {
        Broker {
            state: Mutex::new(State::default()),
            limits,
            next_conn: AtomicU64::new(1),
            next_msg: AtomicU64::new(
                SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as u64)
                    .unwrap_or(1),
            ),
            persist,
        }
    }

    /// Where changes to the stored state (and the session list) go.
    pub fn persist(&self) -> &Persist {
        &self.persist
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Restores what was stored: retained messages, sessions with their subscriptions and
    /// queued messages (all offline, their expiry counted from now), and the wills of clients
    /// that were connected: the restart ended their connections, so each will is published
    /// now, or after its delay when its session was kept.
    pub fn restore(&self, stored: crate::persist::Stored) {
        let crate::persist::Stored {
            retained,
            sessions,
            wills,
        } = stored;
        self.restore_state(retained, sessions);
        let due_now = {
            let st = self.state();
            let now = Instant::now();
            let mut wills = wills;
            wills.retain(|(id, w)| match st.sessions.get(id.as_str()) {
                Some(s) if w.delay > 0 => {
                    let mut g = session::lock(s);
                    let delay = w.delay.min(g.expiry);
                    g.will_due = Some((now + Duration::from_secs(delay.into()), w.clone()));
                    self.persist.send(Change::Will(id.clone(), w.clone()));
                    false
                }
                _ => true,
            });
            wills
        };
        for (id, w) in due_now {
            let _ = self.publish(will_message(w, Some(id.as_str().into())));
        }
    }

    fn restore_state(&self, retained: Vec<Message>, sessions: Vec<StoredSession>) {
        let mut st = self.state();
        let now = Instant::now();
        for stored in sessions {
            let id: ClientId = stored.client_id.as_str().into();
            let mut s = Session::new(id.clone(), self.persist.clone());
            s.expiry = stored.expiry;
            s.ended_at = Some(now);
            for (filter, options) in stored.subscriptions {
                st.tree.subscribe(&id, &filter, options.clone());
                s.subscriptions.insert(filter, options);
            }
            for d in stored.queued {
                self.next_msg.fetch_max(d.msg.id + 1, Ordering::Relaxed);
                s.requeue(d);
            }
            st.sessions.insert(id, Arc::new(Mutex::new(s)));
        }
        for mut m in retained {
            m.id = self.next_msg.fetch_add(1, Ordering::Relaxed);
            st.retained.insert(m.topic.clone(), Arc::new(m));
        }
    }

    /// Attaches a new connection to the client's session (created, resumed or started clean),
    /// taking it over from a connection that still holds it. Returns the will of a taken-over
    /// connection to publish, if it is due.
    pub fn connect(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry: u32,
        will: Option<Will>,
        mut link: Link,
    ) -> (Attached, Option<Will>) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        link.conn = conn;
        let wake = link.wake.clone();
        let id: ClientId = client_id.into();
        let mut st = self.state();
        let existing = st.sessions.get(&id).cloned();
        let mut old_will = None;
        // What the stored state may hold for this client id already.
        let (mut was_stored, mut had_will) = (false, false);
        let (session, present) = match existing {
            Some(s) => {
                let mut g = session::lock(&s);
                was_stored = g.expiry > 0;
                had_will = g.will.is_some() || g.will_due.is_some();
                if let Some(old) = g.link.take() {
                    // Its writer sees the session is no longer its own and closes.
                    old.wake.notify_one();
                    // Its will is due unless the session goes on and the will has a delay.
                    old_will = g.will.take().filter(|w| clean_start || w.delay == 0);
                }
                // A will waiting for its delay is dropped when the session is resumed.
                let delayed = g.will_due.take();
                if clean_start {
                    if was_stored {
                        self.persist.send(Change::SessionGone(id.to_string()));
                        was_stored = false;
                    }
                    old_will = old_will.or(delayed.map(|(_, w)| w));
                    let filters: Vec<String> = g.subscriptions.drain().map(|(f, _)| f).collect();
                    for f in &filters {
                        st.tree.unsubscribe(&id, f);
                    }
                    g.clear_messages();
                }
                drop(g);
                (s, !clean_start)
            }
            None => {
                let s = Arc::new(Mutex::new(Session::new(id.clone(), self.persist.clone())));
                st.sessions.insert(id.clone(), s.clone());
                (s, false)
            }
        };
        {
            let mut g = session::lock(&session);
            g.expiry = expiry.min(self.limits.max_session_expiry);
            // Stored while the client is connected: a restart ends the connection, and the
            // will is due after it.
            match &will {
                Some(w) => self
                    .persist
                    .send(Change::Will(client_id.to_owned(), w.clone())),
                None if had_will => self.persist.send(Change::WillGone(client_id.to_owned())),
                None => {}
            }
            g.will = will;
            g.attach(link);
            self.persist.send_some(Change::session(&g, was_stored));
        }
        drop(st);
        (
            Attached {
                session,
                conn,
                present,
                wake,
            },
            old_will,
        )
    }

    /// Connection `conn` ended. `graceful`: the client sent DISCONNECT without asking for its
    /// will; `expiry`: a new Session Expiry Interval from that DISCONNECT. Publishes the will
    /// when due, and ends the session when it does not outlive the connection.
    pub fn disconnect(&self, session: &SessionRef, conn: u64, graceful: bool, expiry: Option<u32>) {
        let mut st = self.state();
        let mut g = session::lock(session);
        if g.link.as_ref().is_none_or(|l| l.conn != conn) {
            return; // taken over: the session is another connection's now
        }
        g.link = None;
        g.ended_at = Some(Instant::now());
        let was_stored = g.expiry > 0;
        let had_will = g.will.is_some();
        if let Some(e) = expiry {
            g.expiry = e.min(self.limits.max_session_expiry);
        }
        let will = g.will.take().filter(|_| !graceful);
        let mut publish_now = None;
        if let Some(w) = will {
            let delay = w.delay.min(g.expiry);
            if delay == 0 {
                publish_now = Some(w);
            } else {
                // Still stored: due after a restart too.
                g.will_due = Some((Instant::now() + Duration::from_secs(delay.into()), w));
            }
        }
        if had_will && (g.will_due.is_none() || g.expiry == 0) {
            self.persist.send(Change::WillGone(g.client_id.to_string()));
        }
        let id = g.client_id.clone();
        if g.expiry == 0 {
            publish_now = publish_now.or(g.will_due.take().map(|(_, w)| w));
            let filters: Vec<String> = g.subscriptions.keys().cloned().collect();
            drop(g);
            for f in &filters {
                st.tree.unsubscribe(&id, f);
            }
            st.sessions.remove(&id);
            if was_stored {
                self.persist.send(Change::SessionGone(id.to_string()));
            }
        } else {
            self.persist.send_some(Change::session(&g, was_stored));
            drop(g);
        }
        drop(st);
        if let Some(w) = publish_now {
            let _ = self.publish(will_message(w, Some(id)));
        }
    }

    /// Ends sessions past their expiry and publishes wills past their delay.
    pub fn sweep(&self, now: Instant) {
        let mut wills = Vec::new();
        {
            let mut st = self.state();
            let mut ended = Vec::new();
            for (id, s) in &st.sessions {
                let mut g = session::lock(s);
                if g.online() {
                    continue;
                }
                if g.will_due.as_ref().is_some_and(|(at, _)| *at <= now) {
                    if let Some((_, w)) = g.will_due.take() {
                        wills.push((w, id.clone()));
                    }
                }
                let expired = g.expiry != NEVER
                    && g.ended_at.is_some_and(|at| {
                        now.saturating_duration_since(at) >= Duration::from_secs(g.expiry.into())
                    });
                if expired {
                    if let Some((_, w)) = g.will_due.take() {
                        wills.push((w, id.clone()));
                    }
                    ended.push((
                        id.clone(),
                        g.subscriptions.keys().cloned().collect::<Vec<_>>(),
                    ));
                }
            }
            for (id, filters) in ended {
                for f in &filters {
                    st.tree.unsubscribe(&id, f);
                }
                st.sessions.remove(&id);
                self.persist.send(Change::SessionGone(id.to_string()));
            }
        }
        for (w, id) in wills {
            self.persist.send(Change::WillGone(id.to_string()));
            let _ = self.publish(will_message(w, Some(id)));
        }
    }

    /// Routes a message to every matching subscription, and keeps it when retained. Returns
    /// what resolves once the stored state it changed (retained message, queued copies for
    /// sessions that outlive their connection) is committed, if it changed any.
    pub fn publish(&self, mut msg: Message) -> Option<tokio::sync::oneshot::Receiver<()>> {
        msg.id = self.next_msg.fetch_add(1, Ordering::Relaxed);
        let msg = Arc::new(msg);
        let mut wakes: Vec<Arc<Notify>> = Vec::new();
        let mut stored = msg.retain;
        {
            let mut st = self.state();
            if msg.retain {
                if msg.payload.is_empty() {
                    if st.retained.remove(&msg.topic).is_some() {
                        self.persist
                            .send(Change::RetainedGone(msg.topic.to_string()));
                    }
                } else {
                    st.retained.insert(msg.topic.clone(), msg.clone());
                    self.persist.send(Change::Retained(msg.clone()));
                }
            }
            let State { sessions, tree, .. } = &mut *st;
            let online = |c: &ClientId| sessions.get(c).is_some_and(|s| session::lock(s).online());
            let matches = tree.matches(&msg.topic, online);
            // One delivery per session: the highest QoS of its matching subscriptions, with
            // all their identifiers.
            let mut per_session: HashMap<ClientId, Delivery> = HashMap::new();
            for m in matches {
                if m.options.no_local && !m.shared && msg.origin.as_ref() == Some(&m.client) {
                    continue;
                }
                let qos = msg.qos.min(m.options.qos);
                let retain = msg.retain && m.options.retain_as_published;
                let d = per_session.entry(m.client).or_insert_with(|| Delivery {
                    msg: msg.clone(),
                    qos,
                    retain,
                    subscription_ids: Vec::new(),
                });
                d.qos = d.qos.max(qos);
                d.retain |= retain;
                d.subscription_ids.extend(m.options.id);
            }
            for (client, d) in per_session {
                if let Some(s) = sessions.get(&client) {
                    let mut g = session::lock(s);
                    let keep = g.expiry > 0 && d.qos > 0;
                    if g.enqueue(d, self.limits.max_queued) {
                        stored |= keep;
                        wakes.extend(g.waker());
                    }
                }
            }
        }
        for w in wakes {
            w.notify_one();
        }
        if stored {
            self.persist.sync()
        } else {
            None
        }
    }

    /// Subscribes and answers with the SUBACK on connection `conn` (per filter the granted QoS
    /// or a failure code: 3.1.1 0x80, an MQTT 5 reason), then queues the retained messages
    /// the subscriptions ask for. Returns the codes.
    pub fn subscribe(
        &self,
        session: &SessionRef,
        conn: u64,
        sub: &Subscribe,
        allowed: impl Fn(&str) -> bool,
        v5: bool,
    ) -> Vec<u8> {
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut retained = Vec::new();
        let mut st = self.state();
        let mut g = session::lock(session);
        let client = g.client_id.clone();
        let now = SystemTime::now();
        for f in &sub.filters {
            let shared = topic::shared(&f.filter);
            let valid = match shared {
                Some((group, filter)) => topic::valid_shared(group, filter),
                None => topic::valid_filter(&f.filter),
            };
            if !valid {
                codes.push(if v5 { 0x8F } else { 0x80 });
                continue;
            }
            if shared.is_some() && f.no_local {
                codes.push(if v5 { 0x82 } else { 0x80 });
                continue;
            }
            if !allowed(&f.filter) {
                // 0x80 in both versions, as the Paho suites and Mosquitto users expect.
                codes.push(0x80);
                continue;
            }
            let options = SubOptions {
                qos: f.qos,
                no_local: f.no_local,
                retain_as_published: f.retain_as_published,
                retain_handling: f.retain_handling,
                id: sub.id,
            };
            let existed = st.tree.subscribe(&client, &f.filter, options.clone());
            g.subscriptions.insert(f.filter.clone(), options);
            codes.push(f.qos);
            let send_retained = shared.is_none()
                && match f.retain_handling {
                    0 => true,
                    1 => !existed,
                    _ => false,
                };
            if send_retained {
                for m in st.retained.values() {
                    if topic::matches(&f.filter, &m.topic) && !m.expired(now) {
                        retained.push(Delivery {
                            msg: m.clone(),
                            qos: m.qos.min(f.qos),
                            retain: true,
                            subscription_ids: sub.id.into_iter().collect(),
                        });
                    }
                }
            }
        }
        // SUBACK before the retained messages it lets through.
        g.say(conn, &packet::suback(sub.pid, &codes, v5));
        for d in retained {
            g.enqueue(d, self.limits.max_queued);
        }
        self.persist.send_some(Change::session(&g, false));
        let wake = g.waker();
        drop(g);
        drop(st);
        if let Some(w) = wake {
            w.notify_one();
        }
        codes
    }

    /// Unsubscribes; returns per filter 0 (removed) or 0x11 (there was no such subscription).
    pub fn unsubscribe(&self, session: &SessionRef, filters: &[String]) -> Vec<u8> {
        let mut st = self.state();
        let mut g = session::lock(session);
        let client = g.client_id.clone();
        let codes = filters
            .iter()
            .map(|f| {
                let had = g.subscriptions.remove(f).is_some();
                st.tree.unsubscribe(&client, f);
                if had {
                    0
                } else {
                    0x11
                }
            })
            .collect();
        self.persist.send_some(Change::session(&g, false));
        codes
    }

    /// Sessions, subscriptions in force and retained messages (for status and tests).
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.state();
        (st.sessions.len(), st.tree.len(), st.retained.len())
    }
}

/// A will as the message it becomes.
pub fn will_message(w: Will, origin: Option<ClientId>) -> Message {
    Message {
        id: 0,
        topic: w.topic.as_str().into(),
        payload: w.payload,
        qos: w.qos,
        retain: w.retain,
        props: w.props,
        expires_at: w
            .expiry
            .map(|s| SystemTime::now() + Duration::from_secs(s.into())),
        origin,
    }
}

/// A message built from a client's PUBLISH.
/// A QoS 1 message from Genba itself (the HTTP bridge in the same process), already journaled.
pub fn internal_message(topic: &str, payload: Vec<u8>) -> Message {
    Message {
        id: 0,
        topic: topic.into(),
        payload: payload.into(),
        qos: 1,
        retain: false,
        props: bytes::Bytes::new(),
        expires_at: None,
        origin: None,
    }
}

pub fn message_from(p: crate::packet::Publish, origin: Option<ClientId>) -> Message {
    Message {
        id: 0,
        topic: p.topic.as_str().into(),
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        props: p.props,
        expires_at: p
            .expiry
            .map(|s| SystemTime::now() + Duration::from_secs(s.into())),
        origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::SubscribeFilter;

    fn broker() -> Broker {
        Broker::new(
            Limits {
                max_queued: 10,
                max_keep_alive: 60,
                max_session_expiry: NEVER,
            },
            Persist::default(),
        )
    }

    fn sub(filter: &str, qos: u8) -> Subscribe {
        Subscribe {
            pid: 1,
            id: None,
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            }],
        }
    }

    fn msg(topic: &str, qos: u8, retain: bool) -> Message {
        Message {
            id: 0,
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos,
            retain,
            props: bytes::Bytes::new(),
            expires_at: None,
            origin: None,
        }
    }

    fn attach(b: &Broker, id: &str, clean: bool, expiry: u32) -> Attached {
        b.connect(id, clean, expiry, None, Link::new(0, true, 100, u32::MAX))
            .0
    }

    #[test]
    fn filters_nobody_subscribes_to_any_more_are_freed() {
        let b = broker();
        let a = attach(&b, "c", true, 0);
        for i in 0..1000 {
            b.subscribe(
                &a.session,
                a.conn,
                &sub(&format!("fresh/{i}/+"), 1),
                |_| true,
                true,
            );
            b.publish(msg(&format!("fresh/{i}/x"), 1, false));
            b.unsubscribe(&a.session, &[format!("fresh/{i}/+")]);
        }
        assert_eq!(b.counts(), (1, 0, 0), "sessions, subscriptions, retained");
        assert!(b.state().tree.is_empty());
        // A clean session's subscriptions go with its connection.
        b.subscribe(&a.session, a.conn, &sub("x/#", 1), |_| true, true);
        b.disconnect(&a.session, a.conn, true, None);
        assert_eq!(b.counts(), (0, 0, 0));
    }

    #[test]
    fn a_session_that_outlives_its_connection_queues_up_to_its_bound() {
        let b = broker();
        let a = attach(&b, "p", true, 3600);
        b.subscribe(&a.session, a.conn, &sub("q/#", 1), |_| true, true);
        b.disconnect(&a.session, a.conn, true, None);
        for _ in 0..25 {
            b.publish(msg("q/1", 1, false));
        }
        // QoS 0 is not queued for a client that is away.
        b.publish(msg("q/1", 0, false));
        let g = session::lock(&a.session);
        assert_eq!((g.pending(), g.dropped), (10, 15));
    }

    #[test]
    fn clean_start_drops_the_old_session_and_takeover_closes_the_old_connection() {
        let b = broker();
        let first = attach(&b, "t", false, NEVER);
        b.subscribe(&first.session, first.conn, &sub("t/#", 1), |_| true, true);
        // Same client id again, resuming: the session is present, the old link is gone.
        let second = attach(&b, "t", false, NEVER);
        assert!(second.present);
        let mut out = Vec::new();
        assert_eq!(
            session::lock(&first.session).drain(first.conn, &mut out, SystemTime::now()),
            session::Drain::TakenOver
        );
        // Clean start: no session present, no subscriptions left.
        let third = attach(&b, "t", true, 0);
        assert!(!third.present);
        assert_eq!(b.counts().1, 0);
    }

    #[test]
    fn retained_messages_are_kept_replaced_and_cleared() {
        let b = broker();
        b.publish(msg("r/1", 1, true));
        b.publish(msg("r/2", 1, true));
        assert_eq!(b.counts().2, 2);
        let mut clear = msg("r/1", 1, true);
        clear.payload = bytes::Bytes::new();
        b.publish(clear);
        assert_eq!(b.counts().2, 1);
        // A new subscriber gets the retained one at the lower QoS, flagged retained.
        let a = attach(&b, "s", true, 0);
        b.subscribe(&a.session, a.conn, &sub("r/#", 0), |_| true, true);
        let mut out = Vec::new();
        session::lock(&a.session).drain(a.conn, &mut out, SystemTime::now());
        // SUBACK (5 bytes + properties), then PUBLISH with QoS 0 and RETAIN.
        let publish_at = out.iter().position(|b| b & 0xF0 == 0x30).expect("publish");
        assert_eq!(out[publish_at], 0x31);
    }
}
