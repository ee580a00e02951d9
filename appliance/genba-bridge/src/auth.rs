//! HTTP access: `X-API-Key` (SHA-256 digests in the config) or HTTP Basic (argon2 users).
//! With neither configured, the bridge is open (the default binds loopback only).

use base64::Engine;
use genba_auth::credentials::{constant_time_eq, Credentials};
use genba_auth::passwords::api_key_digest;
use hyper::header::{HeaderMap, AUTHORIZATION};
use hyper::StatusCode;

use crate::reply::Problem;

#[derive(Clone)]
pub struct HttpAuth {
    api_key_sha256: Vec<String>,
    users: Credentials,
}

impl HttpAuth {
    pub fn new(cfg: &genba_config::HttpConfig) -> Self {
        HttpAuth {
            api_key_sha256: cfg
                .api_key_sha256
                .iter()
                .map(|k| k.to_ascii_lowercase())
                .collect(),
            users: genba_config::credentials(&cfg.users),
        }
    }

    pub fn required(&self) -> bool {
        !self.api_key_sha256.is_empty() || !self.users.is_empty()
    }

    pub async fn check(&self, headers: &HeaderMap) -> Result<(), Problem> {
        if !self.required() {
            return Ok(());
        }
        if let Some(key) = headers.get("x-api-key") {
            let digest = api_key_digest(key.to_str().unwrap_or_default());
            if self
                .api_key_sha256
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), digest.as_bytes()))
            {
                return Ok(());
            }
            return Err(Problem::field(
                StatusCode::UNAUTHORIZED,
                "x-api-key",
                "unknown API key",
            ));
        }
        if let Some(value) = headers.get(AUTHORIZATION) {
            let basic = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .and_then(|raw| {
                    let text = String::from_utf8(raw).ok()?;
                    let (u, p) = text.split_once(':')?;
                    Some((u.to_owned(), p.to_owned()))
                });
            if let Some((user, pass)) = basic {
                if self.users.verify(&user, pass.as_bytes()).await {
                    return Ok(());
                }
            }
            return Err(Problem::field(
                StatusCode::UNAUTHORIZED,
                "authorization",
                "wrong user name or password",
            ));
        }
        Err(Problem::field(
            StatusCode::UNAUTHORIZED,
            "authorization",
            "authentication required: send X-API-Key or HTTP Basic credentials",
        ))
    }
}
