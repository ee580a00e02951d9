//! The upstream bridge against Debian's Mosquitto as the stand-in cluster, with TLS and client
//! certificates made here: a backlog built during an outage of the cluster drains in order
//! with nothing lost, across SIGKILLs of genba during the drain, in bounded memory; and a
//! command sent to this site on the cluster reaches the local device once.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::{free_port, mosquitto_broker, mosquitto_tool, wait_until, Appliance, Killed};

/// Messages held through the outage (the figure); GENBA_UPSTREAM_MESSAGES overrides.
fn backlog_size() -> usize {
    std::env::var("GENBA_UPSTREAM_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn start_cluster(pki: &Pki, port: u16) -> Killed {
    let (crt, key) = pki.server();
    let conf = pki.dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n\
             require_certificate true\nuse_identity_as_username true\nallow_anonymous true\n\
             persistence false\nmax_queued_messages 0\nmax_inflight_messages 0\n",
            ca = pki.ca.display(),
            crt = crt.display(),
            key = key.display()
        ),
    )
    .unwrap();
    let child = Command::new(mosquitto_broker())
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    Killed(child)
}

/// A client of the cluster (mosquitto_sub/pub with the central office's certificate).
fn cluster_tool(
    pki: &Pki,
    name: &str,
    port: u16,
    cert: &(std::path::PathBuf, std::path::PathBuf),
) -> Command {
    let mut c = Command::new(mosquitto_tool(name));
    c.args(["-h", "localhost", "-p", &port.to_string(), "--cafile"])
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&cert.0)
        .arg("--key")
        .arg(&cert.1);
    c
}

/// The site's WAN link to the cluster: a TCP relay on `port` that is down (nothing listens)
/// until [`WanLink::up`], so the cluster and its subscribers are ready before the site reaches it.
struct WanLink {
    port: u16,
    cluster: u16,
}

impl WanLink {
    fn up(&self) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        let cluster = self.cluster;
        std::thread::spawn(move || {
            for site in listener.incoming().flatten() {
                let Ok(far) = std::net::TcpStream::connect(("127.0.0.1", cluster)) else {
                    continue;
                };
                let (mut a, mut b) = (site.try_clone().unwrap(), far.try_clone().unwrap());
                let (mut c, mut d) = (far, site);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c, &mut d);
                    let _ = d.shutdown(std::net::Shutdown::Both);
                });
            }
        });
    }
}

