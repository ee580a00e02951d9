//! The telemetry consumer: reads `devices/{id}/telemetry[/tag]` rows from the journal (MQTT
//! publishes and `/post_v2` posts, journaled before they were acknowledged), stores each as
//! device points, readings and records, and lets the rules engine judge every new value. A
//! batch of rows, the rows it parks, the alarms it raises or clears and this consumer's cursor
//! commit in one transaction, so after a crash every row is stored and judged exactly once.
//! Every [`TICK`] the engine also judges the time that passed (silence, durations, escalation).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use genba_config::rules::Rule;
use genba_store::alarms::{self, StoredRule, Which};
use genba_store::{
    devices, streams, ConsumerReader, Db, Journal, JournalEntry, Refused, TelemetryBatch,
};
use tokio::sync::watch;

use crate::message::{self, topic_device};
use crate::rules::{Engine, Snapshot, Unacknowledged};

/// How often a cursor that only passed rows with nothing to store is written.
const CURSOR_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The journal consumer's name (its cursor in the `sinks` table). It was the HACCP readings
/// consumer's before every telemetry body became streams, and keeps that name and cursor.
pub const SINK: &str = genba_telemetry::READINGS_SINK;
const READ_BATCH: usize = 500;
/// How often time-driven rules (silence, durations, escalation) are judged and rules reloaded.
pub const TICK: Duration = Duration::from_secs(5);

/// Whether a message from an unknown device may create it, by how it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provisioning {
    /// Over MQTT (the broker's clients, or what the recorder journals).
    pub mqtt: bool,
    /// Over HTTP with a device key (`/post_v2`).
    pub http: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("telemetry consumer: {0}")]
    Store(#[from] genba_store::StoreError),
}

/// Turns journal rows into one batch: readable telemetry as messages, the rest refused.
pub fn batch_of(entries: &[JournalEntry], provisioning: Provisioning) -> TelemetryBatch {
    let mut batch = TelemetryBatch {
        journal: Vec::new(),
        messages: Vec::new(),
        effects: Vec::new(),
        refused: Vec::new(),
        unpark: None,
        cursor: None,
    };
    for entry in entries {
        let Some((device, tag)) = topic_device(&entry.topic) else {
            continue;
        };
        match message::parse(device, tag, &entry.payload, entry.received_at_ms) {
            Ok(mut m) => {
                m.journal = Some((entry.id, entry.topic.clone()));
                m.provision = if entry.source.starts_with("http") {
                    provisioning.http
                } else {
                    provisioning.mqtt
                };
                if let Some(addr) = entry.source.strip_prefix("http:") {
                    m.address = Some(addr.to_owned());
                }
                m.source = entry.source.clone();
                batch.messages.push(m);
            }
            Err(reason) => {
                tracing::warn!(topic = %entry.topic, %reason, "telemetry refused; parked");
                batch.refused.push(Refused {
                    journal_id: entry.id,
                    topic: entry.topic.clone(),
                    reason,
                });
            }
        }
    }
    batch
}

/// Rules as stored, typed; a stored spec that no longer reads is skipped with a warning.
fn typed(stored: &[StoredRule]) -> Vec<Rule> {
    stored
        .iter()
        .filter_map(|r| match serde_json::from_str::<Rule>(&r.spec) {
            Ok(rule) => Some(rule),
            Err(e) => {
                tracing::warn!(rule = %r.name, error = %e, "stored rule does not read; skipped");
                None
            }
        })
        .collect()
}

/// Device id -> (enabled, tags).
type DeviceStates = HashMap<String, (bool, Vec<String>)>;

async fn device_states(db: &Db) -> Result<DeviceStates, ConsumerError> {
    let list = db.run(devices::list).await?;
    Ok(list
        .into_iter()
        .map(|d| (d.id, (d.enabled, d.tags)))
        .collect())
}

async fn snapshot(db: &Db, devices: &DeviceStates) -> Result<Snapshot, ConsumerError> {
    let (streams, pending, open) = db
        .run(|c| {
            let open = alarms::list(c, Which::Open, None, usize::MAX >> 1)?;
            Ok((streams::all(c)?, alarms::pending(c)?, open))
        })
        .await?;
    Ok(Snapshot {
        devices: devices
            .iter()
            .map(|(id, (_, tags))| (id.clone(), tags.clone()))
            .collect(),
        last: streams
            .into_iter()
            .filter_map(|s| {
                let at = s.last_at_ms?;
                Some(((s.device_id, s.name), (at, s.last_value, s.unit)))
            })
            .collect(),
        pending: pending
            .into_iter()
            .map(|(r, d, s, since)| ((r, d, s), since))
            .collect(),
        open: open
            .into_iter()
            .map(|a| (a.rule, a.device_id, a.stream))
            .collect::<HashSet<_>>(),
    })
}

/// Lets the engine judge every value of the messages the store will accept.
fn judge(engine: &mut Engine, batch: &mut TelemetryBatch, devices: &DeviceStates) {
    for m in &batch.messages {
        let accepted = match devices.get(&m.device_id) {
            Some((enabled, tags)) => {
                if !engine.knows_device(&m.device_id) {
                    engine.set_device(&m.device_id, tags.clone());
                }
                *enabled
            }
            None => m.provision,
        };
        if !accepted {
            continue;
        }
        for f in &m.fields {
            let at = f.at_ms.unwrap_or(m.at_ms);
            let effects = engine.observe(&m.device_id, &f.name, at, &f.value, f.unit.as_deref());
            batch.effects.extend(effects);
        }
    }
}

