//! `GET /`: a one-screen page a phone can use to send a notification.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use crate::reply::HttpResponse;

const INDEX: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Genba</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem}
input,textarea,button{font-size:1.1rem;width:100%;margin:.3rem 0;padding:.5rem;box-sizing:border-box}</style></head>
<body><h1>Genba</h1>
<form method="post" action="/notify">
<label>Topic <input name="topic" value="notify/slack"></label>
<label>Message <textarea name="message" rows="3" required></textarea></label>
<button type="submit">Send</button></form>
<p><a href="/status">Delivery status</a> · <a href="/health">Health</a></p>
</body></html>
"#;

pub fn index() -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from_static(INDEX.as_bytes())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}
