//! `genba devices provision`: registers a thermometer, gives it its own credential (a device
//! key: its HTTP `X-API-Key`, or its MQTT password with the device id as user name) and writes
//! the config file the device reads from its `config` flash partition (the record format is
//! `genba_firmware_core::config`, the same code the firmware decodes it with). The file goes to
//! the device over USB with `espflash write-bin`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use genba_auth::passwords;
use genba_firmware_core::config::{
    self as device_config, Credential, DeviceConfig, Pins, AREA_LEN, PARTITION_OFFSET,
};
use genba_firmware_core::discovery::{self, Fingerprint};
use genba_firmware_core::offsets::Offsets;
use genba_firmware_core::telemetry::MAX_READINGS;
use genba_store::devices::{self, DeviceChange};

use crate::commands::Endpoints;
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
    /// credential). Default: ID.genba-config.bin in the current directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
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

/// The fingerprint the device pins: `--pin`, else the local CA's when the appliance serves
/// the device's transport over TLS (`tls`).
fn pin(args: &ProvisionArgs, data_dir: &Path, tls: bool) -> Result<Option<Fingerprint>> {
    match args.pin.as_deref() {
        None if !tls => Ok(None),
        Some("none") => Ok(None),
        Some(hex) => discovery::parse_fingerprint(hex)
            .map(Some)
            .with_context(|| {
                format!("--pin {hex:?}: a SHA-256 (64 hex digits) or `none` expected")
            }),
        None => {
            let Some(hex) = genba_tls::local_ca_fingerprint(data_dir)? else {
                return Ok(None);
            };
            discovery::parse_fingerprint(&hex)
                .map(Some)
                .context("the local CA's fingerprint is not a SHA-256")
        }
    }
}

/// The host the device is told to reach: `--appliance`, else the broker's address when a
/// device on the LAN could reach it.
fn appliance_host(args: &ProvisionArgs, mqtt: SocketAddr) -> Result<String> {
    if let Some(host) = &args.appliance {
        return Ok(host.clone());
    }
    let ip = mqtt.ip();
    let lan = match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_loopback(),
        IpAddr::V6(_) => false,
    };
    if lan {
        Ok(ip.to_string())
    } else {
        anyhow::bail!(
            "--appliance: the address devices reach this appliance at (IPv4 or DNS name); \
             the broker listens on {mqtt}, which does not say"
        )
    }
}

/// The device's config with `credential`; every field checked by the firmware core's rules.
/// `endpoints` are where the appliance serves (the running one's, else the configured ones);
/// a pinned device is given the TLS ports.
fn build_config(
    args: &ProvisionArgs,
    endpoints: &Endpoints,
    credential: Credential,
    pin: Option<Fingerprint>,
) -> Result<DeviceConfig> {
    let host = appliance_host(args, endpoints.mqtt)?;
    let field = |e: device_config::Error| anyhow::anyhow!("{e}");
    let mut device = DeviceConfig::new(
        &args.id,
        &args.wifi_ssid,
        &args.wifi_pass,
        &host,
        credential,
    )
    .map_err(field)?;
    let port = |name: &str, port: u16| {
        if port == 0 {
            anyhow::bail!("the {name} listen port is 0 (any free port): devices need a fixed one")
        }
        Ok(port)
    };
    if pin.is_some() {
        let (served, name) = match args.transport {
            TransportArg::Mqtt => (endpoints.mqtts, "[mqtt] tls_listen"),
            TransportArg::Http => (endpoints.https, "[http] tls_listen"),
        };
        if served.is_none() {
            anyhow::bail!(
                "--pin: a pinned device speaks only TLS, and this appliance serves no {name}; \
                 set it in the config file, or give --pin none"
            );
        }
    }
    // with a pin, the other transport's TLS port is for firmware downloads (HTTPS) or unused
    let (mqtt, http) = endpoints.for_device(pin.is_some());
    device.mqtt_port = port("MQTT", mqtt.port())?;
    device.http_port = port("HTTP", http.port())?;
    device.interval_s = args.interval;
    device.pins = Pins {
        onewire: args.onewire_gpio,
        led: args.led_gpio,
        led_active_low: !args.led_active_high,
    };
    device.offsets = Offsets::<MAX_READINGS>::parse_list(&args.offsets.join(","))
        .map_err(|e| anyhow::anyhow!("--offset: {e}"))?;
    device.set_ntp_server(&args.ntp_server).map_err(field)?;
    device.ca_sha256 = pin;
    device.validate().map_err(field)?;
    Ok(device)
}

