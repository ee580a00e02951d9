//! The journal writer: one thread owns the write connection and commits appends in groups.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{now_ms, Result, StoreError};

/// One message to append to the journal.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub source: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// MQTT packet id of a QoS 1/2 publish.
    pub mqtt_pid: Option<u16>,
    /// The MQTT DUP flag: a resend, dropped if the same packet is already journaled.
    pub dup: bool,
}

/// One temperature reading (requirement H1), stored once per (device, device time, probe).
#[derive(Debug, Clone, PartialEq)]
pub struct NewReading {
    pub device_id: String,
    pub recorded_at: String,
    pub ts_device: i64,
    pub sensor_hw_id: String,
    pub raw_celsius: f64,
    pub offset_c: f64,
    pub celsius: f64,
    pub rssi: i64,
}

/// A batch of readings from one request or message, with an optional consumer cursor that
/// moves in the same transaction (the MQTT telemetry consumer of the journal).
#[derive(Debug, Clone)]
pub struct NewReadings {
    pub source: String,
    pub readings: Vec<NewReading>,
    pub cursor: Option<(String, i64)>,
}

/// Work for the writer; every kind commits in the same group transaction.
enum Work {
    Message(NewMessage),
    Readings(NewReadings),
}

/// The journal id of a message, or the number of readings newly inserted.
type Reply = oneshot::Sender<Result<i64>>;

struct Request {
    work: Work,
    reply: Option<Reply>,
}

/// Handle to the journal writer; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    queue: mpsc::Sender<Request>,
    committed: watch::Receiver<i64>,
    path: Arc<PathBuf>,
}

impl Journal {
    /// Opens (creating and migrating) the database and starts the writer thread.
    /// `queue_len` bounds the appends waiting for a commit; `max_batch` bounds one commit.
    pub fn start(path: &Path, queue_len: usize, max_batch: usize) -> Result<Journal> {
        let conn = crate::open(path)?;
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM journal", [], |r| r.get(0))
            .map_err(|source| StoreError::Sqlite {
                path: path.to_owned(),
                source,
            })?;
        let (queue, rx) = mpsc::channel(queue_len.max(1));
        let (committed_tx, committed) = watch::channel(last);
        let thread_path = path.to_owned();
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(conn, rx, committed_tx, max_batch.max(1), &thread_path))
            .map_err(|source| StoreError::Dir {
                path: path.to_owned(),
                source,
            })?;
        Ok(Journal {
            queue,
            committed,
            path: Arc::new(path.to_owned()),
        })
    }

    /// Appends and waits for the commit; returns the journal id. Waits for room in the queue.
    pub async fn append(&self, message: NewMessage) -> Result<i64> {
        let rx = self.submit(message).await?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Queues an append, waiting for room; the receiver resolves once it is committed.
    pub async fn submit(&self, message: NewMessage) -> Result<oneshot::Receiver<Result<i64>>> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Request {
                work: Work::Message(message),
                reply: Some(tx),
            })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        Ok(rx)
    }

    /// Queues an append without waiting for room: `Busy` when the queue is full.
    pub fn try_submit(&self, message: NewMessage) -> Result<oneshot::Receiver<Result<i64>>> {
        self.try_queue(Work::Message(message))
    }

    /// Stores readings (duplicates ignored) without waiting for room: `Busy` when the queue is
    /// full. The receiver resolves, once committed, to the number of readings newly inserted.
    pub fn try_submit_readings(
        &self,
        readings: NewReadings,
    ) -> Result<oneshot::Receiver<Result<i64>>> {
        self.try_queue(Work::Readings(readings))
    }

    /// Stores readings, waiting for room and for the commit; returns the number inserted.
    pub async fn store_readings(&self, readings: NewReadings) -> Result<i64> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Request {
                work: Work::Readings(readings),
                reply: Some(tx),
            })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    fn try_queue(&self, work: Work) -> Result<oneshot::Receiver<Result<i64>>> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .try_send(Request {
                work,
                reply: Some(tx),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Busy,
                mpsc::error::TrySendError::Closed(_) => StoreError::WriterGone,
            })?;
        Ok(rx)
    }

    /// Watches the id of the last committed row (wakes sinks in this process).
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }

    /// True once the writer thread has stopped.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends waiting in the queue right now.
    pub fn pending(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

fn write_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Request>,
    committed: watch::Sender<i64>,
    max_batch: usize,
    path: &Path,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match commit_batch(&mut conn, &batch) {
            Ok(ids) => {
                let last = batch
                    .iter()
                    .zip(&ids)
                    .filter(|(r, _)| matches!(r.work, Work::Message(_)))
                    .map(|(_, id)| *id)
                    .max()
                    .unwrap_or(0);
                // Readers learn of the commit before any writer is answered.
                committed.send_if_modified(|v| {
                    let moved = last > *v;
                    if moved {
                        *v = last;
                    }
                    moved
                });
                for (req, id) in batch.drain(..).zip(ids) {
                    if let Some(reply) = req.reply {
                        let _ = reply.send(Ok(id));
                    }
                }
            }
            Err(source) => {
                tracing::error!(path = %path.display(), error = %source, "journal commit failed");
                for req in batch.drain(..) {
                    if let Some(reply) = req.reply {
                        let _ = reply.send(Err(StoreError::Commit {
                            path: path.to_owned(),
                            message: source.to_string(),
                        }));
                    }
                }
            }
        }
    }
}

