//! The web console's routes: login with roles, sessions, CSRF, and the pages of genba-console
//! filled from the store. Login users are `[[http.users]]`; roles come from `[console]`. With no
//! HTTP users or keys configured (the loopback trial) the console is open and says so.
//!
//! Sessions live in memory (a restart asks users to log in again); the cookie is HttpOnly and
//! SameSite=Strict, and every form carries the session's CSRF token.

// The helpers return a ready answer (a redirect, a refusal page) as their error: handlers
// return it as is, once per request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{
    ConnectInfo, DefaultBodyLimit, Multipart, Path, Query, Request, State as AxumState,
};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use genba_auth::credentials::Credentials;
use genba_config::rules::{Condition, Rule};
use genba_console::pages::{self, DeviceCard, HaccpDevice, HaccpSheet, SlotValue, StreamChart};
use genba_console::{tr, Flash, Lang, Role, Viewer};
use genba_store::alarms::{self, Which};
use genba_store::devices::{self, DeviceChange};
use genba_store::streams::{self, Range, Resolution};
use genba_store::NewMessage;
use maud::Markup;

use crate::Shared;

mod provision;

const COOKIE: &str = "genba_session";
const LANG_COOKIE: &str = "genba_lang";

struct Session {
    user: String,
    role: Role,
    csrf: String,
    last_used: Instant,
}

/// Logins, roles and the login rate limit.
pub(crate) struct Console {
    users: Credentials,
    admins: Vec<String>,
    operators: Vec<String>,
    idle: Duration,
    /// No login configured: everyone is admin (the loopback trial).
    open: bool,
    /// The CSRF token of the open console (no sessions there).
    open_csrf: String,
    sessions: Mutex<HashMap<String, Session>>,
    logins: genba_telemetry::limiter::Limiter,
    pub slot_minutes: u32,
    pub aggregation: genba_config::Aggregation,
    /// `[exment] base_url` is set: the Delivery page shows the forwarder's ledger.
    pub exment_on: bool,
}

impl Console {
    pub fn new(
        http: &genba_config::HttpConfig,
        cfg: &genba_config::ConsoleConfig,
        exment: &genba_config::ExmentConfig,
    ) -> Console {
        Console {
            users: genba_config::credentials(&http.users),
            admins: cfg.admins.clone(),
            operators: cfg.operators.clone(),
            idle: Duration::from_secs(u64::from(cfg.session_minutes.max(1)) * 60),
            open: http.users.is_empty() && http.api_key_sha256.is_empty(),
            open_csrf: genba_auth::passwords::generate_api_key(),
            sessions: Mutex::default(),
            // Five tries, then one every 12 s per address.
            logins: genba_telemetry::limiter::Limiter::new(1.0 / 12.0, 5),
            slot_minutes: exment.slot_minutes,
            exment_on: exment.base_url.is_some(),
            aggregation: exment.aggregation,
        }
    }

    fn role_of(&self, user: &str) -> Role {
        if self.admins.iter().any(|a| a == user) {
            Role::Admin
        } else if self.operators.iter().any(|o| o == user) {
            Role::Operator
        } else {
            Role::Viewer
        }
    }

    /// The logged-in user of a request's cookie (refreshing its idle time).
    fn session(&self, headers: &HeaderMap) -> Option<(String, Role, String)> {
        let token = cookie(headers, COOKIE)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.last_used) < self.idle);
        let s = sessions.get_mut(&token)?;
        s.last_used = now;
        Some((s.user.clone(), s.role, s.csrf.clone()))
    }

    /// Whether a form post carries this request's CSRF token (session or open console).
    pub fn csrf_ok(&self, headers: &HeaderMap, presented: Option<&str>) -> bool {
        let expected = if self.open {
            Some(self.open_csrf.clone())
        } else {
            self.session(headers).map(|s| s.2)
        };
        match (expected, presented) {
            (Some(e), Some(p)) => {
                genba_auth::credentials::constant_time_eq(e.as_bytes(), p.as_bytes())
            }
            _ => false,
        }
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn lang_of(headers: &HeaderMap, q: &BTreeMap<String, String>) -> Lang {
    let explicit = q
        .get("lang")
        .cloned()
        .or_else(|| cookie(headers, LANG_COOKIE));
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    Lang::pick(explicit.as_deref(), accept)
}

/// Who is asking; without a login (where one is needed) a redirect to the login page.
fn viewer(
    state: &Shared,
    headers: &HeaderMap,
    q: &BTreeMap<String, String>,
    path: &str,
) -> Result<Viewer, Response> {
    let lang = lang_of(headers, q);
    let c = &state.console;
    if c.open {
        return Ok(Viewer {
            user: None,
            role: Role::Admin,
            csrf: c.open_csrf.clone(),
            lang,
            open: true,
        });
    }
    match c.session(headers) {
        Some((user, role, csrf)) => Ok(Viewer {
            user: Some(user),
            role,
            csrf,
            lang,
            open: false,
        }),
        None => {
            let next: String = form_urlencoded::byte_serialize(path.as_bytes()).collect();
            Err(Redirect::to(&format!("/login?next={next}")).into_response())
        }
    }
}

/// An HTML answer; a `lang=` choice in the query is remembered in a cookie.
fn html(markup: Markup, q: &BTreeMap<String, String>) -> Response {
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        markup.into_string(),
    )
        .into_response();
    if let Some(l) = q.get("lang").filter(|l| *l == "en" || *l == "ja") {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{LANG_COOKIE}={l}; Path=/; Max-Age=31536000; SameSite=Strict"
        )) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

