//! Finding the appliance by mDNS (issue 13 item 3, docs/discovery.md): `genba up` announces
//! `_genba._tcp` with the ports it actually bound, `genba simulate --discover` finds it with
//! the firmware core's one-shot query, answer reader and choice (the code the ESP32-C3 runs)
//! and delivers readings to it, a moved device finds it again, a
//! device pinning another fingerprint ignores it, the goodbye at shutdown withdraws it, and of a
//! broker and a bridge on one data directory exactly one announces.
//!
//! Each test runs in a network namespace of its own (`unshare --net`, or `--net
//! --map-root-user` without root): loopback only, so no other appliance on the LAN or on this
//! machine (every `genba up` of the other tests announces on loopback too) can answer, and
//! nothing is announced beyond the test. The multicast goes over that namespace's `lo`: Linux
//! delivers it there without the MULTICAST flag, because mdns-sd names the interface for each
//! send (IP_MULTICAST_IF) and joins the group on it. A machine that can make no network
//! namespace fails these tests with the reason; they do not skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use genba_firmware_core::config::{decode_area, AREA_LEN};

const INSIDE: &str = "GENBA_TEST_NETNS";

/// Runs the test `name` again in a new network namespace with only loopback, up. Returns true
/// in that run (go on with the test), false in the outer one once the inner run passed.
fn in_own_netns(name: &str) -> bool {
    if std::env::var(INSIDE).is_ok_and(|n| n == name) {
        ip(&["link", "set", "lo", "up"]);
        return true;
    }
    // As root a plain network namespace; otherwise one inside a user namespace.
    let works = |flags: &[&str]| {
        Command::new("unshare")
            .args(flags)
            .arg("true")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let flags: &[&str] = if works(&["--net"]) {
        &["--net"]
    } else if works(&["--net", "--map-root-user"]) {
        &["--net", "--map-root-user"]
    } else {
        panic!(
            "{name}: cannot make a network namespace (`unshare --net` needs root, `unshare --net \
             --map-root-user` unprivileged user namespaces); this test does not skip: run it as \
             root, as CI does"
        );
    };
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(flags)
        .arg("--")
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, name)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("--- {name}, in its own network namespace ---\n{text}");
    assert!(out.status.success(), "{name} failed in its namespace");
    // It ran (and was not filtered away).
    assert!(text.contains("test result: ok. 1 passed"), "{text}");
    false
}

/// A genba process of the test, its log in the test's directory; killed when dropped.
struct Genba {
    child: common::Killed,
    log: PathBuf,
}

impl Genba {
    /// `genba ROLE --config CONFIG --data-dir DATA` (with `extra` arguments); waits until it
    /// wrote its endpoints.
    fn start(role: &str, dir: &Path, config: &str, extra: &[&str]) -> Genba {
        let config_path = dir.join(format!("{role}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("{role}.log"));
        let data = dir.join("data");
        let endpoints = data.join("run").join(endpoints_file(role));
        let _ = std::fs::remove_file(&endpoints);
        let child = Command::new(env!("CARGO_BIN_EXE_genba"))
            .arg(role)
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env("GENBA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let g = Genba {
            child: common::Killed(child),
            log,
        };
        let started = common::wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(&endpoints)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(pid)))
        });
        assert!(started, "genba {role} did not start:\n{}", g.log());
        g
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the mDNS daemon to say it announced (after probing the name).
    fn wait_announced(&self) {
        let ok = common::wait_until(Duration::from_secs(15), || {
            self.log().contains("mDNS: announced")
        });
        assert!(ok, "not announced:\n{}", self.log());
    }

    /// SIGTERM, and the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "genba did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The file a process running `role` writes its addresses to (`genba up`: all of them).
fn endpoints_file(role: &str) -> String {
    match role {
        "up" => "endpoints.json".to_owned(),
        other => format!("endpoints-{other}.json"),
    }
}

