//! Optional request signing (H5) for keys made with `genba keys add --sign`: the device sends
//! `X-Genba-Timestamp: <unix seconds>` and `X-Genba-Signature: <hex HMAC-SHA256 of
//! "<timestamp>." + body>` keyed with the key's signing secret. A request outside the allowed
//! clock skew, or a signature already seen within the replay window, is refused.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-genba-timestamp";
pub const SIGNATURE_HEADER: &str = "x-genba-signature";
/// How far the device clock may be from ours, either way.
pub const MAX_SKEW_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("missing {0} header (this key signs its requests)")]
    Missing(&'static str),
    #[error("{TIMESTAMP_HEADER} must be unix seconds")]
    BadTimestamp,
    #[error("the timestamp is more than {MAX_SKEW_SECS} s from the appliance's clock")]
    Skew,
    #[error("the signature does not match")]
    Mismatch,
    #[error("this signed request was already received (replay)")]
    Replay,
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The signature a device sends (hex), for clients and tests.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    mac(secret, timestamp, body)
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks the skew and the signature (constant time); then the replay guard.
pub fn verify(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
    replays: &ReplayGuard,
) -> Result<(), SignError> {
    let timestamp = timestamp.ok_or(SignError::Missing(TIMESTAMP_HEADER))?;
    let signature = signature.ok_or(SignError::Missing(SIGNATURE_HEADER))?;
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignError::BadTimestamp)?;
    if (now_secs - ts).abs() > MAX_SKEW_SECS {
        return Err(SignError::Skew);
    }
    let given = unhex(signature.trim()).ok_or(SignError::Mismatch)?;
    mac(secret, timestamp, body)
        .verify_slice(&given)
        .map_err(|_| SignError::Mismatch)?;
    replays.check(signature.trim(), ts, now_secs)
}

/// Signatures seen within the skew window; a second sighting is a replay.
#[derive(Default)]
pub struct ReplayGuard {
    seen: Mutex<HashMap<String, i64>>,
}

impl ReplayGuard {
    fn check(&self, signature: &str, ts: i64, now_secs: i64) -> Result<(), SignError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Anything older than the skew window would be refused as skewed anyway.
        seen.retain(|_, t| now_secs - *t <= MAX_SKEW_SECS);
        if seen.insert(signature.to_ascii_lowercase(), ts).is_some() {
            return Err(SignError::Replay);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_passes_once_and_tampering_skew_and_replay_are_refused() {
        let guard = ReplayGuard::default();
        let now = 1_771_156_800;
        let body = br#"{"device_id":"d"}"#;
        let sig = sign("s3cret", &now.to_string(), body);
        let ts = now.to_string();
        assert_eq!(
            verify("s3cret", Some(&ts), Some(&sig), body, now + 10, &guard),
            Ok(())
        );
        assert_eq!(
            verify("s3cret", Some(&ts), Some(&sig), body, now + 10, &guard),
            Err(SignError::Replay)
        );
        let sig2 = sign("s3cret", &ts, b"other");
        assert_eq!(
            verify("s3cret", Some(&ts), Some(&sig2), body, now, &guard),
            Err(SignError::Mismatch)
        );
        assert_eq!(
            verify("wrong", Some(&ts), Some(&sig), body, now, &guard),
            Err(SignError::Mismatch)
        );
        let old = (now - 301).to_string();
        let sig3 = sign("s3cret", &old, body);
        assert_eq!(
            verify("s3cret", Some(&old), Some(&sig3), body, now, &guard),
            Err(SignError::Skew)
        );
        assert_eq!(
            verify("s3cret", None, Some(&sig), body, now, &guard),
            Err(SignError::Missing(TIMESTAMP_HEADER))
        );
        assert_eq!(
            verify("s3cret", Some("x"), Some(&sig), body, now, &guard),
            Err(SignError::BadTimestamp)
        );
    }
}