fn status_page(v: &Viewer, status: StatusCode, text: &'static str) -> Response {
    message_page(v, status, tr(v.lang, text), tr(v.lang, text))
}

fn message_page(v: &Viewer, status: StatusCode, title: &str, text: &str) -> Response {
    let mut r = html(pages::message(v, title, text), &BTreeMap::new());
    *r.status_mut() = status;
    r
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/devices/:id", get(device_page).post(edit_device))
        .route("/devices/:id/command", post(send_command))
        .route("/devices/:id/update", post(update_device))
        .route("/devices/:id/stream", post(edit_stream))
        .route("/alarms", get(alarms_page))
        .route("/alarms/:id/ack", post(ack_alarm))
        .route("/haccp", get(haccp_page))
        .route("/haccp.csv", get(haccp_csv))
        .route("/delivery", get(delivery_page))
        .route("/delivery/retry", post(retry_parked))
        .route("/firmware", get(firmware_page))
        .route(
            "/firmware/pi-update",
            post(upload_pi_update).layer(DefaultBodyLimit::max(
                crate::system_update::MAX_BUNDLE_BYTES as usize + 65536,
            )),
        )
        .route(
            genba_console::provision::PATH,
            get(provision::form_page).post(provision::provision),
        )
        .route("/send", get(send_page))
        .route("/console/live", get(live))
        .route(
            "/assets/console.css",
            get(|| async { asset("text/css; charset=utf-8", genba_console::layout::CSS) }),
        )
        .route(
            "/assets/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", genba_console::layout::JS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

fn db_error(e: genba_store::StoreError) -> Response {
    tracing::error!(error = %e, "console: database");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the database is unavailable",
    )
        .into_response()
}

/// Form fields of a posted body (at most the bridge's body limit).
async fn form(state: &Shared, req: Request) -> Result<HashMap<String, String>, Response> {
    let body = crate::read_body(req, state)
        .await
        .map_err(IntoResponse::into_response)?;
    let pairs = crate::notify::parse_urlencoded(&body).map_err(IntoResponse::into_response)?;
    Ok(pairs.into_iter().collect())
}

/// A form post's viewer and fields, once its login, CSRF token and role are checked.
async fn posted(
    state: &Shared,
    req: Request,
    path: &str,
    need: Role,
) -> Result<(Viewer, HashMap<String, String>), Response> {
    let headers = req.headers().clone();
    let v = viewer(state, &headers, &BTreeMap::new(), path)?;
    let f = form(state, req).await?;
    if !state
        .console
        .csrf_ok(&headers, f.get("csrf").map(String::as_str))
    {
        return Err(status_page(
            &v,
            StatusCode::FORBIDDEN,
            "The form expired; please try again.",
        ));
    }
    if v.role < need {
        return Err(status_page(
            &v,
            StatusCode::FORBIDDEN,
            "Your role may not do this.",
        ));
    }
    Ok((v, f))
}

/// A form field trimmed, without control characters, at most `max` characters.
fn field(f: &HashMap<String, String>, key: &str, max: usize) -> Option<String> {
    f.get(key).map(|s| {
        s.trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(max)
            .collect()
    })
}

async fn login_page(headers: HeaderMap, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let next = q.get("next").cloned().unwrap_or_else(|| "/".into());
    html(
        genba_console::layout::login(lang_of(&headers, &q), None, &next),
        &q,
    )
}

/// Only local paths are followed after a login.
fn safe_next(next: Option<&String>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.clone(),
        _ => "/".into(),
    }
}

