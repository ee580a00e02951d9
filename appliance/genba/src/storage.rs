//! The data partition's budget (docs/storage.md). Every `store.check_secs` each process with a
//! journal measures the database's live pages against its budget (`store.max_share_percent`
//! of the data file system, or `store.max_mb`):
//! - the process that owns retention (the broker's) prunes journal rows past
//!   `store.retention_hours`, and above the budget the oldest rows every sink has passed,
//!   whatever their age, down to 90% of it;
//! - when rows no sink has passed still fill the budget, the journal refuses new data
//!   ([`genba_store::StoreError::Full`]: HTTP 507, MQTT connection closed) and `/health` says
//!   "degraded" until a sink catches up or the budget grows;
//! - the owner journals `alarms/genba/storage` when the state changes (low space, full, ok),
//!   so every sink whose filters take `alarms/#` tells someone before the card is full.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use genba_config::StoreConfig;
use genba_store::{Journal, NewMessage, Reader};
use tokio::sync::watch;

/// The appliance's own journal source for these alarms (taken even at the budget).
const SOURCE: &str = "genba:storage";
pub const ALARM_TOPIC: &str = "alarms/genba/storage";
/// Time-based pruning runs this often; the size check every `check_secs`.
const TIME_PRUNE_EVERY: Duration = Duration::from_secs(600);
const MIB: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Ok,
    Low,
    Full,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Low => "low",
            Level::Full => "full",
        }
    }
}

/// One measurement.
#[derive(Debug)]
struct Space {
    fs_bytes: u64,
    free_bytes: u64,
    used_bytes: u64,
    budget_bytes: u64,
    pruned_by_age: usize,
    pruned_by_size: usize,
}

impl Space {
    fn level(&self, cfg: &StoreConfig) -> Level {
        if self.used_bytes > self.budget_bytes {
            Level::Full
        } else if self.free_bytes < low_space_floor(self.fs_bytes, cfg)
            || self.used_bytes > self.budget_bytes / 10 * 8
        {
            Level::Low
        } else {
            Level::Ok
        }
    }
}

/// Free space below which the partition is "low": `low_space_percent` of it, at most 1 GiB
/// (10% of a Pi's few-GB data partition; on a big disk, 1 GiB is still days of journal).
fn low_space_floor(fs_bytes: u64, cfg: &StoreConfig) -> u64 {
    (fs_bytes / 100 * u64::from(cfg.low_space_percent)).min(1024 * MIB)
}

/// Measures, and (for the owner) prunes: by age when `cutoff_ms` is given, then by size.
fn check(
    db: &Path,
    data_dir: &Path,
    cfg: &StoreConfig,
    owner: bool,
    cutoff_ms: Option<i64>,
) -> Result<Space> {
    let fs = nix::sys::statvfs::statvfs(data_dir)
        .with_context(|| format!("statvfs {}", data_dir.display()))?;
    let block = fs.fragment_size() as u64;
    let fs_bytes = fs.blocks() as u64 * block;
    let budget_bytes = cfg.budget_bytes(fs_bytes);
    let reader = Reader::open(db)?;
    let mut space = Space {
        fs_bytes,
        free_bytes: fs.blocks_available() as u64 * block,
        used_bytes: 0,
        budget_bytes,
        pruned_by_age: 0,
        pruned_by_size: 0,
    };
    if owner {
        if let Some(cutoff) = cutoff_ms {
            space.pruned_by_age = reader.prune(cutoff)?;
        }
    }
    space.used_bytes = reader.used_bytes()?;
    if owner && space.used_bytes > budget_bytes {
        // Down to 90% of the budget, so the next few commits do not cross it again, in steps
        // sized by the average row (an overestimate: other tables share the pages).
        let target = budget_bytes / 10 * 9;
        while space.used_bytes > target {
            let per_row = (space.used_bytes / reader.journal_len()?.max(1)).max(1);
            let rows = ((space.used_bytes - target) / per_row + 1) as usize;
            let n = reader.delete_passed(i64::MAX, rows)?;
            space.pruned_by_size += n;
            space.used_bytes = reader.used_bytes()?;
            if n == 0 {
                break;
            }
        }
    }
    Ok(space)
}

fn alarm(level: Level, s: &Space) -> NewMessage {
    let mb = |b: u64| b / MIB;
    let message = match level {
        Level::Full => format!(
            "storage full: the database uses {} MiB of its {} MiB budget and sinks have not passed its oldest rows; new data is refused until they catch up or the budget grows",
            mb(s.used_bytes),
            mb(s.budget_bytes)
        ),
        Level::Low => format!(
            "storage low: the database uses {} MiB of its {} MiB budget; {} MiB of {} MiB free on the data partition",
            mb(s.used_bytes),
            mb(s.budget_bytes),
            mb(s.free_bytes),
            mb(s.fs_bytes)
        ),
        Level::Ok => format!(
            "storage ok again: the database uses {} MiB of its {} MiB budget",
            mb(s.used_bytes),
            mb(s.budget_bytes)
        ),
    };
    let payload = serde_json::json!({
        "state": level.as_str(),
        "message": message,
        "used_mb": mb(s.used_bytes),
        "budget_mb": mb(s.budget_bytes),
        "free_mb": mb(s.free_bytes),
        "partition_mb": mb(s.fs_bytes),
    });
    NewMessage {
        source: SOURCE.into(),
        topic: ALARM_TOPIC.into(),
        payload: payload.to_string().into_bytes(),
        qos: 1,
        retain: false,
        mqtt_pid: None,
        dup: false,
    }
}

