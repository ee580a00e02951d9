//! Exment access tokens: `POST /admin/oauth/token` with `grant_type=api_key`, cached in memory
//! and in a mode-600 file.
//!
//! Only Exment's documented refusals are credential (configuration) errors: its exception
//! handler answers every OAuth error with 401 `{"message": ...}`, and an installation with the
//! stock handler answers 4xx `{"error": "invalid_client" | "invalid_grant" | ...}`. Anything
//! else is transient: a 429 (a proxy's or Exment's limiter) waits for its `Retry-After`, other
//! 4xx answers (a proxy's error page) and 5xx are retried with backoff.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use genba_config::ExmentSecrets;
use serde::{Deserialize, Serialize};

use genba_sinks::redact::Redactor;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("Exment refused the credentials (HTTP {status}: {message}); fix client_id, client_secret, api_key or scope under [exment] in the secrets file")]
    Refused { status: u16, message: String },
    #[error("[exment] client_id, client_secret and api_key are required in the secrets file")]
    Missing,
    /// 429 from the token endpoint: wait this long, then ask again.
    #[error("the token endpoint is rate limited; retry in {} s", .0.as_secs())]
    RateLimited(Duration),
    /// Network errors, 5xx and undocumented 4xx answers: retried with backoff.
    #[error("token request failed: {0}")]
    Transport(String),
}

/// The OAuth error codes a token endpoint with the stock Passport handler answers for
/// credentials, grant or scope it does not accept (RFC 6749 section 5.2).
const OAUTH_REFUSALS: &[&str] = &[
    "invalid_client",
    "invalid_grant",
    "invalid_request",
    "invalid_scope",
    "unauthorized_client",
    "unsupported_grant_type",
    "access_denied",
];

/// What a non-200 answer of the token endpoint means.
pub(crate) fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
    redact: &Redactor,
) -> TokenError {
    if status == 429 {
        return TokenError::RateLimited(retry_after.unwrap_or(Duration::from_secs(60)));
    }
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let oauth_error = v["error"].as_str().filter(|e| OAUTH_REFUSALS.contains(e));
    let message = v["message"].as_str();
    if (400..500).contains(&status) && oauth_error.is_some() {
        let text = v["error_description"]
            .as_str()
            .or(message)
            .unwrap_or_default();
        return TokenError::Refused {
            status,
            message: redact.excerpt(&format!("{}: {text}", oauth_error.unwrap_or_default())),
        };
    }
    if status == 401 {
        if let Some(m) = message {
            return TokenError::Refused {
                status,
                message: redact.excerpt(m),
            };
        }
    }
    TokenError::Transport(format!(
        "token endpoint answered HTTP {status}: {}",
        redact.excerpt(body)
    ))
}

#[derive(Serialize, Deserialize, Clone)]
struct Cached {
    access_token: String,
    expires_at_ms: i64,
    /// What the token was granted for (`<url> <client_id> <scope>`): a token cached before the
    /// config changed (e.g. the scope was fixed) is not reused.
    #[serde(default)]
    granted_for: String,
}

pub struct Tokens {
    url: String,
    scope: String,
    secrets: ExmentSecrets,
    file: PathBuf,
    cached: Option<Cached>,
    granted_for: String,
    redact: Redactor,
    /// Token requests made by this process (status and tests).
    pub requests: u64,
}

fn granted_for(base_url: &str, secrets: &ExmentSecrets, scope: &str) -> String {
    format!(
        "{} {} {scope}",
        base_url.trim_end_matches('/'),
        secrets.client_id.as_deref().unwrap_or_default()
    )
}

impl Tokens {
    pub fn new(base_url: &str, scope: &str, secrets: ExmentSecrets, file: PathBuf) -> Tokens {
        Tokens::with_redactor(base_url, scope, secrets, file, Redactor::default())
    }

    /// Like [`Tokens::new`]; the tokens it gets are added to `redact`'s known secrets.
    pub fn with_redactor(
        base_url: &str,
        scope: &str,
        secrets: ExmentSecrets,
        file: PathBuf,
        redact: Redactor,
    ) -> Tokens {
        // A cache file others could read is ignored (and replaced on the next grant).
        let cached = std::fs::metadata(&file)
            .ok()
            .filter(|m| m.permissions().mode() & 0o077 == 0)
            .and_then(|_| std::fs::read(&file).ok())
            .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
            .filter(|c| c.granted_for == granted_for(base_url, &secrets, scope));
        for v in [&secrets.client_secret, &secrets.api_key]
            .into_iter()
            .flatten()
        {
            redact.add(v);
        }
        if let Some(c) = &cached {
            redact.add(&c.access_token);
        }
        let granted_for = granted_for(base_url, &secrets, scope);
        Tokens {
            url: format!("{}/admin/oauth/token", base_url.trim_end_matches('/')),
            scope: scope.to_owned(),
            secrets,
            file,
            cached,
            granted_for,
            redact,
            requests: 0,
        }
    }