async fn login(
    AxumState(state): AxumState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    let via_tls = req.extensions().get::<crate::ViaTls>().is_some();
    let lang = lang_of(&headers, &BTreeMap::new());
    let f = match form(&state, req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let next = safe_next(f.get("next"));
    let refuse = |status: StatusCode, text: &'static str| {
        let mut r = html(
            genba_console::layout::login(lang, Some(tr(lang, text)), &next),
            &BTreeMap::new(),
        );
        *r.status_mut() = status;
        r
    };
    if state
        .console
        .logins
        .check(&[&format!("login:{}", peer.ip())], Instant::now())
        .is_err()
    {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts; wait a minute.",
        );
    }
    let user = f.get("user").cloned().unwrap_or_default();
    let password = f.get("password").cloned().unwrap_or_default();
    if user.is_empty() || !state.console.users.verify(&user, password.as_bytes()).await {
        tracing::info!(%user, peer = %peer.ip(), "console login refused");
        return refuse(StatusCode::UNAUTHORIZED, "Wrong user name or password.");
    }
    let token = genba_auth::passwords::generate_api_key();
    let role = state.console.role_of(&user);
    tracing::info!(%user, role = role.name(), "console login");
    state
        .console
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            token.clone(),
            Session {
                user,
                role,
                csrf: genba_auth::passwords::generate_api_key(),
                last_used: Instant::now(),
            },
        );
    // Over HTTPS the cookie is never sent in clear text.
    let secure = if via_tls { "; Secure" } else { "" };
    let mut r = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(AxumState(state): AxumState<Shared>, req: Request) -> Response {
    let headers = req.headers().clone();
    let f = match form(&state, req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if state
        .console
        .csrf_ok(&headers, f.get("csrf").map(String::as_str))
    {
        if let Some(token) = cookie(&headers, COOKIE) {
            state
                .console
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&token);
        }
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("genba_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// Every device with its streams and open alarms.
async fn cards(state: &Shared) -> Result<Vec<DeviceCard>, genba_store::StoreError> {
    let (list, all_streams, open) = state
        .db
        .run(|c| {
            Ok((
                devices::list(c)?,
                streams::all(c)?,
                alarms::list(c, Which::Open, None, 10_000)?,
            ))
        })
        .await?;
    let mut by_device: HashMap<String, Vec<streams::StreamInfo>> = HashMap::new();
    for s in all_streams {
        by_device.entry(s.device_id.clone()).or_default().push(s);
    }
    let mut alarms_of: HashMap<String, Vec<alarms::Alarm>> = HashMap::new();
    for a in open {
        alarms_of.entry(a.device_id.clone()).or_default().push(a);
    }
    let mut cards: Vec<DeviceCard> = list
        .into_iter()
        .map(|d| DeviceCard {
            streams: by_device.remove(&d.id).unwrap_or_default(),
            open_alarms: alarms_of.remove(&d.id).unwrap_or_default(),
            device: d,
        })
        .collect();
    pages::sort_cards(&mut cards, now_ms());
    Ok(cards)
}

async fn overview(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let v = match viewer(&state, &headers, &q, "/") {
        Ok(v) => v,
        Err(r) => return r,
    };
    match cards(&state).await {
        Ok(cards) => html(pages::overview(&v, &cards, now_ms()), &q),
        Err(e) => db_error(e),
    }
}

/// `/console/live`: a snapshot of every card whenever the journal moves (at most once a
/// second, and every 15 s regardless), until the client leaves or the bridge stops.
async fn live(AxumState(state): AxumState<Shared>, headers: HeaderMap) -> Response {
    let q = BTreeMap::new();
    let v = match viewer(&state, &headers, &q, "/") {
        Ok(v) => v,
        Err(_) => return StatusCode::UNAUTHORIZED.into_response(),
    };
    let committed = state.journal.committed();
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (state, committed, shutdown, true),
        move |(state, mut committed, mut shutdown, first)| async move {
            if !first {
                tokio::select! {
                    _ = committed.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(15)) => {}
                    _ = shutdown.changed() => return None,
                }
                // The consumer stores telemetry just after the journal commit; let it.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let data = match cards(&state).await {
                Ok(c) => pages::live_snapshot(v.lang, &c, now_ms()).to_string(),
                Err(_) => return None,
            };
            let event = Event::default().event("snapshot").data(data);
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (state, committed, shutdown, false),
            ))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn typed_rules(stored: &[alarms::StoredRule]) -> Vec<Rule> {
    stored
        .iter()
        .filter_map(|r| serde_json::from_str(&r.spec).ok())
        .collect()
}

async fn device_page(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let v = match viewer(&state, &headers, &q, &format!("/devices/{id}")) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let flash = q
        .get("saved")
        .map(|_| Flash::Ok(tr(v.lang, "Saved.").into()))
        .or_else(|| {
            q.get("sent")
                .map(|_| Flash::Ok(tr(v.lang, "Command queued for the device.").into()))
        });
    let (range_key, _, span) = pages::RANGES
        .iter()
        .find(|(k, _, _)| Some(*k) == q.get("range").map(String::as_str))
        .copied()
        .unwrap_or(pages::RANGES[0]);
    let to_ms = now_ms();
    let from_ms = to_ms - span;
    let key = id.clone();
    let loaded = state
        .db
        .run(move |c| {
            let Some(d) = devices::get(c, &key)? else {
                return Ok(None);
            };
            let list = streams::of_device(c, &key)?;
            let rules = typed_rules(&alarms::rules(c)?);
            let device_alarms = alarms::list(c, Which::All, Some(&key), 500)?;
            let resolution = genba_platform::query::resolution_for(from_ms, to_ms);
            let range = Range {
                from_ms,
                to_ms,
                limit: 100_000,
                newest_first: false,
            };
            let mut charts = Vec::new();
            let mut texts = Vec::new();
            for s in list {
                if s.kind != "number" {
                    texts.push(s);
                    continue;
                }
                let buckets = streams::buckets(c, s.id, resolution, range)?;
                let width = match resolution {
                    Resolution::Minute => 60_000,
                    Resolution::Hour => 3_600_000,
                    Resolution::Day => 86_400_000,
                };
                let thresholds = rules
                    .iter()
                    .filter(|r| r.selects(&d.id, &d.tags, &s.name))
                    .filter(|r| {
                        matches!(
                            r.condition,
                            Condition::Above
                                | Condition::AtOrAbove
                                | Condition::Below
                                | Condition::AtOrBelow
                        )
                    })
                    .filter_map(|r| r.threshold)
                    .collect();
                let alarm_periods = device_alarms
                    .iter()
                    .filter(|a| a.stream == s.name)
                    .map(|a| (a.raised_at_ms, a.cleared_at_ms.unwrap_or(to_ms)))
                    .collect();
                charts.push(StreamChart {
                    points: buckets
                        .iter()
                        .map(|b| (b.at_ms + width / 2, b.avg))
                        .collect(),
                    bands: if resolution == Resolution::Minute {
                        Vec::new()
                    } else {
                        buckets.iter().map(|b| (b.at_ms, b.min, b.max)).collect()
                    },
                    thresholds,
                    alarms: alarm_periods,
                    stream: s,
                });
            }
            let records = streams::records(
                c,
                &key,
                None,
                Range {
                    from_ms: 0,
                    to_ms: to_ms + 1,
                    limit: 20,
                    newest_first: true,
                },
            )?;
            Ok(Some(pages::DevicePage {
                device: d,
                charts,
                texts,
                range: range_key,
                from_ms,
                to_ms,
                records,
                alarms: device_alarms.into_iter().take(20).collect(),
            }))
        })
        .await;
    match loaded {
        Ok(Some(p)) => html(pages::device(&v, &p, flash), &q),
        Ok(None) => status_page(&v, StatusCode::NOT_FOUND, "Not found."),
        Err(e) => db_error(e),
    }
}

async fn edit_device(
    AxumState(state): AxumState<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (v, f) = match posted(&state, req, &format!("/devices/{id}"), Role::Admin).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let tags = f.get("tags").map(|t| {
        t.split(',')
            .map(|s| s.trim().chars().take(32).collect::<String>())
            .filter(|s| !s.is_empty())
            .take(16)
            .collect()
    });
    let change = DeviceChange {
        name: field(&f, "name", 64),
        location: field(&f, "location", 64),
        tags,
        ..Default::default()
    };
    let key = id.clone();
    match state
        .db
        .run(move |c| devices::update(c, &key, &change))
        .await
    {
        Ok(Some(_)) => Redirect::to(&format!("/devices/{id}?saved=1")).into_response(),
        Ok(None) => status_page(&v, StatusCode::NOT_FOUND, "Not found."),
        Err(e) => db_error(e),
    }
}

async fn edit_stream(
    AxumState(state): AxumState<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (v, f) = match posted(&state, req, &format!("/devices/{id}"), Role::Admin).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (name, label, unit) = (
        f.get("stream").cloned().unwrap_or_default(),
        field(&f, "label", 64),
        field(&f, "unit", 16),
    );
    let key = id.clone();
    match state
        .db
        .run(move |c| streams::describe(c, &key, &name, label.as_deref(), unit.as_deref()))
        .await
    {
        Ok(true) => Redirect::to(&format!("/devices/{id}?saved=1")).into_response(),
        Ok(false) => status_page(&v, StatusCode::NOT_FOUND, "Not found."),
        Err(e) => db_error(e),
    }
}

async fn send_command(
    AxumState(state): AxumState<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (v, f) = match posted(&state, req, &format!("/devices/{id}"), Role::Operator).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let payload = f.get("payload").cloned().unwrap_or_default();
    if payload.is_empty() || payload.len() > state.http.max_message_bytes {
        return status_page(&v, StatusCode::BAD_REQUEST, "Command");
    }
    let key = id.clone();
    match state.db.run(move |c| devices::get(c, &key)).await {
        Ok(Some(_)) => {}
        Ok(None) => return status_page(&v, StatusCode::NOT_FOUND, "Not found."),
        Err(e) => return db_error(e),
    }
    match queue_command(&state, &v, &id, payload.into_bytes()).await {
        Ok(()) => Redirect::to(&format!("/devices/{id}?sent=1")).into_response(),
        Err(r) => r,
    }
}

/// Who a journal row from the console names as its source: `console:USER`.
fn console_source(v: &Viewer) -> String {
    format!("console:{}", v.user.as_deref().unwrap_or("console"))
}

/// Journals a command for device `id` from the console (source `console:USER`); the broker
/// role's command sink publishes it on `devices/ID/commands`.
async fn queue_command(
    state: &Shared,
    v: &Viewer,
    id: &str,
    payload: Vec<u8>,
) -> Result<(), Response> {
    let message = NewMessage {
        source: console_source(v),
        topic: format!("devices/{id}/commands"),
        payload,
        qos: 1,
        retain: false,
        mqtt_pid: None,
        dup: false,
    };
    match crate::journal_message(state, message).await {
        Ok(_) => Ok(()),
        Err(problem) => Err(problem.into_response()),
    }
}

/// The firmware page: kept images, the version each device reports, update buttons.
async fn firmware_page(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let v = match viewer(&state, &headers, &q, "/firmware") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let flash = q
        .get("updated")
        .map(|device| {
            Flash::Ok(format!(
                "{} ({device})",
                tr(v.lang, "Update queued for the device.")
            ))
        })
        .or_else(|| {
            q.get("pi_update").map(|_| {
                Flash::Ok(
                    tr(
                        v.lang,
                        "Update bundle received: the Pi checks its signature, installs it and restarts to try it.",
                    )
                    .into(),
                )
            })
        });
    let pi = crate::system_update::status(&state.updates_dir);
    let loaded = state
        .db
        .run(|c| {
            Ok((
                genba_store::firmware::list(c)?,
                devices::list(c)?,
                genba_store::firmware::requests(c)?,
            ))
        })
        .await;
    match loaded {
        Ok((images, all, asked)) => html(
            pages::firmware(&v, &images, &all, &asked, &pi_view(&pi), flash),
            &q,
        ),
        Err(e) => db_error(e),
    }
}

fn pi_view(pi: &crate::system_update::PiUpdate) -> pages::PiUpdate<'_> {
    pages::PiUpdate {
        slot: pi.slot,
        release: pi.release.as_deref(),
        pending: pi.pending,
        results: &pi.results,
    }
}

/// An admin's upload of an update bundle for the Pi itself: a multipart form with `csrf` first,
/// then the file `bundle`, streamed to disk for the image's installer
/// ([`crate::system_update`]).
async fn upload_pi_update(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    multipart: Multipart,
) -> Response {
    let mut r = receive_pi_update(state, headers, multipart).await;
    // The multipart reader stops at the closing boundary without reading the body to its end,
    // and hyper then closes the connection: say so, so that no client sends on it again.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn receive_pi_update(
    state: Shared,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    let v = match viewer(&state, &headers, &BTreeMap::new(), "/firmware") {
        Ok(v) => v,
        Err(r) => return r,
    };
    if v.role < Role::Admin {
        drain(multipart).await;
        return status_page(&v, StatusCode::FORBIDDEN, "Your role may not do this.");
    }
    let title = tr(v.lang, "Update of this Genba");
    let mut csrf_ok = false;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return message_page(&v, StatusCode::BAD_REQUEST, title, &e.body_text());
            }
        };
        match field.name() {
            Some("csrf") => {
                let token = field.text().await.unwrap_or_default();
                csrf_ok = state.console.csrf_ok(&headers, Some(&token));
            }
            Some("bundle") if !csrf_ok => {
                drain(multipart).await;
                return status_page(
                    &v,
                    StatusCode::FORBIDDEN,
                    "The form expired; please try again.",
                );
            }
            Some("bundle") => {
                let saved = crate::system_update::save(&state.updates_dir, field).await;
                drain(multipart).await;
                return match saved {
                    Ok(size) => {
                        tracing::info!(size, user = ?v.user, "console: Pi update bundle uploaded");
                        Redirect::to("/firmware?pi_update=uploaded").into_response()
                    }
                    Err(e) => {
                        let status = e.status();
                        tracing::warn!(error = %e, "console: Pi update bundle refused");
                        message_page(&v, status, title, &e.to_string())
                    }
                };
            }
            _ => {}
        }
    }
    message_page(
        &v,
        StatusCode::BAD_REQUEST,
        title,
        tr(v.lang, "Choose the update bundle (.raucb) to upload."),
    )
}

