//! Starting the roles: each subcommand starts some of them; `up` starts all in one process.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use genba_config::{Config, Secrets};
use genba_store::Journal;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Up,
    Broker,
    Bridge,
    Recorder,
    Slack,
    Exment,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Up => "up",
            Role::Broker => "broker",
            Role::Bridge => "bridge",
            Role::Recorder => "recorder",
            Role::Slack => "slack",
            Role::Exment => "exment",
        }
    }
    fn runs_broker(self) -> bool {
        matches!(self, Role::Up | Role::Broker)
    }
    fn runs_bridge(self) -> bool {
        matches!(self, Role::Up | Role::Bridge)
    }
    /// The delivery sinks: Slack, webhooks, LINE, e-mail.
    fn runs_sinks(self) -> bool {
        matches!(self, Role::Up | Role::Slack)
    }
    /// `up` runs the forwarder only when Exment is configured; `genba exment` requires it.
    fn runs_exment(self, config: &Config) -> bool {
        self == Role::Exment || (self == Role::Up && config.exment.base_url.is_some())
    }
}

/// What a role left running.
pub struct Started {
    pub mqtt: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// MQTT over TLS and HTTPS, when configured.
    pub mqtts: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    /// MQTT over WebSocket, plain and with TLS, when configured.
    pub mqtt_ws: Option<SocketAddr>,
    pub mqtt_wss: Option<SocketAddr>,
    journal: Option<Journal>,
    internal_secret: String,
    bridge: Option<JoinHandle<()>>,
    /// The broker's front door, told to stop accepting at shutdown.
    broker: Option<genba_broker::RunningBroker>,
    tasks: Vec<JoinHandle<()>>,
    /// The mDNS announcement; not a health task (a failure to announce is only a warning).
    discovery: Option<JoinHandle<()>>,
}

/// A role's liveness, as the watchdog sees it.
pub struct Health {
    broker: Option<SocketAddr>,
    secret: String,
    journal: Option<Journal>,
    tasks_alive: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Health {
    pub fn check(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let journal_ok = self.journal.as_ref().is_none_or(|j| j.is_healthy());
            let broker_ok = match self.broker {
                Some(addr) => genba_broker::probe(addr, &self.secret).await,
                None => true,
            };
            journal_ok && broker_ok && (self.tasks_alive)()
        })
    }
}

impl Started {
    /// The broker's accounts, when this process runs the broker.
    pub fn broker_accounts(&self) -> Option<genba_broker::Accounts> {
        self.broker
            .as_ref()
            .map(genba_broker::RunningBroker::accounts)
    }

    pub fn health(&self) -> Health {
        let handles: Vec<_> = self.tasks.iter().map(|t| t.abort_handle()).collect();
        Health {
            broker: self.mqtt,
            secret: self.internal_secret.clone(),
            journal: self.journal.clone(),
            tasks_alive: Arc::new(move || handles.iter().all(|h| !h.is_finished())),
        }
    }

