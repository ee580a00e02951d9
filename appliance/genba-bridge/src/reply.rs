//! JSON responses: every error names what was wrong and, where there is one, the field.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

pub type HttpResponse = Response<Full<Bytes>>;

pub fn json(status: StatusCode, body: &Value) -> HttpResponse {
    // A trailing newline, so `curl` leaves the shell prompt on its own line.
    let mut text = body.to_string();
    text.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// An error answer: `{"ok":false,"error":..,"field":..}`.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub error: String,
    pub field: Option<Cow<'static, str>>,
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Problem {
            status,
            error: error.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn field(
        status: StatusCode,
        field: impl Into<Cow<'static, str>>,
        error: impl Into<String>,
    ) -> Self {
        Problem {
            field: Some(field.into()),
            ..Problem::new(status, error)
        }
    }

    pub fn bad(field: impl Into<Cow<'static, str>>, error: impl Into<String>) -> Self {
        Problem::field(StatusCode::BAD_REQUEST, field, error)
    }

    pub fn busy(retry_after: u64) -> Self {
        Problem {
            retry_after: Some(retry_after),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: too many messages waiting, retry later",
            )
        }
    }

    pub fn into_http(self) -> HttpResponse {
        let mut body = json!({"ok": false, "error": self.error});
        if let Some(f) = &self.field {
            body["field"] = json!(f);
        }
        let mut r = json(self.status, &body);
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(hyper::header::RETRY_AFTER, secs.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic realm=\"genba\""),
            );
        }
        r
    }
}

impl axum::response::IntoResponse for Problem {
    fn into_response(self) -> axum::response::Response {
        self.into_http().into_response()
    }
}
