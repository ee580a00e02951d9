//! The ThingScale-style REST API v2 (requirements P1-P7): devices, channels, streams,
//! publish, and the HTTP device connector `/post_v2/`.
//!
//! Auth: `X-APITOKEN: <token>` (ThingScale's header) or `Authorization: Bearer <token>`, made by
//! `genba tokens add`, with scopes `read` < `write` < `admin`. Errors are ThingScale's
//! `{"error":"UPPER_SNAKE"}` with a `message` and, where one is at fault, the `field`.
//! Query parameters: ThingScale's headers (`X-STARTTIME`, `X-ENDTIME`, `X-PAGELIMIT`,
//! `X-PAGESORT`, `X-AGGREGATE`, `X-TAGNAME`) or the query string (`start`, `end`, `limit`,
//! `sort`, `aggregate`, `tag`, `resolution`); times RFC 3339, epoch ms or local
//! `YYYY-MM-DD hh:mm`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, Query, Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use genba_auth::passwords::api_key_digest;
use genba_firmware_core::telemetry::validate_device_id;
use genba_platform::query::{self, Aggregate};
use genba_store::devices::{self, Device, DeviceChange};
use genba_store::streams::{self, Range, Resolution};
use genba_store::tokens::{self, Token};
use genba_store::NewMessage;
use serde_json::{json, Map, Value};

use crate::Shared;

/// The OpenAPI 3.1 description of this API, served at `/v2/openapi.json`; the tests check
/// every `/v2` answer they get against it.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Requests a second per API token (ThingScale: 20 req/s), bursts of [`BURST`]; beyond: 429.
pub const RATE_PER_SEC: f64 = 20.0;
pub const BURST: u32 = 40;
/// Largest `X-PAGELIMIT`.
const MAX_PAGE: usize = 10_000;
/// A device id as a topic level: what the firmware core accepts.
const DEVICE_ID_RULE: &str = "1-32 characters from A-Z a-z 0-9 - _ .";

/// An API error: status, ThingScale's code, what was wrong and the field at fault.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }
    fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    fn bad(field: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message).field(field)
    }
    fn bad_json(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "BAD_JSON_FORMAT", message).field("body")
    }
    fn no_device(id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NO_DEVICE",
            format!("no device {id:?}"),
        )
        .field("device_id")
    }
    fn store(e: genba_store::StoreError) -> Self {
        tracing::error!(error = %e, "v2 api: database");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the database is unavailable",
        )
    }
}

impl From<crate::reply::Problem> for ApiError {
    fn from(p: crate::reply::Problem) -> Self {
        let code = match p.status {
            StatusCode::PAYLOAD_TOO_LARGE => "BODY_TOO_LARGE",
            StatusCode::REQUEST_TIMEOUT => "TIMEOUT",
            StatusCode::SERVICE_UNAVAILABLE => "UNAVAILABLE",
            StatusCode::UNAUTHORIZED => "AUTH_REQUIRED",
            StatusCode::FORBIDDEN => "FORBIDDEN",
            StatusCode::TOO_MANY_REQUESTS => "RATE_LIMITED",
            _ => "BAD_REQUEST",
        };
        ApiError {
            status: p.status,
            code,
            message: p.error,
            field: p.field.map(|f| f.into_owned()),
            retry_after: p.retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if let Some(f) = self.field {
            body["field"] = json!(f);
        }
        let mut r = json_response(self.status, &body);
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert("x-ratelimit-limit", HeaderValue::from(RATE_PER_SEC as u64));
            r.headers_mut()
                .insert("x-ratelimit-remaining", HeaderValue::from(0u64));
        }
        r
    }
}

type ApiResult = Result<Response, ApiError>;

fn json_response(status: StatusCode, body: &Value) -> Response {
    crate::reply::json(status, body).into_response()
}

fn ok(body: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, &body))
}

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/device", get(list_devices).post(create_device))
        .route(
            "/device/:id",
            get(get_device).put(update_device).delete(delete_device),
        )
        .route("/device/:id/streams", get(device_streams))
        .route("/device/:id/streams/*name", put(describe_stream))
        .route("/channel", get(list_channels))
        .route("/channel/:channel", get(get_channel))
        .route("/stream/:channel", get(channel_stream))
        .route("/stream/:device/*name", get(one_stream))
        .route("/publish/:id", post(publish))
        .route("/token", get(whoami))
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    OPENAPI,
                )
            }),
        )
        .route("/rule", get(list_rules).post(create_rule))
        .route(
            "/rule/:name",
            get(get_rule).put(replace_rule).delete(delete_rule),
        )
        .route("/session", get(list_sessions))
        .route("/firmware", get(list_firmware))
        .route(
            "/system/update",
            get(system_update_status).put(upload_system_update),
        )
        .route("/device/:id/update", get(get_update).post(request_update))
        .route("/user", get(list_users).post(create_user))
        .route("/user/:id", axum::routing::delete(revoke_user))
        .route("/event", get(list_events).post(create_event))
        .route(
            "/event/:id",
            get(get_event).put(replace_event).delete(delete_event),
        )
        .route("/alarm", get(list_alarms))
        .route("/alarm/:id", get(get_alarm))
        .route("/alarm/:id/ack", post(ack_alarm))
}

/// Checks the request's API token for `scope` and its rate (429 with `Retry-After`).
async fn authorize(
    state: &Shared,
    headers: &HeaderMap,
    scope: &'static str,
) -> Result<Token, ApiError> {
    let presented = headers
        .get("x-apitoken")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_owned())
        });
    let Some(presented) = presented.filter(|t| !t.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "AUTH_REQUIRED",
            "send X-APITOKEN (or Authorization: Bearer) with a token from `genba tokens add`",
        )
        .field("x-apitoken"));
    };
    let digest = api_key_digest(&presented);
    let token = state
        .db
        .run(move |c| tokens::find(c, &digest))
        .await
        .map_err(ApiError::store)?;
    let token = match token {
        Some(t) if t.enabled => t,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "AUTH_REQUIRED",
                "this API token is revoked",
            )
            .field("x-apitoken"))
        }
        None => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "AUTH_REQUIRED",
                "unknown API token",
            )
            .field("x-apitoken"))
        }
    };
    if let Err(wait) = state
        .v2_limiter
        .check(&[&format!("token:{}", token.id)], Instant::now())
    {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            format!("more than {RATE_PER_SEC} requests a second with this token"),
        );
        e.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        return Err(e);
    }
    if !token.allows(scope) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!("this token lacks the scope {scope:?}"),
        )
        .field("x-apitoken"));
    }
    Ok(token)
}

async fn whoami(AxumState(state): AxumState<Shared>, headers: HeaderMap) -> ApiResult {
    let token = authorize(&state, &headers, tokens::SCOPE_READ).await?;
    ok(json!({"id": token.id, "name": token.name, "scopes": token.scopes}))
}

