//! `genba simulate`: thermometers on the host, built from the firmware core (telemetry format,
//! bounded backlog sent oldest first, reconnect backoff with jitter), against a running
//! appliance. For demos, load tests and outage tests: readings carry unique device times, so
//! however often a batch is resent, the appliance stores each reading once. With
//! `--device-config`, the devices are the ones provisioning files describe (`genba devices
//! provision --out`), decoded by the firmware core as the firmware does at boot.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use genba_firmware_core::backlog::Backlog;
use genba_firmware_core::backoff::Backoff;
use genba_firmware_core::config::{self, Credential, DeviceConfig};
use genba_firmware_core::discovery::{self, Choice, Stored};
use genba_firmware_core::telemetry::{self, Reading, Telemetry};
use rand::Rng;
use serde::Serialize;

use crate::discovery::Found;
use pinned::{Pinned, Refusals};

mod pinned;
mod update;

/// Batches a simulated device keeps while it cannot send (the firmware's bound).
const BACKLOG: usize = 256;
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    Mqtt,
    Http,
}

#[derive(clap::Args, Clone, Debug)]
pub struct SimulateArgs {
    /// Number of devices (sim-000, sim-001, ...).
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// DS18B20 probes per device.
    #[arg(long, default_value_t = 2)]
    pub sensors: usize,
    /// Seconds between readings (fractions allowed).
    #[arg(long, default_value_t = 60.0)]
    pub interval: f64,
    #[arg(long, value_enum, default_value_t = Via::Mqtt)]
    pub via: Via,
    /// Stop after this many batches per device, once all are sent (default: run until Ctrl-C).
    #[arg(long)]
    pub batches: Option<u64>,
    /// A device-side network outage: START+LENGTH in seconds from the start, e.g. 10+5.
    #[arg(long)]
    pub outage: Option<String>,
    /// MQTT user name and password (when the broker requires them).
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long, env = "GENBA_SIM_PASSWORD")]
    pub password: Option<String>,
    /// Give up sending the backlog this many seconds after the last batch.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout: u64,
    /// Simulate the device a provisioning file describes (repeat for several) instead of
    /// sim-000...: its id, transport, credential and appliance address come from the file;
    /// --interval still sets the pace.
    #[arg(long = "device-config", value_name = "FILE")]
    pub device_configs: Vec<std::path::PathBuf>,
    /// Find the appliance by mDNS first, as the firmware does (the `_genba._tcp` service it
    /// announces); when none answers or qualifies, the address used without it
    /// (run/endpoints.json, --mqtt/--http, the config, or a device config's appliance).
    #[arg(long)]
    pub discover: bool,
    /// How long --discover browses, seconds (it stops one quiet second after the first answer).
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub discover_secs: f64,
    /// The fingerprint the simulated devices pin (SHA-256 of the appliance's TLS certificate
    /// or of its CA, 64 hex digits). As the firmware, they then speak only TLS (MQTT over TLS,
    /// or HTTPS with the firmware core's own session) to the appliance's TLS ports, trust only a
    /// server whose chain holds that certificate, and --discover ignores announcements that do
    /// not claim it. A device config carries its own.
    #[arg(long, value_name = "SHA256")]
    pub pin: Option<String>,
    /// The firmware version the simulated devices report in each batch (`fw`). MQTT devices
    /// take `update` commands (`genba devices update`): they download the image, check it with
    /// the firmware core and restart into it on trial.
    #[arg(long, value_name = "VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub firmware: String,
    /// A firmware version that never delivers once installed, so its trial ends in a rollback.
    #[arg(long, value_name = "VERSION")]
    pub broken_firmware: Option<String>,
    /// How long a new firmware may run without a delivered batch before the device restarts
    /// (and so returns to the previous one), seconds.
    #[arg(long, value_name = "SECS", default_value_t = f64::from(genba_firmware_core::ota::TRIAL_DEADLINE_S))]
    pub trial_secs: f64,
}

/// What one run did, printed as JSON at the end.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub devices: usize,
    pub batches: u64,
    pub readings: u64,
    pub sent: u64,
    pub retries: u64,
    pub dropped: u64,
    pub unsent: u64,
    /// Stopped by Ctrl-C before the devices finished.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// Running totals of every device, shared with the progress line and read at the end or on
