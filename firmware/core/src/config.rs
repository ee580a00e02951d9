//! The device configuration: what one thermometer needs to know about itself and the
//! appliance, stored in the `config` flash partition instead of being compiled into the image.
//!
//! The appliance writes it (`genba devices provision`), the firmware reads it at boot and writes
//! back the settings commands change (report interval, probe offsets). Both use this module, so
//! the format and its rules are defined once.
//!
//! # Record layout (format version 1, little endian)
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `GBCF` |
//! | 1 | format version ([`FORMAT_VERSION`]) |
//! | 1 | reserved, 0 |
//! | 2 | payload length `n` (at most [`PAYLOAD_MAX`]) |
//! | 4 | sequence number (the newest valid record wins) |
//! | n | payload, see below |
//! | 4 | CRC-32 (IEEE 802.3) of everything before it |
//!
//! Payload, in this order: device id, Wi-Fi SSID, Wi-Fi pass phrase, appliance host (each a
//! string: one length byte, then UTF-8), MQTT port (u16), HTTP port (u16), credential kind (u8:
//! 0 MQTT user + password, 1 API key) and its one or two strings, NTP server (string), report
//! interval in seconds (u32), 1-Wire GPIO (u8), LED GPIO (u8), flags (u8, bit 0: LED active
//! low), CA fingerprint (u8 0 = none, 1 = followed by 32 bytes of SHA-256), offset count (u8)
//! and per offset the sensor id (string) and °C (f32). Nothing may follow the last offset.
//!
//! A change to the payload is a new format version; a decoder refuses versions it does not know
//! ([`Error::UnsupportedVersion`]) rather than guessing.
//!
//! # The config area
//!
//! The partition holds [`SLOTS`] records, one per 4 KiB flash sector. [`Store::save`] writes the
//! next sector after the newest record with the next sequence number, so a power cut during a
//! write leaves the previous record intact (the torn one fails its checksum), and erases are
//! spread over every sector. It writes only when the record differs from the stored one; the
//! firmware additionally paces writes with [`WritePacer`]: after [`SETTLE_S`] of quiet, at most
//! once per [`MIN_WRITE_GAP_S`]. With 100 000 erase cycles
//! per sector, a device changed by commands at that maximum rate without pause wears its config
//! area out after 100 000 × 4 × 10 min ≈ 7.6 years; normal use changes it a few times a year.

use core::fmt;

use embedded_storage::nor_flash::NorFlash;
use heapless::String;

use crate::command::{MAX_INTERVAL_S, MIN_INTERVAL_S};
use crate::offsets::{self, Offsets};
use crate::telemetry::{self, DEVICE_ID_MAX, MAX_READINGS, SENSOR_ID_MAX};

/// First bytes of every record.
pub const MAGIC: [u8; 4] = *b"GBCF";
/// The format this code writes and the only one it reads.
pub const FORMAT_VERSION: u8 = 1;
/// Magic, version, reserved byte, payload length and sequence number.
pub const HEADER_LEN: usize = 12;
/// The CRC-32 after the payload.
pub const CRC_LEN: usize = 4;

/// Longest Wi-Fi SSID, bytes (802.11).
pub const SSID_MAX: usize = 32;
/// Longest WPA2 pass phrase; a non-empty one has at least [`WIFI_PASS_MIN`] characters.
pub const WIFI_PASS_MAX: usize = 63;
/// Shortest non-empty WPA2 pass phrase.
pub const WIFI_PASS_MIN: usize = 8;
/// Longest appliance or NTP host name (an IPv4 literal or DNS name).
pub const HOST_MAX: usize = 64;
/// Longest MQTT user name.
pub const USERNAME_MAX: usize = 64;
/// Longest MQTT password or API key.
pub const SECRET_MAX: usize = 128;
/// Length of a SHA-256 fingerprint.
pub const FINGERPRINT_LEN: usize = 32;

/// Longest payload a valid record can have.
pub const PAYLOAD_MAX: usize = (1 + DEVICE_ID_MAX)
    + (1 + SSID_MAX)
    + (1 + WIFI_PASS_MAX)
    + (1 + HOST_MAX)
    + 2
    + 2
    + 1
    + (1 + USERNAME_MAX)
    + (1 + SECRET_MAX)
    + (1 + HOST_MAX)
    + 4
    + 3
    + (1 + FINGERPRINT_LEN)
    + 1
    + MAX_READINGS * (1 + SENSOR_ID_MAX + 4);
/// Longest record.
pub const RECORD_MAX: usize = HEADER_LEN + PAYLOAD_MAX + CRC_LEN;

/// One record per flash sector.
pub const SLOT_LEN: usize = 4096;
/// Records (sectors) in the config area.
pub const SLOTS: usize = 4;
/// The config area: the size of the `config` partition's used part and of a provisioning file.
pub const AREA_LEN: usize = SLOT_LEN * SLOTS;
/// Label of the config partition in the firmware's `partitions.csv`.
pub const PARTITION_LABEL: &str = "config";
/// Where the config partition starts in flash (`partitions.csv`; `scripts/build-firmware`
/// checks the two agree). A provisioning file is written there:
/// `espflash write-bin 0x3f0000 FILE`.
pub const PARTITION_OFFSET: u32 = 0x3F_0000;
/// The firmware writes the config area at most once per this many seconds.
pub const MIN_WRITE_GAP_S: u32 = 600;
/// A changed setting is written once nothing has changed for this many seconds, so a burst
/// of commands (an offset per probe) costs one write.
pub const SETTLE_S: u32 = 30;

/// GPIOs free on ESP32-C3 modules: 11-17 are the SPI flash, 18/19 the USB serial/JTAG.
pub const FREE_GPIOS: &[u8] = &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 21];

