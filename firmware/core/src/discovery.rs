//! Finding the appliance on the LAN: the DNS-SD service `_genba._tcp.local.` it announces over
//! mDNS, and which address a device uses, the announced one or the one in its config.
//!
//! The appliance writes its TXT record with [`Service::write_txt`]; a device (the firmware, or
//! `genba simulate --discover` on the host) reads it back with [`Service::from_txt`] or, from
//! the raw TXT RDATA of an mDNS answer, [`Service::from_txt_rdata`], then calls [`choose`] with
//! what it found and its stored config. Both ends use this module, so the keys are defined once.
//!
//! # TXT keys (version 1)
//!
//! | key | value |
//! |---|---|
//! | `v` | `1`, the version of this key set; other versions are refused |
//! | `mqtt`, `http` | the plain MQTT and HTTP ports |
//! | `mqtts`, `https` | MQTT over TLS and HTTPS, when the appliance serves them |
//! | `fp` | SHA-256 of the TLS server certificate (DER), 64 hex digits, when TLS is on |
//! | `ca` | SHA-256 of the local CA's certificate that issued it, when Genba made it |
//!
//! Keys are case-insensitive; only the first occurrence of a key counts (RFC 6763 §6.4);
//! unknown keys are ignored, so later versions may add keys without a new `v`.
//!
//! # The choice
//!
//! A device whose config pins a fingerprint ([`DeviceConfig::ca_sha256`]) speaks TLS: MQTT over
//! TLS or HTTPS, on the `mqtts`/`https` ports, and its stored ports are those. A device without a
//! pin speaks plain MQTT or HTTP on `mqtt`/`http` ([`Service::port`]).
//!
//! A device takes an announcement only when it can use it: it carries the port the device
//! needs and, when the device pins a fingerprint, it announces that fingerprint as `fp` or
//! `ca`. Anything else is ignored and the stored address is used, so a stray or rogue announcer
//! cannot move a pinned device. The check compares what the announcer *claims*: anyone can copy
//! another appliance's TXT. It keeps devices away from the wrong Genba on a shared LAN; the
//! proof is the TLS handshake against the pinned certificate (`crate::tls`, feature `tls`).
//!
//! When several different appliances (instance names) qualify and the device pins nothing, the
//! one at the stored address is taken; if none is, the choice is ambiguous and the stored
//! address is used.

use core::fmt::{self, Write as _};
use core::net::IpAddr;

use heapless::String;

use crate::config::{DeviceConfig, Transport, FINGERPRINT_LEN};

/// The DNS-SD service type the appliance announces.
pub const SERVICE_TYPE: &str = "_genba._tcp.local.";
/// The TXT key set this code writes and reads (`v`).
pub const VERSION: u8 = 1;
/// Longest instance name (one DNS label).
pub const INSTANCE_MAX: usize = 63;

/// The TXT keys.
pub mod key {
    /// Version of the key set.
    pub const VERSION: &str = "v";
    /// Plain MQTT port.
    pub const MQTT: &str = "mqtt";
    /// Plain HTTP port.
    pub const HTTP: &str = "http";
    /// MQTT over TLS port.
    pub const MQTTS: &str = "mqtts";
    /// HTTPS port.
    pub const HTTPS: &str = "https";
    /// SHA-256 of the TLS server certificate.
    pub const FINGERPRINT: &str = "fp";
    /// SHA-256 of the CA certificate that issued the server certificate.
    pub const CA: &str = "ca";
}

const KEYS: [&str; 7] = [
    key::VERSION,
    key::MQTT,
    key::HTTP,
    key::MQTTS,
    key::HTTPS,
    key::FINGERPRINT,
    key::CA,
];

/// A SHA-256 fingerprint.
pub type Fingerprint = [u8; FINGERPRINT_LEN];

/// Why a TXT record was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxtError {
    /// No `v` key: not a Genba announcement this code can read.
    NoVersion,
    /// A `v` other than [`VERSION`].
    UnsupportedVersion,
    /// This key's value is not what it must be (a port 1..=65535, 64 hex digits, a number).
    BadValue(&'static str),
    /// The TXT RDATA's length bytes overrun it.
    Malformed,
}