fn device_json(d: &Device) -> Value {
    json!({
        "device_id": d.id,
        "mapped_ch": d.channel,
        "name": d.name,
        "description": d.description,
        "location": d.location,
        "device_type": d.device_type,
        "tags": d.tags,
        "enabled": d.enabled,
        "provisioned": d.provisioned,
        "activate_at": query::format_time(d.created_at_ms),
        "last_seen_at": d.last_seen_at_ms.map(query::format_time),
        "last_address": d.last_address,
        "firmware": d.firmware,
        "rssi": d.rssi,
    })
}

async fn list_devices(AxumState(state): AxumState<Shared>, headers: HeaderMap) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let list = state.db.run(devices::list).await.map_err(ApiError::store)?;
    ok(Value::Array(list.iter().map(device_json).collect()))
}

async fn load_device(state: &Shared, id: &str) -> Result<Device, ApiError> {
    let key = id.to_owned();
    state
        .db
        .run(move |c| devices::get(c, &key))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::no_device(id))
}

async fn get_device(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    ok(device_json(&load_device(&state, &id).await?))
}

/// Reads a JSON object body (400 `BAD_JSON_FORMAT` naming what is wrong).
/// A request that sends device `id` a command: a write token, a JSON object body, the device.
async fn command_request(
    state: &Shared,
    id: &str,
    req: Request,
) -> Result<(Token, Map<String, Value>, Device), ApiError> {
    let token = authorize(state, req.headers(), tokens::SCOPE_WRITE).await?;
    let obj = json_body(state, req).await?;
    let device = load_device(state, id).await?;
    Ok((token, obj, device))
}

async fn json_body(state: &Shared, req: Request) -> Result<Map<String, Value>, ApiError> {
    let body = crate::read_body(req, state).await?;
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::bad_json("is not valid UTF-8"))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_json("must be a JSON object")),
        Err(e) => Err(ApiError::bad_json(format!("is not valid JSON: {e}"))),
    }
}

/// Refuses a body with a field outside `known`, naming it and listing the known ones.
fn only_known(obj: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad(
            k,
            format!("unknown field (known: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn opt_string(obj: &Map<String, Value>, key: &str, max: usize) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max && !s.chars().any(char::is_control) => {
            Ok(Some(s.clone()))
        }
        Some(Value::String(_)) => Err(ApiError::bad(
            key,
            format!("at most {max} characters, no control characters"),
        )),
        Some(_) => Err(ApiError::bad(key, "must be a string")),
    }
}

/// The editable fields of a device from a request body; unknown keys are refused.
fn device_change(obj: &Map<String, Value>) -> Result<DeviceChange, ApiError> {
    const KNOWN: &[&str] = &[
        "device_id",
        "name",
        "description",
        "location",
        "device_type",
        "tags",
        "enabled",
        "mapped_ch",
        "manufacturer",
    ];
    only_known(obj, KNOWN)?;
    let tags = match obj.get("tags") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut tags = Vec::with_capacity(items.len());
            for (i, t) in items.iter().enumerate() {
                match t.as_str() {
                    Some(s)
                        if !s.is_empty() && s.len() <= 32 && !s.chars().any(char::is_control) =>
                    {
                        tags.push(s.to_owned())
                    }
                    _ => {
                        return Err(ApiError::bad(
                            &format!("tags[{i}]"),
                            "must be a string of 1-32 characters",
                        ))
                    }
                }
            }
            if tags.len() > 16 {
                return Err(ApiError::bad("tags", "at most 16 tags"));
            }
            Some(tags)
        }
        Some(_) => return Err(ApiError::bad("tags", "must be an array of strings")),
    };
    let enabled = match obj.get("enabled") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::bad("enabled", "must be true or false")),
    };
    Ok(DeviceChange {
        name: opt_string(obj, "name", 64)?,
        description: opt_string(obj, "description", 256)?,
        location: opt_string(obj, "location", 64)?,
        device_type: opt_string(obj, "device_type", 32)?,
        tags,
        enabled,
    })
}

fn check_device_id(id: &str) -> Result<(), ApiError> {
    if id == "0" {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "DEVICE_ID_ZERO",
            "device_id 0 is not allowed",
        )
        .field("device_id"));
    }
    validate_device_id(id)
        .map_err(|_| ApiError::bad("device_id", format!("{id:?}: {DEVICE_ID_RULE}")))
}

async fn create_device(AxumState(state): AxumState<Shared>, req: Request) -> ApiResult {
    authorize(&state, req.headers(), tokens::SCOPE_WRITE).await?;
    let obj = json_body(&state, req).await?;
    let id = match obj.get("device_id") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::bad("device_id", "must be a string")),
        None => return Err(ApiError::bad("device_id", "is required")),
    };
    check_device_id(&id)?;
    let change = device_change(&obj)?;
    let key = id.clone();
    let added = state
        .db
        .run(move |c| devices::add(c, &key, &change))
        .await
        .map_err(ApiError::store)?;
    match added {
        Some(d) => Ok(json_response(StatusCode::CREATED, &device_json(&d))),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "DEVICE_EXISTS",
            format!("device {id:?} exists already"),
        )
        .field("device_id")),
    }
}

async fn update_device(
    AxumState(state): AxumState<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult {
    authorize(&state, req.headers(), tokens::SCOPE_WRITE).await?;
    let obj = json_body(&state, req).await?;
    if let Some(other) = obj
        .get("device_id")
        .filter(|v| v.as_str() != Some(id.as_str()))
    {
        return Err(ApiError::bad(
            "device_id",
            format!("{other} differs from the device in the path; ids cannot change"),
        ));
    }
    let change = device_change(&obj)?;
    let key = id.clone();
    let updated = state
        .db
        .run(move |c| devices::update(c, &key, &change))
        .await
        .map_err(ApiError::store)?;
    ok(device_json(
        &updated.ok_or_else(|| ApiError::no_device(&id))?,
    ))
}

async fn delete_device(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_ADMIN).await?;
    let key = id.clone();
    let deleted = state
        .db
        .run(move |c| devices::delete(c, &key))
        .await
        .map_err(ApiError::store)?;
    if !deleted {
        return Err(ApiError::no_device(&id));
    }
    ok(json!({"device_id": id, "deleted": true}))
}

fn stream_json(s: &streams::StreamInfo) -> Value {
    json!({
        "name": s.name,
        "kind": s.kind,
        "label": s.label,
        "unit": s.unit,
        "last_update": s.last_at_ms.map(query::format_time),
        "last_value": s.last_value.map(Value::from).or_else(|| s.last_text.clone().map(Value::from)),
    })
}

async fn device_streams(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let device = load_device(&state, &id).await?;
    let list = state
        .db
        .run(move |c| streams::of_device(c, &device.id))
        .await
        .map_err(ApiError::store)?;
    ok(json!({"device_id": id, "streams": list.iter().map(stream_json).collect::<Vec<_>>()}))
}

