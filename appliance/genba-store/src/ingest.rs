//! Where device telemetry becomes durable as streams: one [`TelemetryBatch`] is applied inside
//! the writer's group transaction. Per message: the device is looked up (or provisioned), its
//! HACCP readings are inserted once per (device, device time, probe), every field becomes a
//! point of its stream, and the per-minute and per-hour rollups of each new point are updated
//! in place (never by rescanning). A message from an unknown or disabled device is parked in
//! the same transaction, so the consumer's cursor, the points and the parked rows move together.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension, Transaction};

use crate::NewReading;

/// Rollup periods kept for every numeric stream, in ms.
pub const ROLLUP_PERIODS: [i64; 2] = [MINUTE_MS, HOUR_MS];
pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;

/// One value of a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Number(f64),
    Text(String),
}

/// A named value of a message: a JSON field path (`env.temp`) or a probe id.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub value: FieldValue,
    /// Unit given to the stream when this field creates it (e.g. `°C` for HACCP probes).
    pub unit: Option<String>,
    /// Time of this value when it differs from the message's (HACCP readings), unix ms.
    pub at_ms: Option<i64>,
}

/// One message of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceMessage {
    pub device_id: String,
    /// Where it came from: `http:<address>`, `mqtt:<client id>` (the readings' `source`).
    pub source: String,
    /// Time of the values, unix ms.
    pub at_ms: i64,
    pub address: Option<String>,
    pub firmware: Option<String>,
    pub rssi: Option<i64>,
    /// HACCP rows for the readings table (also given as fields, one stream per probe).
    pub readings: Vec<NewReading>,
    pub fields: Vec<Field>,
    /// The JSON object as sent, kept as the device's record (ThingScale's channel), with its tag.
    pub record: Option<(Option<String>, String)>,
    /// The journal row (id, topic) this message came from: parked there when refused.
    pub journal: Option<(i64, String)>,
    /// Create the device if unknown (`[devices] auto_provision`); otherwise park the message.
    pub provision: bool,
}

/// A journal row the consumer refused (not telemetry it can read), parked with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub journal_id: i64,
    pub topic: String,
    pub reason: String,
}

/// What the rules engine decided about the messages of a batch (or about time passing):
/// applied in the same transaction, so every reading is evaluated exactly once.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Opens an alarm (at most one open per rule, device and stream) and journals `message`
    /// on `alarms/{device}/{rule}`; `command`, if any, on `devices/{device}/commands`.
    Raise {
        rule: String,
        device_id: String,
        stream: String,
        condition: String,
        severity: String,
        threshold: Option<f64>,
        value: Option<f64>,
        at_ms: i64,
        message: String,
        command: Option<String>,
    },
    /// Clears the open alarm and journals `message`.
    Clear {
        rule: String,
        device_id: String,
        stream: String,
        value: Option<f64>,
        at_ms: i64,
        message: String,
    },
    /// Marks an unacknowledged alarm escalated (once) and journals `message`.
    Escalate {
        alarm_id: i64,
        rule: String,
        device_id: String,
        at_ms: i64,
        message: String,
    },
    /// A duration rule's condition holds since `since_ms` (`None`: it no longer holds).
    Pending {
        rule: String,
        device_id: String,
        stream: String,
        since_ms: Option<i64>,
    },
}

/// The source of the journal rows the rules engine writes.
pub const RULES_SOURCE: &str = "rules";

/// Messages applied in one transaction, with an optional consumer cursor that moves with them.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryBatch {
    /// Journal rows appended in the same transaction, before the messages are applied (the
    /// HTTP telemetry body: journaled for the consumer and the rules, stored at once too).
    pub journal: Vec<crate::NewMessage>,
    pub messages: Vec<DeviceMessage>,
    /// The rules engine's decisions about these messages (or about time passing).
    pub effects: Vec<Effect>,
    /// Rows parked by the consumer (needs `cursor`: they are parked under its sink).
    pub refused: Vec<Refused>,
    /// Parked rows of this sink tried again in this batch: unparked first (a row still
    /// refused is parked again, with its new reason).
    pub unpark: Option<(String, Vec<i64>)>,
    /// (sink, journal id): the consumer that read these messages and how far it got.
    pub cursor: Option<(String, i64)>,
}

struct Stream {
    id: i64,
    last_at: Option<i64>,
}

/// What a batch changed: the readings plus points newly inserted, and the last journal row
/// the rules engine wrote (0: none).
pub(crate) struct Applied {
    pub inserted: i64,
    pub last_journal_id: i64,
}

