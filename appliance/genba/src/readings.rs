//! The readings consumer: moves telemetry that arrived over MQTT (`devices/{id}/telemetry`,
//! journaled by the broker before its PUBACK) into the readings table. Each row's readings
//! and this consumer's cursor commit in one transaction, so a crash neither loses nor
//! doubles a reading. A body that is not valid telemetry is parked with the reason.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use genba_config::topic::matches;
use genba_store::{Journal, NewReadings, Reader};
use genba_telemetry::{READINGS_SINK, TELEMETRY_FILTER};
use tokio::sync::watch;

const READ_BATCH: usize = 500;

pub async fn run(db: PathBuf, journal: Journal, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let mut reader = tokio::task::block_in_place(|| Reader::open(&db))
        .with_context(|| format!("readings consumer: opening {}", db.display()))?;
    let mut cursor = tokio::task::block_in_place(|| reader.register_sink(READINGS_SINK))?.cursor;
    let mut committed = journal.committed();
    loop {
        let entries = tokio::task::block_in_place(|| reader.after(cursor, READ_BATCH))?;
        let Some(last) = entries.last().map(|e| e.id) else {
            tokio::select! {
                _ = committed.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return Ok(()),
            }
            continue;
        };
        for entry in entries
            .iter()
            .filter(|e| matches(TELEMETRY_FILTER, &e.topic))
        {
            let topic_device = entry.topic.split('/').nth(1).unwrap_or_default();
            let parsed = genba_telemetry::parse(&entry.payload)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    if b.device_id == topic_device {
                        Ok(b)
                    } else {
                        Err(format!(
                            "device_id {:?} does not match the topic {}",
                            b.device_id, entry.topic
                        ))
                    }
                });
            match parsed {
                Ok(batch) => {
                    journal
                        .store_readings(NewReadings {
                            source: entry.source.clone(),
                            readings: batch.readings,
                            cursor: Some((READINGS_SINK.to_owned(), entry.id)),
                        })
                        .await
                        .context("readings consumer: storing readings")?;
                }
                Err(reason) => {
                    tracing::warn!(topic = %entry.topic, %reason, "telemetry refused; parked");
                    tokio::task::block_in_place(|| {
                        reader.park(READINGS_SINK, std::slice::from_ref(entry), &reason)
                    })?;
                }
            }
        }
        tokio::task::block_in_place(|| reader.skip_to(READINGS_SINK, last))?;
        cursor = last;
    }
}