/// Reads what is left of a refused upload, so the browser gets the answer instead of a reset
/// connection while it is still sending (the route's body limit bounds it).
async fn drain(mut multipart: Multipart) {
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(_)) = field.chunk().await {}
    }
}

/// Queues the `update` command for the image chosen on the firmware page (operators).
async fn update_device(
    AxumState(state): AxumState<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (v, f) = match posted(&state, req, "/firmware", Role::Operator).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let image = f.get("image").cloned().unwrap_or_default();
    let key = id.clone();
    let found = state
        .db
        .run(move |c| {
            let device = devices::get(c, &key)?;
            let image = match genba_store::firmware::is_sha256(&image) {
                true => genba_store::firmware::find(c, &image)?,
                false => None,
            };
            Ok((device, image))
        })
        .await;
    let image = match found {
        Ok((Some(_), Some(image))) => image,
        Ok(_) => return status_page(&v, StatusCode::NOT_FOUND, "Not found."),
        Err(e) => return db_error(e),
    };
    let payload = match genba_platform::updates::update_command(&image) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "console: update refused");
            return status_page(&v, StatusCode::UNPROCESSABLE_ENTITY, "Update");
        }
    };
    if let Err(r) = queue_command(&state, &v, &id, payload.into_bytes()).await {
        return r;
    }
    tracing::info!(device = %id, version = %image.version, "console: update queued");
    let asked = genba_platform::updates::request(&image, &id, &console_source(&v));
    if let Err(e) = state
        .db
        .run(move |c| genba_store::firmware::record_request(c, &asked))
        .await
    {
        // The command is queued; only the page's note of it is missing.
        tracing::warn!(error = %e, device = %id, "console: the update request was not recorded");
    }
    Redirect::to(&format!("/firmware?updated={id}")).into_response()
}