/// Publishes `m-000000`.. with QoS 1 and returns once every PUBACK came back (each message
/// is then journaled). rumqttc, since mosquitto_pub -l stops reading a large stdin early.
fn publish_acknowledged(port: u16, topic: &str, n: usize) {
    let mut o = rumqttc::MqttOptions::new("site-publisher", "127.0.0.1", port);
    o.set_inflight(100);
    let (client, mut connection) = rumqttc::Client::new(o, 200);
    let topic = topic.to_owned();
    let publisher = std::thread::spawn(move || {
        for i in 0..n {
            client
                .publish(
                    &topic,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    format!("m-{i:06}"),
                )
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    for event in connection.iter() {
        match event {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                acked += 1;
                if acked == n {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("publishing to genba: {e}"),
        }
    }
    let _ = publisher.join().unwrap().disconnect();
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_outage_backlog_drains_in_order_across_sigkills_and_commands_come_down_once() {
    let n = backlog_size();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let site_cert = pki.client("osaka-1");
    let central = pki.client("central");
    let port = free_port().port();
    let link = WanLink {
        port: free_port().port(),
        cluster: port,
    };
    let config = format!(
        "[upstream]\nhost = \"localhost\"\nport = {port}\nsite = \"osaka-1\"\nfilters = [\"notify/#\"]\n\
         ca_file = \"{ca}\"\nclient_cert = \"{crt}\"\nclient_key = \"{key}\"\nmax_backoff_secs = 1\n",
        port = link.port,
        ca = pki.ca.display(),
        crt = site_cert.0.display(),
        key = site_cert.1.display()
    );
    let mut a = Appliance::start(&config, "");

    // The cluster is down while the site takes n messages (QoS 1, journaled before PUBACK).
    let t0 = Instant::now();
    publish_acknowledged(a.mqtt.port(), "notify/line1", n);
    assert_eq!(
        a.journal().len(),
        n,
        "every acknowledged message is journaled"
    );
    println!(
        "{n} messages journaled during the outage in {:?}",
        t0.elapsed()
    );
    let (ok, status) = a.genba(&["status", "--json"]);
    assert!(ok, "{status}");
    assert!(status.contains("upstream:osaka-1"), "{status}");

    // The central office subscribes to every site; then the site's link comes back.
    let _cluster = start_cluster(&pki, port);
    let received = dir.path().join("central.txt");
    let _central_sub = Killed(
        cluster_tool(&pki, "mosquitto_sub", port, &central)
            .args(["-t", "sites/#", "-q", "1", "-v", "-i", "central"])
            .stdout(std::fs::File::create(&received).unwrap())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(700));
    link.up();
    let t1 = Instant::now();
    let mut kills = 0;
    let mut peak_rss = 0;
    let last = format!("sites/osaka-1/notify/line1 m-{:06}", n - 1);
    while !lines(&received).contains(&last) && t1.elapsed() < Duration::from_secs(600) {
        peak_rss = peak_rss.max(rss_kib(a.pid()));
        let got = lines(&received).len();
        // Two SIGKILLs in the middle of the drain; started again at once.
        if (kills == 0 && got > n / 3) || (kills == 1 && got > 2 * n / 3) {
            a.kill9();
            a.spawn();
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain = t1.elapsed();
    let got = lines(&received);
    println!(
        "drained {} messages ({} with resends) in {drain:?} with {kills} SIGKILLs; peak RSS {} KiB",
        n,
        got.len(),
        peak_rss
    );
    let log = a.log();
    let tail: String = log
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        kills, 2,
        "the drain ended before both SIGKILLs; log:\n{tail}"
    );

    // Every message arrived, in order; a resend after a SIGKILL repeats at most the batches
    // that were in flight (at least once), never reorders. The default batch (1,000) is ten
    // times the in-flight window, so packet ids wrap within every batch.
    let numbers: Vec<usize> = got
        .iter()
        .map(|l| {
            let (topic, payload) = l.split_once(' ').unwrap();
            assert_eq!(topic, "sites/osaka-1/notify/line1");
            payload.trim_start_matches("m-").parse().unwrap()
        })
        .collect();
    let mut next = 0;
    for &x in &numbers {
        assert!(x <= next, "message {x} before {next}: reordered or lost");
        if x == next {
            next += 1;
        }
    }
    assert_eq!(next, n, "every message arrived");
    assert!(
        numbers.len() - n <= 2 * 2 * 1000,
        "{} resends for 2 SIGKILLs",
        numbers.len() - n
    );
    assert!(
        peak_rss < 200 * 1024,
        "genba used {peak_rss} KiB while draining"
    );

    // A command for a device of this site, sent on the cluster, reaches it once.
    let mut device = common::mosquitto_sub(
        a.mqtt.port(),
        &["-t", "devices/fridge-2/commands", "-q", "1", "-C", "1"],
    );
    let out = cluster_tool(&pki, "mosquitto_pub", port, &central)
        .args([
            "-t",
            "sites/osaka-1/devices/fridge-2/commands",
            "-q",
            "1",
            "-m",
            "{\"cmd\":\"defrost\"}",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(20), || device
            .try_wait()
            .unwrap()
            .is_some()),
        "the command did not reach the device\n{}",
        a.log()
    );
    let mut text = String::new();
    std::io::Read::read_to_string(&mut device.stdout.take().unwrap(), &mut text).unwrap();
    assert_eq!(text.trim(), "{\"cmd\":\"defrost\"}");
    let journaled = a
        .journal()
        .iter()
        .filter(|(topic, _)| topic == "devices/fridge-2/commands")
        .count();
    assert_eq!(journaled, 1, "the command is journaled once");
}

#[test]
fn a_bad_certificate_file_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("genba.toml");
    std::fs::write(
        &config,
        "[upstream]\nhost = \"localhost\"\nsite = \"s1\"\nca_file = \"/nonexistent/ca.pem\"\n",
    )
    .unwrap();
    let out = common::genba_up(&dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream.ca_file /nonexistent/ca.pem"),
        "{err}"
    );
}
