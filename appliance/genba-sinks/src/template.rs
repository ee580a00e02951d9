//! The text of one journal message, from the sink's template (`[[sinks]] template`) or the
//! default: time, topic and payload.

use chrono::{Local, TimeZone};
use genba_config::sinks::{Piece, Template};
use genba_store::JournalEntry;

/// Local wall time of a journal row, to the second.
pub fn when(ms: i64) -> String {
    match Local.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => ms.to_string(),
    }
}

/// The payload as text: UTF-8 as it is, anything else described.
pub fn payload_text(e: &JournalEntry) -> String {
    match std::str::from_utf8(&e.payload) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("({} bytes of binary data)", e.payload.len()),
    }
}

/// Renders `template` for `e`; without a template: `TIME TOPIC: PAYLOAD`.
pub fn render(template: Option<&Template>, e: &JournalEntry) -> String {
    let Some(template) = template else {
        return format!(
            "{} {}: {}",
            when(e.received_at_ms),
            e.topic,
            payload_text(e)
        );
    };
    let mut out = String::new();
    for piece in template.pieces() {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Topic => out.push_str(&e.topic),
            Piece::TopicLevel(n) => out.push_str(e.topic.split('/').nth(*n).unwrap_or("")),
            Piece::Payload => out.push_str(&payload_text(e)),
            Piece::Time => out.push_str(&when(e.received_at_ms)),
            Piece::Id => out.push_str(&e.id.to_string()),
        }
    }
    out
}

/// Cuts `s` to at most `limit` characters, ending with `…` when cut.
pub fn truncate(s: &str, limit: usize) -> String {
    if s.chars().count() <= limit {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(limit.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
pub(crate) fn entry(id: i64, topic: &str, payload: &[u8]) -> JournalEntry {
    JournalEntry {
        id,
        received_at_ms: 1_764_000_000_000,
        source: "mqtt".into(),
        topic: topic.into(),
        payload: payload.to_vec(),
        qos: 1,
        retain: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_fills_topic_levels_payload_and_id() {
        let t = Template::try_from("[{topic.1}] #{id} {payload} ({topic.9})".to_owned()).unwrap();
        let e = entry(42, "alarms/freezer-1/too-warm", b"RAISED 9.1 C");
        assert_eq!(render(Some(&t), &e), "[freezer-1] #42 RAISED 9.1 C ()");
        let binary = entry(1, "raw", &[0xff, 0x00]);
        assert!(render(None, &binary).ends_with("raw: (2 bytes of binary data)"));
    }
}