async fn alarms_page(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let v = match viewer(&state, &headers, &q, "/alarms") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let flash = q
        .get("acked")
        .map(|_| Flash::Ok(tr(v.lang, "Acknowledged").into()));
    match state
        .db
        .run(|c| {
            Ok((
                alarms::list(c, Which::Open, None, 500)?,
                alarms::list(c, Which::All, None, 200)?,
            ))
        })
        .await
    {
        Ok((open, all)) => {
            let past: Vec<_> = all
                .into_iter()
                .filter(|a| a.cleared_at_ms.is_some())
                .collect();
            html(pages::alarms(&v, &open, &past, flash), &q)
        }
        Err(e) => db_error(e),
    }
}

async fn ack_alarm(
    AxumState(state): AxumState<Shared>,
    Path(id): Path<i64>,
    req: Request,
) -> Response {
    let (v, f) = match posted(&state, req, "/alarms", Role::Operator).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let note = f
        .get("note")
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    if note.is_empty() || note.len() > 2000 {
        return status_page(
            &v,
            StatusCode::BAD_REQUEST,
            "Corrective action taken (required)",
        );
    }
    let by = v.user.clone().unwrap_or_else(|| "console".into());
    match state
        .db
        .run(move |c| alarms::acknowledge(c, id, &by, &note))
        .await
    {
        Ok(alarms::Ack::NoSuchAlarm) => status_page(&v, StatusCode::NOT_FOUND, "Not found."),
        Ok(_) => Redirect::to("/alarms?acked=1").into_response(),
        Err(e) => db_error(e),
    }
}

