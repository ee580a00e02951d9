//! mDNS (DNS-SD, mdns-sd): the appliance announces `_genba._tcp.local.` so devices find it
//! after it moved, and `genba simulate --discover` asks for it with the firmware's own query
//! and reader (docs/discovery.md). The TXT record is written and read by the firmware core's
//! `discovery` module, so both ends share its keys and the choice between the announced and
//! the stored address.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use genba_config::Config;
use genba_firmware_core::discovery::{Service, SERVICE_TYPE};
use genba_firmware_core::mdns;
use mdns_sd::{DaemonEvent, IfKind, ServiceDaemon, ServiceInfo};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the roles of this process serve, and their certificate's fingerprints.
#[derive(Debug, Clone, Default)]
pub struct Listening {
    pub mqtt: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub mqtts: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    /// SHA-256 of the TLS server certificate, hex.
    pub fingerprint: Option<String>,
    /// SHA-256 of the local CA's certificate, hex.
    pub ca_fingerprint: Option<String>,
}

/// The announcement one process makes for the appliance.
#[derive(Debug, Clone)]
struct Plan {
    instance: String,
    /// The SRV target, `HOST.local.`.
    host: String,
    /// The SRV port: MQTT, or HTTP when this appliance has no MQTT port to give.
    port: u16,
    service: Service,
    /// Interface selections, applied in order (the last that matches an interface wins).
    interfaces: Vec<(IfKind, bool)>,
}

impl Plan {
    /// Ports this process serves, else the configured ones (the broker and the bridge may be
    /// separate processes with one config; a configured port 0 is not known here).
    fn new(config: &Config, on: &Listening) -> Result<Plan, String> {
        let fingerprint = |hex: &Option<String>, what: &str| -> Result<_, String> {
            hex.as_deref()
                .map(|h| {
                    genba_firmware_core::discovery::parse_fingerprint(h)
                        .ok_or_else(|| format!("{what} {h:?} is not SHA-256"))
                })
                .transpose()
        };
        let pick = |own: Option<SocketAddr>, configured: Option<SocketAddr>| {
            own.or(configured).filter(|a| a.port() != 0)
        };
        let mqtt = pick(on.mqtt, Some(config.mqtt.listen));
        let http = pick(on.http, Some(config.http.listen));
        let mqtts = pick(on.mqtts, config.mqtt.tls_listen);
        let https = pick(on.https, config.http.tls_listen);
        let service = Service {
            mqtt: mqtt.map(|a| a.port()),
            http: http.map(|a| a.port()),
            mqtts: mqtts.map(|a| a.port()),
            https: https.map(|a| a.port()),
            fingerprint: fingerprint(&on.fingerprint, "the certificate's fingerprint")?,
            ca: fingerprint(&on.ca_fingerprint, "the CA's fingerprint")?,
        };
        let port = service
            .mqtt
            .or(service.http)
            .ok_or("neither an MQTT nor an HTTP port is known")?;
        let host = host_name();
        let instance = config
            .discovery
            .instance
            .clone()
            .unwrap_or_else(|| host.clone());
        let ips: BTreeSet<IpAddr> = [mqtt, http, mqtts, https]
            .into_iter()
            .flatten()
            .map(|a| a.ip())
            .collect();
        Ok(Plan {
            instance,
            host: format!("{host}.local."),
            port,
            service,
            interfaces: interfaces(&config.discovery.interfaces, &ips),
        })
    }

    fn txt(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        self.service
            .write_txt(|k, v| pairs.push((k.to_owned(), v.to_owned())));
        pairs
    }
}

/// Where to announce: the configured interfaces, else those of the listen addresses (all for
/// an unspecified address); IPv4 only when every listener is IPv4, so no device is handed an
/// IPv6 address nothing listens on.
fn interfaces(names: &[String], ips: &BTreeSet<IpAddr>) -> Vec<(IfKind, bool)> {
    let mut sel = Vec::new();
    if !names.is_empty() {
        sel.push((IfKind::All, false));
        sel.extend(names.iter().map(|n| (IfKind::Name(n.clone()), true)));
    } else if !ips.iter().any(IpAddr::is_unspecified) {
        sel.push((IfKind::All, false));
        sel.extend(ips.iter().map(|ip| (IfKind::Addr(*ip), true)));
    }
    if ips.iter().all(IpAddr::is_ipv4) {
        sel.push((IfKind::IPv6, false));
    }
    sel
}

