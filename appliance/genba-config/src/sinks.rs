//! `[[sinks]]`: where journal messages are delivered (Slack, a signed webhook, LINE, e-mail).
//! The delivery loop shared by every kind is in the `genba-sinks` crate; this module holds
//! what the operator writes and checks it once at load.
//!
//! Secret parts (URLs with tokens, access tokens, SMTP passwords) are in the secrets file
//! under `[sinks.NAME]`; Slack webhooks can also stay under `[[slack.webhooks]]` with their URL
//! under `[slack]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::topic;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// A Slack Incoming Webhook (`url` in the secrets file).
    Slack,
    /// A JSON POST signed with HMAC-SHA256 (`url` in the config or the secrets file,
    /// `signing_secret` in the secrets file).
    Webhook,
    /// LINE Messaging API push messages to `to` (`channel_access_token` in the secrets file).
    Line,
    /// E-mail over SMTP to `to` (`[sinks.smtp]`; `username`/`password` in the secrets file).
    Email,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Slack => "slack",
            SinkKind::Webhook => "webhook",
            SinkKind::Line => "line",
            SinkKind::Email => "email",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Letters, digits, `-` and `_`; unique among sinks and Slack webhooks.
    pub name: String,
    pub kind: SinkKind,
    /// MQTT topic filters (`+`, `#`) whose messages go to this sink.
    pub filters: Vec<String>,
    /// The text of one message: `{topic}`, `{topic.N}` (level N, from 0), `{payload}`,
    /// `{time}`, `{id}`. Default: the topic, the time and the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,
    /// Deliveries per second (default by kind: Slack 1, webhook 5, LINE 1, e-mail 1/60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<f64>,
    /// Deliveries allowed at once before the rate applies (default: Slack 3, webhook 10,
    /// LINE 3, e-mail 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Most messages folded into one delivery when a backlog builds (default: Slack 20,
    /// webhook 100, LINE 5, e-mail 200: a digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<usize>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Longest wait between retries of a failing delivery.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: u64,
    /// Webhook: the URL when it is not secret (else `url` under `[sinks.NAME]` in the secrets
    /// file). LINE: the push endpoint (default `https://api.line.me/v2/bot/message/push`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// LINE: user, group or room ids. E-mail: recipient addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// E-mail: the SMTP server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpConfig>,
}

fn default_timeout() -> u64 {
    10
}
fn default_max_backoff() -> u64 {
    300
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Default by `security`: 465 (tls), 587 (starttls), 25 (none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default)]
    pub security: SmtpSecurity,
    /// The sender address, e.g. `Genba <genba@example.com>`.
    pub from: String,
    /// Subject of the mails; `{count}` becomes the number of messages in it.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// A PEM file with the CA certificate of a private mail server, trusted beside the
    /// built-in roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_subject() -> String {
    "Genba: {count} message(s)".into()
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// Plain connection upgraded with STARTTLS, refused when the server cannot (port 587).
    #[default]
    Starttls,
    /// No encryption: only for a relay on the same machine or a test server.
    None,
}

impl SmtpConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            SmtpSecurity::Tls => 465,
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::None => 25,
        })
    }
}

/// A message template, checked when the config is read: `{topic}`, `{topic.N}`, `{payload}`,
/// `{time}`, `{id}`; `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

/// One part of a [`Template`].
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Topic,
    TopicLevel(usize),
    Payload,
    Time,
    Id,
}

impl Template {
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }
}

impl TryFrom<String> for Template {
    type Error = String;
    fn try_from(source: String) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    let piece = match name.as_str() {
                        "topic" => Piece::Topic,
                        "payload" => Piece::Payload,
                        "time" => Piece::Time,
                        "id" => Piece::Id,
                        other => match other.strip_prefix("topic.").map(str::parse::<usize>) {
                            Some(Ok(n)) => Piece::TopicLevel(n),
                            _ => {
                                return Err(format!(
                                "unknown placeholder {{{other}}}: use {{topic}}, {{topic.N}}, {{payload}}, {{time}} or {{id}}"
                            ))
                            }
                        },
                    };
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(piece);
                }
                '}' => return Err("a lone `}`: write `}}` for a brace".into()),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template { source, pieces })
    }
}

