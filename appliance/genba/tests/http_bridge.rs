//! The HTTP bridge on a real socket: what it accepts, what it refuses and how, and that bad
//! input never costs a message that was already accepted.

mod common;

use std::time::Duration;

use common::http::{raw_exchange, raw_json, Http};
use common::Appliance;

fn id_of(r: &common::http::Reply) -> i64 {
    assert_eq!(r.status, 200, "{}", r.json);
    r.json["id"].as_i64().expect("id in answer")
}

#[test]
fn get_json_form_and_text_posts_are_journaled_with_their_topics() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let r = h.get(&a.url("/notify?message=reception%20call"), &[]);
    id_of(&r);
    assert_eq!(r.json["topic"], "notify/slack", "default topic");
    id_of(&h.post(
        &a.url("/notify"),
        "application/json",
        r#"{"topic":"alert/stock","message":"bolts M6 low"}"#,
        &[],
    ));
    id_of(&h.post(
        &a.url("/notify"),
        "application/x-www-form-urlencoded",
        "topic=notify%2Fline1&message=line+1+stopped",
        &[],
    ));
    id_of(&h.post(
        &a.url("/notify?topic=notify/text"),
        "text/plain; charset=utf-8",
        "plain text é",
        &[],
    ));
    assert_eq!(
        a.journal(),
        vec![
            ("notify/slack".to_string(), "reception call".to_string()),
            ("alert/stock".into(), "bolts M6 low".into()),
            ("notify/line1".into(), "line 1 stopped".into()),
            ("notify/text".into(), "plain text é".into()),
        ]
    );
}

