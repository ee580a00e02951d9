//! The delivery loop every sink runs. Where a message leaves Genba: read the journal after
//! the sink's cursor, keep what its filters match, deliver (folded into one delivery when a
//! backlog builds, within the sink's rate), then move the cursor. A delivery that fails is
//! tried again after capped, jittered backoff or the receiver's Retry-After; a refusal parks
//! the messages with the receiver's reason. Parked messages an operator asked to retry
//! (`genba sinks retry NAME`) are delivered first.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use genba_config::topic::matches;
use genba_store::{ConsumerReader, JournalEntry, Reader};
use genba_telemetry::rate::TokenBucket;
use tokio::sync::watch;

use crate::outcome::{backoff, Outcome};
use crate::SinkError;

/// Journal rows read per step.
const READ_BATCH: usize = 1000;
/// How often to look for rows written by other processes, and for retry requests.
const POLL: Duration = Duration::from_secs(1);

/// One kind of delivery: how much of a backlog goes at once, and the attempt itself.
pub trait Deliver: Send {
    /// How many of `wanted` (at least one) the next delivery takes.
    fn fit(&self, wanted: &[JournalEntry]) -> usize;
    fn deliver(&mut self, batch: &[JournalEntry]) -> impl Future<Output = Outcome> + Send;
    /// Whether a failed batch is retried exactly as it was (true: the receiver drops repeats
    /// by a delivery key made from the batch) or re-read, taking what arrived meanwhile.
    fn retries_same_batch(&self) -> bool {
        true
    }
}

/// How fast a sink may deliver and how long it keeps trying.
#[derive(Debug, Clone)]
pub struct Pace {
    pub rate_per_sec: f64,
    pub burst: u32,
    pub max_backoff: Duration,
    /// Park a delivery after this many failed attempts in a row (None: keep trying).
    pub park_after: Option<u32>,
}

/// A journal consumer that delivers through `deliver`.
pub struct Consumer<D> {
    /// The sink's name in the store (`KIND:NAME`).
    pub name: String,
    /// Topic filters of the messages it takes.
    pub filters: Vec<String>,
    /// Only messages from this journal source, when set.
    pub source: Option<String>,
    pub pace: Pace,
    pub deliver: D,
    pub db_path: PathBuf,
    /// Commit notifications from a journal writer in this process, if any.
    pub wake: Option<watch::Receiver<i64>>,
}

/// The sink's reader, with its name for errors.
struct Db {
    reader: ConsumerReader,
    sink: String,
}

impl Db {
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Reader) -> genba_store::Result<T> + Send + 'static,
    ) -> Result<T, SinkError> {
        self.reader.run(f).await.map_err(|source| SinkError::Store {
            sink: self.sink.clone(),
            source,
        })
    }
}

/// Where a batch came from: new journal rows, or parked rows asked to be retried.
#[derive(Clone, Copy)]
enum Batch {
    New { target: i64 },
    Retried,
}

impl<D: Deliver> Consumer<D> {
    fn wants(&self, e: &JournalEntry) -> bool {
        self.source.as_ref().is_none_or(|s| *s == e.source)
            && self.filters.iter().any(|f| matches(f, &e.topic))
    }

