//! The device platform under load (`genba-bench --platform`):
//!   (d) generic telemetry over MQTT into streams with 100 rules active: values/s accepted and
//!       stored, the telemetry consumer's lag, beside a raw SQLite insert of the same values;
//!   (e) `/v2/stream` over one year of per-minute data for 40 streams (generated straight into
//!       the store's tables): p50/p99 of a 24 h chart and a one-year daily aggregate, the
//!       database size per year, and `genba up`'s memory on it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::{http_load, ms, peers, Figures};

const DEVICES: usize = 10;
const FIELDS: usize = 20;
const RULES: usize = 100;

fn rules_config() -> String {
    (0..RULES)
        .map(|i| {
            format!(
                "[[rules]]\nname = \"bench-{i}\"\nstream = \"f{}\"\ncondition = \">\"\nthreshold = 95.0\nhysteresis = 10.0\nfor_secs = 30\n",
                i % FIELDS
            )
        })
        .collect()
}

fn sink_lag(db: &std::path::Path) -> Result<(i64, i64)> {
    let conn = rusqlite::Connection::open(db)?;
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM journal", [], |r| r.get(0))?;
    let cursor: i64 = conn.query_row(
        "SELECT COALESCE((SELECT cursor FROM sinks WHERE name = 'readings'), 0)",
        [],
        |r| r.get(0),
    )?;
    Ok((last, cursor))
}

