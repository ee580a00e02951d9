//! The Slack sink loop. Where a message leaves Genba for Slack: read the journal after this
//! sink's cursor, keep what its filters match, post (folded when a backlog builds, at most
//! `rate_per_sec`), then move the cursor. Retries wait with capped, jittered backoff or
//! Slack's Retry-After; permanent refusals park the messages with Slack's reason.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use genba_config::topic::matches;
use genba_config::SlackWebhook;
use genba_store::{JournalEntry, Reader};
use tokio::sync::watch;

use crate::deliver::{self, Outcome};
use crate::format;
use genba_config::rate::TokenBucket;

/// Journal rows read per step.
const READ_BATCH: usize = 1000;
/// How often to look for rows written by other processes.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("slack sink {sink}: {source}")]
    Store {
        sink: String,
        source: genba_store::StoreError,
    },
    #[error("slack sink {sink}: no URL: add `{name} = \"https://hooks.slack.com/...\"` under [slack] in the secrets file")]
    NoUrl { sink: String, name: String },
    #[error("slack sink {sink}: cannot build the HTTP client: {message}")]
    Client { sink: String, message: String },
}

pub struct SlackSink {
    pub hook: SlackWebhook,
    pub url: String,
    pub db_path: PathBuf,
    /// Commit notifications from a journal writer in this process, if any.
    pub wake: Option<watch::Receiver<i64>>,
}

/// The sink's name in the store's `sinks` table.
pub fn sink_name(hook: &SlackWebhook) -> String {
    format!("slack:{}", hook.name)
}

struct Db {
    reader: Arc<Mutex<Reader>>,
    sink: String,
}

impl Db {
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Reader) -> genba_store::Result<T> + Send + 'static,
    ) -> Result<T, SinkError> {
        let reader = self.reader.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut r = reader.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut r)
        })
        .await
        .unwrap_or(Err(genba_store::StoreError::WriterGone));
        result.map_err(|source| SinkError::Store {
            sink: self.sink.clone(),
            source,
        })
    }
}

impl SlackSink {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), SinkError> {
        let sink = sink_name(&self.hook);
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| SinkError::Client {
                sink: sink.clone(),
                message: e.to_string(),
            })?;
        let path = self.db_path.clone();
        let reader = tokio::task::spawn_blocking(move || Reader::open(&path))
            .await
            .unwrap_or(Err(genba_store::StoreError::WriterGone))
            .map_err(|source| SinkError::Store {
                sink: sink.clone(),
                source,
            })?;
        let db = Db {
            reader: Arc::new(Mutex::new(reader)),
            sink: sink.clone(),
        };
        let name = sink.clone();
        let state = db.call(move |r| r.register_sink(&name)).await?;
        let mut cursor = state.cursor;
        let mut failures: u32 = 0;
        let mut bucket = TokenBucket::new(self.hook.rate_per_sec, self.hook.burst, Instant::now());
        let mut wake = self.wake.clone();
        let timeout = Duration::from_secs(self.hook.timeout_secs.max(1));
        tracing::info!(sink = %sink, cursor, backlog = state.backlog, "slack sink started");

        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let entries = db.call(move |r| r.after(cursor, READ_BATCH)).await?;
            let Some(last_read) = entries.last().map(|e| e.id) else {
                if !idle(&mut wake, &mut shutdown, POLL).await {
                    return Ok(());
                }
                continue;
            };
            let wanted: Vec<JournalEntry> = entries
                .into_iter()
                .filter(|e| self.hook.filters.iter().any(|f| matches(f, &e.topic)))
                .collect();
            if wanted.is_empty() {
                let name = sink.clone();
                db.call(move |r| r.skip_to(&name, last_read)).await?;
                cursor = last_read;
                continue;
            }
            let n = format::fit(&wanted, self.hook.max_coalesce);
            let batch = &wanted[..n];
            // Past the rows it skipped too, when this post takes every wanted row read.
            let target = if n == wanted.len() {
                last_read
            } else {
                batch[n - 1].id
            };

            let wait = bucket.wait(Instant::now());
            if !wait.is_zero() && !sleep_or_stop(&mut shutdown, wait).await {
                return Ok(());
            }
            bucket.take(Instant::now());
            let outcome = deliver::post(&client, &self.url, &format::payload(batch), timeout).await;
            let name = sink.clone();
            match outcome {
                Outcome::Delivered => {
                    db.call(move |r| r.record_delivery(&name, target, n as i64))
                        .await?;
                    cursor = target;
                    failures = 0;
                }
                Outcome::Permanent { reason } => {
                    tracing::error!(sink = %sink, messages = n, %reason, "slack refused the message for good; parked");
                    let parked = batch.to_vec();
                    db.call(move |r| r.park(&name, &parked, &reason)).await?;
                    cursor = target;
                    failures = 0;
                }
                Outcome::Retry { reason, after } => {
                    failures = failures.saturating_add(1);
                    let delay = match after {
                        Some(d) => {
                            bucket.drain(Instant::now());
                            d
                        }
                        None => backoff(
                            failures,
                            Duration::from_secs(self.hook.max_backoff_secs.max(1)),
                        ),
                    };
                    tracing::warn!(sink = %sink, %reason, failures, retry_in_ms = delay.as_millis() as u64, "slack delivery failed; will retry");
                    let retry_at = now_ms() + delay.as_millis() as i64;
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

/// Capped exponential backoff with jitter: about 0.5..1 x min(cap, 1 s x 2^(failures-1)).
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = Duration::from_secs(1).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let full = exp.min(cap);
    let jitter = 0.5 + rand::random::<f64>() * 0.5;
    full.mul_f64(jitter)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let cap = Duration::from_secs(60);
        let b1 = backoff(1, cap);
        assert!(
            b1 >= Duration::from_millis(500) && b1 <= Duration::from_secs(1),
            "{b1:?}"
        );
        let b5 = backoff(5, cap);
        assert!(
            b5 >= Duration::from_secs(8) && b5 <= Duration::from_secs(16),
            "{b5:?}"
        );
        let b30 = backoff(30, cap);
        assert!(b30 >= Duration::from_secs(30) && b30 <= cap, "{b30:?}");
    }
}