/// Ctrl-C.
#[derive(Default)]
struct Tally {
    batches: AtomicU64,
    readings: AtomicU64,
    sent: AtomicU64,
    retries: AtomicU64,
    dropped: AtomicU64,
}

impl Tally {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// What was made, sent, retried and dropped so far; what was made and neither sent nor
    /// dropped is unsent (still in a device's backlog).
    fn summary(&self, devices: usize) -> Summary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (batches, sent, dropped) = (get(&self.batches), get(&self.sent), get(&self.dropped));
        Summary {
            devices,
            batches,
            readings: get(&self.readings),
            sent,
            retries: get(&self.retries),
            dropped,
            unsent: batches.saturating_sub(sent + dropped),
            interrupted: false,
        }
    }
}

struct Outage {
    start: Duration,
    end: Duration,
}

/// What every device of one run shares.
struct Run {
    args: SimulateArgs,
    interval: Duration,
    started: Instant,
    outage: Option<Outage>,
    tally: Tally,
}

fn parse_outage(s: &str) -> Result<Outage> {
    let (a, b) = s
        .split_once('+')
        .context("--outage: START+LENGTH in seconds, e.g. 10+5")?;
    let start: f64 = a.trim().parse().context("--outage START")?;
    let len: f64 = b.trim().parse().context("--outage LENGTH")?;
    Ok(Outage {
        start: Duration::from_secs_f64(start),
        end: Duration::from_secs_f64(start + len),
    })
}

/// Where and how a device sends one batch.
#[derive(Clone)]
enum Transport {
    Mqtt(Arc<MqttDevice>),
    Http {
        url: String,
        key: String,
        client: reqwest::Client,
    },
    /// HTTPS as the firmware speaks it (the core's TLS session and request), for a device that
    /// pins a certificate.
    Https {
        host: String,
        port: u16,
        key: String,
        pinned: Pinned,
    },
}

/// One simulated device: where it sends, where it downloads firmware, and the TLS servers it
/// refused since its last batch.
struct SimDevice {
    id: String,
    transport: Transport,
    downloads: Downloads,
    refused: Refusals,
}

impl SimDevice {
    /// A device's TLS side: its pin (if any), counting into a counter of its own.
    fn pinned(pin: Option<discovery::Fingerprint>) -> (Option<Pinned>, Refusals) {
        let refused = Refusals::default();
        let pinned = pin.map(|pin| Pinned {
            pin,
            refused: refused.clone(),
        });
        (pinned, refused)
    }
}

impl Transport {
    /// `POST /api/telemetry` with `key`: HTTPS with the core's TLS when the device pins a
    /// certificate, else plain HTTP.
    fn new_http(host: &str, port: u16, key: String, pinned: Option<Pinned>) -> Result<Transport> {
        Ok(match pinned {
            Some(pinned) => Transport::Https {
                host: host.to_owned(),
                port,
                key,
                pinned,
            },
            None => Transport::Http {
                url: format!("http://{}{}", host_port(host, port), config::TELEMETRY_PATH),
                key,
                client: reqwest::Client::builder().timeout(SEND_TIMEOUT).build()?,
            },
        })
    }
}

/// Where a device downloads firmware images, with a client that trusts what the device
/// trusts: HTTPS under its pin, else plain HTTP.
struct Downloads {
    base: String,
    client: reqwest::Client,
}

impl Downloads {
    fn new(host_port: &str, pinned: Option<&Pinned>) -> Result<Downloads> {
        let builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        Ok(match pinned {
            Some(pinned) => Downloads {
                base: format!("https://{host_port}"),
                client: builder
                    .tls_backend_preconfigured(pinned::client_config(pinned)?)
                    .build()
                    .context("HTTPS client")?,
            },
            None => Downloads {
                base: format!("http://{host_port}"),
                client: builder.build().context("HTTP client")?,
            },
        })
    }
}

enum SendError {
    /// Worth retrying later (outage, timeout, 429, 5xx).
    Retry(String),
    /// The appliance refused this batch for good (400/401/403): drop it.
    Refused(String),
}

