//! The one way async code runs blocking SQLite work: on tokio's blocking threads, through
//! [`Db::run`] (a pooled connection) or [`ConsumerReader::run`] (a journal consumer's own
//! [`Reader`]). Writes that must be durable in order go through the [`crate::Journal`] writer
//! instead; `Db` is for reads and small registry edits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::{Reader, Result, StoreError};

/// Runs `f` on tokio's blocking threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Connections kept open for reuse; more are opened while all are busy.
const KEEP: usize = 4;

#[derive(Clone)]
pub struct Db {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<Reader>>>,
}

impl Db {
    pub fn new(path: &Path) -> Db {
        Db {
            path: Arc::new(path.to_owned()),
            idle: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with a connection on a blocking thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let db = self.clone();
        blocking(move || db.run_blocking(f)).await
    }

    /// Runs `f` with a connection on this thread (for CLI commands and blocking callers).
    pub fn run_blocking<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        self.read_blocking(|r| {
            f(r.connection()).map_err(|source| StoreError::Sqlite {
                path: self.path.to_path_buf(),
                source,
            })
        })
    }

    /// Runs `f` with a pooled [`Reader`] (journal and sink status) on a blocking thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Reader) -> Result<T> + Send + 'static,
    {
        let db = self.clone();
        blocking(move || db.read_blocking(f)).await
    }

    /// [`Db::read`] on this thread.
    pub fn read_blocking<T>(&self, f: impl FnOnce(&Reader) -> Result<T>) -> Result<T> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let reader = match pooled {
            Some(r) => r,
            None => Reader::open(&self.path)?,
        };
        let result = f(&reader);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEEP {
            idle.push(reader);
        }
        result
    }
}

/// A journal consumer's own [`Reader`] (its cursor, retries and parked rows), for async code:
/// each [`ConsumerReader::run`] runs on tokio's blocking threads, one at a time.
#[derive(Clone)]
pub struct ConsumerReader {
    reader: Arc<Mutex<Reader>>,
}

impl ConsumerReader {
    pub async fn open(path: &Path) -> Result<ConsumerReader> {
        let path = path.to_owned();
        let reader = blocking(move || Reader::open(&path)).await?;
        Ok(ConsumerReader {
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Runs `f` with the reader on a blocking thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Reader) -> Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        blocking(move || f(&mut reader.lock().unwrap_or_else(|e| e.into_inner()))).await
    }
}
