//! A receiver on a real socket for the HTTP sinks' fakes (Slack, webhook, LINE): each fake
//! decides its answers from the request as the real service documents them; every request is
//! recorded with its time, headers and body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone)]
pub struct Req {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What the fake answered (status, body).
    pub status: u16,
    pub answer: String,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// An answer: status, body, content type, headers, and a delay before it is sent.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn new(status: u16, body: &str, content_type: &'static str) -> Reply {
        Reply {
            status,
            body: body.into(),
            content_type,
            headers: Vec::new(),
            delay: None,
        }
    }
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply::new(status, &body.to_string(), "application/json")
    }
    pub fn header(mut self, name: &'static str, value: impl ToString) -> Reply {
        self.headers.push((name, value.to_string()));
        self
    }
    pub fn after(mut self, d: Duration) -> Reply {
        self.delay = Some(d);
        self
    }
}

type Handler = dyn Fn(&Req) -> Reply + Send + Sync;

#[derive(Clone)]
pub struct FakeHttp {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Req>>>,
    _rt: Arc<tokio::runtime::Runtime>,
}

impl FakeHttp {
    pub fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> FakeHttp {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Arc<Handler> = Arc::new(handler);
        let r = received.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (r, handler) = (r.clone(), handler.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, r.clone(), handler.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeHttp {
            addr,
            received,
            _rt: Arc::new(rt),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Req> {
        self.received.lock().unwrap().clone()
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    received: Arc<Mutex<Vec<Req>>>,
    handler: Arc<Handler>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    let mut r = Req {
        at: Instant::now(),
        method,
        path,
        headers,
        body,
        status: 0,
        answer: String::new(),
    };
    let reply = handler(&r);
    r.status = reply.status;
    r.answer = reply.body.clone();
    // Recorded on arrival, so the order and times are those of the attempts.
    received.lock().unwrap().push(r);
    if let Some(d) = reply.delay {
        tokio::time::sleep(d).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = hyper::StatusCode::from_u16(reply.status).unwrap();
    response
        .headers_mut()
        .insert("content-type", reply.content_type.parse().unwrap());
    for (k, v) in reply.headers {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    Ok(response)
}
