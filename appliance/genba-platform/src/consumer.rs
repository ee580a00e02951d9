//! The telemetry consumer: reads `devices/{id}/telemetry[/tag]` rows from the journal (MQTT
//! publishes and `/post_v2` posts, journaled before they were acknowledged) and stores each as
//! device points, readings and records. A batch of rows, the rows it parks and this consumer's
//! cursor commit in one transaction, so after a crash every row is stored exactly once.

use std::path::PathBuf;
use std::time::Duration;

use genba_store::{Journal, JournalEntry, Reader, Refused, TelemetryBatch};
use tokio::sync::watch;

use crate::message::{self, topic_device};

/// The journal consumer's name (its cursor in the `sinks` table). It was the HACCP readings
/// consumer's before every telemetry body became streams, and keeps that name and cursor.
pub const SINK: &str = genba_telemetry::READINGS_SINK;
const READ_BATCH: usize = 500;

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
        messages: Vec::new(),
        refused: Vec::new(),
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

pub async fn run(
    db: PathBuf,
    journal: Journal,
    provisioning: Provisioning,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let reader = tokio::task::block_in_place(|| Reader::open(&db))?;
    let mut cursor = tokio::task::block_in_place(|| reader.register_sink(SINK))?.cursor;
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
        let mut batch = batch_of(&entries, provisioning);
        batch.cursor = Some((SINK.to_owned(), last));
        journal.store_telemetry(batch).await?;
        cursor = last;
    }
}
