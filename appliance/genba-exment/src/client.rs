//! Exment data calls: bulk create (`POST /admin/api/data/{table}` with `{"value":[...]}`) and the
//! lookup by unique key (`GET .../query-column?q=<col> eq <key>`), each answer classified.

use std::time::Duration;

use serde_json::{json, Value};

use crate::slots::Record;
use genba_sinks::redact::Redactor;

#[derive(Debug, PartialEq)]
pub enum CallError {
    /// 401 code 108: the token is no longer valid; get a new one and try once more.
    TokenRejected,
    /// 429: wait this long.
    RateLimited(Duration),
    /// 5xx, timeouts, connection errors: try again after a backoff. The request may have
    /// reached Exment.
    Retry(String),
    /// Exment refused the request for good (400 codes 103/109, 403, 404 unknown table).
    Refused(String),
    /// The token endpoint refused our credentials: a configuration error.
    Credentials(String),
    /// 414: the request target (a lookup's URL) is longer than the server takes.
    UriTooLong,
}

/// Longest lookup URL sent: well under the request-line limits of common servers and proxies
/// (Apache 8,190 bytes, nginx 8 KB), with room for a proxy's own additions.
pub const MAX_LOOKUP_URL: usize = 4_000;

/// Most keys in one lookup (the page size Exment allows).
pub const MAX_LOOKUP_KEYS: usize = 100;

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub table: String,
    pub columns: genba_config::ExmentColumns,
    /// Takes secrets out of answers before they reach an error (log, status, database).
    pub redact: Redactor,
    /// The site's time zone: `check_slot` is its wall time (the unique key stays UTC).
    pub time_zone: chrono_tz::Tz,
}

/// An answer in a line: Exment's code and message, or a redacted excerpt of a body that is not
/// Exment's JSON (a proxy's page, which may echo the request).
fn describe(status: u16, body: &str, redact: &Redactor) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let code = v["code"].as_str().unwrap_or("-");
    let msg = match (&v["message"], &v["errors"]) {
        (Value::String(m), _) => m.clone(),
        (_, e) if !e.is_null() => e.to_string(),
        _ => body.to_owned(),
    };
    format!("HTTP {status} code {code}: {}", redact.excerpt(&msg))
}

impl Client {
    fn data_url(&self) -> String {
        format!(
            "{}/admin/api/data/{}",
            self.base.trim_end_matches('/'),
            self.table
        )
    }

