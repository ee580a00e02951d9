//! Small helpers for the HTTP sinks (Slack, webhook, LINE).

use crate::outcome::Outcome;

/// A response header as text, when present and printable.
pub fn header(r: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A request that got no answer (connection refused, TLS, timeout): tried again. reqwest
/// errors print the URL, which can hold a token, so it is left out.
pub fn transport_failure(e: &reqwest::Error) -> Outcome {
    if e.is_timeout() {
        return Outcome::retry("timed out");
    }
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<url>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    Outcome::retry(format!("request failed: {s}"))
}

/// Sends `request`; maps the answer with [`Outcome::from_http`] and an excerpt of the body
/// with `secrets` redacted.
pub async fn send(request: reqwest::RequestBuilder, secrets: &[&str]) -> (Outcome, u16) {
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after = header(&r, reqwest::header::RETRY_AFTER);
            let text = r.text().await.unwrap_or_default();
            let body = crate::redact::excerpt(&text, secrets);
            (
                Outcome::from_http(status, retry_after.as_deref(), &body),
                status,
            )
        }
        Err(e) => (transport_failure(&e), 0),
    }
}
