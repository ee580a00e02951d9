//! A fake Exment on a real socket ([`crate::fake_http`]), written from shared/refs/exment-api.md:
//! the api_key token grant with its 401 `{"message"}` answers, Bearer check (401 code 108),
//! scope check (403 code 106), unknown table 404 `[]`, single create 201, bulk 200, >100 rows 400
//! code 109, validation 400 code 103, 60 requests a minute (429 + Retry-After), query-column
//! lookup, and injected 500s, hangs, requests stored after the client gave up, token expiry,
//! token-endpoint answers (429, a proxy's 400/5xx), a broken proxy echoing the request, and a web
//! server's request-line limit (414).

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake_http::{FakeHttp, Reply, Req};

pub const CLIENT_ID: &str = "9d6c3a1e-0000-4000-8000-000000000001";
pub const CLIENT_SECRET: &str = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3";
pub const API_KEY: &str = "key_dpmqhSHm1dj7RfTUnenVOOngxlUTaB";
pub const TABLE: &str = "haccp_temp";
const TABLE_ID: &str = "7";

#[derive(Clone, Debug)]
pub enum Inject {
    /// Answer 500.
    Fail500,
    /// Store the rows, then answer only after this long (the client times out first).
    AcceptThenHang(Duration),
    /// Answer nothing for this long, then store the rows (Exment finishing a request the
    /// client has given up on): the rows appear after the client's timeout.
    HangThenStore(Duration),
    /// A broken proxy in front of Exment: answer with this status and a text page echoing the
    /// request (its headers and body).
    EchoRequest(u16),
}

/// What the token endpoint answers instead of granting (a proxy or Exment's limiter).
#[derive(Clone, Debug)]
pub enum TokenInject {
    /// This status, body and optional Retry-After (seconds).
    Answer(u16, String, Option<u64>),
    /// A broken proxy: this status and a text page echoing the request.
    EchoRequest(u16),
}

#[derive(Default)]
pub struct State {
    /// Token -> its scopes.
    tokens: std::collections::HashMap<String, String>,
    issued: u64,
    pub token_requests: u64,
    /// Stored records (their `value` objects).
    pub records: Vec<Value>,
    /// Times of data API calls (for the rate limit and the budget check).
    pub calls: Vec<Instant>,
    pub script: VecDeque<Inject>,
    /// After this many more data calls, every issued token becomes invalid.
    pub expire_after: Option<usize>,
    pub rate_limit: usize,
    /// 429 answers given.
    pub rejected_429: usize,
    pub token_script: VecDeque<TokenInject>,
    /// Like a web server's request-line limit: longer request targets get 414.
    pub max_url_len: Option<usize>,
    /// 414 answers given.
    pub rejected_414: usize,
    /// Request targets of the lookups answered (for URL length checks).
    pub lookup_urls: Vec<String>,
    /// Answers that echoed the request.
    pub echoed: usize,
    /// Rows of HangThenStore requests waiting to be stored.
    pub late_rows: usize,
}

#[derive(Clone)]
pub struct FakeExment {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    _http: FakeHttp,
}

