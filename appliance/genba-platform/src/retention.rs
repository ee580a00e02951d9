//! Keeps raw points and records `raw_days` and rollups `rollup_days`, pruned every hour.

use std::time::Duration;

use genba_config::DevicesConfig;
use genba_store::Db;
use tokio::sync::watch;

const DAY_MS: i64 = 86_400_000;

pub async fn run(db: Db, cfg: DevicesConfig, mut shutdown: watch::Receiver<bool>) {
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        let raw = now - i64::from(cfg.raw_days) * DAY_MS;
        let rollups = now - i64::from(cfg.rollup_days) * DAY_MS;
        match db
            .run(move |c| genba_store::streams::prune(c, raw, rollups))
            .await
        {
            Ok(n) if n > 0 => tracing::info!(rows = n, "pruned device points"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning device points failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
