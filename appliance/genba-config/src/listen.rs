//! Listen addresses: how they are written (config and `--mqtt/--http`) and what a failed bind
//! tells the operator.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Deserializer};

/// `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT` (127.0.0.1). Port 0 takes any free port.
pub fn parse(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = text
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    Err(format!(
        "{text:?} is not an address to listen on: write IP:PORT, e.g. 127.0.0.1:8080 (this \
         machine only), 0.0.0.0:8080 (every network), [::]:8080 or localhost:8080; port 0 takes \
         any free port"
    ))
}

/// `deserialize_with` for a listen address.
pub fn addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// `deserialize_with` for an optional listen address (with `default`).
pub fn opt_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    addr(d).map(Some)
}

/// A listener that could not be opened, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({key}): {}", hint(.cause, .key))]
pub struct BindError {
    /// The config key of the listener, e.g. `http.listen`.
    pub key: &'static str,
    pub addr: SocketAddr,
    pub cause: std::io::Error,
}

impl BindError {
    pub fn new(key: &'static str, addr: SocketAddr, cause: std::io::Error) -> BindError {
        BindError { key, addr, cause }
    }
}

fn hint(cause: &std::io::Error, key: &str) -> String {
    let change = match key {
        "http.listen" => "--http ADDR or [http] listen".to_owned(),
        "mqtt.listen" => "--mqtt ADDR or [mqtt] listen".to_owned(),
        other => match other.split_once('.') {
            Some((section, field)) => format!("[{section}] {field}"),
            None => other.to_owned(),
        },
    };
    match cause.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "address in use: another program (or another genba) already listens there; choose \
             another port \
             with {change} (port 0 takes any free one)"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE (the systemd units grant it); \
             or choose a port above 1024 with {change}"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "address not available: no network interface of this machine has it; use 0.0.0.0 for every \
             network or 127.0.0.1 for this machine only ({change})"
        ),
        _ => format!("{cause} ({change})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ip_port_or_localhost_and_anything_else_says_how_to_write_one() {
        assert_eq!(
            parse("127.0.0.1:8080"),
            Ok("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(parse("[::]:1883"), Ok("[::]:1883".parse().unwrap()));
        assert_eq!(
            parse("localhost:8080"),
            Ok("127.0.0.1:8080".parse().unwrap())
        );
        let e = parse("genba.local:80").unwrap_err();
        assert!(
            e.contains("0.0.0.0:8080") && e.contains("genba.local:80"),
            "{e}"
        );
        assert!(parse("localhost").is_err());
    }

    #[test]
    fn a_port_in_use_names_the_flag_and_the_key_once() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let cause = std::net::TcpListener::bind(addr).unwrap_err();
        let text = BindError::new("http.listen", addr, cause).to_string();
        assert!(
            text.contains("--http ADDR or [http] listen") && text.contains("port 0"),
            "{text}"
        );
        assert_eq!(text.matches("in use").count(), 1, "said once: {text}");
        let cause = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let text = BindError::new("mqtt.ws_listen", addr, cause).to_string();
        assert!(text.contains("[mqtt] ws_listen"), "{text}");
    }
}