async fn describe_stream(
    AxumState(state): AxumState<Shared>,
    Path((id, name)): Path<(String, String)>,
    req: Request,
) -> ApiResult {
    authorize(&state, req.headers(), tokens::SCOPE_WRITE).await?;
    let obj = json_body(&state, req).await?;
    only_known(&obj, &["label", "unit"])?;
    let label = opt_string(&obj, "label", 64)?;
    let unit = opt_string(&obj, "unit", 16)?;
    load_device(&state, &id).await?;
    let (d, n) = (id.clone(), name.clone());
    let found = state
        .db
        .run(move |c| {
            if !streams::describe(c, &d, &n, label.as_deref(), unit.as_deref())? {
                return Ok(None);
            }
            streams::get(c, &d, &n)
        })
        .await
        .map_err(ApiError::store)?;
    let s = found.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NO_STREAM",
            format!("device {id:?} has no stream {name:?}"),
        )
        .field("stream")
    })?;
    ok(stream_json(&s))
}

fn channel_json(d: &Device) -> Value {
    json!({
        "channel": d.channel,
        "channel_name": if d.name.is_empty() { d.id.clone() } else { d.name.clone() },
        "device_id": d.id,
        "tag": d.tags.first(),
        "last_update": d.last_seen_at_ms.map(query::format_time),
    })
}

async fn list_channels(AxumState(state): AxumState<Shared>, headers: HeaderMap) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let list = state.db.run(devices::list).await.map_err(ApiError::store)?;
    ok(Value::Array(list.iter().map(channel_json).collect()))
}

/// A channel number or a device id.
async fn channel_device(state: &Shared, channel: &str) -> Result<Device, ApiError> {
    if let Ok(n) = channel.parse::<i64>() {
        return state
            .db
            .run(move |c| devices::by_channel(c, n))
            .await
            .map_err(ApiError::store)?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NO_CHANNEL",
                    format!("no channel {n}"),
                )
                .field("channel")
            });
    }
    load_device(state, channel).await
}

async fn get_channel(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    ok(channel_json(&channel_device(&state, &channel).await?))
}

/// Query options from ThingScale's headers or the query string (the query string wins).
struct StreamQuery {
    range: Range,
    aggregate: Option<Aggregate>,
    resolution: Option<Resolution>,
    tag: Option<String>,
}

fn stream_query(
    headers: &HeaderMap,
    q: &BTreeMap<String, String>,
) -> Result<StreamQuery, ApiError> {
    let param = |query_key: &str, header: &str| -> Result<Option<String>, ApiError> {
        if let Some(v) = q.get(query_key) {
            return Ok(Some(v.clone()));
        }
        match headers.get(header) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(|s| Some(s.to_owned()))
                .map_err(|_| ApiError::bad(header, "must be visible ASCII")),
        }
    };
    let now = chrono::Utc::now().timestamp_millis();
    let time = |key: &str, header: &str| -> Result<Option<i64>, ApiError> {
        match param(key, header)? {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("last") || v.eq_ignore_ascii_case("now") => Ok(Some(now + 1)),
            Some(v) => query::parse_time(&v).map(Some).ok_or_else(|| {
                ApiError::bad(
                    key,
                    format!("{v:?}: use RFC 3339 (2026-12-01T09:00:00+09:00), epoch ms or YYYY-MM-DD hh:mm"),
                )
            }),
        }
    };
    let start = time("start", "x-starttime")?;
    let end = time("end", "x-endtime")?;
    let limit = match param("limit", "x-pagelimit")? {
        None => None,
        Some(v) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    ApiError::bad(
                        "limit",
                        format!("{v:?}: a whole number from 1 to {MAX_PAGE}"),
                    )
                })?,
        ),
    };
    let newest_first = match param("sort", "x-pagesort")?.as_deref() {
        None => true,
        Some(s) if s.eq_ignore_ascii_case("desc") => true,
        Some(s) if s.eq_ignore_ascii_case("asc") => false,
        Some(s) => return Err(ApiError::bad("sort", format!("{s:?}: asc or desc"))),
    };
    let aggregate = match param("aggregate", "x-aggregate")? {
        None => None,
        Some(v) => Some(Aggregate::parse(&v).ok_or_else(|| {
            ApiError::bad("aggregate", format!("{v:?}: avg, min, max, sum or count"))
        })?),
    };
    let resolution =
        match q.get("resolution") {
            None => None,
            Some(v) => Some(query::parse_resolution(v).ok_or_else(|| {
                ApiError::bad("resolution", format!("{v:?}: minute, hour or day"))
            })?),
        };
    let (from_ms, to_ms) = match (start, end) {
        (Some(s), Some(e)) => (s, e),
        (Some(s), None) => (s, now + 1),
        (None, Some(e)) => (0, e),
        (None, None) => (0, now + 1),
    };
    if from_ms > to_ms {
        return Err(ApiError::bad("start", "is after end"));
    }
    // Without a range, ThingScale gives the latest value only.
    let default_limit = if start.is_none() && end.is_none() && aggregate.is_none() {
        1
    } else {
        MAX_PAGE
    };
    Ok(StreamQuery {
        range: Range {
            from_ms,
            to_ms,
            limit: limit.unwrap_or(default_limit),
            newest_first,
        },
        aggregate,
        resolution,
        tag: param("tag", "x-tagname")?,
    })
}

/// `GET /v2/stream/{channel}`: the JSON records a device sent, or with an aggregate, one value
/// per numeric field over the range (or per bucket with `resolution`).
async fn channel_stream(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let device = channel_device(&state, &channel).await?;
    let sq = stream_query(&headers, &q)?;
    let base = json!({
        "channel": device.channel,
        "channel_name": if device.name.is_empty() { device.id.clone() } else { device.name.clone() },
        "device_id": device.id,
        "last_update": device.last_seen_at_ms.map(query::format_time),
    });
    if let Some(agg) = sq.aggregate {
        let id = device.id.clone();
        let resolution = sq.resolution;
        let range = sq.range;
        let per_stream = state
            .db
            .run(move |c| {
                let mut out = Vec::new();
                for s in streams::of_device(c, &id)?
                    .into_iter()
                    .filter(|s| s.kind == "number")
                {
                    let res = resolution.unwrap_or(Resolution::Day);
                    let buckets = streams::buckets(
                        c,
                        s.id,
                        res,
                        Range {
                            limit: usize::MAX >> 1,
                            ..range
                        },
                    )?;
                    out.push((s.name, buckets));
                }
                Ok(out)
            })
            .await
            .map_err(ApiError::store)?;
        let mut body = base;
        body["aggr_type"] = json!(agg.name());
        match sq.resolution {
            // Per bucket: [{"at", "value": {field: aggregate, ...}}].
            Some(_) => {
                let mut by_time: BTreeMap<i64, Map<String, Value>> = BTreeMap::new();
                for (name, buckets) in &per_stream {
                    for b in buckets {
                        by_time
                            .entry(b.at_ms)
                            .or_default()
                            .insert(name.clone(), json!(agg.of(b)));
                    }
                }
                let mut rows: Vec<Value> = by_time
                    .into_iter()
                    .map(|(at, value)| json!({"at": query::format_time(at), "value": value}))
                    .collect();
                if sq.range.newest_first {
                    rows.reverse();
                }
                rows.truncate(sq.range.limit);
                body["result"] = Value::Array(rows);
            }
            // Over the whole range: [{"key": field, "value": aggregate, "count": n}].
            None => {
                let rows: Vec<Value> = per_stream
                    .iter()
                    .filter(|(_, b)| !b.is_empty())
                    .map(|(name, buckets)| {
                        let total = fold(buckets);
                        json!({"key": name, "value": agg.of(&total), "count": total.count})
                    })
                    .collect();
                body["result"] = Value::Array(rows);
            }
        }
        return ok(body);
    }
    let id = device.id.clone();
    let (tag, range) = (sq.tag.clone(), sq.range);
    let records = state
        .db
        .run(move |c| streams::records(c, &id, tag.as_deref(), range))
        .await
        .map_err(ApiError::store)?;
    let mut body = base;
    body["stream"] = Value::Array(
        records
            .iter()
            .map(|r| {
                json!({
                    "_id": r.id,
                    "tag": r.tag,
                    "value": serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null),
                    "at": query::format_time(r.at_ms),
                })
            })
            .collect(),
    );
    ok(body)
}