/// Default MQTT port of the appliance.
pub const DEFAULT_MQTT_PORT: u16 = 1883;
/// Default HTTP port of the appliance.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Default MQTT over TLS port (IANA `secure-mqtt`).
pub const DEFAULT_MQTTS_PORT: u16 = 8883;
/// Default HTTPS port.
pub const DEFAULT_HTTPS_PORT: u16 = 443;
/// Default report interval, seconds.
pub const DEFAULT_INTERVAL_S: u32 = 60;
/// Default NTP server.
pub const DEFAULT_NTP_SERVER: &str = "pool.ntp.org";
/// The HTTP transport's path on the appliance.
pub const TELEMETRY_PATH: &str = "/api/telemetry";

/// A config field, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The device id.
    DeviceId,
    /// The Wi-Fi SSID.
    WifiSsid,
    /// The Wi-Fi pass phrase.
    WifiPass,
    /// The appliance host.
    Host,
    /// The appliance's MQTT port.
    MqttPort,
    /// The appliance's HTTP port.
    HttpPort,
    /// The credential kind byte.
    Credential,
    /// The MQTT user name.
    Username,
    /// The MQTT password.
    Password,
    /// The API key.
    ApiKey,
    /// The NTP server.
    NtpServer,
    /// The report interval.
    Interval,
    /// The 1-Wire GPIO.
    OnewirePin,
    /// The LED GPIO.
    LedPin,
    /// The flags byte.
    Flags,
    /// The CA fingerprint.
    CaFingerprint,
    /// The probe offsets.
    Offsets,
}

impl Field {
    /// The field's name as the documentation and the appliance's CLI spell it.
    pub fn name(self) -> &'static str {
        match self {
            Field::DeviceId => "device id",
            Field::WifiSsid => "Wi-Fi SSID",
            Field::WifiPass => "Wi-Fi pass phrase",
            Field::Host => "appliance host",
            Field::MqttPort => "MQTT port",
            Field::HttpPort => "HTTP port",
            Field::Credential => "credential",
            Field::Username => "MQTT user name",
            Field::Password => "MQTT password",
            Field::ApiKey => "API key",
            Field::NtpServer => "NTP server",
            Field::Interval => "report interval",
            Field::OnewirePin => "1-Wire GPIO",
            Field::LedPin => "LED GPIO",
            Field::Flags => "flags",
            Field::CaFingerprint => "CA fingerprint",
            Field::Offsets => "probe offsets",
        }
    }

    fn rule(self) -> &'static str {
        match self {
            Field::DeviceId => "1..=32 characters of A-Z a-z 0-9 - _ .",
            Field::WifiSsid => "1..=32 bytes",
            Field::WifiPass => "8..=63 characters, or empty for an open network",
            Field::Host | Field::NtpServer => {
                "an IPv4 address or DNS name of at most 64 characters"
            }
            Field::MqttPort | Field::HttpPort => "1..=65535",
            Field::Credential => "MQTT user and password, or an API key",
            Field::Username => "1..=64 printable characters",
            Field::Password | Field::ApiKey => "1..=128 printable characters",
            Field::Interval => "5..=86400 seconds",
            Field::OnewirePin | Field::LedPin => {
                "GPIO 0-10, 20 or 21, and the two pins must differ"
            }
            Field::Flags => "only bit 0 may be set",
            Field::CaFingerprint => "absent or 32 bytes",
            Field::Offsets => "at most 16 sensor ids with offsets within ±10 °C",
        }
    }
}

/// Why a config could not be encoded, decoded or loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The area holds no record at all (erased flash): the device was never provisioned.
    Empty,
    /// Fewer bytes than the header or its declared payload length need.
    Truncated,
    /// The record does not start with [`MAGIC`].
    BadMagic,
    /// A format version this code does not read.
    UnsupportedVersion(u8),
    /// The declared payload length exceeds [`PAYLOAD_MAX`].
    BadLength(u16),
    /// The CRC-32 does not match: the record is corrupt (or was torn by a power cut).
    BadChecksum {
        /// The CRC stored in the record.
        stored: u32,
        /// The CRC of the bytes read.
        computed: u32,
    },
    /// The payload's structure is broken at this field (string overruns, bad UTF-8, unknown
    /// kind byte, trailing bytes).
    Malformed(Field),
    /// A value breaks its rule.
    Invalid(Field),
    /// The output buffer is too small.
    BufferTooSmall,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Empty => f.write_str("no config stored (the config partition is erased)"),
            Error::Truncated => f.write_str("config record is truncated"),
            Error::BadMagic => f.write_str("config record has no GBCF magic"),
            Error::UnsupportedVersion(v) => write!(
                f,
                "config format version {v} is not supported (this firmware reads version {FORMAT_VERSION})"
            ),
            Error::BadLength(n) => {
                write!(f, "config payload length {n} exceeds {PAYLOAD_MAX} bytes")
            }
            Error::BadChecksum { stored, computed } => write!(
                f,
                "config checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ),
            Error::Malformed(field) => write!(f, "config record malformed at {}", field.name()),
            Error::Invalid(field) => write!(f, "{} must be {}", field.name(), field.rule()),
            Error::BufferTooSmall => f.write_str("config buffer too small"),
        }
    }
}

crate::impl_error!(Error);

/// How the device sends telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// MQTT 5 to the appliance's broker (telemetry and commands).
    Mqtt,
    /// `POST /api/telemetry` with `X-API-Key` (telemetry only).
    Http,
}

/// The device's own credential on the appliance; it also selects the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An MQTT account (`[[mqtt.users]]` with `device = ID`).
    Mqtt {
        /// The user name.
        username: String<USERNAME_MAX>,
        /// The password.
        password: String<SECRET_MAX>,
    },
    /// A device API key (`genba keys add`), sent as `X-API-Key`.
    ApiKey(String<SECRET_MAX>),
}

