//! LINE Messaging API push messages (LINE Notify closed on 2025-03-31; shared/refs: LINE).
//!
//! `POST /v2/bot/message/push` with the channel access token, one request per recipient,
//! 1-5 text messages per request. Every request carries an `X-Line-Retry-Key` made from the
//! batch, so a retry after a lost answer is answered 409 (already accepted) instead of
//! sending twice: 409 counts as delivered.

use std::time::Duration;

use genba_config::sinks::Template;
use genba_store::JournalEntry;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::outcome::Outcome;
use crate::template::{render, truncate};

pub const DEFAULT_URL: &str = "https://api.line.me/v2/bot/message/push";
/// LINE's limit per text message.
const MAX_TEXT: usize = 5000;

pub struct Line {
    pub name: String,
    pub url: String,
    pub token: String,
    pub to: Vec<String>,
    pub template: Option<Template>,
    pub max_batch: usize,
}

impl Line {
    pub fn fit(&self, entries: &[JournalEntry]) -> usize {
        entries.len().min(self.max_batch.clamp(1, 5)).max(1)
    }

    /// A UUID (version 4 layout) derived from the sink, the recipient and the batch: the same
    /// for every retry of this batch to this recipient.
    pub fn retry_key(&self, to: &str, batch: &[JournalEntry]) -> String {
        let mut h = Sha256::new();
        h.update(self.name.as_bytes());
        h.update(b"\0");
        h.update(to.as_bytes());
        for e in batch {
            h.update(e.id.to_be_bytes());
            h.update(e.received_at_ms.to_be_bytes());
        }
        let mut b: [u8; 16] = [0; 16];
        b.copy_from_slice(&h.finalize()[..16]);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }

    pub async fn push(
        &self,
        client: &reqwest::Client,
        batch: &[JournalEntry],
        timeout: Duration,
    ) -> Outcome {
        let messages: Vec<_> = batch
            .iter()
            .map(|e| {
                json!({"type": "text", "text": truncate(&render(self.template.as_ref(), e), MAX_TEXT)})
            })
            .collect();
        for to in &self.to {
            let request = client
                .post(&self.url)
                .timeout(timeout)
                .bearer_auth(&self.token)
                .header("X-Line-Retry-Key", self.retry_key(to, batch))
                .json(&json!({"to": to, "messages": messages}));
            match crate::http::send(request, &[&self.token]).await {
                (_, 409) | (Outcome::Delivered, _) => {}
                (Outcome::Permanent { reason }, _) => {
                    return Outcome::Permanent {
                        reason: format!("to {to}: {reason}"),
                    }
                }
                (retry, _) => return retry,
            }
        }
        Outcome::Delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::entry;

    #[test]
    fn the_retry_key_is_a_stable_uuid_per_batch_and_recipient() {
        let line = Line {
            name: "shop".into(),
            url: DEFAULT_URL.into(),
            token: "t".into(),
            to: vec![],
            template: None,
            max_batch: 5,
        };
        let batch = [entry(1, "a", b"x"), entry(2, "a", b"y")];
        let key = line.retry_key("U1", &batch);
        assert_eq!(key, line.retry_key("U1", &batch));
        assert_ne!(key, line.retry_key("U2", &batch));
        assert_ne!(key, line.retry_key("U1", &batch[..1]));
        let parts: Vec<_> = key.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(&key[14..15], "4");
    }
}
