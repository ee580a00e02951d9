//! The journal writer: one thread owns the write connection and commits appends in groups.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use crate::ingest::TelemetryBatch;
use crate::{now_ms, Result, StoreError};

/// One message to append to the journal.
#[derive(Debug, Clone, PartialEq)]
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

/// Work for the writer; every kind commits in the same group transaction.
pub enum Work {
    Message(NewMessage),
    Telemetry(TelemetryBatch),
}

impl From<NewMessage> for Work {
    fn from(m: NewMessage) -> Work {
        Work::Message(m)
    }
}

impl From<TelemetryBatch> for Work {
    fn from(b: TelemetryBatch) -> Work {
        Work::Telemetry(b)
    }
}

/// The journal id of a message, or the number of readings and points newly inserted.
type Reply = oneshot::Sender<Result<i64>>;

struct Request {
    work: Work,
    reply: Reply,
}

impl Request {
    fn new(work: Work) -> (Request, Commit) {
        let (tx, rx) = oneshot::channel();
        let request = Request { work, reply: tx };
        (request, Commit(rx))
    }
}

/// Queued work; resolves once committed to what [`Journal::append`] returns (`WriterGone` if
/// the writer stopped first).
pub struct Commit(oneshot::Receiver<Result<i64>>);

impl std::future::Future for Commit {
    type Output = Result<i64>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<i64>> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::WriterGone)))
    }
}

/// Handle to the journal writer; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    queue: mpsc::Sender<Request>,
    committed: watch::Receiver<i64>,
    path: Arc<PathBuf>,
    /// Set while commits fail (a full card, a broken disk); cleared by the next commit.
    failing: Arc<std::sync::atomic::AtomicBool>,
    /// Set while the database is at its storage budget (see [`Journal::set_full`]).
    full: Arc<std::sync::atomic::AtomicBool>,
}