/// The machine's host name as a DNS label (what avahi answers as `HOST.local`). From uname:
/// the units hide /proc/sys (`ProcSubset=pid`).
fn host_name() -> String {
    let raw = nix::unistd::gethostname().unwrap_or_default();
    let label: String = raw
        .to_string_lossy()
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "genba".into()
    } else {
        label.to_owned()
    }
}

/// Starts announcing this appliance when `[discovery]` is on: in a task that ends after the
/// shutdown signal, once the goodbye packets went out. The broker and the bridge may run as
/// separate processes: the one holding `run/discovery.lock` announces for both, the other takes
/// over when it stops. A failure to announce is a warning; the roles run on regardless.
pub fn spawn(
    config: &Config,
    listening: &Listening,
    shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    if !config.discovery.enabled {
        tracing::info!("mDNS announcement off ([discovery] enabled = false)");
        return None;
    }
    let plan = match Plan::new(config, listening) {
        Ok(p) => p,
        Err(why) => {
            tracing::warn!("not announced over mDNS: {why}");
            return None;
        }
    };
    let lock = config.data_dir().join("run").join("discovery.lock");
    Some(tokio::spawn(announce(plan, lock, shutdown)))
}

async fn announce(plan: Plan, lock: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let Some(_held) = take_lock(&lock, &mut shutdown).await else {
        return;
    };
    let announcer = match Announcer::start(&plan) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "not announced over mDNS; devices use their stored address");
            return;
        }
    };
    tracing::info!(
        name = %announcer.fullname,
        host = %plan.host,
        port = plan.port,
        txt = ?plan.txt(),
        "announcing over mDNS"
    );
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    announcer.stop().await;
}

/// Takes `run/discovery.lock` (kept until the task ends), waiting while another genba process
/// of this data directory holds it; `None` when shutdown came first.
async fn take_lock(path: &Path, shutdown: &mut watch::Receiver<bool>) -> Option<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let mut said = false;
    loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
        {
            Ok(mut file) => {
                if file.try_lock().is_ok() {
                    let _ = file
                        .set_len(0)
                        .and_then(|_| file.rewind())
                        .and_then(|_| write!(file, "{}", std::process::id()));
                    return Some(file);
                }
                if !said {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    tracing::info!(
                        pid = pid.trim(),
                        "another genba process announces this appliance over mDNS; taking over \
                         when it stops"
                    );
                    said = true;
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "not announced over mDNS");
                return None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => return None,
        }
        if *shutdown.borrow() {
            return None;
        }
    }
}

struct Announcer {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Announcer {
    fn start(plan: &Plan) -> Result<Announcer, mdns_sd::Error> {
        let daemon = ServiceDaemon::new()?;
        for (kind, on) in &plan.interfaces {
            if *on {
                daemon.enable_interface(kind.clone())?;
            } else {
                daemon.disable_interface(kind.clone())?;
            }
        }
        watch_daemon(daemon.monitor()?);
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &plan.instance,
            &plan.host,
            (),
            plan.port,
            &plan.txt()[..],
        )?
        .enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        daemon.register(info)?;
        Ok(Announcer { daemon, fullname })
    }

    /// Withdraws the service (goodbye packets: TTL 0, sent twice) and stops the daemon.
    async fn stop(self) {
        let Announcer { daemon, fullname } = self;
        let done = tokio::task::spawn_blocking(move || {
            let sent = daemon
                .unregister(&fullname)
                .ok()
                .and_then(|r| r.recv_timeout(Duration::from_secs(2)).ok());
            // mdns-sd repeats the goodbye 120 ms later.
            std::thread::sleep(Duration::from_millis(300));
            if let Ok(r) = daemon.shutdown() {
                let _ = r.recv_timeout(Duration::from_secs(2));
            }
            sent
        })
        .await;
        match done {
            Ok(Some(mdns_sd::UnregisterStatus::OK)) => {
                tracing::info!("mDNS announcement withdrawn (goodbye sent)")
            }
            other => tracing::warn!(status = ?other, "mDNS announcement not withdrawn cleanly"),
        }
    }
}