impl Credential {
    /// An MQTT user and password.
    pub fn mqtt(username: &str, password: &str) -> Result<Self, Error> {
        Ok(Credential::Mqtt {
            username: text(username, Field::Username)?,
            password: text(password, Field::Password)?,
        })
    }

    /// An API key.
    pub fn api_key(key: &str) -> Result<Self, Error> {
        Ok(Credential::ApiKey(text(key, Field::ApiKey)?))
    }

    /// The transport this credential is for.
    pub fn transport(&self) -> Transport {
        match self {
            Credential::Mqtt { .. } => Transport::Mqtt,
            Credential::ApiKey(_) => Transport::Http,
        }
    }
}

/// GPIO assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pins {
    /// The 1-Wire data line (DS18B20 DQ).
    pub onewire: u8,
    /// The status LED.
    pub led: u8,
    /// The LED lights when the pin is low.
    pub led_active_low: bool,
}

impl Default for Pins {
    /// GPIO4 for 1-Wire, an active-low LED on GPIO8 (ESP32-C3 "SuperMini" boards).
    fn default() -> Self {
        Pins {
            onewire: 4,
            led: 8,
            led_active_low: true,
        }
    }
}

/// Everything one device needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// MQTT client id, topic level and telemetry `device_id`.
    pub device_id: String<DEVICE_ID_MAX>,
    /// Wi-Fi network name.
    pub wifi_ssid: String<SSID_MAX>,
    /// WPA2 pass phrase, empty for an open network.
    pub wifi_pass: String<WIFI_PASS_MAX>,
    /// The appliance: IPv4 address or DNS name.
    pub host: String<HOST_MAX>,
    /// The appliance's MQTT port: MQTT over TLS when [`Self::ca_sha256`] is set.
    pub mqtt_port: u16,
    /// The appliance's HTTP port: HTTPS when [`Self::ca_sha256`] is set.
    pub http_port: u16,
    /// The device's credential (and with it the transport).
    pub credential: Credential,
    /// SNTP server: IPv4 address or DNS name.
    pub ntp_server: String<HOST_MAX>,
    /// Seconds between readings.
    pub interval_s: u32,
    /// GPIO assignment.
    pub pins: Pins,
    /// Per-probe calibration offsets.
    pub offsets: Offsets<MAX_READINGS>,
    /// SHA-256 of the certificate the device pins (the appliance's local CA, or its server
    /// certificate). When set, the device speaks only TLS and trusts only a server whose
    /// certificate chain holds this certificate (`crate::tls`).
    pub ca_sha256: Option<[u8; FINGERPRINT_LEN]>,
}

fn text<const N: usize>(s: &str, field: Field) -> Result<String<N>, Error> {
    String::try_from(s).map_err(|_| Error::Invalid(field))
}

/// Checks an IPv4 literal or DNS name (the firmware resolves it with DNS; mDNS names such as
/// `genba.local` are not resolved).
pub fn check_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= HOST_MAX
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !host.starts_with(['-', '.'])
}

/// Whether `gpio` is free for the 1-Wire bus or the LED.
pub fn check_pin(gpio: u8) -> bool {
    FREE_GPIOS.contains(&gpio)
}

fn printable(s: &str, min: usize) -> bool {
    s.len() >= min && !s.chars().any(|c| c.is_control())
}

impl DeviceConfig {
    /// A config with the defaults for everything not given: ports 1883/8080, a 60 s interval,
    /// NTP from pool.ntp.org, GPIO4/GPIO8, no offsets, no CA fingerprint. Checked.
    pub fn new(
        device_id: &str,
        wifi_ssid: &str,
        wifi_pass: &str,
        host: &str,
        credential: Credential,
    ) -> Result<Self, Error> {
        let config = DeviceConfig {
            device_id: text(device_id, Field::DeviceId)?,
            wifi_ssid: text(wifi_ssid, Field::WifiSsid)?,
            wifi_pass: text(wifi_pass, Field::WifiPass)?,
            host: text(host, Field::Host)?,
            mqtt_port: DEFAULT_MQTT_PORT,
            http_port: DEFAULT_HTTP_PORT,
            credential,
            ntp_server: text(DEFAULT_NTP_SERVER, Field::NtpServer)?,
            interval_s: DEFAULT_INTERVAL_S,
            pins: Pins::default(),
            offsets: Offsets::new(),
            ca_sha256: None,
        };
        config.validate()?;
        Ok(config)
    }

    /// Sets the NTP server.
    pub fn set_ntp_server(&mut self, host: &str) -> Result<(), Error> {
        self.ntp_server = text(host, Field::NtpServer)?;
        Ok(())
    }

    /// Checks every field against the rules the firmware applies (the same ones commands and
    /// the appliance use: device id, interval range, offsets, pins).
    pub fn validate(&self) -> Result<(), Error> {
        let check = |ok: bool, field| {
            if ok {
                Ok(())
            } else {
                Err(Error::Invalid(field))
            }
        };
        telemetry::validate_device_id(&self.device_id)
            .map_err(|_| Error::Invalid(Field::DeviceId))?;
        check(!self.wifi_ssid.is_empty(), Field::WifiSsid)?;
        let pass = self.wifi_pass.len();
        check(
            pass == 0 || (pass >= WIFI_PASS_MIN && printable(&self.wifi_pass, 0)),
            Field::WifiPass,
        )?;
        check(check_host(&self.host), Field::Host)?;
        check(self.mqtt_port != 0, Field::MqttPort)?;
        check(self.http_port != 0, Field::HttpPort)?;
        match &self.credential {
            Credential::Mqtt { username, password } => {
                check(printable(username, 1), Field::Username)?;
                check(printable(password, 1), Field::Password)?;
            }
            Credential::ApiKey(key) => check(printable(key, 1), Field::ApiKey)?,
        }
        check(check_host(&self.ntp_server), Field::NtpServer)?;
        check(
            (MIN_INTERVAL_S..=MAX_INTERVAL_S).contains(&self.interval_s),
            Field::Interval,
        )?;
        check(check_pin(self.pins.onewire), Field::OnewirePin)?;
        check(
            check_pin(self.pins.led) && self.pins.led != self.pins.onewire,
            Field::LedPin,
        )?;
        for (id, offset) in self.offsets.iter() {
            offsets::check_sensor_id(id).map_err(|_| Error::Invalid(Field::Offsets))?;
            offsets::check_offset(offset).map_err(|_| Error::Invalid(Field::Offsets))?;
        }
        Ok(())
    }

