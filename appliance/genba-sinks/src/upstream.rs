//! The upstream bridge: where messages leave a site for the company's MQTT cluster, and where
//! the cluster's commands for this site's devices come in.
//!
//! Forwarding is a sink like the others ([`crate::run::Consumer`]): the journal rows its
//! filters match are published with QoS 1 on `sites/{site}/{topic}`, in journal order, and
//! the cursor moves only after every PUBACK of a batch. Through an outage the journal is the
//! store: nothing is kept in memory, and the backlog drains in order when the cluster is back
//! (bounded by `store.retention_hours`, and never pruned before it was forwarded). A broken
//! connection is dropped with its state, so a retry publishes the batch once more on a fresh
//! connection: at least once, like every sink.
//!
//! Commands: a second connection with a persistent session subscribes to
//! `sites/{site}/devices/+/commands` with QoS 1 and acknowledges each command only after it is
//! journaled on `devices/{id}/commands` (the command sink then publishes it to the device). A
//! resend after a crash before the PUBACK carries DUP and the same packet id, and the journal
//! drops it: each command is journaled once.

use std::sync::Arc;
use std::time::Duration;

use genba_config::UpstreamConfig;
use genba_store::{Journal, JournalEntry, NewMessage};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};

use crate::outcome::{backoff, Outcome};
use crate::run::{Consumer, Deliver, Pace};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream.{key} {path}: {message}")]
    File {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("upstream: {0}")]
    Tls(String),
    #[error("upstream: journal: {0}")]
    Journal(#[from] genba_store::StoreError),
}

