//! A generic webhook: the messages as one JSON POST, signed with HMAC-SHA256 over the
//! timestamp and the body, as the well-known signed-webhook schemes do (docs/sinks.md shows
//! how a receiver checks it).
//!
//! Headers: `X-Genba-Delivery` (the same for every retry of a batch: receivers drop
//! repeats), and with a signing secret `X-Genba-Timestamp: UNIX_SECONDS` and
//! `X-Genba-Signature: HEX(HMAC_SHA256(secret, "{timestamp}.{body}"))`: the scheme devices
//! use towards Genba (genba_telemetry::signing), so one verifier serves both.

use std::time::Duration;

use base64::Engine as _;
use genba_config::sinks::Template;
use genba_store::JournalEntry;
use genba_telemetry::signing::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use serde_json::{json, Value};

use crate::outcome::Outcome;
use crate::template::render;

pub struct Webhook {
    /// The sink's name, sent in the body.
    pub name: String,
    pub url: String,
    pub signing_secret: Option<String>,
    pub template: Option<Template>,
    pub max_batch: usize,
}

/// Largest body a batch may make; a bigger backlog goes in several posts.
const MAX_BODY: usize = 256 * 1024;

impl Webhook {
    fn message(&self, e: &JournalEntry) -> Value {
        let mut m = json!({
            "id": e.id,
            "topic": e.topic,
            "received_at": chrono::DateTime::from_timestamp_millis(e.received_at_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "qos": e.qos,
            "retain": e.retain,
            "text": render(self.template.as_ref(), e),
        });
        match std::str::from_utf8(&e.payload) {
            // A JSON payload is sent as JSON, any other text as a string.
            Ok(text) => {
                m["payload"] = serde_json::from_str::<Value>(text)
                    .unwrap_or_else(|_| Value::String(text.to_owned()))
            }
            Err(_) => {
                m["payload_base64"] =
                    Value::String(base64::engine::general_purpose::STANDARD.encode(&e.payload))
            }
        }
        m
    }

    /// How many of `entries` go in one POST: at most `max_batch` and about [`MAX_BODY`].
    pub fn fit(&self, entries: &[JournalEntry]) -> usize {
        let mut used = 0;
        for (i, e) in entries.iter().take(self.max_batch).enumerate() {
            used += e.payload.len() * 2 + e.topic.len() + 200;
            if used > MAX_BODY && i > 0 {
                return i;
            }
        }
        entries.len().min(self.max_batch).max(1)
    }

    pub fn body(&self, batch: &[JournalEntry]) -> Vec<u8> {
        let body = json!({
            "sink": self.name,
            "count": batch.len(),
            "messages": batch.iter().map(|e| self.message(e)).collect::<Vec<_>>(),
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }

    pub async fn post(
        &self,
        client: &reqwest::Client,
        batch: &[JournalEntry],
        timeout: Duration,
    ) -> Outcome {
        let body = self.body(batch);
        let first = batch.first().map_or(0, |e| e.id);
        let last = batch.last().map_or(0, |e| e.id);
        let mut request = client
            .post(&self.url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Genba-Delivery", format!("{}-{first}-{last}", self.name));
        let mut secrets = vec![self.url.as_str()];
        if let Some(secret) = &self.signing_secret {
            let timestamp = chrono::Utc::now().timestamp();
            let timestamp = timestamp.to_string();
            request = request
                .header(SIGNATURE_HEADER, sign(secret, &timestamp, &body))
                .header(TIMESTAMP_HEADER, timestamp);
            secrets.push(secret);
        }
        crate::http::send(request.body(body), &secrets).await.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::entry;

    #[test]
    fn json_payloads_stay_json_and_binary_goes_as_base64() {
        let hook = Webhook {
            name: "ops".into(),
            url: "https://example.com/hook".into(),
            signing_secret: None,
            template: None,
            max_batch: 100,
        };
        let body: Value = serde_json::from_slice(&hook.body(&[
            entry(1, "a/b", br#"{"celsius": 4.5}"#),
            entry(2, "a/c", b"plain text"),
            entry(3, "a/d", &[0xff, 0xfe]),
        ]))
        .unwrap();
        assert_eq!(body["sink"], "ops");
        assert_eq!(body["count"], 3);
        assert_eq!(body["messages"][0]["payload"]["celsius"], 4.5);
        assert_eq!(body["messages"][1]["payload"], "plain text");
        assert_eq!(body["messages"][2]["payload_base64"], "//4=");
        assert_eq!(
            body["messages"][0]["received_at"],
            "2025-11-24T16:00:00.000Z"
        );
    }
}
