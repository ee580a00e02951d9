//! `genba devices ...` and `genba tokens ...`: the device registry and REST API tokens, from
//! the command line (the same tables the `/v2` API serves).

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use genba_auth::passwords::{api_key_digest, generate_api_key};
use genba_store::devices::{self, Device, DeviceChange};
use genba_store::{tokens, Db, Journal, NewMessage};

use crate::lifecycle::load_config;
use crate::Common;

#[derive(Subcommand)]
pub enum DevicesCommand {
    /// Register a device (it may then send before auto-provisioning would allow it).
    Add {
        #[command(flatten)]
        common: Common,
        /// Device id: 1-32 characters from A-Z a-z 0-9 - _ . (its MQTT topic level).
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        location: Option<String>,
        /// Repeat for several tags.
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every device with its state and when it was last seen.
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
    /// One device and its streams with their latest values.
    Show {
        #[command(flatten)]
        common: Common,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Refuse the device's messages from now on (what it sent before is kept).
    Disable {
        #[command(flatten)]
        common: Common,
        id: String,
    },
    /// Accept the device's messages again.
    Enable {
        #[command(flatten)]
        common: Common,
        id: String,
    },
    /// Register a thermometer, make its own credential and write its config file (Wi-Fi,
    /// appliance address, credential, pins, interval, offsets) for its `config` flash
    /// partition; prints the espflash command that writes it over USB.
    Provision(crate::provision::ProvisionArgs),
    /// Publish a command on devices/ID/commands (QoS 1), journaled first.
    Send {
        #[command(flatten)]
        common: Common,
        id: String,
        /// The command, e.g. '{"cmd":"led","on":true}'.
        payload: String,
    },
    /// Tell a device to install a firmware image the appliance keeps (`genba firmware add`):
    /// publishes {"cmd":"update",...} with the image's version, SHA-256 and size; the device
    /// fetches it from this appliance's GET /firmware/SHA256.bin.
    Update {
        #[command(flatten)]
        common: Common,
        id: String,
        /// The image: its version (the newest image with it) or its SHA-256.
        image: String,
    },
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Make a REST API token (X-APITOKEN); prints it once (only its SHA-256 is stored).
    Add {
        #[command(flatten)]
        common: Common,
        /// Who or what uses it, e.g. "dashboard".
        #[arg(long)]
        name: String,
        /// read, write (includes read) or admin (includes write).
        #[arg(long, default_value = "read")]
        scope: String,
        #[arg(long)]
        json: bool,
    },
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id: it gets 401 at once.
    Revoke {
        #[command(flatten)]
        common: Common,
        id: i64,
    },
    /// Enable a revoked token again.
    Enable {
        #[command(flatten)]
        common: Common,
        id: i64,
    },
}

fn db(common: &Common) -> Result<Db> {
    let config = load_config(common)?;
    Ok(Db::new(&genba_store::db_path(&config.data_dir())))
}

/// A time for tables: UTC to the second, `-` when there is none.
pub(crate) fn when(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_device(d: &Device) {
    println!(
        "{:<20} ch {:>3}  {:<8} {:<20} {:<16} last seen {}",
        d.id,
        d.channel,
        if d.enabled { "enabled" } else { "DISABLED" },
        d.name,
        d.location,
        when(d.last_seen_at_ms)
    );
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn known_device(db: &Db, id: &str) -> Result<Device> {
    db.run_blocking(|c| devices::get(c, id))?
        .with_context(|| format!("no device {id:?} (see `genba devices list`)"))
}

pub fn devices_cmd(cmd: DevicesCommand) -> Result<()> {
    match cmd {
        DevicesCommand::Add {
            common,
            id,
            name,
            location,
            tags,
            json,
        } => {
            genba_firmware_core::telemetry::validate_device_id(&id).map_err(|_| {
                anyhow::anyhow!("device id {id:?}: 1-32 characters from A-Z a-z 0-9 - _ .")
            })?;
            let change = DeviceChange {
                name,
                location,
                tags: (!tags.is_empty()).then_some(tags),
                ..Default::default()
            };
            let added = db(&common)?
                .run_blocking(|c| devices::add(c, &id, &change))?
                .with_context(|| format!("device {id:?} exists already"))?;
            if json {
                return print_json(&added);
            }
            print_device(&added);
        }
        DevicesCommand::List { common, json } => {
            let list = db(&common)?.run_blocking(devices::list)?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no devices yet (they appear with their first message, or `genba devices add ID`)");
            }
            list.iter().for_each(print_device);
        }
        DevicesCommand::Show { common, id, json } => {
            let db = db(&common)?;
            let device = known_device(&db, &id)?;
            let streams = db.run_blocking(|c| genba_store::streams::of_device(c, &id))?;
            if json {
                return print_json(&serde_json::json!({"device": device, "streams": streams}));
            }
            print_device(&device);
            if let Some(fw) = &device.firmware {
                println!("  firmware {fw}");
            }
            for s in &streams {
                let value = s
                    .last_value
                    .map(|v| v.to_string())
                    .or_else(|| s.last_text.clone())
                    .unwrap_or_else(|| "-".into());
                println!(
                    "  {:<24} {:>12} {:<6} at {}",
                    s.name,
                    value,
                    s.unit,
                    when(s.last_at_ms)
                );
            }
        }
        DevicesCommand::Disable { common, id } => set_device_enabled(&common, &id, false)?,
        DevicesCommand::Enable { common, id } => set_device_enabled(&common, &id, true)?,
        DevicesCommand::Send {
            common,
            id,
            payload,
        } => send(&common, &id, payload)?,
        DevicesCommand::Update { common, id, image } => {
            let image = find_image(&common, &image)?;
            let payload = genba_platform::updates::update_command(&image)?;
            send(&common, &id, payload)?;
            let asked = genba_platform::updates::request(&image, &id, "cli");
            db(&common)?.run_blocking(|c| genba_store::firmware::record_request(c, &asked))?;
        }
        DevicesCommand::Provision(args) => crate::provision::run(args)?,
    }
    Ok(())
}

fn set_device_enabled(common: &Common, id: &str, enabled: bool) -> Result<()> {
    let change = DeviceChange {
        enabled: Some(enabled),
        ..Default::default()
    };
    let device = db(common)?
        .run_blocking(|c| devices::update(c, id, &change))?
        .with_context(|| format!("no device {id:?} (see `genba devices list`)"))?;
    print_device(&device);
    Ok(())
}

/// A kept image by SHA-256 or version.
fn find_image(common: &Common, image: &str) -> Result<genba_store::firmware::FirmwareImage> {
    db(common)?
        .run_blocking(|c| genba_store::firmware::find(c, image))?
        .with_context(|| format!("no firmware image {image:?} (see `genba firmware list`)"))
}

/// Journals a command; the broker role's command sink publishes it. Waits up to 10 s to say
/// whether it reached the broker.
fn send(common: &Common, id: &str, payload: String) -> Result<()> {
    let config = load_config(common)?;
    let db_path = genba_store::db_path(&config.data_dir());
    let db = Db::new(&db_path);
    known_device(&db, id)?;
    if payload.is_empty() || payload.len() > config.http.max_message_bytes {
        anyhow::bail!(
            "PAYLOAD: 1-{} bytes (http.max_message_bytes)",
            config.http.max_message_bytes
        );
    }
    let topic = format!("devices/{id}/commands");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let journal_id = rt.block_on(async {
        let journal = Journal::start(&db_path, 8, 8)?;
        journal
            .append(NewMessage {
                source: "cli".into(),
                topic: topic.clone(),
                payload: payload.into_bytes(),
                qos: 1,
                retain: false,
                mqtt_pid: None,
                dup: false,
            })
            .await
    })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let passed = db
            .run_blocking(|c| {
                use rusqlite::OptionalExtension;
                c.query_row(
                    "SELECT cursor FROM sinks WHERE name = ?1",
                    [crate::command_sink::SINK],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
            })?
            .is_some_and(|cursor| cursor >= journal_id);
        if passed {
            println!("sent {topic} (journal #{journal_id}); the broker acknowledged it");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!(
        "journaled {topic} as #{journal_id}, but no broker took it within 10 s; \
         it is delivered when `genba up` or `genba broker` runs"
    )
}

pub fn tokens_cmd(cmd: TokensCommand) -> Result<()> {
    let show = |t: &tokens::Token| {
        println!(
            "{:>4}  {:<20} {:<8} {:<12} created {}  last used {}",
            t.id,
            t.name,
            if t.enabled { "enabled" } else { "REVOKED" },
            t.scopes.join(","),
            when(Some(t.created_at_ms)),
            when(t.last_used_at_ms)
        );
    };
    match cmd {
        TokensCommand::Add {
            common,
            name,
            scope,
            json,
        } => {
            if !tokens::SCOPES.contains(&scope.as_str()) {
                anyhow::bail!("scope {scope:?}: one of read, write, admin");
            }
            if name.is_empty() || name.len() > 64 {
                anyhow::bail!("name: 1-64 characters");
            }
            let token = generate_api_key();
            let digest = api_key_digest(&token);
            let info = db(&common)?.run_blocking(|c| tokens::add(c, &name, &[scope], &digest))?;
            if json {
                return print_json(&serde_json::json!({"token": token, "info": info}));
            }
            println!(
                "API token {:?} (id {}, scope {}; shown once, send it as X-APITOKEN):",
                info.name,
                info.id,
                info.scopes.join(",")
            );
            println!("{token}");
        }
        TokensCommand::List { common, json } => {
            let list = db(&common)?.run_blocking(tokens::list)?;
            if json {
                return print_json(&list);
            }
            list.iter().for_each(show);
        }
        TokensCommand::Revoke { common, id } => show(&set_token_enabled(&common, id, false)?),
        TokensCommand::Enable { common, id } => show(&set_token_enabled(&common, id, true)?),
    }
    Ok(())
}

fn set_token_enabled(common: &Common, id: i64, enabled: bool) -> Result<tokens::Token> {
    db(common)?
        .run_blocking(|c| tokens::set_enabled(c, id, enabled))?
        .with_context(|| format!("no API token with id {id} (see `genba tokens list`)"))
}

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Every rule (from genba.toml and the API) as JSON lines.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Add or replace a rule given as JSON (the keys of [[rules]] in genba.toml), e.g.
    /// '{"name":"warm","tag":"fridge","stream":"temperature","condition":">","threshold":8,"for_secs":300}'.
    Add {
        #[command(flatten)]
        common: Common,
        json: String,
    },
    /// Remove a rule made with `add` or the API (rules in genba.toml are edited there).
    Remove {
        #[command(flatten)]
        common: Common,
        name: String,
    },
}

#[derive(Subcommand)]
pub enum AlarmsCommand {
    /// Alarms, newest first: open ones (default), unacknowledged ones, or all.
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        unacknowledged: bool,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge an alarm with the corrective action taken (the HACCP record).
    Ack {
        #[command(flatten)]
        common: Common,
        id: i64,
        /// What was done about it, e.g. "moved stock to fridge 2, called service".
        #[arg(long)]
        note: String,
        /// Who acknowledges (default: the login name).
        #[arg(long)]
        by: Option<String>,
    },
}

pub fn rules_cmd(cmd: RulesCommand) -> Result<()> {
    use genba_store::alarms;
    match cmd {
        RulesCommand::List { common } => {
            for r in db(&common)?.run_blocking(alarms::rules)? {
                println!("{}\t{}\t{}", r.name, r.source, r.spec);
            }
        }
        RulesCommand::Add { common, json } => {
            let rule: genba_config::rules::Rule =
                serde_json::from_str(&json).context("the rule JSON does not read")?;
            rule.check()
                .map_err(|(field, m)| anyhow::anyhow!("rule field {field}: {m}"))?;
            let spec = serde_json::to_string(&rule)?;
            if !db(&common)?.run_blocking(|c| alarms::put_rule(c, &rule.name, &spec))? {
                anyhow::bail!(
                    "rule {:?} is defined in genba.toml; change it there",
                    rule.name
                );
            }
            println!(
                "rule {} saved (the running appliance picks it up within seconds)",
                rule.name
            );
        }
        RulesCommand::Remove { common, name } => {
            match db(&common)?.run_blocking(|c| alarms::delete_rule(c, &name))? {
                Some(true) => println!("rule {name} removed"),
                Some(false) => {
                    anyhow::bail!("rule {name:?} is defined in genba.toml; remove it there")
                }
                None => anyhow::bail!("no rule {name:?} (see `genba rules list`)"),
            }
        }
    }
    Ok(())
}

fn print_alarm(a: &genba_store::alarms::Alarm) {
    println!(
        "#{:<5} {:<12} {:<8} {}  {}",
        a.id,
        a.state(),
        a.severity,
        when(Some(a.raised_at_ms)),
        a.message
    );
    if let (Some(by), Some(note)) = (&a.acked_by, &a.note) {
        println!(
            "       acknowledged by {by} at {}: {note}",
            when(a.acked_at_ms)
        );
    }
}

pub fn alarms_cmd(cmd: AlarmsCommand) -> Result<()> {
    use genba_store::alarms::{self, Ack, Which};
    match cmd {
        AlarmsCommand::List {
            common,
            all,
            unacknowledged,
            device,
            json,
        } => {
            let which = if all {
                Which::All
            } else if unacknowledged {
                Which::Unacknowledged
            } else {
                Which::Open
            };
            let list =
                db(&common)?.run_blocking(|c| alarms::list(c, which, device.as_deref(), 1000))?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no alarms");
            }
            list.iter().for_each(print_alarm);
        }
        AlarmsCommand::Ack {
            common,
            id,
            note,
            by,
        } => {
            let note = note.trim();
            if note.is_empty() || note.len() > 2000 {
                anyhow::bail!("--note: the corrective action taken, 1-2000 characters");
            }
            let by = by
                .or_else(|| std::env::var("SUDO_USER").ok())
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "cli".into());
            match db(&common)?.run_blocking(|c| alarms::acknowledge(c, id, &by, note))? {
                Ack::Done(a) => print_alarm(&a),
                Ack::Already(a) => {
                    print_alarm(&a);
                    anyhow::bail!("alarm #{id} was acknowledged before; its note stays the record")
                }
                Ack::NoSuchAlarm => anyhow::bail!("no alarm #{id} (see `genba alarms list --all`)"),
            }
        }
    }
    Ok(())
}
