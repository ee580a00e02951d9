//! The HTTP bridge role. Where an HTTP message enters Genba: `/notify` validates, appends to
//! the journal (durable before the answer), hands the message to the broker, then answers.
//! `/api/telemetry` and `/post_v2/` take device telemetry; `/v2/...` is the ThingScale-style
//! REST API over devices and streams ([`v2`]). One axum router ([`router`]) holds every path.

mod auth;
mod console;
pub mod metrics;
mod notify;
mod publisher;
pub use publisher::LiveHandoff;
mod reply;
pub mod system_update;
mod telemetry;
mod v2;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use genba_config::HttpConfig;
use genba_store::{Db, Journal, NewMessage, StoreError};
use http_body_util::{BodyExt, Limited};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use reply::{HttpResponse, Problem};

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Bind(#[from] genba_config::listen::BindError),
}

pub struct BridgeSettings {
    pub http: HttpConfig,
    /// `host:port` of the broker.
    pub broker: String,
    pub internal_user: String,
    pub internal_secret: String,
    /// The SQLite file, for `/status` and API keys.
    pub db_path: PathBuf,
    pub telemetry: genba_config::TelemetryConfig,
    /// Whether a device's first `/post_v2/` creates it (`[devices] auto_provision`).
    pub provision_http: bool,
    pub console: genba_config::ConsoleConfig,
    /// For the HACCP record's check slots (the same slots Exment gets).
    pub exment: genba_config::ExmentConfig,
    /// To tell a browser where its notification will be delivered.
    pub sinks: Vec<genba_config::SinkConfig>,
    /// The certificate for `http.tls_listen` (and the local CA's, served at `/ca.pem`).
    pub tls: Option<genba_tls::ServerTls>,
    /// Where the other processes (roles run as separate units) leave their metrics for
    /// `/metrics` ([`metrics::export`]).
    pub metrics_dir: Option<PathBuf>,
    /// The firmware images devices fetch for updates (`GET /firmware/SHA256.bin`).
    pub firmware_dir: PathBuf,
    /// Where an update bundle of the Pi itself is kept for the image's installer
    /// ([`system_update`]).
    pub updates_dir: PathBuf,
    /// The broker of this process (`genba up`): live copies go to it directly instead of over
    /// MQTT to `broker`.
    pub live: Option<Arc<dyn LiveHandoff>>,
    /// Where devices reach the broker: MQTT and, when configured, MQTT over TLS (the console
    /// writes them into the config of a device it provisions, with this bridge's ports).
    pub device_mqtt: SocketAddr,
    pub device_mqtts: Option<SocketAddr>,
    /// SHA-256 (hex) of the local CA's certificate, when there is one: what provisioned
    /// devices pin by default.
    pub local_ca: Option<String>,
    /// The serial ports "Add a thermometer" may write a board on: `None` for the ESP32 boards
    /// plugged into this machine's USB when the page is asked (Espressif's vendor id), or
    /// these ports.
    pub usb_ports: Option<Vec<String>>,
}

pub(crate) struct State {
    http: HttpConfig,
    /// The local CA's certificate (`/ca.pem`).
    ca_pem: Option<String>,
    auth: auth::HttpAuth,
    journal: Journal,
    publisher: publisher::Publisher,
    broker: String,
    internal_user: String,
    internal_secret: String,
    db: Db,
    telemetry: telemetry::Telemetry,
    provision_http: bool,
    v2_limiter: genba_telemetry::limiter::Limiter,
    console: console::Console,
    sinks: Vec<genba_config::SinkConfig>,
    /// TLS on the HTTP port (then cookies are `Secure`); not offered yet.
    /// Ends long-lived answers (the console's live stream) at shutdown.
    shutdown: watch::Receiver<bool>,
    metrics_dir: Option<PathBuf>,
    firmware_dir: PathBuf,
    updates_dir: PathBuf,
    /// Where devices reach this appliance, for the ones the console provisions.
    devices: genba_platform::provisioning::Served,
    local_ca: Option<String>,
    usb_ports: Option<Vec<String>>,
}

type Shared = Arc<State>;

pub struct RunningBridge {
    pub addr: SocketAddr,
    /// HTTPS, when configured.
    pub tls_addr: Option<SocketAddr>,
    /// Ends once shutdown was signalled and open requests finished (at most 10 s).
    pub done: tokio::task::JoinHandle<()>,
}

