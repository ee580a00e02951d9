//! `genba recorder`: journals what an external MQTT broker carries. Persistent session,
//! QoS 1, and each message is acknowledged only after its journal commit, so the broker
//! redelivers anything the recorder had not stored when it stopped.
//! (Genba's own broker needs no recorder: its front door journals before the broker acks.)

use std::time::Duration;

use anyhow::{Context, Result};
use genba_store::{Journal, NewMessage};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

pub async fn run(
    broker: String,
    cfg: genba_config::RecorderConfig,
    password: Option<String>,
    journal: Journal,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let (host, port) = genba_config::split_host_port(&broker);
    let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    if let Some(user) = &cfg.username {
        opts.set_credentials(user.clone(), password.unwrap_or_default());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let source = format!("recorder:{broker}");
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = shutdown.changed() => return Ok(()),
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(%broker, session_present = ack.session_present, "recorder connected");
                for f in &cfg.filters {
                    client
                        .subscribe(f.clone(), QoS::AtLeastOnce)
                        .await
                        .context("subscribing")?;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let pid = (p.pkid != 0).then_some(p.pkid);
                journal
                    .append(NewMessage {
                        source: source.clone(),
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                        mqtt_pid: pid,
                        dup: p.dup,
                    })
                    .await
                    .context("journaling a recorded message")?;
                client.ack(&p).await.context("acknowledging")?;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%broker, error = %e, "recorder lost the broker; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
