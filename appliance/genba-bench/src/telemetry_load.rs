//! Durable telemetry ingest: D devices, each with its own API key and keep-alive connection,
//! POSTing 4 readings per request to `/api/telemetry`; and the machine's raw SQLite insert rate
//! for the same rows (same schema, WAL, synchronous=FULL) as the physical reference.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;

use crate::Figures;

pub const READINGS_PER_REQUEST: u64 = 4;

fn body(device: &str, ts: u64) -> String {
    let readings: Vec<String> = (0..READINGS_PER_REQUEST)
        .map(|s| format!(r#"{{"sensor_hw_id":"28FF00000000000{s}","raw_celsius":3.5,"offset_c":-0.25,"celsius":3.25}}"#))
        .collect();
    format!(
        r#"{{"device_id":"{device}","recorded_at":"2026-02-15T12:00:00Z","ts_device":{ts},"rssi":-61,"readings":[{}]}}"#,
        readings.join(",")
    )
}

/// Readings/s accepted (2xx) and request latency.
pub async fn run(
    addr: SocketAddr,
    keys: &[(String, String)],
    duration: Duration,
) -> Result<Figures> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (device, key) in keys.iter().cloned() {
        tasks.push(tokio::spawn(async move {
            device_loop(addr, device, key, started, duration).await
        }));
    }
    let (mut ok, mut total, mut latencies) = (0u64, 0u64, Vec::new());
    for t in tasks {
        let (o, n, l) = t.await??;
        ok += o;
        total += n;
        latencies.extend(l);
    }
    let f = Figures::from_samples(ok, total, started.elapsed(), latencies);
    Ok(Figures {
        per_sec: f.per_sec * READINGS_PER_REQUEST as f64,
        ..f
    })
}

async fn device_loop(
    addr: SocketAddr,
    device: String,
    key: String,
    started: Instant,
    duration: Duration,
) -> Result<(u64, u64, Vec<u64>)> {
    let base = 1_771_156_800_000u64;
    crate::http_load::closed_loop(addr, started, duration, |n| {
        Ok(hyper::Request::post("/api/telemetry")
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .header("x-api-key", &key)
            .body(Full::new(Bytes::from(body(&device, base + n))))?)
    })
    .await
}

/// Raw SQLite: the same rows into the same schema, `rows_per_tx` rows per committed transaction.
pub fn raw_sqlite_rate(dir: &Path, rows_per_tx: u64, duration: Duration) -> Result<f64> {
    let path = dir.join(format!("raw-{rows_per_tx}.sqlite3"));
    let mut conn = genba_store::open(&path).context("raw sqlite reference")?;
    let started = Instant::now();
    let mut rows = 0u64;
    while started.elapsed() < duration {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO readings (device_id, recorded_at, ts_device, sensor_hw_id,
                 raw_celsius, offset_c, celsius, rssi, source, received_at)
                 VALUES ('raw-dev', '2026-02-15T12:00:00Z', ?1, ?2, 3.5, -0.25, 3.25, -61, 'bench', 0)",
            )?;
            for i in 0..rows_per_tx {
                let ts = (rows + i) / READINGS_PER_REQUEST;
                stmt.execute(rusqlite::params![
                    ts as i64,
                    format!("28FF00000000000{}", (rows + i) % READINGS_PER_REQUEST)
                ])?;
            }
        }
        tx.commit()?;
        rows += rows_per_tx;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}
