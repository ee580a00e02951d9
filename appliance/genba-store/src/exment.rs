//! The Exment forwarder's state as `genba status` and `GET /status` show it, read from the
//! tables of migration 10 (written by genba-exment): what the forwarder is doing, its ledger
//! counts, and its last success and last error (already redacted by the forwarder).

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ExmentStatus {
    /// "ok", "retrying" or "credentials refused" (None before the forwarder's first drain).
    pub state: Option<String>,
    pub state_at_ms: Option<i64>,
    /// Closed check slots not confirmed by Exment yet, as of `state_at_ms`.
    pub records_due: Option<i64>,
    pub sent: i64,
    pub unknown: i64,
    pub refused: i64,
    pub last_success: Option<String>,
    pub last_success_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
}

fn noted(conn: &Connection, name: &str) -> rusqlite::Result<(Option<String>, Option<i64>)> {
    Ok(conn
        .query_row(
            "SELECT value, at FROM exment_state WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((None, None)))
}

pub(crate) fn status(conn: &Connection) -> rusqlite::Result<ExmentStatus> {
    let count = |state: &str| -> rusqlite::Result<i64> {
        conn.query_row(
            "SELECT COUNT(*) FROM exment_ledger WHERE state = ?1",
            [state],
            |r| r.get(0),
        )
    };
    let (state, state_at_ms) = noted(conn, "state")?;
    let (last_success, last_success_at_ms) = noted(conn, "last_success")?;
    let (last_error, last_error_at_ms) = noted(conn, "last_error")?;
    let records_due = noted(conn, "records_due")?.0.and_then(|v| v.parse().ok());
    Ok(ExmentStatus {
        state,
        state_at_ms,
        records_due,
        sent: count("sent")?,
        unknown: count("unknown")?,
        refused: count("refused")?,
        last_success,
        last_success_at_ms,
        last_error,
        last_error_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use crate::Reader;

    #[test]
    fn the_exment_section_shows_the_forwarders_noted_state_and_ledger_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("genba.sqlite3");
        let conn = crate::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO exment_ledger (key, state, slot_start, device_id, updated_at) VALUES
                ('a', 'sent', 0, 'd', 1), ('b', 'sent', 0, 'd', 1), ('c', 'refused', 0, 'd', 1);
             INSERT INTO exment_state (name, value, at) VALUES
                ('state', 'credentials refused', 5), ('records_due', '7', 5),
                ('last_error', 'Exment refused the credentials', 4);",
        )
        .unwrap();
        let status = Reader::open(&path).unwrap().exment_status().unwrap();
        assert_eq!(status.state.as_deref(), Some("credentials refused"));
        assert_eq!(status.records_due, Some(7));
        assert_eq!((status.sent, status.unknown, status.refused), (2, 0, 1));
        assert_eq!(
            status.last_error.as_deref(),
            Some("Exment refused the credentials")
        );
        assert_eq!(status.last_error_at_ms, Some(4));
        assert_eq!(status.last_success, None);
    }
}
