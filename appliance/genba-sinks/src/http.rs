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

/// An answer: status, `Retry-After`, and an excerpt of the body with the secrets redacted.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub excerpt: String,
}

/// Sends `request` and reads the answer, or says why there was none (to be tried again).
pub async fn answer(request: reqwest::RequestBuilder, secrets: &[&str]) -> Result<Answer, Outcome> {
    let r = request.send().await.map_err(|e| transport_failure(&e))?;
    let status = r.status().as_u16();
    let retry_after = header(&r, reqwest::header::RETRY_AFTER);
    let text = r.text().await.unwrap_or_default();
    Ok(Answer {
        status,
        retry_after,
        excerpt: crate::redact::excerpt(&text, secrets),
    })
}

/// Sends `request`; maps the answer with [`Outcome::from_http`].
pub async fn send(request: reqwest::RequestBuilder, secrets: &[&str]) -> (Outcome, u16) {
    match answer(request, secrets).await {
        Ok(a) => (
            Outcome::from_http(a.status, a.retry_after.as_deref(), &a.excerpt),
            a.status,
        ),
        Err(outcome) => (outcome, 0),
    }
}