pub async fn run(
    db_path: PathBuf,
    journal: Journal,
    provisioning: Provisioning,
    config_rules: Vec<Rule>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let db = Db::new(&db_path);
    let reader = ConsumerReader::open(&db_path).await?;
    let mut cursor = reader.run(|r| r.register_sink(SINK)).await?.cursor;
    let specs: Vec<(String, String)> = config_rules
        .iter()
        .map(|r| (r.name.clone(), serde_json::to_string(r).unwrap_or_default()))
        .collect();
    let mut stored_rules = db
        .run(move |c| {
            alarms::sync_config_rules(c, &specs)?;
            alarms::rules(c)
        })
        .await?;
    let devices = device_states(&db).await?;
    let mut engine = Engine::new(typed(&stored_rules), snapshot(&db, &devices).await?);
    tracing::info!(rules = engine.rules().len(), "rules engine ready");
    let mut committed = journal.committed();
    let mut next_tick = tokio::time::Instant::now();
    // The cursor as last written to the database, and when.
    let (mut stored_cursor, mut stored_at) = (cursor, tokio::time::Instant::now());
    loop {
        if tokio::time::Instant::now() >= next_tick {
            // Judged between batches too, so a busy journal does not hold back silence checks.
            tick_once(&mut engine, &db, &mut stored_rules, &journal).await?;
            retry_parked(&mut engine, &db, &journal, provisioning).await?;
            next_tick = tokio::time::Instant::now() + TICK;
        }
        let entries = reader.run(move |r| r.after(cursor, READ_BATCH)).await?;
        let Some(last) = entries.last().map(|e| e.id) else {
            if stored_cursor < cursor {
                // Idle: the cursor moves in the database too.
                let mut batch = batch_of(&[], provisioning);
                batch.cursor = Some((SINK.to_owned(), cursor));
                journal.append(batch).await?;
                stored_cursor = cursor;
                stored_at = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = committed.changed() => {}
                _ = tokio::time::sleep_until(next_tick) => {}
                _ = shutdown.changed() => return Ok(()),
            }
            continue;
        };
        let mut batch = batch_of(&entries, provisioning);
        if !batch.messages.is_empty() {
            let devices = device_states(&db).await?;
            judge(&mut engine, &mut batch, &devices);
        }
        cursor = last;
        // Rows with nothing to store (not telemetry) only move the cursor: that is written at
        // most every CURSOR_EVERY (or when the journal goes idle), not once per journal batch,
        // where it cost the journal writer a second fsync'd commit. Read again after a crash,
        // such rows are skipped again.
        let nothing = batch.journal.is_empty()
            && batch.messages.is_empty()
            && batch.effects.is_empty()
            && batch.refused.is_empty()
            && batch.unpark.is_none();
        if nothing && stored_at.elapsed() < CURSOR_EVERY {
            continue;
        }
        batch.cursor = Some((SINK.to_owned(), last));
        journal.append(batch).await?;
        stored_cursor = last;
        stored_at = tokio::time::Instant::now();
    }
}

/// Parked rows an operator asked to try again (after adding or enabling their device): read
/// and judged like new ones, unparked in the same transaction (parked again if still refused).
async fn retry_parked(
    engine: &mut Engine,
    db: &Db,
    journal: &Journal,
    provisioning: Provisioning,
) -> Result<(), ConsumerError> {
    let entries = db
        .run(|c| alarms::retry_requested(c, SINK, READ_BATCH))
        .await?;
    if entries.is_empty() {
        return Ok(());
    }
    let mut batch = batch_of(&entries, provisioning);
    let devices = device_states(db).await?;
    judge(engine, &mut batch, &devices);
    batch.unpark = Some((SINK.to_owned(), entries.iter().map(|e| e.id).collect()));
    tracing::info!(rows = entries.len(), "retrying parked telemetry");
    journal.append(batch).await?;
    Ok(())
}

/// Reloads rules and device tags when they changed, then judges the time that passed.
async fn tick_once(
    engine: &mut Engine,
    db: &Db,
    stored_rules: &mut Vec<StoredRule>,
    journal: &Journal,
) -> Result<(), ConsumerError> {
    let (stored, unacked) = db
        .run(|c| {
            let unacked = alarms::list(c, Which::Unacknowledged, None, 10_000)?;
            Ok((alarms::rules(c)?, unacked))
        })
        .await?;
    let devices = device_states(db).await?;
    let mut effects = Vec::new();
    if stored != *stored_rules {
        effects.extend(engine.set_rules(typed(&stored)));
        tracing::info!(rules = engine.rules().len(), "rules reloaded");
        *stored_rules = stored;
    }
    for (id, (_, tags)) in devices {
        engine.set_device(&id, tags);
    }
    let unacked: Vec<Unacknowledged> = unacked
        .into_iter()
        .filter(|a| a.escalated_at_ms.is_none())
        .map(|a| (a.id, a.rule, a.device_id, a.raised_at_ms))
        .collect();
    let now = chrono::Utc::now().timestamp_millis();
    effects.extend(engine.tick(now, &unacked));
    if !effects.is_empty() {
        journal
            .append(TelemetryBatch {
                journal: Vec::new(),
                messages: Vec::new(),
                effects,
                refused: Vec::new(),
                unpark: None,
                cursor: None,
            })
            .await?;
    }
    Ok(())
}
