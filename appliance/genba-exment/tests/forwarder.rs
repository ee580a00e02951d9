//! The Exment forwarder against the fake Exment: a day's backlog drains with exactly one record
//! per (device, probe, slot) within the request budget; token expiry costs one re-auth; a
//! refused grant is a config error; crashes and timeouts after sending never duplicate; a
//! replay sends nothing new; 500s and 429 recover.

use std::collections::HashMap;
use std::time::Duration;

use genba_config::{ExmentConfig, ExmentSecrets};
use genba_exment::{ExmentError, Forwarder};
use genba_testkit::fake_exment::{
    FakeExment, Inject, TokenInject, API_KEY, CLIENT_ID, CLIENT_SECRET,
};
use rand::Rng;

const DAY_START_MS: i64 = 1_771_113_600_000; // 2026-02-15T00:00:00Z
const DEVICES: usize = 10;
const SENSORS: usize = 4;
const SLOTS: usize = 48; // 30-minute slots in a day

fn setup(readings_per_day: bool) -> tempfile::TempDir {
    let dir = empty_db();
    if readings_per_day {
        add_readings(&dir, DEVICES, SENSORS, 1440, |d| format!("fridge-{d:02}"));
    }
    dir
}

fn empty_db() -> tempfile::TempDir {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    genba_store::open(&dir.path().join("genba.sqlite3")).unwrap();
    dir
}

/// A reading a minute from DAY_START_MS for `minutes` minutes per device and probe.
fn add_readings(
    dir: &tempfile::TempDir,
    devices: usize,
    sensors: usize,
    minutes: i64,
    name: impl Fn(usize) -> String,
) {
    add_readings_from(dir, devices, sensors, 0, minutes, name)
}