/// The bridge's bound sockets: HTTP and, when configured, HTTPS. [`bind`] binds what the
/// config names; a test binds its own (port 0) and starts the bridge in-process.
pub struct Listeners {
    pub http: TcpListener,
    pub https: Option<TcpListener>,
}

/// Binds `http.listen` and, when `tls` (a certificate) is available, `http.tls_listen`.
pub async fn bind(http: &HttpConfig, tls: bool) -> Result<Listeners, BridgeError> {
    let one = |key: &'static str, listen: SocketAddr| async move {
        let bind_err = |cause| genba_config::listen::BindError::new(key, listen, cause);
        TcpListener::bind(listen).await.map_err(bind_err)
    };
    let https = match http.tls_listen {
        Some(listen) if tls => Some(one("http.tls_listen", listen).await?),
        _ => None,
    };
    Ok(Listeners {
        http: one("http.listen", http.listen).await?,
        https,
    })
}

/// Serves on bound `listeners` until `shutdown` turns true; then [`RunningBridge::done`] ends
/// once open requests finished.
pub async fn start(
    settings: BridgeSettings,
    listeners: Listeners,
    journal: Journal,
    shutdown: watch::Receiver<bool>,
) -> Result<RunningBridge, BridgeError> {
    let configured = settings.http.listen;
    let local_addr = |key: &'static str, l: &TcpListener| {
        l.local_addr()
            .map_err(|cause| genba_config::listen::BindError::new(key, configured, cause))
    };
    let addr = local_addr("http.listen", &listeners.http)?;
    let publisher = match settings.live.clone() {
        Some(broker) => publisher::Publisher::InProcess(broker),
        None => publisher::Publisher::start(
            &settings.broker,
            &settings.internal_user,
            &settings.internal_secret,
        ),
    };
    let (tls, ca_pem) = match settings.tls {
        Some(t) => (Some(t.acceptor), t.ca_pem),
        None => (None, None),
    };
    let tls_addr = match &listeners.https {
        Some(l) if tls.is_some() => Some(local_addr("http.tls_listen", l)?),
        _ => None,
    };
    let db = Db::new(&settings.db_path);
    let state = Arc::new(State {
        devices: genba_platform::provisioning::Served {
            mqtt: settings.device_mqtt,
            mqtts: settings.device_mqtts,
            http: addr,
            https: tls_addr,
        },
        local_ca: settings.local_ca,
        usb_ports: settings.usb_ports,
        ca_pem,
        console: console::Console::new(&settings.http, &settings.console, &settings.exment),
        sinks: settings.sinks,
        metrics_dir: settings.metrics_dir,
        firmware_dir: settings.firmware_dir,
        updates_dir: settings.updates_dir,
        shutdown: shutdown.clone(),
        auth: auth::HttpAuth::new(&settings.http),
        http: settings.http,
        journal,
        publisher,
        broker: settings.broker,
        internal_user: settings.internal_user,
        internal_secret: settings.internal_secret,
        telemetry: telemetry::Telemetry::new(&settings.telemetry, db.clone()),
        db,
        provision_http: settings.provision_http,
        v2_limiter: genba_telemetry::limiter::Limiter::new(v2::RATE_PER_SEC, v2::BURST),
    });
    if let (Some(l), Some(acceptor)) = (listeners.https, tls) {
        tokio::spawn(serve(l, state.clone(), shutdown.clone(), Some(acceptor)));
    }
    let done = tokio::spawn(serve(listeners.http, state, shutdown, None));
    Ok(RunningBridge {
        addr,
        tls_addr,
        done,
    })
}

/// Marks a request that came over HTTPS.
#[derive(Debug, Clone, Copy)]
pub struct ViaTls;

/// `GET /ca.pem`: the local certificate authority's certificate, for devices and browsers to
/// trust (public: it is what a client needs before it can check anything).
async fn ca_pem(AxumState(state): AxumState<Shared>) -> Response {
    match &state.ca_pem {
        Some(pem) => ([(CONTENT_TYPE, "application/x-pem-file")], pem.clone()).into_response(),
        None => Problem::new(
            StatusCode::NOT_FOUND,
            "no local certificate authority: the TLS certificate comes from the settings",
        )
        .into_response(),
    }
}

