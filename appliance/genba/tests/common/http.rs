//! Plain HTTP clients for the tests: reqwest on a private runtime, and raw sockets for
//! requests no well-behaved client sends (invalid UTF-8, stalled bodies).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

pub struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

/// Status, JSON body (Null when not JSON), and the headers of an answer.
pub struct Reply {
    pub status: u16,
    pub json: Value,
    /// The body as text (lossy UTF-8).
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Http {
    pub fn new() -> Http {
        super::install_crypto();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Http { rt, client }
    }

    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.client.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.rt.block_on(send(req))
    }

    /// Any method, optional body (sent as JSON content type when given).
    pub fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, url);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_vec());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.rt.block_on(send(req))
    }

    pub fn post(
        &self,
        url: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self
            .client
            .post(url)
            .header("content-type", content_type)
            .body(body.into());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.rt.block_on(send(req))
    }
}

pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let (client, request) = req.build_split();
    let request = request.expect("a request the tests can build");
    let (method, path) = (
        request.method().to_string(),
        request.url().path().to_owned(),
    );
    let r = client
        .execute(request)
        .await
        .expect("request failed at the transport level");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap_or_default();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    super::openapi::check(&method, &path, status, &json);
    Reply {
        status,
        json,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        headers,
    }
}

/// Sends raw bytes and reads the whole answer (the server closes or the timeout passes).
pub fn raw_exchange(addr: SocketAddr, request: &[u8], read_timeout: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if complete_response(&out) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True once a response with a Content-Length has fully arrived.
fn complete_response(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    let len = text[..head_end].lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
    });
    len.is_some_and(|n| bytes.len() >= head_end + 4 + n)
}

/// The JSON body of a raw HTTP answer.
pub fn raw_json(answer: &str) -> Value {
    answer
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null)
}

/// A plain HTTP receiver on a loopback port that answers 200 and keeps every request body
/// (the test's stand-in for a webhook endpoint).
pub struct Receiver {
    pub url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break Some(
                                String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned(),
                            );
                        }
                    }
                };
                if let Some(b) = body {
                    kept.lock().unwrap().push(b);
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Receiver { url, bodies }
    }

    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}