impl fmt::Display for TxtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxtError::NoVersion => f.write_str("TXT record has no `v` key"),
            TxtError::UnsupportedVersion => {
                write!(f, "TXT version is not {VERSION}, the one this code reads")
            }
            TxtError::BadValue(key) => write!(f, "TXT key `{key}` has a bad value"),
            TxtError::Malformed => f.write_str("TXT record data is malformed"),
        }
    }
}

crate::impl_error!(TxtError);

/// What an announcement's TXT record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Service {
    /// Plain MQTT port.
    pub mqtt: Option<u16>,
    /// Plain HTTP port.
    pub http: Option<u16>,
    /// MQTT over TLS port.
    pub mqtts: Option<u16>,
    /// HTTPS port.
    pub https: Option<u16>,
    /// SHA-256 of the TLS server certificate.
    pub fingerprint: Option<Fingerprint>,
    /// SHA-256 of the CA certificate that issued it.
    pub ca: Option<Fingerprint>,
}

impl Service {
    /// Reads `key=value` pairs (as an mDNS library hands them over).
    pub fn from_txt(pairs: &[(&str, &str)]) -> Result<Service, TxtError> {
        Self::parse(
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))),
        )
    }

    /// Reads the RDATA of a DNS TXT record: strings of one length byte and `key=value` (a
    /// string without `=` is a key without value).
    pub fn from_txt_rdata(rdata: &[u8]) -> Result<Service, TxtError> {
        let mut rest = rdata;
        let mut bad = false;
        let strings = core::iter::from_fn(|| {
            let (&len, tail) = rest.split_first()?;
            let Some((s, tail)) = tail.split_at_checked(usize::from(len)) else {
                bad = true;
                rest = &[];
                return None;
            };
            rest = tail;
            Some(s)
        });
        // Collected first so a length byte overrunning the data is seen before parsing.
        let mut pairs: heapless::Vec<(&[u8], Option<&[u8]>), 32> = heapless::Vec::new();
        for s in strings {
            if !s.is_empty() && pairs.push(split(s)).is_err() {
                break; // more strings than a Genba record has: the rest are unknown keys
            }
        }
        if bad {
            return Err(TxtError::Malformed);
        }
        Self::parse(pairs.into_iter())
    }

    fn parse<'a>(
        pairs: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<Service, TxtError> {
        let mut seen = [false; KEYS.len()];
        let mut version = None;
        let mut service = Service::default();
        for (k, v) in pairs {
            let Some(i) = KEYS
                .iter()
                .position(|n| n.as_bytes().eq_ignore_ascii_case(k))
            else {
                continue;
            };
            if core::mem::replace(&mut seen[i], true) {
                continue; // RFC 6763 §6.4: only the first occurrence counts
            }
            let name = KEYS[i];
            let value = v
                .and_then(|v| core::str::from_utf8(v).ok())
                .ok_or(TxtError::BadValue(name))?;
            match name {
                key::VERSION => {
                    version = Some(value.parse::<u32>().map_err(|_| TxtError::BadValue(name))?)
                }
                key::MQTT => service.mqtt = Some(port(value, name)?),
                key::HTTP => service.http = Some(port(value, name)?),
                key::MQTTS => service.mqtts = Some(port(value, name)?),
                key::HTTPS => service.https = Some(port(value, name)?),
                key::FINGERPRINT => service.fingerprint = Some(fingerprint(value, name)?),
                _ => service.ca = Some(fingerprint(value, name)?),
            }
        }
        match version {
            None => Err(TxtError::NoVersion),
            Some(v) if v != u32::from(VERSION) => Err(TxtError::UnsupportedVersion),
            Some(_) => Ok(service),
        }
    }

    /// Hands each TXT pair to `put`, `v` first, then the ports and fingerprints this service
    /// has (what the appliance announces).
    pub fn write_txt(&self, mut put: impl FnMut(&'static str, &str)) {
        let mut text: String<64> = String::new();
        let mut number = |put: &mut dyn FnMut(&'static str, &str), k: &'static str, n: u16| {
            text.clear();
            let _ = write!(text, "{n}"); // at most 5 digits
            put(k, &text);
        };
        number(&mut put, key::VERSION, u16::from(VERSION));
        let ports = [
            (key::MQTT, self.mqtt),
            (key::HTTP, self.http),
            (key::MQTTS, self.mqtts),
            (key::HTTPS, self.https),
        ];
        for (k, p) in ports {
            if let Some(p) = p {
                number(&mut put, k, p);
            }
        }
        for (k, fp) in [(key::FINGERPRINT, &self.fingerprint), (key::CA, &self.ca)] {
            if let Some(fp) = fp {
                put(k, &hex(fp));
            }
        }
    }

    /// The port for `transport`: the TLS one (`mqtts`, `https`) when `tls`, else the plain one.
    pub fn port(&self, transport: Transport, tls: bool) -> Option<u16> {
        match (transport, tls) {
            (Transport::Mqtt, false) => self.mqtt,
            (Transport::Http, false) => self.http,
            (Transport::Mqtt, true) => self.mqtts,
            (Transport::Http, true) => self.https,
        }
    }

    /// Whether this service claims the pinned fingerprint (as its certificate or its CA).
    pub fn claims(&self, pin: &Fingerprint) -> bool {
        self.fingerprint.as_ref() == Some(pin) || self.ca.as_ref() == Some(pin)
    }
}

/// `key=value` to its parts; a string without `=` is a key without value.
fn split(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&b| b == b'=') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

fn port(value: &str, key: &'static str) -> Result<u16, TxtError> {
    match value.parse::<u16>() {
        Ok(p) if p != 0 && value.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(TxtError::BadValue(key)),
    }
}

/// 64 hex digits (either case) to 32 bytes.
pub fn parse_fingerprint(value: &str) -> Option<Fingerprint> {
    let digits = value.as_bytes();
    if digits.len() != 2 * FINGERPRINT_LEN {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; FINGERPRINT_LEN];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn fingerprint(value: &str, key: &'static str) -> Result<Fingerprint, TxtError> {
    parse_fingerprint(value).ok_or(TxtError::BadValue(key))
}

/// A fingerprint as 64 lower-case hex digits.
pub fn hex(fp: &Fingerprint) -> String<64> {
    let mut s = String::new();
    for b in fp {
        let _ = write!(s, "{b:02x}"); // 64 characters exactly
    }
    s
}

/// One appliance that answered: its instance name, an address of it, and its TXT record as
/// read (or why it could not be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement<'a> {
    /// The DNS-SD instance name (`genba` in `genba._genba._tcp.local.`).
    pub instance: &'a str,
    /// An address the announcement gave for it.
    pub address: IpAddr,
    /// What its TXT record says.
    pub service: Result<Service, TxtError>,
}

/// What the device knows without asking: its config's appliance address, ports and pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<'a> {
    /// The appliance's host (IPv4 literal or DNS name).
    pub host: &'a str,
    /// Its MQTT port.
    pub mqtt_port: u16,
    /// Its HTTP port.
    pub http_port: u16,
    /// The fingerprint an announcement must claim, if any.
    pub pin: Option<Fingerprint>,
    /// The device's transport: an announcement must carry its port (the TLS one when `pin`).
    pub transport: Transport,
}

