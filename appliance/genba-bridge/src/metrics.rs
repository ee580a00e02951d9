//! `GET /metrics`: the Prometheus text format (docs/metrics.md), with the `metrics` facade and
//! its Prometheus exporter. Counters are recorded where things happen, by every role of this
//! process (journal commits in genba-store, MQTT in genba-broker, sinks in genba-sinks, HTTP
//! requests here); what the database knows (journal rows, each sink's backlog, alarms, rules)
//! is read at scrape time, so it is right whichever process wrote it.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State as AxumState};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::StatusCode;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::reply::Problem;
use crate::Shared;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Bucket bounds (seconds) of the latency histograms.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Installs this process's metrics recorder; the first call wins, later ones do nothing.
/// Without it every counter is a no-op and `/metrics` answers 503.
pub fn install() {
    if HANDLE.get().is_some() {
        return;
    }
    let built = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| b.install_recorder());
    match built {
        Ok(handle) => {
            let _ = HANDLE.set(handle);
            describe();
        }
        Err(e) => tracing::warn!(error = %e, "metrics: no recorder installed; /metrics is off"),
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "genba_journal_commits_total",
        "Group commits of the journal writer"
    );
    describe_counter!(
        "genba_journal_appends_total",
        "Messages and telemetry batches committed to the journal"
    );
    describe_counter!(
        "genba_journal_commit_failures_total",
        "Group commits that failed (a full card, a broken disk); nothing of them was stored"
    );
    describe_counter!(
        "genba_journal_refused_total",
        "Appends refused at the storage budget"
    );
    describe_histogram!(
        "genba_journal_commit_seconds",
        "Time of one group commit, fsync included"
    );
    describe_gauge!("genba_journal_rows", "Rows in the journal now");
    describe_counter!(
        "genba_journal_last_id",
        "Id of the last journal row: every message ever journaled"
    );
    describe_gauge!("genba_journal_up", "1 while the journal takes messages");
    describe_gauge!("genba_mqtt_connections", "MQTT clients connected now");
    describe_counter!("genba_mqtt_connections_total", "MQTT connections accepted");
    describe_counter!(
        "genba_mqtt_messages_received_total",
        "PUBLISH packets taken from clients"
    );
    describe_counter!(
        "genba_mqtt_messages_sent_total",
        "PUBLISH packets delivered to subscribers"
    );
    describe_counter!(
        "genba_http_requests_total",
        "HTTP requests by route and status"
    );
    describe_histogram!("genba_http_request_seconds", "HTTP request handling time");
    describe_gauge!(
        "genba_sink_backlog",
        "Journal rows a sink has not passed yet"
    );
    describe_counter!("genba_sink_delivered_total", "Messages a sink delivered");
    describe_gauge!(
        "genba_sink_parked",
        "Messages a sink parked (refused for good)"
    );
    describe_gauge!(
        "genba_sink_failures",
        "Failed deliveries in a row (0 after a success)"
    );
    describe_counter!(
        "genba_sink_deliveries_total",
        "Delivery attempts by sink and outcome"
    );
    describe_gauge!("genba_alarms", "Alarms by state and severity");
    describe_gauge!(
        "genba_rules",
        "Alarm rules configured or created by the API"
    );
    describe_gauge!(
        "genba_storage_used_bytes",
        "Bytes the database's live pages take"
    );
    describe_gauge!(
        "genba_storage_budget_bytes",
        "The database's storage budget"
    );
    describe_gauge!(
        "genba_storage_free_bytes",
        "Free bytes on the data partition"
    );
}

/// Counts every request by its route (not its path: ids would make a series each) and status.
pub(crate) async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("genba_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("genba_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}

/// Reads what the database knows into gauges.
fn read_database(reader: &genba_store::Reader) -> genba_store::Result<()> {
    let status = reader.status(false)?;
    metrics::gauge!("genba_journal_rows").set(status.journal_rows as f64);
    metrics::counter!("genba_journal_last_id").absolute(status.last_id.max(0) as u64);
    for s in &status.sinks {
        let sink = s.name.clone();
        metrics::gauge!("genba_sink_backlog", "sink" => sink.clone()).set(s.backlog as f64);
        metrics::counter!("genba_sink_delivered_total", "sink" => sink.clone())
            .absolute(s.delivered.max(0) as u64);
        metrics::gauge!("genba_sink_parked", "sink" => sink.clone()).set(s.parked as f64);
        metrics::gauge!("genba_sink_failures", "sink" => sink).set(s.failures as f64);
    }
    let counts = reader.alarm_counts()?;
    for (alarm_state, severity, n) in counts.alarms {
        metrics::gauge!("genba_alarms", "state" => alarm_state, "severity" => severity)
            .set(n as f64);
    }
    metrics::gauge!("genba_rules").set(counts.rules as f64);
    Ok(())
}

pub(crate) async fn handle(
    AxumState(state): AxumState<Shared>,
    headers: hyper::HeaderMap,
) -> Response {
    if let Err(p) = state.auth.check(&headers).await {
        return p.into_response();
    }
    let Some(handle) = HANDLE.get() else {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not recorded in this process",
        )
        .into_response();
    };
    metrics::gauge!("genba_journal_up").set(if state.journal.is_healthy() { 1.0 } else { 0.0 });
    if let Err(e) = state.db.read(read_database).await {
        tracing::warn!(error = %e, "metrics: cannot read the database");
    }
    handle.run_upkeep();
    (
        [(
            hyper::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
