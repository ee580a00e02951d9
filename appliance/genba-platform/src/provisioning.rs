//! Provisioning a thermometer (requirement D2): the device is registered, gets its own device
//! key (its HTTP `X-API-Key`, or its MQTT password with the device id as user name) and a
//! config record for its `config` flash partition. `genba devices provision` and the console's
//! "Add a thermometer" page both go through here: [`prepare`] checks everything and builds the
//! record without touching the database, [`register`] then adds the device and its key inside
//! the caller's transaction, so a record that cannot be delivered leaves nothing behind.
//!
//! The record format is `genba_firmware_core::config`, the code the firmware reads it with.

use std::net::{IpAddr, SocketAddr};

use genba_firmware_core::config::{
    self as device_config, Credential, DeviceConfig, Field, Pins, AREA_LEN,
};
use genba_firmware_core::discovery::{self, Fingerprint};
use genba_firmware_core::offsets::Offsets;
use genba_firmware_core::telemetry::MAX_READINGS;
use genba_store::devices::{self, DeviceChange};

pub use genba_firmware_core::config::PARTITION_OFFSET;

/// How the device sends its readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// MQTT 5 to the broker: telemetry and commands (updates included).
    Mqtt,
    /// `POST /api/telemetry` with its device key: telemetry only.
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Http => "http",
        }
    }
}

/// Where this appliance serves devices: the plain listeners and, when configured, the TLS ones.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    pub mqtts: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

impl Served {
    /// Whether the transport is served over TLS.
    pub fn tls(&self, transport: Transport) -> bool {
        match transport {
            Transport::Mqtt => self.mqtts.is_some(),
            Transport::Http => self.https.is_some(),
        }
    }

    /// The MQTT and HTTP addresses a device uses: the TLS ones when it pins a certificate (a
    /// TLS listener that is not configured is taken at its default port), else the plain ones.
    pub fn for_device(&self, pinned: bool) -> (SocketAddr, SocketAddr) {
        if !pinned {
            return (self.mqtt, self.http);
        }
        let or_default = |tls: Option<SocketAddr>, plain: SocketAddr, port| {
            tls.unwrap_or(SocketAddr::new(plain.ip(), port))
        };
        (
            or_default(self.mqtts, self.mqtt, device_config::DEFAULT_MQTTS_PORT),
            or_default(self.https, self.http, device_config::DEFAULT_HTTPS_PORT),
        )
    }
}

/// What the user asks for. The field names are the console form's, and with `-` for `_` the
/// command line's flags: [`ProvisionError::field`] names one of them.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub wifi_ssid: String,
    /// Empty for an open network.
    pub wifi_pass: String,
    /// The appliance as the device reaches it (IPv4 address or DNS name); `None`: the MQTT
    /// listen address when it is a LAN address.
    pub appliance: Option<String>,
    pub transport: Transport,
    pub interval_s: u32,
    pub pins: Pins,
    /// Calibration offsets, `SENSOR_ID=°C` each.
    pub offsets: Vec<String>,
    pub ntp_server: String,
    /// The certificate pinned: its SHA-256 in hex, or `none`; `None`: the local CA when the
    /// appliance serves the transport over TLS.
    pub pin: Option<String>,
}

impl Request {
    /// A request with the defaults of everything but what only the user knows.
    pub fn new(id: &str, wifi_ssid: &str, wifi_pass: &str, transport: Transport) -> Request {
        Request {
            id: id.to_owned(),
            wifi_ssid: wifi_ssid.to_owned(),
            wifi_pass: wifi_pass.to_owned(),
            appliance: None,
            transport,
            interval_s: device_config::DEFAULT_INTERVAL_S,
            pins: Pins::default(),
            offsets: Vec::new(),
            ntp_server: device_config::DEFAULT_NTP_SERVER.to_owned(),
            pin: None,
        }
    }
}

/// A request that cannot be provisioned, and the field to fix.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProvisionError {
    /// The request field at fault (`id`, `wifi_ssid`, `appliance`, `pin`, ...).
    pub field: &'static str,
    pub message: String,
}

impl ProvisionError {
    fn new(field: &'static str, message: impl Into<String>) -> ProvisionError {
        ProvisionError {
            field,
            message: message.into(),
        }
    }

    /// The request field a firmware core rule belongs to.
    fn of_config(e: device_config::Error) -> ProvisionError {
        let field = match e {
            device_config::Error::Invalid(f) | device_config::Error::Malformed(f) => match f {
                Field::DeviceId => "id",
                Field::WifiSsid => "wifi_ssid",
                Field::WifiPass => "wifi_pass",
                Field::Host => "appliance",
                Field::MqttPort | Field::HttpPort => "transport",
                Field::NtpServer => "ntp_server",
                Field::Interval => "interval",
                Field::OnewirePin => "onewire_gpio",
                Field::LedPin => "led_gpio",
                Field::CaFingerprint => "pin",
                Field::Offsets => "offsets",
                _ => "credential",
            },
            _ => "credential",
        };
        ProvisionError::new(field, e.to_string())
    }
}

