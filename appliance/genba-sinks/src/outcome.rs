//! What one delivery attempt came to, and the pieces every kind of sink shares to decide it:
//! HTTP status classes, `Retry-After` and backoff (a receiver's answer is cut and redacted by
//! [`crate::redact`]).

use std::time::Duration;

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Try again later; `after` is the receiver's Retry-After when it gave one.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Refused for good (bad address, revoked token, invalid payload): park, do not retry
    /// until an operator asks (`genba sinks retry NAME`).
    Permanent {
        reason: String,
    },
}

impl Outcome {
    pub fn retry(reason: impl Into<String>) -> Outcome {
        Outcome::Retry {
            reason: reason.into(),
            after: None,
        }
    }

    /// The documented meaning of an HTTP status for a JSON API: 2xx delivered; 408, 425, 429
    /// and 5xx tried again (after `Retry-After` when given); any other status refused.
    pub fn from_http(status: u16, retry_after: Option<&str>, body_excerpt: &str) -> Outcome {
        let reason = if body_excerpt.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status} {body_excerpt}")
        };
        match status {
            200..=299 => Outcome::Delivered,
            408 | 425 | 429 | 500..=599 => Outcome::Retry {
                reason,
                after: retry_after.and_then(parse_retry_after),
            },
            _ => Outcome::Permanent { reason },
        }
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 10.2.3), capped at one hour.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            let ms = at.timestamp_millis() - chrono::Utc::now().timestamp_millis();
            Duration::from_millis(ms.max(0) as u64)
        }
    };
    Some(delay.min(Duration::from_secs(3600)))
}

/// Capped exponential backoff with jitter: about 0.5..1 x min(cap, 1 s x 2^(failures-1)).
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = Duration::from_secs(1).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let full = exp.min(cap);
    let jitter = 0.5 + rand::random::<f64>() * 0.5;
    full.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_retry_or_refusal() {
        assert_eq!(Outcome::from_http(204, None, ""), Outcome::Delivered);
        assert_eq!(
            Outcome::from_http(429, Some("7"), "slow down"),
            Outcome::Retry {
                reason: "HTTP 429 slow down".into(),
                after: Some(Duration::from_secs(7))
            }
        );
        assert!(matches!(
            Outcome::from_http(503, None, ""),
            Outcome::Retry { after: None, .. }
        ));
        for status in [400, 401, 403, 404, 410, 413, 301] {
            assert!(
                matches!(
                    Outcome::from_http(status, None, ""),
                    Outcome::Permanent { .. }
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date_and_is_capped() {
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("86400"), Some(Duration::from_secs(3600)));
        let soon = chrono::Utc::now() + chrono::Duration::seconds(30);
        let d = parse_retry_after(&soon.to_rfc2822()).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(25),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let cap = Duration::from_secs(60);
        let b1 = backoff(1, cap);
        assert!(
            b1 >= Duration::from_millis(500) && b1 <= Duration::from_secs(1),
            "{b1:?}"
        );
        let b5 = backoff(5, cap);
        assert!(
            b5 >= Duration::from_secs(8) && b5 <= Duration::from_secs(16),
            "{b5:?}"
        );
        let b30 = backoff(30, cap);
        assert!(b30 >= Duration::from_secs(30) && b30 <= cap, "{b30:?}");
    }
}