/// `GET /firmware/SHA256.bin`: a firmware image kept by `genba firmware add`, for devices to
/// update from. Public, like `/ca.pem`: the image is no secret, and the device checks what it
/// got against the SHA-256 in its name (which the update command gives it). `GET
/// /firmware/SHA256-board.bin`: that app's board image (the whole flash), for new boards.
async fn firmware_image(
    AxumState(state): AxumState<Shared>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Response {
    // `SHA256.bin` (the app, for updates) or `SHA256-board.bin` (the whole flash, new boards)
    let name = file.strip_suffix(".bin").unwrap_or_default();
    let (sha256, board) = match name.strip_suffix("-board") {
        Some(sha) => (sha, true),
        None => (name, false),
    };
    if !genba_store::firmware::is_sha256(sha256) {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "no such firmware image: the name is its SHA-256 (64 lower-case hex digits) and \
             .bin, or -board.bin for its board image",
        )
        .into_response();
    }
    let path = state.firmware_dir.join(if board {
        genba_store::firmware::board_file_name(sha256)
    } else {
        genba_store::firmware::file_name(sha256)
    });
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (CONTENT_TYPE, "application/octet-stream".to_owned()),
                (hyper::header::ETAG, format!("\"{name}\"")),
                (
                    hyper::header::CACHE_CONTROL,
                    "public, max-age=31536000, immutable".to_owned(),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Problem::new(
            StatusCode::NOT_FOUND,
            format!("no firmware image {sha256} (see `genba firmware list`)"),
        )
        .into_response(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "firmware image unreadable");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the firmware image cannot be read",
            )
            .into_response()
        }
    }
}

/// Every path the bridge serves. Unknown paths are 404 and wrong methods 405, both as JSON.
fn router(state: Shared) -> Router {
    Router::new()
        .merge(console::routes())
        .route("/health", get(health))
        .route("/ca.pem", get(ca_pem))
        .route(
            &format!("{}:file", genba_firmware_core::image::DOWNLOAD_PREFIX),
            get(firmware_image),
        )
        .route("/status", get(status))
        .route("/metrics", get(metrics::handle))
        .route("/notify", get(notify).post(notify))
        .route("/api/telemetry", post(telemetry::handle))
        .route("/post_v2", post(v2::post_v2))
        .route("/post_v2/", post(v2::post_v2))
        .nest("/v2", v2::router())
        .route_layer(axum::middleware::from_fn(metrics::count_requests))
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_method_not_allowed))
        .with_state(state)
}

async fn not_found(req: Request) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", req.uri().path()),
    )
}

/// axum answers a wrong method with an empty 405; give it the JSON error body every other
/// refusal has.
async fn json_method_not_allowed(res: Response) -> Response {
    if res.status() != StatusCode::METHOD_NOT_ALLOWED {
        return res;
    }
    let allow = res.headers().get(hyper::header::ALLOW).cloned();
    let mut p = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
    .into_response();
    if let Some(allow) = allow {
        p.headers_mut().insert(hyper::header::ALLOW, allow);
    }
    p
}

