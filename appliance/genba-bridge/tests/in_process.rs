//! The HTTP bridge started in-process on a listener the test bound itself (port 0), with a
//! real journal in a temporary SQLite file, spoken to in plain HTTP/1.1 over a real socket: no
//! binary to spawn and no port picked in advance.

use std::net::SocketAddr;
use std::time::Duration;

use genba_bridge::{start, BridgeSettings, Listeners};
use genba_store::{Journal, Reader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request on its own connection; the raw answer.
async fn exchange(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: genba\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
}

fn json_body(answer: &str) -> serde_json::Value {
    let (_, body) = answer.split_once("\r\n\r\n").expect("no header end");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_on_a_bound_listener_journals_a_notify_before_answering_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("genba.sqlite3");
    let journal = Journal::start(&db, 64, 64).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let settings = BridgeSettings {
        http: genba_config::HttpConfig::default(),
        // No broker here: the message is journaled and answered all the same.
        broker: "127.0.0.1:9".into(),
        internal_user: "genba-internal".into(),
        internal_secret: "an internal secret of some length".into(),
        db_path: db.clone(),
        telemetry: Default::default(),
        provision_http: false,
        console: Default::default(),
        exment: Default::default(),
        sinks: Vec::new(),
        tls: None,
        metrics_dir: None,
        firmware_dir: dir.path().join("firmware"),
        updates_dir: dir.path().join("updates"),
        live: None,
    };
    let listeners = Listeners {
        http: listener,
        https: None,
    };
    let bridge = start(settings, listeners, journal, shutdown).await.unwrap();

    let answer = exchange(
        bridge.addr,
        "POST",
        "/notify",
        r#"{"topic":"notify/line-2","message":"in process"}"#,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let id = json_body(&answer)["id"].as_i64().expect("an id");
    let rows = Reader::open(&db).unwrap().after(0, 10).unwrap();
    let row = rows
        .iter()
        .find(|r| r.id == id)
        .expect("answered but not journaled");
    assert_eq!(row.topic, "notify/line-2");

    // A bad body names its field and stores nothing.
    let refused = exchange(bridge.addr, "POST", "/notify", r#"{"message": 5}"#).await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert_eq!(json_body(&refused)["field"], "message", "{refused}");
    assert_eq!(
        Reader::open(&db).unwrap().after(0, 10).unwrap().len(),
        rows.len()
    );

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), bridge.done)
        .await
        .expect("the bridge did not stop within 15 s of shutdown")
        .unwrap();
    assert!(
        TcpStream::connect(bridge.addr).await.is_err(),
        "the port still accepts after shutdown"
    );
}
