//! Genba's configuration: one TOML file (`genba.toml`) plus a secrets file (mode 600).
//!
//! Every field has a default, so `genba up` runs with no file at all. `genba config check`
//! calls [`Config::load`] and [`Secrets::load`], which name the bad key or file on error.

pub mod acl;
mod defaults;
pub mod listen;
pub mod rules;
mod secrets;
pub mod sinks;
mod timezone;
pub mod topic;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use acl::AclRule;
pub use defaults::EXAMPLE_CONFIG;
pub use secrets::{check_url, ExmentSecrets, Secrets, SecretsError};
pub use sinks::{SinkConfig, SinkKind, SinkSecrets};
pub use timezone::TimeZone;
pub use upstream::UpstreamConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: Option<PathBuf>,
    /// Path of the secrets file; default `<data_dir>/secrets.toml`.
    pub secrets_file: Option<PathBuf>,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub slack: SlackConfig,
    /// Delivery to Slack, signed webhooks, LINE and e-mail (`[[sinks]]`).
    pub sinks: Vec<SinkConfig>,
    /// Forwarding to an MQTT cluster that many sites feed (`[upstream]`, docs/fleet.md).
    pub upstream: UpstreamConfig,
    pub recorder: RecorderConfig,
    pub telemetry: TelemetryConfig,
    pub exment: ExmentConfig,
    pub devices: DevicesConfig,
    /// What to watch in the device streams: thresholds, silence, rate of change.
    pub rules: Vec<rules::Rule>,
    pub console: ConsoleConfig,
    /// The certificate of the TLS listeners (`[mqtt] tls_listen`, `[http] tls_listen`).
    pub tls: TlsConfig,
    /// The mDNS (DNS-SD) announcement devices find the appliance by (docs/discovery.md).
    pub discovery: DiscoveryConfig,
}

/// `[discovery]`: the `_genba._tcp` service the broker and bridge announce over mDNS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Announce at all.
    pub enabled: bool,
    /// The instance name devices and browsers see; unset: the host name.
    pub instance: Option<String>,
    /// Announce on these network interfaces only (names such as `eth0`); empty: the
    /// interfaces of the listen addresses (every one for 0.0.0.0).
    pub interfaces: Vec<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            enabled: true,
            instance: None,
            interfaces: Vec::new(),
        }
    }
}

impl DiscoveryConfig {
    /// Longest instance name: one DNS label.
    pub const INSTANCE_MAX: usize = 63;

    fn check(&self) -> Result<(), (String, String)> {
        if let Some(name) = &self.instance {
            if name.is_empty()
                || name.len() > Self::INSTANCE_MAX
                || name.chars().any(|c| c.is_control() || c == '.')
            {
                return Err((
                    "instance".into(),
                    "1 to 63 bytes, no dots or control characters".into(),
                ));
            }
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            // IFNAMSIZ is 16 with the terminating NUL.
            if name.is_empty()
                || name.len() > 15
                || name.chars().any(|c| c.is_whitespace() || c == '/')
            {
                return Err((
                    format!("interfaces[{i}]"),
                    "an interface name such as eth0 (1 to 15 characters)".into(),
                ));
            }
        }
        Ok(())
    }
}

/// `[tls]`: where the TLS listeners' certificate comes from (genba-tls).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Server certificate chain (PEM). Unset (with `key`): a local CA in `DATA_DIR/tls`.
    pub cert: Option<PathBuf>,
    /// Private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// Names the local server certificate is for (the host name and 127.0.0.1 are added).
    pub names: Vec<String>,
    /// MQTT/HTTPS clients must present a certificate from this CA (PEM), as well as their
    /// usual credentials.
    pub client_ca: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            names: vec!["genba.local".into(), "localhost".into()],
            client_ca: None,
        }
    }
}

