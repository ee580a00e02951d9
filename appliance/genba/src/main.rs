//! `genba`: one binary, one subcommand per role. See README.md.

mod command_sink;
mod commands;
mod discovery;
mod event_sink;
mod firmware_cmd;
mod firstboot;
mod lifecycle;
mod platform_cmd;
mod provision;
mod recorder;
mod roles;
mod settings;
mod simulate;
mod sinks_cmd;
mod storage;
mod update_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "genba",
    version,
    about = "Genba: shop-floor MQTT broker, HTTP bridge, SQLite buffer and Slack subscriber"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Default)]
pub struct Common {
    /// Config file (TOML). Without it, built-in defaults (loopback only).
    #[arg(long, short = 'c', env = "GENBA_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite journal, run/endpoints.json). Default ./genba-data.
    #[arg(long, env = "GENBA_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// MQTT listen address, IP:PORT or localhost:PORT (port 0: any free port).
    #[arg(long, global = true, value_parser = genba_config::listen::parse)]
    pub mqtt: Option<SocketAddr>,
    /// HTTP listen address, IP:PORT or localhost:PORT (port 0: any free port).
    #[arg(long, global = true, value_parser = genba_config::listen::parse)]
    pub http: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process: broker, bridge, delivery sinks.
    Up(Common),
    /// The MQTT broker (3.1.1 and 5 on one port; journals every client publish).
    Broker(Common),
    /// The HTTP bridge (/notify, /health, /status).
    Bridge(Common),
    /// Journal what an external broker carries ([recorder] in the config).
    Recorder(Common),
    /// The delivery sinks: [[sinks]] (Slack, webhook, LINE, e-mail) and [[slack.webhooks]].
    Slack(Common),
    /// Delivery sinks: list them, send a test message, retry parked messages.
    #[command(subcommand)]
    Sinks(SinksCommand),
    /// Delivery state of every sink.
    Status {
        #[command(flatten)]
        common: Common,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate or print the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The Exment forwarder (HACCP check records); `replay`, `retry` and `status` below.
    Exment {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        cmd: Option<ExmentCommand>,
    },
    /// Simulated thermometers (the firmware core on the host) against a running appliance.
    Simulate {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: simulate::SimulateArgs,
    },
    /// Device API keys for POST /api/telemetry and /post_v2/.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The device registry: add, provision (a thermometer's config file), list, show,
    /// disable, enable, send a command.
    #[command(subcommand)]
    Devices(platform_cmd::DevicesCommand),
    /// REST API tokens for /v2 (X-APITOKEN).
    #[command(subcommand)]
    Tokens(platform_cmd::TokensCommand),
    /// Rules on device streams (thresholds, silence, rate of change).
    #[command(subcommand)]
    Rules(platform_cmd::RulesCommand),
    /// Alarms raised by the rules: list, acknowledge with a corrective-action note.
    #[command(subcommand)]
    Alarms(platform_cmd::AlarmsCommand),
    /// Firmware images for device updates: add, list, remove.
    #[command(subcommand)]
    Firmware(firmware_cmd::FirmwareCommand),
    /// A/B updates of the SD-card image: install a signed bundle, show the slots.
    #[command(subcommand)]
    Update(update_cmd::UpdateCommand),
    /// Apply the settings file from the boot partition (run once per boot by the image).
    Firstboot {
        /// The genba.toml to update (may be a symlink to the data partition).
        #[arg(long, short = 'c', env = "GENBA_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: firstboot::FirstbootArgs,
    },
    /// Hash a password (read from stdin) for [[mqtt.users]] / [[http.users]], or make an API key.
    Passwd {
        /// Generate a new API key and print it with its SHA-256 for http.api_key_sha256.
        #[arg(long)]
        api_key: bool,
        /// Print {"key","api_key_sha256"} or {"password_hash"} as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum SinksCommand {
    /// Every configured sink with its kind, filters and delivery state.
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
    /// Send one test message through a sink now and print the receiver's answer (exit 1 when
    /// it was not delivered). The journal and the sink's cursor are not touched.
    Test {
        #[command(flatten)]
        common: Common,
        /// The sink's name (as in the config, without the kind).
        name: String,
    },
    /// Deliver the sink's parked messages again (after the cause was fixed); the running
    /// sink picks them up within a second.
    Retry {
        #[command(flatten)]
        common: Common,
        /// The sink's name: a configured sink, or `rule-webhooks`.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum ExmentCommand {
    /// Re-send the records of a range (refused ones too); what Exment already has is looked up
    /// and skipped.
    Replay {
        /// Slots starting at or after this time (RFC 3339, e.g. 2026-02-15T00:00:00Z).
        #[arg(long)]
        since: String,
        #[arg(long)]
        device: Option<String>,
    },
    /// Send the records Exment refused (parked after e.g. a wrong table name or scope) again,
    /// once the cause is fixed; each is looked up first, so nothing is duplicated.
    Retry {
        /// Only this device's records.
        #[arg(long)]
        device: Option<String>,
    },
    /// Backlog, last success and last error (never secrets).
    Status,
    /// Exit 0 when Exment is configured (base_url set), 1 when not: the unit's ExecCondition.
    Check,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a key for a device; prints it once (only its SHA-256 is stored).
    Add {
        #[command(flatten)]
        common: Common,
        /// The device id the key belongs to (it may only post its own readings).
        #[arg(long)]
        device: String,
        /// Scopes (default telemetry:write); repeat for several.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Also make an HMAC signing secret: requests must then carry X-Genba-Timestamp and
        /// X-Genba-Signature (HMAC-SHA256 of "<timestamp>." + body).
        #[arg(long)]
        sign: bool,
        /// Print {"id","device_id","key","signing_secret"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never the keys themselves).
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id: it gets 401 at once; other keys are unaffected.
    Revoke {
        #[command(flatten)]
        common: Common,
        id: i64,
    },
    /// Enable a revoked key again.
    Enable {
        #[command(flatten)]
        common: Common,
        id: i64,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check the config and secrets files; names the bad key or file.
    Check(Common),
    /// Print a commented example config.
    Example,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(c) => lifecycle::run(roles::Role::Up, c),
        Command::Broker(c) => lifecycle::run(roles::Role::Broker, c),
        Command::Bridge(c) => lifecycle::run(roles::Role::Bridge, c),
        Command::Recorder(c) => lifecycle::run(roles::Role::Recorder, c),
        Command::Slack(c) => lifecycle::run(roles::Role::Slack, c),
        Command::Status { common, json } => commands::status(&common, json),
        Command::Sinks(cmd) => sinks_cmd::run(cmd),
        Command::Config(ConfigCommand::Check(c)) => commands::config_check(&c),
        Command::Config(ConfigCommand::Example) => {
            print!("{}", genba_config::EXAMPLE_CONFIG);
            Ok(())
        }
        Command::Keys(cmd) => commands::keys(cmd),
        Command::Devices(cmd) => platform_cmd::devices_cmd(cmd),
        Command::Tokens(cmd) => platform_cmd::tokens_cmd(cmd),
        Command::Rules(cmd) => platform_cmd::rules_cmd(cmd),
        Command::Alarms(cmd) => platform_cmd::alarms_cmd(cmd),
        Command::Firmware(cmd) => firmware_cmd::run(cmd),
        Command::Update(cmd) => update_cmd::run(cmd),
        Command::Exment { common, cmd: None } => lifecycle::run(roles::Role::Exment, common),
        Command::Exment {
            common,
            cmd: Some(cmd),
        } => commands::exment(&common, cmd),
        Command::Simulate { common, args } => commands::simulate(&common, args),
        Command::Firstboot { config, args } => firstboot::run(config.as_deref(), &args),
        Command::Passwd { api_key, json } => commands::passwd(api_key, json),
    }
}