async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<genba_tls::TlsAcceptor>,
) {
    let header_timeout = Duration::from_secs(state.http.request_timeout_secs.max(1));
    let app = router(state.clone());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let via_tls = tls.is_some();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                if via_tls {
                    req.extensions_mut().insert(ViaTls);
                }
                tower::ServiceExt::oneshot(app.clone(), req)
            });
        let builder = {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            b
        };
        match &tls {
            None => {
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, bounded like a request's headers.
                let (acceptor, watcher) = (acceptor.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

async fn notify(AxumState(state): AxumState<Shared>, req: Request) -> Result<Response, Problem> {
    let headers = req.headers().clone();
    // A browser (the console's send form) gets an HTML page; scripts keep the JSON answer.
    let wants_html = headers
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let mut console_viewer = None;
    if let Err(refused) = state.auth.check(&headers).await {
        // A form post from a console login (with its CSRF token) needs no API key.
        console_viewer = Some(refused);
    }
    let query = notify::parse_urlencoded(req.uri().query().unwrap_or_default().as_bytes())?;
    let mut console_viewer_ok = None;
    let note = if req.method() == Method::GET {
        notify::from_pairs(&query, &state.http)?
    } else {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let body = read_body(req, &state).await?;
        match content_type.as_str() {
            "application/json" => notify::from_json(&body, &state.http)?,
            "application/x-www-form-urlencoded" => {
                let mut pairs = notify::parse_urlencoded(&body)?;
                if let Some(refused) = console_viewer.take() {
                    let csrf = pairs
                        .iter()
                        .find(|(k, _)| k == "csrf")
                        .map(|(_, v)| v.as_str());
                    match console::form_viewer(&state, &headers, csrf) {
                        Some(v) => console_viewer_ok = Some(v),
                        None => return Err(refused),
                    }
                }
                pairs.extend(query);
                notify::from_pairs(&pairs, &state.http)?
            }
            "text/plain" | "" => {
                let topic = query
                    .iter()
                    .find(|(k, _)| k == "topic")
                    .map(|(_, v)| v.clone());
                notify::from_text(&body, topic, &state.http)?
            }
            other => {
                return Err(Problem::field(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "content-type",
                    format!(
                        "{other} is not accepted; send application/json, a form, or text/plain"
                    ),
                ))
            }
        }
    };
    if let Some(refused) = console_viewer {
        return Err(refused);
    }
    let payload = note.message.into_bytes();
    let message = NewMessage {
        source: "http".into(),
        topic: note.topic.clone(),
        payload: payload.clone(),
        qos: 1,
        retain: false,
        mqtt_pid: None,
        dup: false,
    };
    let id = journal_message(&state, message).await?;
    let published = state.publisher.publish(&note.topic, payload);
    if wants_html {
        let v = console_viewer_ok.unwrap_or_else(|| console::any_viewer(&state, &headers));
        return Ok(console::sent_page(&state, &v, id, &note.topic));
    }
    Ok(reply::json(
        StatusCode::OK,
        &json!({"ok": true, "id": id, "topic": note.topic, "published": published}),
    )
    .into_response())
}

/// Appends a message to the journal and waits for its commit; `Busy` is a 503 with
/// `Retry-After`, nothing stored.
pub(crate) async fn journal_message(state: &State, message: NewMessage) -> Result<i64, Problem> {
    let committed = state.journal.try_submit(message).map_err(store_problem)?;
    committed.await.map_err(store_problem)
}

/// A refused append as the client sees it. Not logged per request: the journal writer and the
/// storage check log the cause once (a full card refused 162,000 requests in 25 s before).
pub(crate) fn store_problem(e: StoreError) -> Problem {
    match e {
        StoreError::Busy => Problem::busy(1),
        StoreError::Full => Problem {
            retry_after: Some(60),
            ..Problem::new(
                StatusCode::INSUFFICIENT_STORAGE,
                StoreError::Full.to_string(),
            )
        },
        other => {
            tracing::debug!(error = %other, "journal append failed");
            let mut p = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the journal is unavailable; nothing was stored",
            );
            p.retry_after = Some(5);
            p
        }
    }
}

pub(crate) async fn read_body(req: Request, state: &State) -> Result<Bytes, Problem> {
    let max = state.http.max_body_bytes;
    let too_large = || {
        Problem::field(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
            format!("is larger than {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let timeout = Duration::from_secs(state.http.request_timeout_secs.max(1));
    if let Some(n) = declared.filter(|n| *n > max as u64) {
        // Up to 4x the limit the body is read and dropped first, so the client sees the 413
        // instead of a reset while it is still sending; beyond, it is refused unread.
        if n <= 4 * max as u64 {
            let drain = Limited::new(req.into_body(), 4 * max).collect();
            let _ = tokio::time::timeout(timeout, drain).await;
        }
        return Err(too_large());
    }
    let collected = tokio::time::timeout(timeout, Limited::new(req.into_body(), max).collect())
        .await
        .map_err(|_| {
            Problem::field(
                StatusCode::REQUEST_TIMEOUT,
                "body",
                "was not received in time",
            )
        })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(Problem::bad("body", format!("could not be read: {e}"))),
    }
}

async fn health(AxumState(state): AxumState<Shared>) -> HttpResponse {
    let broker_up =
        publisher::probe(&state.broker, &state.internal_user, &state.internal_secret).await;
    let journal = state.journal.state();
    let ok = broker_up && journal == "up";
    reply::json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &json!({
            "status": if ok { "ok" } else { "degraded" },
            "broker": if broker_up { "up" } else { "down" },
            "journal": journal,
            "journal_pending": state.journal.pending(),
            "bridge_connected": state.publisher.connected(),
        }),
    )
}

async fn status(
    AxumState(state): AxumState<Shared>,
    headers: hyper::HeaderMap,
) -> Result<HttpResponse, Problem> {
    state.auth.check(&headers).await?;
    let exment_on = state.console.exment_on;
    let status = state
        .db
        .read(move |reader| reader.status(exment_on))
        .await
        .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(reply::json(StatusCode::OK, &json!(status)))
}
