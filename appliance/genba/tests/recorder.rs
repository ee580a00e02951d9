//! `genba recorder` against a real external broker (Debian's Mosquitto): what is published
//! there is journaled, and QoS 1 messages sent while the recorder was down (persistent
//! session) are journaled after it comes back.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, mosquitto_broker, mosquitto_pub, wait_until, Killed};

fn payloads(db: &std::path::Path) -> Vec<String> {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return Vec::new();
    };
    let Ok(mut stmt) =
        conn.prepare("SELECT payload FROM journal WHERE source LIKE 'recorder:%' ORDER BY id")
    else {
        return Vec::new();
    };
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .map(|rows| {
            rows.filter_map(Result::ok)
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_recorder_journals_an_external_brokers_messages_including_those_sent_while_it_was_down() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let _mosquitto = Killed(
        Command::new(mosquitto_broker())
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));

    let config = dir.path().join("genba.toml");
    std::fs::write(
        &config,
        format!("[recorder]\nbroker = \"127.0.0.1:{port}\"\nfilters = [\"line/#\"]\n"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let db = data.join("genba.sqlite3");
    let start = || {
        Killed(
            Command::new(env!("CARGO_BIN_EXE_genba"))
                .arg("recorder")
                .arg("--config")
                .arg(&config)
                .arg("--data-dir")
                .arg(&data)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let publish = |msg: &str| {
        let out = mosquitto_pub(port, &["-q", "1", "-t", "line/1", "-m", msg]);
        assert!(out.status.success());
    };

    let recorder = start();
    // Publish until the recorder's subscription is in place.
    assert!(wait_until(Duration::from_secs(20), || {
        publish("hello");
        payloads(&db).contains(&"hello".to_string())
    }));
    publish("m1");
    assert!(wait_until(Duration::from_secs(10), || payloads(&db)
        .contains(&"m1".to_string())));

    drop(recorder); // SIGKILL
    publish("while-down-1");
    publish("while-down-2");
    let _recorder = start();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let p = payloads(&db);
            p.contains(&"while-down-1".to_string()) && p.contains(&"while-down-2".to_string())
        }),
        "{:?}",
        payloads(&db)
    );
    let p = payloads(&db);
    assert_eq!(p.iter().filter(|m| *m == "m1").count(), 1, "{p:?}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}