fn add_readings_from(
    dir: &tempfile::TempDir,
    devices: usize,
    sensors: usize,
    from_minute: i64,
    minutes: i64,
    name: impl Fn(usize) -> String,
) {
    let mut conn = genba_store::open(&dir.path().join("genba.sqlite3")).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO readings (device_id, recorded_at, ts_device, sensor_hw_id, raw_celsius, offset_c,
                 celsius, rssi, source, received_at) VALUES (?1, '', ?2, ?3, ?4, 0, ?4, -60, 'test', 0)",
            )
            .unwrap();
        for d in 0..devices {
            for s in 0..sensors {
                for m in from_minute..from_minute + minutes {
                    let c = 3.0 + ((m + d as i64 + s as i64) % 7) as f64 / 4.0;
                    stmt.execute(rusqlite::params![
                        name(d),
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
    // A create whose answer was lost is looked up once the 1 s timeout has passed (the fake
    // stores before answering unless a test says otherwise).
    f.in_flight_margin = Duration::ZERO;
    f
}

/// Drains until nothing is left in flight or unknown (a create whose answer was lost is looked
/// up only after the timeout and the margin).
async fn drain_until_settled(f: &mut Forwarder) {
    for _ in 0..100 {
        let report = f.drain_once().await;
        let status = f.status().unwrap();
        if report.is_ok_and(|r| r.in_flight == 0) && status.unknown == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("still in flight: {:?}", f.status().unwrap());
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
    let fake = FakeExment::start();
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
    let fake = FakeExment::start();
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
    let fake = FakeExment::start();
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
    drain_until_settled(&mut f).await;
    assert_exactly_one_per_slot(&fake);
    assert_eq!(f.status().unwrap().sent, 1920);
}

#[tokio::test]
async fn a_429_is_waited_out_and_delivery_completes() {
    let fake = FakeExment::start();
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
    let _ = tokio::time::timeout(Duration::from_secs(150), drain_until_settled(&mut f)).await;
    assert_exactly_one_per_slot(&fake);
}

#[tokio::test]
async fn an_unknown_table_or_a_missing_scope_parks_the_records_with_exments_reason() {
    let fake = FakeExment::start();
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

    let fake = FakeExment::start();
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
    let fake = FakeExment::start();
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
        redact: Default::default(),
        time_zone: chrono_tz::UTC,
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

#[tokio::test]
async fn token_endpoint_429_other_4xx_and_5xx_are_retried_not_taken_as_refused_credentials() {
    let fake = FakeExment::start();
    let dir = empty_db();
    add_readings(&dir, 1, 1, 120, |_| "fridge-00".into());
    fake.state.lock().unwrap().token_script.extend([
        TokenInject::Answer(429, r#"{"message":"Too Many Attempts."}"#.into(), Some(1)),
        TokenInject::Answer(
            400,
            "<html><h1>400 Bad Request</h1>nginx</html>".into(),
            None,
        ),
        TokenInject::Answer(503, r#"{"message":"Service Unavailable"}"#.into(), None),
    ]);
    let mut f = forwarder(&fake, &dir, CLIENT_SECRET);
    // The 429 is waited out (Retry-After: 1) within the drain; the proxy's 400 then fails it.
    let first = f.drain_once().await.unwrap_err();
    assert!(matches!(first, ExmentError::Unavailable(_)), "{first}");
    assert!(first.to_string().contains("HTTP 400"), "{first}");
    let second = f.drain_once().await.unwrap_err();
    assert!(matches!(second, ExmentError::Unavailable(_)), "{second}");
    let third = f.drain_once().await.unwrap();
    assert_eq!(third.created, 4, "two hours of 30-minute slots");
    assert_eq!(fake.state.lock().unwrap().token_requests, 4);
    assert_eq!(fake.keys().len(), 4);
}

#[tokio::test]
async fn a_documented_credential_refusal_in_the_stock_passport_shape_is_a_config_error() {
    let fake = FakeExment::start();
    let dir = empty_db();
    add_readings(&dir, 1, 1, 60, |_| "fridge-00".into());
    fake.state.lock().unwrap().token_script.push_back(TokenInject::Answer(
        400,
        r#"{"error":"invalid_grant","error_description":"The user credentials were incorrect.","message":"The user credentials were incorrect."}"#.into(),
        None,
    ));
    let err = forwarder(&fake, &dir, CLIENT_SECRET)
        .drain_once()
        .await
        .unwrap_err();
    assert!(matches!(err, ExmentError::Credentials(_)), "{err}");
    assert!(err.to_string().contains("invalid_grant"), "{err}");
}

/// A tracing writer into a shared buffer (what the journal would get).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn database_bytes(dir: &tempfile::TempDir) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["genba.sqlite3", "genba.sqlite3-wal"] {
        all.extend(std::fs::read(dir.path().join(name)).unwrap_or_default());
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_proxy_echoing_the_request_leaks_no_secret_into_log_status_or_database() {
    let fake = FakeExment::start();
    let dir = empty_db();
    add_readings(&dir, 1, 1, 60, |_| "fridge-00".into());
    {
        let mut st = fake.state.lock().unwrap();
        st.token_script.push_back(TokenInject::EchoRequest(502));
        st.script.push_back(Inject::EchoRequest(502));
    }
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let f = forwarder(&fake, &dir, CLIENT_SECRET);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(f.run(stopped));
    // The token grant is echoed, then (after a backoff) the bulk create with its bearer token.
    for _ in 0..200 {
        if fake.state.lock().unwrap().echoed == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.state.lock().unwrap().echoed, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    run.await.unwrap().unwrap();

    let status = forwarder(&fake, &dir, CLIENT_SECRET).status().unwrap();
    let (last_error, _) = status.last_error.clone().unwrap();
    assert!(last_error.contains("HTTP 502"), "{last_error}");
    assert!(last_error.chars().count() <= 200, "{last_error}");
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("502"), "the failures are logged: {log}");
    let token = "eyJ0eXAiOiJKV1Q.fake.1"; // the fake's first access token
    let db = database_bytes(&dir);
    let status_json = serde_json::to_string(&status).unwrap();
    for secret in [CLIENT_SECRET, API_KEY, token] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
        assert!(
            !status_json.contains(secret),
            "{secret} in the status: {status_json}"
        );
        assert!(!contains(&db, secret), "{secret} in the database");
    }
    assert!(status_json.contains("[redacted]"), "{status_json}");
}

#[tokio::test]
async fn an_idle_drain_keeps_the_last_success() {
    let fake = FakeExment::start();
    let dir = empty_db();
    add_readings(&dir, 1, 1, 60, |_| "fridge-00".into());
    let mut f = forwarder(&fake, &dir, CLIENT_SECRET);
    assert_eq!(f.drain_once().await.unwrap().created, 2);
    let success = f.status().unwrap().last_success.unwrap();
    assert!(success.0.starts_with("2 created"), "{success:?}");
    let idle = f.drain_once().await.unwrap();
    assert_eq!((idle.created, idle.found_already), (0, 0));
    assert_eq!(f.status().unwrap().last_success.unwrap(), success);
}

fn add_reading(dir: &tempfile::TempDir, device: &str, sensor: usize, ts: i64, celsius: f64) {
    let conn = genba_store::open(&dir.path().join("genba.sqlite3")).unwrap();
    conn.execute(
        "INSERT INTO readings (device_id, recorded_at, ts_device, sensor_hw_id, raw_celsius, offset_c,
         celsius, rssi, source, received_at) VALUES (?1, '', ?2, ?3, ?4, 0, ?4, -60, 'test', 0)",
        rusqlite::params![device, ts, format!("28FF{sensor:012X}"), celsius],
    )
    .unwrap();
}

fn assert_no_duplicates(fake: &FakeExment) {
    let keys = fake.keys();
    let unique: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "duplicates in Exment: {keys:?}");
}

#[tokio::test]
async fn a_create_exment_stores_after_the_timeout_is_found_by_a_later_lookup_not_sent_twice() {
    let fake = FakeExment::start();
    let dir = empty_db();
    add_readings(&dir, 1, 1, 120, |_| "fridge-00".into());
    // Exment takes 2 s to store the bulk: the forwarder (1 s timeout) gives up first.
    fake.state
        .lock()
        .unwrap()
        .script
        .push_back(Inject::HangThenStore(Duration::from_secs(2)));
    let mut f = forwarder(&fake, &dir, CLIENT_SECRET);
    f.in_flight_margin = Duration::from_secs(3);
    let timed_out = f.drain_once().await.unwrap_err();
    assert!(
        matches!(timed_out, ExmentError::Unavailable(_)),
        "{timed_out}"
    );
    assert_eq!(
        fake.state.lock().unwrap().late_rows,
        4,
        "received, not stored yet"
    );

    // At once after the timeout the create may still be in flight: no lookup, no re-send.
    let early = f.drain_once().await.unwrap();
    assert_eq!((early.in_flight, early.requests, early.created), (4, 0, 0));

    // Exment stores the request late; the lookup after the window finds every record.
    for _ in 0..100 {
        if fake.state.lock().unwrap().late_rows == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.keys().len(), 4);
    drain_until_settled(&mut f).await;
    assert_no_duplicates(&fake);
    assert_eq!(fake.keys().len(), 4);
    let status = f.status().unwrap();
    assert_eq!((status.sent, status.unknown, status.records_due), (4, 0, 0));
}

#[tokio::test]
async fn the_request_budget_keeps_a_margin_and_is_shared_by_processes_and_replay() {
    let fake = FakeExment::start();
    let dir = empty_db();
    add_readings(&dir, 1, 1, 240, |_| "fridge-00".into()); // 8 slots
    let cfg = || ExmentConfig {
        max_rows_per_request: 1,
        max_requests_per_minute: 5, // 90%: 4 a minute
        ..ExmentConfig::default()
    };
    // One process sends what the budget allows, then waits for the minute to pass.
    let mut first = forwarder_with(&fake, &dir, CLIENT_SECRET, cfg());
    let _ = tokio::time::timeout(Duration::from_secs(3), first.drain_once()).await;
    drop(first);
    assert_eq!(fake.state.lock().unwrap().calls.len(), 4);
    // A restarted forwarder and a `replay` in another process find the minute's budget spent.
    let mut second = forwarder_with(&fake, &dir, CLIENT_SECRET, cfg());
    let _ = tokio::time::timeout(Duration::from_secs(2), second.drain_once()).await;
    let mut replay = forwarder_with(&fake, &dir, CLIENT_SECRET, cfg());
    let _ = tokio::time::timeout(Duration::from_secs(2), replay.replay(0, None)).await;
    assert_eq!(fake.state.lock().unwrap().calls.len(), 4);
    assert!(fake.max_calls_per_minute() <= 4);
    assert_eq!(fake.keys().len(), 4);
}

#[tokio::test]
async fn lookups_of_long_keys_stay_under_the_url_limit_and_a_414_halves_them() {
    let fake = FakeExment::start();
    let dir = empty_db();
    // 25 devices with 32-character ids, 4 slots each: 100 unique keys.
    add_readings(&dir, 25, 1, 120, |d| format!("walk-in-freezer-{d:016}"));
    let mut f = forwarder(&fake, &dir, CLIENT_SECRET);
    assert_eq!(f.drain_once().await.unwrap().created, 100);

    // Behind Apache's default request-line limit, no lookup is refused.
    fake.state.lock().unwrap().max_url_len = Some(8190);
    let replay = f.replay(0, None).await.unwrap();
    assert_eq!((replay.found_already, replay.created), (100, 0));
    {
        let st = fake.state.lock().unwrap();
        assert_eq!(st.rejected_414, 0);
        assert!(st.lookup_urls.len() >= 3, "{}", st.lookup_urls.len());
        assert!(st.lookup_urls.iter().all(|u| u.len() <= 4000));
    }

    // A stricter proxy answers 414: the lookups are halved until they pass.
    fake.state.lock().unwrap().max_url_len = Some(1500);
    let replay = f.replay(0, None).await.unwrap();
    assert_eq!((replay.found_already, replay.created), (100, 0));
    assert!(fake.state.lock().unwrap().rejected_414 > 0);
    assert_no_duplicates(&fake);
    assert_eq!(fake.keys().len(), 100);
}

#[tokio::test]
async fn a_drain_reads_only_new_readings_and_old_sent_rows_are_pruned_without_duplicates() {
    let fake = FakeExment::start();
    let dir = empty_db();
    add_readings(&dir, 2, 2, 1440, |d| format!("fridge-{d:02}"));
    let mut f = forwarder(&fake, &dir, CLIENT_SECRET);
    let first = f.drain_once().await.unwrap();
    assert_eq!(first.created, 2 * 2 * 48);
    assert_eq!(
        first.readings_read,
        2 * 5760,
        "each reading once, then per closed slot"
    );

    let idle = f.drain_once().await.unwrap();
    assert_eq!((idle.readings_read, idle.requests), (0, 0));

    // One new reading in a new (closed) slot: read once past the cursor, once for its slot.
    add_reading(&dir, "fridge-00", 0, DAY_START_MS + 1440 * 60_000, 4.0);
    let one = f.drain_once().await.unwrap();
    assert_eq!((one.readings_read, one.created), (2, 1));

    // 40 days on, the sent rows are pruned...
    let mut later = forwarder(&fake, &dir, CLIENT_SECRET);
    later.clock_ms = Some(DAY_START_MS + 40 * 86_400_000);
    let pruned = later.drain_once().await.unwrap();
    assert_eq!(pruned.requests, 0);
    assert_eq!(later.status().unwrap().sent, 0);
    // ...and a late reading for one of those slots is looked up, not sent again.
    add_reading(&dir, "fridge-01", 1, DAY_START_MS + 30_000, 9.0);
    let late = later.drain_once().await.unwrap();
    assert_eq!((late.found_already, late.created), (1, 0));
    assert_no_duplicates(&fake);
    assert_eq!(fake.keys().len(), 193);
}

#[tokio::test]
async fn records_parked_for_a_wrong_table_arrive_once_after_the_config_is_fixed_and_retried() {
    let fake = FakeExment::start();
    let dir = empty_db();
    add_readings(&dir, 1, 1, 120, |_| "fridge-00".into());
    let wrong = || ExmentConfig {
        table: "haccp_tmp".into(),
        ..ExmentConfig::default()
    };
    let parked = forwarder_with(&fake, &dir, CLIENT_SECRET, wrong())
        .drain_once()
        .await
        .unwrap();
    assert_eq!(parked.refused, 4);
    // The table name is fixed; `genba exment retry` sends the parked records.
    let mut fixed = forwarder(&fake, &dir, CLIENT_SECRET);
    let (requeued, report) = fixed.retry(None).await.unwrap();
    assert_eq!((requeued, report.created), (4, 4));
    let status = fixed.status().unwrap();
    assert_eq!((status.sent, status.refused, status.records_due), (4, 0, 0));
    // Retrying again (or draining) sends nothing more.
    let (requeued, again) = fixed.retry(None).await.unwrap();
    assert_eq!((requeued, again.created, again.requests), (0, 0, 0));
    assert_no_duplicates(&fake);
    assert_eq!(fake.keys().len(), 4);
}

#[tokio::test]
async fn replay_resends_records_parked_for_a_missing_scope_once_the_scope_is_fixed() {
    let fake = FakeExment::start();
    let dir = empty_db();
    add_readings(&dir, 1, 1, 120, |_| "fridge-00".into());
    let read_only = ExmentConfig {
        scope: "value_read".into(),
        ..ExmentConfig::default()
    };
    let mut f = forwarder_with(&fake, &dir, CLIENT_SECRET, read_only);
    assert_eq!(f.drain_once().await.unwrap().refused, 4);
    let mut fixed = forwarder(&fake, &dir, CLIENT_SECRET);
    let replay = fixed.replay(0, None).await.unwrap();
    assert_eq!((replay.created, replay.found_already), (4, 0));
    assert!(replay.requests > 0);
    assert_no_duplicates(&fake);
    assert_eq!(fake.keys().len(), 4);
}

#[tokio::test]
async fn a_wrong_secret_keeps_the_forwarder_running_with_a_long_backoff_and_shows_in_store_status()
{
    let fake = FakeExment::start();
    let dir = empty_db();
    add_readings(&dir, 1, 1, 120, |_| "fridge-00".into());
    let f = forwarder(&fake, &dir, "wrong-secret");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(f.run(stopped));
    let reader = genba_store::Reader::open(&dir.path().join("genba.sqlite3")).unwrap();
    let mut status = reader.exment_status().unwrap();
    for _ in 0..100 {
        if status.state.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = reader.exment_status().unwrap();
    }
    // Still running: no restart loop (the watchdog's 2 token requests a minute), one request.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !run.is_finished(),
        "the forwarder stopped on a credential error"
    );
    assert_eq!(fake.state.lock().unwrap().token_requests, 1);
    assert_eq!(status.state.as_deref(), Some("credentials refused"));
    assert_eq!(status.records_due, Some(4));
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("Client authentication failed"), "{error}");
    assert!(!error.contains("wrong-secret"), "{error}");
    stop.send(true).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_tokyo_shop_gets_its_check_slot_in_japan_time_and_utc_stays_as_before() {
    // The 07:05 check on 1 December in Japan is 22:05 UTC on 30 November.
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-30T22:05:00Z")
        .unwrap()
        .timestamp_millis();
    for (zone, expected) in [
        ("Asia/Tokyo", "2026-12-01 07:05:00"),
        ("UTC", "2026-11-30 22:05:00"),
    ] {
        let fake = FakeExment::start();
        let dir = empty_db();
        add_reading(&dir, "fridge-00", 0, at + 20_000, 4.0);
        let cfg = ExmentConfig {
            slot_minutes: 5,
            time_zone: zone.parse().unwrap(),
            ..ExmentConfig::default()
        };
        let mut f = forwarder_with(&fake, &dir, CLIENT_SECRET, cfg);
        f.clock_ms = Some(at + 3_600_000);
        assert_eq!(f.drain_once().await.unwrap().created, 1);
        let stored = fake.state.lock().unwrap().records[0].clone();
        assert_eq!(stored["check_slot"], expected, "{zone}");
        assert_eq!(
            stored["unique_key"],
            "fridge-00:28FF000000000000:2026-11-30T22:05:00Z"
        );
    }
}

#[tokio::test]
async fn the_sink_test_checks_credentials_table_and_scope_without_creating_or_noting_anything() {
    let fake = FakeExment::start();
    let dir = setup(true);
    forwarder(&fake, &dir, CLIENT_SECRET).check().await.unwrap();
    assert!(fake.keys().is_empty(), "a test creates nothing");

    // A fresh data dir: the first forwarder's token is cached in the other one.
    let err = forwarder(&fake, &setup(true), "wrong-secret")
        .check()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Client authentication failed"), "{err}");
    assert!(!err.contains("wrong-secret"), "the secret leaked: {err}");

    let cfg = ExmentConfig {
        table: "no_such_table".into(),
        ..ExmentConfig::default()
    };
    let err = forwarder_with(&fake, &dir, CLIENT_SECRET, cfg)
        .check()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("HTTP 404"), "{err}");
    let status = forwarder(&fake, &dir, CLIENT_SECRET).status().unwrap();
    assert!(
        status.last_error.is_none(),
        "a test notes nothing: {status:?}"
    );
    assert_eq!((status.sent, status.refused), (0, 0));
    assert!(fake.keys().is_empty());
}
