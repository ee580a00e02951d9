//! Where rule notifications leave over HTTP (ThingScale's event `post_url`): journal rows on
//! `alarms/{device}/{rule}` written by the rules engine are POSTed as JSON to the rule's
//! `notify_url`, in journal order, by the sink loop every sink uses (genba-sinks): retried
//! with backoff on timeouts, 429 and 5xx, and parked with the reason after a refusal (4xx) or
//! six failed tries; `genba sinks retry rule-webhooks` sends parked ones again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use genba_config::rules::Rule;
use genba_sinks::{Consumer, Deliver, Outcome, Pace};
use genba_store::ingest::RULES_SOURCE;
use genba_store::{Db, Journal, JournalEntry};
use serde_json::json;
use tokio::sync::watch;

pub const SINK: &str = "rule-webhooks";
const FILTER: &str = "alarms/+/+";
const TRIES: u32 = 6;

async fn rules_by_name(db: &Db) -> Result<HashMap<String, Rule>> {
    let stored = db.run(genba_store::alarms::rules).await?;
    Ok(stored
        .iter()
        .filter_map(|r| serde_json::from_str::<Rule>(&r.spec).ok())
        .map(|r| (r.name.clone(), r))
        .collect())
}

/// The POST body: what happened, to which device and stream, and the alarm's message.
fn body(entry: &JournalEntry, device: &str, rule: &Rule) -> serde_json::Value {
    let message = String::from_utf8_lossy(&entry.payload).into_owned();
    let kind = message.split_whitespace().next().unwrap_or_default();
    json!({
        "event": match kind {
            "CLEARED" => "cleared",
            "ESCALATED" => "escalated",
            _ => "raised",
        },
        "event_id": rule.name.strip_prefix("event-").and_then(|n| n.parse::<i64>().ok()),
        "rule": rule.name,
        "device_id": device,
        "stream": rule.stream,
        "message": message,
        "at": genba_platform::query::format_time(entry.received_at_ms),
        "journal_id": entry.id,
    })
}

/// Posts each alarm row to its rule's `notify_url` (one row per request).
struct RuleWebhooks {
    db: Db,
    client: reqwest::Client,
}

impl Deliver for RuleWebhooks {
    fn fit(&self, _wanted: &[JournalEntry]) -> usize {
        1
    }

    async fn deliver(&mut self, batch: &[JournalEntry]) -> Outcome {
        let Some(entry) = batch.first() else {
            return Outcome::Delivered;
        };
        let mut levels = entry.topic.split('/').skip(1);
        let (Some(device), Some(name)) = (levels.next(), levels.next()) else {
            return Outcome::Delivered;
        };
        let rules = match rules_by_name(&self.db).await {
            Ok(rules) => rules,
            Err(e) => return Outcome::retry(format!("reading the rules: {e:#}")),
        };
        // A rule without a notify_url (or removed since) has nothing to send.
        let Some((rule, url)) = rules
            .get(name)
            .and_then(|r| r.notify_url.clone().map(|u| (r, u)))
        else {
            return Outcome::Delivered;
        };
        let request = self.client.post(&url).json(&body(entry, device, rule));
        match genba_sinks::http::send(request, &[]).await {
            (Outcome::Permanent { reason }, _) => Outcome::Permanent {
                reason: format!("{reason} from {url}"),
            },
            (outcome, _) => outcome,
        }
    }
}

/// The rule webhooks' journal consumer: alarm rows the rules engine wrote, in order, each
/// tried up to six times (backoff up to a minute) before it is parked.
pub async fn run(
    db_path: PathBuf,
    journal: Journal,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("rule webhooks: HTTP client")?;
    let mut consumer = Consumer {
        name: SINK.into(),
        filters: vec![FILTER.into()],
        source: Some(RULES_SOURCE.into()),
        pace: Pace {
            rate_per_sec: 10.0,
            burst: 10,
            max_backoff: Duration::from_secs(64),
            park_after: Some(TRIES),
        },
        deliver: RuleWebhooks {
            db: Db::new(&db_path),
            client,
        },
        db_path,
        wake: Some(journal.committed()),
    };
    consumer.run(shutdown).await.context("rule webhooks")
}
