//! `genba-bench`: the load generator behind `scripts/bench`. One run measures, with the same
//! client code for both peers:
//!   (a) MQTT: Genba's broker (`genba up`) against Mosquitto, QoS 0 and 1, 1->1 and 10->10:
//!       messages/s received and p50/p99 publish-to-receive latency;
//!   (b) HTTP: `GET /notify` requests/s and p50/p99 at 1, 32 and 128 concurrent clients;
//!   (c) resident memory of `genba up`, idle and after the load.
//! It prints a table with Genba/Mosquitto ratios. With `--platform` it measures the device
//! platform instead (see [`platform`]), with `--sinks` the delivery sinks (see [`sink_load`]),
//! with `--fleet` the upstream bridge (see [`fleet`]).
//! Usage:
//!   genba-bench --genba PATH [--mosquitto PATH] [--seconds N] [--platform | --sinks | --fleet]
//!   fleet options: [--sites 20] [--devices 1000] [--interval 5] [--batches 12] [--messages 100000]

mod fleet;
mod http_load;
mod mqtt_load;
mod peers;
mod platform;
mod sink_load;
mod telemetry_load;

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What one load case measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    pub per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Received / sent (MQTT) or 2xx / requests (HTTP).
    pub delivered: f64,
}

impl Figures {
    pub fn from_samples(
        count: u64,
        expected: u64,
        elapsed: Duration,
        mut lat_us: Vec<u64>,
    ) -> Figures {
        lat_us.sort_unstable();
        let pct = |p: f64| {
            if lat_us.is_empty() {
                0
            } else {
                lat_us[((lat_us.len() - 1) as f64 * p).round() as usize]
            }
        };
        Figures {
            per_sec: count as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            delivered: if expected == 0 {
                0.0
            } else {
                count as f64 / expected as f64
            },
        }
    }
}

