//! The network loop: SNTP, then finding the appliance (an mDNS query, else the stored address),
//! then MQTT (publish the backlog oldest first, receive commands) or HTTP (`POST
//! /api/telemetry` with `X-API-Key`), reconnecting with backoff and jitter. The appliance is
//! looked for again whenever it stops answering.

use core::fmt::Write as _;
use embassy_futures::select::{Either, select};
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::TcpSocket;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpAddress, Stack};
use embassy_time::{Duration, Instant, Timer, with_timeout};
use embedded_io_async::{Read as _, Write as _};
use esp_hal::gpio::{Level, Output};
use esp_hal::rng::Rng;
use genba_firmware_core::backoff::Backoff;
use genba_firmware_core::clock::{self, NTP_PORT};
use genba_firmware_core::command::{Command, Effect};
use genba_firmware_core::config::{Credential, DeviceConfig, HOST_MAX};
use genba_firmware_core::discovery::{self, Stored};
use genba_firmware_core::http::{self, Outcome};
use genba_firmware_core::mdns::{self, Found};
use genba_firmware_core::telemetry::{self, JSON_MAX_LEN, Topic};
use genba_firmware_core::tls::{self, Fingerprint};
use heapless::String;
use log::{error, info, warn};

use crate::link::{self, LinkError, TlsBuffers};
use crate::ota;
use crate::state::{self, BACKLOG, CLOCK, DATA_READY, SETTINGS, SETTINGS_CHANGED, WAKE_SENSORS};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MQTT_KEEPALIVE_S: u16 = 30;
/// Resync the clock this often once synced (the RC-derived clock drifts).
const RESYNC_MS: u64 = 6 * 3600 * 1000;
/// Retry SNTP this often until the first sync.
const UNSYNCED_RETRY_MS: u64 = 60 * 1000;

/// Why a connection attempt or session ended.
#[derive(Debug)]
pub enum NetError {
    Dns,
    Timeout,
    Connect(embassy_net::tcp::ConnectError),
    Link(LinkError),
    Tls(tls::Error),
    NoEntropy,
    Mqtt,
    HttpStatus(u16),
    Http(http::Error),
    Udp,
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetError::Dns => f.write_str("name not resolved"),
            NetError::Timeout => f.write_str("timed out"),
            NetError::Connect(e) => write!(f, "TCP connect failed: {e:?}"),
            NetError::Link(e) => write!(f, "{e}"),
            NetError::Tls(e) => write!(f, "{e}"),
            NetError::NoEntropy => f.write_str("no entropy source for TLS"),
            NetError::Mqtt => f.write_str("MQTT session ended"),
            NetError::HttpStatus(s) => write!(f, "HTTP status {s}"),
            NetError::Http(e) => write!(f, "HTTP: {e}"),
            NetError::Udp => f.write_str("UDP error"),
        }
    }
}

/// What outlives one connection to the appliance.
struct Carry {
    /// Reconnect pacing.
    backoff: Backoff,
    /// The clock's sync.
    time: TimeSync,
    /// The TLS session's record buffers (used when the config pins a certificate).
    tls: TlsBuffers,
}

/// SNTP bookkeeping.
struct TimeSync {
    server: &'static str,
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
}

impl TimeSync {
    fn due(&self) -> bool {
        let elapsed_ms = |t: Option<Instant>| t.map(|t| t.elapsed().as_millis());
        match (elapsed_ms(self.last_success), elapsed_ms(self.last_attempt)) {
            (Some(ok), Some(tried)) => ok >= RESYNC_MS && tried >= UNSYNCED_RETRY_MS,
            (None, Some(tried)) => tried >= UNSYNCED_RETRY_MS,
            (_, None) => true,
        }
    }