/// The web console's roles. Users are `[[http.users]]` (the first-boot admin among them);
/// everyone not listed here is a viewer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// May do everything, including editing devices.
    pub admins: Vec<String>,
    /// May acknowledge alarms and send commands.
    pub operators: Vec<String>,
    /// Idle minutes before a login ends.
    pub session_minutes: u32,
    /// The serial ports "Add a thermometer" offers for writing a board plugged into this
    /// machine. Unset: the ESP32 boards found on its USB (Espressif's vendor id).
    pub board_ports: Option<Vec<String>>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            admins: vec!["admin".into()],
            operators: Vec::new(),
            session_minutes: 720,
            board_ports: None,
        }
    }
}

/// Who may create a device by sending its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoProvision {
    /// Only devices added by hand (`genba devices add`, the API) are accepted.
    Off,
    /// Devices that authenticate (an API key, or an MQTT broker that requires a user).
    Authenticated,
    /// Anyone who may publish, anonymous MQTT clients included.
    All,
}

/// The device platform: registry, streams, retention of points and rollups.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Unset: `all` while the broker lets anonymous clients in only because it is a
    /// loopback-only trial (`genba up` defaults), else `authenticated`.
    pub auto_provision: Option<AutoProvision>,
    /// Raw points and records are kept this many days.
    pub raw_days: u32,
    /// Per-minute and per-hour rollups are kept this many days (HACCP records: years).
    pub rollup_days: u32,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            auto_provision: None,
            raw_days: 30,
            rollup_days: 731,
        }
    }
}

/// Splits the broker address `host:port` (port 1883 when absent; `[v6]:port` understood), as
/// `mqtt.connect` and the recorder's `broker` are written.
pub fn split_host_port(addr: &str) -> (String, u16) {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once("]:") {
            return (h.to_owned(), p.parse().unwrap_or(1883));
        }
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_owned(), p.parse().unwrap_or(1883)),
        _ => (addr.to_owned(), 1883),
    }
}

impl Config {
    /// Whether a message from an unknown device creates it. `authenticated` says whether the
    /// message's sender proved who it is (an API key; an MQTT broker that requires users).
    pub fn provisions(&self, authenticated: bool) -> bool {
        let mode = self.devices.auto_provision.unwrap_or(
            if self.mqtt.allow_anonymous.is_none() && self.mqtt.anonymous_allowed() {
                AutoProvision::All
            } else {
                AutoProvision::Authenticated
            },
        );
        match mode {
            AutoProvision::Off => false,
            AutoProvision::Authenticated => authenticated,
            AutoProvision::All => true,
        }
    }
}

/// `genba exment`: HACCP check records built from the readings, sent to an Exment table.
/// `[exment] aggregation`: which reading of a check slot becomes its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// The reading nearest the slot's start.
    Nearest,
    Min,
    Max,
    Avg,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExmentConfig {
    /// e.g. `https://exment.example.com` (the API lives under `/admin`).
    pub base_url: Option<String>,
    /// Exment table name or numeric id.
    pub table: String,
    pub scope: String,
    /// Length of a check slot; one record per (device, probe, slot).
    pub slot_minutes: u32,
    /// Which reading of a slot is the record.
    pub aggregation: Aggregation,
    /// A slot is sent once it ended this long ago (late readings still count).
    pub grace_minutes: u32,
    pub max_rows_per_request: usize,
    pub max_requests_per_minute: u32,
    pub timeout_secs: u64,
    /// Longest wait between retries after Exment or the network failed.
    pub max_backoff_secs: u64,
    /// Wait before asking again after Exment refused the credentials (the forwarder keeps
    /// running and shows the error in `genba status`; fixing the secrets file and restarting
    /// tries at once).
    pub credentials_backoff_secs: u64,
    /// The site's IANA time zone (e.g. "Asia/Tokyo"): `check_slot` is sent in its wall time.
    /// Default "UTC" (the Pi's local zone is not a reliable guess).
    pub time_zone: TimeZone,
    pub columns: ExmentColumns,
}

