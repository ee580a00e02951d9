//! `[upstream]`: forward chosen journal topics to an existing MQTT cluster (EMQX, HiveMQ,
//! VerneMQ, Mosquitto, AWS IoT Core...) under a per-site prefix, and take commands for this
//! site's devices back down. docs/fleet.md describes the whole.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::topic;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The cluster's host name; unset: no upstream bridge.
    pub host: Option<String>,
    /// Default 8883 with TLS, 1883 without.
    pub port: Option<u16>,
    /// TLS to the cluster (default on). `false` only for a broker on a trusted network.
    pub tls: bool,
    /// This site's name: forwarded topics become `{prefix}/{topic}` with the prefix
    /// `sites/{site}`, and commands are taken from `sites/{site}/devices/+/commands`.
    pub site: String,
    /// MQTT client id (default `genba-{site}`); the command subscription's session lives
    /// under `{client_id}-commands`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// Journal topics to forward (MQTT filters).
    pub filters: Vec<String>,
    /// Take commands for this site's devices from the cluster (QoS 1, journaled once).
    pub commands: bool,
    /// PEM file of the CA that signed the cluster's certificate (default: the built-in
    /// public roots).
    pub ca_file: Option<PathBuf>,
    /// PEM files of this site's client certificate and key (mutual TLS, as AWS IoT Core and
    /// most clusters ask).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Messages published (at most [`UpstreamConfig::IN_FLIGHT`] unacknowledged at a time)
    /// before the cursor moves; also what a crash may send twice.
    pub max_batch: usize,
    pub keep_alive_secs: u64,
    pub timeout_secs: u64,
    pub max_backoff_secs: u64,
}

impl UpstreamConfig {
    /// Unacknowledged QoS 1 messages on the link at a time (rumqttc's own default): a batch
    /// is a stream through this window, so a big `max_batch` never floods a cluster.
    pub const IN_FLIGHT: u16 = 100;
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            host: None,
            port: None,
            tls: true,
            site: String::new(),
            client_id: None,
            username: None,
            filters: vec![
                "alarms/#".into(),
                "devices/+/telemetry".into(),
                "notify/#".into(),
            ],
            commands: true,
            ca_file: None,
            client_cert: None,
            client_key: None,
            max_batch: 1000,
            keep_alive_secs: 30,
            timeout_secs: 20,
            max_backoff_secs: 60,
        }
    }
}

impl UpstreamConfig {
    pub fn enabled(&self) -> bool {
        self.host.is_some()
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.tls { 8883 } else { 1883 })
    }

    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("genba-{}", self.site))
    }

    /// `sites/{site}`: what forwarded topics start with.
    pub fn prefix(&self) -> String {
        format!("sites/{}", self.site)
    }

    /// The sink's name in the store.
    pub fn store_name(&self) -> String {
        format!("upstream:{}", self.site)
    }

    /// Checks what serde cannot: the failing key (below `upstream`) and why.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, why: &str| Err((key.to_owned(), why.to_owned()));
        let Some(host) = &self.host else {
            return Ok(());
        };
        if host.trim().is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
            return bad("host", "a host name or address, without a scheme or port");
        }
        if self.site.is_empty()
            || !self
                .site
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("site", "this site's name: letters, digits, - and _");
        }
        if self.filters.is_empty() && !self.commands {
            return bad(
                "filters",
                "nothing to forward and no commands: remove [upstream]",
            );
        }
        for (i, f) in self.filters.iter().enumerate() {
            topic::validate_filter(f).map_err(|m| (format!("filters[{i}]"), m.to_string()))?;
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return bad("client_cert", "client_cert and client_key go together");
        }
        if !self.tls && (self.client_cert.is_some() || self.ca_file.is_some()) {
            return bad("tls", "certificates are set but tls = false");
        }
        if !(1..=1000).contains(&self.max_batch) {
            return bad("max_batch", "must be 1..=1000");
        }
        if self.keep_alive_secs < 5 || self.timeout_secs == 0 || self.max_backoff_secs == 0 {
            return bad(
                "keep_alive_secs",
                "keep_alive_secs at least 5; timeout_secs and max_backoff_secs at least 1",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_needs_a_site_and_valid_filters_and_names_the_key() {
        let mut u = UpstreamConfig::default();
        u.check().unwrap();
        u.host = Some("central.example.com".into());
        assert_eq!(u.check().unwrap_err().0, "site");
        u.site = "osaka-1".into();
        u.check().unwrap();
        assert_eq!(u.prefix(), "sites/osaka-1");
        assert_eq!(u.client_id(), "genba-osaka-1");
        assert_eq!(u.port(), 8883);
        u.filters.push("a/#/b".into());
        assert_eq!(u.check().unwrap_err().0, "filters[3]");
        u.filters.pop();
        u.client_cert = Some("site.crt".into());
        assert_eq!(u.check().unwrap_err().0, "client_cert");
        u.host = Some("mqtts://central:8883".into());
        assert_eq!(u.check().unwrap_err().0, "host");
    }
}