impl<'a> From<&'a DeviceConfig> for Stored<'a> {
    fn from(c: &'a DeviceConfig) -> Self {
        Stored {
            host: &c.host,
            mqtt_port: c.mqtt_port,
            http_port: c.http_port,
            pin: c.ca_sha256,
            transport: c.transport(),
        }
    }
}

/// Why an announcement was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its TXT record is not one this code reads.
    Unreadable(TxtError),
    /// It has no port for the device's transport (its TLS port, when the device pins).
    NoPort,
    /// The device pins a fingerprint and the announcement claims another one.
    PinMismatch,
    /// The device pins a fingerprint and the announcement claims none (no TLS).
    PinMissing,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unreadable(e) => write!(f, "{e}"),
            Refusal::NoPort => f.write_str("it announces no port for this device's transport"),
            Refusal::PinMismatch => f.write_str("its fingerprint is not the one this device pins"),
            Refusal::PinMissing => {
                f.write_str("this device pins a fingerprint and it announces none")
            }
        }
    }
}

/// Whether a device with `stored` may use this announcement.
pub fn judge(found: &Announcement<'_>, stored: &Stored<'_>) -> Result<Service, Refusal> {
    let service = found.service.map_err(Refusal::Unreadable)?;
    match &stored.pin {
        None => {}
        Some(pin) if service.claims(pin) => {}
        Some(_) if service.fingerprint.is_none() && service.ca.is_none() => {
            return Err(Refusal::PinMissing);
        }
        Some(_) => return Err(Refusal::PinMismatch),
    }
    match service.port(stored.transport, stored.pin.is_some()) {
        Some(_) => Ok(service),
        None => Err(Refusal::NoPort),
    }
}