/// Connection settings shared by the forwarding and the command connection.
#[derive(Clone)]
pub struct Link {
    cfg: UpstreamConfig,
    password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Link {
    /// Reads the CA, client certificate and key files now, so a bad file is an error at start
    /// that names it.
    pub fn new(cfg: &UpstreamConfig, password: Option<String>) -> Result<Link, UpstreamError> {
        let tls = if cfg.tls {
            Some(Arc::new(client_config(cfg)?))
        } else {
            None
        };
        Ok(Link {
            cfg: cfg.clone(),
            password,
            tls,
        })
    }

    /// A client and its event loop for the cluster. Nagle is off: a batch ends with a small
    /// PUBLISH and the cluster answers with small PUBACKs, which Nagle and delayed ACKs would
    /// otherwise hold for up to 40 ms each (measured: 100-message batches drained at 2,200
    /// messages/s with it, see docs/fleet.md).
    fn client(&self, options: MqttOptions, capacity: usize) -> (AsyncClient, EventLoop) {
        let (client, mut eventloop) = AsyncClient::new(options, capacity);
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        (client, eventloop)
    }

    fn options(&self, client_id: String, clean: bool) -> MqttOptions {
        let host = self.cfg.host.clone().unwrap_or_default();
        let mut o = MqttOptions::new(client_id, host, self.cfg.port());
        o.set_keep_alive(Duration::from_secs(self.cfg.keep_alive_secs));
        o.set_clean_session(clean);
        o.set_inflight(
            (self.cfg.max_batch.clamp(1, u16::MAX as usize) as u16).min(UpstreamConfig::IN_FLIGHT),
        );
        if let Some(user) = &self.cfg.username {
            o.set_credentials(user, self.password.clone().unwrap_or_default());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        o
    }
}

fn read(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, UpstreamError> {
    std::fs::read(path).map_err(|e| UpstreamError::File {
        key,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn client_config(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let pem = read("ca_file", path)?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| UpstreamError::File {
                    key: "ca_file",
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(UpstreamError::File {
                    key: "ca_file",
                    path: path.display().to_string(),
                    message: "no certificate in the file".into(),
                });
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let pem = read("client_cert", cert)?;
            let chain = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| UpstreamError::File {
                    key: "client_cert",
                    path: cert.display().to_string(),
                    message: "no certificate in the file".into(),
                })?;
            let pem = read("client_key", key)?;
            let private = rustls_pemfile::private_key(&mut pem.as_slice())
                .ok()
                .flatten()
                .ok_or_else(|| UpstreamError::File {
                    key: "client_key",
                    path: key.display().to_string(),
                    message: "no private key in the file".into(),
                })?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| UpstreamError::Tls(e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// What the forwarding connection's event loop reports.
enum Ev {
    /// A PUBLISH went out.
    Sent,
    /// A PUBACK came in.
    Acked,
    Down(String),
}

struct Connection {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Ev>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes batches of journal rows to the cluster with QoS 1 (a [`Deliver`]).
pub struct Forward {
    link: Link,
    prefix: String,
    connection: Option<Connection>,
}

impl Forward {
    pub fn new(link: Link) -> Forward {
        Forward {
            prefix: link.cfg.prefix(),
            link,
            connection: None,
        }
    }

    fn connect(&self) -> Connection {
        let options = self.link.options(self.link.cfg.client_id(), true);
        let (client, mut eventloop) = self
            .link
            .client(options, self.link.cfg.max_batch.max(1) * 2 + 8);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(_))) => Ev::Sent,
                    Ok(Event::Incoming(Packet::PubAck(_))) => Ev::Acked,
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Ev::Down(e.to_string()));
                        return;
                    }
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        });
        Connection {
            client,
            events,
            task,
        }
    }

    async fn publish(&mut self, batch: &[JournalEntry]) -> Result<(), String> {
        let connection = match &mut self.connection {
            Some(c) => c,
            None => self.connection.insert(self.connect()),
        };
        for e in batch {
            let topic = format!("{}/{}", self.prefix, e.topic);
            connection
                .client
                .publish(topic, QoS::AtLeastOnce, false, e.payload.clone())
                .await
                .map_err(|e| format!("publish: {e}"))?;
        }
        // Packet ids are reused once the in-flight window wraps, so count: every PUBACK on
        // this connection answers one publish of this batch (a failed connection is dropped
        // with whatever it still had in flight).
        let (mut sent, mut acked) = (0usize, 0usize);
        let wait = Duration::from_secs(self.link.cfg.timeout_secs.max(1));
        let deadline = tokio::time::Instant::now() + wait;
        while sent < batch.len() || acked < sent {
            match tokio::time::timeout_at(deadline, connection.events.recv()).await {
                Ok(Some(Ev::Sent)) => sent += 1,
                Ok(Some(Ev::Acked)) => acked += 1,
                Ok(Some(Ev::Down(why))) => return Err(format!("connection: {why}")),
                Ok(None) => return Err("connection closed".into()),
                Err(_) => {
                    return Err(format!(
                        "{acked} of {} PUBACKs within {} s",
                        batch.len(),
                        wait.as_secs()
                    ))
                }
            }
        }
        Ok(())
    }
}

impl Deliver for Forward {
    fn fit(&self, wanted: &[JournalEntry]) -> usize {
        wanted.len().min(self.link.cfg.max_batch).max(1)
    }

    /// A retry re-reads from the cursor: the batch may grow after an outage.
    fn retries_same_batch(&self) -> bool {
        false
    }

    async fn deliver(&mut self, batch: &[JournalEntry]) -> Outcome {
        match self.publish(batch).await {
            Ok(()) => Outcome::Delivered,
            Err(why) => {
                // A fresh connection next time: nothing half-sent is resent behind our back.
                self.connection = None;
                Outcome::retry(format!(
                    "upstream {}: {why}",
                    self.link.cfg.host.as_deref().unwrap_or("")
                ))
            }
        }
    }
}

/// The forwarding sink for `[upstream]`.
pub fn forwarder(
    link: Link,
    db_path: std::path::PathBuf,
    wake: Option<watch::Receiver<i64>>,
) -> Consumer<Forward> {
    let cfg = link.cfg.clone();
    Consumer {
        name: cfg.store_name(),
        filters: cfg.filters.clone(),
        source: None,
        pace: Pace {
            rate_per_sec: 1000.0,
            burst: 1000,
            max_backoff: Duration::from_secs(cfg.max_backoff_secs.max(1)),
            park_after: None,
        },
        deliver: Forward::new(link),
        db_path,
        wake,
    }
}

/// The journal source of commands that came from the cluster.
pub fn command_source(cfg: &UpstreamConfig) -> String {
    format!("upstream:{}", cfg.site)
}

/// `devices/{id}/commands` for a command the cluster sent on
/// `sites/{site}/devices/{id}/commands`; None for any other topic or a bad device id.
pub fn local_command_topic(prefix: &str, topic: &str) -> Option<String> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix("/devices/")?;
    let device = rest.strip_suffix("/commands")?;
    let ok = !device.is_empty()
        && device.len() <= 32
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| format!("devices/{device}/commands"))
}

/// Takes the cluster's commands for this site's devices until shutdown: journaled, then
/// acknowledged (see the module doc).
pub async fn commands(
    link: Link,
    journal: Journal,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), UpstreamError> {
    let cfg = link.cfg.clone();
    let prefix = cfg.prefix();
    let filter = format!("{prefix}/devices/+/commands");
    let mut options = link.options(format!("{}-commands", cfg.client_id()), false);
    options.set_manual_acks(true);
    let (client, mut eventloop) = link.client(options, 64);
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = shutdown.changed() => return Ok(()),
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                tracing::info!(%filter, "upstream: command connection up");
                // The session keeps the subscription; subscribing again is harmless.
                if let Err(e) = client.subscribe(&filter, QoS::AtLeastOnce).await {
                    tracing::warn!(error = %e, "upstream: subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = p.topic.clone();
                match local_command_topic(&prefix, &topic) {
                    Some(local) => {
                        journal
                            .append(NewMessage {
                                source: command_source(&cfg),
                                topic: local,
                                payload: p.payload.to_vec(),
                                qos: 1,
                                retain: false,
                                mqtt_pid: Some(p.pkid),
                                dup: p.dup,
                            })
                            .await?;
                    }
                    None => {
                        tracing::warn!(%topic, "upstream: not a command topic of this site; dropped")
                    }
                }
                if let Err(e) = client.ack(&p).await {
                    tracing::warn!(error = %e, "upstream: PUBACK");
                }
            }
            Ok(_) => {}
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures, Duration::from_secs(cfg.max_backoff_secs.max(1)));
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "upstream: command connection down");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_sites_device_command_topics_map_to_local_commands() {
        let p = "sites/osaka-1";
        assert_eq!(
            local_command_topic(p, "sites/osaka-1/devices/fridge-2/commands").as_deref(),
            Some("devices/fridge-2/commands")
        );
        for other in [
            "sites/osaka-10/devices/x/commands",
            "sites/osaka-1/devices//commands",
            "sites/osaka-1/devices/a/b/commands",
            "sites/osaka-1/devices/x/telemetry",
        ] {
            assert_eq!(local_command_topic(p, other), None, "{other}");
        }
    }
}