    async fn run_if_due(&mut self, stack: Stack<'static>) {
        if !self.due() {
            return;
        }
        self.last_attempt = Some(Instant::now());
        match sntp(stack, self.server).await {
            Ok(epoch_ms) => {
                self.last_success = Some(Instant::now());
                let uptime = Instant::now().as_millis();
                let boot = state::with(&CLOCK, |c| c.sync(epoch_ms, uptime));
                // batches taken before the first sync get real timestamps now
                let fixed = state::with(&BACKLOG, |b| {
                    b.iter_mut()
                        .map(|t| t.resolve_time(boot))
                        .filter(|&changed| changed)
                        .count()
                });
                info!(
                    "time synced: {} ({fixed} queued batches re-stamped)",
                    clock::rfc3339(epoch_ms)
                );
            }
            Err(e) => warn!(
                "SNTP with {} failed: {e}; readings stay marked unsynced",
                self.server
            ),
        }
    }
}

/// Where the appliance is: the announced address (an IPv4 literal) or the stored host, and
/// its ports (the TLS ones when the config pins a certificate).
#[derive(Debug, Clone)]
struct Target {
    host: String<HOST_MAX>,
    mqtt_port: u16,
    http_port: u16,
    pin: Option<Fingerprint>,
}

impl Target {
    /// True when a session that ended with `e` never reached the appliance at this address:
    /// it may have moved, so it is looked for again.
    fn lost(e: &NetError) -> bool {
        matches!(e, NetError::Dns | NetError::Timeout | NetError::Connect(_))
    }
}

/// How long the device listens for answers to its mDNS query.
const DISCOVERY_WAIT: Duration = Duration::from_secs(2);

/// Asks the LAN for the appliance (an mDNS query, answers for [`DISCOVERY_WAIT`]) and takes
/// the core's choice between what answered and the stored address.
async fn discover(stack: Stack<'static>, cfg: &'static DeviceConfig) -> Target {
    let mut found: heapless::Vec<Found, 4> = heapless::Vec::new();
    if let Err(e) = mdns_query(stack, &mut found).await {
        warn!("mDNS query failed: {e}");
    }
    let stored = Stored::from(cfg);
    let announcements: heapless::Vec<discovery::Announcement<'_>, 4> =
        found.iter().map(Found::announcement).collect();
    let choice =
        discovery::choose_and_say(&announcements, stored, |line| info!("discovery: {line}"));
    let mut host = String::new();
    // an IPv4 literal, or the stored host, which fits its own HOST_MAX
    let _ = write!(host, "{}", choice.host);
    Target {
        host,
        mqtt_port: choice.mqtt_port,
        http_port: choice.http_port,
        pin: cfg.ca_sha256,
    }
}

/// Sends the one-shot query to 224.0.0.251:5353 from an ordinary port and reads the unicast
/// answers until [`DISCOVERY_WAIT`] has passed; while nothing has answered, the query goes out
/// again at the core's intervals ([`mdns::resend_after_ms`]).
async fn mdns_query<const N: usize>(
    stack: Stack<'static>,
    found: &mut heapless::Vec<Found, N>,
) -> Result<(), NetError> {
    let (mut rx_meta, mut tx_meta) = ([PacketMetadata::EMPTY; 4], [PacketMetadata::EMPTY; 1]);
    let (mut rx_buf, mut tx_buf) = ([0u8; 1500], [0u8; mdns::QUERY_LEN]);
    let mut sock = UdpSocket::new(stack, &mut rx_meta, &mut rx_buf, &mut tx_meta, &mut tx_buf);
    sock.bind(0).map_err(|_| NetError::Udp)?;
    let id = Rng::new().random() as u16;
    let group = (IpAddress::Ipv4(mdns::GROUP), mdns::PORT);
    let mut packet = [0u8; 1500];
    let deadline = Instant::now() + DISCOVERY_WAIT;
    let mut sent = 0;
    let mut next_send = Instant::now();
    loop {
        if found.is_empty() && Instant::now() >= next_send {
            sock.send_to(&mdns::query(id), group)
                .await
                .map_err(|_| NetError::Udp)?;
            sent += 1;
            next_send = Instant::now() + Duration::from_millis(mdns::resend_after_ms(sent).into());
        }
        let until = if found.is_empty() {
            next_send.min(deadline)
        } else {
            deadline
        };
        let left = until.saturating_duration_since(Instant::now());
        let Ok(received) = with_timeout(left, sock.recv_from(&mut packet)).await else {
            if until == deadline {
                return Ok(()); // the time is up
            }
            continue; // time to ask again
        };
        // a packet larger than the buffer is cut: the reader refuses it
        let Ok((n, _from)) = received else { continue };
        if let Err(e) = mdns::read_response(&packet[..n], id, found) {
            info!("discovery: a packet was ignored: {e}");
        }
    }
}

