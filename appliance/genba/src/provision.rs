//! `genba devices provision`: registers a thermometer, gives it its own credential (a device
//! key: its HTTP `X-API-Key`, or its MQTT password with the device id as user name) and writes
//! the config file the device reads from its `config` flash partition. The checks, the key and
//! the record are `genba_platform::provisioning`'s, shared with the console's "Add a
//! thermometer" page. The file goes to the device over USB with `espflash write-bin`, or, with
//! `--write PORT`, this machine writes it (and the newest board image) to a board plugged into
//! its own USB port (`board_flash`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use genba_firmware_core::config::{self as device_config, Pins};
use genba_platform::board_flash;
use genba_platform::provisioning::{self, Transport, PARTITION_OFFSET};

use crate::firstboot::write_file;
use crate::lifecycle::load_config;
use crate::Common;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// MQTT 5 to the broker: telemetry and commands (updates included). The device logs in with
    /// its id as user name and its device key as password.
    Mqtt,
    /// POST /api/telemetry with its device key (X-API-Key): telemetry only.
    Http,
}

#[derive(Args)]
pub struct ProvisionArgs {
    #[command(flatten)]
    pub common: Common,
    /// Device id: 1-32 characters from A-Z a-z 0-9 - _ . (MQTT client id and topic level).
    pub id: String,
    /// The Wi-Fi network the device joins.
    #[arg(long)]
    pub wifi_ssid: String,
    /// Its WPA2 pass phrase (8-63 characters; none for an open network). Also read from
    /// GENBA_WIFI_PASS, which keeps it out of the shell history.
    #[arg(
        long,
        env = "GENBA_WIFI_PASS",
        hide_env_values = true,
        default_value = ""
    )]
    pub wifi_pass: String,
    /// This appliance as the device reaches it: an IPv4 address or a DNS name the LAN's DNS
    /// server resolves. The device looks for the appliance's mDNS announcement first and falls
    /// back to this address. Default: the MQTT listen address when it is a LAN address.
    #[arg(long)]
    pub appliance: Option<String>,
    #[arg(long, value_enum, default_value = "mqtt")]
    pub transport: TransportArg,
    /// Seconds between readings (5-86400); commands can change it later.
    #[arg(long, default_value_t = device_config::DEFAULT_INTERVAL_S)]
    pub interval: u32,
    /// GPIO of the DS18B20 data line (0-10, 20, 21).
    #[arg(long, default_value_t = Pins::default().onewire)]
    pub onewire_gpio: u8,
    /// GPIO of the status LED (0-10, 20, 21).
    #[arg(long, default_value_t = Pins::default().led)]
    pub led_gpio: u8,
    /// The LED lights when its pin is high (default: low, as on ESP32-C3 SuperMini boards).
    #[arg(long)]
    pub led_active_high: bool,
    /// A probe's calibration offset, SENSOR_ID=°C (e.g. 28FF4C3A91160457=-0.25); repeat.
    #[arg(long = "offset")]
    pub offsets: Vec<String>,
    /// SNTP server the device asks (IPv4 address or DNS name).
    #[arg(long, default_value = device_config::DEFAULT_NTP_SERVER)]
    pub ntp_server: String,
    /// Where the config file goes (mode 600: it holds the Wi-Fi pass phrase and the
    /// credential). Default: ID.genba-config.bin in the current directory; with --write, no
    /// file unless asked for.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the device's flash over this machine's USB: the newest board image kept by
    /// `genba firmware add` with the config inside (a blank board is ready in one step), checked
    /// by MD5 and started. PORT is a serial port (/dev/ttyACM0) or `auto`: the one ESP32 board
    /// plugged in. If the write fails, nothing is registered.
    #[arg(long, value_name = "PORT|auto")]
    pub write: Option<String>,
    /// With --write: only the config partition, for a board that runs Genba's firmware already.
    #[arg(long, requires = "write")]
    pub config_only: bool,
    /// With --write: the board is in its loader already (BOOT held while plugging it in) and
    /// the serial lines do not reset it; press RESET afterwards to start it.
    #[arg(long, requires = "write")]
    pub no_reset: bool,
    /// The TLS certificate the device pins, as its SHA-256 (64 hex digits; the `fp` or `ca`
    /// that `genba status` and the mDNS announcement show), or `none`. A pinned device speaks
    /// only TLS (MQTT over TLS or HTTPS, so the appliance needs the transport's `tls_listen`),
    /// trusts only a server whose certificate chain holds the pinned certificate, and takes only
    /// announcements that claim it. Default: this appliance's local CA (DATA_DIR/tls/ca.pem)
    /// when the appliance serves the transport over TLS, else none (plain MQTT or HTTP).
    #[arg(long, value_name = "SHA256|none")]
    pub pin: Option<String>,
    /// Print the result as JSON (never the secrets; they are only in the file).
    #[arg(long)]
    pub json: bool,
}