/// Folds buckets into one (for an aggregate over a whole range).
fn fold(buckets: &[streams::Bucket]) -> streams::Bucket {
    let mut total = streams::Bucket {
        at_ms: buckets.first().map(|b| b.at_ms).unwrap_or(0),
        count: 0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        sum: 0.0,
        avg: 0.0,
    };
    for b in buckets {
        total.count += b.count;
        total.min = total.min.min(b.min);
        total.max = total.max.max(b.max);
        total.sum += b.sum;
    }
    if total.count > 0 {
        total.avg = total.sum / total.count as f64;
    }
    total
}

/// `GET /v2/stream/{device}/{stream}`: one stream's raw points, or with `aggregate` (and
/// `resolution`, chosen from the range when absent) its buckets from the rollups.
async fn one_stream(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path((id, name)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let sq = stream_query(&headers, &q)?;
    load_device(&state, &id).await?;
    let (d, n) = (id.clone(), name.clone());
    let stream = state
        .db
        .run(move |c| streams::get(c, &d, &n))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NO_STREAM",
                format!("device {id:?} has no stream {name:?}"),
            )
            .field("stream")
        })?;
    let mut body = json!({"device_id": id, "stream": stream_json(&stream)});
    let sid = stream.id;
    let range = sq.range;
    if sq.aggregate.is_some() || sq.resolution.is_some() {
        let res = sq
            .resolution
            .unwrap_or_else(|| query::resolution_for(range.from_ms, range.to_ms));
        let buckets = state
            .db
            .run(move |c| streams::buckets(c, sid, res, range))
            .await
            .map_err(ApiError::store)?;
        body["resolution"] = json!(match res {
            Resolution::Minute => "minute",
            Resolution::Hour => "hour",
            Resolution::Day => "day",
        });
        body["buckets"] = Value::Array(
            buckets
                .iter()
                .map(|b| {
                    json!({"at": query::format_time(b.at_ms), "count": b.count, "min": b.min,
                           "max": b.max, "avg": b.avg, "sum": b.sum})
                })
                .collect(),
        );
        return ok(body);
    }
    let points = state
        .db
        .run(move |c| streams::points(c, sid, range))
        .await
        .map_err(ApiError::store)?;
    body["points"] = Value::Array(
        points
            .iter()
            .map(|p| {
                json!({"at": query::format_time(p.at_ms),
                       "value": p.value.map(Value::from).or_else(|| p.text.clone().map(Value::from))})
            })
            .collect(),
    );
    ok(body)
}

/// Journals a message and hands it to the broker (as `/notify` does); returns its journal id.
async fn journal_and_publish(
    state: &Shared,
    source: String,
    topic: String,
    payload: Vec<u8>,
    qos: u8,
) -> Result<(i64, bool), ApiError> {
    let id = journal_only(state, source, topic.clone(), payload.clone(), qos).await?;
    let published = state.publisher.publish(&topic, payload);
    Ok((id, published))
}

/// Appends a message to the journal; returns its id once committed.
async fn journal_only(
    state: &Shared,
    source: String,
    topic: String,
    payload: Vec<u8>,
    qos: u8,
) -> Result<i64, ApiError> {
    let message = NewMessage {
        source,
        topic,
        payload,
        qos,
        retain: false,
        mqtt_pid: None,
        dup: false,
    };
    Ok(crate::journal_message(state, message).await?)
}