    /// The transport the credential selects.
    pub fn transport(&self) -> Transport {
        self.credential.transport()
    }

    /// The HTTP transport's URL (`http://host:port/api/telemetry`).
    pub fn telemetry_url(&self) -> crate::http::Url<'_> {
        crate::http::Url {
            tls: false,
            host: &self.host,
            port: self.http_port,
            path: TELEMETRY_PATH,
        }
    }

    /// Writes the record with this sequence number into `out`; returns its length.
    pub fn encode(&self, sequence: u32, out: &mut [u8]) -> Result<usize, Error> {
        self.validate()?;
        let mut w = Writer {
            buf: out,
            pos: HEADER_LEN,
        };
        w.str(&self.device_id)?;
        w.str(&self.wifi_ssid)?;
        w.str(&self.wifi_pass)?;
        w.str(&self.host)?;
        w.bytes(&self.mqtt_port.to_le_bytes())?;
        w.bytes(&self.http_port.to_le_bytes())?;
        match &self.credential {
            Credential::Mqtt { username, password } => {
                w.bytes(&[0])?;
                w.str(username)?;
                w.str(password)?;
            }
            Credential::ApiKey(key) => {
                w.bytes(&[1])?;
                w.str(key)?;
            }
        }
        w.str(&self.ntp_server)?;
        w.bytes(&self.interval_s.to_le_bytes())?;
        w.bytes(&[
            self.pins.onewire,
            self.pins.led,
            u8::from(self.pins.led_active_low),
        ])?;
        match &self.ca_sha256 {
            Some(fp) => {
                w.bytes(&[1])?;
                w.bytes(fp)?;
            }
            None => w.bytes(&[0])?,
        }
        // at most MAX_READINGS entries, so the count fits a byte
        w.bytes(&[self.offsets.len() as u8])?;
        for (id, offset) in self.offsets.iter() {
            w.str(id)?;
            w.bytes(&offset.to_le_bytes())?;
        }
        let payload_len = w.pos - HEADER_LEN;
        let payload_len = u16::try_from(payload_len).map_err(|_| Error::BufferTooSmall)?;
        let header = w.buf.get_mut(..HEADER_LEN).ok_or(Error::BufferTooSmall)?;
        header[..4].copy_from_slice(&MAGIC);
        header[4] = FORMAT_VERSION;
        header[5] = 0;
        header[6..8].copy_from_slice(&payload_len.to_le_bytes());
        header[8..12].copy_from_slice(&sequence.to_le_bytes());
        let crc = crc32(&w.buf[..w.pos]);
        w.bytes(&crc.to_le_bytes())?;
        Ok(w.pos)
    }

    /// Reads a record from the start of `bytes` (anything after it, such as the erased rest of
    /// a sector, is ignored); returns the config and the record's sequence number.
    pub fn decode(bytes: &[u8]) -> Result<(DeviceConfig, u32), Error> {
        let header = bytes.get(..HEADER_LEN).ok_or(Error::Truncated)?;
        if header.iter().all(|&b| b == 0xFF) {
            return Err(Error::Empty);
        }
        if header[..4] != MAGIC {
            return Err(Error::BadMagic);
        }
        if header[4] != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion(header[4]));
        }
        let payload_len = u16::from_le_bytes([header[6], header[7]]);
        if usize::from(payload_len) > PAYLOAD_MAX {
            return Err(Error::BadLength(payload_len));
        }
        let sequence = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        let end = HEADER_LEN + usize::from(payload_len);
        let body = bytes.get(..end).ok_or(Error::Truncated)?;
        let stored = bytes.get(end..end + CRC_LEN).ok_or(Error::Truncated)?;
        let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
        let computed = crc32(body);
        if stored != computed {
            return Err(Error::BadChecksum { stored, computed });
        }
        let mut r = Reader {
            buf: &body[HEADER_LEN..],
        };
        let device_id = r.string(Field::DeviceId)?;
        let wifi_ssid = r.string(Field::WifiSsid)?;
        let wifi_pass = r.string(Field::WifiPass)?;
        let host = r.string(Field::Host)?;
        let mqtt_port = r.u16(Field::MqttPort)?;
        let http_port = r.u16(Field::HttpPort)?;
        let credential = match r.u8(Field::Credential)? {
            0 => Credential::Mqtt {
                username: r.string(Field::Username)?,
                password: r.string(Field::Password)?,
            },
            1 => Credential::ApiKey(r.string(Field::ApiKey)?),
            _ => return Err(Error::Malformed(Field::Credential)),
        };
        let ntp_server = r.string(Field::NtpServer)?;
        let interval_s = r.u32(Field::Interval)?;
        let onewire = r.u8(Field::OnewirePin)?;
        let led = r.u8(Field::LedPin)?;
        let flags = r.u8(Field::Flags)?;
        if flags & !1 != 0 {
            return Err(Error::Malformed(Field::Flags));
        }
        let ca_sha256 = match r.u8(Field::CaFingerprint)? {
            0 => None,
            1 => {
                let mut fp = [0u8; FINGERPRINT_LEN];
                fp.copy_from_slice(r.take(FINGERPRINT_LEN, Field::CaFingerprint)?);
                Some(fp)
            }
            _ => return Err(Error::Malformed(Field::CaFingerprint)),
        };
        let mut offsets = Offsets::new();
        for _ in 0..r.u8(Field::Offsets)? {
            let id: String<SENSOR_ID_MAX> = r.string(Field::Offsets)?;
            let value = f32::from_le_bytes(
                r.take(4, Field::Offsets)?
                    .try_into()
                    .map_err(|_| Error::Malformed(Field::Offsets))?,
            );
            offsets
                .set(&id, value)
                .map_err(|_| Error::Invalid(Field::Offsets))?;
        }
        if !r.buf.is_empty() {
            return Err(Error::Malformed(Field::Offsets));
        }
        let config = DeviceConfig {
            device_id,
            wifi_ssid,
            wifi_pass,
            host,
            mqtt_port,
            http_port,
            credential,
            ntp_server,
            interval_s,
            pins: Pins {
                onewire,
                led,
                led_active_low: flags & 1 != 0,
            },
            offsets,
            ca_sha256,
        };
        config.validate()?;
        Ok((config, sequence))
    }

    /// The image of a freshly provisioned config area ([`AREA_LEN`] bytes): this record with
    /// sequence 1 in the first slot, every other slot erased (so records a previous owner left
    /// on the chip are gone once the image is written).
    pub fn area_image(&self, out: &mut [u8]) -> Result<(), Error> {
        let area = out.get_mut(..AREA_LEN).ok_or(Error::BufferTooSmall)?;
        area.fill(0xFF);
        self.encode(1, &mut area[..SLOT_LEN])?;
        Ok(())
    }

    /// Whether the record bodies (everything but the sequence number) are equal.
    fn same_record(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.len() >= HEADER_LEN && a[..8] == b[..8] && {
            let (pa, pb) = (
                &a[HEADER_LEN..a.len() - CRC_LEN],
                &b[HEADER_LEN..b.len() - CRC_LEN],
            );
            pa == pb
        }
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), Error> {
        let end = self.pos + b.len();
        self.buf
            .get_mut(self.pos..end)
            .ok_or(Error::BufferTooSmall)?
            .copy_from_slice(b);
        self.pos = end;
        Ok(())
    }

    fn str(&mut self, s: &str) -> Result<(), Error> {
        // every string field is at most SECRET_MAX (128) bytes long
        let len = u8::try_from(s.len()).map_err(|_| Error::BufferTooSmall)?;
        self.bytes(&[len])?;
        self.bytes(s.as_bytes())
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: Field) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(Error::Malformed(field));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, field: Field) -> Result<u8, Error> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: Field) -> Result<u16, Error> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: Field) -> Result<u32, Error> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string<const N: usize>(&mut self, field: Field) -> Result<String<N>, Error> {
        let len = usize::from(self.u8(field)?);
        let bytes = self.take(len, field)?;
        let s = core::str::from_utf8(bytes).map_err(|_| Error::Malformed(field))?;
        String::try_from(s).map_err(|_| Error::Invalid(field))
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The newest valid record of a config area.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The config.
    pub config: DeviceConfig,
    /// Its slot.
    pub slot: usize,
    /// Its sequence number.
    pub sequence: u32,
    /// Slots holding something that is not a valid record (torn or corrupt), which the next
    /// save may overwrite.
    pub bad_slots: usize,
}