    /// After shutdown was signalled: lets open requests, sink posts and queued journal
    /// appends finish, for at most `limit`.
    pub async fn drain(self, limit: Duration) {
        if let Some(b) = &self.broker {
            b.stop_accepting();
        }
        let work = async {
            // First, so devices hear the goodbye while the rest drains.
            if let Some(d) = self.discovery {
                let _ = d.await;
            }
            if let Some(b) = self.bridge {
                let _ = b.await;
            }
            for t in self.tasks {
                let _ = t.await;
            }
            if let Some(j) = &self.journal {
                while j.pending() > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        if tokio::time::timeout(limit, work).await.is_err() {
            tracing::warn!("some work did not finish within {limit:?}");
        }
    }
}

/// How long a stopped journal consumer waits before it starts again.
const RESTART_PAUSE: Duration = Duration::from_secs(5);

/// Runs a journal consumer until shutdown. One that stops on an error (a database error, a
/// refused write) would hold its cursor where it is, and with it pruning, which only frees
/// rows every consumer passed (docs/storage.md): it is started again after [`RESTART_PAUSE`],
/// with the error logged each time.
async fn supervised<E: std::fmt::Display>(
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
    mut work: impl AsyncFnMut() -> std::result::Result<(), E>,
) {
    loop {
        if let Err(e) = work().await {
            tracing::error!(error = %format!("{e:#}"), "{what} stopped; starting it again in {} s", RESTART_PAUSE.as_secs());
        } else {
            return;
        }
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(RESTART_PAUSE) => {}
            _ = shutdown.changed() => return,
        }
    }
}

pub async fn start(
    role: Role,
    config: &Config,
    secrets: &Secrets,
    shutdown: watch::Receiver<bool>,
) -> Result<Started> {
    let data_dir = config.data_dir();
    let db = genba_store::db_path(&data_dir);
    let internal_secret = internal_secret(&data_dir)?;
    let needs_journal = role.runs_broker() || role.runs_bridge() || role == Role::Recorder;
    let journal = if needs_journal {
        Some(
            Journal::start(
                &db,
                config.http.max_pending.max(1024),
                config.store.max_batch,
            )
            .with_context(|| format!("opening the journal {}", db.display()))?,
        )
    } else {
        None
    };
    let mut started_storage = None;
    if let Some(journal) = &journal {
        register_sinks(&db, config, role.runs_broker())?;
        // Every process with a journal refuses new data at the storage budget; the broker's
        // prunes and raises the alarms.
        started_storage = Some(tokio::spawn(crate::storage::run(
            db.clone(),
            data_dir.clone(),
            journal.clone(),
            config.store.clone(),
            role.runs_broker(),
            shutdown.clone(),
        )));
    }
    // One certificate for every TLS listener, loaded (or made) once; the bridge serves the
    // local CA's certificate (/ca.pem) whenever any TLS listener is configured, even when
    // the broker runs in another process.
    let any_tls = config.mqtt.tls_listen.is_some()
        || config.mqtt.wss_listen.is_some()
        || config.http.tls_listen.is_some();
    let wants_tls = any_tls && (role.runs_broker() || role.runs_bridge());
    let tls = if wants_tls {
        let t = genba_tls::load(&config.tls, &data_dir).context("TLS certificate")?;
        tracing::info!(sha256 = %t.fingerprint, "TLS server certificate");
        Some(t)
    } else {
        None
    };
    let mut started = Started {
        mqtt: None,
        http: None,
        mqtts: None,
        https: None,
        mqtt_ws: None,
        mqtt_wss: None,
        journal: journal.clone(),
        internal_secret: internal_secret.clone(),
        bridge: None,
        broker: None,
        tasks: started_storage.into_iter().collect(),
        discovery: None,
    };

    if role.runs_broker() {
        let journal = journal.clone().context("broker needs the journal")?;
        let listeners = genba_broker::bind(&config.mqtt, tls.is_some()).await?;
        let broker = genba_broker::start(
            &config.mqtt,
            listeners,
            journal.clone(),
            &internal_secret,
            tls.as_ref().map(|t| t.acceptor.clone()),
        )
        .await?;
        tracing::info!(addr = %broker.addr, tls = ?broker.tls_addr, "mqtt broker ready");
        started.mqtt = Some(broker.addr);
        started.mqtts = broker.tls_addr;
        started.mqtt_ws = broker.ws_addr;
        started.mqtt_wss = broker.wss_addr;
        let (db2, j2, stop) = (db.clone(), journal.clone(), shutdown.clone());
        let provisioning = genba_platform::consumer::Provisioning {
            mqtt: config.provisions(!config.mqtt.anonymous_allowed()),
            http: config.provisions(true),
        };
        let rules = config.rules.clone();
        started.tasks.push(tokio::spawn(supervised(
            "telemetry consumer",
            stop.clone(),
            async move || {
                let (db, journal, rules) = (db2.clone(), j2.clone(), rules.clone());
                genba_platform::consumer::run(db, journal, provisioning, rules, stop.clone()).await
            },
        )));
        let (db4, j4, stop) = (db.clone(), journal.clone(), shutdown.clone());
        started.tasks.push(tokio::spawn(supervised(
            "rule webhooks",
            stop.clone(),
            async move || crate::event_sink::run(db4.clone(), j4.clone(), stop.clone()).await,
        )));
        let (db3, j3, stop) = (db.clone(), journal.clone(), shutdown.clone());
        let (addr, secret) = (broker.addr, internal_secret.clone());
        started.tasks.push(tokio::spawn(supervised(
            "command sink",
            stop.clone(),
            async move || {
                crate::command_sink::run(
                    db3.clone(),
                    j3.clone(),
                    addr,
                    secret.clone(),
                    stop.clone(),
                )
                .await
            },
        )));
        started
            .tasks
            .push(tokio::spawn(genba_platform::retention::run(
                genba_store::Db::new(&db),
                config.devices.clone(),
                shutdown.clone(),
            )));
        started.broker = Some(broker);
    }
    if role.runs_bridge() {
        let journal = journal.clone().context("bridge needs the journal")?;
        let broker = started
            .mqtt
            .map(|a| a.to_string())
            .unwrap_or_else(|| config.broker_connect_addr());
        let listeners = genba_bridge::bind(&config.http, tls.is_some()).await?;
        let bridge = genba_bridge::start(
            genba_bridge::BridgeSettings {
                http: config.http.clone(),
                broker,
                internal_user: genba_broker::INTERNAL_USER.into(),
                internal_secret: internal_secret.clone(),
                db_path: db.clone(),
                telemetry: config.telemetry.clone(),
                provision_http: config.provisions(true),
                console: config.console.clone(),
                exment: config.exment.clone(),
                sinks: config.delivery_sinks(),
                tls: tls.clone(),
                metrics_dir: Some(metrics_dir(&data_dir)),
                firmware_dir: genba_store::firmware::dir(&data_dir),
                updates_dir: data_dir.join("updates"),
                live: started.broker.as_ref().map(|b| {
                    Arc::new(BrokerHandoff(b.broker.clone())) as Arc<dyn genba_bridge::LiveHandoff>
                }),
                device_mqtt: started.mqtt.unwrap_or(config.mqtt.listen),
                device_mqtts: started.mqtts.or(config.mqtt.tls_listen),
                local_ca: genba_tls::local_ca_fingerprint(&data_dir)?,
                usb_ports: config.console.board_ports.clone(),
            },
            listeners,
            journal,
            shutdown.clone(),
        )
        .await?;
        tracing::info!(addr = %bridge.addr, tls = ?bridge.tls_addr, "http bridge ready");
        started.http = Some(bridge.addr);
        started.https = bridge.tls_addr;
        started.bridge = Some(bridge.done);
    }
    if role.runs_sinks() {
        for sink in config.delivery_sinks() {
            let mut consumer = genba_sinks::consumer(
                &sink,
                secrets,
                db.clone(),
                journal.as_ref().map(Journal::committed),
            )
            .with_context(|| format!("secrets file {}", config.secrets_path().display()))?;
            let stop = shutdown.clone();
            started.tasks.push(tokio::spawn(supervised(
                "sink",
                stop.clone(),
                async move || consumer.run(stop.clone()).await,
            )));
        }
    }
    if role.runs_sinks() && config.upstream.enabled() {
        let link =
            genba_sinks::upstream::Link::new(&config.upstream, secrets.upstream.password.clone())?;
        let mut forward = genba_sinks::upstream::forwarder(
            link.clone(),
            db.clone(),
            journal.as_ref().map(Journal::committed),
        );
        let stop = shutdown.clone();
        started.tasks.push(tokio::spawn(supervised(
            "upstream forwarding",
            stop.clone(),
            async move || forward.run(stop.clone()).await,
        )));
        match (&journal, config.upstream.commands) {
            (Some(journal), true) => {
                let (journal, stop) = (journal.clone(), shutdown.clone());
                started.tasks.push(tokio::spawn(async move {
                    if let Err(e) = genba_sinks::upstream::commands(link, journal, stop).await {
                        tracing::error!(error = %e, "upstream commands stopped");
                    }
                }));
            }
            (None, true) => tracing::warn!(
                "upstream commands are taken by `genba up` or `genba broker`, which write the journal"
            ),
            _ => {}
        }
    }
    if role.runs_exment(config) {
        let forwarder =
            genba_exment::Forwarder::new(&config.exment, secrets.exment.clone(), db.clone())
                .context("starting the Exment forwarder")?;
        let stop = shutdown.clone();
        started.tasks.push(tokio::spawn(async move {
            if let Err(e) = forwarder.run(stop).await {
                tracing::error!(error = %e, "exment forwarder stopped");
            }
        }));
    }
    if role == Role::Recorder {
        let broker = config
            .recorder
            .broker
            .clone()
            .context("genba recorder needs `broker` under [recorder] in the config")?;
        let journal = journal.clone().context("recorder needs the journal")?;
        let fut = crate::recorder::run(
            broker,
            config.recorder.clone(),
            secrets.recorder.password.clone(),
            journal,
            shutdown.clone(),
        );
        started.tasks.push(tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::error!(error = %format!("{e:#}"), "recorder stopped");
            }
        }));
    }
    if !role.runs_bridge() {
        // The bridge's /metrics shows this process's series too (docs/metrics.md).
        started
            .tasks
            .push(tokio::spawn(genba_bridge::metrics::export(
                metrics_dir(&data_dir),
                role.name(),
                shutdown.clone(),
            )));
    }
    if role.runs_broker() || role.runs_bridge() {
        let listening = crate::discovery::Listening {
            mqtt: started.mqtt,
            http: started.http,
            mqtts: started.mqtts,
            https: started.https,
            fingerprint: tls.as_ref().map(|t| t.fingerprint.clone()),
            ca_fingerprint: tls.as_ref().and_then(|t| t.ca_fingerprint.clone()),
        };
        started.discovery = crate::discovery::spawn(config, &listening, shutdown.clone());
    }
    Ok(started)
}