/// `POST /v2/publish/{device}` `{"qos":0|1,"payload":"..."}`: a command to the device on
/// `devices/{id}/commands`, journaled first (it shows in the device's history).
async fn publish(
    AxumState(state): AxumState<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult {
    let (token, obj, device) = command_request(&state, &id, req).await?;
    let qos = match obj.get("qos") {
        None => 1,
        Some(v) => match v.as_u64() {
            Some(q @ (0 | 1)) => q as u8,
            _ => {
                return Err(ApiError::bad(
                    "qos",
                    "must be 0 or 1 (QoS 2 is not offered)",
                ))
            }
        },
    };
    let payload = match obj.get("payload") {
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(Value::Object(_)) | Some(Value::Array(_)) => obj["payload"].to_string().into_bytes(),
        Some(_) => {
            return Err(ApiError::bad(
                "payload",
                "must be a string or a JSON object",
            ))
        }
        None => return Err(ApiError::bad("payload", "is required")),
    };
    if payload.len() > state.http.max_message_bytes {
        return Err(ApiError::bad(
            "payload",
            format!("larger than {} bytes", state.http.max_message_bytes),
        ));
    }
    // Journaled only: the broker role's command sink publishes it and retries until the
    // broker acknowledges, so no command is lost between this answer and the broker.
    let topic = format!("devices/{}/commands", device.id);
    let journal_id = journal_only(
        &state,
        format!("api:{}", token.name),
        topic.clone(),
        payload,
        qos,
    )
    .await?;
    ok(json!({"ok": true, "id": journal_id, "topic": topic, "qos": qos, "queued": true}))
}

/// Refuses telemetry from a disabled device (403 `DEVICE_DISABLED`), and from an unknown one
/// when it may not be provisioned (403 `NO_DEVICE`). True when the device is new.
pub(crate) async fn device_gate(
    state: &Shared,
    id: &str,
    provision: bool,
) -> Result<bool, crate::reply::Problem> {
    let key = id.to_owned();
    let found = state
        .db
        .run(move |c| devices::get(c, &key))
        .await
        .map_err(crate::store_problem)?;
    match found {
        Some(d) if !d.enabled => Err(crate::reply::Problem::field(
            StatusCode::FORBIDDEN,
            "device_id",
            format!("DEVICE_DISABLED: device {id:?} is disabled; nothing was stored"),
        )),
        Some(_) => Ok(false),
        None if provision => Ok(true),
        None => Err(crate::reply::Problem::field(
            StatusCode::FORBIDDEN,
            "device_id",
            format!("NO_DEVICE: unknown device {id:?}; add it first (`genba devices add {id}`)"),
        )),
    }
}

/// `POST /post_v2/`: ThingScale's HTTP device connector. `X-DEVICETOKEN` is the device's API
/// key (`genba keys add --device ID`), `X-DEVICEID` its id, `X-TAGNAME` an optional tag; the
/// JSON body is journaled on `devices/{id}/telemetry[/tag]` and answered once durable
/// (201 `NEW_DEVICE_FOUND` for a device's first message).
pub(crate) async fn post_v2(
    AxumState(state): AxumState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> ApiResult {
    let headers = req.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let device_id = header("x-deviceid")
        .ok_or_else(|| ApiError::bad("x-deviceid", "missing X-DEVICEID header"))?;
    check_device_id(&device_id).map_err(|e| e.field("x-deviceid"))?;
    let tag = header("x-tagname");
    if let Some(t) = &tag {
        if t.is_empty()
            || t.len() > 32
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ApiError::bad(
                "x-tagname",
                "1-32 characters from A-Z a-z 0-9 - _ .",
            ));
        }
    }
    let token = header("x-devicetoken").ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "AUTH_REQUIRED",
            "missing X-DEVICETOKEN header",
        )
        .field("x-devicetoken")
    })?;
    let key = state
        .telemetry
        .authorize_key(token)
        .await
        .map_err(|mut p| {
            p.field = Some("x-devicetoken".into());
            ApiError::from(p)
        })?;
    if key.device_id != device_id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!("this device token belongs to device {:?}", key.device_id),
        )
        .field("x-deviceid"));
    }
    state
        .telemetry
        .rate_check(key.id, peer.ip())
        .map_err(ApiError::from)?;
    let new = device_gate(&state, &device_id, state.provision_http)
        .await
        .map_err(|p| {
            let code = if p.error.starts_with("DEVICE_DISABLED") {
                "DEVICE_DISABLED"
            } else {
                "NO_DEVICE"
            };
            let mut e = ApiError::from(p);
            e.code = code;
            e
        })?;
    let body = crate::read_body(req, &state).await?;
    genba_platform::message::check(&device_id, tag.as_deref(), &body).map_err(|e| {
        let field = e.split(':').next().unwrap_or("body").to_owned();
        ApiError::new(StatusCode::BAD_REQUEST, "BAD_JSON_FORMAT", e).field(field)
    })?;
    let topic = match &tag {
        Some(t) => format!("devices/{device_id}/telemetry/{t}"),
        None => format!("devices/{device_id}/telemetry"),
    };
    let (journal_id, _) = journal_and_publish(
        &state,
        format!("http:{}", peer.ip()),
        topic,
        body.to_vec(),
        1,
    )
    .await?;
    let (status, code) = if new {
        (StatusCode::CREATED, "NEW_DEVICE_FOUND")
    } else {
        (StatusCode::OK, "OK")
    };
    Ok(json_response(
        status,
        &json!({"ok": true, "result": code, "id": journal_id, "device_id": device_id}),
    ))
}

fn rule_json(r: &genba_store::alarms::StoredRule) -> Value {
    let mut v = serde_json::from_str::<Value>(&r.spec).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("source".into(), json!(r.source));
        m.insert(
            "updated_at".into(),
            json!(query::format_time(r.updated_at_ms)),
        );
    }
    v
}

async fn list_rules(AxumState(state): AxumState<Shared>, headers: HeaderMap) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let list = state
        .db
        .run(genba_store::alarms::rules)
        .await
        .map_err(ApiError::store)?;
    ok(Value::Array(list.iter().map(rule_json).collect()))
}

async fn get_rule(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let key = name.clone();
    let found = state
        .db
        .run(move |c| genba_store::alarms::rule(c, &key))
        .await
        .map_err(ApiError::store)?;
    ok(rule_json(&found.ok_or_else(|| no_rule(&name))?))
}

fn no_rule(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NO_RULE",
        format!("no rule {name:?}"),
    )
    .field("name")
}

/// Reads a rule from a JSON body; errors name the field (`threshold`, `condition`, ...).
async fn rule_body(state: &Shared, req: Request) -> Result<genba_config::rules::Rule, ApiError> {
    let body = crate::read_body(req, state).await?;
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::bad_json("is not valid UTF-8"))?;
    let de = &mut serde_json::Deserializer::from_str(text);
    let rule: genba_config::rules::Rule = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let field = if path.is_empty() || path == "." {
            message
                .split('`')
                .nth(1)
                .map(str::to_owned)
                .unwrap_or_else(|| "body".into())
        } else {
            path
        };
        ApiError::bad(&field, message)
    })?;
    rule.check().map_err(|(field, m)| ApiError::bad(field, m))?;
    Ok(rule)
}

async fn save_rule(
    state: &Shared,
    rule: genba_config::rules::Rule,
    status: StatusCode,
) -> ApiResult {
    let spec = serde_json::to_string(&rule).map_err(|e| ApiError::bad("body", e.to_string()))?;
    let name = rule.name.clone();
    let saved = state
        .db
        .run(move |c| {
            if !genba_store::alarms::put_rule(c, &name, &spec)? {
                return Ok(None);
            }
            genba_store::alarms::rule(c, &name)
        })
        .await
        .map_err(ApiError::store)?;
    match saved {
        Some(r) => Ok(json_response(status, &rule_json(&r))),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "RULE_IN_CONFIG",
            format!(
                "rule {:?} is defined in genba.toml; change it there",
                rule.name
            ),
        )
        .field("name")),
    }
}

async fn create_rule(AxumState(state): AxumState<Shared>, req: Request) -> ApiResult {
    authorize(&state, req.headers(), tokens::SCOPE_WRITE).await?;
    let rule = rule_body(&state, req).await?;
    let key = rule.name.clone();
    let exists = state
        .db
        .run(move |c| genba_store::alarms::rule(c, &key))
        .await
        .map_err(ApiError::store)?;
    if exists.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "RULE_EXISTS",
            format!(
                "rule {:?} exists already (PUT /v2/rule/{} replaces it)",
                rule.name, rule.name
            ),
        )
        .field("name"));
    }
    save_rule(&state, rule, StatusCode::CREATED).await
}