/// The period of a HACCP sheet: `month=YYYY-MM` (default: this month) or `day=YYYY-MM-DD`,
/// in the appliance's time zone.
fn period(q: &BTreeMap<String, String>) -> Option<(String, bool, i64, i64)> {
    use chrono::{Datelike, Local, NaiveDate, TimeZone};
    let start_of = |d: NaiveDate| {
        Local
            .from_local_datetime(&d.and_hms_opt(0, 0, 0)?)
            .earliest()
            .map(|t| t.timestamp_millis())
    };
    if let Some(day) = q.get("day") {
        let d = NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
        return Some((
            d.format("%Y-%m-%d").to_string(),
            false,
            start_of(d)?,
            start_of(d.succ_opt()?)?,
        ));
    }
    let first = match q.get("month") {
        Some(m) => NaiveDate::parse_from_str(&format!("{m}-01"), "%Y-%m-%d").ok()?,
        None => {
            let today = Local::now().date_naive();
            NaiveDate::from_ymd_opt(today.year(), today.month(), 1)?
        }
    };
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)?
    };
    Some((
        first.format("%Y-%m").to_string(),
        true,
        start_of(first)?,
        start_of(next)?,
    ))
}

async fn sheet(
    state: &Shared,
    q: &BTreeMap<String, String>,
) -> Result<Option<HaccpSheet>, genba_store::StoreError> {
    let Some((name, monthly, from_ms, to_ms)) = period(q) else {
        return Ok(None);
    };
    let slot_ms = i64::from(state.console.slot_minutes.max(1)) * 60_000;
    let agg = state.console.aggregation;
    let slot_minutes = state.console.slot_minutes;
    state
        .db
        .run(move |c| {
            let mut out = Vec::new();
            for d in devices::list(c)? {
                let rows: Vec<genba_exment::slots::ReadingRow> =
                    streams::readings(c, &d.id, from_ms, to_ms)?
                        .into_iter()
                        .map(|(probe, ts, celsius)| genba_exment::slots::ReadingRow {
                            device_id: d.id.clone(),
                            sensor_hw_id: probe,
                            ts_device: ts,
                            celsius,
                        })
                        .collect();
                let deviations: Vec<alarms::Alarm> =
                    alarms::list(c, Which::All, Some(&d.id), 10_000)?
                        .into_iter()
                        .filter(|a| a.raised_at_ms >= from_ms && a.raised_at_ms < to_ms)
                        .rev()
                        .collect();
                if rows.is_empty() && deviations.is_empty() {
                    continue;
                }
                let labels: HashMap<String, String> = streams::of_device(c, &d.id)?
                    .into_iter()
                    .map(|s| (s.name, s.label))
                    .collect();
                let mut probes: BTreeMap<String, Vec<SlotValue>> = BTreeMap::new();
                for r in genba_exment::slots::build(&rows, slot_ms, agg, i64::MAX) {
                    probes.entry(r.sensor_hw_id).or_default().push(SlotValue {
                        slot_ms: r.slot_start_ms,
                        celsius: r.celsius,
                    });
                }
                out.push(HaccpDevice {
                    probes: probes
                        .into_iter()
                        .map(|(id, values)| {
                            let label = labels.get(&id).cloned().unwrap_or_default();
                            (id, label, values)
                        })
                        .collect(),
                    deviations,
                    device: d,
                });
            }
            Ok(Some(HaccpSheet {
                period: name,
                monthly,
                slot_minutes,
                devices: out,
            }))
        })
        .await
}