/// Opens a TCP connection to `host:port` (a name or an IPv4 literal) on the given buffers;
/// `timeout` ends it when the peer stays silent that long.
pub async fn connect<'a>(
    stack: Stack<'static>,
    (host, port): (&str, u16),
    rx: &'a mut [u8],
    tx: &'a mut [u8],
    timeout: Duration,
) -> Result<TcpSocket<'a>, NetError> {
    let server = resolve(stack, host).await?;
    let mut socket = TcpSocket::new(stack, rx, tx);
    socket.set_timeout(Some(timeout));
    match with_timeout(CONNECT_TIMEOUT, socket.connect((server, port))).await {
        Err(_) => Err(NetError::Timeout),
        Ok(Err(e)) => Err(NetError::Connect(e)),
        Ok(Ok(())) => Ok(socket),
    }
}

async fn resolve(stack: Stack<'static>, host: &str) -> Result<IpAddress, NetError> {
    let found = with_timeout(CONNECT_TIMEOUT, stack.dns_query(host, DnsQueryType::A))
        .await
        .map_err(|_| NetError::Timeout)?
        .map_err(|_| NetError::Dns)?;
    found.first().copied().ok_or(NetError::Dns)
}

#[derive(Debug)]
enum SntpFailure {
    Net(NetError),
    Answer(clock::SntpError),
}

impl core::fmt::Display for SntpFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SntpFailure::Net(e) => write!(f, "{e}"),
            SntpFailure::Answer(e) => write!(f, "{e}"),
        }
    }
}

async fn sntp(stack: Stack<'static>, server: &str) -> Result<u64, SntpFailure> {
    let server = resolve(stack, server).await.map_err(SntpFailure::Net)?;
    let (mut rx_meta, mut tx_meta) = ([PacketMetadata::EMPTY; 2], [PacketMetadata::EMPTY; 2]);
    let (mut rx_buf, mut tx_buf) = ([0u8; 128], [0u8; 64]);
    let mut sock = UdpSocket::new(stack, &mut rx_meta, &mut rx_buf, &mut tx_meta, &mut tx_buf);
    sock.bind(0).map_err(|_| SntpFailure::Net(NetError::Udp))?;
    let rng = Rng::new();
    let nonce = (u64::from(rng.random()) << 32) | u64::from(rng.random());
    sock.send_to(&clock::sntp_request(nonce), (server, NTP_PORT))
        .await
        .map_err(|_| SntpFailure::Net(NetError::Udp))?;
    let mut buf = [0u8; 128];
    // a stray packet is skipped; stop at the deadline
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (n, _from) = with_timeout(left, sock.recv_from(&mut buf))
            .await
            .map_err(|_| SntpFailure::Net(NetError::Timeout))?
            .map_err(|_| SntpFailure::Net(NetError::Udp))?;
        match clock::sntp_parse(&buf[..n], nonce) {
            Ok(ms) => return Ok(ms),
            Err(clock::SntpError::WrongNonce) => continue,
            Err(e) => return Err(SntpFailure::Answer(e)),
        }
    }
}