/// An address `genba up` serves.
fn endpoint(dir: &Path, key: &str) -> std::net::SocketAddr {
    let text = std::fs::read_to_string(dir.join("data/run/endpoints.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[key].as_str().expect(key).parse().unwrap()
}

/// `genba devices provision fridge-1` for the appliance at `appliance` (HTTP), with the
/// test's `up.toml` and data dir; the device config file.
fn provision_fridge(dir: &Path, appliance: &str) -> PathBuf {
    let file = dir.join("fridge-1.bin");
    let out = Command::new(env!("CARGO_BIN_EXE_genba"))
        .args(["devices", "provision", "fridge-1", "--wifi-ssid", "shop"])
        .args(["--wifi-pass", "wifi-pass-1234", "--appliance", appliance])
        .args(["--transport", "http", "--out"])
        .arg(&file)
        .arg("--config")
        .arg(dir.join("up.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    file
}

/// `genba simulate ARGS` with its own empty data dir (so no run/endpoints.json points at the
/// appliance: without discovery it would try the defaults, 127.0.0.1:1883 and :8080, where
/// nothing listens in the namespace). Returns (success, stdout + stderr).
fn simulate(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_genba"))
        .arg("simulate")
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("simulator"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn readings(dir: &Path, device_prefix: &str) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("data/genba.sqlite3")).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM readings WHERE device_id LIKE ?1 || '%'",
        [device_prefix],
        |r| r.get(0),
    )
    .unwrap()
}

/// The value after `key=` on the log line that has `marker`.
fn logged(log: &str, marker: &str, key: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no {marker:?} in the log:\n{log}"));
    let at = line.find(&format!("{key}=")).expect(key) + key.len() + 1;
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

#[test]
fn up_announces_its_bound_ports_and_simulate_discover_delivers_to_it() {
    let name = "up_announces_its_bound_ports_and_simulate_discover_delivers_to_it";
    if !in_own_netns(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Genba::start(
        "up",
        dir.path(),
        "[discovery]\ninstance = \"shop-floor\"\n[mqtt]\ntls_listen = \"127.0.0.1:0\"\n",
        &["--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    );
    up.wait_announced();
    let (mqtt, http, mqtts) = (
        endpoint(dir.path(), "mqtt"),
        endpoint(dir.path(), "http"),
        endpoint(dir.path(), "mqtts"),
    );
    let fp = logged(&up.log(), "TLS server certificate", "sha256");
    assert_eq!(fp.len(), 64, "{fp}");

    // Nothing found without --discover: the defaults have no appliance here.
    let (ok, out) = simulate(dir.path(), &["--batches", "1"]);
    assert!(
        !ok && out.contains("no appliance answers at 127.0.0.1:1883"),
        "{out}"
    );

    let (ok, out) = simulate(
        dir.path(),
        &[
            "--discover",
            "--discover-secs",
            "10",
            "--devices",
            "2",
            "--batches",
            "3",
            "--interval",
            "0.1",
        ],
    );
    assert!(ok, "{out}\nappliance log:\n{}", up.log());
    let found = format!(
        "found `shop-floor` at 127.0.0.1: mqtt {}, http {}, mqtts {}, https -, fp {fp}, ca ",
        mqtt.port(),
        http.port(),
        mqtts.port()
    );
    assert!(out.contains(&found), "{out}");
    assert!(out.contains("announced by `shop-floor`"), "{out}");
    // 2 devices x 3 batches x 2 probes, in the appliance that was found.
    let stored = common::wait_until(Duration::from_secs(15), || {
        readings(dir.path(), "sim-") == 12
    });
    assert!(stored, "{} readings; {out}", readings(dir.path(), "sim-"));

    // Devices that pin this certificate take it and speak MQTT over TLS to its mqtts port;
    // pinning another one, they ignore it and try their stored address's TLS port (where
    // nothing answers).
    let (ok, out) = simulate(
        dir.path(),
        &[
            "--discover",
            "--discover-secs",
            "10",
            "--pin",
            &fp,
            "--devices",
            "1",
            "--batches",
            "1",
        ],
    );
    assert!(ok && out.contains("announced by `shop-floor`"), "{out}");
    let stranger = "ab".repeat(32);
    let (ok, out) = simulate(
        dir.path(),
        &[
            "--discover",
            "--discover-secs",
            "10",
            "--pin",
            &stranger,
            "--batches",
            "1",
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "ignoring `shop-floor` at 127.0.0.1: its fingerprint is not the one this device pins"
        ),
        "{out}"
    );
    assert!(
        out.contains("every answer was ignored (1 for the pinned fingerprint"),
        "{out}"
    );
    assert!(
        out.contains("no appliance answers at 127.0.0.1:8883"),
        "{out}"
    );
}

#[test]
fn a_moved_appliance_is_found_by_its_provisioned_device_unless_the_device_pins_another() {
    let name =
        "a_moved_appliance_is_found_by_its_provisioned_device_unless_the_device_pins_another";
    if !in_own_netns(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Genba::start(
        "up",
        dir.path(),
        "[discovery]\ninstance = \"moved\"\n",
        &["--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    );
    up.wait_announced();
    // The device was provisioned for the appliance's old address.
    let file = provision_fridge(dir.path(), "10.9.8.7");
    let file_arg = file.to_str().unwrap();

    let (ok, out) = simulate(dir.path(), &["--device-config", file_arg, "--batches", "1"]);
    assert!(
        !ok && out.contains("fridge-1: no appliance answers at 10.9.8.7:"),
        "{out}"
    );

    let args = [
        "--device-config",
        file_arg,
        "--discover",
        "--discover-secs",
        "10",
        "--batches",
        "2",
        "--interval",
        "0.1",
    ];
    let (ok, out) = simulate(dir.path(), &args);
    assert!(ok, "{out}\nappliance log:\n{}", up.log());
    let http = endpoint(dir.path(), "http");
    assert!(
        out.contains(&format!(
            "fridge-1: appliance at 127.0.0.1 (mqtt {}, http {}): announced by `moved`",
            endpoint(dir.path(), "mqtt").port(),
            http.port()
        )),
        "{out}"
    );
    let stored = common::wait_until(Duration::from_secs(15), || {
        readings(dir.path(), "fridge-1") == 4
    });
    assert!(
        stored,
        "{} readings; {out}",
        readings(dir.path(), "fridge-1")
    );

    // The same device with a CA fingerprint pinned in its config: the appliance announces no
    // TLS, so it is ignored and the device stays with its stored address.
    let mut device = decode_area(&std::fs::read(&file).unwrap()).unwrap().config;
    device.ca_sha256 = Some([7; 32]);
    let mut area = vec![0u8; AREA_LEN];
    device.area_image(&mut area).unwrap();
    let pinned = dir.path().join("fridge-1-pinned.bin");
    std::fs::write(&pinned, &area).unwrap();
    let mut args = args;
    args[1] = pinned.to_str().unwrap();
    let (ok, out) = simulate(dir.path(), &args);
    assert!(!ok, "{out}");
    assert!(
        out.contains("fridge-1: ignoring `moved` at 127.0.0.1: this device pins a fingerprint and it announces none"),
        "{out}"
    );
    assert!(
        out.contains("fridge-1: no appliance answers at 10.9.8.7:"),
        "{out}"
    );
}

#[test]
fn the_goodbye_at_shutdown_withdraws_the_announcement_at_once() {
    let name = "the_goodbye_at_shutdown_withdraws_the_announcement_at_once";
    if !in_own_netns(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut up = Genba::start(
        "up",
        dir.path(),
        "[discovery]\ninstance = \"leaving\"\n",
        &["--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    );
    up.wait_announced();
    // A browser that stays, as a device's mDNS cache does.
    let daemon = mdns_sd::ServiceDaemon::new().unwrap();
    let events = daemon.browse("_genba._tcp.local.").unwrap();
    let fullname = "leaving._genba._tcp.local.";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(mdns_sd::ServiceEvent::ServiceResolved(r)) if r.fullname == fullname => break,
            Ok(_) => {}
            Err(e) => panic!("not resolved: {e}\n{}", up.log()),
        }
    }
    assert!(up.terminate().success());
    // Records live 75 minutes (PTR) in a cache: gone within seconds means the goodbye came.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(mdns_sd::ServiceEvent::ServiceRemoved(_, name)) if name == fullname => break,
            Ok(_) => {}
            Err(e) => panic!("no goodbye heard: {e}\n{}", up.log()),
        }
    }
    assert!(
        up.log()
            .contains("mDNS announcement withdrawn (goodbye sent)"),
        "{}",
        up.log()
    );
    let _ = daemon.shutdown();

    // Switched off, nothing is announced.
    let up = Genba::start(
        "up",
        dir.path(),
        "[discovery]\nenabled = false\n",
        &["--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    );
    let (ok, out) = simulate(dir.path(), &["--discover", "--batches", "1"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("discovery: no appliance answered within"),
        "{out}"
    );
    assert!(
        out.contains("no appliance answered; the stored address"),
        "{out}"
    );
    assert!(up.log().contains("mDNS announcement off"), "{}", up.log());
}

#[test]
fn of_a_broker_and_a_bridge_on_one_data_dir_one_announces_both_and_the_other_takes_over() {
    let name =
        "of_a_broker_and_a_bridge_on_one_data_dir_one_announces_both_and_the_other_takes_over";
    if !in_own_netns(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // As on the Pi: one config with fixed ports, two processes.
    let (mqtt, http) = (common::free_port(), common::free_port());
    let config = format!(
        "[discovery]\ninstance = \"split\"\n[mqtt]\nlisten = \"{mqtt}\"\n[http]\nlisten = \"{http}\"\n"
    );
    let mut broker = Genba::start("broker", dir.path(), &config, &[]);
    broker.wait_announced();
    let bridge = Genba::start("bridge", dir.path(), &config, &[]);
    let waiting = common::wait_until(Duration::from_secs(10), || {
        bridge
            .log()
            .contains("another genba process announces this appliance")
    });
    assert!(waiting, "{}", bridge.log());
    let both = format!(
        "found `split` at 127.0.0.1: mqtt {}, http {},",
        mqtt.port(),
        http.port()
    );
    let (ok, out) = simulate(
        dir.path(),
        &["--discover", "--discover-secs", "10", "--batches", "1"],
    );
    assert!(ok, "{out}");
    assert!(out.contains(&both), "{out}");
    // One instance, not a renamed second one.
    assert_eq!(out.matches("discovery: found").count(), 1, "{out}");

    // The broker stops: the bridge announces the same within its 5 s retry.
    assert!(broker.terminate().success());
    bridge.wait_announced();
    let (_, out) = simulate(
        dir.path(),
        &["--discover", "--discover-secs", "10", "--batches", "1"],
    );
    assert!(out.contains(&both), "{out}\nbridge log:\n{}", bridge.log());
}

#[test]
fn a_failure_to_announce_is_a_warning_and_the_appliance_serves_on() {
    let name = "a_failure_to_announce_is_a_warning_and_the_appliance_serves_on";
    if !in_own_netns(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // No such interface here: nothing to announce on.
    let up = Genba::start(
        "up",
        dir.path(),
        "[discovery]\ninterfaces = [\"wlan9\"]\n",
        &["--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    );
    let warned = common::wait_until(Duration::from_secs(15), || {
        up.log().contains("mDNS: announced on no network interface")
    });
    assert!(warned, "{}", up.log());
    assert!(up.log().contains("WARN"), "{}", up.log());
    // The appliance serves: readings sent to the address it would otherwise be found at.
    let (ok, out) = simulate(
        dir.path(),
        &[
            "--mqtt",
            &endpoint(dir.path(), "mqtt").to_string(),
            "--http",
            &endpoint(dir.path(), "http").to_string(),
            "--devices",
            "1",
            "--batches",
            "1",
        ],
    );
    assert!(ok, "{out}\n{}", up.log());
    let stored = common::wait_until(Duration::from_secs(15), || {
        readings(dir.path(), "sim-") == 2
    });
    assert!(stored, "{out}");
}

/// A second network namespace, for the devices, joined to the test's own by a veth pair: the
/// appliance's side is `v0` (`appliance_ip`), the devices' `v1` (10.77.0.2): a LAN of two
/// machines, multicast over a real (virtual) Ethernet link instead of loopback.
struct DeviceLan {
    holder: common::Killed,
}

impl DeviceLan {
    fn new(appliance_ip: &str) -> DeviceLan {
        let holder = common::Killed(
            Command::new("unshare")
                .args(["--net", "sleep", "600"])
                .spawn()
                .unwrap(),
        );
        let lan = DeviceLan { holder };
        // `unshare` switches namespaces before it runs sleep.
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let theirs = format!("/proc/{}/ns/net", lan.holder.0.id());
        let ready = common::wait_until(Duration::from_secs(5), || {
            std::fs::read_link(&theirs).is_ok_and(|l| l != own)
        });
        assert!(ready, "the devices' namespace did not come up");
        let pid = lan.holder.0.id().to_string();
        ip(&[
            "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", &pid,
        ]);
        ip(&["addr", "add", &format!("{appliance_ip}/24"), "dev", "v0"]);
        ip(&["link", "set", "v0", "up"]);
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", "10.77.0.2/24", "dev", "v1"],
            &["link", "set", "v1", "up"],
        ] {
            let out = lan.command(ip_program()).args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?} (devices): {out:?}");
        }
        lan
    }

    /// `program` run in the devices' namespace.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.holder.0.id()))
            .arg("--")
            .arg(program);
        c
    }

    /// `genba simulate ARGS` on the devices' machine, with its own empty data dir.
    fn simulate(&self, dir: &Path, args: &[&str]) -> (bool, String) {
        let out = self
            .command(env!("CARGO_BIN_EXE_genba"))
            .arg("simulate")
            .args(args)
            .arg("--data-dir")
            .arg(dir.join("devices"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// iproute2's `ip` (not on a user's PATH everywhere).
fn ip_program() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("iproute2's `ip` is needed for the tests' network namespaces (apt-get install iproute2)")
}

/// `ip ARGS` in the test's namespace.
fn ip(args: &[&str]) {
    let out = Command::new(ip_program()).args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

#[test]
fn a_pi_that_moved_to_another_address_is_found_there_by_a_device_on_the_lan() {
    let name = "a_pi_that_moved_to_another_address_is_found_there_by_a_device_on_the_lan";
    if !in_own_netns(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lan = DeviceLan::new("10.77.0.1");
    // Served on every interface, as on the Pi.
    let up = Genba::start(
        "up",
        dir.path(),
        "[discovery]\ninstance = \"pi\"\n[mqtt]\nallow_anonymous = true\n",
        &["--mqtt", "0.0.0.0:0", "--http", "0.0.0.0:0"],
    );
    up.wait_announced();
    let http = endpoint(dir.path(), "http").port();
    // A thermometer provisioned with the Pi's address of the day.
    let file = provision_fridge(dir.path(), "10.77.0.1");
    let file = file.to_str().unwrap();
    let run = [
        "--device-config",
        file,
        "--discover",
        "--discover-secs",
        "10",
    ];
    let batches = ["--batches", "1", "--interval", "0.1"];

    let (ok, out) = lan.simulate(dir.path(), &[&run[..], &batches].concat());
    println!("before the move:\n{out}");
    assert!(ok, "{out}\nappliance log:\n{}", up.log());
    assert!(out.contains("found `pi` at 10.77.0.1: mqtt "), "{out}");
    assert!(
        out.contains("fridge-1: appliance at 10.77.0.1 (mqtt ")
            && out.contains(&format!("http {http}): announced by `pi`")),
        "{out}"
    );
    assert!(common::wait_until(Duration::from_secs(15), || readings(
        dir.path(),
        "fridge-1"
    ) == 2));

    // The Pi gets another address (a new DHCP lease, another network): nothing is touched on
    // the device, whose config still says 10.77.0.1.
    ip(&["addr", "del", "10.77.0.1/24", "dev", "v0"]);
    ip(&["addr", "add", "10.77.0.9/24", "dev", "v0"]);
    let (ok, out) = lan.simulate(dir.path(), &["--device-config", file, "--batches", "1"]);
    assert!(
        !ok && out.contains("fridge-1: no appliance answers at 10.77.0.1:"),
        "{out}"
    );
    // mdns-sd looks for address changes every 5 s and announces the new one.
    let mut last = String::new();
    let found = common::wait_until(Duration::from_secs(30), || {
        let (ok, out) = lan.simulate(dir.path(), &[&run[..], &batches].concat());
        let moved = ok && out.contains("fridge-1: appliance at 10.77.0.9 (");
        last = out;
        moved
    });
    assert!(found, "{last}\nappliance log:\n{}", up.log());
    println!("after the move:\n{last}");
    assert!(!last.contains("at 10.77.0.1"), "{last}");
    assert!(common::wait_until(Duration::from_secs(15), || readings(
        dir.path(),
        "fridge-1"
    ) == 4));
}