/// Picks the newest valid record among the slots' decode results. With none valid, the error
/// is [`Error::Empty`] when every slot is erased, else the first bad slot's problem.
#[derive(Default)]
struct Newest {
    best: Option<Loaded>,
    problem: Option<Error>,
    bad: usize,
}

impl Newest {
    fn add(&mut self, slot: usize, result: Result<(DeviceConfig, u32), Error>) {
        match result {
            Ok((config, sequence)) => {
                if self.best.as_ref().is_none_or(|b| sequence > b.sequence) {
                    self.best = Some(Loaded {
                        config,
                        slot,
                        sequence,
                        bad_slots: 0,
                    });
                }
            }
            Err(Error::Empty) => {}
            Err(e) => {
                self.bad += 1;
                self.problem.get_or_insert(e);
            }
        }
    }

    fn finish(self) -> Result<Loaded, Error> {
        match self.best {
            Some(mut b) => {
                b.bad_slots = self.bad;
                Ok(b)
            }
            None => Err(self.problem.unwrap_or(Error::Empty)),
        }
    }
}

/// Reads a config area image (a provisioning file, or a dump of the partition).
pub fn decode_area(area: &[u8]) -> Result<Loaded, Error> {
    if area.len() < SLOT_LEN {
        return Err(Error::Truncated);
    }
    let mut newest = Newest::default();
    for (slot, bytes) in area.chunks(SLOT_LEN).take(SLOTS).enumerate() {
        newest.add(slot, DeviceConfig::decode(bytes));
    }
    newest.finish()
}

/// Why the flash store failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError<E> {
    /// The flash driver failed.
    Flash(E),
    /// The partition is smaller than [`AREA_LEN`] or its geometry does not fit the slots.
    Geometry,
    /// The config could not be encoded, or no stored record is valid.
    Config(Error),
}

impl<E: fmt::Debug> fmt::Display for StoreError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Flash(e) => write!(f, "flash error: {e:?}"),
            StoreError::Geometry => write!(
                f,
                "config partition must hold {SLOTS} slots of {SLOT_LEN} bytes"
            ),
            StoreError::Config(e) => write!(f, "{e}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for StoreError<E> {}

/// When to write settings that commands changed: [`SETTLE_S`] after the last change (at the
/// latest [`MIN_WRITE_GAP_S`] after the first unwritten one, so a stream of changes cannot
/// postpone the write forever), and never sooner than [`MIN_WRITE_GAP_S`] after the previous
/// write or failed attempt. Times are milliseconds of uptime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WritePacer {
    /// First and last change not written yet.
    pending: Option<(u64, u64)>,
    written_at: Option<u64>,
}