/// Why a checked request could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("devices table: {0}")]
    Devices(#[from] rusqlite::Error),
    #[error(transparent)]
    Key(#[from] genba_telemetry::keys::KeyError),
}

/// A checked request: the device's config and its record, not registered yet.
pub struct Prepared {
    pub device: DeviceConfig,
    pub transport: Transport,
    /// The device key (also inside `record`).
    secret: String,
    /// The bytes for the `config` partition at [`PARTITION_OFFSET`] ([`AREA_LEN`] bytes).
    pub record: Vec<u8>,
}

impl Prepared {
    /// The pinned certificate's SHA-256 in hex.
    pub fn pin_hex(&self) -> Option<String> {
        self.device
            .ca_sha256
            .as_ref()
            .map(|fp| discovery::hex(fp).to_string())
    }

    /// How the device reports, in words: "MQTT over TLS (port 8883)".
    pub fn reports_over(&self) -> String {
        let tls = self.device.ca_sha256.is_some();
        match (self.transport, tls) {
            (Transport::Mqtt, false) => format!("MQTT (port {})", self.device.mqtt_port),
            (Transport::Http, false) => format!("HTTP (port {})", self.device.http_port),
            (Transport::Mqtt, true) => format!("MQTT over TLS (port {})", self.device.mqtt_port),
            (Transport::Http, true) => format!("HTTPS (port {})", self.device.http_port),
        }
    }
}

/// What [`register`] did.
#[derive(Debug, Clone, Copy)]
pub struct Registered {
    /// The device is new (else it was registered already and gets one more key).
    pub new_device: bool,
    pub key_id: i64,
}

/// The espflash command that writes a record saved as `file` to a device over USB.
pub fn flash_command(file: &str) -> String {
    format!("espflash write-bin {PARTITION_OFFSET:#x} {file}")
}

/// Checks `req` against the firmware core's rules and what this appliance serves, makes the
/// device key and builds the record. `local_ca` is the SHA-256 (hex) of the appliance's local
/// CA, when it has one: the default pin of a transport served over TLS.
pub fn prepare(
    req: &Request,
    served: &Served,
    local_ca: Option<&str>,
) -> Result<Prepared, ProvisionError> {
    genba_firmware_core::telemetry::validate_device_id(&req.id).map_err(|_| {
        ProvisionError::new("id", "1-32 characters from A-Z a-z 0-9 - _ . expected")
    })?;
    let pin = pin(req, served, local_ca)?;
    if pin.is_some() && !served.tls(req.transport) {
        let name = match req.transport {
            Transport::Mqtt => "[mqtt] tls_listen",
            Transport::Http => "[http] tls_listen",
        };
        return Err(ProvisionError::new(
            "pin",
            format!(
                "a pinned device speaks only TLS, and this appliance serves no {name}; set it \
                 in the config file, or pin none"
            ),
        ));
    }
    let secret = genba_auth::passwords::generate_api_key();
    let credential = match req.transport {
        Transport::Mqtt => Credential::mqtt(&req.id, &secret),
        Transport::Http => Credential::api_key(&secret),
    }
    .map_err(ProvisionError::of_config)?;
    let host = appliance_host(req, served.mqtt)?;
    let mut device = DeviceConfig::new(&req.id, &req.wifi_ssid, &req.wifi_pass, &host, credential)
        .map_err(ProvisionError::of_config)?;
    // With a pin, the other transport's TLS port is for firmware downloads (HTTPS) or unused.
    let (mqtt, http) = served.for_device(pin.is_some());
    for (name, port) in [("MQTT", mqtt.port()), ("HTTP", http.port())] {
        if port == 0 {
            return Err(ProvisionError::new(
                "transport",
                format!("the {name} listen port is 0 (any free port): devices need a fixed one"),
            ));
        }
    }
    device.mqtt_port = mqtt.port();
    device.http_port = http.port();
    device.interval_s = req.interval_s;
    device.pins = req.pins;
    device.offsets = Offsets::<MAX_READINGS>::parse_list(&req.offsets.join(","))
        .map_err(|e| ProvisionError::new("offsets", e.to_string()))?;
    device
        .set_ntp_server(&req.ntp_server)
        .map_err(ProvisionError::of_config)?;
    device.ca_sha256 = pin;
    device.validate().map_err(ProvisionError::of_config)?;
    let mut record = vec![0u8; AREA_LEN];
    device
        .area_image(&mut record)
        .map_err(ProvisionError::of_config)?;
    Ok(Prepared {
        device,
        transport: req.transport,
        secret,
        record,
    })
}

/// Registers the device of `prepared` (if new) and adds its device key, in `conn`'s open
/// transaction: the caller commits once the record is delivered.
pub fn register(
    conn: &rusqlite::Connection,
    prepared: &Prepared,
) -> Result<Registered, RegisterError> {
    let id = prepared.device.device_id.as_str();
    let added = devices::add(conn, id, &DeviceChange::default())?;
    // One credential for either transport, in force at once, revoked alone.
    let key = genba_telemetry::keys::add_given(conn, id, &[], &prepared.secret)?;
    Ok(Registered {
        new_device: added.is_some(),
        key_id: key.id,
    })
}

/// The fingerprint the device pins: the request's, else the local CA's when the appliance
/// serves the device's transport over TLS.
fn pin(
    req: &Request,
    served: &Served,
    local_ca: Option<&str>,
) -> Result<Option<Fingerprint>, ProvisionError> {
    let hex = match req.pin.as_deref().map(str::trim) {
        Some("none") => return Ok(None),
        Some(hex) if !hex.is_empty() => hex,
        _ if !served.tls(req.transport) => return Ok(None),
        _ => match local_ca {
            Some(hex) => hex,
            None => return Ok(None),
        },
    };
    discovery::parse_fingerprint(hex).map(Some).ok_or_else(|| {
        ProvisionError::new(
            "pin",
            format!("{hex:?} is not a SHA-256 (64 hex digits) or `none`"),
        )
    })
}

/// The host the device is told to reach: the request's, else the broker's address when a
/// device on the LAN could reach it.
fn appliance_host(req: &Request, mqtt: SocketAddr) -> Result<String, ProvisionError> {
    if let Some(host) = req.appliance.as_deref().map(str::trim) {
        if !host.is_empty() {
            return Ok(host.to_owned());
        }
    }
    let lan = match mqtt.ip() {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_loopback(),
        IpAddr::V6(_) => false,
    };
    if lan {
        Ok(mqtt.ip().to_string())
    } else {
        Err(ProvisionError::new(
            "appliance",
            format!(
                "the address devices reach this appliance at (IPv4 or DNS name) is needed; the \
                 broker listens on {mqtt}, which does not say"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(tls: bool) -> Served {
        Served {
            mqtt: "0.0.0.0:1883".parse().unwrap(),
            http: "0.0.0.0:8080".parse().unwrap(),
            mqtts: tls.then(|| "0.0.0.0:8883".parse().unwrap()),
            https: tls.then(|| "0.0.0.0:8443".parse().unwrap()),
        }
    }

    fn request() -> Request {
        let mut r = Request::new(
            "fridge-2",
            "shop-floor",
            "wifi pass phrase",
            Transport::Mqtt,
        );
        r.appliance = Some("192.168.1.10".into());
        r
    }

    const CA: &str = "3f16f2aa00000000000000000000000000000000000000000000000000009465";

    #[test]
    fn the_record_decodes_to_the_request_with_its_own_key_as_mqtt_password() {
        let p = prepare(&request(), &served(false), None).unwrap();
        let back = device_config::decode_area(&p.record).unwrap().config;
        assert_eq!(back.device_id.as_str(), "fridge-2");
        assert_eq!(back.host.as_str(), "192.168.1.10");
        assert_eq!((back.mqtt_port, back.http_port), (1883, 8080));
        assert_eq!(
            back.credential,
            Credential::mqtt("fridge-2", &p.secret).unwrap()
        );
        assert_eq!(back.ca_sha256, None);
        assert_eq!(p.reports_over(), "MQTT (port 1883)");
    }

    #[test]
    fn with_tls_served_the_device_pins_the_local_ca_and_gets_the_tls_ports() {
        let p = prepare(&request(), &served(true), Some(CA)).unwrap();
        assert_eq!(p.pin_hex().as_deref(), Some(CA));
        assert_eq!((p.device.mqtt_port, p.device.http_port), (8883, 8443));
        let mut none = request();
        none.pin = Some("none".into());
        let plain = prepare(&none, &served(true), Some(CA)).unwrap();
        assert_eq!((plain.pin_hex(), plain.device.mqtt_port), (None, 1883));
    }

    #[test]
    fn each_refusal_names_the_field_to_fix() {
        type Breaks = fn(&mut Request);
        let cases: [(&str, Breaks); 7] = [
            ("id", |r| r.id = "no spaces".into()),
            ("wifi_ssid", |r| r.wifi_ssid = String::new()),
            ("wifi_pass", |r| r.wifi_pass = "short".into()),
            ("appliance", |r| r.appliance = None),
            ("interval", |r| r.interval_s = 1),
            ("offsets", |r| r.offsets = vec!["28FF=warm".into()]),
            ("pin", |r| r.pin = Some("abc".into())),
        ];
        for (field, break_it) in cases {
            let mut r = request();
            break_it(&mut r);
            let e = prepare(&r, &served(false), None).err().unwrap();
            assert_eq!(e.field, field, "{e}");
        }
        // a pin where no TLS is served
        let mut r = request();
        r.pin = Some(CA.into());
        let e = prepare(&r, &served(false), None).err().unwrap();
        assert_eq!(e.field, "pin");
        assert!(e.message.contains("[mqtt] tls_listen"), "{e}");
    }
}