#[test]
fn bad_inputs_get_a_json_error_naming_the_field_and_lose_nothing_accepted() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let first = id_of(&h.post(
        &a.url("/notify"),
        "application/json",
        r#"{"message":"before"}"#,
        &[],
    ));

    let json = "application/json";
    let form = "application/x-www-form-urlencoded";
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "wrong type",
            json,
            br#"{"message": 5}"#.to_vec(),
            400,
            "message",
        ),
        (
            "topic not a string",
            json,
            br#"{"message":"x","topic":["a"]}"#.to_vec(),
            400,
            "topic",
        ),
        (
            "missing message",
            json,
            br#"{"topic":"a/b"}"#.to_vec(),
            400,
            "message",
        ),
        ("empty message", form, b"message=".to_vec(), 400, "message"),
        ("not an object", json, b"[1,2]".to_vec(), 400, "body"),
        ("broken json", json, b"{\"message\":".to_vec(), 400, "body"),
        (
            "invalid utf-8 in json",
            json,
            b"{\"message\":\"\xff\xfe\"}".to_vec(),
            400,
            "body",
        ),
        (
            "invalid utf-8 in form",
            form,
            b"message=%FF%FE".to_vec(),
            400,
            "message",
        ),
        (
            "invalid utf-8 text",
            "text/plain",
            b"\xc3\x28".to_vec(),
            400,
            "message",
        ),
        (
            "wildcard #",
            json,
            br#"{"message":"x","topic":"alert/#"}"#.to_vec(),
            400,
            "topic",
        ),
        (
            "wildcard +",
            json,
            br#"{"message":"x","topic":"alert/+/x"}"#.to_vec(),
            400,
            "topic",
        ),
        (
            "system topic",
            json,
            br#"{"message":"x","topic":"$SYS/x"}"#.to_vec(),
            400,
            "topic",
        ),
        (
            "empty level",
            json,
            br#"{"message":"x","topic":"a//b"}"#.to_vec(),
            400,
            "topic",
        ),
        (
            "control char",
            json,
            b"{\"message\":\"x\",\"topic\":\"a\\u0000b\"}".to_vec(),
            400,
            "topic",
        ),
        (
            "long topic",
            json,
            format!(r#"{{"message":"x","topic":"{}"}}"#, "t".repeat(300)).into_bytes(),
            400,
            "topic",
        ),
        (
            "long message",
            json,
            format!(r#"{{"message":"{}"}}"#, "m".repeat(20_000)).into_bytes(),
            400,
            "message",
        ),
        (
            "huge body",
            json,
            format!(r#"{{"message":"{}"}}"#, "m".repeat(100_000)).into_bytes(),
            413,
            "body",
        ),
        (
            "unknown type",
            "application/xml",
            b"<m/>".to_vec(),
            415,
            "content-type",
        ),
    ];
    for (what, ct, body, status, field) in cases {
        let r = h.post(&a.url("/notify"), ct, body, &[]);
        assert_eq!(r.status, status, "{what}: {}", r.json);
        assert_eq!(r.json["ok"], false, "{what}");
        assert_eq!(r.json["field"], field, "{what}: {}", r.json);
        assert!(
            r.json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}"
        );
    }
    // Invalid UTF-8 in the query string, sent raw (clients would escape it).
    let answer = raw_exchange(
        a.http,
        b"GET /notify?message=%C3%28 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(raw_json(&answer)["field"], "message");
    // Wrong method and unknown path.
    assert_eq!(h.post(&a.url("/health"), json, "{}", &[]).status, 405);
    assert_eq!(h.get(&a.url("/nope"), &[]).status, 404);

    // Still serving, and the journal holds exactly the accepted messages.
    let last = id_of(&h.post(&a.url("/notify"), json, r#"{"message":"after"}"#, &[]));
    assert!(last > first);
    assert_eq!(
        a.journal(),
        vec![
            ("notify/slack".to_string(), "before".to_string()),
            ("notify/slack".into(), "after".into())
        ]
    );
}

#[test]
fn a_declared_huge_body_is_refused_before_it_is_read() {
    let a = Appliance::start("", "");
    let answer = raw_exchange(
        a.http,
        b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(raw_json(&answer)["field"], "body");
}

#[test]
fn slow_clients_time_out_while_others_are_served() {
    let a = Appliance::start("[http]\nrequest_timeout_secs = 1\n", "");
    let h = Http::new();
    // A body that never completes: 408 naming the body.
    let stalled = std::thread::spawn({
        let addr = a.http;
        move || {
            raw_exchange(
                addr,
                b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mess",
                Duration::from_secs(10),
            )
        }
    });
    // Headers that never complete: the connection is closed.
    let slowloris = std::thread::spawn({
        let addr = a.http;
        move || {
            let started = std::time::Instant::now();
            let answer = raw_exchange(
                addr,
                b"GET /notify?message=x HTTP/1.1\r\nHost: x\r\n",
                Duration::from_secs(10),
            );
            (answer, started.elapsed())
        }
    });
    // Meanwhile, a normal client is served.
    id_of(&h.get(&a.url("/notify?message=served"), &[]));
    let answer = stalled.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(raw_json(&answer)["field"], "body");
    let (answer, waited) = slowloris.join().unwrap();
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(
        waited < Duration::from_secs(10),
        "the half-sent request was not cut off"
    );
    assert_eq!(
        a.journal(),
        vec![("notify/slack".to_string(), "served".to_string())]
    );
}

#[test]
fn api_key_and_basic_auth_are_required_when_configured() {
    let (key, digest) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_genba"))
            .args(["passwd", "--api-key", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let field = |k: &str| v[k].as_str().unwrap().to_owned();
        (field("key"), field("api_key_sha256"))
    };
    let hash = common::hash_password("phone-pw");
    let a = Appliance::start(
        &format!("[http]\napi_key_sha256 = [\"{digest}\"]\n[[http.users]]\nname = \"phone\"\npassword_hash = \"{hash}\"\n"),
        "",
    );
    let h = Http::new();
    let url = a.url("/notify?message=hi");
    let none = h.get(&url, &[]);
    assert_eq!(none.status, 401);
    assert!(none.headers.contains_key("www-authenticate"));
    assert_eq!(none.json["ok"], false);
    let wrong = h.get(&url, &[("x-api-key", "not-the-key")]);
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json["field"], "x-api-key");
    use base64::Engine;
    let basic_bad = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("phone:nope")
    );
    assert_eq!(h.get(&url, &[("authorization", &basic_bad)]).status, 401);
    assert_eq!(
        h.get(&a.url("/status"), &[]).status,
        401,
        "status needs auth too"
    );

    id_of(&h.get(&url, &[("x-api-key", &key)]));
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("phone:phone-pw")
    );
    id_of(&h.get(&url, &[("authorization", &basic)]));
    assert_eq!(h.get(&a.url("/status"), &[("x-api-key", &key)]).status, 200);
    assert_eq!(
        h.get(&a.url("/metrics"), &[]).status,
        401,
        "metrics need auth"
    );
    assert_eq!(
        h.get(&a.url("/metrics"), &[("x-api-key", &key)]).status,
        200
    );
    assert_eq!(
        h.get(&a.url("/health"), &[]).status,
        200,
        "health is open for probes"
    );
    assert_eq!(a.journal().len(), 2, "refused requests journal nothing");
}

#[test]
fn a_flood_of_concurrent_requests_gets_only_200_or_503_and_every_200_is_journaled() {
    let a = Appliance::start("", "");
    let h = Http::new();
    let client = h.client();
    let url = a.url("/notify");
    let answers = h.block_on(async move {
        let mut tasks = Vec::new();
        for c in 0..64 {
            let client = client.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..40 {
                    let body = serde_json::json!({"topic": format!("flood/{c}"), "message": format!("{c}-{i}")});
                    let r = common::http::send(client.post(&url).json(&body)).await;
                    out.push((r.status, r.json["id"].as_i64(), format!("{c}-{i}")));
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    assert_eq!(answers.len(), 64 * 40);
    let accepted: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 200).collect();
    assert!(
        answers.iter().all(|(s, _, _)| *s == 200 || *s == 503),
        "only 200 or 503 under a flood"
    );
    assert!(!accepted.is_empty());
    let journal = a.journal();
    assert_eq!(journal.len(), accepted.len(), "each 200 is one journal row");
    let payloads: std::collections::HashSet<_> = journal.iter().map(|(_, p)| p.clone()).collect();
    for (_, _, msg) in &accepted {
        assert!(
            payloads.contains(msg),
            "{msg} answered 200 but is not in the journal"
        );
    }
    assert_eq!(h.get(&a.url("/health"), &[]).status, 200);
}

#[test]
fn health_is_degraded_while_the_journal_cannot_commit_and_recovers() {
    let a = Appliance::start("", "");
    let h = Http::new();
    assert_eq!(h.get(&a.url("/health"), &[]).status, 200);
    // Every commit now fails, as on a full card.
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER test_full BEFORE INSERT ON journal BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .unwrap();
    for _ in 0..5 {
        let refused = h.get(&a.url("/notify?message=lost"), &[]);
        assert_eq!(refused.status, 503, "{}", refused.json);
    }
    let health = h.get(&a.url("/health"), &[]);
    assert_eq!(
        (health.status, health.json["journal"].as_str()),
        (503, Some("failing")),
        "{}",
        health.json
    );
    conn.execute_batch("DROP TRIGGER test_full").unwrap();
    assert_eq!(h.get(&a.url("/notify?message=kept"), &[]).status, 200);
    assert_eq!(h.get(&a.url("/health"), &[]).status, 200);
    let journal = a.journal();
    assert!(journal.iter().any(|(_, p)| p == "kept"));
    assert!(
        !journal.iter().any(|(_, p)| p == "lost"),
        "a refused message was stored"
    );
    let errors = a.log().matches("journal commit failed").count();
    assert_eq!(errors, 1, "one log line, not one per refusal:\n{}", a.log());
}

/// The value of one series in a Prometheus text exposition (`name{labels} value`).
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_count_requests_journal_commits_mqtt_and_sink_backlog() {
    let a = Appliance::start("", "");
    let h = Http::new();
    for _ in 0..3 {
        id_of(&h.get(&a.url("/notify?message=counted"), &[]));
    }
    assert_eq!(h.get(&a.url("/notify"), &[]).status, 400);
    let out = common::mosquitto_pub(a.mqtt.port(), &["-t", "line/1", "-m", "x", "-q", "1"]);
    assert!(out.status.success(), "{out:?}");

    let m = h.get(&a.url("/metrics"), &[]);
    assert_eq!(m.status, 200, "{}", m.text);
    assert!(
        m.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        m.headers
    );
    let text = &m.text;
    assert_eq!(
        series(
            text,
            r#"genba_http_requests_total{route="/notify",status="200"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        series(
            text,
            r#"genba_http_requests_total{route="/notify",status="400"}"#
        ),
        Some(1.0),
        "{text}"
    );
    // Three notifications and the MQTT message, each committed before its answer.
    assert!(
        series(text, "genba_journal_appends_total").unwrap_or(0.0) >= 4.0,
        "{text}"
    );
    assert!(
        series(text, "genba_journal_commits_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        series(text, "genba_journal_commit_seconds_count").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(series(text, "genba_journal_rows"), Some(4.0), "{text}");
    assert_eq!(series(text, "genba_journal_up"), Some(1.0), "{text}");
    assert!(
        series(text, "genba_mqtt_connections_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        series(text, "genba_mqtt_messages_received_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        series(text, r#"genba_sink_backlog{sink="readings"}"#).is_some(),
        "{text}"
    );
    assert!(
        text.contains("# HELP genba_journal_commits_total"),
        "{text}"
    );
}
