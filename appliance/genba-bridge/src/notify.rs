//! `/notify` input: query strings, JSON, HTML forms and plain text, all validated the same way.

use genba_config::topic::validate_topic;
use genba_config::HttpConfig;
use percent_encoding::percent_decode;
use serde_json::Value;

use crate::reply::Problem;

#[derive(Debug, PartialEq)]
pub struct Notification {
    pub topic: String,
    pub message: String,
}

/// Decodes `a=b&c=d` (as forms and query strings send it); invalid UTF-8 names its field.
pub fn parse_urlencoded(raw: &[u8]) -> Result<Vec<(String, String)>, Problem> {
    let mut out = Vec::new();
    for pair in raw.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let key = decode_component(k)
            .map_err(|_| Problem::bad("query", "parameter name is not valid UTF-8"))?;
        let field = field_name(&key);
        let value = decode_component(v).map_err(|_| Problem::bad(field, "is not valid UTF-8"))?;
        out.push((key, value));
    }
    Ok(out)
}

fn decode_component(raw: &[u8]) -> Result<String, std::str::Utf8Error> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    let bytes: Vec<u8> = percent_decode(&plus_as_space).collect();
    String::from_utf8(bytes).map_err(|e| e.utf8_error())
}

fn field_name(key: &str) -> &'static str {
    match key {
        "topic" => "topic",
        "message" => "message",
        _ => "query",
    }
}

/// From `topic`/`message` pairs (query string or form).
pub fn from_pairs(pairs: &[(String, String)], cfg: &HttpConfig) -> Result<Notification, Problem> {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    build(get("topic"), get("message"), cfg)
}

/// From a JSON body `{"topic": "...", "message": "..."}`.
pub fn from_json(body: &[u8], cfg: &HttpConfig) -> Result<Notification, Problem> {
    if std::str::from_utf8(body).is_err() {
        return Err(Problem::bad("body", "is not valid UTF-8"));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Problem::bad("body", format!("is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Problem::bad(
            "body",
            "must be a JSON object with \"message\" and optional \"topic\"",
        ));
    };
    for key in map.keys() {
        if key != "topic" && key != "message" {
            return Err(Problem::bad(
                "body",
                format!("unknown field {key:?}; expected \"topic\" and \"message\""),
            ));
        }
    }
    let string = |name: &'static str| match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Problem::bad(
            name,
            format!("must be a string, not {}", kind(other)),
        )),
    };
    build(string("topic")?, string("message")?, cfg)
}

/// From a `text/plain` body (the message) and the query string's topic.
pub fn from_text(
    body: &[u8],
    topic: Option<String>,
    cfg: &HttpConfig,
) -> Result<Notification, Problem> {
    let message =
        std::str::from_utf8(body).map_err(|_| Problem::bad("message", "is not valid UTF-8"))?;
    build(topic, Some(message.to_owned()), cfg)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn build(
    topic: Option<String>,
    message: Option<String>,
    cfg: &HttpConfig,
) -> Result<Notification, Problem> {
    let topic = topic.unwrap_or_else(|| cfg.default_topic.clone());
    validate_topic(&topic, cfg.max_topic_bytes)
        .map_err(|e| Problem::bad("topic", e.to_string()))?;
    let Some(message) = message else {
        return Err(Problem::bad("message", "is required"));
    };
    if message.trim().is_empty() {
        return Err(Problem::bad("message", "must not be empty"));
    }
    if message.len() > cfg.max_message_bytes {
        return Err(Problem::bad(
            "message",
            format!("is longer than {} bytes", cfg.max_message_bytes),
        ));
    }
    if message.contains('\0') {
        return Err(Problem::bad("message", "must not contain NUL"));
    }
    Ok(Notification { topic, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HttpConfig {
        HttpConfig::default()
    }

    #[test]
    fn query_defaults_topic_and_decodes_percent_and_plus() {
        let pairs = parse_urlencoded(b"message=%E5%9C%A8%E5%BA%AB+low").unwrap();
        let n = from_pairs(&pairs, &cfg()).unwrap();
        assert_eq!(
            n,
            Notification {
                topic: "notify/slack".into(),
                message: "在庫 low".into()
            }
        );
    }

    #[test]
    fn invalid_utf8_in_query_names_the_field() {
        let err = parse_urlencoded(b"message=%FF%FE").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("message"));
    }

    #[test]
    fn json_wrong_type_and_missing_message_name_the_field() {
        let err = from_json(br#"{"topic":"a/b","message":5}"#, &cfg()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("message"));
        assert!(err.error.contains("a number"));
        let err = from_json(br#"{"topic":7,"message":"x"}"#, &cfg()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("topic"));
        let err = from_json(br#"{"topic":"a"}"#, &cfg()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("message"));
        let err = from_json(br#"[1]"#, &cfg()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("body"));
    }

    #[test]
    fn wildcard_topic_and_long_message_are_rejected() {
        let err = from_json(br#"{"topic":"a/#","message":"x"}"#, &cfg()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("topic"));
        let long = "x".repeat(cfg().max_message_bytes + 1);
        let err = from_text(long.as_bytes(), None, &cfg()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("message"));
        let err = from_text(&[0xff, 0xfe], None, &cfg()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("message"));
    }
}
