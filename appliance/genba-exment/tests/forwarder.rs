//! The Exment forwarder against the fake Exment: a day's backlog drains with exactly one record
//! per (device, probe, slot) within the request budget; token expiry costs one re-auth; a
//! refused grant is a config error; crashes and timeouts after sending never duplicate; a
//! replay sends nothing new; 500s and 429 recover.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::fake_exment::{FakeExment, Inject, API_KEY, CLIENT_ID, CLIENT_SECRET};
use genba_config::{ExmentConfig, ExmentSecrets};
use genba_exment::Forwarder;
use rand::Rng;

const DAY_START_MS: i64 = 1_771_113_600_000; // 2026-02-15T00:00:00Z
const DEVICES: usize = 10;
const SENSORS: usize = 4;
const SLOTS: usize = 48; // 30-minute slots in a day

fn setup(readings_per_day: bool) -> tempfile::TempDir {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut conn = genba_store::open(&dir.path().join("genba.sqlite3")).unwrap();
    if readings_per_day {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO readings (device_id, recorded_at, ts_device, sensor_hw_id, raw_celsius, offset_c,
                     celsius, rssi, source, received_at) VALUES (?1, '', ?2, ?3, ?4, 0, ?4, -60, 'test', 0)",
                )
                .unwrap();
            for d in 0..DEVICES {
                for s in 0..SENSORS {
                    for m in 0..1440i64 {
                        let c = 3.0 + ((m + d as i64 + s as i64) % 7) as f64 / 4.0;
                        stmt.execute(rusqlite::params![
                            format!("fridge-{d:02}"),
                            DAY_START_MS + m * 60_000,
                            format!("28FF{s:012X}"),
                            c
                        ])
                        .unwrap();
                    }
                }
            }
        }
        tx.commit().unwrap();
    }
    dir
}

fn forwarder(fake: &FakeExment, dir: &tempfile::TempDir, secret: &str) -> Forwarder {
    forwarder_with(fake, dir, secret, ExmentConfig::default())
}

fn forwarder_with(
    fake: &FakeExment,
    dir: &tempfile::TempDir,
    secret: &str,
    cfg: ExmentConfig,
) -> Forwarder {
    let cfg = ExmentConfig {
        base_url: Some(fake.url()),
        timeout_secs: 1,
        ..cfg
    };
    let secrets = ExmentSecrets {
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(secret.into()),
        api_key: Some(API_KEY.into()),
    };
    let mut f = Forwarder::new(&cfg, secrets, dir.path().join("genba.sqlite3")).unwrap();
    f.clock_ms = Some(DAY_START_MS + 25 * 3_600_000);
    f
}

fn assert_exactly_one_per_slot(fake: &FakeExment) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for k in fake.keys() {
        *counts.entry(k).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicates in Exment: {dups:?}");
    assert_eq!(counts.len(), DEVICES * SENSORS * SLOTS);
}

#[tokio::test]
async fn a_days_backlog_drains_once_per_slot_within_budget_and_token_expiry_costs_one_reauth() {
    let fake = FakeExment::start().await;
    fake.state.lock().unwrap().expire_after = Some(7);
    let dir = setup(true);
    let mut f = forwarder(&fake, &dir, CLIENT_SECRET);
    let report = f.drain_once().await.unwrap();
    assert_eq!(report.created, DEVICES * SENSORS * SLOTS);
    assert_exactly_one_per_slot(&fake);
    assert_eq!(
        f.token_requests(),
        2,
        "one grant, and one more after the token expired mid-drain"
    );
    assert_eq!(fake.state.lock().unwrap().token_requests, 2);
    assert!(fake.max_calls_per_minute() <= 60);
    assert_eq!(report.requests, 20, "1,920 records in bulks of 100");
    let status = f.status().unwrap();
    assert_eq!(
        (status.records_due, status.sent, status.unknown),
        (0, 1920, 0)
    );

    // A replay of everything sends nothing new: all 1,920 are found by lookup (20 requests).
    let replay = f.replay(0, None).await.unwrap();
    assert_eq!((replay.created, replay.found_already), (0, 1920));
    assert_exactly_one_per_slot(&fake);
}

#[tokio::test]
async fn a_refused_token_grant_is_a_config_error_and_is_not_retried() {
    let fake = FakeExment::start().await;
    let dir = setup(true);
    let mut f = forwarder(&fake, &dir, "wrong-secret");
    let err = f.drain_once().await.unwrap_err().to_string();
    assert!(
        err.contains("refused the credentials") && err.contains("Client authentication failed"),
        "{err}"
    );
    assert_eq!(
        fake.state.lock().unwrap().token_requests,
        1,
        "no retry loop on the token endpoint"
    );
    assert!(fake.keys().is_empty());
    assert!(
        !err.contains("wrong-secret"),
        "the secret leaked into the error"
    );
}

