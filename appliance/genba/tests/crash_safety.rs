//! Crash safety: `genba up` under HTTP and MQTT publishing load is killed with SIGKILL at
//! random moments and restarted on the same ports and data. Every message that got a 200 or
//! a PUBACK must be in the journal exactly once and reach the (fake) Slack at least once,
//! and SQLite's integrity check must pass.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake_slack::FakeSlack;
use common::{wait_until, Appliance};
use rand::Rng;

type Acked = Arc<Mutex<BTreeSet<String>>>;

/// Sequential HTTP publishers; a message counts as acknowledged only on a 200.
fn http_publishers(
    url: String,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut tasks = Vec::new();
            for task in 0..4 {
                let (client, url, stop, acked) =
                    (client.clone(), url.clone(), stop.clone(), acked.clone());
                tasks.push(tokio::spawn(async move {
                    let mut attempts = 0u64;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let msg = format!("h-{task}-{n}");
                        n += 1;
                        attempts += 1;
                        let body = serde_json::json!({"topic": "crash/http", "message": msg});
                        match client.post(&url).json(&body).send().await {
                            Ok(r) if r.status() == 200 => {
                                acked.lock().unwrap().insert(msg);
                                // Paced so the fake Slack (10 posts/s) can drain it in the test's time.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                    attempts
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total
        })
    })
}

/// One QoS 1 message in flight at a time, so a PUBACK names its message; rumqttc resends
/// the in-flight message (DUP) after a reconnect, as any MQTT client does.
fn mqtt_publisher(port: u16, stop: Arc<AtomicBool>, acked: Acked) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut o = rumqttc::MqttOptions::new("crash-publisher", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(false);
        let (client, mut conn) = rumqttc::Client::new(o, 10);
        let mut pkid_msg: HashMap<u16, String> = HashMap::new();
        let mut current: Option<String> = None;
        let mut n = 0u64;
        loop {
            if current.is_none() {
                if stop.load(Ordering::Relaxed) {
                    return n;
                }
                let msg = format!("q-{n}");
                n += 1;
                client
                    .publish("crash/mqtt", rumqttc::QoS::AtLeastOnce, false, msg.clone())
                    .unwrap();
                current = Some(msg);
            }
            match conn.recv_timeout(Duration::from_secs(1)) {
                Ok(Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid)))) => {
                    if let Some(m) = &current {
                        pkid_msg.insert(pkid, m.clone());
                    }
                }
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(ack)))) => {
                    if let Some(m) = pkid_msg.remove(&ack.pkid) {
                        if current.as_ref() == Some(&m) {
                            current = None;
                        }
                        acked.lock().unwrap().insert(m);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) if stop.load(Ordering::Relaxed) => return n,
                Err(_) => {}
            }
        }
    })
}

fn message_ids(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("h-") || w.starts_with("q-"))
}

#[test]
fn acknowledged_messages_survive_repeated_sigkill_exactly_once_in_the_journal() {
    common::install_crypto();
    let slack = FakeSlack::start();
    let mut a = Appliance::start(
        "[[slack.webhooks]]\nname = \"ops\"\nfilters = [\"crash/#\"]\nrate_per_sec = 10\nburst = 20\nmax_coalesce = 20\ntimeout_secs = 2\nmax_backoff_secs = 1\n",
        &format!("[slack]\nops = \"{}\"\n", slack.url()),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let http = http_publishers(a.url("/notify"), stop.clone(), acked.clone());
    let mqtt = mqtt_publisher(a.mqtt.port(), stop.clone(), acked.clone());

    // The kill timing is random; a failure prints the seed, and GENBA_TEST_SEED repeats it.
    let seed = std::env::var("GENBA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    println!("crash timing seed: {seed} (GENBA_TEST_SEED={seed} repeats it)");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        a.kill9();
        assert_eq!(a.integrity_check(), "ok");
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        a.spawn();
    }
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let http_attempts = http.join().unwrap();
    let mqtt_sent = mqtt.join().unwrap();

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.iter().any(|m| m.starts_with("h-")),
        "no HTTP message acknowledged ({http_attempts} attempts)"
    );
    assert!(
        acked.iter().any(|m| m.starts_with("q-")),
        "no MQTT message acknowledged ({mqtt_sent} sent)"
    );

    // In the journal exactly once.
    let journal = a.journal();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, payload) in &journal {
        *count.entry(payload.as_str()).or_default() += 1;
    }
    for m in &acked {
        assert_eq!(
            count.get(m.as_str()),
            Some(&1),
            "{m} acknowledged but journaled {:?} times",
            count.get(m.as_str())
        );
    }
    assert!(
        journal.iter().all(|(_, p)| count[p.as_str()] == 1),
        "a message was journaled twice"
    );
    assert_eq!(a.integrity_check(), "ok");

    // At least once at the fake Slack.
    let delivered = || -> BTreeSet<String> {
        slack
            .delivered_texts()
            .iter()
            .flat_map(|t| message_ids(t).map(str::to_owned).collect::<Vec<_>>())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(120), || acked.is_subset(&delivered())),
        "not delivered: {:?}",
        acked.difference(&delivered()).take(10).collect::<Vec<_>>()
    );
    eprintln!(
        "crash test: {} acknowledged ({} http attempts, {} mqtt messages), {} journal rows, 4 SIGKILLs",
        acked.len(),
        http_attempts,
        mqtt_sent,
        journal.len()
    );
}
