//! The SQLite buffer: an append-only journal of every message, plus per-sink cursors.
//!
//! Where a message becomes durable: [`Journal::append`] returns only after the row is
//! committed (WAL, `synchronous=FULL`), and the writer thread commits many appends in one
//! transaction (group commit). Sinks read with [`Reader`] and move their own cursor.

pub mod alarms;
pub mod broker_state;
mod db;
pub mod devices;
mod exment;
pub mod firmware;
pub mod ingest;
mod reader;
mod schema;
pub mod sessions;
pub mod streams;
pub mod tokens;
mod writer;

use std::path::{Path, PathBuf};

pub use db::{ConsumerReader, Db};
pub use exment::ExmentStatus;
pub use ingest::{DeviceMessage, Effect, Field, FieldValue, Refused, TelemetryBatch};
pub use reader::{JournalEntry, Reader, SinkState, StoreStatus};
pub use writer::{Commit, Journal, NewMessage, NewReading, Work};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal commit in {path} failed: {message}")]
    Commit { path: PathBuf, message: String },
    #[error("a database task failed: {0}")]
    Task(String),
    #[error("the journal writer has stopped")]
    WriterGone,
    #[error("the journal queue is full")]
    Busy,
    /// The database is at its storage budget and sinks still hold its oldest rows.
    #[error("storage full: the database is at its budget (store.max_share_percent / store.max_mb) and sinks have not passed its oldest rows; nothing was stored")]
    Full,
    #[error("database schema version {found} is newer than this genba ({supported})")]
    TooNew { found: i64, supported: i64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The database file inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("genba.sqlite3")
}

/// Opens a connection with the pragmas every connection needs and runs migrations.
pub fn open(path: &Path) -> Result<rusqlite::Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let wrap = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let conn = rusqlite::Connection::open(path).map_err(wrap)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(wrap)?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(wrap)?;
    schema::migrate(&conn).map_err(|e| match e {
        schema::MigrateError::Sqlite(source) => wrap(source),
        schema::MigrateError::TooNew { found, supported } => {
            StoreError::TooNew { found, supported }
        }
    })?;
    Ok(conn)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
