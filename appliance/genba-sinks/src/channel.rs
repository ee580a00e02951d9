//! A configured sink's way out: Slack, a signed webhook, LINE or e-mail, built from
//! `[[sinks]]` (or `[[slack.webhooks]]`) and the secrets file.

use std::time::Duration;

use genba_config::{Secrets, SinkConfig, SinkKind};
use genba_store::JournalEntry;

use crate::email::Email;
use crate::line::{self, Line};
use crate::outcome::Outcome;
use crate::run::Deliver;
use crate::slack::Slack;
use crate::webhook::Webhook;
use crate::SinkError;

pub struct Channel {
    way: Way,
    client: reqwest::Client,
    timeout: Duration,
}

enum Way {
    Slack(Slack),
    Webhook(Webhook),
    Line(Line),
    Email(Box<Email>),
}

impl Channel {
    /// Builds the sink's channel; a missing secret or a bad address is an error that names
    /// the key to add or fix.
    pub fn new(sink: &SinkConfig, secrets: &Secrets) -> Result<Channel, SinkError> {
        let own = secrets.sinks.get(&sink.name).cloned().unwrap_or_default();
        let missing = |key: &str, example: &str| SinkError::NoSecret {
            sink: sink.store_name(),
            hint: format!("add `{key} = \"{example}\"` under [sinks.{}]", sink.name),
        };
        let timeout = Duration::from_secs(sink.timeout_secs.max(1));
        let way = match sink.kind {
            SinkKind::Slack => {
                let url = own
                    .url
                    .or_else(|| secrets.slack.get(&sink.name).cloned())
                    .ok_or_else(|| SinkError::NoSecret {
                        sink: sink.store_name(),
                        hint: format!(
                            "add `{} = \"https://hooks.slack.com/...\"` under [slack]",
                            sink.name
                        ),
                    })?;
                Way::Slack(Slack {
                    url,
                    template: sink.template.clone(),
                    max_batch: sink.max_batch(),
                })
            }
            SinkKind::Webhook => Way::Webhook(Webhook {
                name: sink.name.clone(),
                url: own
                    .url
                    .or_else(|| sink.url.clone())
                    .ok_or_else(|| missing("url", "https://..."))?,
                signing_secret: own.signing_secret,
                template: sink.template.clone(),
                max_batch: sink.max_batch(),
            }),
            SinkKind::Line => Way::Line(Line {
                name: sink.name.clone(),
                url: sink.url.clone().unwrap_or_else(|| line::DEFAULT_URL.into()),
                token: own
                    .channel_access_token
                    .ok_or_else(|| missing("channel_access_token", "..."))?,
                to: sink.to.clone(),
                template: sink.template.clone(),
                max_batch: sink.max_batch(),
            }),
            SinkKind::Email => {
                let smtp = sink.smtp.as_ref().ok_or_else(|| SinkError::Email {
                    sink: sink.store_name(),
                    message: "no [sinks.smtp] server".into(),
                })?;
                let credentials = match (own.username, own.password) {
                    (Some(u), Some(p)) => Some((u, p)),
                    (None, None) => None,
                    (Some(_), None) => return Err(missing("password", "...")),
                    (None, Some(_)) => return Err(missing("username", "...")),
                };
                let email = Email::new(
                    smtp,
                    &sink.to,
                    sink.template.clone(),
                    sink.max_batch(),
                    timeout,
                    credentials,
                )
                .map_err(|e| SinkError::Email {
                    sink: sink.store_name(),
                    message: e.to_string(),
                })?;
                Way::Email(Box::new(email))
            }
        };
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| SinkError::Client {
                sink: sink.store_name(),
                message: e.to_string(),
            })?;
        Ok(Channel {
            way,
            client,
            timeout,
        })
    }
}

impl Deliver for Channel {
    fn fit(&self, wanted: &[JournalEntry]) -> usize {
        match &self.way {
            Way::Slack(s) => s.fit(wanted),
            Way::Webhook(w) => w.fit(wanted),
            Way::Line(l) => l.fit(wanted),
            Way::Email(e) => e.fit(wanted),
        }
    }

    /// Webhook and LINE deliveries carry a key made from the batch (X-Genba-Delivery,
    /// X-Line-Retry-Key): a retry must be the same batch. A Slack post or a mail has no such
    /// key, so a retry takes what arrived meanwhile too (one digest after an outage).
    fn retries_same_batch(&self) -> bool {
        matches!(self.way, Way::Webhook(_) | Way::Line(_))
    }

    async fn deliver(&mut self, batch: &[JournalEntry]) -> Outcome {
        match &self.way {
            Way::Slack(s) => s.post(&self.client, batch, self.timeout).await,
            Way::Webhook(w) => w.post(&self.client, batch, self.timeout).await,
            Way::Line(l) => l.push(&self.client, batch, self.timeout).await,
            Way::Email(e) => e.send(batch).await,
        }
    }
}

/// The message `genba sinks test` sends: journal id 0, topic `genba/test`.
pub fn test_message(sink: &str) -> JournalEntry {
    let now = chrono::Utc::now().timestamp_millis();
    JournalEntry {
        id: 0,
        received_at_ms: now,
        source: "genba".into(),
        topic: "genba/test".into(),
        payload: format!("Test message from genba to sink {sink}: delivery works.").into_bytes(),
        qos: 1,
        retain: false,
    }
}
