//! Slack Incoming Webhooks: the message (mrkdwn text, folded when a backlog builds) and what
//! Slack's answers mean (status + bare error string, shared/refs: Slack).

use std::time::Duration;

use genba_config::sinks::Template;
use genba_store::JournalEntry;
use serde_json::{json, Value};

use crate::outcome::{parse_retry_after, Outcome};
use crate::template::{payload_text, render, truncate, when};

/// Slack truncates beyond 40,000 characters and advises about 4,000; stay under that.
const MAX_TEXT: usize = 3800;
const MAX_ONE: usize = 3000;

pub struct Slack {
    pub url: String,
    pub template: Option<Template>,
    pub max_batch: usize,
}

/// Escapes the three characters Slack's mrkdwn reserves.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Slack {
    fn body_text(&self, e: &JournalEntry, limit: usize) -> String {
        match &self.template {
            Some(t) => truncate(&escape(&render(Some(t), e)), limit),
            None if std::str::from_utf8(&e.payload).is_ok() => {
                truncate(&escape(&payload_text(e)), limit)
            }
            None => payload_text(e),
        }
    }

    /// How many of `entries` fit in one post (at least one).
    pub fn fit(&self, entries: &[JournalEntry]) -> usize {
        let mut used = 40;
        for (i, e) in entries.iter().take(self.max_batch).enumerate() {
            used += e.topic.len() + 32 + self.body_text(e, MAX_ONE).chars().count().min(400);
            if used > MAX_TEXT && i > 0 {
                return i;
            }
        }
        entries.len().min(self.max_batch).max(1)
    }

    /// The webhook body for one entry, or for several folded into one post.
    pub fn payload(&self, entries: &[JournalEntry]) -> Value {
        let text = match (entries, &self.template) {
            ([one], Some(_)) => self.body_text(one, MAX_ONE),
            ([one], None) => format!(
                "*{}* · {}\n{}",
                escape(&one.topic),
                when(one.received_at_ms),
                self.body_text(one, MAX_ONE)
            ),
            (many, template) => {
                let per = (MAX_TEXT / many.len().max(1)).clamp(60, 400);
                let mut s = format!("*{} messages*", many.len());
                for e in many {
                    match template {
                        Some(_) => s.push_str(&format!("\n• {}", self.body_text(e, per))),
                        None => s.push_str(&format!(
                            "\n• `{}` *{}*: {}",
                            when(e.received_at_ms),
                            escape(&e.topic),
                            self.body_text(e, per)
                        )),
                    }
                }
                truncate(&s, MAX_TEXT)
            }
        };
        json!({"text": text, "unfurl_links": false, "unfurl_media": false})
    }

    pub async fn post(
        &self,
        client: &reqwest::Client,
        batch: &[JournalEntry],
        timeout: Duration,
    ) -> Outcome {
        let request = client
            .post(&self.url)
            .json(&self.payload(batch))
            .timeout(timeout);
        match crate::http::answer(request, &[&self.url]).await {
            Ok(a) => classify(a.status, &a.excerpt, a.retry_after.as_deref()),
            Err(outcome) => outcome,
        }
    }
}

/// Maps Slack's documented answers (status + bare error string) to an outcome.
pub fn classify(status: u16, body: &str, retry_after: Option<&str>) -> Outcome {
    let body = body.trim();
    let reason = |s: &str| {
        format!(
            "HTTP {status} {}",
            if s.is_empty() { "(empty body)" } else { s }
        )
    };
    match status {
        200 if body == "ok" => Outcome::Delivered,
        // An empty or unexpected 200 (captive portal, proxy) is not a delivery.
        200..=299 => Outcome::retry(reason(&format!("unexpected answer {body:?}"))),
        429 => Outcome::Retry {
            reason: reason("rate_limited"),
            after: Some(
                retry_after
                    .and_then(parse_retry_after)
                    .unwrap_or(Duration::from_secs(30)),
            ),
        },
        408 | 500..=599 => Outcome::retry(reason(body)),
        _ => Outcome::Permanent {
            reason: reason(body),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::entry;

    fn slack(template: Option<&str>) -> Slack {
        Slack {
            url: "https://hooks.slack.com/services/T/B/x".into(),
            template: template.map(|t| Template::try_from(t.to_owned()).unwrap()),
            max_batch: 20,
        }
    }

    #[test]
    fn documented_slack_answers_map_to_outcomes() {
        assert_eq!(classify(200, "ok", None), Outcome::Delivered);
        assert!(matches!(classify(200, "", None), Outcome::Retry { .. }));
        assert_eq!(
            classify(429, "", Some("7")),
            Outcome::Retry {
                reason: "HTTP 429 rate_limited".into(),
                after: Some(Duration::from_secs(7))
            }
        );
        assert!(matches!(
            classify(500, "rollup_error", None),
            Outcome::Retry { after: None, .. }
        ));
        assert!(matches!(
            classify(503, "<html>", None),
            Outcome::Retry { .. }
        ));
        for (status, body) in [
            (400, "invalid_payload"),
            (403, "invalid_token"),
            (404, "channel_not_found"),
            (404, "no_service"),
            (410, "channel_is_archived"),
            (403, "action_prohibited"),
        ] {
            assert_eq!(
                classify(status, body, None),
                Outcome::Permanent {
                    reason: format!("HTTP {status} {body}")
                },
                "{body}"
            );
        }
    }

    #[test]
    fn one_message_shows_topic_time_and_escaped_text() {
        let v = slack(None).payload(&[entry(1, "alert/stock", b"low <5> & falling")]);
        let text = v["text"].as_str().unwrap();
        assert!(text.starts_with("*alert/stock* · "), "{text}");
        assert!(text.ends_with("\nlow &lt;5&gt; &amp; falling"), "{text}");
    }

    #[test]
    fn a_template_replaces_the_default_text_and_is_escaped() {
        let s = slack(Some(":fire: {topic.1}: {payload}"));
        let v = s.payload(&[entry(1, "alarms/fridge-2/warm", b"9 > 8")]);
        assert_eq!(v["text"], ":fire: fridge-2: 9 &gt; 8");
    }

    #[test]
    fn several_messages_fold_into_one_post_under_the_limit() {
        let big = "x".repeat(5000);
        let entries: Vec<_> = (0..20)
            .map(|i| entry(i, &format!("t/{i}"), big.as_bytes()))
            .collect();
        let s = slack(None);
        let n = s.fit(&entries);
        assert!((1..20).contains(&n), "{n}");
        let text = s.payload(&entries[..n])["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(text.starts_with(&format!("*{n} messages*")));
        assert!(text.chars().count() <= MAX_TEXT);
    }

    #[test]
    fn binary_payload_is_described_not_sent() {
        assert!(
            slack(None).payload(&[entry(1, "t", &[0xff, 0x00, 0xfe])])["text"]
                .as_str()
                .unwrap()
                .contains("3 bytes of binary data")
        );
    }
}