impl WritePacer {
    /// Nothing pending, nothing written yet.
    pub const fn new() -> Self {
        WritePacer {
            pending: None,
            written_at: None,
        }
    }

    /// A setting changed now.
    pub fn changed(&mut self, now_ms: u64) {
        let first = self.pending.map_or(now_ms, |(first, _)| first);
        self.pending = Some((first, now_ms));
    }

    /// Milliseconds until the write is due (0: now); `None` when nothing is pending.
    pub fn due_in(&self, now_ms: u64) -> Option<u64> {
        let (first, last) = self.pending?;
        let gap_ms = u64::from(MIN_WRITE_GAP_S) * 1000;
        let settled = last
            .saturating_add(u64::from(SETTLE_S) * 1000)
            .min(first.saturating_add(gap_ms));
        let gap = self.written_at.map_or(0, |w| w.saturating_add(gap_ms));
        Some(settled.max(gap).saturating_sub(now_ms))
    }

    /// What [`Store::save`] did at `now_ms`: a write (or a failed attempt, which is retried
    /// after the gap) starts the gap; an unchanged record needs no write.
    pub fn saved<E>(&mut self, result: &Result<Saved, E>, now_ms: u64) {
        match result {
            Ok(Saved::Unchanged) => self.pending = None,
            Ok(Saved::Written { .. }) => {
                self.pending = None;
                self.written_at = Some(now_ms);
            }
            Err(_) => self.written_at = Some(now_ms),
        }
    }
}

/// What [`Store::save`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// The stored record already says the same: nothing was erased or written.
    Unchanged,
    /// Written to this slot with this sequence number.
    Written {
        /// The slot.
        slot: usize,
        /// The new sequence number.
        sequence: u32,
    },
}

/// Read buffer: a record, rounded up so every flash read and write size divides it.
const IO_LEN: usize = RECORD_MAX.div_ceil(64) * 64;

/// The config area on a NOR flash partition (the firmware's `config` partition).
pub struct Store<F> {
    flash: F,
    /// Slot and sequence number of the newest valid record, once known.
    current: Option<(usize, u32)>,
}

impl<F: NorFlash> Store<F> {
    /// Wraps the partition; checks that it holds [`SLOTS`] sector-aligned slots.
    pub fn new(flash: F) -> Result<Self, StoreError<F::Error>> {
        let fits = flash.capacity() >= AREA_LEN
            && SLOT_LEN.is_multiple_of(F::ERASE_SIZE)
            && IO_LEN.is_multiple_of(F::WRITE_SIZE)
            && IO_LEN.is_multiple_of(F::READ_SIZE);
        if !fits {
            return Err(StoreError::Geometry);
        }
        Ok(Store {
            flash,
            current: None,
        })
    }

    fn read_slot(
        &mut self,
        slot: usize,
        buf: &mut [u8; IO_LEN],
    ) -> Result<(), StoreError<F::Error>> {
        // slot < SLOTS, so the offset is below AREA_LEN (16 KiB)
        let offset = (slot * SLOT_LEN) as u32;
        self.flash.read(offset, buf).map_err(StoreError::Flash)
    }

    /// Loads the newest valid record. A corrupt or torn slot is skipped when another slot is
    /// valid ([`Loaded::bad_slots`] counts them); with none valid the error says why
    /// ([`Error::Empty`] for a never provisioned device).
    pub fn load(&mut self) -> Result<Loaded, StoreError<F::Error>> {
        let mut buf = [0u8; IO_LEN];
        let mut newest = Newest::default();
        for slot in 0..SLOTS {
            self.read_slot(slot, &mut buf)?;
            newest.add(slot, DeviceConfig::decode(&buf));
        }
        let loaded = newest.finish().map_err(StoreError::Config)?;
        self.current = Some((loaded.slot, loaded.sequence));
        Ok(loaded)
    }