/// The status LED and its polarity.
pub struct Led {
    pin: Output<'static>,
    active_low: bool,
}

impl Led {
    pub fn new(pin: Output<'static>, active_low: bool) -> Self {
        Led { pin, active_low }
    }

    fn set(&mut self, on: bool) {
        self.pin.set_level(if on != self.active_low {
            Level::High
        } else {
            Level::Low
        });
    }
}

/// Applies a command payload received on `devices/{id}/commands` from the appliance at
/// `target`. A changed interval or offset is also written to the config partition (by
/// `storage::persist_task`); an update is installed by `ota::update_task`, from `target`.
fn handle_command(payload: &[u8], led: &mut Led, target: &Target) {
    let cmd = match Command::parse(payload) {
        Ok(c) => c,
        Err(e) => {
            warn!("command refused: {e}");
            return;
        }
    };
    match state::with(&SETTINGS, |s| s.apply(&cmd)) {
        Ok(Effect::Led(on)) => {
            led.set(on);
            info!("command: LED {}", if on { "on" } else { "off" });
        }
        Ok(Effect::Interval) => {
            info!(
                "command: report interval now {} s",
                state::with(&SETTINGS, |s| s.interval_s)
            );
            WAKE_SENSORS.signal(());
            SETTINGS_CHANGED.signal(());
        }
        Ok(Effect::Offset) => {
            info!("command: offset updated ({cmd:?})");
            SETTINGS_CHANGED.signal(());
        }
        Ok(Effect::SendNow) => {
            info!("command: send now");
            WAKE_SENSORS.signal(());
        }
        Ok(Effect::Update) => ota::request(&cmd, &target.host, target.http_port, target.pin),
        Err(e) => warn!("command refused: {e}"),
    }
}

/// Serialises the oldest batch into `buf`. Batches that cannot be serialised (impossible for
/// batches built by this firmware) are dropped so they cannot block the queue.
fn oldest_json(buf: &mut [u8]) -> Option<usize> {
    state::with(&BACKLOG, |b| {
        loop {
            let result = b.front()?.to_json(buf);
            match result {
                Ok(n) => return Some(n),
                Err(e) => {
                    error!("dropping a batch that does not serialise: {e}");
                    b.pop_front();
                }
            }
        }
    })
}

/// Runs forever: keeps the clock synced and the backlog flowing to the appliance.
pub async fn run(stack: Stack<'static>, mut led: Led, cfg: &'static DeviceConfig) -> ! {
    led.set(false);
    let mut carry = Carry {
        backoff: Backoff::new(1_000, 60_000),
        time: TimeSync {
            server: &cfg.ntp_server,
            last_attempt: None,
            last_success: None,
        },
        tls: TlsBuffers::new(),
    };
    // MQTT session buffers live across reconnects, so QoS 1 state survives an outage
    let mut mqtt_rx = [0u8; 1024];
    let mut mqtt_tx = [0u8; 2 * JSON_MAX_LEN + 512];
    let mut session = match &cfg.credential {
        Credential::Mqtt { username, password } => {
            let config =
                minimq::ConfigBuilder::new(minimq::Buffers::new(&mut mqtt_rx, &mut mqtt_tx))
                    .client_id(&cfg.device_id)
                    .and_then(|c| c.auth(username, password.as_bytes()))
                    .map(|c| c.keepalive_interval(MQTT_KEEPALIVE_S));
            match config {
                Ok(c) => Some(minimq::Session::new(c)),
                Err(e) => {
                    // only reachable with a config the core's checks should have refused
                    error!("MQTT configuration refused: {e:?}");
                    None
                }
            }
        }
        Credential::ApiKey(_) => None,
    };
    // found at the first connection, and again after the appliance stopped answering
    let mut target: Option<Target> = None;
    loop {
        if !stack.is_config_up() {
            info!("waiting for Wi-Fi and DHCP");
            stack.wait_config_up().await;
            if let Some(cfg) = stack.config_v4() {
                info!("IP address {}", cfg.address);
            }
        }
        carry.time.run_if_due(stack).await;
        let here = match &target {
            Some(t) => t.clone(),
            None => target.insert(discover(stack, cfg).await).clone(),
        };
        let result = match (&mut session, &cfg.credential) {
            (_, Credential::ApiKey(key)) => http_loop(stack, cfg, &here, key, &mut carry).await,
            (Some(session), Credential::Mqtt { .. }) => {
                mqtt_loop(stack, cfg, &here, session, &mut carry, &mut led).await
            }
            (None, Credential::Mqtt { .. }) => {
                Timer::after(Duration::from_secs(3600)).await;
                continue;
            }
        };
        if Target::lost(&result) {
            target = None;
        }
        let delay = carry.backoff.next_delay_ms(Rng::new().random());
        warn!(
            "link to the appliance lost ({result}); retry {} in {delay} ms",
            carry.backoff.attempts()
        );
        Timer::after(Duration::from_millis(u64::from(delay))).await;
    }
}

