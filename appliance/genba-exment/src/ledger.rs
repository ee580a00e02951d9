//! The sent-ledger, in the same SQLite file as the readings (tables from genba-store's
//! migration 10): per record key, whether Exment has it (`sent`), may have it (`unknown`: sent
//! without a confirmed answer, with the time of the last attempt), or refused it (`refused`,
//! with the reason, until an operator retries it). Plus:
//!
//! - `exment_slots`: the check slots seen in the readings that Exment has not confirmed yet.
//!   Readings are read once, past a cursor on `readings.id`; a slot's record is built from its
//!   own readings when the slot closes, and its row goes when the record is sent.
//! - `exment_requests`: the times of the requests of the last minute, shared by every process.
//! - `exment_state`: the cursor, the last success and error, the forwarder's state.

use std::collections::HashSet;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::slots::{self, ReadingRow};

pub const SENT: &str = "sent";
pub const UNKNOWN: &str = "unknown";
pub const REFUSED: &str = "refused";

/// Readings read per transaction when catching up with the cursor.
const SCAN_BATCH: i64 = 20_000;

pub struct Ledger {
    conn: Connection,
}

/// A check slot not confirmed yet, with what the ledger knows of its record.
#[derive(Debug, Clone)]
pub struct SlotRow {
    pub key: String,
    pub device_id: String,
    pub sensor_hw_id: String,
    pub slot_start: i64,
    pub state: Option<String>,
    /// When a create of this record was last sent (unknown outcome), unix ms.
    pub unknown_since: Option<i64>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Ledger {
    /// Opens the database; its tables come from genba-store's migration 10.
    pub fn open(db: &Path) -> Result<Ledger, genba_store::StoreError> {
        Ok(Ledger {
            conn: genba_store::open(db)?,
        })
    }

    /// The last `readings.id` whose slot is in `exment_slots` (or already sent).
    pub fn cursor(&self) -> rusqlite::Result<i64> {
        Ok(self
            .noted("readings_cursor")?
            .and_then(|(v, _)| v.parse().ok())
            .unwrap_or(0))
    }

    /// Reads the readings past the cursor, adds their slots to `exment_slots` (unless already
    /// sent) and moves the cursor, one transaction per batch. Returns the rows read.
    pub fn scan_new(&mut self, slot_ms: i64) -> rusqlite::Result<usize> {
        let mut total = 0;
        loop {
            let cursor = self.cursor()?;
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (read, last) = {
                let mut stmt = tx.prepare_cached(
                    "SELECT id, device_id, sensor_hw_id, ts_device FROM readings
                     WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![cursor, SCAN_BATCH], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })?;
                let mut seen = HashSet::new();
                let mut read = 0;
                let mut last = cursor;
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO exment_slots (key, device_id, sensor_hw_id, slot_start)
                     SELECT ?1, ?2, ?3, ?4 WHERE NOT EXISTS
                        (SELECT 1 FROM exment_ledger WHERE key = ?1 AND state = 'sent')",
                )?;
                for row in rows {
                    let (id, device, sensor, ts) = row?;
                    read += 1;
                    last = id;
                    let start = ts.div_euclid(slot_ms) * slot_ms;
                    if seen.insert((device.clone(), sensor.clone(), start)) {
                        let key = slots::slot_key(&device, &sensor, start);
                        insert.execute(params![key, device, sensor, start])?;
                    }
                }
                (read, last)
            };
            if last != cursor {
                tx.execute(
                    "INSERT INTO exment_state (name, value, at) VALUES ('readings_cursor', ?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET value = ?1, at = ?2",
                    params![last.to_string(), now_ms()],
                )?;
            }
            tx.commit()?;
            total += read;
            if read < SCAN_BATCH as usize {
                return Ok(total);
            }
        }
    }

    /// Slots whose start is at or before `last_start` (closed ones), oldest first.
    pub fn closed_slots(&self, last_start: i64) -> rusqlite::Result<Vec<SlotRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.key, s.device_id, s.sensor_hw_id, s.slot_start, l.state, l.unknown_since
             FROM exment_slots s LEFT JOIN exment_ledger l ON l.key = s.key
             WHERE s.slot_start <= ?1 ORDER BY s.slot_start, s.key",
        )?;
        let rows = stmt.query_map([last_start], |r| {
            Ok(SlotRow {
                key: r.get(0)?,
                device_id: r.get(1)?,
                sensor_hw_id: r.get(2)?,
                slot_start: r.get(3)?,
                state: r.get(4)?,
                unknown_since: r.get(5)?,
            })
        })?;
        rows.collect()
    }

    /// Closed slots Exment does not have confirmed and has not refused.
    pub fn count_due(&self, last_start: i64) -> rusqlite::Result<i64> {
        self.conn.query_row(
            "SELECT COUNT(*) FROM exment_slots s LEFT JOIN exment_ledger l ON l.key = s.key
             WHERE s.slot_start <= ?1 AND (l.state IS NULL OR l.state = 'unknown')",
            [last_start],
            |r| r.get(0),
        )
    }

    /// The readings of one slot (`readings_device_time` index).
    pub fn slot_readings(
        &self,
        device: &str,
        sensor: &str,
        start: i64,
        end: i64,
    ) -> rusqlite::Result<Vec<ReadingRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device_id, sensor_hw_id, ts_device, celsius FROM readings
             WHERE device_id = ?1 AND ts_device >= ?2 AND ts_device < ?3 AND sensor_hw_id = ?4
             ORDER BY id",
        )?;
        let rows = stmt.query_map(params![device, start, end, sensor], |r| {
            Ok(ReadingRow {
                device_id: r.get(0)?,
                sensor_hw_id: r.get(1)?,
                ts_device: r.get(2)?,
                celsius: r.get(3)?,
            })
        })?;
        rows.collect()
    }

    /// Forgets a slot that has nothing to send.
    pub fn drop_slot(&self, key: &str) -> rusqlite::Result<()> {
        self.conn
            .execute("DELETE FROM exment_slots WHERE key = ?1", [key])?;
        Ok(())
    }

    /// Records the state of records `(key, slot start, device)`, in one transaction; `sent`
    /// removes the slot. The time a create is sent is stamped by [`Ledger::touch_unknown`]
    /// right before each attempt (a record marked `unknown` whose create never left has none,
    /// so it is looked up at once).
    pub fn mark(
        &mut self,
        records: &[(&str, i64, &str)],
        state: &str,
        error: Option<&str>,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO exment_ledger (key, state, slot_start, device_id, attempts, last_error,
                    updated_at, unknown_since)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(key) DO UPDATE SET state = ?2, attempts = attempts + ?5,
                    last_error = ?6, updated_at = ?7, unknown_since = ?8",
            )?;
            let mut sent = tx.prepare_cached("DELETE FROM exment_slots WHERE key = ?1")?;
            let attempt = i64::from(state == UNKNOWN);
            let now = now_ms();
            let since = (state == UNKNOWN).then_some(now);
            for (key, slot, device) in records {
                stmt.execute(params![
                    key, state, slot, device, attempt, error, now, since
                ])?;
                if state == SENT {
                    sent.execute([key])?;
                }
            }
        }
        tx.commit()
    }

    /// Stamps "a create of these is being sent now" (before every attempt).
    pub fn touch_unknown(&mut self, keys: &[String]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE exment_ledger SET unknown_since = ?2 WHERE key = ?1 AND state = 'unknown'",
            )?;
            let now = now_ms();
            for key in keys {
                stmt.execute(params![key, now])?;
            }
        }
        tx.commit()
    }

    /// A replay of the slots starting at or after `since_ms` (of one device or all): their sent
    /// and refused records become `unknown` (looked up before anything is sent), and their slots
    /// are read again from the readings (a sent slot's row is gone). Returns the slots queued.
    pub fn reopen(
        &mut self,
        since_ms: i64,
        device: Option<&str>,
        slot_ms: i64,
    ) -> rusqlite::Result<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE exment_ledger SET state = 'unknown', unknown_since = NULL, last_error = NULL
             WHERE state IN ('sent', 'refused') AND slot_start >= ?1
             AND (?2 IS NULL OR device_id = ?2)",
            params![since_ms, device],
        )?;
        let mut queued = 0;
        {
            let mut stmt = tx.prepare(
                "SELECT DISTINCT device_id, sensor_hw_id, ts_device FROM readings
                 WHERE ts_device >= ?1 AND (?2 IS NULL OR device_id = ?2)",
            )?;
            let rows = stmt.query_map(params![since_ms, device], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut insert = tx.prepare(
                "INSERT OR IGNORE INTO exment_slots (key, device_id, sensor_hw_id, slot_start)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut seen = HashSet::new();
            for row in rows {
                let (device, sensor, ts) = row?;
                let start = ts.div_euclid(slot_ms) * slot_ms;
                if start >= since_ms && seen.insert((device.clone(), sensor.clone(), start)) {
                    let key = slots::slot_key(&device, &sensor, start);
                    queued += insert.execute(params![key, device, sensor, start])?;
                }
            }
        }
        tx.commit()?;
        Ok(queued)
    }

    /// Refused records (of one device or all) are tried again: they become `unknown`, so the
    /// next drain looks each one up and sends what Exment does not have. Returns how many.
    pub fn retry_refused(&self, device: Option<&str>) -> rusqlite::Result<usize> {
        self.conn.execute(
            "UPDATE exment_ledger SET state = 'unknown', unknown_since = NULL
             WHERE state = 'refused' AND (?1 IS NULL OR device_id = ?1)",
            params![device],
        )
    }

    /// Forgets `sent` records of slots that started before `before_ms`. Returns how many.
    pub fn prune_sent(&self, before_ms: i64) -> rusqlite::Result<usize> {
        self.conn.execute(
            "DELETE FROM exment_ledger WHERE state = 'sent' AND slot_start < ?1",
            [before_ms],
        )
    }

    /// Takes one request of the per-minute budget shared by every process: `None` when it was
    /// taken, else how long (ms) until the oldest request of the last minute leaves it.
    pub fn take_request(&mut self, limit: usize, now: i64) -> rusqlite::Result<Option<i64>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A request "in the future" is from before a clock step back: forget it after a minute.
        tx.execute(
            "DELETE FROM exment_requests WHERE at <= ?1 OR at > ?2",
            params![now - 60_000, now + 60_000],
        )?;
        let (count, oldest): (i64, Option<i64>) =
            tx.query_row("SELECT COUNT(*), MIN(at) FROM exment_requests", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let wait = if (count as usize) < limit {
            tx.execute("INSERT INTO exment_requests (at) VALUES (?1)", [now])?;
            None
        } else {
            Some((oldest.unwrap_or(now) + 60_000 - now).clamp(1, 60_000))
        };
        tx.commit()?;
        Ok(wait)
    }

    pub fn note(&self, name: &str, value: &str) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO exment_state (name, value, at) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET value = ?2, at = ?3",
            params![name, value, now_ms()],
        )?;
        Ok(())
    }

    pub fn noted(&self, name: &str) -> rusqlite::Result<Option<(String, i64)>> {
        self.conn
            .query_row(
                "SELECT value, at FROM exment_state WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    pub fn count(&self, state: &str) -> rusqlite::Result<i64> {
        self.conn.query_row(
            "SELECT COUNT(*) FROM exment_ledger WHERE state = ?1",
            [state],
            |r| r.get(0),
        )
    }
}
