//! Process lifecycle as systemd sees it: READY=1, WATCHDOG=1 and STOPPING=1 on a real
//! notify socket, port 0 resolved into endpoints.json, SIGTERM exits 0 after draining;
//! and the config checks that refuse to start.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::Http;

/// Reads notify datagrams until one contains `want` (or the limit passes).
fn wait_for_state(sock: &UnixDatagram, want: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {limit:?}; saw {seen:?}");
}

#[test]
fn up_notifies_ready_pings_the_watchdog_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let data = dir.path().join("data");
    let mut child = common::genba_up(&data)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("GENBA_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_state(&sock, "READY=1", Duration::from_secs(30));

    // Port 0 became real ports, written for other tools.
    let endpoints: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("run/endpoints.json")).unwrap())
            .unwrap();
    let http: std::net::SocketAddr = endpoints["http"].as_str().unwrap().parse().unwrap();
    let mqtt: std::net::SocketAddr = endpoints["mqtt"].as_str().unwrap().parse().unwrap();
    assert_ne!(http.port(), 0);
    assert_ne!(mqtt.port(), 0);
    assert_eq!(endpoints["pid"], child.id());

    // Healthy, so the watchdog is pinged (WATCHDOG_USEC = 1 s: every 0.5 s).
    wait_for_state(&sock, "WATCHDOG=1", Duration::from_secs(10));

    let h = Http::new();
    let r = h.get(&format!("http://{http}/notify?message=before-stop"), &[]);
    assert_eq!(r.status, 200);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for_state(&sock, "STOPPING=1", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "genba did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("stopped"), "{log}");

    let conn = rusqlite::Connection::open(data.join("genba.sqlite3")).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM journal WHERE payload = CAST('before-stop' AS BLOB)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}

fn genba(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_genba"))
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn config_check_refuses_a_secrets_file_readable_by_others_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(
        &secrets,
        "[slack]\nops = \"https://hooks.slack.com/services/T/B/SECRET\"\n",
    )
    .unwrap();
    let config = dir.path().join("genba.toml");
    std::fs::write(
        &config,
        format!(
            "secrets_file = \"{}\"\n[[slack.webhooks]]\nname = \"ops\"\nfilters = [\"notify/#\"]\n",
            secrets.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();

    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = genba(&["config", "check", "--config", cfg]);
    assert!(!ok, "a world-readable secrets file was accepted: {text}");
    assert!(
        text.contains(secrets.to_str().unwrap()),
        "the file is not named: {text}"
    );
    assert!(!text.contains("SECRET"), "the secret leaked: {text}");
    // Every role refuses to start with it too.
    let (ok, text) = genba(&[
        "up",
        "--config",
        cfg,
        "--http",
        "127.0.0.1:0",
        "--mqtt",
        "127.0.0.1:0",
    ]);
    assert!(!ok);
    assert!(text.contains(secrets.to_str().unwrap()), "{text}");

    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, text) = genba(&["config", "check", "--config", cfg]);
    assert!(ok, "{text}");
}

#[test]
fn config_errors_name_the_key_and_the_printed_example_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("genba.toml");
    let cfg = config.to_str().unwrap();
    std::fs::write(&config, "[http]\nmax_body_bytes = \"big\"\n").unwrap();
    let (ok, text) = genba(&["config", "check", "--config", cfg]);
    assert!(!ok);
    assert!(text.contains("max_body_bytes"), "{text}");
    std::fs::write(
        &config,
        "[[slack.webhooks]]\nname = \"ops\"\nfilters = [\"a/#/b\"]\n",
    )
    .unwrap();
    let (ok, text) = genba(&["config", "check", "--config", cfg]);
    assert!(!ok);
    assert!(text.contains("filters"), "{text}");

    let (ok, example) = genba(&["config", "example"]);
    assert!(ok);
    std::fs::write(&config, example).unwrap();
    let (ok, text) = genba(&["config", "check", "--config", cfg]);
    assert!(
        ok,
        "the printed example does not pass its own check: {text}"
    );
}