/// The host a device connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    /// An announced address.
    Ip(IpAddr),
    /// The stored host (an IPv4 literal or a DNS name).
    Stored(&'a str),
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Stored(h) => f.write_str(h),
        }
    }
}

/// Why the address was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why<'a> {
    /// This appliance announced itself and qualified.
    Announced {
        /// Its instance name.
        instance: &'a str,
    },
    /// Nothing answered: the stored address.
    NoAnswer,
    /// Every answer was refused (counted by reason): the stored address.
    Refused {
        /// Refused for the pinned fingerprint (mismatch or none announced).
        pin: usize,
        /// Refused for lacking the transport's port.
        port: usize,
        /// Refused for a TXT record this code does not read.
        unreadable: usize,
    },
    /// Several appliances qualified, none at the stored address and no pin to tell them
    /// apart: the stored address.
    Ambiguous {
        /// How many different instances qualified.
        appliances: usize,
    },
}

impl fmt::Display for Why<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Announced { instance } => write!(f, "announced by `{instance}`"),
            Why::NoAnswer => f.write_str("no appliance answered; the stored address"),
            Why::Refused {
                pin,
                port,
                unreadable,
            } => write!(
                f,
                "every answer was ignored ({pin} for the pinned fingerprint, {port} without \
                 the transport's port, {unreadable} unreadable); the stored address"
            ),
            Why::Ambiguous { appliances } => write!(
                f,
                "{appliances} appliances answered and none is at the stored address (pin a \
                 fingerprint to tell them apart); the stored address"
            ),
        }
    }
}

/// Where the device connects, and why there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice<'a> {
    /// The appliance's address.
    pub host: Host<'a>,
    /// MQTT port (announced, or stored when the announcement has none).
    pub mqtt_port: u16,
    /// HTTP port (likewise).
    pub http_port: u16,
    /// Why.
    pub why: Why<'a>,
}

impl Choice<'_> {
    /// Whether the address came from an announcement.
    pub fn announced(&self) -> bool {
        matches!(self.why, Why::Announced { .. })
    }

    /// The port of the device's transport.
    pub fn port(&self, transport: Transport) -> u16 {
        match transport {
            Transport::Mqtt => self.mqtt_port,
            Transport::Http => self.http_port,
        }
    }
}

/// [`choose`], telling `say` why each announcement was ignored and then what was chosen, one
/// line each (`ignoring ...`, `appliance at ...`), so the firmware's log and the simulator say
/// the same.
pub fn choose_and_say<'a>(
    found: &[Announcement<'a>],
    stored: Stored<'a>,
    mut say: impl FnMut(fmt::Arguments<'_>),
) -> Choice<'a> {
    for a in found {
        if let Err(why) = judge(a, &stored) {
            say(format_args!(
                "ignoring `{}` at {}: {why}",
                a.instance, a.address
            ));
        }
    }
    let choice = choose(found, stored);
    say(format_args!(
        "appliance at {} (mqtt {}, http {}): {}",
        choice.host, choice.mqtt_port, choice.http_port, choice.why
    ));
    choice
}