/// Exment column names the record's values go to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExmentColumns {
    /// Holds `<device>:<probe>:<slot start>`; needs a search index (duplicates are looked up by it).
    pub unique_key: String,
    pub check_slot: String,
    pub temperature: String,
    pub device: String,
    pub sensor: String,
}

impl Default for ExmentColumns {
    fn default() -> Self {
        ExmentColumns {
            unique_key: "unique_key".into(),
            check_slot: "check_slot".into(),
            temperature: "temp_c".into(),
            device: "device_id".into(),
            sensor: "sensor_id".into(),
        }
    }
}

impl Default for ExmentConfig {
    fn default() -> Self {
        ExmentConfig {
            base_url: None,
            table: "haccp_temp".into(),
            scope: "value_read value_write".into(),
            slot_minutes: 30,
            aggregation: Aggregation::Nearest,
            grace_minutes: 5,
            max_rows_per_request: 100,
            max_requests_per_minute: 60,
            timeout_secs: 15,
            max_backoff_secs: 300,
            credentials_backoff_secs: 600,
            time_zone: TimeZone::default(),
            columns: ExmentColumns::default(),
        }
    }
}

/// `POST /api/telemetry` and `devices/{id}/telemetry`: HACCP temperature readings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Requests a second per API key and per source address (bursts of `burst`); beyond: 429.
    pub rate_per_sec: f64,
    pub burst: u32,
    /// Publish each accepted HTTP batch on `devices/{id}/telemetry` for live subscribers.
    pub publish: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            rate_per_sec: 5.0,
            burst: 20,
            publish: true,
        }
    }
}

