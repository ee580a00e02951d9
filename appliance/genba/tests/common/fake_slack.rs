//! A fake Slack Incoming Webhook on a real socket, answering as Slack documents
//! (shared/refs/notify-channels-slack-line-smtp.md): 200 `ok`, or a status with a bare error
//! string, 429 with Retry-After. Tests script its answers and read what it received.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Clone, Debug)]
pub enum Answer {
    Ok,
    /// Status, bare body, optional Retry-After seconds.
    Error(u16, &'static str, Option<u64>),
    /// Accept the request and answer only after this long (a timeout for the client).
    Hang(Duration),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub text: String,
    pub answered: String,
}

#[derive(Default)]
struct Shared {
    script: VecDeque<Answer>,
    /// Answer used when the script is empty.
    default: Option<Answer>,
    received: Vec<Received>,
}

#[derive(Clone)]
pub struct FakeSlack {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    _rt: Arc<tokio::runtime::Runtime>,
}

impl FakeSlack {
    pub fn start() -> FakeSlack {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let s = shared.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, s.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeSlack {
            addr,
            shared,
            _rt: Arc::new(rt),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/services/T000/B000/XXXXSECRETXXXX", self.addr)
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.shared.lock().unwrap().script.extend(answers);
    }

    pub fn set_default(&self, a: Option<Answer>) {
        self.shared.lock().unwrap().default = a;
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    /// Texts of the posts Slack accepted (answered `ok`).
    pub fn delivered_texts(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| r.answered == "ok")
            .map(|r| r.text)
            .collect()
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    shared: Arc<Mutex<Shared>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let is_json = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let text = parsed
        .as_ref()
        .and_then(|v| v["text"].as_str())
        .map(str::to_owned);
    let answer = {
        let mut s = shared.lock().unwrap();
        s.script
            .pop_front()
            .or_else(|| s.default.clone())
            .unwrap_or(Answer::Ok)
    };
    // Slack's own checks come first: a body it cannot read is invalid_payload, no text is no_text.
    let answer = match (&answer, is_json, &text) {
        (Answer::Ok, false, _) | (Answer::Ok, _, None) if parsed.is_none() => {
            Answer::Error(400, "invalid_payload", None)
        }
        (Answer::Ok, _, None) => Answer::Error(400, "no_text", None),
        _ => answer,
    };
    // Recorded on arrival, so the order and times are those of the attempts.
    shared.lock().unwrap().received.push(Received {
        at: Instant::now(),
        text: text.unwrap_or_default(),
        answered: match &answer {
            Answer::Ok => "ok".into(),
            Answer::Error(_, b, _) => (*b).into(),
            Answer::Hang(_) => "hang".into(),
        },
    });
    let (status, body, retry_after) = match &answer {
        Answer::Ok => (200, "ok", None),
        Answer::Error(s, b, r) => (*s, *b, *r),
        Answer::Hang(d) => {
            tokio::time::sleep(*d).await;
            (200, "ok", None)
        }
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "text/html".parse().unwrap());
    if let Some(s) = retry_after {
        r.headers_mut().insert("retry-after", s.into());
    }
    Ok(r)
}