/// Journal sources whose messages are taken even at the storage budget: the appliance's own
/// alarms (a few small rows) must still reach the sinks that tell someone.
pub const SYSTEM_SOURCE_PREFIX: &str = "genba:";

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
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer_failing = failing.clone();
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer_full = full.clone();
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || {
                write_loop(
                    conn,
                    rx,
                    committed_tx,
                    max_batch.max(1),
                    &thread_path,
                    &writer_failing,
                    &writer_full,
                )
            })
            .map_err(|source| StoreError::Dir {
                path: path.to_owned(),
                source,
            })?;
        Ok(Journal {
            queue,
            committed,
            path: Arc::new(path.to_owned()),
            failing,
            full,
        })
    }

    /// Appends and waits for the commit: the journal id of a message, or the number of readings
    /// and points a telemetry batch newly inserted. Waits for room in the queue.
    pub async fn append(&self, work: impl Into<Work>) -> Result<i64> {
        self.submit(work).await?.await
    }

    /// Queues work for the next commit, waiting for room; the [`Commit`] resolves once it is
    /// committed. The one way in for producers that pace themselves by the queue (the broker).
    pub async fn submit(&self, work: impl Into<Work>) -> Result<Commit> {
        let (request, commit) = Request::new(work.into());
        self.queue
            .send(request)
            .await
            .map_err(|_| StoreError::WriterGone)?;
        Ok(commit)
    }

    /// Queues work without waiting for room: `Busy` when the queue is full (HTTP answers 503
    /// rather than holding a request open).
    pub fn try_submit(&self, work: impl Into<Work>) -> Result<Commit> {
        let (request, commit) = Request::new(work.into());
        self.queue.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => StoreError::WriterGone,
        })?;
        Ok(commit)
    }

    /// Watches the id of the last committed row (wakes sinks in this process).
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }

    /// True once the writer thread has stopped.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Whether the journal takes messages now: the writer runs, its last commit worked and
    /// the database is under its budget. `/health` and the watchdog report "degraded" otherwise.
    pub fn is_healthy(&self) -> bool {
        self.state() == "up"
    }

    /// "up", "stopped" (the writer is gone), "failing" (commits fail: a full card, a broken
    /// disk) or "full" (at the storage budget: new data refused).
    pub fn state(&self) -> &'static str {
        use std::sync::atomic::Ordering::Relaxed;
        if self.is_closed() {
            "stopped"
        } else if self.failing.load(Relaxed) {
            "failing"
        } else if self.full.load(Relaxed) {
            "full"
        } else {
            "up"
        }
    }

    /// At the storage budget: refuse new data ([`StoreError::Full`]) but take the appliance's
    /// own messages (source `genba:...`) and consumers' derived work (`taken_at_budget`),
    /// until cleared. Set by the storage check.
    pub fn set_full(&self, full: bool) {
        self.full.store(full, std::sync::atomic::Ordering::Relaxed);
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
    failing: &std::sync::atomic::AtomicBool,
    full: &std::sync::atomic::AtomicBool,
) {
    // Failed commits are logged at most once a minute (with how many failed since).
    let mut last_log: Option<std::time::Instant> = None;
    let mut unlogged = 0u64;
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if full.load(std::sync::atomic::Ordering::Relaxed) {
            refuse_at_budget(&mut batch);
            if batch.is_empty() {
                continue;
            }
        }
        let started = std::time::Instant::now();
        match commit_batch(&mut conn, &batch) {
            Ok((ids, last)) => {
                metrics::counter!("genba_journal_commits_total").increment(1);
                metrics::counter!("genba_journal_appends_total").increment(batch.len() as u64);
                metrics::histogram!("genba_journal_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                if failing.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(path = %path.display(), "journal commits work again");
                    last_log = None;
                }
                // Readers learn of the commit before any writer is answered.
                committed.send_if_modified(|v| {
                    let moved = last > *v;
                    if moved {
                        *v = last;
                    }
                    moved
                });
                for (req, id) in batch.drain(..).zip(ids) {
                    let _ = req.reply.send(Ok(id));
                }
            }
            Err(source) => {
                metrics::counter!("genba_journal_commit_failures_total").increment(1);
                failing.store(true, std::sync::atomic::Ordering::Relaxed);
                unlogged += 1;
                if last_log.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
                    tracing::error!(path = %path.display(), error = %source, failed = unlogged,
                        "journal commit failed; nothing of these was stored (logged once a minute)");
                    last_log = Some(std::time::Instant::now());
                    unlogged = 0;
                }
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(StoreError::Commit {
                        path: path.to_owned(),
                        message: source.to_string(),
                    }));
                }
            }
        }
    }
}

/// Whether the writer takes `work` at the storage budget: the appliance's own messages, and
/// what consumers derive from rows already accepted (readings, rule effects, their cursors).
/// Refusing those would hold a consumer's cursor where it is, and rows every sink passed are
/// what pruning frees: the budget would never be reached again. New data is refused: messages
/// from outside, and telemetry that journals its body (the HTTP telemetry route).
fn taken_at_budget(work: &Work) -> bool {
    match work {
        Work::Message(m) => m.source.starts_with(SYSTEM_SOURCE_PREFIX),
        Work::Telemetry(t) => t.journal.is_empty(),
    }
}

/// Answers [`StoreError::Full`] to every request of `batch` that is not [`taken_at_budget`],
/// and keeps the rest.
fn refuse_at_budget(batch: &mut Vec<Request>) {
    let (keep, refuse): (Vec<Request>, Vec<Request>) =
        batch.drain(..).partition(|r| taken_at_budget(&r.work));
    *batch = keep;
    metrics::counter!("genba_journal_refused_total").increment(refuse.len() as u64);
    for req in refuse {
        let _ = req.reply.send(Err(StoreError::Full));
    }
}

