//! One POST to a Slack Incoming Webhook, and what its answer means.

use std::time::Duration;

use serde_json::Value;

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Try again later; `after` is Slack's Retry-After when it gave one.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Slack refused for good (bad webhook, archived channel, bad payload): park, do not retry.
    Permanent {
        reason: String,
    },
}

/// Maps Slack's documented answers (status + bare error string) to an outcome.
pub fn classify(status: u16, body: &str, retry_after: Option<&str>) -> Outcome {
    let body = body.trim();
    let reason = |s: &str| {
        format!(
            "HTTP {status} {}",
            if s.is_empty() { "(empty body)" } else { s }
        )
    };
    match status {
        200 if body == "ok" => Outcome::Delivered,
        // An empty or unexpected 200 (captive portal, proxy) is not a delivery.
        200..=299 => Outcome::Retry {
            reason: reason(&format!("unexpected answer {:?}", truncate(body))),
            after: None,
        },
        429 => Outcome::Retry {
            reason: reason("rate_limited"),
            after: Some(Duration::from_secs(
                retry_after
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(30),
            )),
        },
        408 | 500..=599 => Outcome::Retry {
            reason: reason(truncate(body)),
            after: None,
        },
        _ => Outcome::Permanent {
            reason: reason(truncate(body)),
        },
    }
}

fn truncate(s: &str) -> &str {
    let end = s.char_indices().nth(200).map(|(i, _)| i).unwrap_or(s.len());
    &s[..end]
}

pub async fn post(client: &reqwest::Client, url: &str, body: &Value, timeout: Duration) -> Outcome {
    let response = client.post(url).json(body).timeout(timeout).send().await;
    match response {
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let text = r.text().await.unwrap_or_default();
            classify(status, &text, retry_after.as_deref())
        }
        Err(e) => Outcome::Retry {
            reason: if e.is_timeout() {
                "timed out".to_owned()
            } else {
                format!("request failed: {}", without_url(&e))
            },
            after: None,
        },
    }
}

/// reqwest errors print the URL, and a Slack webhook URL is a secret.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<webhook>");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_slack_answers_map_to_outcomes() {
        assert_eq!(classify(200, "ok", None), Outcome::Delivered);
        assert!(matches!(classify(200, "", None), Outcome::Retry { .. }));
        assert_eq!(
            classify(429, "", Some("7")),
            Outcome::Retry {
                reason: "HTTP 429 rate_limited".into(),
                after: Some(Duration::from_secs(7))
            }
        );
        assert!(matches!(
            classify(500, "rollup_error", None),
            Outcome::Retry { after: None, .. }
        ));
        assert!(matches!(
            classify(503, "<html>", None),
            Outcome::Retry { .. }
        ));
        for (status, body) in [
            (400, "invalid_payload"),
            (403, "invalid_token"),
            (404, "channel_not_found"),
            (404, "no_service"),
            (410, "channel_is_archived"),
            (403, "action_prohibited"),
        ] {
            assert_eq!(
                classify(status, body, None),
                Outcome::Permanent {
                    reason: format!("HTTP {status} {body}")
                },
                "{body}"
            );
        }
    }
}