impl From<Template> for String {
    fn from(t: Template) -> String {
        t.source
    }
}

/// Secret parts of one sink, under `[sinks.NAME]` in the secrets file.
#[derive(Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct SinkSecrets {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Webhook: the HMAC-SHA256 key of the `X-Genba-Signature` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    /// LINE: the channel access token (long-lived or v2.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_access_token: Option<String>,
    /// E-mail: SMTP AUTH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl std::fmt::Debug for SinkSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| v.as_ref().map(|_| "<set>");
        f.debug_struct("SinkSecrets")
            .field("url", &set(&self.url))
            .field("signing_secret", &set(&self.signing_secret))
            .field("channel_access_token", &set(&self.channel_access_token))
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .finish()
    }
}

impl SinkConfig {
    /// The sink's name in the store (`sinks` table, `genba status`): `KIND:NAME`.
    pub fn store_name(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.name)
    }

    pub fn rate(&self) -> f64 {
        self.rate_per_sec.unwrap_or(match self.kind {
            SinkKind::Slack | SinkKind::Line => 1.0,
            SinkKind::Webhook => 5.0,
            SinkKind::Email => 1.0 / 60.0,
        })
    }

    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(match self.kind {
            SinkKind::Slack | SinkKind::Line => 3,
            SinkKind::Webhook => 10,
            SinkKind::Email => 1,
        })
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch.unwrap_or(match self.kind {
            SinkKind::Slack => 20,
            SinkKind::Webhook => 100,
            SinkKind::Line => 5,
            SinkKind::Email => 200,
        })
    }

    /// Checks what serde cannot: returns the failing key (below `sinks[i]`) and why.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, why: &str| Err((key.to_owned(), why.to_owned()));
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("name", "use letters, digits, - and _");
        }
        if self.filters.is_empty() {
            return bad("filters", "needs at least one topic filter");
        }
        for (j, f) in self.filters.iter().enumerate() {
            topic::validate_filter(f).map_err(|m| (format!("filters[{j}]"), m.to_string()))?;
        }
        if !(self.rate() > 0.0 && self.rate() <= 10.0) {
            return bad("rate_per_sec", "must be in (0, 10]");
        }
        if self.burst() == 0 {
            return bad("burst", "must be at least 1");
        }
        let most = if self.kind == SinkKind::Line { 5 } else { 1000 };
        if !(1..=most).contains(&self.max_batch()) {
            return Err(("max_batch".into(), format!("must be 1..={most}")));
        }
        if self.timeout_secs == 0 || self.max_backoff_secs == 0 {
            return bad(
                "timeout_secs",
                "timeout_secs and max_backoff_secs must be at least 1",
            );
        }
        if let Some(url) = &self.url {
            if !matches!(self.kind, SinkKind::Webhook | SinkKind::Line) {
                return bad(
                    "url",
                    "only webhook and line sinks take a url here (a Slack URL is a secret)",
                );
            }
            crate::secrets::check_url(url).map_err(|why| ("url".to_owned(), why))?;
        }
        match self.kind {
            SinkKind::Line | SinkKind::Email if self.to.is_empty() => {
                return bad(
                    "to",
                    if self.kind == SinkKind::Line {
                        "needs at least one user, group or room id"
                    } else {
                        "needs at least one recipient address"
                    },
                );
            }
            SinkKind::Slack | SinkKind::Webhook if !self.to.is_empty() => {
                return bad("to", "only line and email sinks have recipients");
            }
            _ => {}
        }
        if self.kind == SinkKind::Line {
            for (j, to) in self.to.iter().enumerate() {
                let ok = to.len() == 33
                    && matches!(to.as_bytes()[0], b'U' | b'C' | b'R')
                    && to[1..].bytes().all(|b| b.is_ascii_hexdigit());
                if !ok {
                    return Err((
                        format!("to[{j}]"),
                        "a LINE user, group or room id: U, C or R and 32 hex digits".into(),
                    ));
                }
            }
        }
        if self.kind == SinkKind::Email {
            for (j, to) in self.to.iter().enumerate() {
                if !looks_like_address(to) {
                    return Err((format!("to[{j}]"), "not an e-mail address".into()));
                }
            }
        }
        match (&self.smtp, self.kind) {
            (None, SinkKind::Email) => return bad("smtp", "an email sink needs [sinks.smtp]"),
            (Some(_), kind) if kind != SinkKind::Email => {
                return bad("smtp", "only email sinks have an smtp server")
            }
            (Some(smtp), _) => {
                if smtp.host.trim().is_empty() || smtp.host.contains(char::is_whitespace) {
                    return bad("smtp.host", "a host name or address");
                }
                if !looks_like_address(&smtp.from) {
                    return bad("smtp.from", "not an e-mail address");
                }
                if smtp.port == Some(0) {
                    return bad("smtp.port", "1..=65535");
                }
            }
            (None, _) => {}
        }
        Ok(())
    }
}