/// Applies a batch.
pub(crate) fn apply(
    tx: &Transaction,
    batch: &TelemetryBatch,
    now: i64,
) -> rusqlite::Result<Applied> {
    let mut find_device = tx.prepare_cached("SELECT enabled FROM devices WHERE id = ?1")?;
    let mut add_device = tx.prepare_cached(
        "INSERT INTO devices (id, channel, provisioned, created_at)
         VALUES (?1, (SELECT COALESCE(MAX(channel), 0) + 1 FROM devices), 'auto', ?2)",
    )?;
    let mut seen = tx.prepare_cached(
        "UPDATE devices SET last_seen_at = MAX(COALESCE(last_seen_at, 0), ?2),
         last_address = COALESCE(?3, last_address), firmware = COALESCE(?4, firmware),
         rssi = COALESCE(?5, rssi) WHERE id = ?1",
    )?;
    let mut park = tx.prepare_cached(
        "INSERT OR IGNORE INTO parked (sink, journal_id, topic, reason, parked_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut count_parked =
        tx.prepare_cached("UPDATE sinks SET parked = parked + 1 WHERE name = ?1")?;
    let mut insert_reading = tx.prepare_cached(
        "INSERT OR IGNORE INTO readings (device_id, recorded_at, ts_device, sensor_hw_id,
         raw_celsius, offset_c, celsius, rssi, source, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut find_stream =
        tx.prepare_cached("SELECT id, last_at FROM streams WHERE device_id = ?1 AND name = ?2")?;
    let mut add_stream = tx.prepare_cached(
        "INSERT INTO streams (device_id, name, kind, unit, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut insert_point = tx.prepare_cached(
        "INSERT OR IGNORE INTO points (stream_id, at, value, text) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut rollup = tx.prepare_cached(
        "INSERT INTO rollups (stream_id, period, bucket, count, min, max, sum)
         VALUES (?1, ?2, ?3, 1, ?4, ?4, ?4)
         ON CONFLICT (stream_id, period, bucket) DO UPDATE SET count = count + 1,
         min = MIN(min, excluded.min), max = MAX(max, excluded.max), sum = sum + excluded.sum",
    )?;
    let mut stream_last = tx.prepare_cached(
        "UPDATE streams SET last_at = ?2, last_value = ?3, last_text = ?4 WHERE id = ?1",
    )?;
    let mut add_record = tx
        .prepare_cached("INSERT INTO records (device_id, at, tag, body) VALUES (?1, ?2, ?3, ?4)")?;

    let mut journaled = 0;
    for j in &batch.journal {
        tx.execute(
            "INSERT INTO journal (received_at, source, topic, payload, qos, retain, mqtt_pid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![now, j.source, j.topic, j.payload, j.qos, j.retain, j.mqtt_pid],
        )?;
        journaled = tx.last_insert_rowid();
    }
    if let Some((sink, ids)) = &batch.unpark {
        for id in ids {
            let gone = tx.execute(
                "DELETE FROM parked WHERE sink = ?1 AND journal_id = ?2",
                params![sink, id],
            )?;
            tx.execute(
                "UPDATE sinks SET parked = MAX(parked - ?2, 0) WHERE name = ?1",
                params![sink, gone as i64],
            )?;
        }
    }
    let sink = batch
        .cursor
        .as_ref()
        .map(|(s, _)| s.as_str())
        .or(batch.unpark.as_ref().map(|(s, _)| s.as_str()));
    let mut streams: HashMap<(String, String), Stream> = HashMap::new();
    // Newest value per stream, written once per batch.
    let mut latest: HashMap<i64, (i64, FieldValue)> = HashMap::new();
    let mut inserted = 0i64;
    for m in &batch.messages {
        let enabled: Option<bool> = find_device
            .query_row(params![m.device_id], |r| r.get(0))
            .optional()?;
        let refusal = match enabled {
            Some(true) => None,
            Some(false) => Some(format!("device {:?} is disabled", m.device_id)),
            None if m.provision => {
                add_device.execute(params![m.device_id, now])?;
                None
            }
            None => Some(format!(
                "unknown device {:?}: add it (`genba devices add {}`) or turn on [devices] auto_provision",
                m.device_id, m.device_id
            )),
        };
        if let Some(reason) = refusal {
            if let (Some(sink), Some((id, topic))) = (sink, &m.journal) {
                if park.execute(params![sink, id, topic, reason, now])? > 0 {
                    count_parked.execute(params![sink])?;
                }
            }
            continue;
        }
        seen.execute(params![m.device_id, m.at_ms, m.address, m.firmware, m.rssi])?;
        for r in &m.readings {
            inserted += insert_reading.execute(params![
                r.device_id,
                r.recorded_at,
                r.ts_device,
                r.sensor_hw_id,
                r.raw_celsius,
                r.offset_c,
                r.celsius,
                r.rssi,
                m.source,
                now
            ])? as i64;
        }
        for f in &m.fields {
            let key = (m.device_id.clone(), f.name.clone());
            if !streams.contains_key(&key) {
                let found = find_stream
                    .query_row(params![m.device_id, f.name], |r| {
                        Ok(Stream {
                            id: r.get(0)?,
                            last_at: r.get(1)?,
                        })
                    })
                    .optional()?;
                let stream = match found {
                    Some(s) => s,
                    None => {
                        let kind = match f.value {
                            FieldValue::Number(_) => "number",
                            FieldValue::Text(_) => "text",
                        };
                        let unit = f.unit.as_deref().unwrap_or_default();
                        add_stream.execute(params![m.device_id, f.name, kind, unit, now])?;
                        Stream {
                            id: tx.last_insert_rowid(),
                            last_at: None,
                        }
                    }
                };
                streams.insert(key.clone(), stream);
            }
            let Some(stream) = streams.get_mut(&key) else {
                continue;
            };
            let at = f.at_ms.unwrap_or(m.at_ms);
            let (number, text) = match &f.value {
                FieldValue::Number(n) => (Some(*n), None),
                FieldValue::Text(t) => (None, Some(t.as_str())),
            };
            if insert_point.execute(params![stream.id, at, number, text])? == 0 {
                continue; // this stream already has a point at that time (a resend)
            }
            if m.readings.is_empty() {
                inserted += 1;
            }
            if let Some(n) = number {
                for period in ROLLUP_PERIODS {
                    rollup.execute(params![stream.id, period, at - at.rem_euclid(period), n])?;
                }
            }
            if stream.last_at.is_none_or(|last| at >= last) {
                stream.last_at = Some(at);
                latest.insert(stream.id, (at, f.value.clone()));
            }
        }
        if let Some((tag, body)) = &m.record {
            add_record.execute(params![m.device_id, m.at_ms, tag, body])?;
        }
    }
    if let Some(sink) = sink {
        for r in &batch.refused {
            if park.execute(params![sink, r.journal_id, r.topic, r.reason, now])? > 0 {
                count_parked.execute(params![sink])?;
            }
        }
    }
    for (id, (at, value)) in latest {
        match value {
            FieldValue::Number(n) => stream_last.execute(params![id, at, n, None::<String>])?,
            FieldValue::Text(t) => stream_last.execute(params![id, at, None::<f64>, t])?,
        };
    }
    let last_journal_id = apply_effects(tx, &batch.effects, now)?.max(journaled);
    if let Some((sink, cursor)) = &batch.cursor {
        tx.execute(
            "UPDATE sinks SET cursor = MAX(cursor, ?2), delivered = delivered + 1 WHERE name = ?1",
            params![sink, cursor],
        )?;
    }
    Ok(Applied {
        inserted,
        last_journal_id,
    })
}

fn apply_effects(tx: &Transaction, effects: &[Effect], now: i64) -> rusqlite::Result<i64> {
    let mut journal = tx.prepare_cached(
        "INSERT INTO journal (received_at, source, topic, payload, qos, retain)
         VALUES (?1, ?2, ?3, ?4, 1, 0)",
    )?;
    let mut last = 0;
    let mut log = |topic: String, message: &str| -> rusqlite::Result<()> {
        journal.execute(params![now, RULES_SOURCE, topic, message.as_bytes()])?;
        last = tx.last_insert_rowid();
        Ok(())
    };
    for e in effects {
        match e {
            Effect::Raise {
                rule,
                device_id,
                stream,
                condition,
                severity,
                threshold,
                value,
                at_ms,
                message,
                command,
            } => {
                let opened = tx.execute(
                    "INSERT OR IGNORE INTO alarms (rule, device_id, stream, condition, severity,
                     threshold, value, message, raised_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![rule, device_id, stream, condition, severity, threshold, value, message, at_ms],
                )?;
                if opened > 0 {
                    log(format!("alarms/{device_id}/{rule}"), message)?;
                    if let Some(c) = command {
                        log(format!("devices/{device_id}/commands"), c)?;
                    }
                }
            }
            Effect::Clear {
                rule,
                device_id,
                stream,
                value,
                at_ms,
                message,
            } => {
                let cleared = tx.execute(
                    "UPDATE alarms SET cleared_at = ?4, clear_value = ?5
                     WHERE rule = ?1 AND device_id = ?2 AND stream = ?3 AND cleared_at IS NULL",
                    params![rule, device_id, stream, at_ms, value],
                )?;
                if cleared > 0 {
                    log(format!("alarms/{device_id}/{rule}"), message)?;
                }
            }
            Effect::Escalate {
                alarm_id,
                rule,
                device_id,
                at_ms,
                message,
            } => {
                let escalated = tx.execute(
                    "UPDATE alarms SET escalated_at = ?2
                     WHERE id = ?1 AND escalated_at IS NULL AND acked_at IS NULL",
                    params![alarm_id, at_ms],
                )?;
                if escalated > 0 {
                    log(format!("alarms/{device_id}/{rule}"), message)?;
                }
            }
            Effect::Pending {
                rule,
                device_id,
                stream,
                since_ms,
            } => match since_ms {
                Some(since) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO rule_state (rule, device_id, stream, pending_since)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![rule, device_id, stream, since],
                    )?;
                }
                None => {
                    tx.execute(
                        "DELETE FROM rule_state WHERE rule = ?1 AND device_id = ?2 AND stream = ?3",
                        params![rule, device_id, stream],
                    )?;
                }
            },
        }
    }
    Ok(last)
}