    /// Forgets the token (after Exment answered 401 code 108).
    pub fn invalidate(&mut self) {
        self.cached = None;
        let _ = std::fs::remove_file(&self.file);
    }

    pub async fn get(&mut self, http: &reqwest::Client) -> Result<String, TokenError> {
        let now = chrono::Utc::now().timestamp_millis();
        if let Some(c) = self
            .cached
            .as_ref()
            .filter(|c| c.expires_at_ms > now + 60_000)
        {
            return Ok(c.access_token.clone());
        }
        let s = &self.secrets;
        let (Some(id), Some(secret), Some(key)) = (&s.client_id, &s.client_secret, &s.api_key)
        else {
            return Err(TokenError::Missing);
        };
        self.requests += 1;
        let body = serde_json::json!({
            "grant_type": "api_key", "client_id": id, "client_secret": secret, "api_key": key, "scope": self.scope,
        });
        let r = http
            .post(&self.url)
            .header("accept", "application/json")
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                TokenError::Transport(self.redact.excerpt(&e.without_url().to_string()))
            })?;
        let status = r.status().as_u16();
        let retry_after = genba_sinks::http::header(&r, reqwest::header::RETRY_AFTER)
            .and_then(|v| genba_sinks::outcome::parse_retry_after(&v));
        let text = r.text().await.unwrap_or_default();
        if status != 200 {
            return Err(classify(status, retry_after, &text, &self.redact));
        }
        #[derive(Deserialize)]
        struct Grant {
            access_token: String,
            expires_in: i64,
        }
        let g: Grant = serde_json::from_str(&text)
            .map_err(|e| TokenError::Transport(format!("token answer: {e}")))?;
        self.redact.add(&g.access_token);
        let cached = Cached {
            access_token: g.access_token,
            expires_at_ms: now + g.expires_in * 1000,
            granted_for: self.granted_for.clone(),
        };
        let _ = std::fs::remove_file(&self.file);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.file)
        {
            let _ = f.write_all(&serde_json::to_vec(&cached).unwrap_or_default());
        }
        self.cached = Some(cached.clone());
        Ok(cached.access_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: u16, body: &str) -> &'static str {
        match classify(status, None, body, &Redactor::default()) {
            TokenError::Refused { .. } => "credentials",
            TokenError::RateLimited(_) => "rate limited",
            TokenError::Transport(_) => "retry",
            TokenError::Missing => "missing",
        }
    }

    #[test]
    fn only_documented_refusals_are_credential_errors() {
        // Exment's handler: every OAuth error is 401 {"message"}.
        assert_eq!(
            kind(401, r#"{"message":"Client authentication failed"}"#),
            "credentials"
        );
        assert_eq!(
            kind(401, r#"{"message":"The user credentials were incorrect."}"#),
            "credentials"
        );
        // The stock Passport shape.
        assert_eq!(
            kind(
                400,
                r#"{"error":"invalid_grant","error_description":"x","message":"x"}"#
            ),
            "credentials"
        );
        assert_eq!(
            kind(401, r#"{"error":"invalid_client","message":"x"}"#),
            "credentials"
        );
        // Everything else is transient.
        assert_eq!(
            kind(429, r#"{"message":"Too Many Attempts."}"#),
            "rate limited"
        );
        assert_eq!(kind(400, "<html>400 Bad Request</html>"), "retry");
        assert_eq!(kind(400, r#"{"message":"Bad Request"}"#), "retry");
        assert_eq!(kind(401, "<html>proxy login</html>"), "retry");
        assert_eq!(kind(403, r#"{"error":"forbidden"}"#), "retry");
        assert_eq!(kind(503, r#"{"message":"Service Unavailable"}"#), "retry");
    }

    #[test]
    fn a_429_waits_for_its_retry_after() {
        let e = classify(429, Some(Duration::from_secs(7)), "", &Redactor::default());
        assert!(matches!(e, TokenError::RateLimited(d) if d == Duration::from_secs(7)));
    }
}
