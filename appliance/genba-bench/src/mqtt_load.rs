//! MQTT load: N publisher -> subscriber pairs, each pair on its own topic. Payloads carry the
//! send time, so the subscriber measures publish-to-receive latency on the same clock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::Figures;

const PAYLOAD_BYTES: usize = 64;
static RUN: AtomicU64 = AtomicU64::new(0);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) fn options(id: String, addr: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    o
}

pub async fn run(addr: SocketAddr, pairs: usize, qos: u8, duration: Duration) -> Result<Figures> {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let qos = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    // Subscribers first, each confirmed by its SUBACK.
    let mut subscribers = Vec::new();
    for i in 0..pairs {
        let topic = format!("bench/{run}/{i}");
        let (client, mut eventloop) =
            AsyncClient::new(options(format!("bench-sub-{run}-{i}"), addr), 1000);
        client.subscribe(&topic, qos).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("subscriber {i} on {addr}: {e}"),
                Err(_) => bail!("subscriber {i} on {addr}: no SUBACK"),
            }
        }
        let stop = stop.clone();
        subscribers.push(tokio::spawn(async move {
            let _client = client;
            let mut latencies = Vec::new();
            let mut last = Instant::now();
            loop {
                match tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        if p.payload.len() >= 8 {
                            let sent_ns =
                                u64::from_be_bytes(p.payload[..8].try_into().unwrap_or_default());
                            latencies.push(now_ns().saturating_sub(sent_ns) / 1000);
                        }
                        last = Instant::now();
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => break,
                    // Quiet for 500 ms after the publishers stopped: done.
                    Err(_) if stop.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            (latencies, last)
        }));
    }

    let started = Instant::now();
    let mut publishers = Vec::new();
    for i in 0..pairs {
        let topic = format!("bench/{run}/{i}");
        let (client, mut eventloop) =
            AsyncClient::new(options(format!("bench-pub-{run}-{i}"), addr), 1000);
        let sent = sent.clone();
        let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        publishers.push(tokio::spawn(async move {
            let mut payload = vec![0u8; PAYLOAD_BYTES];
            while started.elapsed() < duration {
                payload[..8].copy_from_slice(&now_ns().to_be_bytes());
                if client
                    .publish(&topic, qos, false, payload.clone())
                    .await
                    .is_err()
                {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // Let the event loop flush what is queued, then disconnect.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
        }));
    }
    for p in publishers {
        p.await?;
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut last = started;
    for s in subscribers {
        let (l, t) = s.await?;
        latencies.extend(l);
        last = last.max(t);
    }
    let received = latencies.len() as u64;
    Ok(Figures::from_samples(
        received,
        sent.load(Ordering::Relaxed),
        last.duration_since(started),
        latencies,
    ))
}