pub async fn run(
    args: SimulateArgs,
    mqtt: SocketAddr,
    http: SocketAddr,
    db: std::path::PathBuf,
    found: Option<&[Found]>,
) -> Result<Summary> {
    if args.devices == 0 || args.sensors == 0 || args.sensors > telemetry::MAX_READINGS {
        bail!(
            "--devices must be at least 1 and --sensors 1..={}",
            telemetry::MAX_READINGS
        );
    }
    if !args.interval.is_finite() || args.interval <= 0.0 {
        bail!("--interval must be positive");
    }
    if !args.trial_secs.is_finite() || args.trial_secs <= 0.0 {
        bail!("--trial-secs must be positive");
    }
    telemetry::validate_firmware(&args.firmware).map_err(|e| {
        anyhow::anyhow!(
            "--firmware {:?}: {e} (at most {} characters from A-Z a-z 0-9 - _ . +)",
            args.firmware,
            telemetry::FW_MAX
        )
    })?;
    let outage = args.outage.as_deref().map(parse_outage).transpose()?;
    let interval = Duration::from_secs_f64(args.interval);
    let started = Instant::now();
    let mut devices = Vec::new();
    if args.device_configs.is_empty() {
        let pin = pin(&args)?;
        for d in 0..args.devices {
            let device_id = format!("sim-{d:03}");
            let credentials = args.username.as_deref().zip(args.password.as_deref());
            let (pinned, refused) = SimDevice::pinned(pin);
            let downloads = Downloads::new(
                &host_port(&http.ip().to_string(), http.port()),
                pinned.as_ref(),
            )?;
            let transport = match args.via {
                Via::Mqtt => Transport::Mqtt(Arc::new(MqttDevice::connect(
                    &device_id,
                    &mqtt.ip().to_string(),
                    mqtt.port(),
                    credentials,
                    pinned,
                )?)),
                Via::Http => Transport::new_http(
                    &http.ip().to_string(),
                    http.port(),
                    device_key(&db, &device_id)?,
                    pinned,
                )?,
            };
            devices.push(SimDevice {
                id: device_id,
                transport,
                downloads,
                refused,
            });
        }
    } else {
        for path in &args.device_configs {
            devices.push(provisioned(path, found).await?);
        }
    }
    let count = devices.len();
    let run = Arc::new(Run {
        args,
        interval,
        started,
        outage,
        tally: Tally::default(),
    });
    let tally = &run.tally;
    let mut tasks = tokio::task::JoinSet::new();
    for (d, sim) in devices.into_iter().enumerate() {
        let run = run.clone();
        tasks.spawn(async move { device(sim, d, run).await });
    }
    // A progress line on a terminal (indicatif hides it otherwise); Ctrl-C stops the devices
    // and still prints the summary.
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(Duration::from_millis(500));
    let show = |p: &indicatif::ProgressBar| {
        let s = tally.summary(count);
        p.set_message(format!(
            "{count} devices: {} batches made, {} sent, {} retries, {} dropped, {} waiting",
            s.batches, s.sent, s.retries, s.dropped, s.unsent
        ));
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(result) => result.context("device task")??,
                None => break,
            },
            _ = tick.tick() => show(&progress),
            _ = tokio::signal::ctrl_c() => {
                tasks.abort_all();
                progress.finish_and_clear();
                eprintln!("stopped by Ctrl-C after {:.1} s", started.elapsed().as_secs_f64());
                return Ok(Summary { interrupted: true, ..tally.summary(count) });
            }
        }
    }
    progress.finish_and_clear();
    Ok(tally.summary(count))
}

/// The device a provisioning file describes, connected as the firmware would connect it: to
/// the appliance that `--discover` found and the device accepts, else to the one in the file.
async fn provisioned(path: &std::path::Path, found: Option<&[Found]>) -> Result<SimDevice> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let device: DeviceConfig = config::decode_area(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .config;
    let choice = found.map(|found| choose(&device.device_id, found, Stored::from(&device)));
    let host = choice.map_or_else(|| device.host.to_string(), |c| c.host.to_string());
    let (mqtt_port, http_port) = choice.map_or((device.mqtt_port, device.http_port), |c| {
        (c.mqtt_port, c.http_port)
    });
    let port = match device.transport() {
        config::Transport::Mqtt => mqtt_port,
        config::Transport::Http => http_port,
    };
    reachable(&host, port, &device.device_id).await?;
    let (pinned, refused) = SimDevice::pinned(device.ca_sha256);
    let downloads = Downloads::new(&host_port(&host, http_port), pinned.as_ref())?;
    let transport = match &device.credential {
        Credential::Mqtt { username, password } => Transport::Mqtt(Arc::new(MqttDevice::connect(
            &device.device_id,
            &host,
            mqtt_port,
            Some((username.as_str(), password.as_str())),
            pinned,
        )?)),
        Credential::ApiKey(key) => Transport::new_http(&host, http_port, key.to_string(), pinned)?,
    };
    Ok(SimDevice {
        id: device.device_id.to_string(),
        transport,
        downloads,
        refused,
    })
}

