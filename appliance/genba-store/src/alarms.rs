//! Rules as stored (their spec is the typed rule of genba-config, kept as JSON), the pending
//! state of duration rules, and alarms: raised -> acknowledged (who, when, corrective-action
//! note: the HACCP record of the deviation) -> cleared. Alarms are raised, escalated and
//! cleared only by the rules engine inside the writer's transaction ([`crate::ingest`]);
//! acknowledging is the one change made from outside.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::now_ms;

/// A rule as stored: its name, where it came from (`config` or `api`) and its JSON spec.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredRule {
    pub name: String,
    pub source: String,
    pub spec: String,
    pub updated_at_ms: i64,
}

pub fn rules(conn: &Connection) -> rusqlite::Result<Vec<StoredRule>> {
    let mut stmt =
        conn.prepare_cached("SELECT name, source, spec, updated_at FROM rules ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredRule {
            name: r.get(0)?,
            source: r.get(1)?,
            spec: r.get(2)?,
            updated_at_ms: r.get(3)?,
        })
    })?;
    rows.collect()
}

pub fn rule(conn: &Connection, name: &str) -> rusqlite::Result<Option<StoredRule>> {
    Ok(rules(conn)?.into_iter().find(|r| r.name == name))
}

/// Makes the `config` rules exactly `specs` (name, JSON); rules made through the API stay,
/// unless the config now defines the same name.
pub fn sync_config_rules(conn: &Connection, specs: &[(String, String)]) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    tx.execute("DELETE FROM rules WHERE source = 'config'", [])?;
    for (name, spec) in specs {
        tx.execute(
            "INSERT INTO rules (name, source, spec, updated_at) VALUES (?1, 'config', ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET source = 'config', spec = excluded.spec,
             updated_at = excluded.updated_at",
            params![name, spec, now_ms()],
        )?;
    }
    tx.commit()
}

/// Adds or replaces an API rule; false when a config rule has that name (edit genba.toml).
pub fn put_rule(conn: &Connection, name: &str, spec: &str) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "INSERT INTO rules (name, source, spec, updated_at) VALUES (?1, 'api', ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at
         WHERE source = 'api'",
        params![name, spec, now_ms()],
    )?;
    Ok(n > 0)
}

/// Deletes an API rule; `None` when there is none, `Some(false)` when it is a config rule.
pub fn delete_rule(conn: &Connection, name: &str) -> rusqlite::Result<Option<bool>> {
    let source: Option<String> = conn
        .query_row(
            "SELECT source FROM rules WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?;
    match source.as_deref() {
        None => Ok(None),
        Some("api") => {
            conn.execute("DELETE FROM rules WHERE name = ?1", params![name])?;
            conn.execute("DELETE FROM rule_state WHERE rule = ?1", params![name])?;
            Ok(Some(true))
        }
        Some(_) => Ok(Some(false)),
    }
}

/// (rule, device, stream, pending since) of every duration rule whose condition holds now.
pub fn pending(conn: &Connection) -> rusqlite::Result<Vec<(String, String, String, i64)>> {
    let mut stmt =
        conn.prepare_cached("SELECT rule, device_id, stream, pending_since FROM rule_state")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    rows.collect()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Alarm {
    pub id: i64,
    pub rule: String,
    pub device_id: String,
    pub stream: String,
    pub condition: String,
    pub severity: String,
    pub threshold: Option<f64>,
    pub value: Option<f64>,
    pub message: String,
    pub raised_at_ms: i64,
    pub escalated_at_ms: Option<i64>,
    pub acked_at_ms: Option<i64>,
    pub acked_by: Option<String>,
    pub note: Option<String>,
    pub cleared_at_ms: Option<i64>,
    pub clear_value: Option<f64>,
}

impl Alarm {
    /// `raised`, `acknowledged` or `cleared` (a cleared alarm may still lack its note).
    pub fn state(&self) -> &'static str {
        if self.cleared_at_ms.is_some() {
            "cleared"
        } else if self.acked_at_ms.is_some() {
            "acknowledged"
        } else {
            "raised"
        }
    }
}

const SELECT: &str = "SELECT id, rule, device_id, stream, condition, severity, threshold, value,
    message, raised_at, escalated_at, acked_at, acked_by, note, cleared_at, clear_value FROM alarms";

fn row(r: &Row) -> rusqlite::Result<Alarm> {
    Ok(Alarm {
        id: r.get(0)?,
        rule: r.get(1)?,
        device_id: r.get(2)?,
        stream: r.get(3)?,
        condition: r.get(4)?,
        severity: r.get(5)?,
        threshold: r.get(6)?,
        value: r.get(7)?,
        message: r.get(8)?,
        raised_at_ms: r.get(9)?,
        escalated_at_ms: r.get(10)?,
        acked_at_ms: r.get(11)?,
        acked_by: r.get(12)?,
        note: r.get(13)?,
        cleared_at_ms: r.get(14)?,
        clear_value: r.get(15)?,
    })
}

/// Which alarms a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Not cleared yet.
    Open,
    /// Not acknowledged yet (open or cleared).
    Unacknowledged,
    All,
}