#[test]
fn a_second_up_on_the_same_data_dir_is_refused_and_a_stopped_one_leaves_no_endpoints() {
    let mut a = common::Appliance::start("", "");
    let (ok, out) = a.genba(&["up", "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    assert!(!ok, "a second genba up started: {out}");
    assert!(
        out.contains(&format!("pid {}", a.pid())) && out.contains("--data-dir"),
        "{out}"
    );
    // The first one still serves, and its endpoints are still the ones on record.
    let endpoints = a.data_dir().join("run").join("endpoints.json");
    let text = std::fs::read_to_string(&endpoints).unwrap();
    assert!(text.contains(&a.mqtt.to_string()), "{text}");

    assert!(a.terminate().success());
    assert!(!endpoints.exists(), "endpoints.json outlived its process");
    // Nothing runs: simulate says so (it used to try silently for a minute).
    let (mqtt, http) = (common::free_port(), common::free_port());
    let (ok, out) = a.genba(&[
        "simulate",
        "--batches",
        "1",
        "--mqtt",
        &mqtt.to_string(),
        "--http",
        &http.to_string(),
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("no appliance answers at") && out.contains("genba up"),
        "{out}"
    );
    // After the first one stopped, the data dir is free again.
    a.spawn();
    assert!(a.is_running());
}

#[test]
fn json_logs_are_one_object_per_line_with_level_target_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = common::genba_up(dir.path())
        .env("GENBA_LOG_FORMAT", "json")
        .env("GENBA_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let line = line.unwrap();
        let ready = line.contains("http bridge ready");
        lines.push(line);
        if ready {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(lines.len() >= 2, "{lines:?}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object: {line:?}: {e}"));
        assert!(v["level"].is_string() && v["target"].is_string(), "{line}");
    }
    let ready: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(ready["target"], "genba::roles");
    assert!(
        ready["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{ready}"
    );
}

#[test]
fn the_config_is_validated_once_after_the_command_line_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("genba.toml");
    // Open to the network without users: refused, unless the command line keeps it on loopback.
    std::fs::write(&config, "[mqtt]\nlisten = \"0.0.0.0:1883\"\n").unwrap();
    let config = config.to_str().unwrap();
    let (ok, out) = genba(&["config", "check", "--config", config]);
    assert!(!ok && out.contains("mqtt.users"), "{out}");
    let (ok, out) = genba(&[
        "config",
        "check",
        "--config",
        config,
        "--mqtt",
        "localhost:1883",
    ]);
    assert!(ok, "{out}");
}

#[test]
fn a_bridge_whose_broker_is_down_reports_degraded_health() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on stands for the broker.
    let broker = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut bridge = Command::new(env!("CARGO_BIN_EXE_genba"))
        .args([
            "bridge",
            "--http",
            "127.0.0.1:0",
            "--mqtt",
            &broker.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoints = dir.path().join("run").join("endpoints-bridge.json");
    assert!(
        common::wait_until(Duration::from_secs(30), || endpoints.exists()),
        "the bridge did not start"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
    let url = format!("http://{}/health", v["http"].as_str().unwrap());
    let health = Http::new().get(&url, &[]);
    bridge.kill().unwrap();
    bridge.wait().unwrap();
    assert_eq!(
        (health.status, health.json["broker"].as_str()),
        (503, Some("down")),
        "{}",
        health.json
    );
}

/// The address `key` in the endpoints file of a process running `role` alone, once it is
/// there (30 s at most).
fn endpoint_of(data_dir: &std::path::Path, role: &str, key: &str) -> String {
    let file = data_dir.join("run").join(format!("endpoints-{role}.json"));
    let read = || -> Option<String> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).ok()?).ok()?;
        v[key].as_str().map(str::to_owned)
    };
    let mut found = None;
    common::wait_until(Duration::from_secs(30), || {
        found = read();
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("genba {role} did not start"))
}

#[test]
fn with_roles_in_separate_processes_notify_reaches_the_broker_and_metrics_hold_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let role = |args: &[&str]| {
        let child = Command::new(env!("CARGO_BIN_EXE_genba"))
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        common::Killed(child)
    };
    let _broker = role(&["broker", "--mqtt", "127.0.0.1:0"]);
    let mqtt = endpoint_of(dir.path(), "broker", "mqtt");
    let port = mqtt.rsplit(':').next().unwrap();
    let out = common::mosquitto_pub(
        port.parse().unwrap(),
        &["-t", "line/1", "-m", "x", "-q", "1"],
    );
    assert!(out.status.success(), "{out:?}");

    let _bridge = role(&["bridge", "--http", "127.0.0.1:0", "--mqtt", &mqtt]);
    let http = endpoint_of(dir.path(), "bridge", "http");
    let h = Http::new();
    // The bridge hands its live copies to the other process's broker over MQTT.
    assert!(
        common::wait_until(Duration::from_secs(20), || h
            .get(&format!("http://{http}/health"), &[])
            .json["bridge_connected"]
            == true),
        "the bridge did not connect to the broker"
    );
    let sub = common::mosquitto_sub(
        port.parse().unwrap(),
        &["-t", "notify/#", "-v", "-C", "1", "-W", "20"],
    );
    let sent = h.get(&format!("http://{http}/notify?message=split%20units"), &[]);
    assert_eq!(sent.status, 200, "{}", sent.json);
    assert_eq!(sent.json["published"], true, "{}", sent.json);
    let out = sub.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("split units"),
        "{out:?}"
    );

    let url = format!("http://{http}/metrics");
    let broker_received = |text: &str| {
        text.lines().any(|l| {
            l.starts_with("genba_mqtt_messages_received_total{")
                && l.contains(r#"process="broker""#)
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0)
        })
    };
    // One request the bridge counts before the page is read.
    assert_eq!(h.get(&url, &[]).status, 200);
    let mut text = String::new();
    // The broker writes its metrics every 10 s.
    assert!(
        common::wait_until(Duration::from_secs(30), || {
            text = h.get(&url, &[]).text;
            std::thread::sleep(Duration::from_millis(200));
            broker_received(&text)
        }),
        "no broker series on the bridge's page:\n{text}"
    );
    // The bridge's own series are labelled too, and each family is declared once.
    assert!(
        text.lines()
            .any(|l| l.starts_with("genba_http_requests_total{")
                && l.contains(r#"process="bridge""#)),
        "{text}"
    );
    let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let declared = types.len();
    types.sort();
    types.dedup();
    assert_eq!(types.len(), declared, "a family declared twice:\n{text}");
}