/// `host:port`, with brackets around an IPv6 address.
fn host_port(host: &str, port: u16) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// Says at once when nothing answers where a device would send (rather than a minute of
/// retries).
async fn reachable(host: &str, port: u16, device: &str) -> Result<()> {
    let target = host_port(host, port);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&target)
        .await
        .with_context(|| format!("{device}: resolving {target}"))?
        .collect();
    for a in addrs {
        let connect = tokio::net::TcpStream::connect(a);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), connect).await {
            return Ok(());
        }
    }
    bail!("{device}: no appliance answers at {target}")
}

/// Browses for appliances (`--discover`) and says what answered on stderr.
pub fn discover(args: &SimulateArgs) -> Result<Vec<Found>> {
    if !(args.discover_secs.is_finite() && args.discover_secs > 0.0 && args.discover_secs <= 60.0) {
        bail!("--discover-secs must be more than 0 and at most 60");
    }
    let limit = Duration::from_secs_f64(args.discover_secs);
    let started = Instant::now();
    let found = crate::discovery::query(limit).context("mDNS query")?;
    if found.is_empty() {
        eprintln!(
            "discovery: no appliance answered within {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    for f in &found {
        match &f.service {
            Ok(s) => {
                let port = |p: Option<u16>| p.map_or("-".to_owned(), |p| p.to_string());
                let fp = |f: &Option<discovery::Fingerprint>| {
                    f.as_ref()
                        .map_or("-".to_owned(), |f| discovery::hex(f).to_string())
                };
                eprintln!(
                    "discovery: found `{}` at {}: mqtt {}, http {}, mqtts {}, https {}, fp {}, ca {}",
                    f.instance,
                    f.address,
                    port(s.mqtt),
                    port(s.http),
                    port(s.mqtts),
                    port(s.https),
                    fp(&s.fingerprint),
                    fp(&s.ca),
                );
            }
            Err(e) => eprintln!(
                "discovery: found `{}` at {}, not usable: {e}",
                f.instance, f.address
            ),
        }
    }
    Ok(found)
}

/// The firmware core's choice for one device, said on stderr.
pub fn choose<'a>(device: &str, found: &'a [Found], stored: Stored<'a>) -> Choice<'a> {
    let announcements: Vec<discovery::Announcement<'a>> =
        found.iter().map(Found::announcement).collect();
    discovery::choose_and_say(&announcements, stored, |line| {
        eprintln!("discovery: {device}: {line}")
    })
}

/// The fingerprint `--pin` names.
pub fn pin(args: &SimulateArgs) -> Result<Option<discovery::Fingerprint>> {
    args.pin
        .as_deref()
        .map(|p| {
            discovery::parse_fingerprint(p)
                .with_context(|| format!("--pin {p:?}: 64 hex digits (a SHA-256) expected"))
        })
        .transpose()
}

/// A key for `device_id` in the appliance's database on this machine (HTTP mode).
fn device_key(db: &std::path::Path, device_id: &str) -> Result<String> {
    let conn = genba_store::open(db).with_context(|| format!("opening {}", db.display()))?;
    let (_, key) = genba_telemetry::keys::add(&conn, device_id, &[], false)?;
    Ok(key)
}

async fn device(sim: SimDevice, index: usize, run: Arc<Run>) -> Result<()> {
    let SimDevice {
        id: device_id,
        transport,
        downloads,
        refused,
    } = sim;
    let (args, interval, tally) = (&run.args, run.interval, &run.tally);
    let mut firmware = update::Firmware::new(
        &args.firmware,
        args.broken_firmware.as_deref(),
        Duration::from_secs_f64(args.trial_secs),
    );
    let mut backlog: Backlog<Telemetry, BACKLOG> = Backlog::new();
    let mut backoff = Backoff::new(250, 5_000);
    let mut made: u64 = 0;
    let mut temps: Vec<f32> = (0..args.sensors).map(|s| 3.0 + s as f32).collect();
    let t0 = now_ms();
    let mut next_batch = Instant::now();
    let mut retry_at = Instant::now();
    let mut last_batch_at: Option<Instant> = None;
    let mut last_retry_why: Option<String> = None;
    let in_outage = |now: Instant| {
        run.outage
            .as_ref()
            .is_some_and(|o| (o.start..o.end).contains(&now.duration_since(run.started)))
    };
    loop {
        let now = Instant::now();
        let done_making = args.batches.is_some_and(|b| made >= b);
        if !done_making && now >= next_batch {
            let mut t = batch(
                &device_id,
                index,
                &mut temps,
                t0 + made * interval.as_millis() as u64,
            )?;
            t.set_firmware(firmware.version())
                .map_err(|e| anyhow::anyhow!("{e}"))?; // checked in `run` and by the update
                                                       // the TLS servers refused since the previous batch travel with this one
            t.tls_refused = refused.take();
            Tally::add(&tally.readings, t.readings.len() as u64);
            Tally::add(&tally.batches, 1);
            made += 1;
            if backlog.push(t).is_some() {
                Tally::add(&tally.dropped, 1);
            }
            next_batch += interval;
            if args.batches.is_some_and(|b| made >= b) {
                last_batch_at = Some(now);
            }
        }
        if let Transport::Mqtt(m) = &transport {
            while let Some(payload) = m.next_command() {
                firmware
                    .command(&device_id, &payload, &downloads.client, &downloads.base)
                    .await;
            }
        }
        if firmware.restart_if_due(&device_id, backlog.is_empty()) {
            // a restart loses what was only in RAM
            Tally::add(&tally.dropped, backlog.len() as u64);
            while backlog.pop_front().is_some() {}
        }
        // Send the backlog oldest first until it is empty or a send fails.
        while now >= retry_at && !in_outage(Instant::now()) && firmware.delivers() {
            let Some(front) = backlog.front() else { break };
            match send(&transport, front).await {
                Ok(()) => {
                    backlog.pop_front();
                    Tally::add(&tally.sent, 1);
                    backoff.reset();
                    firmware.delivered(&device_id);
                }
                Err(SendError::Refused(why)) => {
                    eprintln!("{device_id}: batch refused, dropped: {why}");
                    backlog.pop_front();
                    Tally::add(&tally.dropped, 1);
                }
                Err(SendError::Retry(why)) => {
                    Tally::add(&tally.retries, 1);
                    let delay = backoff.next_delay_ms(rand::rng().random());
                    // each new reason once (as the firmware logs a refused certificate), the
                    // repeats quietly
                    if last_retry_why.as_ref() != Some(&why) {
                        eprintln!("{device_id}: send failed: {why}; retrying with backoff");
                    }
                    last_retry_why = Some(why);
                    retry_at = Instant::now() + Duration::from_millis(delay as u64);
                    break;
                }
            }
        }
        if done_making && backlog.is_empty() {
            break;
        }
        if let Some(at) = last_batch_at {
            if at.elapsed() > Duration::from_secs(args.drain_timeout) {
                // What is left in the backlog counts as unsent in the summary.
                break;
            }
        }
        let wake = if done_making {
            retry_at
        } else {
            next_batch.min(retry_at.max(Instant::now()))
        };
        tokio::time::sleep_until(wake.max(Instant::now() + Duration::from_millis(10)).into()).await;
    }
    if let Transport::Mqtt(m) = &transport {
        m.disconnect().await;
    }
    Ok(())
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// One batch: every probe read once, temperatures drifting like a fridge's, on the 1/16 °C grid.
fn batch(device_id: &str, index: usize, temps: &mut [f32], ts: u64) -> Result<Telemetry> {
    let mut rng = rand::rng();
    let recorded_at = genba_firmware_core::clock::rfc3339(ts);
    let mut t = Telemetry::new(device_id, &recorded_at, ts, -40 - (index % 40) as i16)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (s, temp) in temps.iter_mut().enumerate() {
        *temp = (*temp + rng.random_range(-0.25f32..0.25)).clamp(-25.0, 12.0);
        let raw = (*temp * 16.0).round() / 16.0;
        let id = format!("28{index:06X}{s:08X}");
        t.push(Reading::new(&id, raw, 0.0).map_err(|e| anyhow::anyhow!("{e}"))?)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(t)
}

async fn send(transport: &Transport, t: &Telemetry) -> Result<(), SendError> {
    let mut buf = vec![0u8; telemetry::JSON_MAX_LEN];
    let n = t
        .to_json(&mut buf)
        .map_err(|e| SendError::Refused(e.to_string()))?;
    buf.truncate(n);
    match transport {
        Transport::Mqtt(m) => m.publish(&t.device_id, buf).await,
        Transport::Http { url, key, client } => {
            let r = client
                .post(url)
                .header("x-api-key", key)
                .header("content-type", "application/json")
                .body(buf)
                .send()
                .await
                .map_err(|e| SendError::Retry(e.to_string()))?;
            match r.status().as_u16() {
                200..=299 => Ok(()),
                429 | 500..=599 => Err(SendError::Retry(format!("HTTP {}", r.status()))),
                _ => Err(SendError::Refused(format!(
                    "HTTP {}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ))),
            }
        }
        Transport::Https {
            host,
            port,
            key,
            pinned,
        } => {
            let post = pinned::post(host.clone(), *port, pinned.clone(), key.clone(), buf);
            let status = tokio::time::timeout(SEND_TIMEOUT, post)
                .await
                .map_err(|_| SendError::Retry("HTTPS: timed out".into()))?
                .map_err(SendError::Retry)?;
            match genba_firmware_core::http::outcome(status) {
                genba_firmware_core::http::Outcome::Delivered => Ok(()),
                genba_firmware_core::http::Outcome::Retry => {
                    Err(SendError::Retry(format!("HTTPS {status}")))
                }
                genba_firmware_core::http::Outcome::Rejected => {
                    Err(SendError::Refused(format!("HTTPS {status}")))
                }
            }
        }
    }
}

/// A device's MQTT session: the event loop runs on its own task and reports PUBACKs.
struct MqttDevice {
    client: rumqttc::AsyncClient,
    acks: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<()>>,
    /// Payloads received on `devices/{id}/commands`.
    commands: std::sync::Mutex<tokio::sync::mpsc::Receiver<Vec<u8>>>,
}

impl MqttDevice {
    fn connect(
        device_id: &str,
        host: &str,
        port: u16,
        credentials: Option<(&str, &str)>,
        pinned: Option<Pinned>,
    ) -> Result<MqttDevice> {
        let mut o = rumqttc::MqttOptions::new(device_id, host, port);
        o.set_keep_alive(Duration::from_secs(15));
        if let Some(pinned) = &pinned {
            o.set_transport(pinned::mqtt_transport(pinned)?);
        }
        if let Some((u, p)) = credentials {
            o.set_credentials(u, p);
        }
        let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 16);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (commands_tx, commands_rx) = tokio::sync::mpsc::channel(8);
        let commands = telemetry::commands_topic(device_id)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_string();
        let subscriber = client.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        let _ = tx.try_send(());
                    }
                    // (again) after every connect: the session may be new
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = subscriber.try_subscribe(&commands, rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))
                        if p.topic == commands =>
                    {
                        let _ = commands_tx.try_send(p.payload.to_vec());
                    }
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        });
        Ok(MqttDevice {
            client,
            acks: tokio::sync::Mutex::new(rx),
            commands: std::sync::Mutex::new(commands_rx),
        })
    }

    /// The next command received, if any.
    fn next_command(&self) -> Option<Vec<u8>> {
        self.commands.lock().ok()?.try_recv().ok()
    }

    async fn publish(&self, device_id: &str, payload: Vec<u8>) -> Result<(), SendError> {
        let topic =
            telemetry::telemetry_topic(device_id).map_err(|e| SendError::Refused(e.to_string()))?;
        let mut acks = self.acks.lock().await;
        while acks.try_recv().is_ok() {} // stale acks of earlier timed-out sends
        self.client
            .try_publish(topic.as_str(), rumqttc::QoS::AtLeastOnce, false, payload)
            .map_err(|e| SendError::Retry(e.to_string()))?;
        match tokio::time::timeout(SEND_TIMEOUT, acks.recv()).await {
            Ok(Some(())) => Ok(()),
            _ => Err(SendError::Retry("no PUBACK".into())),
        }
    }

    async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}
