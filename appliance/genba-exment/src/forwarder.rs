//! The forwarder loop: new readings -> slots -> ledger -> lookup of unknown outcomes -> bulk
//! create, within Exment's request budget, with Retry-After, backoff, and one re-auth per
//! rejected token.
//!
//! Each pass reads only the readings past its cursor (their slots go to `exment_slots`),
//! builds a record only for a slot that has closed and is not confirmed yet (from that slot's
//! own readings), and forgets `sent` ledger rows of slots older than [`KEEP_SENT_DAYS`]. A
//! record without a ledger row that old is looked up before it is sent, so exactly-once holds
//! after pruning too.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use genba_config::{ExmentConfig, ExmentSecrets};
use serde::Serialize;
use tokio::sync::watch;

use crate::client::{CallError, Client};
use crate::ledger::{Ledger, SlotRow, REFUSED, SENT, UNKNOWN};
use crate::slots::{self, Record};
use crate::token::{TokenError, Tokens};
use genba_sinks::redact::Redactor;

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
    /// Readings rows read by this drain (new ones past the cursor, and those of closed slots).
    pub readings_read: usize,
    /// Records whose create may still be in flight: looked up in a later drain.
    pub in_flight: usize,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub records_due: usize,
    pub sent: i64,
    pub unknown: i64,
    pub refused: i64,
    pub last_success: Option<(String, i64)>,
    pub last_error: Option<(String, i64)>,
    /// "ok", "retrying" or "credentials refused", with the time it was noted.
    pub state: Option<(String, i64)>,
}

/// `sent` ledger rows of slots older than this are pruned (a late reading for such a slot
/// is looked up in Exment before anything is sent).
pub const KEEP_SENT_DAYS: i64 = 30;
const KEEP_SENT_MS: i64 = KEEP_SENT_DAYS * 86_400_000;

/// Margin after the request timeout before a create with an unknown outcome is looked up:
/// Exment may still store a request the client gave up on.
pub const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(60);

/// The share of `max_requests_per_minute` used: 90% (54 of 60), at least one.
pub fn request_budget(max_requests_per_minute: u32) -> usize {
    let m = max_requests_per_minute.max(1) as usize;
    (m - m.div_ceil(10)).max(1)
}

