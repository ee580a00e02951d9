//! The one-shot subcommands: status, config check, passwd.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use genba_auth::passwords;
use genba_config::Secrets;
use genba_platform::provisioning::Served;

use crate::lifecycle::{endpoints_file, load_config};
use crate::roles::Role;
use crate::Common;

pub fn status(common: &Common, json: bool) -> Result<()> {
    let config = load_config(common)?;
    let db = genba_store::db_path(&config.data_dir());
    if !db.exists() {
        anyhow::bail!(
            "no journal at {} (has genba run with this data dir?)",
            db.display()
        );
    }
    let reader = genba_store::Reader::open(&db)?;
    let status = reader.status(config.exment.base_url.is_some())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "journal: {} rows, last id {}",
        status.journal_rows, status.last_id
    );
    println!(
        "{:<20} {:>8} {:>8} {:>10} {:>7} {:>8}  last error",
        "sink", "cursor", "backlog", "delivered", "parked", "failures"
    );
    for s in &status.sinks {
        println!(
            "{:<20} {:>8} {:>8} {:>10} {:>7} {:>8}  {}",
            s.name,
            s.cursor,
            s.backlog,
            s.delivered,
            s.parked,
            s.failures,
            s.last_error.as_deref().unwrap_or("-")
        );
    }
    if config.delivery_sinks().is_empty() && config.exment.base_url.is_none() {
        println!(
            "no delivery sink is configured: messages are journaled and nothing sends them on; \
             add [[sinks]] (Slack, webhook, LINE, e-mail) to the config, see docs/sinks.md"
        );
    }
    for p in &status.recent_parked {
        println!(
            "parked: {} #{} {}: {}",
            p.sink, p.journal_id, p.topic, p.reason
        );
    }
    if let Some(e) = &status.exment {
        let at = |ms: Option<i64>| {
            ms.and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.format(" (%Y-%m-%d %H:%M:%S UTC)").to_string())
                .unwrap_or_default()
        };
        println!(
            "exment: {}{}, records due {}, sent {}, unknown {}, refused {}",
            e.state.as_deref().unwrap_or("not started"),
            at(e.state_at_ms),
            e.records_due.map_or("-".into(), |n| n.to_string()),
            e.sent,
            e.unknown,
            e.refused
        );
        println!(
            "exment last success: {}{}",
            e.last_success.as_deref().unwrap_or("-"),
            at(e.last_success_at_ms)
        );
        println!(
            "exment last error: {}{}",
            e.last_error.as_deref().unwrap_or("-"),
            at(e.last_error_at_ms)
        );
    }
    Ok(())
}

pub fn config_check(common: &Common) -> Result<()> {
    let config = load_config(common)?;
    let secrets_path = config.secrets_path();
    let secrets = Secrets::load(&secrets_path)?;
    // Building each sink's channel checks its secrets and addresses as the sink will.
    let _ = rustls::crypto::ring::default_provider().install_default();
    for sink in config.delivery_sinks() {
        genba_sinks::Channel::new(&sink, &secrets)
            .with_context(|| format!("secrets file {}", secrets_path.display()))?;
    }
    println!(
        "config ok ({}), {} ({})",
        common
            .config
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into()),
        if secrets_path.exists() {
            "secrets ok"
        } else {
            "no secrets file"
        },
        secrets_path.display()
    );
    Ok(())
}

pub fn passwd(api_key: bool, json: bool) -> Result<()> {
    if api_key {
        let key = passwords::generate_api_key();
        let digest = passwords::api_key_digest(&key);
        if json {
            println!(
                "{}",
                serde_json::json!({"key": key, "api_key_sha256": digest})
            );
            return Ok(());
        }
        println!("api key (give it to the client; shown once): {key}");
        println!("for genba.toml [http] api_key_sha256: \"{digest}\"");
        return Ok(());
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!("empty password on stdin (try: echo -n 'secret' | genba passwd)");
    }
    let hash = passwords::hash_password(password).map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::json!({ "password_hash": hash }));
    } else {
        println!("{hash}");
    }
    Ok(())
}

/// `genba keys add|list|revoke|enable`.
pub fn keys(cmd: crate::KeysCommand) -> Result<()> {
    use crate::KeysCommand;
    use genba_telemetry::keys;
    let open = |common: &Common| -> Result<rusqlite::Connection> {
        let config = load_config(common)?;
        let db = genba_store::db_path(&config.data_dir());
        Ok(genba_store::open(&db)?)
    };
    use crate::platform_cmd::when;
    let show = |k: &keys::KeyInfo| {
        println!(
            "{:>4}  {:<20} {:<8} {:<30} created {}  last used {}",
            k.id,
            k.device_id,
            if k.enabled { "enabled" } else { "REVOKED" },
            k.scopes.join(","),
            when(Some(k.created_at_ms)),
            when(k.last_used_at_ms)
        );
    };
    match cmd {
        KeysCommand::Add {
            common,
            device,
            scopes,
            sign,
            json,
        } => {
            let (info, key) = keys::add(&open(&common)?, &device, &scopes, sign)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": info.id, "device_id": info.device_id, "key": key,
                        "scopes": info.scopes, "signing_secret": info.signing_secret})
                );
                return Ok(());
            }
            if let Some(secret) = &info.signing_secret {
                println!(
                    "signing secret (shown once; HMAC-SHA256 key for X-Genba-Signature): {secret}"
                );
            }
            println!(
                "API key for device {} (id {}; shown once, give it to the device as X-API-Key):",
                info.device_id, info.id
            );
            println!("{key}");
        }
        KeysCommand::List { common, json } => {
            let list = keys::list(&open(&common)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                list.iter().for_each(show);
            }
        }
        KeysCommand::Revoke { common, id } => show(&keys::set_enabled(&open(&common)?, id, false)?),
        KeysCommand::Enable { common, id } => show(&keys::set_enabled(&open(&common)?, id, true)?),
    }
    Ok(())
}