    async fn call(&self, req: reqwest::RequestBuilder, token: &str) -> Result<String, CallError> {
        let r = req
            .bearer_auth(token)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| CallError::Retry(self.redact.excerpt(&e.without_url().to_string())))?;
        let status = r.status().as_u16();
        let retry_after = genba_sinks::http::header(&r, reqwest::header::RETRY_AFTER)
            .and_then(|v| genba_sinks::outcome::parse_retry_after(&v));
        let body = r
            .text()
            .await
            .map_err(|e| CallError::Retry(self.redact.excerpt(&e.without_url().to_string())))?;
        match status {
            200..=299 => Ok(body),
            401 => Err(CallError::TokenRejected),
            414 => Err(CallError::UriTooLong),
            429 => Err(CallError::RateLimited(
                retry_after.unwrap_or(Duration::from_secs(60)),
            )),
            408 | 500..=599 => Err(CallError::Retry(describe(status, &body, &self.redact))),
            _ => Err(CallError::Refused(describe(status, &body, &self.redact))),
        }
    }

    pub fn row(&self, r: &Record) -> Value {
        let c = &self.columns;
        let slot = chrono::DateTime::from_timestamp_millis(r.slot_start_ms)
            .map(|t| {
                t.with_timezone(&self.time_zone)
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string()
            })
            .unwrap_or_default();
        json!({
            c.unique_key.as_str(): r.key, c.check_slot.as_str(): slot, c.temperature.as_str(): r.celsius,
            c.device.as_str(): r.device_id, c.sensor.as_str(): r.sensor_hw_id,
        })
    }

    pub async fn create(&self, records: &[Record], token: &str) -> Result<(), CallError> {
        let rows: Vec<Value> = records.iter().map(|r| self.row(r)).collect();
        self.call(
            self.http
                .post(self.data_url())
                .json(&json!({ "value": rows })),
            token,
        )
        .await
        .map(|_| ())
    }

    /// `<col> eq <key>` for a query string. ':' (in every key's time) needs no escape in a
    /// query (RFC 3986), and leaving it saves 6 bytes a key.
    fn lookup_term(&self, key: &str) -> String {
        let term = format!("{} eq {key}", self.columns.unique_key);
        form_urlencoded::byte_serialize(term.as_bytes())
            .collect::<String>()
            .replace("%3A", ":")
    }

    /// The lookup URL for `keys`: `query-column?q=<col> eq A,<col> eq B,...` with `or=1`.
    pub fn lookup_url(&self, keys: &[String]) -> String {
        let q: Vec<String> = keys.iter().map(|k| self.lookup_term(k)).collect();
        format!(
            "{}/query-column?or=1&count={MAX_LOOKUP_KEYS}&q={}",
            self.data_url(),
            q.join(",")
        )
    }

    /// `keys` in lookups of at most [`MAX_LOOKUP_KEYS`] keys whose URL stays within
    /// `max_url` bytes (a single key longer than that still gets a lookup of its own).
    pub fn lookup_chunks(&self, keys: &[String], max_url: usize) -> Vec<Vec<String>> {
        let base = self.lookup_url(&[]).len();
        let mut chunks: Vec<Vec<String>> = Vec::new();
        let mut current: Vec<String> = Vec::new();
        let mut len = base;
        for key in keys {
            let add = self.lookup_term(key).len() + usize::from(!current.is_empty());
            if !current.is_empty() && (len + add > max_url || current.len() >= MAX_LOOKUP_KEYS) {
                chunks.push(std::mem::take(&mut current));
                len = base;
            }
            len += self.lookup_term(key).len() + usize::from(!current.is_empty());
            current.push(key.clone());
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        chunks
    }

    /// Which of `keys` (at most 100) Exment already holds, in one `query-column` request.
    pub async fn existing(&self, keys: &[String], token: &str) -> Result<Vec<String>, CallError> {
        let col = self.columns.unique_key.as_str();
        let body = self
            .call(self.http.get(self.lookup_url(keys)), token)
            .await?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| CallError::Retry(format!("lookup answer: {e}")))?;
        Ok(v["data"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|row| row["value"][col].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(time_zone: chrono_tz::Tz) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client {
            http: reqwest::Client::new(),
            base: "https://exment.example.com".into(),
            table: "haccp_temp".into(),
            columns: Default::default(),
            redact: Redactor::default(),
            time_zone,
        }
    }

    #[test]
    fn check_slot_is_the_sites_wall_time_and_the_key_stays_utc() {
        // 2026-11-30 22:05 UTC is the 07:05 check of 1 December in Japan.
        let start = chrono::DateTime::parse_from_rfc3339("2026-11-30T22:05:00Z")
            .unwrap()
            .timestamp_millis();
        let r = Record {
            key: crate::slots::slot_key("d", "s", start),
            device_id: "d".into(),
            sensor_hw_id: "s".into(),
            slot_start_ms: start,
            celsius: 4.0,
        };
        let tokyo = client(chrono_tz::Asia::Tokyo).row(&r);
        assert_eq!(tokyo["check_slot"], "2026-12-01 07:05:00");
        assert_eq!(tokyo["unique_key"], "d:s:2026-11-30T22:05:00Z");
        let utc = client(chrono_tz::UTC).row(&r);
        assert_eq!(utc["check_slot"], "2026-11-30 22:05:00");
    }

    #[test]
    fn lookups_are_split_so_each_url_stays_under_the_limit() {
        let client = client(chrono_tz::UTC);
        // 100 keys of 32-character device ids: over 8 KB in one URL (9.5 KB with ":" escaped).
        let keys: Vec<String> = (0..100)
            .map(|i| crate::slots::slot_key(&format!("{i:032}"), "28FF000000000001", i * 1_800_000))
            .collect();
        assert!(client.lookup_url(&keys).len() > 8_000);
        let chunks = client.lookup_chunks(&keys, MAX_LOOKUP_URL);
        assert!(chunks.len() >= 3, "{}", chunks.len());
        for c in &chunks {
            assert!(client.lookup_url(c).len() <= MAX_LOOKUP_URL);
        }
        assert_eq!(chunks.concat(), keys, "every key once, in order");
        let short: Vec<String> = (0..250).map(|i| format!("k{i}")).collect();
        let sizes: Vec<usize> = client
            .lookup_chunks(&short, MAX_LOOKUP_URL)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }
}
