//! The one way async code runs blocking SQLite work: [`Db::run`] borrows a pooled connection
//! on tokio's blocking threads. Writes that must be durable in order go through the
//! [`crate::Journal`] writer instead; `Db` is for reads and small registry edits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::{Result, StoreError};

/// Connections kept open for reuse; more are opened while all are busy.
const KEEP: usize = 4;

#[derive(Clone)]
pub struct Db {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<Connection>>>,
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
        tokio::task::spawn_blocking(move || db.run_blocking(f))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` with a connection on this thread (for CLI commands and blocking callers).
    pub fn run_blocking<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => crate::open(&self.path)?,
        };
        let result = f(&conn).map_err(|source| StoreError::Sqlite {
            path: self.path.to_path_buf(),
            source,
        });
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEEP {
            idle.push(conn);
        }
        result
    }
}