/// Logs what the mDNS daemon reports: where it announced, errors, a renaming after a name
/// conflict, and a warning when it announced nowhere within a few seconds.
fn watch_daemon(events: mdns_sd::Receiver<DaemonEvent>) {
    let spawned = std::thread::Builder::new()
        .name("mdns-monitor".into())
        .spawn(move || {
            let started = Instant::now();
            let mut announced = false;
            let mut warned = false;
            loop {
                let event = if announced || warned {
                    events.recv().map_err(|_| ())
                } else {
                    match events.recv_timeout(Duration::from_secs(3)) {
                        Err(mdns_sd::RecvTimeoutError::Timeout) => {
                            tracing::warn!(
                                "mDNS: announced on no network interface after {:?} (none up \
                                 with multicast, or [discovery] interfaces names none); \
                                 devices use their stored address until one comes up",
                                started.elapsed()
                            );
                            warned = true;
                            continue;
                        }
                        other => other.map_err(|_| ()),
                    }
                };
                let Ok(event) = event else { return }; // the daemon stopped
                match event {
                    DaemonEvent::Announce(name, on) => {
                        if !announced {
                            tracing::info!(%name, %on, "mDNS: announced");
                        } else {
                            tracing::debug!(%name, %on, "mDNS: announced");
                        }
                        announced = true;
                    }
                    DaemonEvent::Error(e) => tracing::warn!(error = %e, "mDNS"),
                    DaemonEvent::NameChange(c) => tracing::warn!(
                        original = %c.original,
                        new = %c.new_name,
                        "mDNS: another host on the LAN uses this name; renamed"
                    ),
                    other => tracing::debug!(event = ?other, "mDNS"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "mDNS: cannot watch the daemon");
    }
}

/// One appliance that answered, as the firmware core read it.
pub use genba_firmware_core::mdns::Found;

/// Asks the LAN for appliances as a device does: the firmware core's one-shot mDNS query
/// (`genba_firmware_core::mdns`), sent from an ordinary UDP port on every IPv4 interface that
/// is up, the unicast answers read with the core's reader. Until an appliance answers, the
/// query goes out again at the core's intervals ([`mdns::resend_after_ms`]: 1 s, 2 s, 4 s, ...).
/// Waits until `limit`, or one quiet second after the first appliance answered (others on the
/// LAN answer within it too).
pub fn query(limit: Duration) -> std::io::Result<Vec<Found>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let id: u16 = rand::random();
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
    let socket = std::net::UdpSocket::from(socket);
    send_query(&socket, id)?;
    let mut sent = 1;
    let mut next_send = Instant::now() + resend_wait(sent);
    let deadline = Instant::now() + limit;
    let mut quiet_until: Option<Instant> = None;
    let mut found: heapless::Vec<Found, 64> = heapless::Vec::new();
    let mut buf = [0u8; 9000]; // the largest mDNS packet (RFC 6762 §17)
    loop {
        let until = match quiet_until {
            Some(quiet) => quiet.min(deadline),
            None => next_send.min(deadline),
        };
        let Some(wait) = until
            .checked_duration_since(Instant::now())
            .filter(|w| !w.is_zero())
        else {
            if quiet_until.is_none() && until < deadline {
                send_query(&socket, id)?;
                sent += 1;
                next_send = Instant::now() + resend_wait(sent);
                continue;
            }
            break;
        };
        socket.set_read_timeout(Some(wait))?;
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e),
        };
        match mdns::read_response(&buf[..n], id, &mut found) {
            Ok(added) if added > 0 && quiet_until.is_none() => {
                quiet_until = Some(Instant::now() + Duration::from_secs(1));
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%from, error = %e, "mDNS: packet ignored"),
        }
    }
    tracing::debug!(sent, "mDNS: queries sent");
    let mut found = found.into_iter().collect::<Vec<_>>();
    found.sort_by(|a, b| (&a.instance, a.address).cmp(&(&b.instance, b.address)));
    Ok(found)
}

