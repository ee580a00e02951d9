//! The forwarder loop: slots -> ledger -> lookup of unknown outcomes -> bulk create, within
//! Exment's request budget, with Retry-After, backoff, and one re-auth per rejected token.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use genba_config::{ExmentConfig, ExmentSecrets};
use serde::Serialize;
use tokio::sync::watch;

use crate::client::{CallError, Client};
use crate::ledger::{Ledger, REFUSED, SENT, UNKNOWN};
use crate::redact::Redactor;
use crate::slots::{self, Aggregation, Record};
use crate::token::{TokenError, Tokens};

#[derive(Debug, thiserror::Error)]
pub enum ExmentError {
    #[error("exment: {0}")]
    Token(#[from] TokenError),
    #[error("exment: no base_url under [exment] in the config")]
    NoBaseUrl,
    #[error("exment: database: {0}")]
    Store(#[from] genba_store::StoreError),
    #[error("exment: ledger: {0}")]
    Ledger(#[from] rusqlite::Error),
    #[error("exment: {0}")]
    Http(String),
    #[error("exment: {0}")]
    Credentials(String),
    #[error("exment: Exment is unavailable ({0}); will retry")]
    Unavailable(String),
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct DrainReport {
    pub created: usize,
    pub found_already: usize,
    pub refused: usize,
    pub requests: usize,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub records_due: usize,
    pub sent: i64,
    pub unknown: i64,
    pub refused: i64,
    pub last_success: Option<(String, i64)>,
    pub last_error: Option<(String, i64)>,
}

pub struct Forwarder {
    cfg: ExmentConfig,
    ledger: Ledger,
    tokens: Tokens,
    client: Client,
    redact: Redactor,
    sent_at: VecDeque<Instant>,
    /// Milliseconds to subtract from "now" when deciding which slots are closed (tests).
    pub clock_ms: Option<i64>,
}

impl Forwarder {
    pub fn new(
        cfg: &ExmentConfig,
        secrets: ExmentSecrets,
        db: PathBuf,
    ) -> Result<Forwarder, ExmentError> {
        let base = cfg.base_url.clone().ok_or(ExmentError::NoBaseUrl)?;
        let token_file = db.with_file_name("exment-token.json");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
            .build()
            .map_err(|e| ExmentError::Http(e.to_string()))?;
        let redact = Redactor::default();
        Ok(Forwarder {
            ledger: Ledger::open(&db)?,
            tokens: Tokens::with_redactor(&base, &cfg.scope, secrets, token_file, redact.clone()),
            client: Client {
                http,
                base,
                table: cfg.table.clone(),
                columns: cfg.columns.clone(),
                redact: redact.clone(),
            },
            redact,
            cfg: cfg.clone(),
            sent_at: VecDeque::new(),
            clock_ms: None,
        })
    }

    /// Token grants made so far by this forwarder.
    pub fn token_requests(&self) -> u64 {
        self.tokens.requests
    }

    fn due(&self) -> Result<Vec<Record>, ExmentError> {
        let now = self
            .clock_ms
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        let closed_before = now - i64::from(self.cfg.grace_minutes) * 60_000;
        let agg = Aggregation::parse(&self.cfg.aggregation).unwrap_or(Aggregation::Nearest);
        let slot_ms = i64::from(self.cfg.slot_minutes.max(1)) * 60_000;
        Ok(slots::build(
            &self.ledger.readings()?,
            slot_ms,
            agg,
            closed_before,
        ))
    }

    /// Waits until one more request fits Exment's per-minute budget.
    async fn budget(&mut self) {
        let window = Duration::from_secs(60);
        loop {
            while self.sent_at.front().is_some_and(|t| t.elapsed() >= window) {
                self.sent_at.pop_front();
            }
            if self.sent_at.len() < self.cfg.max_requests_per_minute.max(1) as usize {
                self.sent_at.push_back(Instant::now());
                return;
            }
            let oldest = self.sent_at.front().copied().unwrap_or_else(Instant::now);
            tokio::time::sleep(window.saturating_sub(oldest.elapsed())).await;
        }
    }

    /// One call with the budget, a fresh token after one 401/108, and 429 waits.
    async fn with_token<T, F, Fut>(&mut self, mut call: F) -> Result<T, CallError>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let mut reauthed = false;
        loop {
            self.budget().await;
            let token = match self.tokens.get(&self.client.http).await {
                Ok(t) => t,
                Err(TokenError::RateLimited(wait)) => {
                    tracing::warn!(
                        wait_s = wait.as_secs(),
                        "exment token endpoint rate limit; waiting"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(TokenError::Transport(m)) => return Err(CallError::Retry(m)),
                Err(other) => return Err(CallError::Credentials(other.to_string())),
            };
            match call(token).await {
                Err(CallError::TokenRejected) if !reauthed => {
                    tracing::info!("exment rejected the token; getting a new one");
                    self.tokens.invalidate();
                    reauthed = true;
                }
                Err(CallError::RateLimited(wait)) => {
                    tracing::warn!(wait_s = wait.as_secs(), "exment rate limit; waiting");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Sends every due record Exment does not have yet. Stops at the first transient failure
    /// (the caller backs off); a permanent refusal is recorded and the rest goes on.
    pub async fn drain_once(&mut self) -> Result<DrainReport, ExmentError> {
        let mut report = DrainReport::default();
        let states = self.ledger.states()?;
        let due: Vec<Record> = self.due()?;
        let mut pending = Vec::new();
        let mut unknown = Vec::new();
        for r in due {
            match states.get(&r.key).map(String::as_str) {
                Some(SENT) | Some(REFUSED) => {}
                // Sent before without a confirmed answer: ask Exment first.
                Some(UNKNOWN) => unknown.push(r),
                _ => pending.push(r),
            }
        }
        for chunk in unknown.chunks(100) {
            let keys: Vec<String> = chunk.iter().map(|r| r.key.clone()).collect();
            let client = self.client.clone();
            let found = self
                .with_token(move |token| {
                    let (keys, c) = (keys.clone(), client.clone());
                    async move { c.existing(&keys, &token).await }
                })
                .await;
            report.requests += 1;
            let found: std::collections::HashSet<String> = match found {
                Ok(f) => f.into_iter().collect(),
                Err(e) => return self.fail(e, report),
            };
            let there: Vec<(&str, i64, &str)> = chunk
                .iter()
                .filter(|r| found.contains(&r.key))
                .map(|r| (r.key.as_str(), r.slot_start_ms, r.device_id.as_str()))
                .collect();
            self.ledger.mark(&there, SENT, None)?;
            report.found_already += there.len();
            pending.extend(chunk.iter().filter(|r| !found.contains(&r.key)).cloned());
        }
        pending.sort_by(|a, b| (a.slot_start_ms, &a.key).cmp(&(b.slot_start_ms, &b.key)));
        let size = self.cfg.max_rows_per_request.clamp(1, 100);
        for chunk in pending.chunks(size) {
            let marks: Vec<(&str, i64, &str)> = chunk
                .iter()
                .map(|r| (r.key.as_str(), r.slot_start_ms, r.device_id.as_str()))
                .collect();
            self.ledger.mark(&marks, UNKNOWN, None)?;
            let (records, client) = (chunk.to_vec(), self.client.clone());
            let result = self
                .with_token(move |token| {
                    let (records, c) = (records.clone(), client.clone());
                    async move { c.create(&records, &token).await }
                })
                .await;
            report.requests += 1;
            match result {
                Ok(()) => {
                    self.ledger.mark(&marks, SENT, None)?;
                    report.created += chunk.len();
                }
                Err(CallError::Refused(reason)) => {
                    let reason = self.redact.excerpt(&reason);
                    tracing::error!(%reason, rows = chunk.len(), "exment refused the records; parked");
                    self.ledger.mark(&marks, REFUSED, Some(&reason))?;
                    self.ledger.note("last_error", &reason)?;
                    report.refused += chunk.len();
                }
                Err(e) => return self.fail(e, report),
            }
        }
        // Only a drain that moved something is a success worth showing (an idle one is not).
        if report.created + report.found_already > 0 {
            self.ledger.note(
                "last_success",
                &format!(
                    "{} created, {} already there",
                    report.created, report.found_already
                ),
            )?;
        }
        Ok(report)
    }

    fn fail(&self, e: CallError, _report: DrainReport) -> Result<DrainReport, ExmentError> {
        let (reason, config_error) = match e {
            CallError::Credentials(r) => (r, true),
            CallError::Refused(r) | CallError::Retry(r) => (r, false),
            other => (format!("{other:?}"), false),
        };
        let reason = self.redact.excerpt(&reason);
        self.ledger.note("last_error", &reason)?;
        if config_error {
            tracing::error!(%reason, "exment credentials refused; not retrying");
            return Err(ExmentError::Credentials(reason));
        }
        Err(ExmentError::Unavailable(reason))
    }

    /// Re-sends a range: its records are looked up in Exment first, so nothing is duplicated.
    pub async fn replay(
        &mut self,
        since_ms: i64,
        device: Option<&str>,
    ) -> Result<DrainReport, ExmentError> {
        self.ledger.reopen(since_ms, device)?;
        self.drain_once().await
    }

    pub fn status(&self) -> Result<Status, ExmentError> {
        let states = self.ledger.states()?;
        let due = self.due()?;
        Ok(Status {
            records_due: due
                .iter()
                .filter(|r| states.get(&r.key).map(String::as_str) != Some(SENT))
                .count(),
            sent: self.ledger.count(SENT)?,
            unknown: self.ledger.count(UNKNOWN)?,
            refused: self.ledger.count(REFUSED)?,
            last_success: self.ledger.noted("last_success")?,
            last_error: self.ledger.noted("last_error")?,
        })
    }

    /// Drains every 30 s (at once after a success), backing off after failures, until shutdown.
    /// A refused token grant (wrong credentials) ends the loop with an error.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), ExmentError> {
        let mut failures = 0u32;
        loop {
            let wait = match self.drain_once().await {
                Ok(_) => {
                    failures = 0;
                    Duration::from_secs(30)
                }
                // A configuration error: report it, do not retry in a loop.
                Err(e @ ExmentError::Credentials(_)) => return Err(e),
                Err(e) => {
                    failures += 1;
                    let cap = Duration::from_secs(self.cfg.max_backoff_secs.max(1));
                    let d = Duration::from_secs(1u64 << failures.min(10)).min(cap);
                    tracing::warn!(error = %e, retry_in_s = d.as_secs(), "exment drain failed");
                    d.mul_f64(0.5 + rand::random::<f64>() * 0.5)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
}
