//! Where rule notifications leave over HTTP (ThingScale's event `post_url`): journal rows on
//! `alarms/{device}/{rule}` written by the rules engine are POSTed as JSON to the rule's
//! `notify_url`, in journal order, retried with backoff on timeouts, 429 and 5xx, and parked
//! with the reason after a permanent refusal (4xx) or too many tries. The cursor moves only
//! past rows that were delivered or parked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use genba_config::rules::Rule;
use genba_config::topic::matches;
use genba_store::ingest::RULES_SOURCE;
use genba_store::{Db, Journal, JournalEntry, Reader};
use serde_json::json;
use tokio::sync::watch;

pub const SINK: &str = "rule-webhooks";
const FILTER: &str = "alarms/+/+";
const TRIES: u32 = 6;

fn rules_by_name(db: &Db) -> Result<HashMap<String, Rule>> {
    let stored = db.run_blocking(genba_store::alarms::rules)?;
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

enum Sent {
    Done,
    Retry(String),
    Refused(String),
}

async fn post(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> Sent {
    match client.post(url).json(body).send().await {
        Ok(r) if r.status().is_success() => Sent::Done,
        Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
            Sent::Retry(format!("HTTP {}", r.status()))
        }
        Ok(r) => Sent::Refused(format!("HTTP {} from {url}", r.status())),
        Err(e) => Sent::Retry(format!("{e}")),
    }
}

pub async fn run(
    db_path: PathBuf,
    journal: Journal,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut reader = tokio::task::block_in_place(|| Reader::open(&db_path))
        .with_context(|| format!("rule webhooks: opening {}", db_path.display()))?;
    let db = Db::new(&db_path);
    let mut cursor = tokio::task::block_in_place(|| reader.register_sink(SINK))?.cursor;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("rule webhooks: HTTP client")?;
    let mut committed = journal.committed();
    loop {
        let entries = tokio::task::block_in_place(|| reader.after(cursor, 100))?;
        let Some(last) = entries.last().map(|e| e.id) else {
            tokio::select! {
                _ = committed.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return Ok(()),
            }
            continue;
        };
        let wanted: Vec<&JournalEntry> = entries
            .iter()
            .filter(|e| e.source == RULES_SOURCE && matches(FILTER, &e.topic))
            .collect();
        let rules = if wanted.is_empty() {
            HashMap::new()
        } else {
            tokio::task::block_in_place(|| rules_by_name(&db))?
        };
        let mut delivered = 0;
        for entry in wanted {
            let mut levels = entry.topic.split('/').skip(1);
            let (Some(device), Some(name)) = (levels.next(), levels.next()) else {
                continue;
            };
            let Some((rule, url)) = rules
                .get(name)
                .and_then(|r| r.notify_url.clone().map(|u| (r, u)))
            else {
                continue;
            };
            let payload = body(entry, device, rule);
            let mut tries = 0;
            loop {
                tries += 1;
                match post(&client, &url, &payload).await {
                    Sent::Done => {
                        delivered += 1;
                        break;
                    }
                    Sent::Retry(why) if tries < TRIES => {
                        let wait = Duration::from_secs(1 << tries.min(6));
                        tracing::warn!(rule = %name, %why, retry_in_s = wait.as_secs(), "rule webhook failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = shutdown.changed() => return Ok(()),
                        }
                    }
                    Sent::Retry(why) | Sent::Refused(why) => {
                        tracing::warn!(rule = %name, reason = %why, "rule webhook parked");
                        tokio::task::block_in_place(|| {
                            reader.park(SINK, std::slice::from_ref(entry), &why)
                        })?;
                        break;
                    }
                }
            }
        }
        tokio::task::block_in_place(|| reader.passed(SINK, last, delivered))?;
        cursor = last;
    }
}
