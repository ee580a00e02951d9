//! A fake Slack Incoming Webhook on a real socket, answering as Slack documents
//! (shared/refs/notify-channels-slack-line-smtp.md): 200 `ok`, or a status with a bare error
//! string, 429 with Retry-After. Tests script its answers and read what it received.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::fake_http::{FakeHttp, Reply, Req};

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
}

#[derive(Clone)]
pub struct FakeSlack {
    pub addr: SocketAddr,
    http: FakeHttp,
    shared: Arc<Mutex<Shared>>,
}

impl FakeSlack {
    pub fn start() -> FakeSlack {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s = shared.clone();
        let http = FakeHttp::start(move |req| {
            let answer = {
                let mut s = s.lock().unwrap();
                s.script
                    .pop_front()
                    .or_else(|| s.default.clone())
                    .unwrap_or(Answer::Ok)
            };
            answer_for(req, answer)
        });
        FakeSlack {
            addr: http.addr,
            http,
            shared,
        }
    }

    pub fn url(&self) -> String {
        self.http.url("/services/T000/B000/XXXXSECRETXXXX")
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.shared.lock().unwrap().script.extend(answers);
    }

    pub fn set_default(&self, a: Option<Answer>) {
        self.shared.lock().unwrap().default = a;
    }

    pub fn received(&self) -> Vec<Received> {
        self.http
            .received()
            .into_iter()
            .map(|r| Received {
                at: r.at,
                text: r.json()["text"].as_str().unwrap_or_default().to_owned(),
                answered: r.answer,
            })
            .collect()
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

fn answer_for(req: &Req, answer: Answer) -> Reply {
    let is_json = req
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json"));
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&req.body).ok();
    let has_text = parsed.as_ref().is_some_and(|v| v["text"].is_string());
    // Slack's own checks come first: a body it cannot read is invalid_payload, no text is no_text.
    let answer = match (&answer, is_json, has_text) {
        (Answer::Ok, false, _) | (Answer::Ok, _, false) if parsed.is_none() => {
            Answer::Error(400, "invalid_payload", None)
        }
        (Answer::Ok, _, false) => Answer::Error(400, "no_text", None),
        _ => answer,
    };
    match answer {
        Answer::Ok => Reply::new(200, "ok", "text/html"),
        Answer::Error(status, body, retry_after) => {
            let reply = Reply::new(status, body, "text/html");
            match retry_after {
                Some(s) => reply.header("retry-after", s),
                None => reply,
            }
        }
        // Answered 200 "ok" only after the client gave up: recorded as "hang".
        Answer::Hang(d) => Reply::new(200, "hang", "text/html").after(d),
    }
}