/// Inserts a batch in one transaction; returns one id per request (the existing id for a
/// dropped DUP resend).
fn commit_batch(conn: &mut Connection, batch: &[Request]) -> rusqlite::Result<Vec<i64>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut ids = Vec::with_capacity(batch.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO journal (received_at, source, topic, payload, qos, retain, mqtt_pid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut find_resend = tx.prepare_cached(
            "SELECT id FROM journal WHERE source = ?1 AND mqtt_pid = ?2 AND topic = ?3 AND payload = ?4
             ORDER BY id DESC LIMIT 1",
        )?;
        let mut insert_reading = tx.prepare_cached(
            "INSERT OR IGNORE INTO readings (device_id, recorded_at, ts_device, sensor_hw_id,
             raw_celsius, offset_c, celsius, rssi, source, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut move_cursor = tx.prepare_cached(
            "UPDATE sinks SET cursor = MAX(cursor, ?2), delivered = delivered + 1 WHERE name = ?1",
        )?;
        let now = now_ms();
        for req in batch {
            let m = match &req.work {
                Work::Message(m) => m,
                Work::Readings(batch) => {
                    let mut inserted = 0;
                    for r in &batch.readings {
                        inserted += insert_reading.execute(params![
                            r.device_id,
                            r.recorded_at,
                            r.ts_device,
                            r.sensor_hw_id,
                            r.raw_celsius,
                            r.offset_c,
                            r.celsius,
                            r.rssi,
                            batch.source,
                            now
                        ])? as i64;
                    }
                    if let Some((sink, cursor)) = &batch.cursor {
                        move_cursor.execute(params![sink, cursor])?;
                    }
                    ids.push(inserted);
                    continue;
                }
            };
            if m.dup {
                if let Some(pid) = m.mqtt_pid {
                    let existing: Option<i64> = find_resend
                        .query_row(params![m.source, pid, m.topic, m.payload], |r| r.get(0))
                        .optional()?;
                    if let Some(id) = existing {
                        ids.push(id);
                        continue;
                    }
                }
            }
            insert.execute(params![
                now, m.source, m.topic, m.payload, m.qos, m.retain, m.mqtt_pid
            ])?;
            ids.push(tx.last_insert_rowid());
        }
    }
    tx.commit()?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reader;

    fn message(topic: &str, payload: &str) -> NewMessage {
        NewMessage {
            source: "test".into(),
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            qos: 1,
            retain: false,
            mqtt_pid: None,
            dup: false,
        }
    }

    #[tokio::test]
    async fn appends_are_committed_in_order_and_visible_to_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite3");
        let journal = Journal::start(&path, 64, 16).unwrap();
        let mut handles = Vec::new();
        for i in 0..100 {
            let j = journal.clone();
            handles.push(tokio::spawn(async move {
                j.append(message("a/b", &format!("m{i}"))).await.unwrap()
            }));
        }
        let mut ids = Vec::new();
        for h in handles {
            ids.push(h.await.unwrap());
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 100);
        assert_eq!(*journal.committed().borrow(), *ids.last().unwrap());
        let reader = Reader::open(&path).unwrap();
        let rows = reader.after(0, 1000).unwrap();
        assert_eq!(rows.len(), 100);
        assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[tokio::test]
    async fn dup_resend_of_a_journaled_packet_is_not_stored_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite3");
        let journal = Journal::start(&path, 8, 8).unwrap();
        let mut first = message("t", "x");
        first.mqtt_pid = Some(7);
        let id = journal.append(first.clone()).await.unwrap();
        let mut resend = first.clone();
        resend.dup = true;
        assert_eq!(journal.append(resend).await.unwrap(), id);
        // Same packet id without DUP is a new message (pids are reused after PUBACK).
        assert_ne!(journal.append(first).await.unwrap(), id);
        assert_eq!(Reader::open(&path).unwrap().after(0, 10).unwrap().len(), 2);
    }
}

#[cfg(test)]
mod readings_tests {
    use super::*;

    fn reading(sensor: &str, ts: i64, c: f64) -> NewReading {
        NewReading {
            device_id: "fridge-1".into(),
            recorded_at: "2026-02-15T12:00:00Z".into(),
            ts_device: ts,
            sensor_hw_id: sensor.into(),
            raw_celsius: c,
            offset_c: 0.0,
            celsius: c,
            rssi: -60,
        }
    }

    #[tokio::test]
    async fn a_resent_batch_inserts_nothing_and_a_partly_new_one_only_the_new_rows() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::start(&dir.path().join("r.sqlite3"), 8, 8).unwrap();
        let batch = NewReadings {
            source: "http:127.0.0.1".into(),
            readings: vec![reading("A", 1000, 3.5), reading("B", 1000, 4.0)],
            cursor: None,
        };
        assert_eq!(journal.store_readings(batch.clone()).await.unwrap(), 2);
        assert_eq!(journal.store_readings(batch.clone()).await.unwrap(), 0);
        let mut more = batch;
        more.readings.push(reading("A", 2000, 3.6));
        assert_eq!(journal.store_readings(more).await.unwrap(), 1);
        let conn = crate::open(journal.path()).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM readings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
    }
}