pub fn run(args: ProvisionArgs) -> Result<()> {
    genba_firmware_core::telemetry::validate_device_id(&args.id).map_err(|_| {
        anyhow::anyhow!(
            "device id {:?}: 1-32 characters from A-Z a-z 0-9 - _ .",
            args.id
        )
    })?;
    let config = load_config(&args.common)?;
    let secret = passwords::generate_api_key();
    let credential = match args.transport {
        TransportArg::Mqtt => Credential::mqtt(&args.id, &secret),
        TransportArg::Http => Credential::api_key(&secret),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Everything is checked before anything is created.
    let endpoints = crate::commands::running_endpoints(&args.common, &config);
    let tls = match args.transport {
        TransportArg::Mqtt => endpoints.mqtts.is_some(),
        TransportArg::Http => endpoints.https.is_some(),
    };
    let device = build_config(
        &args,
        &endpoints,
        credential,
        pin(&args, &config.data_dir(), tls)?,
    )?;
    let pinned = device
        .ca_sha256
        .as_ref()
        .map(|fp| discovery::hex(fp).to_string());
    let mut image = vec![0u8; AREA_LEN];
    device
        .area_image(&mut image)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.genba-config.bin", args.id)));
    let data_dir = config.data_dir();
    let conn = genba_store::open(&genba_store::db_path(&data_dir))?;
    let tx = conn.unchecked_transaction()?;
    let added = devices::add(&tx, &args.id, &DeviceChange::default())?;
    // One credential for either transport: a device key (HTTP `X-API-Key`, or the MQTT
    // password with the device id as user name), in force at once, revoked alone.
    let key_id = genba_telemetry::keys::add_given(&tx, &args.id, &[], &secret)?.id;
    write_file(&out, &image, 0o600, None)?;
    tx.commit()?;

    let flash = format!("espflash write-bin {PARTITION_OFFSET:#x} {}", out.display());
    let transport = match args.transport {
        TransportArg::Mqtt => "mqtt",
        TransportArg::Http => "http",
    };
    if args.json {
        let credential = match args.transport {
            TransportArg::Http => serde_json::json!({"kind": "api_key", "key_id": key_id}),
            TransportArg::Mqtt => {
                serde_json::json!({"kind": "device_key", "key_id": key_id, "username": args.id})
            }
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "device_id": args.id,
                "new_device": added.is_some(),
                "transport": transport,
                "appliance": device.host.as_str(),
                "mqtt_port": device.mqtt_port,
                "http_port": device.http_port,
                "pin": pinned,
                "credential": credential,
                "file": out.display().to_string(),
                "file_bytes": image.len(),
                "partition_offset": format!("{PARTITION_OFFSET:#x}"),
                "flash_command": flash,
            }))?
        );
        return Ok(());
    }
    println!(
        "device {} {}; it reports to {} over {}",
        args.id,
        if added.is_some() {
            "registered"
        } else {
            "was registered already"
        },
        device.host,
        match (args.transport, pinned.is_some()) {
            (TransportArg::Mqtt, false) => format!("MQTT (port {})", device.mqtt_port),
            (TransportArg::Http, false) => format!("HTTP (port {})", device.http_port),
            (TransportArg::Mqtt, true) => format!("MQTT over TLS (port {})", device.mqtt_port),
            (TransportArg::Http, true) => format!("HTTPS (port {})", device.http_port),
        }
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
        match args.transport {
            TransportArg::Mqtt => ", its MQTT password with the user name of the device id",
            TransportArg::Http => "",
        }
    );
    println!(
        "config file: {} ({} bytes, mode 600: it holds the Wi-Fi pass phrase and the credential)",
        out.display(),
        image.len()
    );
    println!("write it to the device's config partition over USB:");
    println!("  {flash}");
    println!(
        "(a new board needs the firmware first: firmware/README.md, \"Set up a thermometer\")"
    );
    Ok(())
}