    /// Stores `config` unless the newest record already says the same. A new record goes to
    /// the slot after the newest one, so the previous record survives a power cut mid-write.
    pub fn save(&mut self, config: &DeviceConfig) -> Result<Saved, StoreError<F::Error>> {
        if self.current.is_none() {
            // nothing valid stored yet is fine: the first save starts at slot 0
            match self.load() {
                Ok(_) | Err(StoreError::Config(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let (slot, sequence) = match self.current {
            Some((slot, seq)) => ((slot + 1) % SLOTS, seq.wrapping_add(1)),
            None => (0, 1),
        };
        let mut new = [0xFFu8; IO_LEN];
        let len = config
            .encode(sequence, &mut new)
            .map_err(StoreError::Config)?;
        if let Some((current, _)) = self.current {
            let mut old = [0u8; IO_LEN];
            self.read_slot(current, &mut old)?;
            let old_len = HEADER_LEN
                + usize::from(u16::from_le_bytes([old[6], old[7]])).min(PAYLOAD_MAX)
                + CRC_LEN;
            if DeviceConfig::same_record(&old[..old_len], &new[..len]) {
                return Ok(Saved::Unchanged);
            }
        }
        let offset = (slot * SLOT_LEN) as u32;
        self.flash
            .erase(offset, offset + SLOT_LEN as u32)
            .map_err(StoreError::Flash)?;
        let padded = len.div_ceil(F::WRITE_SIZE) * F::WRITE_SIZE;
        self.flash
            .write(offset, &new[..padded])
            .map_err(StoreError::Flash)?;
        self.current = Some((slot, sequence));
        Ok(Saved::Written { slot, sequence })
    }

    /// Gives the flash back.
    pub fn into_inner(self) -> F {
        self.flash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram_flash::RamFlash;

    fn sample() -> DeviceConfig {
        let mut c = DeviceConfig::new(
            "fridge-2",
            "shop-wifi",
            "wifi-pass-123",
            "192.168.1.10",
            Credential::mqtt("fridge-2", "s3cret-password").unwrap(),
        )
        .unwrap();
        c.interval_s = 300;
        c.pins = Pins {
            onewire: 5,
            led: 21,
            led_active_low: false,
        };
        c.offsets.set("28FF4C3A91160457", -0.25).unwrap();
        c.offsets.set("28AA000000000001", 0.5).unwrap();
        c.ca_sha256 = Some([0xAB; 32]);
        c
    }

    fn encoded(c: &DeviceConfig) -> std::vec::Vec<u8> {
        let mut buf = [0u8; RECORD_MAX];
        let n = c.encode(7, &mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn a_record_round_trips_with_every_field() {
        let c = sample();
        let bytes = encoded(&c);
        assert_eq!(&bytes[..4], b"GBCF");
        assert_eq!(DeviceConfig::decode(&bytes), Ok((c.clone(), 7)));
        let mut http = c;
        http.credential = Credential::api_key("k-0123456789abcdef0123").unwrap();
        http.ca_sha256 = None;
        http.offsets = Offsets::new();
        let bytes = encoded(&http);
        assert_eq!(DeviceConfig::decode(&bytes), Ok((http.clone(), 7)));
        assert_eq!(http.transport(), Transport::Http);
        let url = http.telemetry_url();
        assert_eq!(
            (url.host, url.port, url.path),
            ("192.168.1.10", 8080, "/api/telemetry")
        );
    }

    #[test]
    fn the_longest_config_fits_record_max() {
        let long = |n| "x".repeat(n);
        let mut c = DeviceConfig::new(
            &"d".repeat(DEVICE_ID_MAX),
            &long(SSID_MAX),
            &long(WIFI_PASS_MAX),
            &"h".repeat(HOST_MAX),
            Credential::mqtt(&long(USERNAME_MAX), &long(SECRET_MAX)).unwrap(),
        )
        .unwrap();
        c.set_ntp_server(&"n".repeat(HOST_MAX)).unwrap();
        c.ca_sha256 = Some([1; 32]);
        for i in 0..MAX_READINGS {
            c.offsets
                .set(&format!("28FF4C3A911604{i:02}"), 1.0)
                .unwrap();
        }
        let bytes = encoded(&c);
        assert_eq!(bytes.len(), RECORD_MAX);
        assert_eq!(DeviceConfig::decode(&bytes).unwrap().0, c);
    }

    #[test]
    fn corrupt_truncated_and_foreign_records_are_refused_with_a_reason() {
        let bytes = encoded(&sample());
        // any flipped bit fails the checksum (or the header checks before it)
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(
                DeviceConfig::decode(&b).is_err(),
                "flip at byte {i} accepted"
            );
        }
        let mut b = bytes.clone();
        b[20] ^= 1;
        assert!(matches!(
            DeviceConfig::decode(&b),
            Err(Error::BadChecksum { .. })
        ));
        for cut in [0, 5, HEADER_LEN, bytes.len() - 1] {
            assert_eq!(
                DeviceConfig::decode(&bytes[..cut]),
                Err(Error::Truncated),
                "cut {cut}"
            );
        }
        let mut b = bytes.clone();
        b[4] = 2;
        assert_eq!(DeviceConfig::decode(&b), Err(Error::UnsupportedVersion(2)));
        let mut b = bytes.clone();
        b[0] = b'X';
        assert_eq!(DeviceConfig::decode(&b), Err(Error::BadMagic));
        let mut b = bytes.clone();
        b[6..8].copy_from_slice(&9999u16.to_le_bytes());
        assert_eq!(DeviceConfig::decode(&b), Err(Error::BadLength(9999)));
        assert_eq!(DeviceConfig::decode(&[0xFF; 64]), Err(Error::Empty));
        assert!(Error::UnsupportedVersion(2)
            .to_string()
            .contains("version 2"));
    }

    /// Re-seals a record whose payload was edited, so the checks behind the CRC are reached.
    fn reseal(mut b: std::vec::Vec<u8>) -> std::vec::Vec<u8> {
        let end = b.len() - CRC_LEN;
        let crc = crc32(&b[..end]);
        b[end..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn a_well_sealed_record_with_a_bad_value_is_refused() {
        let c = sample();
        let bytes = encoded(&c);
        // the interval sits right after the NTP server string
        let pos = bytes
            .windows(4)
            .position(|w| w == 300u32.to_le_bytes())
            .unwrap();
        let mut b = bytes.clone();
        b[pos..pos + 4].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            DeviceConfig::decode(&reseal(b)),
            Err(Error::Invalid(Field::Interval))
        );
        // 1-Wire pin 12 is the SPI flash
        let mut b = bytes.clone();
        b[pos + 4] = 12;
        assert_eq!(
            DeviceConfig::decode(&reseal(b)),
            Err(Error::Invalid(Field::OnewirePin))
        );
        // a bad character in the device id
        let mut b = bytes.clone();
        b[HEADER_LEN + 1] = b'/';
        assert_eq!(
            DeviceConfig::decode(&reseal(b)),
            Err(Error::Invalid(Field::DeviceId))
        );
    }

    #[test]
    fn encode_refuses_what_the_firmware_would_refuse() {
        let mut c = sample();
        c.pins.led = c.pins.onewire;
        assert_eq!(
            c.encode(1, &mut [0; RECORD_MAX]),
            Err(Error::Invalid(Field::LedPin))
        );
        let mqtt = Credential::mqtt("u", "p").unwrap();
        let new = |id: &str, ssid: &str, pass: &str, host: &str| {
            DeviceConfig::new(id, ssid, pass, host, mqtt.clone())
        };
        assert_eq!(
            new("a/b", "s", "", "h").err(),
            Some(Error::Invalid(Field::DeviceId))
        );
        assert_eq!(
            new("d", "", "", "h").err(),
            Some(Error::Invalid(Field::WifiSsid))
        );
        assert_eq!(
            new("d", "s", "short", "h").err(),
            Some(Error::Invalid(Field::WifiPass))
        );
        assert_eq!(
            new("d", "s", "", "genba local").err(),
            Some(Error::Invalid(Field::Host))
        );
        assert!(new("d", "open-net", "", "genba.lan").is_ok());
        assert_eq!(
            Credential::api_key(&"k".repeat(129)),
            Err(Error::Invalid(Field::ApiKey))
        );
    }

    #[test]
    fn area_image_decodes_and_wipes_older_slots() {
        let mut area = vec![0u8; AREA_LEN];
        sample().area_image(&mut area).unwrap();
        assert!(area[SLOT_LEN..].iter().all(|&b| b == 0xFF));
        let loaded = decode_area(&area).unwrap();
        assert_eq!(
            (loaded.config, loaded.slot, loaded.sequence),
            (sample(), 0, 1)
        );
        assert_eq!(decode_area(&vec![0xFF; AREA_LEN]), Err(Error::Empty));
        assert_eq!(decode_area(&area[..100]), Err(Error::Truncated));
    }

    #[test]
    fn store_writes_only_changes_and_the_newest_record_wins() {
        let mut store = Store::new(RamFlash::new(AREA_LEN)).unwrap();
        assert_eq!(store.load().err(), Some(StoreError::Config(Error::Empty)));
        let mut c = sample();
        assert_eq!(
            store.save(&c),
            Ok(Saved::Written {
                slot: 0,
                sequence: 1
            })
        );
        assert_eq!(store.save(&c), Ok(Saved::Unchanged));
        c.interval_s = 120;
        assert_eq!(
            store.save(&c),
            Ok(Saved::Written {
                slot: 1,
                sequence: 2
            })
        );
        let flash = store.into_inner();
        assert_eq!(flash.erases, [1, 1, 0, 0]);
        // after a reset
        let mut store = Store::new(flash).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(
            (loaded.config.interval_s, loaded.slot, loaded.sequence),
            (120, 1, 2)
        );
        assert_eq!(store.save(&c), Ok(Saved::Unchanged));
    }

    #[test]
    fn a_power_cut_mid_write_keeps_the_previous_record() {
        let mut store = Store::new(RamFlash::new(AREA_LEN)).unwrap();
        let mut c = sample();
        store.save(&c).unwrap();
        c.interval_s = 900;
        let mut flash = store.into_inner();
        flash.cut_after = Some(40);
        let mut store = Store::new(flash).unwrap();
        store.save(&c).unwrap();
        let mut store = Store::new(store.into_inner()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(
            (loaded.config.interval_s, loaded.sequence, loaded.bad_slots),
            (300, 1, 1)
        );
        // the next save goes to the torn slot's successor and wins
        assert_eq!(
            store.save(&c),
            Ok(Saved::Written {
                slot: 1,
                sequence: 2
            })
        );
        assert_eq!(store.load().unwrap().config.interval_s, 900);
    }

    #[test]
    fn writes_rotate_over_every_slot() {
        let mut store = Store::new(RamFlash::new(AREA_LEN)).unwrap();
        let mut c = sample();
        for i in 0..400 {
            c.interval_s = 60 + i;
            store.save(&c).unwrap();
        }
        assert_eq!(store.into_inner().erases, [100; SLOTS]);
    }

    #[test]
    fn store_refuses_a_partition_too_small() {
        let mut flash = RamFlash::new(AREA_LEN);
        flash.mem.truncate(SLOT_LEN);
        assert!(matches!(Store::new(flash), Err(StoreError::Geometry)));
    }

    #[test]
    fn the_pacer_writes_a_burst_once_and_never_twice_within_the_gap() {
        const S: u64 = 1000;
        let written = Ok::<_, ()>(Saved::Written {
            slot: 0,
            sequence: 1,
        });
        let mut p = WritePacer::new();
        assert_eq!(p.due_in(0), None);
        // eight offset commands a second apart: one write, 30 s after the last
        for t in 0..8 {
            p.changed(t * S);
        }
        assert_eq!(p.due_in(7 * S), Some(30 * S));
        assert_eq!(p.due_in(37 * S), Some(0));
        p.saved(&written, 37 * S);
        assert_eq!(p.due_in(38 * S), None);
        // the next change waits for the 10-minute gap, not only for quiet
        p.changed(60 * S);
        assert_eq!(p.due_in(90 * S), Some((637 - 90) * S));
        // a failed write is retried after the gap; an unchanged record ends the wait
        p.saved(&Err::<Saved, ()>(()), 637 * S);
        assert_eq!(p.due_in(637 * S), Some(600 * S));
        p.saved(&Ok::<_, ()>(Saved::Unchanged), 1237 * S);
        assert_eq!(p.due_in(1237 * S), None);
    }

    #[test]
    fn the_pacer_bounds_writes_to_one_per_gap_and_does_not_starve_under_constant_changes() {
        let mut p = WritePacer::new();
        let mut writes = std::vec::Vec::new();
        // a change every 7 s for a day (never 30 s of quiet), the loop checking every second
        for now in (0..86_400_000u64).step_by(1000) {
            if now % 7000 == 0 {
                p.changed(now);
            }
            if p.due_in(now) == Some(0) {
                p.saved(
                    &Ok::<_, ()>(Saved::Written {
                        slot: 0,
                        sequence: 1,
                    }),
                    now,
                );
                writes.push(now);
            }
        }
        let gap = u64::from(MIN_WRITE_GAP_S) * 1000;
        assert!(writes.windows(2).all(|w| w[1] - w[0] >= gap), "{writes:?}");
        assert_eq!(
            writes.first(),
            Some(&gap),
            "the first write waits one gap, not forever"
        );
        assert!(
            (140..=144).contains(&writes.len()),
            "{} writes in a day",
            writes.len()
        );
    }

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
