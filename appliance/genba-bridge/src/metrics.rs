//! `GET /metrics`: the Prometheus text format (docs/metrics.md), with the `metrics` facade and
//! its Prometheus exporter. Counters are recorded where things happen, by every role of this
//! process (journal commits in genba-store, MQTT in genba-broker, sinks in genba-sinks, HTTP
//! requests here); what the database knows (journal rows, each sink's backlog, alarms, rules)
//! is read at scrape time, so it is right whichever process wrote it.
//!
//! Under separate units (one process per role) the processes without the bridge write their
//! render to `run/metrics/ROLE.prom` every [`EXPORT_EVERY`] ([`export`]); the page joins the
//! fresh ones to its own ([`merge`]), each process's series told apart by a `process` label.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{MatchedPath, Request, State as AxumState};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::StatusCode;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::reply::Problem;
use crate::Shared;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often a process without the bridge writes its metrics for the bridge's page.
pub const EXPORT_EVERY: Duration = Duration::from_secs(10);
/// A written render older than this is from a process that stopped: left out of the page.
const FRESH: Duration = Duration::from_secs(60);

/// Bucket bounds (seconds) of the latency histograms.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Installs this process's metrics recorder; the first call wins, later ones do nothing.
/// Without it every counter is a no-op and `/metrics` answers 503. `process` (the role, when
/// roles run as separate processes) labels every series, so the bridge's page can hold them all.
pub fn install(process: Option<&str>) {
    if HANDLE.get().is_some() {
        return;
    }
    let mut builder = PrometheusBuilder::new();
    if let Some(p) = process {
        builder = builder.add_global_label("process", p);
    }
    let built = builder
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
    let dir = state.metrics_dir.clone();
    let body = tokio::task::spawn_blocking(move || page(handle, dir.as_deref()))
        .await
        .unwrap_or_else(|_| handle.render());
    (
        [(
            hyper::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// This process's render with the fresh ones other processes wrote to `dir`.
fn page(handle: &PrometheusHandle, dir: Option<&Path>) -> String {
    let own = handle.render();
    let Some(dir) = dir else { return own };
    let mut renders = vec![own];
    renders.extend(written(dir, SystemTime::now()));
    if renders.len() == 1 {
        return renders.swap_remove(0);
    }
    merge(&renders)
}

/// The renders in `dir` written within [`FRESH`] of `now`.
fn written(dir: &Path, now: SystemTime) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "prom"))
        .filter(|p| {
            let modified = std::fs::metadata(p).and_then(|m| m.modified());
            modified.is_ok_and(|m| now.duration_since(m).unwrap_or_default() < FRESH)
        })
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// Joins renders into one page in the text format: each metric family once (its `# HELP` and
/// `# TYPE` lines), followed by the samples of every render, in order of first appearance.
pub(crate) fn merge(renders: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
    for text in renders {
        let mut current: Option<String> = None;
        for line in text.lines() {
            let header = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "));
            let (name, is_header) = match header {
                Some(rest) => (rest.split(' ').next().unwrap_or_default().to_owned(), true),
                None if line.is_empty() || line.starts_with('#') => continue,
                None => match &current {
                    Some(name) => (name.clone(), false),
                    None => (
                        line.split(['{', ' ']).next().unwrap_or_default().to_owned(),
                        false,
                    ),
                },
            };
            let family = families.entry(name.clone()).or_insert_with(|| {
                order.push(name.clone());
                Default::default()
            });
            if is_header {
                if !family.0.iter().any(|h| h == line) {
                    family.0.push(line.to_owned());
                }
                current = Some(name);
            } else {
                family.1.push(line.to_owned());
            }
        }
    }
    let mut out = String::new();
    for name in order {
        let (headers, samples) = &families[&name];
        for line in headers.iter().chain(samples) {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// For a process without the bridge: writes this process's render to `dir/PROCESS.prom` every
/// [`EXPORT_EVERY`] (replacing it whole), and removes it on shutdown.
pub async fn export(
    dir: PathBuf,
    process: &'static str,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(handle) = HANDLE.get() else { return };
    let path = dir.join(format!("{process}.prom"));
    let tmp = dir.join(format!(".{process}.prom.tmp"));
    let mut logged = false;
    loop {
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&tmp, handle.render()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            if !logged {
                tracing::warn!(path = %path.display(), error = %e, "metrics: cannot write this process's metrics for the bridge");
                logged = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EXPORT_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn merged_renders_hold_each_family_once_with_every_process_samples() {
        let bridge = "# HELP genba_journal_commits_total Group commits\n\
                      # TYPE genba_journal_commits_total counter\n\
                      genba_journal_commits_total{process=\"bridge\"} 3\n\n\
                      # TYPE genba_http_requests_total counter\n\
                      genba_http_requests_total{route=\"/notify\",status=\"200\",process=\"bridge\"} 2\n\n";
        let broker = "# HELP genba_journal_commits_total Group commits\n\
                      # TYPE genba_journal_commits_total counter\n\
                      genba_journal_commits_total{process=\"broker\"} 40\n\n\
                      # TYPE genba_mqtt_connections gauge\n\
                      genba_mqtt_connections{process=\"broker\"} 5\n\n";
        let page = merge(&[bridge.to_owned(), broker.to_owned()]);
        assert_eq!(
            page,
            "# HELP genba_journal_commits_total Group commits\n\
             # TYPE genba_journal_commits_total counter\n\
             genba_journal_commits_total{process=\"bridge\"} 3\n\
             genba_journal_commits_total{process=\"broker\"} 40\n\n\
             # TYPE genba_http_requests_total counter\n\
             genba_http_requests_total{route=\"/notify\",status=\"200\",process=\"bridge\"} 2\n\n\
             # TYPE genba_mqtt_connections gauge\n\
             genba_mqtt_connections{process=\"broker\"} 5\n\n"
        );
    }
}
