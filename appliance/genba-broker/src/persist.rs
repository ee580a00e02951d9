//! Broker state that survives a restart, a SIGKILL and a power cut: retained messages,
//! sessions that outlive their connection (subscriptions, expiry) and the QoS 1/2 messages
//! queued or in flight for them. Changes go to one writer thread that commits them in
//! batches (`synchronous=FULL`, at most [`BATCH_WINDOW`] after the change) through
//! genba-store, which owns the tables.
//!
//! What is not kept: sessions that end with their connection (Clean Session 1 / expiry 0),
//! QoS 0 messages, and the QoS 2 packet ids a client has in flight towards the broker (the
//! journal's DUP check still stores such a resend once).

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use genba_store::broker_state::{self as rows, StateChange};

use crate::session::{Delivery, Message, Session};
use crate::topic::SubOptions;

/// Changes committed in one transaction at most.
const MAX_BATCH: usize = 2048;

/// A change to the stored state.
pub enum Change {
    Retained(Arc<Message>),
    RetainedGone(String),
    /// A session that outlives its connection: expiry and subscriptions.
    Session {
        client_id: String,
        expiry: u32,
        subscriptions: Vec<(String, SubOptions)>,
    },
    SessionGone(String),
    /// A QoS 1/2 message for a stored session.
    Queued(String, Delivery),
    /// That message was acknowledged (or dropped as delivered).
    Delivered(String, u64),
    /// The will of a connected client (due after a restart, which ends its connection).
    Will(String, crate::packet::Will),
    /// That will was published, or is no longer wanted.
    WillGone(String),
    /// Resolved once every change before it is committed.
    Sync(tokio::sync::oneshot::Sender<()>),
    /// The list of connected clients (`/v2/session`): not durable, written without an fsync.
    Client(ClientChange),
}

/// A change to the list of connected clients (genba-store `sessions`).
pub enum ClientChange {
    Opened(genba_store::sessions::MqttSession),
    Subscriptions(i64, Vec<String>, bool),
    Closed(i64),
}

impl ClientChange {
    fn apply(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        use genba_store::sessions;
        match self {
            ClientChange::Opened(row) => sessions::open(conn, row),
            ClientChange::Subscriptions(id, filters, add) => {
                sessions::change_subscriptions(conn, *id, filters, *add)
            }
            ClientChange::Closed(id) => sessions::close(conn, *id),
        }
    }
}

impl Change {
    /// What keeps the stored form of session `s` current: its row while it outlives its
    /// connection; its removal once it no longer does but `was_stored`; else nothing (a session
    /// that ends with its connection costs no write).
    pub fn session(s: &Session, was_stored: bool) -> Option<Change> {
        if s.expiry == 0 {
            return was_stored.then(|| Change::SessionGone(s.client_id.to_string()));
        }
        Some(Change::Session {
            client_id: s.client_id.to_string(),
            expiry: s.expiry,
            subscriptions: s
                .subscriptions
                .iter()
                .map(|(f, o)| (f.clone(), o.clone()))
                .collect(),
        })
    }
}

/// Where changes go (nowhere for a broker without a data directory, as in unit tests).
#[derive(Clone, Default)]
pub struct Persist(Option<mpsc::Sender<Change>>);

impl Persist {
    pub fn send(&self, change: Change) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(change);
        }
    }

    /// Sends `change` if there is one.
    pub fn send_some(&self, change: Option<Change>) {
        if let Some(c) = change {
            self.send(c);
        }
    }

    /// Resolves once every change sent so far is committed (`None`: nothing is stored).
    pub fn sync(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let tx = self.0.as_ref()?;
        let (done, wait) = tokio::sync::oneshot::channel();
        tx.send(Change::Sync(done)).ok()?;
        Some(wait)
    }

    /// Starts the writer thread on the SQLite file at `path`.
    pub fn start(path: &std::path::Path) -> Result<Persist, genba_store::StoreError> {
        let mut conn = genba_store::open(path)?;
        let (tx, rx) = mpsc::channel::<Change>();
        std::thread::Builder::new()
            .name("broker-state".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let (mut batch, mut synced, mut clients) = (Vec::new(), Vec::new(), Vec::new());
                    let mut next = Some(first);
                    while let Some(c) = next {
                        match c {
                            Change::Sync(done) => synced.push(done),
                            Change::Client(c) => clients.push(c),
                            c => batch.extend(stored(c)),
                        }
                        next = if batch.len() < MAX_BATCH {
                            rx.try_recv().ok()
                        } else {
                            None
                        };
                    }
                    if !clients.is_empty() {
                        // The session list's own statements commit without an fsync.
                        for c in &clients {
                            if let Err(e) = c.apply(&conn) {
                                tracing::warn!(error = %e, "session list: cannot record a change");
                            }
                        }
                        if let Err(e) = conn.execute_batch("PRAGMA synchronous=FULL") {
                            tracing::error!(error = %e, "broker state: cannot restore synchronous=FULL");
                        }
                    }
                    if !batch.is_empty() {
                        if let Err(e) = rows::apply(&mut conn, &batch) {
                            tracing::error!(error = %e, changes = batch.len(), "broker state: cannot store changes");
                            // Not resolved: the publish is not acknowledged, the client resends.
                            continue;
                        }
                    }
                    for done in synced {
                        let _ = done.send(());
                    }
                }
            })
            .map_err(|e| genba_store::StoreError::Task(format!("cannot start the broker state writer: {e}")))?;
        Ok(Persist(Some(tx)))
    }
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn retained_row(m: &Message) -> rows::RetainedRow {
    rows::RetainedRow {
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: m.qos,
        props: m.props.to_vec(),
        expires_at_ms: m.expires_at.map(ms),
    }
}

