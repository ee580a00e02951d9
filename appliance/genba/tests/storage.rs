//! The database's storage budget (docs/storage.md): above it the oldest rows every sink has
//! passed are pruned whatever their age; when sinks still hold them new data is refused with a
//! clear answer, nothing accepted is lost, `/health` says so and an alarm is journaled; a
//! bigger budget brings everything back.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::http::Http;
use common::mqtt_raw::{connect_packet, publish, read_packet};
use common::{wait_until, Appliance};

const BODY_BYTES: usize = 2000;

fn message(i: usize) -> String {
    serde_json::json!({"message": format!("{i:06} {}", "x".repeat(BODY_BYTES))}).to_string()
}

fn used_bytes(a: &Appliance) -> i64 {
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    conn.query_row(
        "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// Publishes with QoS 1 over MQTT 3.1.1; whether the broker acknowledged it (`false`: it closed
/// the connection without a PUBACK, so the client keeps the message).
fn mqtt_publish_acknowledged(a: &Appliance, topic: &str) -> bool {
    let mut s = TcpStream::connect(a.mqtt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&connect_packet(4, "budget-test")).unwrap();
    assert_eq!(
        read_packet(&mut s),
        Some((0x20, vec![0, 0])),
        "CONNACK accepted"
    );
    s.write_all(&publish(4, topic.as_bytes(), 1, 7, b"reading"))
        .unwrap();
    match read_packet(&mut s) {
        Some((0x40, body)) => {
            assert_eq!(body, vec![0, 7], "PUBACK for another packet id");
            true
        }
        None => false,
        Some(other) => panic!("unexpected packet {other:?}"),
    }
}

/// (sink, cursor) of every journal consumer: the lowest is as far as pruning may go.
fn sink_cursors(a: &Appliance) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    let mut stmt = conn.prepare("SELECT name, cursor FROM sinks").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn storage_alarms(a: &Appliance) -> Vec<String> {
    a.journal()
        .into_iter()
        .filter(|(t, _)| t == "alarms/genba/storage")
        .map(|(_, p)| {
            let v: serde_json::Value = serde_json::from_str(&p).unwrap();
            v["state"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn over_the_budget_the_oldest_delivered_rows_are_pruned_whatever_their_age() {
    let a = Appliance::start("[store]\nmax_mb = 1\ncheck_secs = 1\n", "");
    let h = Http::new();
    // 3 MB of messages into a 1 MiB budget. Faster than the once-a-second check prunes, a
    // message may meet a full database: it is refused (507) and, as a client would after
    // Retry-After, sent again a little later. Every one is taken in the end.
    let mut accepted = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for i in 0..1500 {
        loop {
            let r = h.post(&a.url("/notify"), "application/json", message(i), &[]);
            match r.status {
                200 => break,
                507 if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                other => panic!(
                    "message {i}: {other} {}; sinks {:?}; log:\n{}",
                    r.json,
                    sink_cursors(&a),
                    a.log()
                ),
            }
        }
        accepted.push(i);
    }
    assert!(
        wait_until(Duration::from_secs(20), || used_bytes(&a) <= 1024 * 1024),
        "the database stays at {} bytes over its 1 MiB budget",
        used_bytes(&a)
    );
    let journal = a.journal();
    let kept: Vec<&String> = journal
        .iter()
        .filter(|(t, _)| t.starts_with("notify"))
        .map(|(_, p)| p)
        .collect();
    assert!(
        kept.len() < accepted.len(),
        "nothing was pruned ({} rows)",
        kept.len()
    );
    let last = format!("{:06} ", accepted.last().unwrap());
    assert!(
        kept.last().is_some_and(|p| p.contains(&last)),
        "the newest message must survive pruning"
    );
    assert!(a.log().contains("pruned the oldest rows"), "{}", a.log());
}

#[test]
fn rows_no_sink_has_passed_are_kept_and_new_http_and_mqtt_data_is_refused_loudly_until_the_budget_grows(
) {
    // A webhook whose receiver is down holds every notify/ row. The free-space alarm is off:
    // it depends on the machine's disk.
    let config = "[store]\nmax_mb = 1\ncheck_secs = 1\nlow_space_percent = 0\n\
                  [[sinks]]\nname = \"down\"\nkind = \"webhook\"\nfilters = [\"notify/#\"]\nmax_backoff_secs = 1\n";
    let secrets = "[sinks.down]\nurl = \"http://127.0.0.1:1/hook\"\n";
    let mut a = Appliance::start(config, secrets);
    let h = Http::new();
    let mut accepted = 0;
    let mut refusal = None;
    for i in 0..5000 {
        let r = h.post(&a.url("/notify"), "application/json", message(i), &[]);
        match r.status {
            200 => accepted += 1,
            507 => {
                refusal = Some(r);
                break;
            }
            other => panic!("unexpected {other}: {}", r.json),
        }
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let refusal = refusal.expect("never refused at a 1 MiB budget");
    let error = refusal.json["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("storage full") && error.contains("nothing was stored"),
        "{}",
        refusal.json
    );
    // Nothing accepted was dropped to make room.
    let kept = a
        .journal()
        .into_iter()
        .filter(|(t, _)| t.starts_with("notify"))
        .count();
    assert_eq!(
        kept, accepted,
        "accepted messages were pruned before delivery"
    );
    let health = h.get(&a.url("/health"), &[]);
    assert_eq!(
        (health.status, health.json["journal"].as_str()),
        (503, Some("full")),
        "{}",
        health.json
    );
    let alarms = storage_alarms(&a);
    assert!(alarms.contains(&"full".to_owned()), "{alarms:?}");
    let errors = a.log().lines().filter(|l| l.contains("ERROR")).count();
    for _ in 0..200 {
        assert_eq!(
            h.post(&a.url("/notify"), "application/json", message(0), &[])
                .status,
            507
        );
    }
    // MQTT: not acknowledged, so the client keeps it; not journaled either.
    for _ in 0..20 {
        assert!(
            !mqtt_publish_acknowledged(&a, "sensors/full"),
            "a publish was acknowledged while the journal is full"
        );
    }
    let errors_after = a.log().lines().filter(|l| l.contains("ERROR")).count();
    assert!(
        errors_after - errors <= 1,
        "200 HTTP and 20 MQTT refusals logged {} ERROR lines",
        errors_after - errors
    );
    assert!(
        !a.journal().iter().any(|(t, _)| t == "sensors/full"),
        "a refused MQTT publish was journaled"
    );

    // A bigger budget: taken again, and the alarm says so.
    a.kill9();
    let config_path = a.data_dir().parent().unwrap().join("genba.toml");
    std::fs::write(&config_path, config.replace("max_mb = 1", "max_mb = 64")).unwrap();
    a.spawn();
    assert!(
        wait_until(Duration::from_secs(10), || h
            .post(&a.url("/notify"), "application/json", message(1), &[])
            .status
            == 200),
        "still refused with a 64 MiB budget"
    );
    assert!(
        wait_until(Duration::from_secs(10), || storage_alarms(&a)
            .last()
            .is_some_and(|s| s == "ok")),
        "{:?}",
        storage_alarms(&a)
    );
    assert_eq!(h.get(&a.url("/health"), &[]).status, 200);
    // The client's resend is taken now, once.
    assert!(mqtt_publish_acknowledged(&a, "sensors/full"));
    let taken = a
        .journal()
        .into_iter()
        .filter(|(t, _)| t == "sensors/full")
        .count();
    assert_eq!(taken, 1);
}
