//! Turning journal entries into a Slack message (mrkdwn text).

use chrono::{Local, TimeZone};
use genba_store::JournalEntry;
use serde_json::{json, Value};

/// Slack truncates beyond 40,000 characters and advises about 4,000; stay under that.
const MAX_TEXT: usize = 3800;
const MAX_ONE: usize = 3000;

/// Escapes the three characters Slack's mrkdwn reserves.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn when(ms: i64) -> String {
    match Local.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => ms.to_string(),
    }
}

fn body_text(e: &JournalEntry, limit: usize) -> String {
    match std::str::from_utf8(&e.payload) {
        Ok(text) => truncate(&escape(text), limit),
        Err(_) => format!("({} bytes of binary data)", e.payload.len()),
    }
}

fn truncate(s: &str, limit: usize) -> String {
    if s.chars().count() <= limit {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(limit.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// How many of `entries` fit in one post (at least one).
pub fn fit(entries: &[JournalEntry], max: usize) -> usize {
    let mut used = 40;
    for (i, e) in entries.iter().take(max).enumerate() {
        used += e.topic.len() + 32 + body_text(e, MAX_ONE).chars().count().min(400);
        if used > MAX_TEXT && i > 0 {
            return i;
        }
    }
    entries.len().min(max).max(1)
}

/// The webhook body for one entry, or for several folded into one post.
pub fn payload(entries: &[JournalEntry]) -> Value {
    let text = match entries {
        [one] => format!(
            "*{}* · {}\n{}",
            escape(&one.topic),
            when(one.received_at_ms),
            body_text(one, MAX_ONE)
        ),
        many => {
            let per = (MAX_TEXT / many.len()).clamp(60, 400);
            let mut s = format!("*{} messages*", many.len());
            for e in many {
                s.push_str(&format!(
                    "\n• `{}` *{}*: {}",
                    when(e.received_at_ms),
                    escape(&e.topic),
                    body_text(e, per)
                ));
            }
            truncate(&s, MAX_TEXT)
        }
    };
    json!({"text": text, "unfurl_links": false, "unfurl_media": false})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, text: &str) -> JournalEntry {
        JournalEntry {
            id: 1,
            received_at_ms: 1_700_000_000_000,
            source: "http".into(),
            topic: topic.into(),
            payload: text.as_bytes().to_vec(),
            qos: 1,
            retain: false,
        }
    }

    #[test]
    fn one_message_shows_topic_time_and_escaped_text() {
        let v = payload(&[entry("alert/stock", "low <5> & falling")]);
        let text = v["text"].as_str().unwrap();
        assert!(text.starts_with("*alert/stock* · "), "{text}");
        assert!(text.ends_with("\nlow &lt;5&gt; &amp; falling"), "{text}");
    }

    #[test]
    fn several_messages_fold_into_one_post_under_the_limit() {
        let big = "x".repeat(5000);
        let entries: Vec<_> = (0..20).map(|i| entry(&format!("t/{i}"), &big)).collect();
        let n = fit(&entries, 20);
        assert!((1..20).contains(&n), "{n}");
        let text = payload(&entries[..n])["text"].as_str().unwrap().to_owned();
        assert!(text.starts_with(&format!("*{n} messages*")));
        assert!(text.chars().count() <= MAX_TEXT);
    }

    #[test]
    fn binary_payload_is_described_not_sent() {
        let mut e = entry("t", "");
        e.payload = vec![0xff, 0x00, 0xfe];
        assert!(payload(&[e])["text"]
            .as_str()
            .unwrap()
            .contains("3 bytes of binary data"));
    }
}
