//! What every role shares: config, logging, the data dir, sd_notify READY/WATCHDOG, and a
//! clean exit on SIGTERM/SIGINT after in-flight work drained.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use genba_config::{Config, Secrets};
use tokio::sync::watch;

use crate::roles::{self, Role, Started};
use crate::Common;

/// The config file (or the defaults) with the command line's overrides, validated once, after
/// the overrides: `--mqtt 127.0.0.1:1883` makes a file's open listener without users valid.
pub fn load_config(common: &Common) -> Result<Config> {
    let mut config = match common.config.as_deref() {
        Some(path) => Config::read(path)?,
        None => Config::default(),
    };
    if let Some(d) = &common.data_dir {
        config.data_dir = Some(d.clone());
    }
    if let Some(a) = common.mqtt {
        config.mqtt.listen = a;
    }
    if let Some(a) = common.http {
        config.http.listen = a;
    }
    let path = common
        .config
        .clone()
        .unwrap_or_else(|| "(command line)".into());
    config.validate(&path)?;
    Ok(config)
}

pub fn run(role: Role, common: Common) -> Result<()> {
    init_logging();
    // Separate processes label their series, so the bridge's page can hold them all.
    genba_bridge::metrics::install((role != Role::Up).then(|| role.name()));
    let _ = rustls::crypto::ring::default_provider().install_default();
    // taken before the file is read, so a change made while the roles start is not missed
    let config_seen = common.config.as_deref().and_then(config_stamp);
    let config = load_config(&common)?;
    let secrets = Secrets::load(&config.secrets_path())?;
    let data_dir = config.data_dir();
    std::fs::create_dir_all(data_dir.join("run"))
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let _locks = lock_roles(role, &data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("genba")
        .build()
        .context("starting the async runtime")?;
    let code = runtime.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let started = roles::start(role, &config, &secrets, stop_rx).await?;
        if let Some(accounts) = started.broker_accounts() {
            spawn_account_reload(common, config_seen, accounts);
        }
        let endpoints = endpoints_file(&data_dir, role);
        write_endpoints(&endpoints, &data_dir, &started)?;
        print_banner(role, &config, &started);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        spawn_watchdog(&started);
        wait_for_signal().await;
        tracing::info!("stopping: draining in-flight work");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let _ = stop_tx.send(true);
        started.drain(Duration::from_secs(15)).await;
        let _ = std::fs::remove_file(&endpoints);
        tracing::info!("stopped");
        anyhow::Ok(0)
    })?;
    // The broker state writer and blocking pools hold threads; leave without waiting for them.
    std::process::exit(code)
}

/// What tells a changed config file: its modification time and length.
type ConfigStamp = (Option<std::time::SystemTime>, u64);

fn config_stamp(path: &Path) -> Option<ConfigStamp> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// How often the broker looks whether its config file changed.
const ACCOUNTS_POLL: Duration = Duration::from_secs(2);

/// Watches the config file and puts changed MQTT accounts and access rules in force, so a
/// device account that `genba devices provision` adds logs in without a broker restart. Other
/// changes apply at the next start. A config that does not check keeps the accounts as they
/// were, with a warning.
fn spawn_account_reload(
    common: Common,
    mut seen: Option<ConfigStamp>,
    accounts: genba_broker::Accounts,
) {
    let Some(path) = common.config.clone() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ACCOUNTS_POLL);
        loop {
            tick.tick().await;
            let now = config_stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match load_config(&common) {
                Ok(config) => {
                    accounts.replace(&config.mqtt);
                    tracing::info!(
                        config = %path.display(),
                        users = config.mqtt.users.len(),
                        "config changed: MQTT accounts and access rules reloaded (other changes apply at the next start)"
                    );
                }
                Err(e) => tracing::warn!(
                    config = %path.display(),
                    error = %format!("{e:#}"),
                    "config changed but does not check; the MQTT accounts stay as they were"
                ),
            }
        }
    });
}

