//! What a receiver's answer may leave in the log, the status and the database: a short
//! excerpt with every secret taken out. A broken proxy that echoes the request (a token grant's
//! body, an `Authorization` header, a webhook URL with its token) must not copy a secret
//! anywhere, so known secret values (also URL- and JSON-encoded), `"key":"value"` and
//! `key=value` pairs of secret-ish keys, and `Bearer` tokens are replaced by `[redacted]`, and
//! the rest is cut to [`MAX_EXCERPT`] characters. Every sink and the Exment forwarder use it.

use std::sync::{Arc, LazyLock, RwLock};

use regex::Regex;

/// Longest excerpt of an answer kept (characters).
pub const MAX_EXCERPT: usize = 200;

const REDACTED: &str = "[redacted]";

/// Key names whose values are secrets (matched anywhere in the key, case-insensitive).
const SECRET_KEY: &str = r"[A-Za-z0-9_\-]*(?i:secret|passw|pwd|token|api[_\-]?key|authorization|credential|cookie|session)[A-Za-z0-9_\-]*";

static JSON_PAIR: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(&format!(
        r#"(\\?"{SECRET_KEY}\\?"\s*:\s*)(\\?"(?:[^"\\]|\\[^"]|\\"[^,}}\s])*\\?"|[^\s,}}\]]+)"#
    ))
    .ok()
});
static FORM_PAIR: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(&format!(
        r#"\b({SECRET_KEY})(\s*(?:=|:|%3[Dd])\s*)([^\s&"',;<>]+)"#
    ))
    .ok()
});
static BEARER: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?i)\b(bearer|basic)(\s+|%20|\+)[A-Za-z0-9._~+/=\-%]+").ok());

/// Takes secrets out of text bound for logs, status and the database. Cloning shares the
/// known values (the access token is added when one is granted).
#[derive(Clone, Default, Debug)]
pub struct Redactor {
    known: Arc<RwLock<Vec<String>>>,
}

impl Redactor {
    pub fn new<I, S>(values: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let r = Redactor::default();
        for v in values {
            r.add(v.as_ref());
        }
        r
    }

    /// Adds a secret value (with its URL- and JSON-encoded forms). Values shorter than 4
    /// characters are not worth hunting for (they would redact ordinary words).
    pub fn add(&self, value: &str) {
        if value.chars().count() < 4 {
            return;
        }
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        let url: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let json = serde_json::to_string(value).unwrap_or_default();
        let json = json.trim_matches('"').to_owned();
        for v in [value.to_owned(), url, json] {
            if !known.contains(&v) {
                known.push(v);
            }
        }
        // Longest first, so a value containing another is replaced whole.
        known.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    /// The text without secrets, on one line, at most [`MAX_EXCERPT`] characters.
    pub fn excerpt(&self, text: &str) -> String {
        let mut out = self.redact(text);
        out = out
            .split(|c: char| c.is_whitespace() || c.is_control())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if out.chars().count() > MAX_EXCERPT {
            out = out.chars().take(MAX_EXCERPT - 1).collect::<String>() + "…";
        }
        out
    }

    /// The text with every known secret and secret-looking pair replaced (not shortened).
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for v in self.known.read().unwrap_or_else(|e| e.into_inner()).iter() {
            out = out.replace(v.as_str(), REDACTED);
        }
        if let Some(re) = BEARER.as_ref() {
            out = re
                .replace_all(&out, |c: &regex::Captures<'_>| {
                    format!("{} {REDACTED}", &c[1])
                })
                .into_owned();
        }
        if let Some(re) = JSON_PAIR.as_ref() {
            out = re
                .replace_all(&out, |c: &regex::Captures<'_>| {
                    format!("{}\"{REDACTED}\"", &c[1])
                })
                .into_owned();
        }
        if let Some(re) = FORM_PAIR.as_ref() {
            out = re
                .replace_all(&out, |c: &regex::Captures<'_>| {
                    format!("{}{}{REDACTED}", &c[1], &c[2])
                })
                .into_owned();
        }
        out
    }
}

/// `body` as one redacted line of at most [`MAX_EXCERPT`] characters, `secrets` removed.
pub fn excerpt(body: &str, secrets: &[&str]) -> String {
    Redactor::new(secrets).excerpt(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_secret_looking_pairs_are_redacted_and_the_rest_kept() {
        let r = Redactor::new(["s3cr3t-value-1234", "key_dpmqhSHm1dj7Rf"]);
        let echo = r#"<html>POST /admin/oauth/token {"grant_type":"api_key","client_id":"abc","client_secret":"s3cr3t-value-1234","api_key":"key_dpmqhSHm1dj7Rf","scope":"value_write"} password=hunter22&user=bob Authorization: Bearer eyJabc.def.ghi x-api-key: zzzzzz "refresh_token": "def502xyz"</html>"#;
        let out = r.redact(echo);
        for secret in [
            "s3cr3t-value-1234",
            "key_dpmqhSHm1dj7Rf",
            "hunter22",
            "eyJabc",
            "zzzzzz",
            "def502xyz",
        ] {
            assert!(!out.contains(secret), "{secret} left in {out}");
        }
        for kept in [
            "grant_type",
            "\"client_id\":\"abc\"",
            "user=bob",
            "value_write",
        ] {
            assert!(out.contains(kept), "{kept} lost from {out}");
        }
    }

    #[test]
    fn encoded_forms_of_a_known_secret_are_redacted_too() {
        let r = Redactor::new(["a+b/c=d&e"]);
        let out = r.redact("client%5Fx=a%2Bb%2Fc%3Dd%26e and \"a+b/c=d&e\"");
        assert!(!out.contains("a%2Bb") && !out.contains("a+b/c"), "{out}");
    }

    #[test]
    fn an_excerpt_is_one_line_of_at_most_200_characters() {
        let r = Redactor::default();
        let long = "line one\nline two\r\n".repeat(100);
        let out = r.excerpt(&long);
        assert!(
            out.chars().count() <= MAX_EXCERPT,
            "{}",
            out.chars().count()
        );
        assert!(!out.contains('\n'));
        assert!(out.starts_with("line one line two line one"));
        assert_eq!(r.excerpt("short"), "short");
    }
}
