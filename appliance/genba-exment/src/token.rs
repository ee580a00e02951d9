//! Exment access tokens: `POST /admin/oauth/token` with `grant_type=api_key`, cached in memory
//! and in a mode-600 file. A 401 from the token endpoint means the credentials are wrong: that is
//! a configuration error, reported and never retried in a loop.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use genba_config::ExmentSecrets;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("Exment refused the credentials (HTTP {status}: {message}); fix client_id, client_secret, api_key or scope under [exment] in the secrets file")]
    Refused { status: u16, message: String },
    #[error("[exment] client_id, client_secret and api_key are required in the secrets file")]
    Missing,
    #[error("token request failed: {0}")]
    Transport(String),
}

#[derive(Serialize, Deserialize, Clone)]
struct Cached {
    access_token: String,
    expires_at_ms: i64,
}

pub struct Tokens {
    url: String,
    scope: String,
    secrets: ExmentSecrets,
    file: PathBuf,
    cached: Option<Cached>,
    /// Token requests made by this process (status and tests).
    pub requests: u64,
}

impl Tokens {
    pub fn new(base_url: &str, scope: &str, secrets: ExmentSecrets, file: PathBuf) -> Tokens {
        // A cache file others could read is ignored (and replaced on the next grant).
        let cached = std::fs::metadata(&file)
            .ok()
            .filter(|m| m.permissions().mode() & 0o077 == 0)
            .and_then(|_| std::fs::read(&file).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        Tokens {
            url: format!("{}/admin/oauth/token", base_url.trim_end_matches('/')),
            scope: scope.to_owned(),
            secrets,
            file,
            cached,
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
            .map_err(|e| TokenError::Transport(e.without_url().to_string()))?;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        if status != 200 {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            if (400..500).contains(&status) {
                return Err(TokenError::Refused { status, message });
            }
            return Err(TokenError::Transport(format!("HTTP {status}: {message}")));
        }
        #[derive(Deserialize)]
        struct Grant {
            access_token: String,
            expires_in: i64,
        }
        let g: Grant = serde_json::from_str(&text)
            .map_err(|e| TokenError::Transport(format!("token answer: {e}")))?;
        let cached = Cached {
            access_token: g.access_token,
            expires_at_ms: now + g.expires_in * 1000,
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