/// One MQTT connection: connect, subscribe, then publish the backlog oldest first (QoS 1;
/// a batch leaves the backlog only when its PUBACK arrives) and handle commands.
async fn mqtt_loop(
    stack: Stack<'static>,
    cfg: &DeviceConfig,
    target: &Target,
    session: &mut minimq::Session<'_>,
    carry: &mut Carry,
    led: &mut Led,
) -> NetError {
    let (telemetry_topic, commands_topic): (Topic, Topic) = match (
        telemetry::telemetry_topic(&cfg.device_id),
        telemetry::commands_topic(&cfg.device_id),
    ) {
        (Ok(t), Ok(c)) => (t, c),
        _ => return NetError::Mqtt,
    };
    let mut rx = [0u8; 1536];
    let mut tx = [0u8; 2560];
    let timeout = Duration::from_secs(u64::from(MQTT_KEEPALIVE_S) * 3);
    let server = (target.host.as_str(), target.mqtt_port);
    let pin = target.pin.as_ref();
    let tls = &mut carry.tls;
    let socket = match link::open(stack, server, pin, (&mut rx, &mut tx), tls, timeout).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let mut conn = match with_timeout(CONNECT_TIMEOUT, session.connect(socket)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            warn!("MQTT connect refused: {e:?}");
            return NetError::Mqtt;
        }
        Err(_) => return NetError::Timeout,
    };
    info!(
        "MQTT{} connected to {}:{} as {} ({:?})",
        if pin.is_some() { " over TLS" } else { "" },
        target.host,
        target.mqtt_port,
        cfg.device_id,
        conn.connect_event()
    );
    carry.backoff.reset();
    if conn.connect_event() == minimq::ConnectEvent::Connected {
        if let Err(e) = conn
            .subscribe(&[minimq::TopicFilter::new(&commands_topic)], &[])
            .await
        {
            warn!("subscribe to {commands_topic} failed: {e:?}");
            return NetError::Mqtt;
        }
        info!("subscribed to {commands_topic}");
    }
    let mut json = [0u8; JSON_MAX_LEN];
    let mut inflight: Option<minimq::Op> = None;
    loop {
        // a batch leaves the backlog once the broker acknowledged it
        if let Some(op) = &inflight {
            if conn.is_complete(op) {
                let left = state::with(&BACKLOG, |b| {
                    b.pop_front();
                    b.len()
                });
                info!("batch delivered ({left} waiting)");
                inflight = None;
                ota::delivered();
            } else if conn.is_invalidated(op) {
                // the broker dropped our session state: publish the same batch again
                inflight = None;
            }
        }
        if inflight.is_none()
            && let Some(n) = oldest_json(&mut json)
        {
            let publication = minimq::Publication::new(&telemetry_topic, &json[..n])
                .qos(minimq::QoS::AtLeastOnce);
            match conn.publish(publication).await {
                Ok(Some(op)) => inflight = Some(op),
                Ok(None) => {
                    state::with(&BACKLOG, |b| b.pop_front());
                }
                Err(minimq::PubError::Session(minimq::Error::NotReady)) => {}
                Err(e) => {
                    warn!("publish failed: {e:?}");
                    return NetError::Mqtt;
                }
            }
        }
        carry.time.run_if_due(stack).await;

        let idle = inflight.is_none() && state::with(&BACKLOG, |b| b.is_empty());
        let wake = async {
            if idle {
                // new data, or a minute to re-check the clock
                let _ = with_timeout(Duration::from_secs(60), DATA_READY.wait()).await;
            } else {
                Timer::after(Duration::from_millis(200)).await;
            }
        };
        match select(conn.poll(), wake).await {
            Either::First(Ok(Some(msg))) => {
                if msg.topic() == commands_topic.as_str() {
                    handle_command(msg.payload(), led, target);
                } else {
                    warn!("message on unexpected topic {}", msg.topic());
                }
            }
            Either::First(Ok(None)) | Either::Second(()) => {}
            Either::First(Err(e)) => {
                warn!("MQTT connection lost: {e:?}");
                return NetError::Mqtt;
            }
        }
    }
}

