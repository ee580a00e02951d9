//! `genba sinks list|test|retry`: the delivery sinks from the operator's side.

use anyhow::{Context, Result};
use genba_config::{Config, SinkConfig};
use genba_sinks::{Deliver, Outcome};
use genba_store::SinkState;

use crate::lifecycle::load_config;
use crate::SinksCommand;

pub fn run(cmd: SinksCommand) -> Result<()> {
    match cmd {
        SinksCommand::List { common, json } => list(&load_config(&common)?, json),
        SinksCommand::Test { common, name } => test(&load_config(&common)?, &name),
        SinksCommand::Retry { common, name } => retry(&load_config(&common)?, &name),
    }
}

/// The configured sink called `name` (or `KIND:NAME`).
fn find(config: &Config, name: &str) -> Result<SinkConfig> {
    let sinks = config.delivery_sinks();
    sinks
        .iter()
        .find(|s| s.name == name || s.store_name() == name)
        .cloned()
        .with_context(|| {
            let names: Vec<_> = sinks.iter().map(|s| s.name.as_str()).collect();
            format!(
                "no sink named {name:?} in the config (configured: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )
        })
}

fn states(config: &Config) -> Result<Vec<SinkState>> {
    let db = genba_store::db_path(&config.data_dir());
    if !db.exists() {
        return Ok(Vec::new());
    }
    Ok(genba_store::Reader::open(&db)?.status(false)?.sinks)
}

/// The Exment forwarder's row in the sinks table: it runs its own loop (check slots, a
/// sent-ledger, lookups) but is listed, tested and retried beside the others.
const EXMENT: &str = "exment";

fn exment_row(config: &Config) -> Result<Option<serde_json::Value>> {
    if config.exment.base_url.is_none() {
        return Ok(None);
    }
    let db = genba_store::db_path(&config.data_dir());
    let status = if db.exists() {
        Some(genba_store::Reader::open(&db)?.exment_status()?)
    } else {
        None
    };
    Ok(Some(serde_json::json!({
        "name": EXMENT,
        "kind": EXMENT,
        "store_name": EXMENT,
        "filters": ["readings (HACCP check slots)"],
        "state": status.map(|s| serde_json::json!({
            "backlog": s.records_due,
            "delivered": s.sent,
            "parked": s.refused,
            "unknown": s.unknown,
            "state": s.state,
            "last_error": s.last_error,
        })),
    })))
}

fn list(config: &Config, json: bool) -> Result<()> {
    let states = states(config)?;
    let mut rows: Vec<serde_json::Value> = config
        .delivery_sinks()
        .iter()
        .map(|s| {
            let state = states.iter().find(|st| st.name == s.store_name());
            serde_json::json!({
                "name": s.name,
                "kind": s.kind.as_str(),
                "store_name": s.store_name(),
                "filters": s.filters,
                "rate_per_sec": s.rate(),
                "max_batch": s.max_batch(),
                "state": state,
            })
        })
        .collect();
    rows.extend(exment_row(config)?);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no sinks configured: add [[sinks]] to the config (see `genba config example` and docs/sinks.md)");
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:>8} {:>10} {:>7} {:>8}  filters / last error",
        "sink", "kind", "backlog", "delivered", "parked", "failures"
    );
    for r in &rows {
        let s = &r["state"];
        let num = |k: &str| s[k].as_i64().map_or("-".to_owned(), |n| n.to_string());
        println!(
            "{:<20} {:<8} {:>8} {:>10} {:>7} {:>8}  {}{}",
            r["name"].as_str().unwrap_or_default(),
            r["kind"].as_str().unwrap_or_default(),
            num("backlog"),
            num("delivered"),
            num("parked"),
            num("failures"),
            r["filters"]
                .as_array()
                .map(|f| f
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default(),
            s["last_error"]
                .as_str()
                .map(|e| format!(" / {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn test(config: &Config, name: &str) -> Result<()> {
    if name == EXMENT && config.exment.base_url.is_some() {
        return crate::commands::with_exment(config, async |f| {
            f.check().await?;
            println!("exment: token granted and the table answered a lookup; nothing was created");
            Ok(())
        });
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sink = find(config, name)?;
    let secrets = genba_config::Secrets::load(&config.secrets_path())?;
    let mut channel = genba_sinks::Channel::new(&sink, &secrets)?;
    let message = genba_sinks::channel::test_message(&sink.name);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match runtime.block_on(channel.deliver(&[message])) {
        Outcome::Delivered => {
            println!("{}: delivered", sink.store_name());
            Ok(())
        }
        Outcome::Retry { reason, after } => anyhow::bail!(
            "{}: not delivered, the receiver may take it later: {reason}{}",
            sink.store_name(),
            after.map_or(String::new(), |d| format!(
                " (it asks to wait {} s)",
                d.as_secs()
            ))
        ),
        Outcome::Permanent { reason } => anyhow::bail!(
            "{}: refused (fix the sink's settings or secrets): {reason}",
            sink.store_name()
        ),
    }
}

fn retry(config: &Config, name: &str) -> Result<()> {
    if name == EXMENT && config.exment.base_url.is_some() {
        return crate::commands::with_exment(config, async |f| {
            let (requeued, report) = f.retry(None).await?;
            println!(
                "exment: {requeued} refused record(s) tried again: {}",
                serde_json::to_string(&report)?
            );
            Ok(())
        });
    }
    let store_name = match find(config, name) {
        Ok(sink) => sink.store_name(),
        Err(e) => {
            if !states(config)?.iter().any(|s| s.name == name) {
                return Err(e);
            }
            name.to_owned()
        }
    };
    let conn = genba_store::open(&genba_store::db_path(&config.data_dir()))?;
    let n = genba_store::alarms::request_retry(&conn, &store_name)?;
    println!("{store_name}: {n} parked message(s) queued for another delivery");
    Ok(())
}
