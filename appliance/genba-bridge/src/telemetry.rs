//! `POST /api/telemetry` (requirement H1): where temperature readings enter over HTTP.
//! Order: API key (401/403), rate limit per key and address (429), body (413/408), fields
//! (400 naming the field), then the readings are committed (duplicates ignored) before the
//! answer `{ok, inserted, readings}`; the batch is then published on
//! `devices/{id}/telemetry` for live subscribers.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State as AxumState};
use genba_store::{Db, NewMessage, TelemetryBatch};
use genba_telemetry::keys::{self, KeyError, KeyInfo, SCOPE_TELEMETRY_WRITE};
use genba_telemetry::limiter::Limiter;
use genba_telemetry::signing::{self, ReplayGuard, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use hyper::StatusCode;
use serde_json::json;

use crate::reply::{self, HttpResponse, Problem};
use crate::Shared;

pub(crate) struct Telemetry {
    limiter: Limiter,
    replays: ReplayGuard,
    publish: bool,
    /// The bridge's pooled connections, for key checks.
    db: Db,
}

impl Telemetry {
    pub fn new(cfg: &genba_config::TelemetryConfig, db: Db) -> Self {
        Telemetry {
            limiter: Limiter::new(cfg.rate_per_sec, cfg.burst),
            replays: ReplayGuard::default(),
            publish: cfg.publish,
            db,
        }
    }

    /// Checks a device API key for `telemetry:write` (401 unknown or revoked, 403 scope).
    pub(crate) async fn authorize_key(&self, key: String) -> Result<KeyInfo, Problem> {
        let checked = self
            .db
            .run(move |c| Ok(keys::authorize(c, &key, SCOPE_TELEMETRY_WRITE)))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "api key check failed");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "API keys are unavailable")
            })?;
        checked.map_err(|e| match e {
            KeyError::MissingScope(_) => {
                Problem::field(StatusCode::FORBIDDEN, "x-api-key", e.to_string())
            }
            KeyError::Unknown | KeyError::Revoked => {
                Problem::field(StatusCode::UNAUTHORIZED, "x-api-key", e.to_string())
            }
            other => {
                tracing::error!(error = %other, "api key check failed");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "API keys are unavailable")
            }
        })
    }

    /// The rate limit per device key and per source address (429 with `Retry-After`).
    pub(crate) fn rate_check(&self, key_id: i64, peer: IpAddr) -> Result<(), Problem> {
        self.limiter
            .check(
                &[&format!("key:{key_id}"), &format!("addr:{peer}")],
                Instant::now(),
            )
            .map_err(|wait| {
                let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate limit: slow down");
                p.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
                p
            })
    }
}

pub(crate) async fn handle(
    AxumState(state): AxumState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Result<HttpResponse, Problem> {
    let peer = peer.ip();
    let t = &state.telemetry;
    let key = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| {
            Problem::field(
                StatusCode::UNAUTHORIZED,
                "x-api-key",
                "missing X-API-Key header",
            )
        })?;
    let device = t.authorize_key(key).await?;
    t.rate_check(device.id, peer)?;
    let headers = req.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (timestamp, signature) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER));
    let body = crate::read_body(req, &state).await?;
    if let Some(secret) = &device.signing_secret {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        signing::verify(
            secret,
            timestamp.as_deref(),
            signature.as_deref(),
            &body,
            now,
            &t.replays,
        )
        .map_err(|e| Problem::field(StatusCode::UNAUTHORIZED, SIGNATURE_HEADER, e.to_string()))?;
    }
    let batch = genba_telemetry::parse(&body).map_err(|e| Problem::bad(e.field, e.message))?;
    if batch.device_id != device.device_id {
        return Err(Problem::field(
            StatusCode::FORBIDDEN,
            "device_id",
            format!("this API key belongs to device {:?}", device.device_id),
        ));
    }
    let count = batch.readings.len();
    crate::v2::device_gate(&state, &batch.device_id, state.provision_http).await?;
    let mut message = genba_platform::message::parse(
        &batch.device_id,
        None,
        &body,
        chrono::Utc::now().timestamp_millis(),
    )
    .map_err(|e| Problem::bad("body", e))?;
    message.source = format!("http:{peer}");
    message.address = Some(peer.to_string());
    message.provision = true; // device_gate refused what may not be provisioned
    message.record = None; // the consumer keeps the record when it reads the journal row
    let committed = state
        .journal
        .try_submit(TelemetryBatch {
            // Journaled like every message, in the same transaction: the telemetry consumer
            // judges it against the rules (its readings, stored here already, are not stored
            // twice), and the answer can say how many readings were new.
            journal: vec![NewMessage {
                source: format!("http:{peer}"),
                topic: format!("devices/{}/telemetry", batch.device_id),
                payload: body.to_vec(),
                qos: 1,
                retain: false,
                mqtt_pid: None,
                dup: false,
            }],
            messages: vec![message],
            refused: Vec::new(),
            unpark: None,
            effects: Vec::new(),
            cursor: None,
        })
        .map_err(crate::store_problem)?;
    let inserted = committed.await.map_err(crate::store_problem)?;
    if t.publish {
        state.publisher.publish(
            &format!("devices/{}/telemetry", batch.device_id),
            body.to_vec(),
        );
    }
    Ok(reply::json(
        StatusCode::OK,
        &json!({"ok": true, "inserted": inserted, "readings": count}),
    ))
}