async fn haccp_page(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let v = match viewer(&state, &headers, &q, "/haccp") {
        Ok(v) => v,
        Err(r) => return r,
    };
    match sheet(&state, &q).await {
        Ok(Some(s)) => html(pages::haccp(&v, &s), &q),
        Ok(None) => status_page(&v, StatusCode::BAD_REQUEST, "Date"),
        Err(e) => db_error(e),
    }
}

async fn haccp_csv(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let v = match viewer(&state, &headers, &q, "/haccp") {
        Ok(v) => v,
        Err(r) => return r,
    };
    match sheet(&state, &q).await {
        Ok(Some(s)) => {
            let disposition = format!("attachment; filename=\"haccp-{}.csv\"", s.period);
            let mut r = (
                [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                format!("\u{feff}{}", pages::haccp_csv(&s)),
            )
                .into_response();
            if let Ok(d) = HeaderValue::from_str(&disposition) {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, d);
            }
            r
        }
        Ok(None) => status_page(&v, StatusCode::BAD_REQUEST, "Date"),
        Err(e) => db_error(e),
    }
}

async fn delivery_page(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let v = match viewer(&state, &headers, &q, "/delivery") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let flash = q
        .get("retried")
        .map(|n| Flash::Ok(format!("{}: {n}", tr(v.lang, "Retry parked"))));
    let exment_on = state.console.exment_on;
    let loaded = state.db.read(move |reader| reader.status(exment_on)).await;
    let names = retryable_sinks(&state);
    let retryable: Vec<&str> = names.iter().map(String::as_str).collect();
    match loaded {
        Ok(status) => html(pages::delivery(&v, &status, &retryable, flash), &q),
        Err(e) => db_error(e),
    }
}