/// Inserts a batch in one transaction; returns one id per request (the existing id for a
/// dropped DUP resend), and the last journal row written (0: none).
fn commit_batch(conn: &mut Connection, batch: &[Request]) -> rusqlite::Result<(Vec<i64>, i64)> {
    let mut last_journal_id = 0;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut ids = Vec::with_capacity(batch.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO journal (received_at, source, topic, payload, qos, retain, mqtt_pid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        // A resend repeats the latest publish with its packet id, or nothing: only that row
        // is compared (an identical new event reusing an older packet id is not a resend).
        let mut find_resend = tx.prepare_cached(
            "SELECT id, topic, payload FROM journal WHERE source = ?1 AND mqtt_pid = ?2
             ORDER BY id DESC LIMIT 1",
        )?;
        let now = now_ms();
        for req in batch {
            let m = match &req.work {
                Work::Message(m) => m,
                Work::Telemetry(batch) => {
                    let applied = crate::ingest::apply(&tx, batch, now)?;
                    last_journal_id = last_journal_id.max(applied.last_journal_id);
                    ids.push(applied.inserted);
                    continue;
                }
            };
            if m.dup {
                if let Some(pid) = m.mqtt_pid {
                    let latest: Option<(i64, String, Vec<u8>)> = find_resend
                        .query_row(params![m.source, pid], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })
                        .optional()?;
                    if let Some((id, _, _)) = latest
                        .filter(|(_, topic, payload)| *topic == m.topic && *payload == m.payload)
                    {
                        ids.push(id);
                        continue;
                    }
                }
            }
            insert.execute(params![
                now, m.source, m.topic, m.payload, m.qos, m.retain, m.mqtt_pid
            ])?;
            last_journal_id = tx.last_insert_rowid();
            ids.push(last_journal_id);
        }
    }
    tx.commit()?;
    Ok((ids, last_journal_id))
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
mod telemetry_tests {
    use super::*;
    use crate::ingest::{DeviceMessage, Field, FieldValue};

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

    fn batch(readings: Vec<NewReading>) -> TelemetryBatch {
        let fields = readings
            .iter()
            .map(|r| Field {
                name: r.sensor_hw_id.clone(),
                value: FieldValue::Number(r.celsius),
                unit: Some("°C".into()),
                at_ms: Some(r.ts_device),
            })
            .collect();
        TelemetryBatch {
            journal: Vec::new(),
            refused: vec![],
            unpark: None,
            effects: vec![],
            messages: vec![DeviceMessage {
                device_id: "fridge-1".into(),
                source: "http:127.0.0.1".into(),
                at_ms: 1000,
                address: None,
                firmware: None,
                rssi: Some(-60),
                readings,
                fields,
                record: None,
                journal: None,
                provision: true,
            }],
            cursor: None,
        }
    }

    fn count(journal: &Journal, sql: &str) -> i64 {
        let conn = crate::open(journal.path()).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn a_resent_batch_inserts_nothing_and_a_partly_new_one_only_the_new_rows() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::start(&dir.path().join("r.sqlite3"), 8, 8).unwrap();
        let first = vec![reading("A", 1000, 3.5), reading("B", 1000, 4.0)];
        assert_eq!(journal.append(batch(first.clone())).await.unwrap(), 2);
        assert_eq!(journal.append(batch(first.clone())).await.unwrap(), 0);
        let mut more = first;
        more.push(reading("A", 2000, 3.6));
        assert_eq!(journal.append(batch(more)).await.unwrap(), 1);
        assert_eq!(count(&journal, "SELECT COUNT(*) FROM readings"), 3);
        // One stream per probe; each point once, and the rollups count each point once.
        assert_eq!(count(&journal, "SELECT COUNT(*) FROM streams"), 2);
        assert_eq!(count(&journal, "SELECT COUNT(*) FROM points"), 3);
        assert_eq!(
            count(
                &journal,
                "SELECT SUM(count) FROM rollups WHERE period = 60000"
            ),
            3
        );
    }

    #[tokio::test]
    async fn rollups_hold_min_max_sum_and_count_per_minute_and_hour() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::start(&dir.path().join("r.sqlite3"), 8, 8).unwrap();
        // 3 points in minute 0, 1 in minute 1; all in hour 0.
        let readings = vec![
            reading("A", 1_000, 2.0),
            reading("A", 20_000, 6.0),
            reading("A", 59_999, 4.0),
            reading("A", 60_000, 10.0),
        ];
        journal.append(batch(readings)).await.unwrap();
        let conn = crate::open(journal.path()).unwrap();
        let rows: Vec<(i64, i64, i64, f64, f64, f64)> = conn
            .prepare(
                "SELECT period, bucket, count, min, max, sum FROM rollups ORDER BY period, bucket",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (60_000, 0, 3, 2.0, 6.0, 12.0),
                (60_000, 60_000, 1, 10.0, 10.0, 10.0),
                (3_600_000, 0, 4, 2.0, 10.0, 22.0),
            ]
        );
        let last: f64 = conn
            .query_row("SELECT last_value FROM streams", [], |r| r.get(0))
            .unwrap();
        assert_eq!(last, 10.0);
    }

    /// A journal in a new directory (kept as long as the returned guard), with the sink
    /// `platform` registered.
    fn with_platform_sink() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite3");
        let journal = Journal::start(&path, 8, 8).unwrap();
        crate::Reader::open(&path)
            .unwrap()
            .register_sink("platform")
            .unwrap();
        (dir, journal)
    }

    #[tokio::test]
    async fn at_the_budget_new_data_is_refused_but_consumers_still_move_their_cursors() {
        let (_dir, journal) = with_platform_sink();
        let outside = NewMessage {
            source: "http:127.0.0.1".into(),
            topic: "notify".into(),
            payload: b"{}".to_vec(),
            qos: 1,
            retain: false,
            mqtt_pid: None,
            dup: false,
        };
        let first = journal.append(outside.clone()).await.unwrap();
        journal.set_full(true);
        assert!(matches!(
            journal.append(outside.clone()).await,
            Err(StoreError::Full)
        ));
        let mut http_telemetry = batch(vec![reading("A", 1000, 3.5)]);
        http_telemetry.journal = vec![outside.clone()];
        assert!(matches!(
            journal.append(http_telemetry).await,
            Err(StoreError::Full)
        ));
        let own = NewMessage {
            source: format!("{SYSTEM_SOURCE_PREFIX}storage"),
            ..outside.clone()
        };
        journal.append(own).await.unwrap();
        // The consumer read the first row: what it derives, and its cursor, are taken (a
        // refusal would hold back pruning, which is what brings the database under budget).
        let mut consumed = batch(vec![reading("A", 1000, 3.5)]);
        consumed.cursor = Some(("platform".into(), first));
        assert_eq!(journal.append(consumed).await.unwrap(), 1);
        assert_eq!(
            count(&journal, "SELECT cursor FROM sinks WHERE name = 'platform'"),
            first
        );
        assert_eq!(count(&journal, "SELECT COUNT(*) FROM journal"), 2);
        journal.set_full(false);
        journal.append(outside).await.unwrap();
        assert_eq!(count(&journal, "SELECT COUNT(*) FROM journal"), 3);
    }

    #[tokio::test]
    async fn unknown_and_disabled_devices_are_parked_with_the_cursor_moving() {
        let (_dir, journal) = with_platform_sink();
        let mut b = batch(vec![reading("A", 1000, 3.5)]);
        b.messages[0].provision = false;
        b.messages[0].journal = Some((7, "devices/fridge-1/telemetry".into()));
        b.cursor = Some(("platform".into(), 7));
        assert_eq!(journal.append(b.clone()).await.unwrap(), 0);
        assert_eq!(count(&journal, "SELECT COUNT(*) FROM devices"), 0);
        assert_eq!(count(&journal, "SELECT COUNT(*) FROM readings"), 0);
        assert_eq!(
            count(&journal, "SELECT parked FROM sinks WHERE name = 'platform'"),
            1
        );
        assert_eq!(
            count(&journal, "SELECT cursor FROM sinks WHERE name = 'platform'"),
            7
        );
        let conn = crate::open(journal.path()).unwrap();
        let reason: String = conn
            .query_row("SELECT reason FROM parked", [], |r| r.get(0))
            .unwrap();
        assert!(reason.contains("unknown device"), "{reason}");
    }
}