/// One device publishing QoS 1 messages of [`FIELDS`] values as fast as its window allows.
async fn device_load(addr: std::net::SocketAddr, device: usize, duration: Duration) -> Result<u64> {
    let mut opts = MqttOptions::new(
        format!("bench-platform-{device}"),
        addr.ip().to_string(),
        addr.port(),
    );
    opts.set_inflight(100);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 200);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = acked.clone();
    let poller = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let started = Instant::now();
    let base = chrono_now_ms() - 3_600_000;
    let mut n: i64 = 0;
    while started.elapsed() < duration {
        let mut body = serde_json::Map::new();
        body.insert("ts".into(), serde_json::json!(base + n));
        for f in 0..FIELDS {
            body.insert(
                format!("f{f}"),
                serde_json::json!(((n as usize * 7 + f * 13) % 100) as f64),
            );
        }
        client
            .publish(
                format!("devices/bench-{device}/telemetry"),
                QoS::AtLeastOnce,
                false,
                serde_json::Value::Object(body).to_string(),
            )
            .await?;
        n += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = client.disconnect().await;
    poller.abort();
    Ok(acked.load(std::sync::atomic::Ordering::Relaxed))
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Rows/s of a plain SQLite table (stream, time, value) taking the same values in
/// transactions of 500 rows (WAL, synchronous=FULL): the floor any store on this card has.
fn raw_points_rate(dir: &std::path::Path, rows: u64) -> Result<f64> {
    let path = dir.join("raw-points.sqlite3");
    let mut conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE p (s INTEGER NOT NULL, at INTEGER NOT NULL, v REAL, PRIMARY KEY (s, at)) WITHOUT ROWID;",
    )?;
    let started = Instant::now();
    let mut done = 0u64;
    while done < rows {
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached("INSERT INTO p (s, at, v) VALUES (?1, ?2, ?3)")?;
            for i in 0..500u64 {
                let k = done + i;
                st.execute(rusqlite::params![
                    (k % 200) as i64,
                    (k / 200) as i64,
                    (k % 100) as f64
                ])?;
            }
        }
        tx.commit()?;
        done += 500;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

pub async fn ingest(bin: &str, seconds: Duration) -> Result<()> {
    let genba = peers::Genba::start_with(bin, &rules_config(), tempfile::tempdir()?).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let db = genba.dir().join("genba.sqlite3");
    let started = Instant::now();
    let loads: Vec<_> = (0..DEVICES)
        .map(|d| tokio::spawn(device_load(genba.mqtt, d, seconds)))
        .collect();
    let mut messages = 0;
    for l in loads {
        messages += l.await??;
    }
    let load_time = started.elapsed();
    let (last, cursor) = sink_lag(&db)?;
    let lag_rows = last - cursor;
    let drain_started = Instant::now();
    loop {
        let (last, cursor) = sink_lag(&db)?;
        if cursor >= last || drain_started.elapsed() > Duration::from_secs(600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain = drain_started.elapsed();
    let conn = rusqlite::Connection::open(&db)?;
    let points: i64 = conn.query_row("SELECT COUNT(*) FROM points", [], |r| r.get(0))?;
    let alarms: i64 = conn.query_row("SELECT COUNT(*) FROM alarms", [], |r| r.get(0))?;
    let values = messages * FIELDS as u64;
    let raw_dir = tempfile::tempdir()?;
    let raw = raw_points_rate(raw_dir.path(), values.clamp(50_000, 2_000_000))?;
    println!(
        "## (d) generic telemetry into streams: {DEVICES} MQTT devices x {FIELDS} fields per message, QoS 1, {RULES} rules active, {}s",
        seconds.as_secs()
    );
    println!();
    println!("| figure | value |");
    println!("|---|---:|");
    println!("| messages acknowledged | {messages} |");
    println!(
        "| values accepted/s (acknowledged, journaled) | {:.0} |",
        values as f64 / load_time.as_secs_f64()
    );
    println!(
        "| consumer lag when the load stopped | {lag_rows} messages ({} values) |",
        lag_rows * FIELDS as i64
    );
    println!(
        "| time to catch up after the load | {:.1} s |",
        drain.as_secs_f64()
    );
    println!(
        "| values stored and judged/s (load + catch-up) | {:.0} |",
        points as f64 / (load_time + drain).as_secs_f64()
    );
    println!("| points stored / values sent | {points} / {values} |");
    println!("| alarms raised by the rules | {alarms} |");
    println!(
        "| raw SQLite reference: plain (stream, time, value) rows/s, 500 per commit | {raw:.0} |"
    );
    println!();
    Ok(())
}

const STREAMS: i64 = 40;
const YEAR_MINUTES: i64 = 525_600;
const RAW_DAYS: i64 = 30;

/// Fills a fresh data directory's store with a year of per-minute rollups, the hourly ones,
/// and 30 days of raw per-minute points for [`STREAMS`] streams ending now.
fn generate(dir: &std::path::Path) -> Result<(i64, Duration)> {
    let started = Instant::now();
    let db = dir.join("genba.sqlite3");
    let mut conn = genba_store::open(&db)?;
    conn.execute_batch("PRAGMA synchronous=OFF")?;
    let now = chrono_now_ms();
    let end = now - now.rem_euclid(60_000);
    let start = end - YEAR_MINUTES * 60_000;
    let tx = conn.transaction()?;
    for d in 0..STREAMS / 4 {
        tx.execute(
            "INSERT INTO devices (id, channel, provisioned, created_at, last_seen_at) VALUES (?1, ?2, 'manual', ?3, ?4)",
            rusqlite::params![format!("fridge-{d}"), d + 1, start, end],
        )?;
        for s in 0..4 {
            tx.execute(
                "INSERT INTO streams (device_id, name, kind, unit, created_at, last_at, last_value) VALUES (?1, ?2, 'number', '°C', ?3, ?4, 4.0)",
                rusqlite::params![format!("fridge-{d}"), format!("probe-{s}"), start, end],
            )?;
        }
    }
    tx.commit()?;
    let mut rows = 0i64;
    for stream in 1..=STREAMS {
        let tx = conn.transaction()?;
        {
            let mut minute = tx.prepare_cached(
                "INSERT INTO rollups (stream_id, period, bucket, count, min, max, sum) VALUES (?1, 60000, ?2, 1, ?3, ?3, ?3)",
            )?;
            let mut point =
                tx.prepare_cached("INSERT INTO points (stream_id, at, value) VALUES (?1, ?2, ?3)")?;
            let mut hour = tx.prepare_cached(
                "INSERT INTO rollups (stream_id, period, bucket, count, min, max, sum) VALUES (?1, 3600000, ?2, 60, ?3, ?4, ?5)",
            )?;
            let (mut hmin, mut hmax, mut hsum) = (f64::MAX, f64::MIN, 0.0);
            for m in 0..YEAR_MINUTES {
                let at = start + m * 60_000;
                let v = 4.0 + ((m * 7 + stream * 11) % 40) as f64 / 10.0;
                minute.execute(rusqlite::params![stream, at, v])?;
                if at >= end - RAW_DAYS * 86_400_000 {
                    point.execute(rusqlite::params![stream, at, v])?;
                    rows += 1;
                }
                (hmin, hmax, hsum) = (hmin.min(v), hmax.max(v), hsum + v);
                if (m + 1) % 60 == 0 {
                    hour.execute(rusqlite::params![
                        stream,
                        at - 59 * 60_000,
                        hmin,
                        hmax,
                        hsum
                    ])?;
                    (hmin, hmax, hsum) = (f64::MAX, f64::MIN, 0.0);
                    rows += 1;
                }
                rows += 1;
            }
        }
        tx.commit()?;
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    Ok((rows, started.elapsed()))
}

async fn query_figures(
    genba: &peers::Genba,
    tokens: &[String],
    path: impl Fn(u64) -> String,
    duration: Duration,
) -> Result<Figures> {
    let started = Instant::now();
    let tokens = tokens.to_vec();
    let first = path(0);
    let (ok, n, lat) = http_load::closed_loop(genba.http, started, duration, |i| {
        Ok(hyper::Request::get(path(i))
            .header("host", "bench")
            .header("x-apitoken", &tokens[i as usize % tokens.len()])
            .body(Full::new(Bytes::new()))?)
    })
    .await
    .with_context(|| format!("GET {first} ..."))?;
    Ok(Figures::from_samples(ok, n, started.elapsed(), lat))
}

pub async fn streams(bin: &str, seconds: Duration) -> Result<()> {
    let dir = tempfile::tempdir()?;
    println!("## (e) /v2/stream over one year of per-minute data, {STREAMS} streams (generated)");
    println!();
    let (rows, took) = generate(dir.path()).context("generating a year of data")?;
    let size = std::fs::metadata(dir.path().join("genba.sqlite3"))?.len();
    let genba = peers::Genba::start_with(bin, "", dir).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Ok(keep) = std::env::var("GENBA_BENCH_KEEP") {
        let _ = std::fs::copy(genba.dir().join("genba.sqlite3"), keep);
    }
    let idle = peers::rss_kib(genba.pid())?;
    let tokens = genba.api_tokens(60)?;
    let now = chrono_now_ms();
    let day_ago = now - 86_400_000;
    let year_ago = now - 365 * 86_400_000;
    let chart = query_figures(
        &genba,
        &tokens,
        |i| {
            format!(
                "/v2/stream/fridge-{}/probe-{}?start={day_ago}&end={now}&aggregate=avg&resolution=minute&sort=asc",
                i % 10,
                i % 4
            )
        },
        seconds,
    )
    .await?;
    let raw24 = query_figures(
        &genba,
        &tokens,
        |i| {
            format!(
                "/v2/stream/fridge-{}/probe-{}?start={day_ago}&end={now}&limit=2000&sort=asc",
                i % 10,
                i % 4
            )
        },
        seconds,
    )
    .await?;
    let yearly = query_figures(
        &genba,
        &tokens,
        |i| {
            format!(
                "/v2/stream/fridge-{}/probe-{}?start={year_ago}&end={now}&aggregate=max&resolution=day&sort=asc",
                i % 10,
                i % 4
            )
        },
        seconds,
    )
    .await?;
    let after = peers::rss_kib(genba.pid())?;
    println!("| query | req/s | p50 ms | p99 ms | 2xx |");
    println!("|---|---:|---:|---:|---:|");
    for (name, f) in [
        ("24 h chart: 1,440 per-minute buckets (rollups)", chart),
        ("24 h raw points (1,440 rows)", raw24),
        (
            "one year, daily max: 365 buckets from 8,760 hourly rollups",
            yearly,
        ),
    ] {
        println!(
            "| {name} | {:.0} | {} | {} | {:.1}% |",
            f.per_sec,
            ms(f.p50_us),
            ms(f.p99_us),
            f.delivered * 100.0
        );
    }
    println!();
    println!(
        "Generated {rows} rows ({STREAMS} streams: a year of per-minute and hourly rollups, {RAW_DAYS} days of raw points) in {:.0} s; database {:.0} MiB, i.e. {:.1} MiB per stream-year.",
        took.as_secs_f64(),
        size as f64 / 1048576.0,
        size as f64 / 1048576.0 / STREAMS as f64
    );
    println!(
        "genba up on it: {:.1} MiB resident after start, {:.1} MiB after the queries.",
        idle as f64 / 1024.0,
        after as f64 / 1024.0
    );
    Ok(())
}