impl ProvisionArgs {
    fn request(&self) -> provisioning::Request {
        provisioning::Request {
            id: self.id.clone(),
            wifi_ssid: self.wifi_ssid.clone(),
            wifi_pass: self.wifi_pass.clone(),
            appliance: self.appliance.clone(),
            transport: match self.transport {
                TransportArg::Mqtt => Transport::Mqtt,
                TransportArg::Http => Transport::Http,
            },
            interval_s: self.interval,
            pins: Pins {
                onewire: self.onewire_gpio,
                led: self.led_gpio,
                led_active_low: !self.led_active_high,
            },
            offsets: self.offsets.clone(),
            ntp_server: self.ntp_server.clone(),
            pin: self.pin.clone(),
        }
    }
}

pub fn run(args: ProvisionArgs) -> Result<()> {
    let config = load_config(&args.common)?;
    let data_dir = config.data_dir();
    // Everything is checked before anything is created.
    let served = crate::commands::running_endpoints(&args.common, &config);
    let local_ca = genba_tls::local_ca_fingerprint(&data_dir)?;
    let prepared = provisioning::prepare(&args.request(), &served, local_ca.as_deref()).map_err(
        |e| match e.field {
            "id" => anyhow::anyhow!("device id {:?}: {}", args.id, e.message),
            field => anyhow::anyhow!("--{}: {}", field.replace('_', "-"), e.message),
        },
    )?;
    let conn = genba_store::open(&genba_store::db_path(&data_dir))?;
    let write = match &args.write {
        Some(port) => Some(Write::plan(
            &args,
            port,
            &conn,
            &data_dir,
            &prepared.record,
        )?),
        None => None,
    };
    let out = args.out.clone().or_else(|| {
        write
            .is_none()
            .then(|| PathBuf::from(format!("{}.genba-config.bin", args.id)))
    });
    // The board first: if its write fails, nothing is registered. (Not inside the transaction:
    // that would hold the database's write lock against the running appliance for the minute a
    // write takes.)
    if let Some(w) = &write {
        w.run()?;
    }
    let tx = conn.unchecked_transaction()?;
    let registered = provisioning::register(&tx, &prepared)?;
    if let Some(out) = &out {
        write_file(out, &prepared.record, 0o600, None)?;
    }
    tx.commit()?;

    let device = &prepared.device;
    let pinned = prepared.pin_hex();
    let key_id = registered.key_id;
    let file = out.as_ref().map(|o| o.display().to_string());
    let flash = file.as_deref().map(provisioning::flash_command);
    if args.json {
        let credential = match prepared.transport {
            Transport::Http => serde_json::json!({"kind": "api_key", "key_id": key_id}),
            Transport::Mqtt => {
                serde_json::json!({"kind": "device_key", "key_id": key_id, "username": args.id})
            }
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "device_id": args.id,
                "new_device": registered.new_device,
                "transport": prepared.transport.as_str(),
                "appliance": device.host.as_str(),
                "mqtt_port": device.mqtt_port,
                "http_port": device.http_port,
                "pin": pinned,
                "credential": credential,
                "file": file,
                "file_bytes": prepared.record.len(),
                "partition_offset": format!("{PARTITION_OFFSET:#x}"),
                "flash_command": flash,
                "written": write.as_ref().map(Write::json),
            }))?
        );
        return Ok(());
    }
    println!(
        "device {} {}; it reports to {} over {}",
        args.id,
        if registered.new_device {
            "registered"
        } else {
            "was registered already"
        },
        device.host,
        prepared.reports_over()
    );
    match &pinned {
        Some(fp) => println!(
            "it trusts only a server whose certificate chain holds the certificate with SHA-256 \
             {fp}, and takes only appliances announcing it"
        ),
        None => println!("it pins no TLS fingerprint (--pin)"),
    }
    println!(
        "credential: device key #{key_id} for {}{} (revoke it alone with `genba keys revoke \
         {key_id}`)",
        args.id,
        match prepared.transport {
            Transport::Mqtt => ", its MQTT password with the user name of the device id",
            Transport::Http => "",
        }
    );
    if let Some(file) = &file {
        println!(
            "config file: {file} ({} bytes, mode 600: it holds the Wi-Fi pass phrase and the \
             credential)",
            prepared.record.len()
        );
    }
    match (&write, &flash) {
        (Some(w), _) => println!("{}", w.said()),
        (None, Some(flash)) => {
            println!("write it to the device's config partition over USB:");
            println!("  {flash}");
            println!(
                "(a new board needs the firmware first: firmware/README.md, \"Set up a \
                 thermometer\"; or plug it into this machine and use --write auto)"
            );
        }
        (None, None) => {}
    }
    Ok(())
}