impl FakeExment {
    /// Serves on a free port of 127.0.0.1 (on a runtime of its own, so from sync or async
    /// tests alike).
    pub fn start() -> FakeExment {
        let state = Arc::new(Mutex::new(State {
            rate_limit: 60,
            ..State::default()
        }));
        let s = state.clone();
        let http = FakeHttp::start(move |req| answer(req, &s));
        FakeExment {
            addr: http.addr,
            state,
            _http: http,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn keys(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .records
            .iter()
            .map(|r| r["unique_key"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The most data calls seen in any 60-second window.
    pub fn max_calls_per_minute(&self) -> usize {
        let calls = self.state.lock().unwrap().calls.clone();
        (0..calls.len())
            .map(|i| {
                calls[i..]
                    .iter()
                    .take_while(|t| t.duration_since(calls[i]) < Duration::from_secs(60))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}

fn text_reply(status: u16, body: String) -> Reply {
    Reply::new(status, &body, "text/html")
}

fn echo(status: u16, req: &Req) -> Reply {
    text_reply(
        status,
        format!(
            "<html><body><h1>{status} Bad Gateway</h1><pre>upstream failed for:\n{}\n{}</pre></body></html>",
            req.head(),
            String::from_utf8_lossy(&req.body)
        ),
    )
}

fn reply(status: u16, body: Value) -> Reply {
    Reply::json(status, body)
}

fn answer(req: &Req, state: &Arc<Mutex<State>>) -> Reply {
    let max_url_len = state.lock().unwrap().max_url_len;
    if let Some(limit) = max_url_len {
        if req.target.len() > limit {
            state.lock().unwrap().rejected_414 += 1;
            return text_reply(
                414,
                "<html><head><title>414 Request-URI Too Large</title></head></html>".into(),
            );
        }
    }
    let bearer = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let is_form = req
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));

    if req.path == "/admin/oauth/token" && req.method == "POST" {
        let inject = {
            let mut st = state.lock().unwrap();
            let inject = st.token_script.pop_front();
            if inject.is_some() {
                st.token_requests += 1;
            }
            inject
        };
        return match inject {
            Some(TokenInject::Answer(status, text, retry_after)) => {
                let content_type = if serde_json::from_str::<Value>(&text).is_ok() {
                    "application/json"
                } else {
                    "text/html"
                };
                let r = Reply::new(status, &text, content_type);
                match retry_after {
                    Some(s) => r.header("retry-after", s),
                    None => r,
                }
            }
            Some(TokenInject::EchoRequest(status)) => {
                state.lock().unwrap().echoed += 1;
                echo(status, req)
            }
            None => token(state, &req.body, is_form),
        };
    }
    let Some(rest) = req.path.strip_prefix("/admin/api/data/") else {
        return reply(404, json!({"message": "Not Found"}));
    };
    let (response, delay) = data(
        state,
        &req.method,
        rest,
        &req.target,
        req.query(),
        bearer,
        &req.body,
    );
    let response = match response {
        Answer::Echo(status) => {
            state.lock().unwrap().echoed += 1;
            echo(status, req)
        }
        Answer::Reply(r) => r,
    };
    match delay {
        Some(Delay::Answer(d)) => response.after(d),
        Some(Delay::Store(d, rows)) => {
            // Stored after `d` whether or not the client is still there.
            let s = state.clone();
            response
                .meanwhile(d, move || {
                    let mut st = s.lock().unwrap();
                    st.late_rows -= rows.len();
                    st.records.extend(rows);
                })
                .after(d + Duration::from_millis(100))
        }
        None => response,
    }
}

enum Delay {
    /// Answer after this long.
    Answer(Duration),
    /// Store these rows after this long (and answer later still).
    Store(Duration, Vec<Value>),
}

enum Answer {
    Reply(Reply),
    Echo(u16),
}

/// The data API, answered under the lock; a delay to apply before answering, if injected.
fn data(
    state: &Arc<Mutex<State>>,
    method: &str,
    rest: &str,
    target: &str,
    query: &str,
    bearer: Option<String>,
    body: &[u8],
) -> (Answer, Option<Delay>) {
    let no_delay = |r| (Answer::Reply(r), None);
    let mut st = state.lock().unwrap();
    // Bearer check first, as AuthenticateApi does.
    let Some(scopes) = bearer.as_ref().and_then(|t| st.tokens.get(t)).cloned() else {
        return no_delay(reply(
            401,
            json!({"code": "108", "message": "Could not authenticate. The access token is incorrect or has expired."}),
        ));
    };
    let needed: &[&str] = if method == "POST" {
        &["value_write"]
    } else {
        &["value_read", "value_write"]
    };
    if !scopes.split_whitespace().any(|s| needed.contains(&s)) {
        return no_delay(reply(
            403,
            json!({"code": "106", "message": "There is an error in the scope for executing the API. Please contact the developer."}),
        ));
    }
    let now = Instant::now();
    st.calls
        .retain(|t| now.duration_since(*t) < Duration::from_secs(3600));
    let recent: Vec<Instant> = st
        .calls
        .iter()
        .copied()
        .filter(|t| now.duration_since(*t) < Duration::from_secs(60))
        .collect();
    if recent.len() >= st.rate_limit {
        let wait = 60 - now.duration_since(recent[0]).as_secs().min(59);
        st.rejected_429 += 1;
        return no_delay(
            reply(429, json!({"message": "Too Many Attempts."})).header("retry-after", wait),
        );
    }
    st.calls.push(now);
    if let Some(n) = st.expire_after.as_mut() {
        if *n == 0 {
            st.tokens.clear();
            st.expire_after = None;
            return no_delay(reply(
                401,
                json!({"code": "108", "message": "Could not authenticate. The access token is incorrect or has expired."}),
            ));
        }
        *n -= 1;
    }
    let (table, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if table != TABLE && table != TABLE_ID {
        return no_delay(reply(404, json!([])));
    }
    if method == "GET" && tail == "query-column" {
        st.lookup_urls.push(target.to_owned());
        let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let q = params
            .iter()
            .find(|(k, _)| k == "q")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let wanted: HashSet<String> = q
            .split(',')
            .filter_map(|c| c.trim().strip_prefix("unique_key eq "))
            .map(str::to_owned)
            .collect();
        let data: Vec<Value> = st
            .records
            .iter()
            .filter(|r| r["unique_key"].as_str().is_some_and(|k| wanted.contains(k)))
            .map(|v| json!({"id": 1, "value": v}))
            .collect();
        let total = data.len();
        return no_delay(reply(
            200,
            json!({"current_page": 1, "data": data, "total": total, "per_page": 100}),
        ));
    }
    if method != "POST" || !tail.is_empty() {
        return no_delay(reply(404, json!({"message": "Not Found"})));
    }
    let inject = st.script.pop_front();
    match inject {
        Some(Inject::Fail500) => return no_delay(reply(500, json!({"message": "Server Error"}))),
        Some(Inject::EchoRequest(status)) => return (Answer::Echo(status), None),
        _ => {}
    }
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let (rows, single) = match &parsed["value"] {
        Value::Array(a) => (a.clone(), false),
        Value::Object(_) => (vec![parsed["value"].clone()], true),
        _ => {
            return no_delay(reply(
                400,
                json!({"errors": {"value": "The value field is required when data is not present."}, "code": "103"}),
            ))
        }
    };
    if rows.len() > 100 {
        return no_delay(reply(
            400,
            json!({"message": "The number of data that can be newly created at the same time is 100.", "code": "109"}),
        ));
    }
    for (i, row) in rows.iter().enumerate() {
        if !row["temp_c"].is_number() || !row["unique_key"].is_string() {
            return no_delay(reply(
                400,
                json!({"errors": [{"line_no": i, "error": {"temp_c": "The temp_c must be a number."}}], "code": "103"}),
            ));
        }
    }
    let created: Vec<Value> = rows.iter().map(|v| json!({"id": 1, "value": v})).collect();
    let delay = match inject {
        Some(Inject::AcceptThenHang(d)) => Some(Delay::Answer(d)),
        Some(Inject::HangThenStore(d)) => {
            st.late_rows += rows.len();
            Some(Delay::Store(d, rows.clone()))
        }
        _ => None,
    };
    if !matches!(delay, Some(Delay::Store(..))) {
        st.records.extend(rows.iter().cloned());
    }
    (
        Answer::Reply(if single {
            reply(201, created[0].clone())
        } else {
            reply(200, json!(created))
        }),
        delay,
    )
}

fn token(state: &Arc<Mutex<State>>, body: &[u8], is_form: bool) -> Reply {
    let p: Value = if is_form {
        let m: serde_json::Map<String, Value> = form_urlencoded::parse(body)
            .into_owned()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        Value::Object(m)
    } else {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    };
    let mut st = state.lock().unwrap();
    st.token_requests += 1;
    let msg = |m: &str| reply(401, json!({"message": m}));
    if p["grant_type"] != "api_key" {
        return msg("The authorization grant type is not supported by the authorization server.");
    }
    if p["client_id"] != CLIENT_ID || p["client_secret"] != CLIENT_SECRET {
        return msg("Client authentication failed");
    }
    let Some(key) = p["api_key"].as_str() else {
        return msg("The request is missing a required parameter, includes an invalid parameter value, includes a parameter more than once, or is otherwise malformed.");
    };
    if key != API_KEY {
        return msg("The user credentials were incorrect.");
    }
    let known = ["me", "table_read", "value_read", "value_write"];
    if !p["scope"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .all(|s| known.contains(&s))
    {
        return msg("The requested scope is invalid, unknown, or malformed");
    }
    st.issued += 1;
    let t = format!("eyJ0eXAiOiJKV1Q.fake.{}", st.issued);
    st.tokens.insert(
        t.clone(),
        p["scope"].as_str().unwrap_or_default().to_owned(),
    );
    reply(
        200,
        json!({"token_type": "Bearer", "expires_in": 31622400, "access_token": t, "refresh_token": "def50200fake"}),
    )
}