/// The state the last storage alarm announced (a restart that fixed the budget still says
/// "ok again"); `Ok` when there was none.
fn announced(db: &Path) -> Result<Level> {
    let conn = genba_store::open(db)?;
    let last: Option<Vec<u8>> = rusqlite::OptionalExtension::optional(conn.query_row(
        "SELECT payload FROM journal WHERE topic = ?1 ORDER BY id DESC LIMIT 1",
        [ALARM_TOPIC],
        |r| r.get(0),
    ))?;
    let state = last
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
        .and_then(|v| v["state"].as_str().map(str::to_owned));
    Ok(match state.as_deref() {
        Some("full") => Level::Full,
        Some("low") => Level::Low,
        _ => Level::Ok,
    })
}

/// Runs the check until shutdown. `owner`: this process prunes and raises the alarms.
pub async fn run(
    db: PathBuf,
    data_dir: PathBuf,
    journal: Journal,
    cfg: StoreConfig,
    owner: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut level = if owner {
        let d = db.clone();
        match tokio::task::spawn_blocking(move || announced(&d)).await {
            Ok(Ok(level)) => level,
            _ => Level::Ok,
        }
    } else {
        Level::Ok
    };
    let mut last_time_prune: Option<Instant> = None;
    loop {
        let cutoff_ms = if last_time_prune.is_none_or(|t| t.elapsed() >= TIME_PRUNE_EVERY) {
            last_time_prune = Some(Instant::now());
            Some(chrono::Utc::now().timestamp_millis() - (cfg.retention_hours as i64) * 3_600_000)
        } else {
            None
        };
        let (d, dir, c) = (db.clone(), data_dir.clone(), cfg.clone());
        let measured =
            tokio::task::spawn_blocking(move || check(&d, &dir, &c, owner, cutoff_ms)).await;
        match measured {
            Ok(Ok(space)) => {
                if space.pruned_by_age > 0 {
                    tracing::info!(
                        rows = space.pruned_by_age,
                        "pruned journal rows past retention"
                    );
                }
                if space.pruned_by_size > 0 {
                    tracing::warn!(
                        rows = space.pruned_by_size,
                        used_mb = space.used_bytes / MIB,
                        budget_mb = space.budget_bytes / MIB,
                        "journal at its storage budget: pruned the oldest rows every sink had passed"
                    );
                }
                metrics::gauge!("genba_storage_used_bytes").set(space.used_bytes as f64);
                metrics::gauge!("genba_storage_budget_bytes").set(space.budget_bytes as f64);
                metrics::gauge!("genba_storage_free_bytes").set(space.free_bytes as f64);
                let now = space.level(&cfg);
                journal.set_full(now == Level::Full);
                if now != level {
                    let message = alarm(now, &space);
                    match now {
                        Level::Full => tracing::error!(
                            used_mb = space.used_bytes / MIB,
                            budget_mb = space.budget_bytes / MIB,
                            "storage full: refusing new data until sinks catch up or the budget grows"
                        ),
                        Level::Low => tracing::warn!(
                            used_mb = space.used_bytes / MIB,
                            budget_mb = space.budget_bytes / MIB,
                            free_mb = space.free_bytes / MIB,
                            "storage low"
                        ),
                        Level::Ok => tracing::info!("storage ok again"),
                    }
                    if owner {
                        if let Err(e) = journal.append(message).await {
                            tracing::warn!(error = %e, "cannot journal the storage alarm");
                        }
                    }
                    level = now;
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "storage check failed"),
            Err(e) => tracing::warn!(error = %e, "storage check failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(cfg.check_secs.max(1))) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(fs_mb: u64, free_mb: u64, used_mb: u64, budget_mb: u64) -> Space {
        Space {
            fs_bytes: fs_mb * MIB,
            free_bytes: free_mb * MIB,
            used_bytes: used_mb * MIB,
            budget_bytes: budget_mb * MIB,
            pruned_by_age: 0,
            pruned_by_size: 0,
        }
    }

    #[test]
    fn the_level_follows_the_budget_and_the_free_space_floor() {
        let cfg = StoreConfig::default();
        // A Pi's 4 GB data partition: 10% is the floor.
        assert_eq!(space(4000, 1000, 100, 2000).level(&cfg), Level::Ok);
        assert_eq!(space(4000, 399, 100, 2000).level(&cfg), Level::Low);
        assert_eq!(space(4000, 1000, 1601, 2000).level(&cfg), Level::Low);
        assert_eq!(space(4000, 1000, 2001, 2000).level(&cfg), Level::Full);
        // A big disk: the floor is 1 GiB, not 10%.
        assert_eq!(space(250_000, 14_000, 100, 125_000).level(&cfg), Level::Ok);
        assert_eq!(space(250_000, 1000, 100, 125_000).level(&cfg), Level::Low);
        let off = StoreConfig {
            low_space_percent: 0,
            ..StoreConfig::default()
        };
        assert_eq!(space(4000, 1, 100, 2000).level(&off), Level::Ok);
    }
}