pub struct Forwarder {
    cfg: ExmentConfig,
    ledger: Ledger,
    tokens: Tokens,
    client: Client,
    redact: Redactor,
    /// Milliseconds since the epoch to use as "now" when deciding which slots are closed (tests).
    pub clock_ms: Option<i64>,
    /// Margin after the timeout before an unknown outcome is looked up (tests shorten it).
    pub in_flight_margin: Duration,
    /// Longest lookup URL (tests lower it).
    pub max_lookup_url: usize,
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
                time_zone: cfg.time_zone.tz(),
            },
            redact,
            cfg: cfg.clone(),
            clock_ms: None,
            in_flight_margin: IN_FLIGHT_MARGIN,
            max_lookup_url: crate::client::MAX_LOOKUP_URL,
        })
    }

    /// Token grants made so far by this forwarder.
    pub fn token_requests(&self) -> u64 {
        self.tokens.requests
    }

    fn now(&self) -> i64 {
        self.clock_ms.unwrap_or_else(wall_ms)
    }

    fn slot_ms(&self) -> i64 {
        i64::from(self.cfg.slot_minutes.max(1)) * 60_000
    }

    /// The start of the last closed slot (ended at least `grace_minutes` ago).
    fn last_closed_start(&self) -> i64 {
        self.now() - i64::from(self.cfg.grace_minutes) * 60_000 - self.slot_ms()
    }

    /// The record of a slot, from its readings (None when it has none).
    fn record(&self, slot: &SlotRow, read: &mut usize) -> Result<Option<Record>, ExmentError> {
        let agg = self.cfg.aggregation;
        let slot_ms = self.slot_ms();
        let rows = self.ledger.slot_readings(
            &slot.device_id,
            &slot.sensor_hw_id,
            slot.slot_start,
            slot.slot_start + slot_ms,
        )?;
        *read += rows.len();
        Ok(slots::build(&rows, slot_ms, agg, i64::MAX)
            .into_iter()
            .find(|r| r.key == slot.key))
    }

    /// Waits until one more request fits the per-minute budget shared with every other
    /// process on this database.
    async fn budget(&mut self) -> Result<(), CallError> {
        let limit = request_budget(self.cfg.max_requests_per_minute);
        loop {
            match self.ledger.take_request(limit, wall_ms()) {
                Ok(None) => return Ok(()),
                Ok(Some(wait_ms)) => {
                    tokio::time::sleep(Duration::from_millis(wait_ms.max(0) as u64 + 10)).await
                }
                Err(e) => return Err(CallError::Retry(format!("request budget: {e}"))),
            }
        }
    }

    /// One call with the budget, a fresh token after one 401/108, and 429 waits. `sending`:
    /// the records a create carries, stamped "in flight since now" before every attempt.
    async fn with_token<T, F, Fut>(
        &mut self,
        sending: &[String],
        mut call: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let mut reauthed = false;
        loop {
            self.budget().await?;
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
            if !sending.is_empty() {
                self.ledger
                    .touch_unknown(sending)
                    .map_err(|e| CallError::Retry(format!("ledger: {e}")))?;
            }
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

    /// Looks `records` up by unique key: those Exment has are marked sent, the rest returned.
    /// Lookups are split so each URL stays short; a 414 halves the lookup.
    async fn look_up(
        &mut self,
        records: Vec<Record>,
        report: &mut DrainReport,
    ) -> Result<Vec<Record>, CallError> {
        let keys: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
        let mut work = self.client.lookup_chunks(&keys, self.max_lookup_url);
        work.reverse();
        let mut found: HashSet<String> = HashSet::new();
        let mut unlookable: HashSet<String> = HashSet::new();
        while let Some(chunk) = work.pop() {
            let client = self.client.clone();
            let keys = chunk.clone();
            let answer = self
                .with_token(&[], move |token| {
                    let (keys, c) = (keys.clone(), client.clone());
                    async move { c.existing(&keys, &token).await }
                })
                .await;
            report.requests += 1;
            match answer {
                Ok(there) => {
                    let there: HashSet<String> = there.into_iter().collect();
                    let marks: Vec<(&str, i64, &str)> = records
                        .iter()
                        .filter(|r| chunk.contains(&r.key) && there.contains(&r.key))
                        .map(|r| (r.key.as_str(), r.slot_start_ms, r.device_id.as_str()))
                        .collect();
                    self.ledger
                        .mark(&marks, SENT, None)
                        .map_err(|e| CallError::Retry(format!("ledger: {e}")))?;
                    report.found_already += marks.len();
                    found.extend(there.into_iter().filter(|k| chunk.contains(k)));
                }
                Err(CallError::UriTooLong) if chunk.len() > 1 => {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    tracing::info!(keys = chunk.len(), "exment lookup URL too long; halving");
                    work.push(b.to_vec());
                    work.push(a.to_vec());
                }
                Err(CallError::UriTooLong) => {
                    unlookable.extend(chunk);
                }
                Err(e) => return Err(e),
            }
        }
        if !unlookable.is_empty() {
            let reason = "the lookup URL for this key alone is too long for the server (HTTP 414)";
            let marks: Vec<(&str, i64, &str)> = records
                .iter()
                .filter(|r| unlookable.contains(&r.key))
                .map(|r| (r.key.as_str(), r.slot_start_ms, r.device_id.as_str()))
                .collect();
            self.ledger
                .mark(&marks, REFUSED, Some(reason))
                .and_then(|_| self.ledger.note("last_error", reason))
                .map_err(|e| CallError::Retry(format!("ledger: {e}")))?;
            report.refused += marks.len();
        }
        Ok(records
            .into_iter()
            .filter(|r| !found.contains(&r.key) && !unlookable.contains(&r.key))
            .collect())
    }

    /// Sends every due record Exment does not have yet. Stops at the first transient failure
    /// (the caller backs off); a permanent refusal is recorded and the rest goes on.
    pub async fn drain_once(&mut self) -> Result<DrainReport, ExmentError> {
        let mut report = DrainReport::default();
        report.readings_read += self.ledger.scan_new(self.slot_ms())?;
        let horizon = self.now() - KEEP_SENT_MS;
        self.ledger.prune_sent(horizon)?;
        let in_flight_ms = (Duration::from_secs(self.cfg.timeout_secs.max(1))
            + self.in_flight_margin)
            .as_millis() as i64;
        let wall = wall_ms();
        let mut pending = Vec::new();
        let mut unknown = Vec::new();
        for slot in self.ledger.closed_slots(self.last_closed_start())? {
            let look_up_first = match slot.state.as_deref() {
                Some(REFUSED) => continue,
                Some(SENT) => {
                    self.ledger.drop_slot(&slot.key)?;
                    continue;
                }
                // A create sent without a confirmed answer: Exment may still store it, so it
                // is looked up only once the timeout and a margin have passed.
                Some(UNKNOWN) => {
                    if slot.unknown_since.is_some_and(|t| wall < t + in_flight_ms) {
                        report.in_flight += 1;
                        continue;
                    }
                    true
                }
                // Its ledger row may have been pruned after it was sent.
                _ => slot.slot_start < horizon,
            };
            match self.record(&slot, &mut report.readings_read)? {
                Some(r) if look_up_first => unknown.push(r),
                Some(r) => pending.push(r),
                None => self.ledger.drop_slot(&slot.key)?,
            }
        }
        if !unknown.is_empty() {
            match self.look_up(unknown, &mut report).await {
                Ok(missing) => pending.extend(missing),
                Err(e) => return self.fail(e, report),
            }
        }
        pending.sort_by(|a, b| (a.slot_start_ms, &a.key).cmp(&(b.slot_start_ms, &b.key)));
        let size = self.cfg.max_rows_per_request.clamp(1, 100);
        for chunk in pending.chunks(size) {
            let marks: Vec<(&str, i64, &str)> = chunk
                .iter()
                .map(|r| (r.key.as_str(), r.slot_start_ms, r.device_id.as_str()))
                .collect();
            self.ledger.mark(&marks, UNKNOWN, None)?;
            let keys: Vec<String> = chunk.iter().map(|r| r.key.clone()).collect();
            let (records, client) = (chunk.to_vec(), self.client.clone());
            let result = self
                .with_token(&keys, move |token| {
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
                    tracing::error!(%reason, rows = chunk.len(), "exment refused the records; parked (`genba exment retry` after fixing the cause)");
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
        let error = self.classify(e);
        let (ExmentError::Credentials(reason) | ExmentError::Unavailable(reason)) = &error else {
            return Err(error);
        };
        self.ledger.note("last_error", reason)?;
        Err(error)
    }

    /// A failed call as the operator sees it: credentials refused (a configuration error) or
    /// unavailable (tried again), with a redacted one-line excerpt of the answer.
    fn classify(&self, e: CallError) -> ExmentError {
        let (reason, config_error) = match e {
            CallError::Credentials(r) => (r, true),
            CallError::Refused(r) | CallError::Retry(r) => (r, false),
            other => (format!("{other:?}"), false),
        };
        let reason = self.redact.excerpt(&reason);
        if config_error {
            ExmentError::Credentials(reason)
        } else {
            ExmentError::Unavailable(reason)
        }
    }

    /// `genba sinks test exment`: a token, then a lookup of a key no record has. It checks the
    /// address, the credentials, the table and the scope, creates nothing and notes nothing.
    pub async fn check(&mut self) -> Result<(), ExmentError> {
        let client = self.client.clone();
        let probe = vec!["genba-sinks-test".to_owned()];
        self.with_token(&[], move |token| {
            let (keys, c) = (probe.clone(), client.clone());
            async move { c.existing(&keys, &token).await }
        })
        .await
        .map(|_| ())
        .map_err(|e| self.classify(e))
    }

    /// Re-sends a range: its sent and refused records are looked up in Exment first (so
    /// nothing is duplicated), and what Exment does not have is sent.
    pub async fn replay(
        &mut self,
        since_ms: i64,
        device: Option<&str>,
    ) -> Result<DrainReport, ExmentError> {
        let slot_ms = self.slot_ms();
        self.ledger.reopen(since_ms, device, slot_ms)?;
        self.drain_once().await
    }

    /// Tries the refused (parked) records again, e.g. after the table name or the scope was
    /// fixed: each is looked up first, and what Exment does not have is sent.
    pub async fn retry(
        &mut self,
        device: Option<&str>,
    ) -> Result<(usize, DrainReport), ExmentError> {
        let requeued = self.ledger.retry_refused(device)?;
        Ok((requeued, self.drain_once().await?))
    }

    pub fn status(&self) -> Result<Status, ExmentError> {
        Ok(Status {
            records_due: self.ledger.count_due(self.last_closed_start())?.max(0) as usize,
            sent: self.ledger.count(SENT)?,
            unknown: self.ledger.count(UNKNOWN)?,
            refused: self.ledger.count(REFUSED)?,
            last_success: self.ledger.noted("last_success")?,
            last_error: self.ledger.noted("last_error")?,
            state: self.ledger.noted("state")?,
        })
    }

    /// Notes what `genba status` and `GET /status` show of the forwarder.
    fn note_state(&self, state: &str) {
        let due = self.ledger.count_due(self.last_closed_start()).unwrap_or(0);
        if let Err(e) = self
            .ledger
            .note("state", state)
            .and_then(|_| self.ledger.note("records_due", &due.to_string()))
        {
            tracing::warn!(error = %e, "exment: cannot note the forwarder's state");
        }
    }

    /// Drains every 30 s (at once after a success), backing off after failures, until
    /// shutdown. Refused credentials do not end it: it asks again after
    /// `credentials_backoff_secs` (a restart with fixed secrets tries at once), and the error
    /// shows in `genba status`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), ExmentError> {
        let mut failures = 0u32;
        loop {
            let wait = match self.drain_once().await {
                Ok(_) => {
                    failures = 0;
                    self.note_state("ok");
                    Duration::from_secs(30)
                }
                Err(e @ ExmentError::Credentials(_)) => {
                    let d = Duration::from_secs(self.cfg.credentials_backoff_secs.max(1));
                    tracing::error!(error = %e, retry_in_s = d.as_secs(), "exment credentials refused; fix [exment] in the secrets file");
                    self.note_state("credentials refused");
                    d
                }
                Err(e) => {
                    failures += 1;
                    // 1-2 s after the first failure, doubling up to max_backoff_secs.
                    let cap = Duration::from_secs(self.cfg.max_backoff_secs.max(1));
                    let d = genba_sinks::backoff(failures + 1, cap);
                    tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "exment drain failed");
                    self.note_state("retrying");
                    d
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
}