/// The broker of this process taking the bridge's live copies (no loopback MQTT connection).
struct BrokerHandoff(Arc<genba_broker::broker::Broker>);

impl genba_bridge::LiveHandoff for BrokerHandoff {
    fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.0
            .publish(genba_broker::broker::internal_message(topic, payload));
    }
}

/// Where processes without the bridge leave their metrics for its `/metrics` page.
fn metrics_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("run").join("metrics")
}

/// Registers every configured sink before anything is accepted, so a new sink's cursor starts
/// before the first message it should see (a sink registered later starts at the journal's end).
fn register_sinks(db: &Path, config: &Config, readings: bool) -> Result<()> {
    let reader = genba_store::Reader::open(db)
        .with_context(|| format!("opening the journal {}", db.display()))?;
    for sink in config.delivery_sinks() {
        reader.register_sink(&sink.store_name())?;
    }
    if config.upstream.enabled() {
        reader.register_sink(&config.upstream.store_name())?;
    }
    if readings {
        reader.register_sink(genba_telemetry::READINGS_SINK)?;
        reader.register_sink(crate::command_sink::SINK)?;
        reader.register_sink(crate::event_sink::SINK)?;
    }
    Ok(())
}

/// The secret genba's own roles use to reach the broker; made once, mode 600.
pub(crate) fn internal_secret(data_dir: &Path) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("internal.secret");
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            let secret = genba_auth::passwords::generate_api_key();
            f.write_all(secret.as_bytes())
                .and_then(|_| f.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another role may be writing it right now.
            for _ in 0..50 {
                let s = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if !s.is_empty() {
                    return Ok(s.trim().to_owned());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            anyhow::bail!("{} is empty", path.display())
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_stops_on_an_error_is_started_again_until_it_ends() {
        let (_stop, shutdown) = watch::channel(false);
        let mut runs = 0;
        let started = tokio::time::Instant::now();
        supervised("test consumer", shutdown, async || {
            runs += 1;
            if runs < 3 {
                Err("database is locked")
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(runs, 3);
        assert_eq!(started.elapsed(), RESTART_PAUSE * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_the_pause_ends_the_supervisor() {
        let (stop, shutdown) = watch::channel(false);
        let mut runs = 0;
        let supervisor = supervised("test consumer", shutdown, async || {
            runs += 1;
            Err::<(), _>("always failing")
        });
        let stopper = async {
            tokio::time::sleep(RESTART_PAUSE / 2).await;
            let _ = stop.send(true);
        };
        tokio::join!(supervisor, stopper);
        assert_eq!(runs, 1);
    }
}
