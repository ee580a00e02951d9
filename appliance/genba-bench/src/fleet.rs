//! Fleet benchmarks for the upstream bridge (docs/fleet.md):
//!   (f1) N sites, each a `genba up` on its own data dir and ports, with simulated thermometers
//!        (`genba simulate`), forward their telemetry to one upstream broker (Mosquitto): the
//!        messages/s arriving at the centre, end-to-end lag from the device's reading time to the
//!        centre's subscriber, and each site's memory;
//!   (f2) a site holds M messages through an upstream outage, then the link comes back: genba's
//!        upstream bridge (journal on disk) against Mosquitto's own bridge (`connection`, queue in
//!        memory), the same publisher, the same centre and the same subscriber.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::peers::{self, Genba, Mosquitto};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The load generator's client options, with a QoS 1 window of 100.
fn options(id: &str, addr: SocketAddr) -> MqttOptions {
    let mut o = crate::mqtt_load::options(id.to_owned(), addr);
    o.set_inflight(100);
    o
}

/// What the centre's subscriber saw of one message.
struct Seen {
    topic: String,
    payload: Vec<u8>,
    at_ms: u64,
}

/// A QoS 1 subscriber to `sites/#` on the centre that records every message with its arrival
/// time.
struct Centre {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Centre {
    async fn subscribe(addr: SocketAddr) -> Result<Centre> {
        let (client, mut eventloop) = AsyncClient::new(options("bench-centre", addr), 10_000);
        client.subscribe("sites/#", QoS::AtLeastOnce).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("centre subscriber on {addr}: {e}"),
                Err(_) => bail!("centre subscriber on {addr}: no SUBACK"),
            }
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    let s = Seen {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                        at_ms: now_ms(),
                    };
                    if let Ok(mut v) = into.lock() {
                        v.push(s);
                    }
                }
            }
        });
        Ok(Centre { seen, task })
    }

    fn count(&self) -> usize {
        self.seen.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Waits until `n` messages arrived, or `quiet` passed without a new one.
    async fn wait_for(&self, n: usize, quiet: Duration) -> usize {
        let mut last = (self.count(), Instant::now());
        loop {
            let c = self.count();
            if c >= n {
                return c;
            }
            if c != last.0 {
                last = (c, Instant::now());
            } else if last.1.elapsed() > quiet {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn take(self) -> Vec<Seen> {
        self.task.abort();
        self.seen
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// (f1): `sites` sites with `devices` thermometers in total, each sending `batches` batches of
/// two readings every `interval` seconds, forwarded to one centre.
pub async fn sites(
    genba_bin: &str,
    mosquitto_bin: &str,
    sites: usize,
    devices: usize,
    interval: f64,
    batches: u64,
) -> Result<()> {
    let centre = Mosquitto::start_on(mosquitto_bin, peers::free_port()?, "").await?;
    let subscriber = Centre::subscribe(centre.addr).await?;
    let per_site = devices.div_ceil(sites);
    let mut site_procs = Vec::new();
    let started = Instant::now();
    for s in 0..sites {
        let extra = format!(
            "[upstream]\nhost = \"127.0.0.1\"\nport = {}\ntls = false\nsite = \"site-{s:02}\"\n\
             filters = [\"devices/+/telemetry\"]\ncommands = false\nmax_backoff_secs = 1\n",
            centre.addr.port()
        );
        site_procs.push(Genba::start_with(genba_bin, &extra, tempfile::tempdir()?).await?);
    }
    let start_secs = started.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut sims = Vec::new();
    for g in &site_procs {
        let child = Command::new(genba_bin)
            .arg("simulate")
            .arg("--data-dir")
            .arg(g.dir())
            .args(["--devices", &per_site.to_string(), "--sensors", "2"])
            .args(["--interval", &interval.to_string()])
            .args(["--batches", &batches.to_string(), "--via", "mqtt"])
            .env("GENBA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting genba simulate")?;
        sims.push(child);
    }
    let expected = (per_site * sites) as u64 * batches;
    let mut peak_site_kib = 0u64;
    let mut sum_site_kib = 0u64;
    let mut running = sims.len();
    while running > 0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        running = 0;
        for c in &mut sims {
            if c.try_wait()?.is_none() {
                running += 1;
            }
        }
        if t0.elapsed() > Duration::from_secs_f64(interval * batches as f64 + 300.0) {
            bail!("simulators still running after their schedule and 5 minutes");
        }
    }
    for c in sims {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "genba simulate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let got = subscriber
        .wait_for(expected as usize, Duration::from_secs(30))
        .await;
    let elapsed = t0.elapsed();
    for g in &site_procs {
        let kib = peers::peak_rss_kib(g.pid())?;
        peak_site_kib = peak_site_kib.max(kib);
        sum_site_kib += kib;
    }
    let centre_kib = peers::peak_rss_kib(centre.pid())?;
    let seen = subscriber.take();
    let mut keys = HashSet::new();
    let mut lags = Vec::with_capacity(seen.len());
    for s in &seen {
        let v: serde_json::Value = serde_json::from_slice(&s.payload).unwrap_or_default();
        let ts = v["ts_device"].as_u64().unwrap_or(0);
        keys.insert((s.topic.clone(), ts));
        lags.push(s.at_ms.saturating_sub(ts));
    }
    lags.sort_unstable();
    let unique = keys.len();
    println!(
        "## (f1) fleet: {sites} `genba up` sites -> one upstream broker ({}), {} simulated thermometers",
        peers::mosquitto_version(mosquitto_bin),
        per_site * sites
    );
    println!();
    println!(
        "Each device sends a batch of 2 readings every {interval} s over MQTT (QoS 1) to its site; \
         each site forwards `devices/+/telemetry` to `sites/site-NN/...` on the centre. \
         {batches} batches per device; {start_secs:.1} s to start the {sites} sites."
    );
    println!();
    println!("| batches sent | arrived at the centre | unique | duplicates | msg/s at the centre | lag p50 ms | lag p99 ms | lag max ms | site peak RSS avg / max | centre peak RSS |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {expected} | {got} | {unique} | {} | {:.0} | {} | {} | {} | {} / {} | {} |",
        seen.len() - unique,
        seen.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0),
        mib(sum_site_kib / sites.max(1) as u64),
        mib(peak_site_kib),
        mib(centre_kib)
    );
    println!();
    if (unique as u64) < expected {
        bail!(
            "{} of {expected} batches never reached the centre",
            expected - unique as u64
        );
    }
    Ok(())
}

/// Publishes `n` QoS 1 messages `0..n` on `topic` and waits for every PUBACK.
pub async fn publish_acknowledged(addr: SocketAddr, topic: &str, n: usize) -> Result<()> {
    let (client, mut eventloop) = AsyncClient::new(options("bench-site-publisher", addr), 1000);
    let topic = topic.to_owned();
    let producer = tokio::spawn(async move {
        for i in 0..n {
            client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, i.to_string())
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("publisher on {addr}: {e} after {acked} PUBACKs"),
            Err(_) => bail!("publisher on {addr}: no PUBACK for 30 s after {acked}"),
        }
    }
    let client = producer.await??;
    let _ = client.disconnect().await;
    Ok(())
}

/// What one drain run measured.
struct Drain {
    publish_secs: f64,
    drain_secs: f64,
    arrived: usize,
    unique: usize,
    out_of_order: usize,
    held_rss_kib: u64,
    peak_rss_kib: u64,
}

/// One drain run: `site` is already configured to bridge `notify/#` to `centre_addr`, which is
/// down. Publishes `n` messages into the site, starts the centre, and times the drain.
async fn drain_one(
    mosquitto_bin: &str,
    site_mqtt: SocketAddr,
    site_pid: u32,
    centre_addr: SocketAddr,
    n: usize,
) -> Result<Drain> {
    let t = Instant::now();
    publish_acknowledged(site_mqtt, "notify/bench", n).await?;
    let publish_secs = t.elapsed().as_secs_f64();
    let held_rss_kib = peers::rss_kib(site_pid)?;
    let centre = Mosquitto::start_on(mosquitto_bin, centre_addr, "").await?;
    let t = Instant::now();
    let subscriber = Centre::subscribe(centre.addr).await?;
    let arrived = subscriber.wait_for(n, Duration::from_secs(30)).await;
    let drain_secs = t.elapsed().as_secs_f64();
    let peak_rss_kib = peers::peak_rss_kib(site_pid)?;
    let seen = subscriber.take();
    let mut unique = HashSet::new();
    let mut out_of_order = 0;
    let mut highest: Option<u64> = None;
    for s in &seen {
        let seq: u64 = std::str::from_utf8(&s.payload)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(u64::MAX);
        // A resend of an earlier message is a duplicate, not a reordering.
        if unique.insert(seq) && highest.is_some_and(|h| seq < h) {
            out_of_order += 1;
        }
        highest = highest.max(Some(seq));
    }
    Ok(Drain {
        publish_secs,
        drain_secs,
        arrived,
        unique: unique.len(),
        out_of_order,
        held_rss_kib,
        peak_rss_kib,
    })
}

/// (f2): the drain after an outage holding `n` messages, genba's bridge against Mosquitto's.
pub async fn drain(genba_bin: &str, mosquitto_bin: &str, n: usize) -> Result<()> {
    let centre_addr = peers::free_port()?;
    let extra = format!(
        "[upstream]\nhost = \"127.0.0.1\"\nport = {}\ntls = false\nsite = \"s1\"\n\
         filters = [\"notify/#\"]\ncommands = false\nmax_backoff_secs = 1\n",
        centre_addr.port()
    );
    let genba = Genba::start_with(genba_bin, &extra, tempfile::tempdir()?).await?;
    let g = drain_one(mosquitto_bin, genba.mqtt, genba.pid(), centre_addr, n).await?;
    drop(genba);

    let centre_addr = peers::free_port()?;
    let bridge = format!(
        "connection centre\naddress 127.0.0.1:{}\ntopic notify/# out 1 \"\" sites/s1/\n\
         cleansession false\nrestart_timeout 1\nbridge_protocol_version mqttv311\n",
        centre_addr.port()
    );
    let site = Mosquitto::start_on(mosquitto_bin, peers::free_port()?, &bridge).await?;
    let m = drain_one(mosquitto_bin, site.addr, site.pid(), centre_addr, n).await?;
    drop(site);

    println!(
        "## (f2) upstream outage holding {n} messages, then the drain: genba's upstream bridge vs Mosquitto's bridge ({})",
        peers::mosquitto_version(mosquitto_bin)
    );
    println!();
    println!("Both bridge `notify/#` to `sites/s1/` on the same centre with QoS 1 and a 1 s reconnect. genba holds the outage in its SQLite journal (on disk, every message committed before its PUBACK); Mosquitto with `persistence false` holds its bridge queue in memory.");
    println!();
    println!("| site | publish into the site | drain after the centre is back | msg/s | arrived | unique | out of order | RSS holding the outage | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, d) in [("genba up", &g), ("mosquitto bridge", &m)] {
        println!(
            "| {name} | {:.1} s | {:.1} s | {:.0} | {} | {} | {} | {} | {} |",
            d.publish_secs,
            d.drain_secs,
            d.unique as f64 / d.drain_secs.max(1e-9),
            d.arrived,
            d.unique,
            d.out_of_order,
            mib(d.held_rss_kib),
            mib(d.peak_rss_kib)
        );
    }
    println!();
    Ok(())
}