/// `genba simulate`: targets the running appliance of this data dir (run/endpoints.json), or
/// the configured listen addresses; with `--discover`, the appliance mDNS finds first.
pub fn simulate(common: &Common, args: crate::simulate::SimulateArgs) -> Result<()> {
    use genba_firmware_core::config::Transport;
    use genba_firmware_core::discovery::{Host, Stored};
    let config = load_config(common)?;
    let data_dir = config.data_dir();
    // devices that pin a certificate speak only TLS
    let pin = crate::simulate::pin(&args)?;
    let (mut mqtt, mut http) = running_endpoints(common, &config).for_device(pin.is_some());
    let found = if args.discover {
        Some(crate::simulate::discover(&args)?)
    } else {
        None
    };
    if args.device_configs.is_empty() {
        if let Some(found) = &found {
            let host = mqtt.ip().to_string();
            let stored = Stored {
                host: &host,
                mqtt_port: mqtt.port(),
                http_port: http.port(),
                pin,
                transport: match args.via {
                    crate::simulate::Via::Mqtt => Transport::Mqtt,
                    crate::simulate::Via::Http => Transport::Http,
                },
            };
            let choice = crate::simulate::choose("simulated devices", found, stored);
            if let Host::Ip(ip) = choice.host {
                mqtt = std::net::SocketAddr::new(ip, choice.mqtt_port);
                http = std::net::SocketAddr::new(ip, choice.http_port);
            }
        }
        // a pinned device uses only its transport's TLS port
        let needed = match (pin, args.via) {
            (None, _) => vec![mqtt, http],
            (Some(_), crate::simulate::Via::Mqtt) => vec![mqtt],
            (Some(_), crate::simulate::Via::Http) => vec![http],
        };
        for addr in needed {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
                .with_context(|| {
                    format!(
                        "no appliance answers at {addr}: start `genba up` with this data dir ({}), \
                         or give --mqtt/--http{}",
                        data_dir.display(),
                        if args.discover { "" } else { " or --discover" }
                    )
                })?;
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(crate::simulate::run(
        args,
        mqtt,
        http,
        genba_store::db_path(&data_dir),
        found.as_deref(),
    ))?;
    println!("{}", serde_json::to_string(&summary)?);
    if summary.unsent > 0 && !summary.interrupted {
        anyhow::bail!("{} batches could not be sent", summary.unsent);
    }
    Ok(())
}

/// The addresses of the appliance running on this data dir (what `genba up` or each role's
/// process wrote in `run/`), or the configured ones when none runs or `--mqtt/--http` are
/// given.
pub fn running_endpoints(common: &Common, config: &genba_config::Config) -> Served {
    // Left by a process that died without cleaning up (SIGKILL, power cut): not used.
    let alive = |e: &serde_json::Value| {
        e["pid"]
            .as_u64()
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    let data_dir = config.data_dir();
    let roles = [Role::Up, Role::Broker, Role::Bridge];
    let endpoints: Vec<serde_json::Value> = roles
        .into_iter()
        .filter_map(|r| std::fs::read_to_string(endpoints_file(&data_dir, r)).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .filter(alive)
        .collect();
    let running = |key: &str| {
        endpoints
            .iter()
            .find_map(|e| e[key].as_str())
            .and_then(|a| a.parse().ok())
            .filter(|_| common.mqtt.is_none() && common.http.is_none())
    };
    Served {
        mqtt: running("mqtt").unwrap_or(config.mqtt.listen),
        http: running("http").unwrap_or(config.http.listen),
        mqtts: running("mqtts").or(config.mqtt.tls_listen),
        https: running("https").or(config.http.tls_listen),
    }
}

/// Runs `work` on an Exment forwarder of this config (its secrets, its database), on a
/// runtime of its own: `genba exment replay|retry|status` and `genba sinks test|retry exment`.
pub fn with_exment<T>(
    config: &genba_config::Config,
    work: impl AsyncFnOnce(&mut genba_exment::Forwarder) -> Result<T>,
) -> Result<T> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secrets = genba_config::Secrets::load(&config.secrets_path())?;
    let db = genba_store::db_path(&config.data_dir());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut f = genba_exment::Forwarder::new(&config.exment, secrets.exment.clone(), db)?;
        work(&mut f).await
    })
}

/// `genba exment replay|retry|status`.
pub fn exment(common: &Common, cmd: crate::ExmentCommand) -> Result<()> {
    let config = load_config(common)?;
    if let crate::ExmentCommand::Check = cmd {
        match &config.exment.base_url {
            Some(url) => println!("exment configured: {url}"),
            None => {
                println!("exment not configured (no exment.base_url)");
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    with_exment(&config, async |f| {
        match cmd {
            crate::ExmentCommand::Replay { since, device } => {
                let since = chrono::DateTime::parse_from_rfc3339(&since)
                    .map_err(|e| {
                        anyhow::anyhow!("--since {since:?}: {e} (use e.g. 2026-02-15T00:00:00Z)")
                    })?
                    .timestamp_millis();
                let report = f.replay(since, device.as_deref()).await?;
                println!("{}", serde_json::to_string(&report)?);
            }
            crate::ExmentCommand::Retry { device } => {
                let (requeued, report) = f.retry(device.as_deref()).await?;
                println!(
                    "{}",
                    serde_json::json!({ "requeued": requeued, "report": report })
                );
            }
            crate::ExmentCommand::Status => {
                println!("{}", serde_json::to_string_pretty(&f.status()?)?)
            }
            crate::ExmentCommand::Check => {}
        }
        anyhow::Ok(())
    })
}