/// One process per role and data dir: `genba up` holds every role's lock, a role its own.
/// A second one is refused with the first one's pid (the lock goes with the process, also on
/// SIGKILL). The files stay in `run/`; only the lock on them counts.
fn lock_roles(role: Role, data_dir: &Path) -> Result<Vec<std::fs::File>> {
    use std::io::{Read, Seek, Write};
    let names: Vec<&str> = match role {
        Role::Up => vec!["broker", "bridge", "recorder", "slack", "exment"],
        other => vec![other.name()],
    };
    let mut held = Vec::new();
    for name in names {
        let path = data_dir.join("run").join(format!("{name}.lock"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if file.try_lock().is_err() {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            anyhow::bail!(
                "another genba (pid {}) already runs the {name} role with the data dir {}: stop it, \
                 or give this one its own --data-dir",
                pid.trim(),
                data_dir.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        held.push(file);
    }
    Ok(held)
}

fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GENBA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    // The module of each line is shown (a library's own messages say where they come from);
    // colours only on a terminal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // One JSON object per line for log shippers (Loki, Fluent Bit, journald's JSON fields).
    if std::env::var("GENBA_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().flatten_event(true).init();
    } else if under_systemd {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// Where a process says which addresses it serves: `run/endpoints.json` for `genba up`,
/// `run/endpoints-ROLE.json` for one role (separate units do not overwrite each other's).
pub fn endpoints_file(data_dir: &Path, role: Role) -> std::path::PathBuf {
    let name = match role {
        Role::Up => "endpoints.json".to_owned(),
        other => format!("endpoints-{}.json", other.name()),
    };
    data_dir.join("run").join(name)
}

fn write_endpoints(path: &Path, data_dir: &Path, started: &Started) -> Result<()> {
    let body = serde_json::json!({
        "mqtt": started.mqtt.map(|a| a.to_string()),
        "http": started.http.map(|a| a.to_string()),
        "mqtts": started.mqtts.map(|a| a.to_string()),
        "https": started.https.map(|a| a.to_string()),
        "mqtt_ws": started.mqtt_ws.map(|a| a.to_string()),
        "mqtt_wss": started.mqtt_wss.map(|a| a.to_string()),
        "pid": std::process::id(),
        "database": genba_store::db_path(data_dir),
    });
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&body)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn print_banner(role: Role, config: &genba_config::Config, started: &Started) {
    let mut lines = vec![format!("genba {}: serving", role.name())];
    if let Some(a) = started.mqtt {
        lines.push(format!("  MQTT   {a}   (MQTT 3.1.1 and 5 on one port)"));
    }
    if let Some(a) = started.http {
        lines.push(format!("  HTTP   http://{a}/"));
    }
    if let Some(a) = started.mqtts {
        lines.push(format!("  MQTTS  {a}   (MQTT over TLS)"));
    }
    if let Some(a) = started.mqtt_ws {
        lines.push(format!("  MQTT/WebSocket      ws://{a}/mqtt"));
    }
    if let Some(a) = started.mqtt_wss {
        lines.push(format!("  MQTT/WebSocket+TLS  wss://{a}/mqtt"));
    }
    if let Some(a) = started.https {
        lines.push(format!("  HTTPS  https://{a}/   (CA certificate: /ca.pem)"));
    }
    lines.push(format!(
        "  data   {}",
        genba_store::db_path(&config.data_dir()).display()
    ));
    for hook in &config.slack.webhooks {
        lines.push(format!(
            "  slack  {} <- {}",
            hook.name,
            hook.filters.join(", ")
        ));
    }
    if let (Some(m), Some(h)) = (started.mqtt, started.http) {
        lines.push("try it:".into());
        lines.push(format!(
            "  mosquitto_sub -h {} -p {} -t 'notify/#' -v",
            m.ip(),
            m.port()
        ));
        lines.push(format!("  curl 'http://{h}/notify?message=hello'"));
        lines.push(format!("  curl -X POST http://{h}/notify -H 'Content-Type: application/json' -d '{{\"topic\":\"alert/stock\",\"message\":\"low\"}}'"));
    }
    println!("{}", lines.join("\n"));
}

/// Pings WATCHDOG=1 at half the configured interval while the role is healthy; a hung or
/// broken role stops pinging and systemd restarts it.
fn spawn_watchdog(started: &Started) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = interval / 2;
    let health = started.health();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if health.check().await {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!("health check failed; not pinging the watchdog");
            }
        }
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