/// Alarms newest first, at most `limit`, optionally of one device.
pub fn list(
    conn: &Connection,
    which: Which,
    device: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<Alarm>> {
    let filter = match which {
        Which::Open => "cleared_at IS NULL",
        Which::Unacknowledged => "acked_at IS NULL",
        Which::All => "1",
    };
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT} WHERE {filter} AND (?1 IS NULL OR device_id = ?1) ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![device, limit as i64], row)?;
    rows.collect()
}

pub fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<Alarm>> {
    conn.query_row(&format!("{SELECT} WHERE id = ?1"), params![id], row)
        .optional()
}

/// The outcome of an acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub enum Ack {
    Done(Alarm),
    /// Acknowledged before (by whom, when): the first note stays the record.
    Already(Alarm),
    NoSuchAlarm,
}

/// Acknowledges an alarm with who did it and the corrective action taken.
pub fn acknowledge(conn: &Connection, id: i64, by: &str, note: &str) -> rusqlite::Result<Ack> {
    let n = conn.execute(
        "UPDATE alarms SET acked_at = ?2, acked_by = ?3, note = ?4 WHERE id = ?1 AND acked_at IS NULL",
        params![id, now_ms(), by, note],
    )?;
    Ok(match (n, get(conn, id)?) {
        (_, None) => Ack::NoSuchAlarm,
        (0, Some(a)) => Ack::Already(a),
        (_, Some(a)) => Ack::Done(a),
    })
}

/// Asks for the parked messages of `sink` to be tried again; returns how many.
pub fn request_retry(conn: &Connection, sink: &str) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE parked SET retry = 1 WHERE sink = ?1 AND retry = 0",
        params![sink],
    )
}

/// Journal rows of `sink` an operator asked to try again, oldest first, at most `limit`.
pub fn retry_requested(
    conn: &Connection,
    sink: &str,
    limit: usize,
) -> rusqlite::Result<Vec<crate::JournalEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT j.id, j.received_at, j.source, j.topic, j.payload, j.qos, j.retain
         FROM parked p JOIN journal j ON j.id = p.journal_id
         WHERE p.sink = ?1 AND p.retry = 1 ORDER BY j.id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![sink, limit as i64], |r| {
        Ok(crate::JournalEntry {
            id: r.get(0)?,
            received_at_ms: r.get(1)?,
            source: r.get(2)?,
            topic: r.get(3)?,
            payload: r.get(4)?,
            qos: r.get(5)?,
            retain: r.get(6)?,
        })
    })?;
    rows.collect()
}

/// Alarms by state and severity, and the number of rules: what `/metrics` reports.
pub struct Counts {
    /// (state: `raised`, `acknowledged` or `cleared`; severity; alarms).
    pub alarms: Vec<(String, String, i64)>,
    pub rules: i64,
}

pub fn counts(conn: &Connection) -> rusqlite::Result<Counts> {
    let mut stmt = conn.prepare_cached(
        "SELECT CASE WHEN cleared_at IS NOT NULL THEN 'cleared'
                     WHEN acked_at IS NOT NULL THEN 'acknowledged' ELSE 'raised' END AS state,
                severity, COUNT(*)
         FROM alarms GROUP BY state, severity ORDER BY state, severity",
    )?;
    let alarms = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let rules = conn.query_row("SELECT COUNT(*) FROM rules", [], |r| r.get(0))?;
    Ok(Counts { alarms, rules })
}
