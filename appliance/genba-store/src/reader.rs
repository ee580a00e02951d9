//! Reading the journal and keeping each sink's cursor, retry state and parked messages.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::{now_ms, Result, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct JournalEntry {
    pub id: i64,
    pub received_at_ms: i64,
    pub source: String,
    pub topic: String,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// Delivery state of one sink, as `genba status` and `GET /status` show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SinkState {
    pub name: String,
    pub cursor: i64,
    pub backlog: i64,
    pub delivered: i64,
    pub parked: i64,
    pub failures: i64,
    pub last_ok_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
    pub retry_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParkedMessage {
    pub sink: String,
    pub journal_id: i64,
    pub topic: String,
    pub reason: String,
    pub parked_at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    pub journal_rows: i64,
    pub last_id: i64,
    pub sinks: Vec<SinkState>,
    pub recent_parked: Vec<ParkedMessage>,
    /// The Exment forwarder, when Exment is configured (see [`Reader::status`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exment: Option<crate::ExmentStatus>,
}

/// A connection for sinks and status pages; one per task.
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        Ok(Reader {
            conn: crate::open(path)?,
            path: path.to_owned(),
        })
    }

    /// The connection, for [`crate::Db::run`]'s registry reads and edits.
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// [`Reader::wrap`] as a value, for use while a transaction borrows the connection.
    fn wrapper(&self) -> impl Fn(rusqlite::Error) -> StoreError + 'static {
        let path = self.path.clone();
        move |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        }
    }

    fn wrap(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Up to `limit` entries with id greater than `cursor`, oldest first.
    pub fn after(&self, cursor: i64, limit: usize) -> Result<Vec<JournalEntry>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, received_at, source, topic, payload, qos, retain FROM journal
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.wrap(e))?;
        let rows = stmt
            .query_map(params![cursor, limit as i64], |r| {
                Ok(JournalEntry {
                    id: r.get(0)?,
                    received_at_ms: r.get(1)?,
                    source: r.get(2)?,
                    topic: r.get(3)?,
                    payload: r.get(4)?,
                    qos: r.get(5)?,
                    retain: r.get(6)?,
                })
            })
            .map_err(|e| self.wrap(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.wrap(e))
    }

    /// Registers a sink (a new sink starts after what the journal holds now) and returns its state.
    pub fn register_sink(&self, name: &str) -> Result<SinkState> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO sinks (name, cursor)
                 VALUES (?1, (SELECT COALESCE(MAX(id), 0) FROM journal))",
                params![name],
            )
            .map_err(|e| self.wrap(e))?;
        self.sink(name)?
            .ok_or_else(|| self.wrap(rusqlite::Error::QueryReturnedNoRows))
    }

    pub fn sink(&self, name: &str) -> Result<Option<SinkState>> {
        self.conn
            .query_row(
                &format!("{SINK_SELECT} WHERE name = ?1"),
                params![name],
                sink_row,
            )
            .optional()
            .map_err(|e| self.wrap(e))
    }

    /// Moves a sink's cursor to `cursor` after `delivered` messages reached it.
    pub fn record_delivery(&self, name: &str, cursor: i64, delivered: i64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE sinks SET cursor = MAX(cursor, ?2), delivered = delivered + ?3, failures = 0,
                 last_ok_at = ?4, retry_at = NULL WHERE name = ?1",
                params![name, cursor, delivered, now_ms()],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(())
    }

    /// Moves a sink's cursor to `cursor` after a batch in which `delivered` messages reached
    /// it: a delivery when there were any (last success moves), else a skip (it does not).
    pub fn passed(&self, name: &str, cursor: i64, delivered: i64) -> Result<()> {
        if delivered > 0 {
            self.record_delivery(name, cursor, delivered)
        } else {
            self.skip_to(name, cursor)
        }
    }

    /// Moves a sink's cursor past messages it does not take (no matching filter). Committed
    /// without an fsync: a skip lost in a power cut only makes the sink skip the same rows
    /// again, and an fsync per batch for every idle sink would compete with the journal's.
    pub fn skip_to(&self, name: &str, cursor: i64) -> Result<()> {
        let relaxed = |sync: &str| {
            self.conn
                .execute_batch(&format!("PRAGMA synchronous={sync}"))
                .map_err(|e| self.wrap(e))
        };
        relaxed("NORMAL")?;
        let moved = self
            .conn
            .execute(
                "UPDATE sinks SET cursor = MAX(cursor, ?2) WHERE name = ?1",
                params![name, cursor],
            )
            .map_err(|e| self.wrap(e));
        relaxed("FULL")?;
        moved?;
        Ok(())
    }

    /// Records a failed attempt that will be retried at `retry_at_ms`.
    pub fn record_failure(&self, name: &str, error: &str, retry_at_ms: i64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE sinks SET failures = failures + 1, last_error = ?2, last_error_at = ?3,
                 retry_at = ?4 WHERE name = ?1",
                params![name, error, now_ms(), retry_at_ms],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(())
    }

    /// Parks messages that the sink refused for good, with the reason, and moves past them.
    pub fn park(&mut self, name: &str, entries: &[JournalEntry], reason: &str) -> Result<()> {
        let wrap = self.wrapper();
        let tx = self.conn.transaction().map_err(&wrap)?;
        let now = now_ms();
        let mut last = 0;
        for e in entries {
            tx.execute(
                "INSERT OR IGNORE INTO parked (sink, journal_id, topic, reason, parked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, e.id, e.topic, reason, now],
            )
            .map_err(&wrap)?;
            last = last.max(e.id);
        }
        tx.execute(
            "UPDATE sinks SET cursor = MAX(cursor, ?2), parked = parked + ?3, failures = 0,
             last_error = ?4, last_error_at = ?5, retry_at = NULL WHERE name = ?1",
            params![name, last, entries.len() as i64, reason, now],
        )
        .map_err(&wrap)?;
        tx.commit().map_err(&wrap)
    }

    /// Parked rows of `name` an operator asked to try again (`genba sinks retry`), oldest
    /// first; rows retention already removed from the journal are not found.
    pub fn retry_requested(&self, name: &str, limit: usize) -> Result<Vec<JournalEntry>> {
        crate::alarms::retry_requested(&self.conn, name, limit).map_err(|e| self.wrap(e))
    }

    /// Parked rows delivered on retry: no longer parked, counted as delivered.
    pub fn unpark(&mut self, name: &str, ids: &[i64]) -> Result<()> {
        self.parked_rows(name, ids, None)
    }

    /// Parked rows refused again on retry: parked with the new reason, no retry pending.
    pub fn repark(&mut self, name: &str, ids: &[i64], reason: &str) -> Result<()> {
        self.parked_rows(name, ids, Some(reason))
    }

    fn parked_rows(&mut self, name: &str, ids: &[i64], reason: Option<&str>) -> Result<()> {
        let wrap = self.wrapper();
        let tx = self.conn.transaction().map_err(&wrap)?;
        let now = now_ms();
        let mut changed = 0;
        for id in ids {
            changed += match reason {
                None => tx.execute(
                    "DELETE FROM parked WHERE sink = ?1 AND journal_id = ?2",
                    params![name, id],
                ),
                Some(reason) => tx.execute(
                    "UPDATE parked SET retry = 0, reason = ?3, parked_at = ?4
                     WHERE sink = ?1 AND journal_id = ?2",
                    params![name, id, reason, now],
                ),
            }
            .map_err(&wrap)? as i64;
        }
        match reason {
            None => tx.execute(
                "UPDATE sinks SET parked = MAX(parked - ?2, 0), delivered = delivered + ?2,
                 failures = 0, last_ok_at = ?3, retry_at = NULL WHERE name = ?1",
                params![name, changed, now],
            ),
            Some(reason) => tx.execute(
                "UPDATE sinks SET failures = 0, last_error = ?2, last_error_at = ?3,
                 retry_at = NULL WHERE name = ?1",
                params![name, reason, now],
            ),
        }
        .map_err(&wrap)?;
        tx.commit().map_err(&wrap)
    }

    /// The journal and every sink; with `exment`, the Exment forwarder's state too (when Exment
    /// is configured).
    pub fn status(&self, exment: bool) -> Result<StoreStatus> {
        let (journal_rows, last_id): (i64, i64) = self
            .conn
            .query_row(
                "SELECT COUNT(*), COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'journal'), 0)
                 FROM journal",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.wrap(e))?;
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{SINK_SELECT} ORDER BY name"))
            .map_err(|e| self.wrap(e))?;
        let sinks = stmt
            .query_map([], sink_row)
            .map_err(|e| self.wrap(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.wrap(e))?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT sink, journal_id, topic, reason, parked_at FROM parked
                 ORDER BY parked_at DESC, journal_id DESC LIMIT 20",
            )
            .map_err(|e| self.wrap(e))?;
        let recent_parked = stmt
            .query_map([], |r| {
                Ok(ParkedMessage {
                    sink: r.get(0)?,
                    journal_id: r.get(1)?,
                    topic: r.get(2)?,
                    reason: r.get(3)?,
                    parked_at_ms: r.get(4)?,
                })
            })
            .map_err(|e| self.wrap(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.wrap(e))?;
        Ok(StoreStatus {
            journal_rows,
            last_id,
            sinks,
            recent_parked,
            exment: if exment {
                Some(self.exment_status()?)
            } else {
                None
            },
        })
    }

    /// The Exment forwarder's state, ledger counts, last success and last error.
    pub fn exment_status(&self) -> Result<crate::ExmentStatus> {
        crate::exment::status(&self.conn).map_err(|e| self.wrap(e))
    }

    /// Deletes journal rows older than `older_than_ms` that every sink has passed.
    /// Returns how many rows went.
    pub fn prune(&self, older_than_ms: i64) -> Result<usize> {
        let total = self.delete_passed(older_than_ms, usize::MAX)?;
        self.conn
            .execute(
                "DELETE FROM parked WHERE parked_at < ?1",
                params![older_than_ms],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(total)
    }

    /// Deletes up to `max_rows` of the oldest journal rows received before `before_ms` that
    /// every sink has passed, in small batches that keep the write lock short for the journal
    /// writer. Returns how many went.
    pub fn delete_passed(&self, before_ms: i64, max_rows: usize) -> Result<usize> {
        let min_cursor: Option<i64> = self
            .conn
            .query_row("SELECT MIN(cursor) FROM sinks", [], |r| r.get(0))
            .map_err(|e| self.wrap(e))?;
        let limit = min_cursor.unwrap_or(i64::MAX);
        let mut total = 0;
        while total < max_rows {
            let step = (max_rows - total).min(5000);
            let n = self
                .conn
                .execute(
                    "DELETE FROM journal WHERE id IN (
                        SELECT id FROM journal WHERE id <= ?1 AND received_at < ?2 ORDER BY id LIMIT ?3)",
                    params![limit, before_ms, step as i64],
                )
                .map_err(|e| self.wrap(e))?;
            total += n;
            if n < step {
                break;
            }
        }
        Ok(total)
    }

    /// Alarms by state and severity, and the rule count (`/metrics`).
    pub fn alarm_counts(&self) -> Result<crate::alarms::Counts> {
        crate::alarms::counts(&self.conn).map_err(|e| self.wrap(e))
    }

    /// Rows in the journal.
    pub fn journal_len(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM journal", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.wrap(e))
    }

    /// Bytes the database's live pages take (its file may be larger: freed pages are reused
    /// before the file grows).
    pub fn used_bytes(&self) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT (page_count - freelist_count) * page_size
                 FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|b| b.max(0) as u64)
            .map_err(|e| self.wrap(e))
    }

    /// `PRAGMA integrity_check`: "ok" when the file is sound.
    pub fn integrity_check(&self) -> Result<String> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.wrap(e))
    }
}