/// Sinks whose parked messages an operator may send again from the Delivery page: the
/// telemetry consumer (after adding or enabling the device), every delivery sink and the rule
/// webhooks (after fixing the receiver), as `genba sinks retry` does.
fn retryable_sinks(state: &Shared) -> Vec<String> {
    let fixed = [genba_telemetry::READINGS_SINK, "rule-webhooks"];
    let configured = state.sinks.iter().map(genba_config::SinkConfig::store_name);
    fixed
        .into_iter()
        .map(str::to_owned)
        .chain(configured)
        .collect()
}

/// Asks a sink to try its parked messages again.
async fn retry_parked(AxumState(state): AxumState<Shared>, req: Request) -> Response {
    let (v, f) = match posted(&state, req, "/delivery", Role::Operator).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let sink = f.get("sink").cloned().unwrap_or_default();
    if !retryable_sinks(&state).contains(&sink) {
        return status_page(&v, StatusCode::BAD_REQUEST, "Your role may not do this.");
    }
    match state.db.run(move |c| alarms::request_retry(c, &sink)).await {
        Ok(n) => Redirect::to(&format!("/delivery?retried={n}")).into_response(),
        Err(e) => db_error(e),
    }
}

async fn send_page(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let v = match viewer(&state, &headers, &q, "/send") {
        Ok(v) => v,
        Err(r) => return r,
    };
    html(pages::send_form(&v, &state.http.default_topic, None), &q)
}

/// For `/notify` posted from the console's form: the viewer when the request has a console
/// login (or the console is open) and a valid CSRF token.
pub(crate) fn form_viewer(
    state: &Shared,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Option<Viewer> {
    let v = viewer(state, headers, &BTreeMap::new(), "/send").ok()?;
    state.console.csrf_ok(headers, csrf).then_some(v)
}

/// The HTML answer to a browser's `/notify` form post.
pub(crate) fn sent_page(state: &Shared, v: &Viewer, id: i64, topic: &str) -> Response {
    let sinks: Vec<String> = state
        .sinks
        .iter()
        .filter(|h| {
            h.filters
                .iter()
                .any(|f| genba_config::topic::matches(f, topic))
        })
        .map(|h| format!("{} {}", h.kind.as_str(), h.name))
        .collect();
    html(pages::sent(v, id, topic, &sinks), &BTreeMap::new())
}

/// The viewer for a page answering a request that authenticated otherwise (API key, Basic).
pub(crate) fn any_viewer(state: &Shared, headers: &HeaderMap) -> Viewer {
    viewer(state, headers, &BTreeMap::new(), "/").unwrap_or_else(|_| Viewer {
        user: None,
        role: Role::Viewer,
        csrf: String::new(),
        lang: lang_of(headers, &BTreeMap::new()),
        open: false,
    })
}