#[tokio::test]
async fn crashes_and_timeouts_after_sending_never_duplicate_a_record() {
    let fake = FakeExment::start().await;
    let dir = setup(true);
    // The 3rd bulk is stored but answered too late: its outcome is unknown to the forwarder.
    fake.state.lock().unwrap().script.extend([
        Inject::Fail500,
        Inject::Fail500,
        Inject::AcceptThenHang(Duration::from_secs(3)),
    ]);
    let _ = forwarder(&fake, &dir, CLIENT_SECRET).drain_once().await; // 500
    let _ = forwarder(&fake, &dir, CLIENT_SECRET).drain_once().await; // 500
    let _ = forwarder(&fake, &dir, CLIENT_SECRET).drain_once().await; // timeout after storing
                                                                      // Killed at random moments (a restart makes a new forwarder from the database).
    let mut rng = rand::rng();
    for _ in 0..6 {
        let mut f = forwarder(&fake, &dir, CLIENT_SECRET);
        let task =
            tokio::spawn(
                async move { f.drain_once().await.map(|_| ()).map_err(|e| e.to_string()) },
            );
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..120))).await;
        task.abort();
        let _ = task.await;
    }
    let mut f = forwarder(&fake, &dir, CLIENT_SECRET);
    f.drain_once().await.unwrap();
    assert_exactly_one_per_slot(&fake);
    assert_eq!(f.status().unwrap().sent, 1920);
}

#[tokio::test]
async fn a_429_is_waited_out_and_delivery_completes() {
    let fake = FakeExment::start().await;
    let dir = setup(true);
    fake.state.lock().unwrap().rate_limit = 5;
    let mut f = forwarder(&fake, &dir, CLIENT_SECRET);
    // Exment allows 5 a minute here; the forwarder (60/min budget) hits 429 and waits.
    let task = tokio::spawn(async move { f.drain_once().await.map(|r| r.created) });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.keys().len(), 500, "five bulks before the limit");
    assert_eq!(
        fake.state.lock().unwrap().rejected_429,
        1,
        "one 429, then it waits for Retry-After (no storm)"
    );
    fake.state.lock().unwrap().rate_limit = 60;
    task.abort();
    let mut f = forwarder(&fake, &dir, CLIENT_SECRET);
    // Retry-After is honoured: the next run waits for the window before its lookups succeed.
    let _ = tokio::time::timeout(Duration::from_secs(90), f.drain_once()).await;
    assert_exactly_one_per_slot(&fake);
}

#[tokio::test]
async fn an_unknown_table_or_a_missing_scope_parks_the_records_with_exments_reason() {
    let fake = FakeExment::start().await;
    let dir = setup(true);
    let cfg = ExmentConfig {
        table: "no_such_table".into(),
        ..ExmentConfig::default()
    };
    let report = forwarder_with(&fake, &dir, CLIENT_SECRET, cfg)
        .drain_once()
        .await
        .unwrap();
    assert_eq!((report.created, report.refused), (0, 1920));
    let status = forwarder(&fake, &dir, CLIENT_SECRET).status().unwrap();
    assert!(
        status
            .last_error
            .as_ref()
            .is_some_and(|(e, _)| e.contains("HTTP 404")),
        "{status:?}"
    );
    assert_eq!(status.refused, 1920);
    assert!(fake.keys().is_empty());

    let fake = FakeExment::start().await;
    let dir = setup(true);
    let cfg = ExmentConfig {
        scope: "value_read".into(),
        ..ExmentConfig::default()
    };
    let report = forwarder_with(&fake, &dir, CLIENT_SECRET, cfg)
        .drain_once()
        .await
        .unwrap();
    assert_eq!(report.refused, 1920);
    let status = forwarder(&fake, &dir, CLIENT_SECRET).status().unwrap();
    assert!(
        status
            .last_error
            .as_ref()
            .is_some_and(|(e, _)| e.contains("code 106")),
        "{status:?}"
    );
}

#[tokio::test]
async fn exments_bulk_limit_and_validation_errors_are_permanent_refusals() {
    use genba_exment::client::{CallError, Client};
    use genba_exment::slots::Record;
    let fake = FakeExment::start().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let mut tokens = genba_exment::token::Tokens::new(
        &fake.url(),
        "value_write",
        ExmentSecrets {
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(CLIENT_SECRET.into()),
            api_key: Some(API_KEY.into()),
        },
        tempfile::tempdir().unwrap().path().join("t.json"),
    );
    let token = tokens.get(&http).await.unwrap();
    let client = Client {
        http,
        base: fake.url(),
        table: "haccp_temp".into(),
        columns: Default::default(),
    };
    let rec = |i: i64| Record {
        key: format!("d:s:{i}"),
        device_id: "d".into(),
        sensor_hw_id: "s".into(),
        slot_start_ms: i,
        celsius: 4.0,
    };
    let too_many: Vec<Record> = (0..101).map(rec).collect();
    match client.create(&too_many, &token).await {
        Err(CallError::Refused(r)) => assert!(r.contains("code 109"), "{r}"),
        other => panic!("{other:?}"),
    }
    let mut bad = rec(1);
    bad.celsius = f64::NAN; // serialized as null: not a number for Exment
    match client.create(&[bad], &token).await {
        Err(CallError::Refused(r)) => assert!(r.contains("code 103"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.create(&[rec(2)], &token).await, Ok(()));
    assert_eq!(fake.keys(), vec!["d:s:2".to_string()]);
}