/// `name@domain` or `Name <name@domain>`: the full check is the mail library's at send time.
fn looks_like_address(s: &str) -> bool {
    let addr = match (s.find('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => &s[a + 1..b],
        _ => s,
    };
    let mut parts = addr.split('@');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(local), Some(domain), None)
            if !local.is_empty() && domain.contains('.') && !addr.contains(char::is_whitespace)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(toml_text: &str) -> Result<SinkConfig, String> {
        toml::from_str::<SinkConfig>(toml_text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn templates_parse_placeholders_and_refuse_unknown_ones() {
        let t = Template::try_from("{topic.1} {{x}}: {payload}".to_owned()).unwrap();
        assert_eq!(
            t.pieces(),
            [
                Piece::TopicLevel(1),
                Piece::Text(" {x}: ".into()),
                Piece::Payload
            ]
        );
        let e = Template::try_from("{device}".to_owned()).unwrap_err();
        assert!(e.contains("{device}"), "{e}");
        assert!(Template::try_from("a } b".to_owned()).is_err());
    }

    #[test]
    fn each_kind_needs_its_own_settings_and_the_error_names_the_key() {
        let line = sink("name = \"l\"\nkind = \"line\"\nfilters = [\"a/#\"]\n").unwrap();
        assert_eq!(line.check().unwrap_err().0, "to");
        let line =
            sink("name = \"l\"\nkind = \"line\"\nfilters = [\"a/#\"]\nto = [\"Uxyz\"]\n").unwrap();
        assert_eq!(line.check().unwrap_err().0, "to[0]");
        let email = sink(
            "name = \"m\"\nkind = \"email\"\nfilters = [\"a/#\"]\nto = [\"ops@example.com\"]\n",
        )
        .unwrap();
        assert_eq!(email.check().unwrap_err().0, "smtp");
        let email = sink(
            "name = \"m\"\nkind = \"email\"\nfilters = [\"a/#\"]\nto = [\"ops@example.com\"]\n\
             [smtp]\nhost = \"mail.example.com\"\nfrom = \"Genba <genba@example.com>\"\n",
        )
        .unwrap();
        email.check().unwrap();
        assert_eq!(email.smtp.as_ref().unwrap().port(), 587);
        assert_eq!(email.store_name(), "email:m");
        let hook = sink(
            "name = \"w\"\nkind = \"webhook\"\nfilters = [\"a/#\"]\nurl = \"ftp://example.com/x\"\n",
        )
        .unwrap();
        assert_eq!(hook.check().unwrap_err().0, "url");
        let slack =
            sink("name = \"s\"\nkind = \"slack\"\nfilters = [\"a/#\"]\nmax_batch = 0\n").unwrap();
        assert_eq!(slack.check().unwrap_err().0, "max_batch");
        let e = sink("name = \"x\"\nkind = \"fax\"\nfilters = [\"a\"]\n").unwrap_err();
        assert!(e.contains("fax"), "{e}");
    }
}