const SINK_SELECT: &str = "SELECT name, cursor,
    (SELECT COUNT(*) FROM journal j WHERE j.id > s.cursor),
    delivered, parked, failures, last_ok_at, last_error, last_error_at, retry_at FROM sinks s";

fn sink_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SinkState> {
    Ok(SinkState {
        name: r.get(0)?,
        cursor: r.get(1)?,
        backlog: r.get(2)?,
        delivered: r.get(3)?,
        parked: r.get(4)?,
        failures: r.get(5)?,
        last_ok_at_ms: r.get(6)?,
        last_error: r.get(7)?,
        last_error_at_ms: r.get(8)?,
        retry_at_ms: r.get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Journal, NewMessage};

    async fn fill(journal: &Journal, n: usize) {
        for i in 0..n {
            journal
                .append(NewMessage {
                    source: "t".into(),
                    topic: format!("t/{i}"),
                    payload: vec![b'x'],
                    qos: 0,
                    retain: false,
                    mqtt_pid: None,
                    dup: false,
                })
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn prune_never_drops_what_a_sink_has_not_passed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite3");
        let journal = Journal::start(&path, 8, 8).unwrap();
        let reader = Reader::open(&path).unwrap();
        reader.register_sink("slow").unwrap();
        fill(&journal, 10).await;
        reader.record_delivery("slow", 4, 4).unwrap();
        let pruned = reader.prune(i64::MAX).unwrap();
        assert_eq!(pruned, 4);
        let left = reader.after(0, 100).unwrap();
        assert_eq!(left.first().map(|e| e.id), Some(5));
        assert_eq!(reader.sink("slow").unwrap().unwrap().backlog, 6);
    }

    #[tokio::test]
    async fn ids_are_not_reused_after_pruning_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite3");
        let journal = Journal::start(&path, 8, 8).unwrap();
        let reader = Reader::open(&path).unwrap();
        fill(&journal, 3).await;
        reader.prune(i64::MAX).unwrap();
        fill(&journal, 1).await;
        assert_eq!(reader.after(0, 10).unwrap()[0].id, 4);
    }

    #[tokio::test]
    async fn parking_moves_the_cursor_and_keeps_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite3");
        let journal = Journal::start(&path, 8, 8).unwrap();
        let mut reader = Reader::open(&path).unwrap();
        reader.register_sink("ops").unwrap();
        fill(&journal, 2).await;
        let entries = reader.after(0, 10).unwrap();
        reader.park("ops", &entries, "no_service").unwrap();
        let status = reader.status(false).unwrap();
        assert_eq!(status.sinks[0].parked, 2);
        assert_eq!(status.sinks[0].backlog, 0);
        assert_eq!(status.recent_parked[0].reason, "no_service");
        assert_eq!(reader.integrity_check().unwrap(), "ok");
    }
}
