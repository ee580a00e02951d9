//! The sent-ledger, in the same SQLite file as the readings: per record key, whether Exment has
//! it (`sent`), may have it (`unknown`: sent without a confirmed answer), or refused it for good
//! (`refused`, with the reason). Plus the forwarder's last success and last error.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::slots::ReadingRow;

pub const SENT: &str = "sent";
pub const UNKNOWN: &str = "unknown";
pub const REFUSED: &str = "refused";

pub struct Ledger {
    conn: Connection,
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

    pub fn readings(&self) -> rusqlite::Result<Vec<ReadingRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device_id, sensor_hw_id, ts_device, celsius FROM readings ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ReadingRow {
                device_id: r.get(0)?,
                sensor_hw_id: r.get(1)?,
                ts_device: r.get(2)?,
                celsius: r.get(3)?,
            })
        })?;
        rows.collect()
    }

    /// Every key with its state.
    pub fn states(&self) -> rusqlite::Result<std::collections::HashMap<String, String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, state FROM exment_ledger")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Marks records as (about to be) sent without a confirmed outcome; committed before sending.
    pub fn mark(
        &mut self,
        records: &[(&str, i64, &str)],
        state: &str,
        error: Option<&str>,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO exment_ledger (key, state, slot_start, device_id, attempts, last_error, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(key) DO UPDATE SET state = ?2, attempts = attempts + ?5, last_error = ?6, updated_at = ?7",
            )?;
            let attempt = i64::from(state == UNKNOWN);
            for (key, slot, device) in records {
                stmt.execute(params![key, state, slot, device, attempt, error, now_ms()])?;
            }
        }
        tx.commit()
    }

    /// Moves `sent` records of a range back to `unknown`, so a replay looks each one up first.
    pub fn reopen(&self, since_ms: i64, device: Option<&str>) -> rusqlite::Result<usize> {
        self.conn.execute(
            "UPDATE exment_ledger SET state = 'unknown' WHERE state = 'sent' AND slot_start >= ?1
             AND (?2 IS NULL OR device_id = ?2)",
            params![since_ms, device],
        )
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
