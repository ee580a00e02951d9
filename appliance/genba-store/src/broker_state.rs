//! The MQTT broker's durable state (migration 8): retained messages, sessions that outlive
//! their connection, and the QoS 1/2 messages queued for them. The broker's writer thread
//! (genba-broker/src/persist.rs) applies its changes here in batches; at start it loads them.

use rusqlite::{params, Connection};

use crate::now_ms;

/// A retained message (also the message part of a queued row).
#[derive(Debug, Clone, PartialEq)]
pub struct RetainedRow {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub props: Vec<u8>,
    pub expires_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub client_id: String,
    pub expiry: u32,
    /// JSON, the broker's own format.
    pub subscriptions: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueuedRow {
    pub client_id: String,
    pub msg_id: i64,
    pub message: RetainedRow,
    pub qos: u8,
    pub retain: bool,
    /// JSON array of subscription identifiers.
    pub subscription_ids: String,
}

/// The will of a connected client.
#[derive(Debug, Clone, PartialEq)]
pub struct WillRow {
    pub client_id: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: Vec<u8>,
    pub delay: u32,
    pub expiry: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StateChange {
    Will(WillRow),
    WillGone(String),
    Retained(RetainedRow),
    RetainedGone(String),
    Session(SessionRow),
    /// The session ended: its row and its queued messages go.
    SessionGone(String),
    Queued(QueuedRow),
    Delivered(String, i64),
}

/// Applies `changes` in order, in one transaction.
pub fn apply(conn: &mut Connection, changes: &[StateChange]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let now = now_ms();
    for c in changes {
        match c {
            StateChange::Retained(r) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO mqtt_retained (topic, payload, qos, props, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    r.topic,
                    r.payload,
                    r.qos,
                    r.props,
                    r.expires_at_ms
                ])?;
            }
            StateChange::RetainedGone(topic) => {
                tx.prepare_cached("DELETE FROM mqtt_retained WHERE topic = ?1")?
                    .execute([topic])?;
            }
            StateChange::Session(s) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO mqtt_stored_sessions (client_id, expiry, subscriptions, saved_at)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![s.client_id, s.expiry, s.subscriptions, now])?;
            }
            StateChange::SessionGone(id) => {
                tx.prepare_cached("DELETE FROM mqtt_stored_sessions WHERE client_id = ?1")?
                    .execute([id])?;
                tx.prepare_cached("DELETE FROM mqtt_queue WHERE client_id = ?1")?
                    .execute([id])?;
            }
            StateChange::Queued(q) => {
                let m = &q.message;
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO mqtt_queue (client_id, msg_id, topic, payload, qos, retain,
                     props, expires_at, subscription_ids) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    q.client_id,
                    q.msg_id,
                    m.topic,
                    m.payload,
                    q.qos,
                    q.retain,
                    m.props,
                    m.expires_at_ms,
                    q.subscription_ids
                ])?;
            }
            StateChange::Will(w) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO mqtt_wills (client_id, topic, payload, qos, retain,
                     props, delay, expiry) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    w.client_id,
                    w.topic,
                    w.payload,
                    w.qos,
                    w.retain,
                    w.props,
                    w.delay,
                    w.expiry
                ])?;
            }
            StateChange::WillGone(id) => {
                tx.prepare_cached("DELETE FROM mqtt_wills WHERE client_id = ?1")?
                    .execute([id])?;
            }
            StateChange::Delivered(id, msg_id) => {
                tx.prepare_cached("DELETE FROM mqtt_queue WHERE client_id = ?1 AND msg_id = ?2")?
                    .execute(params![id, msg_id])?;
            }
        }
    }
    tx.commit()
}

type Loaded = (Vec<RetainedRow>, Vec<SessionRow>, Vec<QueuedRow>);