    pub async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), SinkError> {
        let sink = self.name.clone();
        let reader = ConsumerReader::open(&self.db_path)
            .await
            .map_err(|source| SinkError::Store {
                sink: sink.clone(),
                source,
            })?;
        let db = Db {
            reader,
            sink: sink.clone(),
        };
        let name = sink.clone();
        let state = db.call(move |r| r.register_sink(&name)).await?;
        let mut cursor = state.cursor;
        let mut failures: u32 = 0;
        let mut bucket = TokenBucket::new(self.pace.rate_per_sec, self.pace.burst, Instant::now());
        let mut wake = self.wake.clone();
        tracing::info!(sink = %sink, cursor, backlog = state.backlog, "sink started");
        // A failed batch kept for its retry (see Deliver::retries_same_batch), with the rows
        // read beside it.
        let mut pending: Option<(Vec<JournalEntry>, Batch)> = None;

        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let name = sink.clone();
            let retried = match pending {
                Some(_) => Vec::new(),
                None => {
                    db.call(move |r| r.retry_requested(&name, READ_BATCH))
                        .await?
                }
            };
            let kept = pending.take();
            let is_kept = kept.is_some();
            let (wanted, from) = if let Some(kept) = kept {
                kept
            } else if retried.is_empty() {
                let entries = db.call(move |r| r.after(cursor, READ_BATCH)).await?;
                let Some(last_read) = entries.last().map(|e| e.id) else {
                    if !idle(&mut wake, &mut shutdown, POLL).await {
                        return Ok(());
                    }
                    continue;
                };
                let wanted: Vec<JournalEntry> =
                    entries.into_iter().filter(|e| self.wants(e)).collect();
                if wanted.is_empty() {
                    let name = sink.clone();
                    db.call(move |r| r.skip_to(&name, last_read)).await?;
                    cursor = last_read;
                    continue;
                }
                (wanted, Batch::New { target: last_read })
            } else {
                (retried, Batch::Retried)
            };
            let n = if is_kept {
                wanted.len()
            } else {
                self.deliver.fit(&wanted).clamp(1, wanted.len())
            };
            let batch = wanted[..n].to_vec();
            let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();

            let wait = bucket.wait(Instant::now());
            if !wait.is_zero() && !sleep_or_stop(&mut shutdown, wait).await {
                return Ok(());
            }
            bucket.take(Instant::now());
            let mut outcome = self.deliver.deliver(&batch).await;
            if let Outcome::Retry { reason, .. } = &outcome {
                if self
                    .pace
                    .park_after
                    .is_some_and(|most| failures + 1 >= most)
                {
                    outcome = Outcome::Permanent {
                        reason: format!("gave up after {} tries: {reason}", failures + 1),
                    };
                }
            }
            if matches!(outcome, Outcome::Delivered) {
                bucket.recover();
            }
            let result = match &outcome {
                Outcome::Delivered => "delivered",
                Outcome::Retry { .. } => "retry",
                Outcome::Permanent { .. } => "parked",
            };
            metrics::counter!("genba_sink_deliveries_total", "sink" => sink.clone(), "outcome" => result)
                .increment(1);
            let name = sink.clone();
            match (outcome, &from) {
                (Outcome::Delivered, Batch::New { target }) => {
                    // Past the rows it skipped too, when this delivery took every wanted row.
                    let to = if n == wanted.len() {
                        *target
                    } else {
                        ids[n - 1]
                    };
                    db.call(move |r| r.record_delivery(&name, to, n as i64))
                        .await?;
                    cursor = to;
                    failures = 0;
                }
                (Outcome::Delivered, Batch::Retried) => {
                    tracing::info!(sink = %sink, messages = n, "parked messages delivered on retry");
                    db.call(move |r| r.unpark(&name, &ids)).await?;
                    failures = 0;
                }
                (Outcome::Permanent { reason }, from) => {
                    tracing::error!(sink = %sink, messages = n, %reason, "delivery refused for good; parked");
                    match from {
                        Batch::New { target } => {
                            let to = if n == wanted.len() {
                                *target
                            } else {
                                ids[n - 1]
                            };
                            db.call(move |r| r.park(&name, &batch, &reason)).await?;
                            cursor = to;
                        }
                        Batch::Retried => {
                            db.call(move |r| r.repark(&name, &ids, &reason)).await?;
                        }
                    }
                    failures = 0;
                }
                (Outcome::Retry { reason, after }, from) => {
                    failures = failures.saturating_add(1);
                    if self.deliver.retries_same_batch() {
                        // Only the batch: a skip target past it would drop what follows.
                        let kept = match from {
                            Batch::New { .. } => Batch::New { target: ids[n - 1] },
                            Batch::Retried => Batch::Retried,
                        };
                        pending = Some((batch, kept));
                    }
                    let delay = match after {
                        Some(d) => {
                            bucket.slow_down(d, Instant::now());
                            d
                        }
                        None => backoff(failures, self.pace.max_backoff),
                    };
                    tracing::warn!(sink = %sink, %reason, failures, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
                    let retry_at = chrono::Utc::now().timestamp_millis() + delay.as_millis() as i64;
                    db.call(move |r| r.record_failure(&name, &reason, retry_at))
                        .await?;
                    if !sleep_or_stop(&mut shutdown, delay).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Waits for a commit in this process, the poll interval, or shutdown. False on shutdown.
async fn idle(
    wake: &mut Option<watch::Receiver<i64>>,
    shutdown: &mut watch::Receiver<bool>,
    poll: Duration,
) -> bool {
    match wake {
        Some(w) => {
            tokio::select! {
                _ = w.changed() => true,
                _ = tokio::time::sleep(poll) => true,
                r = shutdown.changed() => r.is_ok() && !*shutdown.borrow(),
            }
        }
        None => sleep_or_stop(shutdown, poll).await,
    }
}

async fn sleep_or_stop(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        r = shutdown.changed() => r.is_ok() && !*shutdown.borrow(),
    }
}