struct Args {
    genba: String,
    mosquitto: String,
    seconds: u64,
    platform: bool,
    fleet: bool,
    sinks: bool,
    sites: usize,
    devices: usize,
    interval: f64,
    batches: u64,
    /// Default: 500 for --sinks, 100,000 for --fleet.
    messages: Option<usize>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        genba: String::new(),
        mosquitto: "/usr/sbin/mosquitto".into(),
        seconds: 5,
        platform: false,
        fleet: false,
        sinks: false,
        sites: 20,
        devices: 1000,
        interval: 5.0,
        batches: 12,
        messages: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--genba" => args.genba = value()?,
            "--mosquitto" => args.mosquitto = value()?,
            "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
            "--platform" => args.platform = true,
            "--fleet" => args.fleet = true,
            "--sinks" => args.sinks = true,
            "--sites" => args.sites = value()?.parse().context("--sites")?,
            "--devices" => args.devices = value()?.parse().context("--devices")?,
            "--interval" => args.interval = value()?.parse().context("--interval")?,
            "--batches" => args.batches = value()?.parse().context("--batches")?,
            "--messages" => args.messages = Some(value()?.parse().context("--messages")?),
            "-h" | "--help" => {
                println!("genba-bench --genba PATH [--mosquitto PATH] [--seconds N] [--platform | --sinks [--messages N] | --fleet [--sites N] [--devices N] [--interval S] [--batches N] [--messages N]]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if args.genba.is_empty() {
        bail!("--genba PATH is required (scripts/bench passes target/release/genba)");
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}", a / b)
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

async fn run(args: Args) -> Result<()> {
    let seconds = Duration::from_secs(args.seconds);
    if args.platform {
        if std::env::var("GENBA_BENCH_ONLY").as_deref() != Ok("streams") {
            platform::ingest(&args.genba, seconds * 2).await?;
        }
        return platform::streams(&args.genba, seconds).await;
    }
    if args.sinks {
        return sink_load::run(&args.genba, args.messages.unwrap_or(500)).await;
    }
    if args.fleet {
        if args.sites == 0 || args.devices < args.sites {
            bail!("--sites must be at least 1 and --devices at least --sites");
        }
        fleet::sites(
            &args.genba,
            &args.mosquitto,
            args.sites,
            args.devices,
            args.interval,
            args.batches,
        )
        .await?;
        return fleet::drain(
            &args.genba,
            &args.mosquitto,
            args.messages.unwrap_or(100_000),
        )
        .await;
    }
    let genba = peers::Genba::start(&args.genba).await?;
    let mosquitto = peers::Mosquitto::start(&args.mosquitto).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = peers::rss_kib(genba.pid())?;
    let mosq_idle = peers::rss_kib(mosquitto.pid())?;
    let idle_anon = peers::rss_anon_kib(genba.pid())?;
    let mosq_idle_anon = peers::rss_anon_kib(mosquitto.pid())?;

    println!(
        "## (a) MQTT broker: genba up vs mosquitto ({}), same load generator, {}s per case",
        peers::mosquitto_version(&args.mosquitto),
        args.seconds
    );
    println!();
    println!("| case | genba msg/s | mosquitto msg/s | ratio | genba p50/p99 ms | mosquitto p50/p99 ms | p99 ratio | delivered genba/mosq |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for qos in [0u8, 1] {
        for pairs in [1usize, 10] {
            let g = mqtt_load::run(genba.mqtt, pairs, qos, seconds).await?;
            let m = mqtt_load::run(mosquitto.addr, pairs, qos, seconds).await?;
            println!(
                "| QoS {qos}, {pairs}->{pairs} | {:.0} | {:.0} | {} | {}/{} | {}/{} | {} | {:.0}%/{:.0}% |",
                g.per_sec, m.per_sec, ratio(g.per_sec, m.per_sec),
                ms(g.p50_us), ms(g.p99_us), ms(m.p50_us), ms(m.p99_us),
                ratio(g.p99_us as f64, m.p99_us as f64),
                g.delivered * 100.0, m.delivered * 100.0
            );
        }
    }
    let after_mqtt = peers::rss_kib(genba.pid())?;
    println!();
    println!(
        "## (b) HTTP /notify (journal commit + broker hand-off per request), {}s per case",
        args.seconds
    );
    println!();
    println!("| clients | req/s | p50 ms | p99 ms | 2xx |");
    println!("|---:|---:|---:|---:|---:|");
    for clients in [1usize, 32, 128] {
        let f = http_load::run(genba.http, clients, seconds).await?;
        println!(
            "| {clients} | {:.0} | {} | {} | {:.1}% |",
            f.per_sec,
            ms(f.p50_us),
            ms(f.p99_us),
            f.delivered * 100.0
        );
    }
    let after_http = peers::rss_kib(genba.pid())?;
    println!();
    println!(
        "## (b2) durable /api/telemetry ingest ({} readings per request, one key per device), {}s per case",
        telemetry_load::READINGS_PER_REQUEST, args.seconds
    );
    println!();
    println!("| devices | readings/s | p50 ms | p99 ms | 2xx |");
    println!("|---:|---:|---:|---:|---:|");
    let keys = genba.device_keys(64)?;
    for devices in [1usize, 16, 64] {
        let f = telemetry_load::run(genba.http, &keys[..devices], seconds).await?;
        println!(
            "| {devices} | {:.0} | {} | {} | {:.1}% |",
            f.per_sec,
            ms(f.p50_us),
            ms(f.p99_us),
            f.delivered * 100.0
        );
    }
    let raw_dir = tempfile::tempdir()?;
    let raw4 = telemetry_load::raw_sqlite_rate(
        raw_dir.path(),
        telemetry_load::READINGS_PER_REQUEST,
        seconds,
    )?;
    let raw1000 = telemetry_load::raw_sqlite_rate(raw_dir.path(), 1000, seconds)?;
    println!();
    println!("Raw SQLite reference, same rows and schema, WAL + synchronous=FULL, one thread: {raw4:.0} rows/s committing every 4 rows, {raw1000:.0} rows/s committing every 1000 rows.");
    let load_rss = peers::rss_kib(genba.pid())?;
    let load_anon = peers::rss_anon_kib(genba.pid())?;
    let peak_rss = peers::peak_rss_kib(genba.pid())?;
    let mosq_peak = peers::peak_rss_kib(mosquitto.pid())?;
    println!();
    println!("## (c) resident memory");
    println!();
    println!("| process | idle | after (a) MQTT | after (b) HTTP | after (b2) telemetry | peak |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    println!(
        "| genba up | {} | {} | {} | {} | {} |",
        mib(idle_rss),
        mib(after_mqtt),
        mib(after_http),
        mib(load_rss),
        mib(peak_rss)
    );
    println!(
        "| mosquitto | {} | - | - | - | {} |",
        mib(mosq_idle),
        mib(mosq_peak)
    );
    println!();
    println!(
        "Of that, private memory (RssAnon; the rest is the binary's and libraries' clean file \
         pages, shared and dropped first under memory pressure): genba up {} idle, {} after \
         (b2); mosquitto {} idle.",
        mib(idle_anon),
        mib(load_anon),
        mib(mosq_idle_anon)
    );
    Ok(())
}
