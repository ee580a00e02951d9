//! The MQTT clients connected now (requirement P6), as the broker's front door sees them:
//! written at CONNECT, SUBSCRIBE/UNSUBSCRIBE and disconnect, emptied when the broker starts,
//! read by `/v2/session` in whichever process serves HTTP. Not durable on purpose: commits
//! here skip the fsync (a power cut ends every session anyway).

use rusqlite::{params, Connection, Row};
use serde::Serialize;

use crate::now_ms;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MqttSession {
    pub id: i64,
    pub client_id: String,
    pub username: Option<String>,
    pub address: String,
    pub protocol: u8,
    pub keep_alive: u16,
    pub clean_start: bool,
    pub connected_at_ms: i64,
    pub subscriptions: Vec<String>,
}

fn relaxed(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("PRAGMA synchronous=NORMAL")
}

/// Forgets every session (the broker starting: nobody is connected yet).
pub fn clear(conn: &Connection) -> rusqlite::Result<()> {
    relaxed(conn)?;
    conn.execute("DELETE FROM mqtt_sessions", [])?;
    Ok(())
}

/// Records a connected client under its id `s.id` (the broker's connection number; the table
/// is emptied when the broker starts).
pub fn open(conn: &Connection, s: &MqttSession) -> rusqlite::Result<()> {
    relaxed(conn)?;
    conn.execute(
        "INSERT OR REPLACE INTO mqtt_sessions (id, client_id, username, address, protocol,
         keep_alive, clean_start, connected_at) VALUES (?8, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            s.client_id,
            s.username,
            s.address,
            s.protocol,
            s.keep_alive,
            s.clean_start,
            now_ms(),
            s.id
        ],
    )?;
    Ok(())
}

/// Adds (`subscribe`) or removes filters of a session.
pub fn change_subscriptions(
    conn: &Connection,
    id: i64,
    filters: &[String],
    subscribe: bool,
) -> rusqlite::Result<()> {
    relaxed(conn)?;
    let current: String = conn.query_row(
        "SELECT subscriptions FROM mqtt_sessions WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )?;
    let mut list: Vec<String> = serde_json::from_str(&current).unwrap_or_default();
    for f in filters {
        list.retain(|x| x != f);
        if subscribe {
            list.push(f.clone());
        }
    }
    let text = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
    conn.execute(
        "UPDATE mqtt_sessions SET subscriptions = ?2 WHERE id = ?1",
        params![id, text],
    )?;
    Ok(())
}

pub fn close(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    relaxed(conn)?;
    conn.execute("DELETE FROM mqtt_sessions WHERE id = ?1", params![id])?;
    Ok(())
}

fn row(r: &Row) -> rusqlite::Result<MqttSession> {
    let subs: String = r.get(8)?;
    Ok(MqttSession {
        id: r.get(0)?,
        client_id: r.get(1)?,
        username: r.get(2)?,
        address: r.get(3)?,
        protocol: r.get(4)?,
        keep_alive: r.get(5)?,
        clean_start: r.get(6)?,
        connected_at_ms: r.get(7)?,
        subscriptions: serde_json::from_str(&subs).unwrap_or_default(),
    })
}

pub fn list(conn: &Connection) -> rusqlite::Result<Vec<MqttSession>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, client_id, username, address, protocol, keep_alive, clean_start,
         connected_at, subscriptions FROM mqtt_sessions ORDER BY id",
    )?;
    let rows = stmt.query_map([], row)?;
    rows.collect()
}