async fn replace_rule(
    AxumState(state): AxumState<Shared>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult {
    authorize(&state, req.headers(), tokens::SCOPE_WRITE).await?;
    let rule = rule_body(&state, req).await?;
    if rule.name != name {
        return Err(ApiError::bad("name", "differs from the rule in the path"));
    }
    save_rule(&state, rule, StatusCode::OK).await
}

async fn delete_rule(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_WRITE).await?;
    let key = name.clone();
    match state
        .db
        .run(move |c| genba_store::alarms::delete_rule(c, &key))
        .await
        .map_err(ApiError::store)?
    {
        Some(true) => ok(json!({"name": name, "deleted": true})),
        Some(false) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "RULE_IN_CONFIG",
            format!("rule {name:?} is defined in genba.toml; remove it there"),
        )
        .field("name")),
        None => Err(no_rule(&name)),
    }
}

fn alarm_json(a: &genba_store::alarms::Alarm) -> Value {
    json!({
        "alarm_id": a.id,
        "state": a.state(),
        "rule": a.rule,
        "device_id": a.device_id,
        "stream": a.stream,
        "condition": a.condition,
        "severity": a.severity,
        "threshold": a.threshold,
        "value": a.value,
        "message": a.message,
        "raised_at": query::format_time(a.raised_at_ms),
        "escalated_at": a.escalated_at_ms.map(query::format_time),
        "acknowledged_at": a.acked_at_ms.map(query::format_time),
        "acknowledged_by": a.acked_by,
        "note": a.note,
        "cleared_at": a.cleared_at_ms.map(query::format_time),
        "clear_value": a.clear_value,
    })
}

async fn list_alarms(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    use genba_store::alarms::Which;
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let which = match q.get("state").map(String::as_str) {
        None | Some("open") => Which::Open,
        Some("unacknowledged") => Which::Unacknowledged,
        Some("all") => Which::All,
        Some(other) => {
            return Err(ApiError::bad(
                "state",
                format!("{other:?}: open, unacknowledged or all"),
            ))
        }
    };
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad(
                    "limit",
                    format!("{v:?}: a whole number from 1 to {MAX_PAGE}"),
                )
            })?,
    };
    let device = q.get("device").cloned();
    let list = state
        .db
        .run(move |c| genba_store::alarms::list(c, which, device.as_deref(), limit))
        .await
        .map_err(ApiError::store)?;
    ok(Value::Array(list.iter().map(alarm_json).collect()))
}

fn alarm_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .map_err(|_| ApiError::bad("alarm_id", format!("{raw:?} is not an alarm number")))
}

fn no_alarm(id: i64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NO_ALARM", format!("no alarm #{id}")).field("alarm_id")
}

async fn get_alarm(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let id = alarm_id(&raw)?;
    let found = state
        .db
        .run(move |c| genba_store::alarms::get(c, id))
        .await
        .map_err(ApiError::store)?;
    ok(alarm_json(&found.ok_or_else(|| no_alarm(id))?))
}

/// `POST /v2/alarm/{id}/ack` `{"note": "corrective action", "by": "who"}` (`by` defaults to
/// the token's name). The first acknowledgement is the record; a second is 409.
async fn ack_alarm(
    AxumState(state): AxumState<Shared>,
    Path(raw): Path<String>,
    req: Request,
) -> ApiResult {
    use genba_store::alarms::Ack;
    let token = authorize(&state, req.headers(), tokens::SCOPE_WRITE).await?;
    let id = alarm_id(&raw)?;
    let obj = json_body(&state, req).await?;
    let note = opt_string(&obj, "note", 2000)?
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad("note", "the corrective action taken is required"))?;
    let by = opt_string(&obj, "by", 64)?.unwrap_or(token.name);
    let outcome = state
        .db
        .run(move |c| genba_store::alarms::acknowledge(c, id, &by, &note))
        .await
        .map_err(ApiError::store)?;
    match outcome {
        Ack::Done(a) => ok(alarm_json(&a)),
        Ack::Already(a) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ALREADY_ACKNOWLEDGED",
            format!(
                "alarm #{id} was acknowledged by {} before; its note stays the record",
                a.acked_by.unwrap_or_default()
            ),
        )
        .field("alarm_id")),
        Ack::NoSuchAlarm => Err(no_alarm(id)),
    }
}

/// `GET /v2/session`: the MQTT clients connected now (ThingScale's session service), with
/// the user they logged in as and their subscriptions.
async fn list_sessions(AxumState(state): AxumState<Shared>, headers: HeaderMap) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let list = state
        .db
        .run(genba_store::sessions::list)
        .await
        .map_err(ApiError::store)?;
    ok(Value::Array(
        list.iter()
            .map(|s| {
                json!({
                    "client_id": s.client_id,
                    "username": s.username,
                    "ipaddress": s.address,
                    "clean_sess": s.clean_start,
                    "proto_ver": s.protocol,
                    "keepalive": s.keep_alive,
                    "connected_at": query::format_time(s.connected_at_ms),
                    "subscriptions": s.subscriptions,
                })
            })
            .collect(),
    ))
}

/// The firmware images kept for device updates (`genba firmware add`), newest first, each with
/// its download path and the devices whose last batch reported its version.
/// The Pi's own A/B update (docs/image.md, "Updates"): the slot and release running, whether a
/// bundle waits for the installer, and its last results, newest first (read).
async fn system_update_status(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    ok(crate::system_update::status(&state.updates_dir).to_json())
}

/// An update bundle for the Pi itself as the request body (admin): kept for the image's
/// installer exactly as the console's upload is ([`crate::system_update`]). RAUC checks its
/// signature, writes the other slot and restarts into it on trial; `GET` shows the outcome.
async fn upload_system_update(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult {
    let mut body = body.into_data_stream();
    if let Err(e) = authorize(&state, &headers, tokens::SCOPE_ADMIN).await {
        drain_refused(&state, body).await;
        return Err(e);
    }
    let saved = crate::system_update::save(&state.updates_dir, &mut body).await;
    let size = match saved {
        Ok(size) => size,
        Err(e) => {
            drain_refused(&state, body).await;
            tracing::warn!(error = %e, "v2 api: Pi update bundle refused");
            let code = match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "BODY_TOO_LARGE",
                StatusCode::UNPROCESSABLE_ENTITY => "NOT_A_BUNDLE",
                StatusCode::INSUFFICIENT_STORAGE => "STORAGE_FULL",
                StatusCode::INTERNAL_SERVER_ERROR => "UNAVAILABLE",
                _ => "BAD_REQUEST",
            };
            return Err(ApiError::new(e.status(), code, e.to_string()).field("body"));
        }
    };
    tracing::info!(size, "v2 api: Pi update bundle uploaded");
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({
            "ok": true,
            "bytes": size,
            "pending": true,
            "message": "kept for the installer: it checks the signature, writes the other root slot and restarts into it on trial; GET /v2/system/update shows the result",
        }),
    ))
}

/// How much of a refused upload is read and dropped before the answer.
const REFUSED_DRAIN_BYTES: usize = 16 << 20;