fn resend_wait(sent: u32) -> Duration {
    Duration::from_millis(mdns::resend_after_ms(sent).into())
}

/// Sends the query `id` to the mDNS group from each IPv4 interface in turn: the multicast
/// leaves from it, the answer comes back to it. An error when no interface could send it.
fn send_query(socket: &std::net::UdpSocket, id: u16) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(socket);
    let packet = mdns::query(id);
    let group = SocketAddr::from((mdns::GROUP, mdns::PORT)).into();
    let mut sent = 0;
    for iface in if_addrs::get_if_addrs()? {
        let if_addrs::IfAddr::V4(v4) = &iface.addr else {
            continue;
        };
        let on = socket
            .set_multicast_if_v4(&v4.ip)
            .and_then(|()| socket.send_to(&packet, &group));
        match on {
            Ok(_) => sent += 1,
            Err(e) => tracing::debug!(interface = %iface.name, error = %e, "mDNS query not sent"),
        }
    }
    if sent == 0 {
        return Err(std::io::Error::other(
            "no IPv4 interface could send the mDNS query",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn shown(sel: &[(IfKind, bool)]) -> Vec<String> {
        sel.iter().map(|(k, on)| format!("{k:?}={on}")).collect()
    }

    #[test]
    fn interfaces_follow_the_listen_addresses() {
        // 0.0.0.0: every interface, IPv4 only.
        assert_eq!(shown(&interfaces(&[], &ips(&["0.0.0.0"]))), ["IPv6=false"]);
        // Loopback only: announced on loopback only.
        assert_eq!(
            shown(&interfaces(&[], &ips(&["127.0.0.1"]))),
            ["All=false", "Addr(127.0.0.1)=true", "IPv6=false"]
        );
        // [::] takes IPv6 too; configured names win over addresses.
        assert!(interfaces(&[], &ips(&["::", "0.0.0.0"])).is_empty());
        assert_eq!(
            shown(&interfaces(&["eth0".into()], &ips(&["0.0.0.0"]))),
            ["All=false", "Name(\"eth0\")=true", "IPv6=false"]
        );
    }

    #[test]
    fn the_plan_announces_the_bound_ports_and_the_fingerprints() {
        let mut config = Config::default();
        config.discovery.instance = Some("shop".into());
        config.http.tls_listen = Some("0.0.0.0:443".parse().unwrap());
        let fp = "ab".repeat(32);
        let on = Listening {
            mqtt: Some("127.0.0.1:41883".parse().unwrap()),
            fingerprint: Some(fp.clone()),
            ..Listening::default()
        };
        let plan = Plan::new(&config, &on).unwrap();
        assert_eq!(plan.instance, "shop");
        assert_eq!(plan.port, 41883);
        assert!(plan.host.ends_with(".local."));
        let txt = plan.txt();
        let get = |k: &str| {
            txt.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("v"), Some("1"));
        assert_eq!(get("mqtt"), Some("41883"));
        // Not served by this process: the configured ports.
        assert_eq!(get("http"), Some("8080"));
        assert_eq!(get("https"), Some("443"));
        assert_eq!(get("mqtts"), None);
        assert_eq!(get("fp"), Some(fp.as_str()));
        assert_eq!(get("ca"), None);
        // What the device side reads back.
        let pairs: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(Service::from_txt(&pairs), Ok(plan.service));
        // A configured port 0 that this process does not serve is not announced.
        config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.http.tls_listen = None;
        let err = Plan::new(&config, &Listening::default()).unwrap_err();
        assert!(err.contains("neither"), "{err}");
    }

    #[test]
    fn the_host_name_is_a_dns_label() {
        let h = host_name();
        assert!(!h.is_empty() && h.len() <= 63, "{h}");
        assert!(
            h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{h}"
        );
    }
}