/// The row change for a state change (`None` for the markers and the session list).
fn stored(c: Change) -> Option<StateChange> {
    Some(match c {
        Change::Retained(m) => StateChange::Retained(retained_row(&m)),
        Change::RetainedGone(t) => StateChange::RetainedGone(t),
        Change::Session {
            client_id,
            expiry,
            subscriptions,
        } => StateChange::Session(rows::SessionRow {
            client_id,
            expiry,
            subscriptions: serde_json::to_string(&subscriptions).unwrap_or_else(|_| "[]".into()),
        }),
        Change::SessionGone(id) => StateChange::SessionGone(id),
        Change::Queued(client_id, d) => StateChange::Queued(rows::QueuedRow {
            client_id,
            msg_id: d.msg.id as i64,
            message: retained_row(&d.msg),
            qos: d.qos,
            retain: d.retain,
            subscription_ids: serde_json::to_string(&d.subscription_ids)
                .unwrap_or_else(|_| "[]".into()),
        }),
        Change::Delivered(client_id, id) => StateChange::Delivered(client_id, id as i64),
        Change::Will(client_id, w) => StateChange::Will(rows::WillRow {
            client_id,
            topic: w.topic,
            payload: w.payload.to_vec(),
            qos: w.qos,
            retain: w.retain,
            props: w.props.to_vec(),
            delay: w.delay,
            expiry: w.expiry,
        }),
        Change::WillGone(client_id) => StateChange::WillGone(client_id),
        Change::Sync(_) | Change::Client(_) => return None,
    })
}

fn message(r: rows::RetainedRow, id: u64) -> Message {
    Message {
        id,
        topic: r.topic.as_str().into(),
        payload: Bytes::from(r.payload),
        qos: r.qos,
        retain: true,
        props: Bytes::from(r.props),
        expires_at: r.expires_at_ms.map(from_ms),
        origin: None,
    }
}

/// A stored session, as restored at start.
pub struct StoredSession {
    pub client_id: String,
    pub expiry: u32,
    pub subscriptions: Vec<(String, SubOptions)>,
    pub queued: Vec<Delivery>,
}

/// What the broker finds stored when it starts.
pub struct Stored {
    pub retained: Vec<Message>,
    pub sessions: Vec<StoredSession>,
    /// Wills of the clients connected when the broker stopped: (client id, will).
    pub wills: Vec<(String, crate::packet::Will)>,
}

/// Reads what was stored: retained messages, sessions with their queued messages, wills.
pub fn load(path: &std::path::Path) -> Result<Stored, genba_store::StoreError> {
    let conn = genba_store::open(path)?;
    let sqlite = |source| genba_store::StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let wills = rows::take_wills(&conn)
        .map_err(sqlite)?
        .into_iter()
        .map(|w| {
            (
                w.client_id,
                crate::packet::Will {
                    topic: w.topic,
                    payload: Bytes::from(w.payload),
                    qos: w.qos,
                    retain: w.retain,
                    delay: w.delay,
                    expiry: w.expiry,
                    props: Bytes::from(w.props),
                },
            )
        })
        .collect();
    let (retained, sessions, queued) = rows::load(&conn).map_err(sqlite)?;
    let retained = retained.into_iter().map(|r| message(r, 0)).collect();
    let mut out: Vec<StoredSession> = sessions
        .into_iter()
        .map(|s| StoredSession {
            subscriptions: serde_json::from_str(&s.subscriptions).unwrap_or_default(),
            client_id: s.client_id,
            expiry: s.expiry,
            queued: Vec::new(),
        })
        .collect();
    for q in queued {
        let Some(s) = out.iter_mut().find(|s| s.client_id == q.client_id) else {
            continue;
        };
        let mut msg = message(q.message, q.msg_id as u64);
        msg.retain = q.retain;
        s.queued.push(Delivery {
            msg: Arc::new(msg),
            qos: q.qos,
            retain: q.retain,
            subscription_ids: serde_json::from_str(&q.subscription_ids).unwrap_or_default(),
        });
    }
    Ok(Stored {
        retained,
        sessions: out,
        wills,
    })
}
