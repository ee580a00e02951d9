//! `genba simulate` (the firmware core on the host) against a real appliance: an appliance
//! crash and a device-side network outage in the middle of a run still end with every
//! reading stored exactly once.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Appliance;

fn readings(a: &Appliance) -> (i64, i64) {
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    conn.query_row(
        "SELECT COUNT(*), COUNT(DISTINCT device_id || '/' || ts_device || '/' || sensor_hw_id) FROM readings",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "simulate did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    std::process::Output {
        status: child.wait().unwrap(),
        stdout: out.into_bytes(),
        stderr: Vec::new(),
    }
}

#[test]
fn an_appliance_crash_mid_run_over_mqtt_ends_with_every_reading_stored_once() {
    let mut a = Appliance::start("", "");
    let mut sim = a
        .command(&[
            "simulate",
            "--devices",
            "3",
            "--sensors",
            "2",
            "--interval",
            "0.1",
            "--batches",
            "40",
            "--via",
            "mqtt",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let before_crash = readings(&a).0;
    a.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    a.spawn();
    let out = wait_exit(&mut sim, Duration::from_secs(120));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    assert!(out.status.success(), "{summary}");
    assert_eq!(summary["readings"], 240);
    assert_eq!(summary["unsent"], 0);
    assert_eq!(summary["dropped"], 0);
    let wanted = 3 * 2 * 40;
    assert!(
        before_crash > 0 && before_crash < wanted,
        "the crash was not mid-run: {before_crash} readings before it"
    );
    assert!(
        common::wait_until(Duration::from_secs(15), || readings(&a).0 == wanted),
        "readings: {:?}",
        readings(&a)
    );
    assert_eq!(readings(&a), (wanted, wanted));
    assert_eq!(a.integrity_check(), "ok");
}

#[test]
fn a_device_network_outage_over_http_is_bridged_by_the_backlog() {
    let a = Appliance::start("[telemetry]\nrate_per_sec = 100.0\nburst = 100\n", "");
    let mut sim = a
        .command(&[
            "simulate",
            "--devices",
            "2",
            "--sensors",
            "3",
            "--interval",
            "0.1",
            "--batches",
            "30",
            "--via",
            "http",
            "--outage",
            "0.5+1.5",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_exit(&mut sim, Duration::from_secs(120));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    assert!(out.status.success(), "{summary}");
    assert_eq!(summary["sent"], 60);
    assert_eq!(readings(&a), (180, 180));
}

#[test]
fn ctrl_c_stops_a_run_without_an_end_and_still_prints_the_summary() {
    let a = Appliance::start("", "");
    let mut sim = a
        .command(&[
            "simulate",
            "--devices",
            "2",
            "--interval",
            "0.1",
            "--via",
            "mqtt",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        common::wait_until(Duration::from_secs(20), || readings(&a).0 >= 10),
        "the simulated devices sent nothing"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sim.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = wait_exit(&mut sim, Duration::from_secs(10));
    assert!(out.status.success(), "{out:?}");
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(summary["interrupted"], true, "{summary}");
    assert_eq!(summary["devices"], 2);
    let (made, sent) = (
        summary["batches"].as_u64().unwrap(),
        summary["sent"].as_u64().unwrap(),
    );
    assert!(sent >= 5 && made >= sent, "{summary}");
    assert_eq!(
        made,
        sent + summary["dropped"].as_u64().unwrap() + summary["unsent"].as_u64().unwrap(),
        "{summary}"
    );
}

#[test]
fn each_batch_names_the_firmware_and_the_appliance_shows_each_devices_version() {
    let a = Appliance::start("[devices]\nauto_provision = \"all\"\n", "");
    let run = |via: &str, firmware: &str| {
        let out = a
            .command(&[
                "simulate",
                "--devices",
                "2",
                "--batches",
                "2",
                "--interval",
                "0.05",
                "--via",
                via,
                "--firmware",
                firmware,
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let versions = || {
        let (ok, list) = a.genba(&["devices", "list", "--json"]);
        assert!(ok, "{list}");
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        let mut v: Vec<(String, String)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap().to_owned(),
                    d["firmware"].as_str().unwrap_or("-").to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let expect = |fw: &str| {
        vec![
            ("sim-000".to_owned(), fw.to_owned()),
            ("sim-001".to_owned(), fw.to_owned()),
        ]
    };
    // Every device shows the version of its last batch: the first run's, then the next one's
    // (an update shows at the next batch), over MQTT and over HTTP (POST /api/telemetry).
    for (via, fw) in [("mqtt", "1.2.0-rc.1"), ("mqtt", "1.2.0"), ("http", "2.0.0")] {
        let (ok, out) = run(via, fw);
        assert!(ok, "{out}");
        assert!(
            common::wait_until(Duration::from_secs(15), || versions() == expect(fw)),
            "{via} {fw}: {:?}",
            versions()
        );
    }
    // A version the core refuses is refused before anything is sent.
    let before = readings(&a).0;
    let (ok, out) = run("mqtt", "1.2 beta");
    assert!(!ok && out.contains("--firmware \"1.2 beta\""), "{out}");
    assert_eq!(readings(&a).0, before);
}

/// Waits until `sim-000` reports `version` in `genba devices list`.
fn reports(a: &Appliance, version: &str) -> bool {
    common::wait_until(Duration::from_secs(20), || {
        let (ok, list) = a.genba(&["devices", "list", "--json"]);
        ok && serde_json::from_str::<serde_json::Value>(&list).is_ok_and(|l| {
            l.as_array().is_some_and(|l| {
                l.iter()
                    .any(|d| d["id"] == "sim-000" && d["firmware"] == version)
            })
        })
    })
}

#[test]
fn a_simulated_device_installs_an_update_refuses_a_damaged_one_and_rolls_back_a_broken_one() {
    let a = Appliance::start("[devices]\nauto_provision = \"all\"\n", "");
    let dir = a.dir.path();
    for version in ["1.1.0", "1.2.0", "1.3.0"] {
        let file = dir.join(format!("{version}.bin"));
        let img = genba_firmware_core::image::sample(version, "genba-fw-esp32c3");
        std::fs::write(&file, img).unwrap();
        let (ok, out) = a.genba(&["firmware", "add", file.to_str().unwrap()]);
        assert!(ok, "{out}");
    }
    // 1.3.0 is damaged on the appliance after it was kept: the download no longer matches.
    let (_, list) = a.genba(&["firmware", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let sha_130 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["version"] == "1.3.0")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let kept = a.data_dir().join("firmware").join(format!("{sha_130}.bin"));
    let mut bytes = std::fs::read(&kept).unwrap();
    bytes[300] ^= 0x01;
    std::fs::write(&kept, bytes).unwrap();

    let log = dir.join("simulate.log");
    let mut sim = a
        .command(&[
            "simulate",
            "--devices",
            "1",
            "--via",
            "mqtt",
            "--interval",
            "0.05",
            "--batches",
            "2000",
            "--firmware",
            "1.0.0",
            "--broken-firmware",
            "1.2.0",
            "--trial-secs",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let logged =
        |line: &str| common::wait_until(Duration::from_secs(20), || log_text().contains(line));
    assert!(reports(&a, "1.0.0"), "{}", log_text());

    // A good update: downloaded, checked, tried, confirmed by its first delivered batch.
    let (ok, out) = a.genba(&["devices", "update", "sim-000", "1.1.0"]);
    assert!(ok, "{out}");
    assert!(
        logged("sim-000: firmware 1.1.0 confirmed by its first delivered batch"),
        "{}",
        log_text()
    );
    assert!(reports(&a, "1.1.0"), "{}", log_text());

    // A damaged download is refused; the device stays on 1.1.0.
    let (ok, out) = a.genba(&["devices", "update", "sim-000", "1.3.0"]);
    assert!(ok, "{out}");
    assert!(
        logged("sim-000: update to 1.3.0 refused: download does not have the SHA-256"),
        "{}",
        log_text()
    );

    // An image that never delivers: its trial ends, and the device returns to 1.1.0.
    let (ok, out) = a.genba(&["devices", "update", "sim-000", "1.2.0"]);
    assert!(ok, "{out}");
    assert!(
        logged("sim-000: firmware 1.2.0 never confirmed; back to 1.1.0"),
        "{}",
        log_text()
    );
    assert!(reports(&a, "1.1.0"), "{}", log_text());
    let text = log_text();
    assert!(
        text.contains("sim-000: running firmware 1.2.0 on trial"),
        "{text}"
    );
    assert!(!text.contains("1.2.0 confirmed"), "{text}");
    let _ = sim.kill();
    let _ = sim.wait();
    // The appliance never saw a batch from the broken image.
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    let batches_of = |version: &str| -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM journal WHERE topic = 'devices/sim-000/telemetry' \
             AND CAST(payload AS TEXT) LIKE '%\"fw\":\"' || ?1 || '\"%'",
            [version],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(batches_of("1.1.0") > 0 && batches_of("1.0.0") > 0);
    assert_eq!(batches_of("1.2.0"), 0);
}
