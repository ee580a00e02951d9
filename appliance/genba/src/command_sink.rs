//! Where commands leave for devices. Journal rows on `devices/{id}/commands` that Genba wrote
//! itself (the `/v2/publish` API, `genba devices send`, rule actions) are published to the
//! broker in journal order, and this sink's cursor moves after each PUBACK: at least once, so
//! a device may see a command twice after a crash but never misses one. Commands that MQTT
//! clients published went through the broker already and are skipped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use genba_config::topic::matches;
use genba_store::{ConsumerReader, Journal, JournalEntry};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};

pub const SINK: &str = "commands";
const FILTER: &str = "devices/+/commands";
const READ_BATCH: usize = 100;
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Whether this sink delivers the row: a command Genba itself journaled.
pub fn delivers(entry: &JournalEntry) -> bool {
    matches(FILTER, &entry.topic)
        && !entry.source.starts_with("mqtt:")
        && !entry.source.starts_with("recorder")
}

pub async fn run(
    db: PathBuf,
    journal: Journal,
    broker: SocketAddr,
    secret: String,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let reader = ConsumerReader::open(&db)
        .await
        .with_context(|| format!("command sink: opening {}", db.display()))?;
    let mut cursor = reader.run(|r| r.register_sink(SINK)).await?.cursor;
    let mut opts = MqttOptions::new(
        format!("genba-commands-{}", std::process::id()),
        broker.ip().to_string(),
        broker.port(),
    );
    opts.set_credentials(genba_broker::INTERNAL_USER, secret);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 64);
    let (acks, mut acked) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if acks.send(()).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "command sink: broker connection; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    let mut committed = journal.committed();
    loop {
        let entries = reader.run(move |r| r.after(cursor, READ_BATCH)).await?;
        let Some(last) = entries.last().map(|e| e.id) else {
            tokio::select! {
                _ = committed.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return Ok(()),
            }
            continue;
        };
        let mut delivered = 0;
        for entry in entries.iter().filter(|e| delivers(e)) {
            loop {
                let qos = if entry.qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                client
                    .publish(&entry.topic, qos, false, entry.payload.clone())
                    .await
                    .context("command sink: the MQTT client stopped")?;
                if qos == QoS::AtMostOnce {
                    break;
                }
                tokio::select! {
                    got = tokio::time::timeout(ACK_WAIT, acked.recv()) => {
                        if matches!(got, Ok(Some(()))) {
                            break;
                        }
                        tracing::warn!(topic = %entry.topic, "command not acknowledged by the broker; resending");
                    }
                    _ = shutdown.changed() => return Ok(()),
                }
            }
            delivered += 1;
            tracing::info!(topic = %entry.topic, id = entry.id, "command delivered to the broker");
        }
        reader.run(move |r| r.passed(SINK, last, delivered)).await?;
        cursor = last;
    }
}