/// What `--write` puts on the board, and where.
struct Write {
    port: board_flash::Port,
    reset: board_flash::Reset,
    plan: board_flash::Plan,
}

impl Write {
    /// Everything checked before anything is written or registered: the port, and the board
    /// image.
    fn plan(
        args: &ProvisionArgs,
        port: &str,
        conn: &rusqlite::Connection,
        data_dir: &Path,
        record: &[u8],
    ) -> Result<Write> {
        let port = board_flash::find_port(port).context("--write")?;
        let reset = if args.no_reset {
            board_flash::Reset::None
        } else {
            board_flash::Reset::Lines
        };
        let plan = if args.config_only {
            board_flash::Plan::config_only(record)
        } else {
            board_flash::Plan::board(conn, &genba_store::firmware::dir(data_dir), record)
                .context("--write (or --config-only for a board that runs Genba's firmware)")?
        };
        Ok(Write { port, reset, plan })
    }

    fn run(&self) -> Result<()> {
        let mut progress = Progress::new();
        board_flash::write(&self.port, self.reset, &self.plan, Some(&mut progress))?;
        Ok(())
    }

    fn said(&self) -> String {
        let then = match self.reset {
            board_flash::Reset::Lines => "the board restarts into it",
            board_flash::Reset::None => "press RESET (or unplug the board) to start it",
        };
        format!(
            "written to {}: {}, checked by MD5; {then}",
            self.port.name,
            self.plan.what()
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "port": self.port.name,
            "offset": format!("{:#x}", self.plan.offset),
            "bytes": self.plan.data.len(),
            "firmware": self.plan.firmware,
        })
    }
}

/// An indicatif bar for the write, on stderr (hidden when stderr is not a terminal).
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            bar: indicatif::ProgressBar::new(0),
        }
    }
}

impl board_flash::ProgressCallbacks for Progress {
    fn init(&mut self, addr: u32, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_message(format!("{addr:#x}"));
    }

    fn update(&mut self, current: usize) {
        self.bar.set_position(current as u64);
    }

    fn verifying(&mut self) {
        self.bar.set_message("verifying");
    }

    fn finish(&mut self, _skipped: bool) {
        self.bar.finish_and_clear();
    }
}