/// Everything stored: retained messages (expired ones dropped), sessions, and their queued
/// messages in the order they were queued.
pub fn load(conn: &Connection) -> rusqlite::Result<Loaded> {
    let now = now_ms();
    conn.execute(
        "DELETE FROM mqtt_retained WHERE expires_at IS NOT NULL AND expires_at <= ?1",
        [now],
    )?;
    let retained = conn
        .prepare("SELECT topic, payload, qos, props, expires_at FROM mqtt_retained ORDER BY topic")?
        .query_map([], |r| {
            Ok(RetainedRow {
                topic: r.get(0)?,
                payload: r.get(1)?,
                qos: r.get(2)?,
                props: r.get(3)?,
                expires_at_ms: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let sessions = conn
        .prepare(
            "SELECT client_id, expiry, subscriptions FROM mqtt_stored_sessions ORDER BY client_id",
        )?
        .query_map([], |r| {
            Ok(SessionRow {
                client_id: r.get(0)?,
                expiry: r.get(1)?,
                subscriptions: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let queued = conn
        .prepare(
            "SELECT client_id, msg_id, topic, payload, qos, retain, props, expires_at, subscription_ids
             FROM mqtt_queue ORDER BY client_id, msg_id",
        )?
        .query_map([], |r| {
            Ok(QueuedRow {
                client_id: r.get(0)?,
                msg_id: r.get(1)?,
                message: RetainedRow {
                    topic: r.get(2)?,
                    payload: r.get(3)?,
                    qos: r.get(4)?,
                    props: r.get(6)?,
                    expires_at_ms: r.get(7)?,
                },
                qos: r.get(4)?,
                retain: r.get(5)?,
                subscription_ids: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((retained, sessions, queued))
}

/// The wills stored (of clients connected when the broker stopped), and forgets them: the
/// broker publishes or schedules each once.
pub fn take_wills(conn: &Connection) -> rusqlite::Result<Vec<WillRow>> {
    let wills = conn
        .prepare(
            "SELECT client_id, topic, payload, qos, retain, props, delay, expiry FROM mqtt_wills
             ORDER BY client_id",
        )?
        .query_map([], |r| {
            Ok(WillRow {
                client_id: r.get(0)?,
                topic: r.get(1)?,
                payload: r.get(2)?,
                qos: r.get(3)?,
                retain: r.get(4)?,
                props: r.get(5)?,
                delay: r.get(6)?,
                expiry: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    conn.execute("DELETE FROM mqtt_wills", [])?;
    Ok(wills)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str) -> RetainedRow {
        RetainedRow {
            topic: topic.into(),
            payload: b"x".to_vec(),
            qos: 1,
            props: vec![],
            expires_at_ms: None,
        }
    }

    #[test]
    fn changes_are_stored_and_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::open(&dir.path().join("db")).unwrap();
        let queued = |id| {
            StateChange::Queued(QueuedRow {
                client_id: "c".into(),
                msg_id: id,
                message: msg("t"),
                qos: 1,
                retain: false,
                subscription_ids: "[]".into(),
            })
        };
        apply(
            &mut conn,
            &[
                StateChange::Retained(msg("r/1")),
                StateChange::Retained(msg("r/2")),
                StateChange::RetainedGone("r/1".into()),
                StateChange::Session(SessionRow {
                    client_id: "c".into(),
                    expiry: 60,
                    subscriptions: "[]".into(),
                }),
                queued(1),
                queued(2),
                StateChange::Delivered("c".into(), 1),
            ],
        )
        .unwrap();
        let (retained, sessions, q) = load(&conn).unwrap();
        assert_eq!(retained, vec![msg("r/2")]);
        assert_eq!(sessions.len(), 1);
        assert_eq!(q.iter().map(|r| r.msg_id).collect::<Vec<_>>(), vec![2]);
        apply(&mut conn, &[StateChange::SessionGone("c".into())]).unwrap();
        let (_, sessions, q) = load(&conn).unwrap();
        assert!(sessions.is_empty() && q.is_empty());
    }
}