/// `genba recorder`: journal what an external broker (say an existing Mosquitto) carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecorderConfig {
    /// `host:port` of the broker to record from.
    pub broker: Option<String>,
    pub filters: Vec<String>,
    pub username: Option<String>,
    /// Persistent-session client id: the broker keeps QoS 1 messages for it while it is away.
    pub client_id: String,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            broker: None,
            filters: vec!["#".into()],
            username: None,
            client_id: "genba-recorder".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// The one public MQTT port (3.1.1 and 5).
    #[serde(deserialize_with = "listen::addr")]
    pub listen: SocketAddr,
    /// MQTT over TLS (usually port 8883); unset: none.
    #[serde(default, deserialize_with = "listen::opt_addr")]
    pub tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket (usually 8083), for browser clients; unset: none.
    #[serde(default, deserialize_with = "listen::opt_addr")]
    pub ws_listen: Option<SocketAddr>,
    /// MQTT over WebSocket and TLS (usually 8084); unset: none.
    #[serde(default, deserialize_with = "listen::opt_addr")]
    pub wss_listen: Option<SocketAddr>,
    /// `true` lets anonymous clients in; `false` refuses them. Unset: anonymous only while
    /// the broker listens on a loopback address and no users are configured.
    pub allow_anonymous: Option<bool>,
    pub users: Vec<MqttUser>,
    /// Largest PUBLISH payload accepted, bytes.
    pub max_payload: usize,
    pub max_connections: usize,
    /// QoS 1/2 messages queued per session beyond those in flight; more are dropped (and
    /// counted). Bounds a session's memory at about this many times `max_payload`.
    pub max_queued_messages: usize,
    /// Longest keep-alive granted to MQTT 5 clients (Server Keep Alive), seconds; 0 grants
    /// what the client asks.
    pub max_keep_alive: u16,
    /// Longest MQTT 5 Session Expiry Interval granted, seconds.
    pub max_session_expiry_secs: u32,
    /// Address clients of this appliance (bridge, recorder) use to reach the broker.
    pub connect: Option<String>,
    /// `[[mqtt.acl]]`: who may publish and subscribe to what (`genba_broker::acl`).
    pub acl: Vec<AclRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttUser {
    pub name: String,
    /// Argon2 PHC string from `genba passwd`.
    pub password_hash: String,
    /// `[[mqtt.users]]` only: the user is the account of this device id, which may publish
    /// under `devices/{id}/` and subscribe to its commands (plus what `[[mqtt.acl]]` grants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// The password checker for these users (`[[mqtt.users]]` or `[[http.users]]`).
pub fn credentials(users: &[MqttUser]) -> genba_auth::credentials::Credentials {
    genba_auth::credentials::Credentials::new(
        users
            .iter()
            .map(|u| (u.name.as_str(), u.password_hash.as_str())),
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    #[serde(deserialize_with = "listen::addr")]
    pub listen: SocketAddr,
    /// HTTPS (usually port 443); unset: none.
    #[serde(default, deserialize_with = "listen::opt_addr")]
    pub tls_listen: Option<SocketAddr>,
    pub default_topic: String,
    pub max_body_bytes: usize,
    pub max_message_bytes: usize,
    pub max_topic_bytes: usize,
    pub request_timeout_secs: u64,
    /// SHA-256 (hex) of accepted `X-API-Key` values, from `genba passwd --api-key`.
    pub api_key_sha256: Vec<String>,
    /// HTTP Basic users (argon2 hashes).
    pub users: Vec<MqttUser>,
    /// Requests waiting for the journal beyond this answer 503 + Retry-After.
    pub max_pending: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Journal rows older than this are pruned once every sink has passed them.
    pub retention_hours: u64,
    /// Rows committed together at most (group commit).
    pub max_batch: usize,
    /// The database may use this share of the data file system (docs/storage.md): above it
    /// the oldest journal rows every sink has passed are pruned whatever their age, and when
    /// none are left new data is refused (HTTP 507, MQTT connection closed).
    pub max_share_percent: u8,
    /// A fixed budget in MiB instead of the share.
    pub max_mb: Option<u64>,
    /// An alarm (`alarms/genba/storage`) when free space on the data file system falls below
    /// this share (at most 1 GiB), or the database passes 80% of its budget.
    pub low_space_percent: u8,
    /// Seconds between storage checks.
    pub check_secs: u64,
}

impl StoreConfig {
    /// The database's budget in bytes on a file system of `fs_bytes`.
    pub fn budget_bytes(&self, fs_bytes: u64) -> u64 {
        match self.max_mb {
            Some(mb) => mb.saturating_mul(1024 * 1024),
            None => fs_bytes / 100 * u64::from(self.max_share_percent),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    pub webhooks: Vec<SlackWebhook>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackWebhook {
    /// Name of the sink; its URL is `slack.<name>` in the secrets file.
    pub name: String,
    /// MQTT topic filters (`+`, `#`) whose messages go to this webhook.
    pub filters: Vec<String>,
    #[serde(default = "defaults::slack_rate")]
    pub rate_per_sec: f64,
    #[serde(default = "defaults::slack_burst")]
    pub burst: u32,
    /// Most messages folded into one Slack post when a backlog builds.
    #[serde(default = "defaults::slack_coalesce")]
    pub max_coalesce: usize,
    #[serde(default = "defaults::slack_timeout")]
    pub timeout_secs: u64,
    /// Longest wait between retries of a failing delivery.
    #[serde(default = "defaults::slack_max_backoff")]
    pub max_backoff_secs: u64,
}

impl SlackWebhook {
    /// The same sink in `[[sinks]]` form: one delivery loop serves both.
    pub fn as_sink(&self) -> SinkConfig {
        SinkConfig {
            name: self.name.clone(),
            kind: SinkKind::Slack,
            filters: self.filters.clone(),
            template: None,
            rate_per_sec: Some(self.rate_per_sec),
            burst: Some(self.burst),
            max_batch: Some(self.max_coalesce),
            timeout_secs: self.timeout_secs,
            max_backoff_secs: self.max_backoff_secs,
            url: None,
            to: Vec::new(),
            smtp: None,
        }
    }

    /// A webhook with the default rate, burst, coalescing and timeouts.
    pub fn new(name: &str, filters: Vec<String>) -> SlackWebhook {
        SlackWebhook {
            name: name.into(),
            filters,
            rate_per_sec: defaults::slack_rate(),
            burst: defaults::slack_burst(),
            max_coalesce: defaults::slack_coalesce(),
            timeout_secs: defaults::slack_timeout(),
            max_backoff_secs: defaults::slack_max_backoff(),
        }
    }
}

impl Config {
    /// Every delivery sink: `[[slack.webhooks]]` first, then `[[sinks]]`.
    pub fn delivery_sinks(&self) -> Vec<SinkConfig> {
        let slack = self.slack.webhooks.iter().map(SlackWebhook::as_sink);
        slack.chain(self.sinks.iter().cloned()).collect()
    }

    /// Reads `path`, or returns the built-in defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let config = Config::read(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Parses `path` without [`Config::validate`]: for tools that edit the file.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: filters, hashes, names, anonymous access off the loopback.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        if let Some(url) = &self.exment.base_url {
            secrets::check_url(url).map_err(|why| invalid("exment.base_url".into(), why))?;
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            let key = if self.tls.cert.is_some() {
                "tls.key"
            } else {
                "tls.cert"
            };
            return Err(invalid(
                key.into(),
                "tls.cert and tls.key go together (both unset: a local certificate authority)"
                    .into(),
            ));
        }
        for (i, user) in self.mqtt.users.iter().enumerate() {
            genba_auth::passwords::check_hash(&user.password_hash)
                .map_err(|m| invalid(format!("mqtt.users[{i}].password_hash"), m))?;
            if user
                .device
                .as_deref()
                .is_some_and(|d| !acl::is_device_id(d))
            {
                return Err(invalid(
                    format!("mqtt.users[{i}].device"),
                    "a device id: 1-32 characters from A-Z a-z 0-9 - _ .".into(),
                ));
            }
        }
        let mqtt_users: std::collections::HashSet<&str> =
            self.mqtt.users.iter().map(|u| u.name.as_str()).collect();
        for (i, rule) in self.mqtt.acl.iter().enumerate() {
            rule.check(&mqtt_users)
                .map_err(|(at, m)| invalid(format!("mqtt.acl[{i}]{at}"), m))?;
        }
        for (i, user) in self.http.users.iter().enumerate() {
            genba_auth::passwords::check_hash(&user.password_hash)
                .map_err(|m| invalid(format!("http.users[{i}].password_hash"), m))?;
            if user.device.is_some() {
                return Err(invalid(
                    format!("http.users[{i}].device"),
                    "device accounts are [[mqtt.users]] only".into(),
                ));
            }
        }
        for (i, key) in self.http.api_key_sha256.iter().enumerate() {
            if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    format!("http.api_key_sha256[{i}]"),
                    "must be 64 hex digits (use `genba passwd --api-key`)".into(),
                ));
            }
        }
        if !(self.telemetry.rate_per_sec > 0.0 && self.telemetry.rate_per_sec.is_finite()) {
            return Err(invalid(
                "telemetry.rate_per_sec".into(),
                "must be a positive number".into(),
            ));
        }
        if self.telemetry.burst == 0 {
            return Err(invalid(
                "telemetry.burst".into(),
                "must be at least 1".into(),
            ));
        }
        let e = &self.exment;
        if e.slot_minutes == 0 || 1440 % e.slot_minutes != 0 {
            return Err(invalid(
                "exment.slot_minutes".into(),
                "must divide a day (e.g. 15, 30, 60)".into(),
            ));
        }
        if !(1..=100).contains(&e.max_rows_per_request) {
            return Err(invalid(
                "exment.max_rows_per_request".into(),
                "must be 1..=100 (Exment's bulk limit)".into(),
            ));
        }
        if !(1..=60).contains(&e.max_requests_per_minute) {
            return Err(invalid(
                "exment.max_requests_per_minute".into(),
                "must be 1..=60 (Exment's rate limit)".into(),
            ));
        }
        topic::validate_topic(&self.http.default_topic, self.http.max_topic_bytes)
            .map_err(|m| invalid("http.default_topic".into(), m.to_string()))?;
        let mut names = std::collections::HashSet::new();
        if self.devices.raw_days == 0 || self.devices.rollup_days < self.devices.raw_days {
            return Err(invalid(
                "devices.raw_days".into(),
                "1 or more, and at most devices.rollup_days".into(),
            ));
        }
        let mut rule_names = std::collections::HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            rule.check()
                .map_err(|(field, m)| invalid(format!("rules[{i}].{field}"), m))?;
            if !rule_names.insert(rule.name.as_str()) {
                return Err(invalid(
                    format!("rules[{i}].name"),
                    format!("{:?} is used by an earlier rule", rule.name),
                ));
            }
        }
        let slack = self
            .slack
            .webhooks
            .iter()
            .enumerate()
            .map(|(i, hook)| (format!("slack.webhooks[{i}]"), hook.as_sink()));
        let others =
            (self.sinks.iter().enumerate()).map(|(i, s)| (format!("sinks[{i}]"), s.clone()));
        for (at, sink) in slack.chain(others) {
            sink.check().map_err(|(key, m)| {
                // `[[slack.webhooks]]` calls the batch size max_coalesce.
                let key = match key.as_str() {
                    "max_batch" if at.starts_with("slack.") => "max_coalesce".to_owned(),
                    _ => key,
                };
                invalid(format!("{at}.{key}"), m)
            })?;
            if !names.insert(sink.name.clone()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("duplicate sink name {:?}", sink.name),
                ));
            }
        }
        self.upstream
            .check()
            .map_err(|(key, m)| invalid(format!("upstream.{key}"), m))?;
        if self.mqtt.users.is_empty() && !self.mqtt.anonymous_allowed() {
            let message = if self.mqtt.allow_anonymous == Some(false) {
                "no MQTT users and allow_anonymous = false: nobody could connect"
            } else {
                "the broker listens beyond loopback: add [[mqtt.users]] or opt in with allow_anonymous = true"
            };
            return Err(invalid("mqtt.users".into(), message.into()));
        }
        for (j, f) in self.recorder.filters.iter().enumerate() {
            topic::validate_filter(f)
                .map_err(|m| invalid(format!("recorder.filters[{j}]"), m.to_string()))?;
        }
        if self.store.max_batch == 0 {
            return Err(invalid(
                "store.max_batch".into(),
                "must be at least 1".into(),
            ));
        }
        if !(1..=95).contains(&self.store.max_share_percent) {
            return Err(invalid(
                "store.max_share_percent".into(),
                "must be 1..=95 (percent of the data file system)".into(),
            ));
        }
        if self.store.max_mb == Some(0) {
            return Err(invalid("store.max_mb".into(), "must be at least 1".into()));
        }
        if self.store.low_space_percent > 50 {
            return Err(invalid(
                "store.low_space_percent".into(),
                "must be 0..=50 (0: no low-space alarm)".into(),
            ));
        }
        self.discovery
            .check()
            .map_err(|(key, m)| invalid(format!("discovery.{key}"), m))?;
        if self.store.check_secs == 0 {
            return Err(invalid(
                "store.check_secs".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./genba-data"))
    }

    pub fn secrets_path(&self) -> PathBuf {
        self.secrets_file
            .clone()
            .unwrap_or_else(|| self.data_dir().join("secrets.toml"))
    }

    /// `host:port` that this appliance's own clients use to reach the broker.
    pub fn broker_connect_addr(&self) -> String {
        if let Some(c) = &self.mqtt.connect {
            return c.clone();
        }
        let listen = self.mqtt.listen;
        if listen.ip().is_unspecified() {
            format!("127.0.0.1:{}", listen.port())
        } else {
            listen.to_string()
        }
    }
}

impl MqttConfig {
    /// Whether a CONNECT without credentials is let in.
    pub fn anonymous_allowed(&self) -> bool {
        match self.allow_anonymous {
            Some(explicit) => explicit,
            None => self.users.is_empty() && self.listen.ip().is_loopback(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: "127.0.0.1:1883".parse().expect("literal address"),
            tls_listen: None,
            ws_listen: None,
            wss_listen: None,
            allow_anonymous: None,
            users: Vec::new(),
            max_payload: 256 * 1024,
            max_connections: 1000,
            max_queued_messages: 1000,
            max_keep_alive: 60,
            max_session_expiry_secs: 7 * 24 * 3600,
            connect: None,
            acl: Vec::new(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            tls_listen: None,
            default_topic: "notify/slack".into(),
            max_body_bytes: 64 * 1024,
            max_message_bytes: 16 * 1024,
            max_topic_bytes: 256,
            request_timeout_secs: 10,
            api_key_sha256: Vec::new(),
            users: Vec::new(),
            max_pending: 4096,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            retention_hours: 24 * 7,
            max_batch: 512,
            max_share_percent: 50,
            max_mb: None,
            low_space_percent: 10,
            check_secs: 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile_dir();
        let path = dir.join("genba.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path))
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "genba-config-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn example_config_is_valid() {
        parse(EXAMPLE_CONFIG).expect("example config must load");
    }

    #[test]
    fn exment_time_zone_is_an_iana_name_checked_at_load_and_defaults_to_utc() {
        assert_eq!(parse("").unwrap().exment.time_zone.name(), "UTC");
        let tokyo = parse("[exment]\ntime_zone = \"Asia/Tokyo\"\n").unwrap();
        assert_eq!(tokyo.exment.time_zone.name(), "Asia/Tokyo");
        let err = parse("[exment]\ntime_zone = \"Asia/Tokio\"\n").unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("time_zone") && err.contains("Asia/Tokio"),
            "{err}"
        );
    }

    #[test]
    fn discovery_is_on_by_default_and_bad_names_are_refused() {
        let d = parse("").unwrap().discovery;
        assert!(d.enabled);
        assert_eq!((d.instance, d.interfaces.len()), (None, 0));
        let d = parse("[discovery]\ninstance = \"Shop floor 1\"\ninterfaces = [\"eth0\"]\n")
            .unwrap()
            .discovery;
        assert_eq!(d.instance.as_deref(), Some("Shop floor 1"));
        for (bad, key) in [
            ("instance = \"\"", "discovery.instance"),
            ("instance = \"genba.local\"", "discovery.instance"),
            (
                &format!("instance = \"{}\"", "x".repeat(64)),
                "discovery.instance",
            ),
            ("interfaces = [\"eth0\", \"\"]", "discovery.interfaces[1]"),
        ] {
            let err = parse(&format!("[discovery]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[mqtt]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn bad_filter_names_its_key() {
        let err = parse("[[slack.webhooks]]\nname = \"ops\"\nfilters = [\"a/#/b\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("slack.webhooks[0].filters[0]"),
            "{err}"
        );
    }

    #[test]
    fn no_users_and_no_anonymous_is_refused() {
        let err = parse("[mqtt]\nallow_anonymous = false\n").unwrap_err();
        assert!(err.to_string().contains("mqtt.users"), "{err}");
    }

    #[test]
    fn lan_listener_without_users_needs_explicit_anonymous() {
        let err = parse("[mqtt]\nlisten = \"0.0.0.0:1883\"\n").unwrap_err();
        assert!(err.to_string().contains("allow_anonymous = true"), "{err}");
        let ok = parse("[mqtt]\nlisten = \"0.0.0.0:1883\"\nallow_anonymous = true\n").unwrap();
        assert!(ok.mqtt.anonymous_allowed());
        assert!(
            Config::default().mqtt.anonymous_allowed(),
            "loopback default"
        );
    }

    #[test]
    fn bad_password_hash_is_named() {
        let err = parse(
            "[mqtt]\nallow_anonymous = false\n[[mqtt.users]]\nname = \"a\"\npassword_hash = \"plain\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("mqtt.users[0].password_hash"),
            "{err}"
        );
    }

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$qhDfxVDwKfl1mU6ydBhqbwVYxwKhmj2ZzlQZT0fvEDk";

    fn with_users(rest: &str) -> Result<Config, ConfigError> {
        parse(&format!(
            "[mqtt]\nallow_anonymous = false\n\
             [[mqtt.users]]\nname = \"ops\"\npassword_hash = \"{HASH}\"\n\
             [[mqtt.users]]\nname = \"fridge\"\npassword_hash = \"{HASH}\"\ndevice = \"fridge-1\"\n\
             {rest}"
        ))
    }

    #[test]
    fn acl_rules_and_device_users_load() {
        let config = with_users(
            "[[mqtt.acl]]\nuser = \"ops\"\nsubscribe = [\"#\"]\n\
             [[mqtt.acl]]\npublish = [\"clients/%c/#\"]\ndeny_subscribe = [\"test/nosubscribe\"]\n",
        )
        .unwrap();
        assert_eq!(config.mqtt.users[1].device.as_deref(), Some("fridge-1"));
        assert_eq!(config.mqtt.acl.len(), 2);
        assert_eq!(config.mqtt.acl[0].user.as_deref(), Some("ops"));
        assert_eq!(config.mqtt.acl[1].user, None);
        assert_eq!(config.mqtt.acl[1].publish, vec!["clients/%c/#".to_owned()]);
        assert!(Config::default().mqtt.acl.is_empty());
    }

    #[test]
    fn bad_acl_rules_name_the_rule_and_field() {
        let err = with_users(
            "[[mqtt.acl]]\nsubscribe = [\"#\"]\n\
             [[mqtt.acl]]\npublish = [\"a\"]\n\
             [[mqtt.acl]]\npublish = [\"a/#/b\"]\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("key `mqtt.acl[2].publish[0]`"),
            "{err}"
        );
        let err = with_users("[[mqtt.acl]]\nuser = \"ghost\"\npublish = [\"a\"]\n").unwrap_err();
        assert!(err.to_string().contains("key `mqtt.acl[0].user`"), "{err}");
        let err = with_users("[[mqtt.acl]]\ndeny_publish = [\"a/%u-x\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("mqtt.acl[0].deny_publish[0]"),
            "{err}"
        );
        let err = with_users("[[mqtt.acl]]\nuser = \"ops\"\n").unwrap_err();
        assert!(err.to_string().contains("key `mqtt.acl[0]`"), "{err}");
        let err = with_users("[[mqtt.acl]]\npublish = [\"a\"]\nallow = [\"b\"]\n").unwrap_err();
        assert!(err.to_string().contains("allow"), "{err}");
    }

    #[test]
    fn example_acl_rules_load_when_uncommented() {
        let rules: Vec<&str> = EXAMPLE_CONFIG
            .lines()
            .skip_while(|l| !l.starts_with("# [[mqtt.acl]]"))
            .take_while(|l| l.starts_with("# "))
            .map(|l| l.trim_start_matches("# ").split("  #").next().unwrap_or(""))
            .collect();
        assert!(rules.len() > 4, "{rules:?}");
        let config = with_users(&format!(
            "[[mqtt.users]]\nname = \"sensor\"\npassword_hash = \"{HASH}\"\n{}\n",
            rules.join("\n")
        ))
        .unwrap();
        assert_eq!(config.mqtt.acl.len(), 2);
    }

    #[test]
    fn bad_device_ids_are_named() {
        for bad in ["", "a/b", "fridge+", "#"] {
            let err = parse(&format!(
                "[[mqtt.users]]\nname = \"d\"\npassword_hash = \"{HASH}\"\ndevice = \"{bad}\"\n"
            ))
            .unwrap_err();
            assert!(
                err.to_string().contains("mqtt.users[0].device"),
                "{bad:?}: {err}"
            );
        }
        let err = parse(&format!(
            "[[http.users]]\nname = \"d\"\npassword_hash = \"{HASH}\"\ndevice = \"x\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("http.users[0].device"), "{err}");
    }
}
