//! A receiver on a real socket for fakes of HTTP services (Slack, webhook, LINE): each fake
//! decides its answers from the request as the real service documents them; every request is
//! recorded with its time, headers and body. It runs on a runtime of its own, so it serves
//! the same from a synchronous test and from async code (the benchmarks).

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
    /// The request target as sent: the path and its query.
    pub target: String,
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

    /// The query string, empty when there is none.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// The request head as it came: request line and headers, one a line.
    pub fn head(&self) -> String {
        let mut head = format!("{} {} HTTP/1.1", self.method, self.target);
        for (name, value) in &self.headers {
            head.push_str(&format!("\n{name}: {value}"));
        }
        head
    }
}

/// Work a fake does a while after a request arrived, whether or not its answer was sent (a
/// service that finishes a request its client gave up on).
#[derive(Clone)]
pub struct Deferred(Arc<Mutex<Option<Work>>>);

type Work = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred")
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
    /// Run this long after the request arrived.
    pub deferred: Option<(Duration, Deferred)>,
}

impl Reply {
    pub fn new(status: u16, body: &str, content_type: &'static str) -> Reply {
        Reply {
            status,
            body: body.into(),
            content_type,
            headers: Vec::new(),
            delay: None,
            deferred: None,
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
    /// Runs `work` `d` after the request arrived, whatever happens to the answer.
    pub fn meanwhile(mut self, d: Duration, work: impl FnOnce() + Send + 'static) -> Reply {
        self.deferred = Some((d, Deferred(Arc::new(Mutex::new(Some(Box::new(work)))))));
        self
    }
}

type Handler = dyn Fn(&Req) -> Reply + Send + Sync;

#[derive(Clone)]
pub struct FakeHttp {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Req>>>,
    _runtime: Arc<OwnRuntime>,
}

/// The fake's runtime, shut down without waiting when the last clone goes (dropping a runtime
/// inside async code would panic).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl FakeHttp {
    /// Serves on a free port of 127.0.0.1. Panics if none can be bound (tests).
    pub fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> FakeHttp {
        FakeHttp::try_start(handler).expect("fake HTTP receiver: binding 127.0.0.1:0")
    }

    pub fn try_start(
        handler: impl Fn(&Req) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<FakeHttp> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let handler: Arc<Handler> = Arc::new(handler);
        let r = received.clone();
        rt.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
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
        Ok(FakeHttp {
            addr,
            received,
            _runtime: Arc::new(OwnRuntime(Some(rt))),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Req> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    received: Arc<Mutex<Vec<Req>>>,
    handler: Arc<Handler>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let target = req.uri().to_string();
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
        target,
        headers,
        body,
        status: 0,
        answer: String::new(),
    };
    let reply = handler(&r);
    r.status = reply.status;
    r.answer = reply.body.clone();
    // Recorded on arrival, so the order and times are those of the attempts.
    received.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    if let Some((d, Deferred(work))) = reply.deferred {
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let work = work.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(work) = work {
                work();
            }
        });
    }
    if let Some(d) = reply.delay {
        tokio::time::sleep(d).await;
    }
    let mut response = Response::builder()
        .status(reply.status)
        .header("content-type", reply.content_type);
    for (k, v) in reply.headers {
        response = response.header(k, v);
    }
    // A reply the fake's author got wrong (a status out of range, a header with a newline)
    // is a 500 that says so, not a panic in the server task.
    Ok(response
        .body(Full::new(Bytes::from(reply.body)))
        .unwrap_or_else(|e| {
            let mut r = Response::new(Full::new(Bytes::from(format!("fake: bad reply: {e}"))));
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            r
        }))
}