/// HTTP transport: one `POST /api/telemetry` per batch, oldest first, `Connection: close`.
async fn http_loop(
    stack: Stack<'static>,
    cfg: &DeviceConfig,
    target: &Target,
    api_key: &str,
    carry: &mut Carry,
) -> NetError {
    let url = http::Url {
        tls: target.pin.is_some(),
        host: &target.host,
        port: target.http_port,
        ..cfg.telemetry_url()
    };
    let mut json = [0u8; JSON_MAX_LEN];
    let mut request = [0u8; JSON_MAX_LEN + 512];
    loop {
        carry.time.run_if_due(stack).await;
        let Some(body_len) = oldest_json(&mut json) else {
            let _ = with_timeout(Duration::from_secs(60), DATA_READY.wait()).await;
            continue;
        };
        let len = match http::write_post(&mut request, &url, api_key, &json[..body_len]) {
            Ok(n) => n,
            Err(e) => return NetError::Http(e),
        };
        let pin = target.pin.as_ref();
        let status = match post(stack, &url, pin, &mut carry.tls, &request[..len]).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        match http::outcome(status) {
            Outcome::Delivered => {
                carry.backoff.reset();
                let left = state::with(&BACKLOG, |b| {
                    b.pop_front();
                    b.len()
                });
                info!("batch delivered over HTTP ({left} waiting)");
                ota::delivered();
            }
            Outcome::Rejected => {
                state::with(&BACKLOG, |b| b.pop_front());
                error!("appliance rejected a batch with HTTP {status}; dropped it");
            }
            Outcome::Retry => return NetError::HttpStatus(status),
        }
    }
}

async fn post(
    stack: Stack<'static>,
    url: &http::Url<'_>,
    pin: Option<&Fingerprint>,
    tls: &mut TlsBuffers,
    request: &[u8],
) -> Result<u16, NetError> {
    let mut rx = [0u8; 512];
    let mut tx = [0u8; 1024];
    let timeout = Duration::from_secs(15);
    let server = (url.host, url.port);
    let mut link = link::open(stack, server, pin, (&mut rx, &mut tx), tls, timeout).await?;
    link.write_all(request).await.map_err(NetError::Link)?;
    link.flush().await.map_err(NetError::Link)?;
    // the status line is all we need; read until it is complete or the server closes
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < head.len() {
        let n = link.read(&mut head[got..]).await.map_err(NetError::Link)?;
        if n == 0 {
            break;
        }
        got += n;
        if head[..got].contains(&b'\n') {
            break;
        }
    }
    link.close().await;
    http::parse_status(&head[..got]).map_err(NetError::Http)
}