/// Reads what a client still sends of a refused upload, up to [`REFUSED_DRAIN_BYTES`] and
/// within the request timeout, so that it gets the answer instead of a broken pipe while it is
/// still sending (a client that sends `Expect: 100-continue`, as curl does, sends nothing).
/// Beyond that the connection closes.
async fn drain_refused(state: &Shared, mut body: axum::body::BodyDataStream) {
    use futures_util::StreamExt;
    let timeout = std::time::Duration::from_secs(state.http.request_timeout_secs.max(1));
    let mut read = 0;
    let _ = tokio::time::timeout(timeout, async {
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len();
            if read >= REFUSED_DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

async fn list_firmware(AxumState(state): AxumState<Shared>, headers: HeaderMap) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let (images, devices) = state
        .db
        .run(|c| {
            Ok((
                genba_store::firmware::list(c)?,
                genba_store::devices::list(c)?,
            ))
        })
        .await
        .map_err(ApiError::store)?;
    ok(Value::Array(
        images
            .iter()
            .map(|i| {
                let running: Vec<&str> = devices
                    .iter()
                    .filter(|d| d.firmware.as_deref() == Some(i.version.as_str()))
                    .map(|d| d.id.as_str())
                    .collect();
                json!({
                    "sha256": i.sha256,
                    "version": i.version,
                    "project": i.project,
                    "size": i.size,
                    "added_at": query::format_time(i.added_at_ms),
                    "path": genba_store::firmware::download_path(&i.sha256),
                    "devices": running,
                })
            })
            .collect(),
    ))
}

/// The last update asked of a device, with where the device stands with it.
fn update_json(r: &genba_store::firmware::UpdateRequest, device: &Device) -> Value {
    use genba_store::firmware::UpdateState;
    json!({
        "device_id": r.device_id,
        "version": r.version,
        "sha256": r.sha256,
        "requested_at": query::format_time(r.requested_at_ms),
        "requested_by": r.requested_by,
        "firmware": device.firmware,
        "state": match r.state(device) {
            UpdateState::Running => "running",
            UpdateState::Waiting => "waiting",
            UpdateState::NotTaken => "not_taken",
        },
    })
}

/// `GET /v2/device/{id}/update`: the last update asked of the device (404 when none was).
async fn get_update(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let device = load_device(&state, &id).await?;
    let key = device.id.clone();
    let asked = state
        .db
        .run(move |c| genba_store::firmware::request_of(c, &key))
        .await
        .map_err(ApiError::store)?;
    match asked {
        Some(r) => ok(update_json(&r, &device)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NO_UPDATE",
            format!("no update was asked of device {id:?}"),
        )),
    }
}

/// `POST /v2/device/{id}/update` `{"firmware":"VERSION|SHA256"}`: queues the `update` command
/// for a kept image on `devices/{id}/commands` (journaled; the broker role's command sink
/// publishes it), as the console's button and `genba devices update` do, and records it.
async fn request_update(
    AxumState(state): AxumState<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult {
    let (token, obj, device) = command_request(&state, &id, req).await?;
    let wanted = match obj.get("firmware") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(ApiError::bad(
                "firmware",
                "must be the version or the SHA-256 of a kept image (GET /v2/firmware)",
            ))
        }
        None => return Err(ApiError::bad("firmware", "is required")),
    };
    let key = wanted.clone();
    let image = state
        .db
        .run(move |c| genba_store::firmware::find(c, &key))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NO_FIRMWARE",
                format!("no firmware image {wanted:?} (GET /v2/firmware)"),
            )
            .field("firmware")
        })?;
    let payload = genba_platform::updates::update_command(&image).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "BAD_FIRMWARE",
            e.to_string(),
        )
        .field("firmware")
    })?;
    let by = format!("api:{}", token.name);
    let topic = format!("devices/{}/commands", device.id);
    journal_only(&state, by.clone(), topic, payload.into_bytes(), 1).await?;
    let asked = genba_platform::updates::request(&image, &device.id, &by);
    let recorded = asked.clone();
    state
        .db
        .run(move |c| genba_store::firmware::record_request(c, &recorded))
        .await
        .map_err(ApiError::store)?;
    ok(update_json(&asked, &device))
}

/// ThingScale's event service over Genba's rules: an event is the rule `event-{id}` on the
/// channel's device, `source` its stream (`data:value` -> `data.value`), `operator` and
/// `threshold` its condition, and `post_url` its `notify_url` (a JSON POST per raise,
/// escalation and clear, from the broker role's rule webhooks).
fn event_json(rule: &genba_config::rules::Rule, channel: Option<i64>) -> Value {
    let operator = serde_json::to_value(rule.condition).unwrap_or(Value::Null);
    json!({
        "event_id": rule.name.strip_prefix("event-").and_then(|n| n.parse::<i64>().ok()),
        "mapped_ch": channel,
        "device_id": rule.device,
        "description": rule.description,
        "notify_type": "http",
        "post_url": rule.notify_url,
        "enabled": rule.enabled,
        "source": rule.stream,
        "operator": operator,
        "threshold": rule.threshold.map(|t| t.to_string()),
    })
}

fn no_event(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NO_EVENT",
        format!("no event {id:?}"),
    )
    .field("event_id")
}

async fn events(state: &Shared) -> Result<Vec<(genba_config::rules::Rule, Option<i64>)>, ApiError> {
    state
        .db
        .run(|c| {
            let mut out = Vec::new();
            for stored in genba_store::alarms::rules(c)?
                .into_iter()
                .filter(|r| r.name.starts_with("event-"))
            {
                let Ok(rule) = serde_json::from_str::<genba_config::rules::Rule>(&stored.spec)
                else {
                    continue;
                };
                let channel = match &rule.device {
                    Some(d) => devices::get(c, d)?.map(|d| d.channel),
                    None => None,
                };
                out.push((rule, channel));
            }
            Ok(out)
        })
        .await
        .map_err(ApiError::store)
}

async fn list_events(AxumState(state): AxumState<Shared>, headers: HeaderMap) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let list = events(&state).await?;
    ok(Value::Array(
        list.iter().map(|(r, ch)| event_json(r, *ch)).collect(),
    ))
}

async fn get_event(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_READ).await?;
    let name = format!("event-{id}");
    let list = events(&state).await?;
    let (rule, ch) = list
        .iter()
        .find(|(r, _)| r.name == name)
        .ok_or_else(|| no_event(&id))?;
    ok(event_json(rule, *ch))
}