/// Picks the address to use from the announcements `found` (any order; several may be the
/// same instance at different addresses) and the stored config. See the module documentation.
pub fn choose<'a>(found: &[Announcement<'a>], stored: Stored<'a>) -> Choice<'a> {
    let fallback = |why| Choice {
        host: Host::Stored(stored.host),
        mqtt_port: stored.mqtt_port,
        http_port: stored.http_port,
        why,
    };
    let stored_ip: Option<IpAddr> = stored.host.parse().ok();
    let (mut pin, mut port, mut unreadable) = (0, 0, 0);
    let mut first: Option<(&Announcement<'a>, Service)> = None;
    let mut at_stored: Option<(&Announcement<'a>, Service)> = None;
    let mut other_instance = false;
    for a in found {
        match judge(a, &stored) {
            Err(Refusal::Unreadable(_)) => unreadable += 1,
            Err(Refusal::NoPort) => port += 1,
            Err(Refusal::PinMismatch | Refusal::PinMissing) => pin += 1,
            Ok(service) => {
                match first {
                    None => first = Some((a, service)),
                    Some((f, _)) if f.instance != a.instance => other_instance = true,
                    Some(_) => {}
                }
                if at_stored.is_none() && Some(a.address) == stored_ip {
                    at_stored = Some((a, service));
                }
            }
        }
    }
    let Some(first) = first else {
        return fallback(if found.is_empty() {
            Why::NoAnswer
        } else {
            Why::Refused {
                pin,
                port,
                unreadable,
            }
        });
    };
    let take = match (at_stored, other_instance, stored.pin) {
        (Some(a), _, _) => a,
        (None, false, _) | (None, true, Some(_)) => first,
        (None, true, None) => {
            let mut names: heapless::Vec<&str, 16> = heapless::Vec::new();
            for a in found.iter().filter(|a| judge(a, &stored).is_ok()) {
                if !names.contains(&a.instance) {
                    let _ = names.push(a.instance); // 16 are plenty to say "several"
                }
            }
            return fallback(Why::Ambiguous {
                appliances: names.len(),
            });
        }
    };
    let (take, service) = take;
    Choice {
        host: Host::Ip(take.address),
        mqtt_port: service
            .port(Transport::Mqtt, stored.pin.is_some())
            .unwrap_or(stored.mqtt_port),
        http_port: service
            .port(Transport::Http, stored.pin.is_some())
            .unwrap_or(stored.http_port),
        why: Why::Announced {
            instance: take.instance,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Credential;

    const FP: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const OTHER: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

    fn fp(s: &str) -> Fingerprint {
        parse_fingerprint(s).unwrap()
    }

    fn txt(pairs: &[(&str, &str)]) -> Service {
        Service::from_txt(pairs).unwrap()
    }

    fn at(instance: &'static str, ip: [u8; 4], service: Service) -> Announcement<'static> {
        Announcement {
            instance,
            address: IpAddr::from(ip),
            service: Ok(service),
        }
    }

    fn stored(pin: Option<&str>) -> Stored<'static> {
        Stored {
            host: "192.168.1.10",
            mqtt_port: 1883,
            http_port: 8080,
            pin: pin.map(fp),
            transport: Transport::Mqtt,
        }
    }

    fn plain() -> Service {
        txt(&[("v", "1"), ("mqtt", "1884"), ("http", "8081")])
    }

    #[test]
    fn the_appliances_txt_reads_back_the_same() {
        let s = Service {
            mqtt: Some(1883),
            http: Some(80),
            mqtts: Some(8883),
            https: Some(443),
            fingerprint: Some(fp(FP)),
            ca: Some(fp(OTHER)),
        };
        let mut pairs: heapless::Vec<(&str, String<64>), 8> = heapless::Vec::new();
        s.write_txt(|k, v| pairs.push((k, String::try_from(v).unwrap())).unwrap());
        assert_eq!(pairs[0].0, "v");
        assert_eq!(pairs[0].1.as_str(), "1");
        let borrowed: heapless::Vec<(&str, &str), 8> =
            pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(Service::from_txt(&borrowed), Ok(s));
        // A service without TLS writes no TLS keys.
        let mut keys: heapless::Vec<&str, 8> = heapless::Vec::new();
        plain().write_txt(|k, _| keys.push(k).unwrap());
        assert_eq!(keys.as_slice(), ["v", "mqtt", "http"]);
    }

    #[test]
    fn txt_keys_are_case_insensitive_the_first_counts_and_unknown_ones_are_ignored() {
        let s = txt(&[
            ("V", "1"),
            ("MQTT", "1884"),
            ("mqtt", "9999"),
            ("color", "blue"),
            ("FP", &FP.to_ascii_uppercase()),
        ]);
        assert_eq!(s.mqtt, Some(1884));
        assert_eq!(s.http, None);
        assert_eq!(s.fingerprint, Some(fp(FP)));
    }

    #[test]
    fn bad_txt_values_are_refused_with_their_key() {
        let cases: [(&[(&str, &str)], TxtError); 8] = [
            (&[("mqtt", "1883")], TxtError::NoVersion),
            (
                &[("v", "2"), ("mqtt", "1883")],
                TxtError::UnsupportedVersion,
            ),
            (&[("v", "one")], TxtError::BadValue("v")),
            (&[("v", "1"), ("mqtt", "0")], TxtError::BadValue("mqtt")),
            (&[("v", "1"), ("http", "65536")], TxtError::BadValue("http")),
            (
                &[("v", "1"), ("https", "+443")],
                TxtError::BadValue("https"),
            ),
            (&[("v", "1"), ("fp", "abcd")], TxtError::BadValue("fp")),
            (&[("v", "1"), ("ca", &OTHER[1..])], TxtError::BadValue("ca")),
        ];
        for (pairs, want) in cases {
            assert_eq!(Service::from_txt(pairs), Err(want), "{pairs:?}");
        }
        // Nothing claims the pin when the fingerprint is refused.
        assert!(Service::from_txt(&[("v", "1"), ("fp", &FP[..63])]).is_err());
    }

    #[test]
    fn raw_txt_rdata_is_read_and_overruns_are_refused() {
        let mut rdata = [0u8; 64];
        let mut n = 0;
        for s in ["v=1", "mqtt=1883", "flag", "", "http=80"] {
            rdata[n] = s.len() as u8;
            rdata[n + 1..n + 1 + s.len()].copy_from_slice(s.as_bytes());
            n += 1 + s.len();
        }
        let s = Service::from_txt_rdata(&rdata[..n]).unwrap();
        assert_eq!((s.mqtt, s.http), (Some(1883), Some(80)));
        // A length byte beyond the end.
        rdata[n] = 9;
        rdata[n + 1] = b'x';
        assert_eq!(
            Service::from_txt_rdata(&rdata[..n + 2]),
            Err(TxtError::Malformed)
        );
        // A key of ours without a value.
        assert_eq!(
            Service::from_txt_rdata(b"\x03v=1\x04mqtt"),
            Err(TxtError::BadValue("mqtt"))
        );
        assert_eq!(Service::from_txt_rdata(b""), Err(TxtError::NoVersion));
    }

    #[test]
    fn nothing_found_means_the_stored_address() {
        let c = choose(&[], stored(None));
        assert_eq!(c.host, Host::Stored("192.168.1.10"));
        assert_eq!((c.mqtt_port, c.http_port), (1883, 8080));
        assert_eq!(c.why, Why::NoAnswer);
        assert!(!c.announced());
    }

    #[test]
    fn a_moved_appliance_is_found_at_its_new_address_and_ports() {
        let found = [at("genba", [192, 168, 1, 77], plain())];
        let c = choose(&found, stored(None));
        assert_eq!(c.host, Host::Ip(IpAddr::from([192, 168, 1, 77])));
        assert_eq!((c.mqtt_port, c.http_port), (1884, 8081));
        assert_eq!(c.why, Why::Announced { instance: "genba" });
        assert_eq!(c.port(Transport::Http), 8081);
    }

    #[test]
    fn a_pinned_device_speaks_tls_on_the_announced_tls_ports() {
        let both = txt(&[
            ("v", "1"),
            ("mqtt", "1883"),
            ("http", "8080"),
            ("mqtts", "8883"),
            ("https", "8443"),
            ("ca", FP),
        ]);
        let c = choose(&[at("genba", [10, 0, 0, 5], both)], stored(Some(FP)));
        assert!(c.announced());
        assert_eq!((c.mqtt_port, c.http_port), (8883, 8443));
        // The same announcement gives a device without a pin the plain ports.
        let c = choose(&[at("genba", [10, 0, 0, 5], both)], stored(None));
        assert_eq!((c.mqtt_port, c.http_port), (1883, 8080));
        // An appliance without TLS cannot serve a pinned device, whatever it claims.
        let plain_only = txt(&[("v", "1"), ("mqtt", "1883"), ("ca", FP)]);
        let found = [at("genba", [10, 0, 0, 5], plain_only)];
        assert_eq!(judge(&found[0], &stored(Some(FP))), Err(Refusal::NoPort));
        assert_eq!(
            choose(&found, stored(Some(FP))).host,
            Host::Stored("192.168.1.10")
        );
    }

    #[test]
    fn a_pinned_device_ignores_an_announcer_with_another_fingerprint() {
        let rogue = txt(&[("v", "1"), ("mqtts", "8883"), ("fp", OTHER)]);
        let found = [at("genba", [192, 168, 1, 66], rogue)];
        let c = choose(&found, stored(Some(FP)));
        assert_eq!(c.host, Host::Stored("192.168.1.10"));
        assert_eq!(
            c.why,
            Why::Refused {
                pin: 1,
                port: 0,
                unreadable: 0
            }
        );
        assert_eq!(
            judge(&found[0], &stored(Some(FP))),
            Err(Refusal::PinMismatch)
        );
        // ... and one that announces no fingerprint at all.
        let no_pin = txt(&[("v", "1"), ("mqtt", "1883"), ("mqtts", "8883")]);
        let found = [at("genba", [192, 168, 1, 66], no_pin)];
        assert_eq!(
            judge(&found[0], &stored(Some(FP))),
            Err(Refusal::PinMissing)
        );
        assert_eq!(
            choose(&found, stored(Some(FP))).why,
            Why::Refused {
                pin: 1,
                port: 0,
                unreadable: 0
            }
        );
    }

    #[test]
    fn a_pinned_device_takes_the_announcer_with_its_fingerprint_among_rogues() {
        let rogue = txt(&[("v", "1"), ("mqtts", "8883"), ("fp", OTHER)]);
        let real = txt(&[("v", "1"), ("mqtt", "1883"), ("mqtts", "8883"), ("fp", FP)]);
        let found = [
            at("genba", [192, 168, 1, 66], rogue),
            at("genba-2", [192, 168, 1, 20], real),
        ];
        let c = choose(&found, stored(Some(FP)));
        assert_eq!(c.host, Host::Ip(IpAddr::from([192, 168, 1, 20])));
        assert_eq!(
            c.why,
            Why::Announced {
                instance: "genba-2"
            }
        );
        // The pin may also be the CA's fingerprint.
        let by_ca = txt(&[("v", "1"), ("mqtts", "8883"), ("fp", OTHER), ("ca", FP)]);
        let c = choose(&[at("genba", [10, 0, 0, 5], by_ca)], stored(Some(FP)));
        assert!(c.announced());
    }

    #[test]
    fn choose_and_say_says_each_ignored_announcement_and_the_choice() {
        let rogue = txt(&[("v", "1"), ("mqtts", "8883"), ("fp", OTHER)]);
        let real = txt(&[("v", "1"), ("mqtts", "8883"), ("https", "8443"), ("fp", FP)]);
        let found = [
            at("rogue", [192, 168, 1, 66], rogue),
            at("genba", [192, 168, 1, 20], real),
        ];
        let mut lines: std::vec::Vec<std::string::String> = std::vec::Vec::new();
        let c = choose_and_say(&found, stored(Some(FP)), |l| {
            lines.push(std::format!("{l}"))
        });
        assert_eq!(c, choose(&found, stored(Some(FP))));
        assert_eq!(
            lines,
            [
                "ignoring `rogue` at 192.168.1.66: its fingerprint is not the one this device pins",
                "appliance at 192.168.1.20 (mqtt 8883, http 8443): announced by `genba`",
            ]
        );
    }

    #[test]
    fn an_announcement_without_the_transports_port_is_ignored() {
        let http_only = txt(&[("v", "1"), ("http", "80")]);
        let found = [at("genba", [192, 168, 1, 77], http_only)];
        let c = choose(&found, stored(None));
        assert_eq!(
            c.why,
            Why::Refused {
                pin: 0,
                port: 1,
                unreadable: 0
            }
        );
        let http_device = Stored {
            transport: Transport::Http,
            ..stored(None)
        };
        let c = choose(&found, http_device);
        assert!(c.announced());
        // The MQTT port it does not announce stays the stored one.
        assert_eq!((c.mqtt_port, c.http_port), (1883, 80));
    }

    #[test]
    fn an_unreadable_announcement_is_counted_and_ignored() {
        let bad = Announcement {
            instance: "future",
            address: IpAddr::from([192, 168, 1, 50]),
            service: Service::from_txt(&[("v", "2"), ("mqtt", "1883")]),
        };
        assert_eq!(
            judge(&bad, &stored(None)),
            Err(Refusal::Unreadable(TxtError::UnsupportedVersion))
        );
        let c = choose(&[bad], stored(None));
        assert_eq!(
            c.why,
            Why::Refused {
                pin: 0,
                port: 0,
                unreadable: 1
            }
        );
        assert!(c.why.to_string().contains("1 unreadable"));
        // Next to a readable one, it changes nothing.
        let c = choose(
            &[bad, at("genba", [192, 168, 1, 77], plain())],
            stored(None),
        );
        assert_eq!(c.why, Why::Announced { instance: "genba" });
    }

    #[test]
    fn several_unpinned_appliances_are_ambiguous_unless_one_is_at_the_stored_address() {
        let found = [
            at("shop", [192, 168, 1, 20], plain()),
            at("shop", [192, 168, 1, 21], plain()),
            at("office", [192, 168, 1, 30], plain()),
        ];
        let c = choose(&found, stored(None));
        assert_eq!(c.why, Why::Ambiguous { appliances: 2 });
        assert_eq!(c.host, Host::Stored("192.168.1.10"));
        let home = Stored {
            host: "192.168.1.30",
            ..stored(None)
        };
        let c = choose(&found, home);
        assert_eq!(c.why, Why::Announced { instance: "office" });
        assert_eq!(c.host, Host::Ip(IpAddr::from([192, 168, 1, 30])));
        // One appliance at two addresses is not ambiguous.
        let c = choose(&found[..2], stored(None));
        assert_eq!(c.why, Why::Announced { instance: "shop" });
    }

    #[test]
    fn the_stored_config_gives_host_ports_pin_and_transport() {
        let mut config = DeviceConfig::new(
            "fridge-1",
            "shop",
            "",
            "genba-pi",
            Credential::api_key("k").unwrap(),
        )
        .unwrap();
        config.ca_sha256 = Some(fp(FP));
        let s = Stored::from(&config);
        assert_eq!(s.host, "genba-pi");
        assert_eq!((s.mqtt_port, s.http_port), (1883, 8080));
        assert_eq!(s.pin, Some(fp(FP)));
        assert_eq!(s.transport, Transport::Http);
        // A host name never equals an announced address: the announcement decides.
        let real = txt(&[("v", "1"), ("https", "443"), ("ca", FP)]);
        let c = choose(&[at("genba", [10, 1, 2, 3], real)], s);
        assert_eq!(c.host.to_string(), "10.1.2.3");
    }

    #[test]
    fn fingerprints_print_and_parse_as_hex() {
        assert_eq!(hex(&fp(FP)).as_str(), FP);
        assert_eq!(parse_fingerprint(&FP.to_ascii_uppercase()), Some(fp(FP)));
        assert_eq!(parse_fingerprint(&FP.replace('a', "g")), None);
        assert_eq!(parse_fingerprint(""), None);
    }

    #[test]
    fn the_reasons_read_as_sentences() {
        assert_eq!(
            Why::Announced { instance: "genba" }.to_string(),
            "announced by `genba`"
        );
        assert!(Why::Refused {
            pin: 1,
            port: 0,
            unreadable: 0
        }
        .to_string()
        .contains("1 for the pinned fingerprint"));
        assert!(Why::Ambiguous { appliances: 2 }
            .to_string()
            .contains("2 appliances"));
    }
}