/// An event body as a rule named `name`; errors name the event's fields.
async fn event_rule(
    state: &Shared,
    obj: &Map<String, Value>,
    name: String,
) -> Result<genba_config::rules::Rule, ApiError> {
    const KNOWN: &[&str] = &[
        "event_id",
        "mapped_ch",
        "description",
        "notify_type",
        "post_url",
        "enabled",
        "source",
        "operator",
        "threshold",
    ];
    only_known(obj, KNOWN)?;
    let channel = obj
        .get("mapped_ch")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad("mapped_ch", "the channel number is required"))?;
    let device = state
        .db
        .run(move |c| devices::by_channel(c, channel))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NO_CHANNEL",
                format!("no channel {channel}"),
            )
            .field("mapped_ch")
        })?;
    match obj
        .get("notify_type")
        .and_then(Value::as_str)
        .unwrap_or("http")
    {
        "http" => {}
        "email" => return Err(ApiError::bad(
            "notify_type",
            "email notifications are not offered yet; use http (or a Slack webhook on alarms/#)",
        )),
        other => {
            return Err(ApiError::bad(
                "notify_type",
                format!("{other:?}: http or email"),
            ))
        }
    }
    let source = opt_string(obj, "source", 100)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad("source", "the JSON path of the value is required"))?;
    let operator = obj.get("operator").cloned().unwrap_or(Value::Null);
    let condition: genba_config::rules::Condition = serde_json::from_value(operator.clone())
        .ok()
        .filter(|c| {
            !matches!(
                c,
                genba_config::rules::Condition::Silent | genba_config::rules::Condition::Rate
            )
        })
        .ok_or_else(|| ApiError::bad("operator", format!("{operator}: one of < > <= >= = !=")))?;
    let threshold = match obj.get("threshold") {
        Some(Value::String(t)) => t.trim().parse::<f64>().ok(),
        Some(Value::Number(n)) => n.as_f64(),
        _ => None,
    }
    .filter(|t| t.is_finite())
    .ok_or_else(|| ApiError::bad("threshold", "a number (ThingScale sends it as a string)"))?;
    let enabled = match obj.get("enabled") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad("enabled", "must be true or false")),
    };
    let rule = genba_config::rules::Rule {
        name,
        device: Some(device.id),
        tag: None,
        stream: source.replace(':', "."),
        condition,
        threshold: Some(threshold),
        for_secs: 0,
        hysteresis: 0.0,
        silent_minutes: None,
        escalate_after_minutes: None,
        severity: Default::default(),
        description: opt_string(obj, "description", 256)?.unwrap_or_default(),
        command: None,
        notify_url: opt_string(obj, "post_url", 2048)?,
        enabled,
    };
    if rule.notify_url.is_none() {
        return Err(ApiError::bad(
            "post_url",
            "the URL to notify is required for http",
        ));
    }
    rule.check().map_err(|(field, m)| {
        let field = match field {
            "notify_url" => "post_url",
            "stream" => "source",
            other => other,
        };
        ApiError::bad(field, m)
    })?;
    Ok(rule)
}

async fn save_event(
    state: &Shared,
    rule: genba_config::rules::Rule,
    channel: Option<i64>,
    status: StatusCode,
) -> ApiResult {
    let spec = serde_json::to_string(&rule).map_err(|e| ApiError::bad("body", e.to_string()))?;
    let name = rule.name.clone();
    state
        .db
        .run(move |c| genba_store::alarms::put_rule(c, &name, &spec))
        .await
        .map_err(ApiError::store)?;
    Ok(json_response(status, &event_json(&rule, channel)))
}

async fn create_event(AxumState(state): AxumState<Shared>, req: Request) -> ApiResult {
    authorize(&state, req.headers(), tokens::SCOPE_WRITE).await?;
    let obj = json_body(&state, req).await?;
    let next = events(&state)
        .await?
        .iter()
        .filter_map(|(r, _)| r.name.strip_prefix("event-")?.parse::<i64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let rule = event_rule(&state, &obj, format!("event-{next}")).await?;
    let channel = obj.get("mapped_ch").and_then(Value::as_i64);
    save_event(&state, rule, channel, StatusCode::CREATED).await
}

async fn replace_event(
    AxumState(state): AxumState<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult {
    authorize(&state, req.headers(), tokens::SCOPE_WRITE).await?;
    let obj = json_body(&state, req).await?;
    let name = format!("event-{id}");
    if !events(&state).await?.iter().any(|(r, _)| r.name == name) {
        return Err(no_event(&id));
    }
    let rule = event_rule(&state, &obj, name).await?;
    let channel = obj.get("mapped_ch").and_then(Value::as_i64);
    save_event(&state, rule, channel, StatusCode::OK).await
}

async fn delete_event(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_WRITE).await?;
    let name = format!("event-{id}");
    match state
        .db
        .run(move |c| genba_store::alarms::delete_rule(c, &name))
        .await
        .map_err(ApiError::store)?
    {
        Some(true) => ok(json!({"event_id": id.parse::<i64>().ok(), "deleted": true})),
        _ => Err(no_event(&id)),
    }
}

/// ThingScale's user service as Genba's API tokens (admin scope): list, make (the token is
/// shown once), revoke.
fn user_json(t: &Token) -> Value {
    json!({
        "user_id": t.id,
        "name": t.name,
        "scopes": t.scopes,
        "enabled": t.enabled,
        "created_at": query::format_time(t.created_at_ms),
        "last_used_at": t.last_used_at_ms.map(query::format_time),
    })
}

async fn list_users(AxumState(state): AxumState<Shared>, headers: HeaderMap) -> ApiResult {
    authorize(&state, &headers, tokens::SCOPE_ADMIN).await?;
    let list = state.db.run(tokens::list).await.map_err(ApiError::store)?;
    ok(Value::Array(list.iter().map(user_json).collect()))
}

async fn create_user(AxumState(state): AxumState<Shared>, req: Request) -> ApiResult {
    authorize(&state, req.headers(), tokens::SCOPE_ADMIN).await?;
    let obj = json_body(&state, req).await?;
    only_known(&obj, &["name", "scope"])?;
    let name = opt_string(&obj, "name", 64)?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad("name", "1-64 characters, required"))?;
    let scope = opt_string(&obj, "scope", 16)?.unwrap_or_else(|| "read".into());
    if !tokens::SCOPES.contains(&scope.as_str()) {
        return Err(ApiError::bad(
            "scope",
            format!("{scope:?}: read, write or admin"),
        ));
    }
    let token = genba_auth::passwords::generate_api_key();
    let digest = api_key_digest(&token);
    let made = state
        .db
        .run(move |c| tokens::add(c, &name, &[scope], &digest))
        .await
        .map_err(ApiError::store)?;
    let mut body = user_json(&made);
    body["api_token"] = json!(token);
    Ok(json_response(StatusCode::CREATED, &body))
}

async fn revoke_user(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> ApiResult {
    let me = authorize(&state, &headers, tokens::SCOPE_ADMIN).await?;
    let id = raw
        .parse::<i64>()
        .map_err(|_| ApiError::bad("user_id", format!("{raw:?} is not a user number")))?;
    if id == me.id {
        return Err(ApiError::bad("user_id", "a token cannot revoke itself"));
    }
    let revoked = state
        .db
        .run(move |c| tokens::set_enabled(c, id, false))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "NO_USER", format!("no user {id}"))
                .field("user_id")
        })?;
    ok(user_json(&revoked))
}
