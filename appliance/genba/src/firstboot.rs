//! `genba firstboot`: applies the settings file a person left on the boot partition
//! (`genba-settings.toml`) to `genba.toml`, the secrets file and the Wi-Fi configuration, each
//! written atomically with mode 600, then removes the settings file so no secret stays on the
//! FAT partition. A bad file is kept and an error file naming the key is written beside it;
//! nothing is changed then. Running it again with a new file changes only what the file names.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::settings::{wpa_supplicant_conf, Applied, Settings};
use anyhow::{Context, Result};
use clap::Args;
use genba_config::{Config, Secrets};

#[derive(Args)]
pub struct FirstbootArgs {
    /// The settings file to apply (absent: nothing to do).
    #[arg(long, default_value = "/boot/firmware/genba-settings.toml")]
    pub settings: PathBuf,
    /// Where the Wi-Fi network goes (wpa_supplicant format).
    #[arg(long, default_value = "/data/network/wpa_supplicant-wlan0.conf")]
    pub wifi_conf: PathBuf,
}

/// The error file written beside a settings file that could not be applied.
pub fn error_file(settings: &Path) -> PathBuf {
    settings.with_file_name("genba-settings-error.txt")
}

pub fn run(config_path: Option<&Path>, args: &FirstbootArgs) -> Result<()> {
    let config_path = config_path.context("firstboot needs --config (the genba.toml to update)")?;
    if !args.settings.exists() {
        println!(
            "no settings file at {}: nothing to do",
            args.settings.display()
        );
        return Ok(());
    }
    match apply(config_path, args) {
        Ok(applied) => {
            let _ = fs::remove_file(error_file(&args.settings));
            fs::remove_file(&args.settings)
                .with_context(|| format!("removing {}", args.settings.display()))?;
            sync_parent(&args.settings)?;
            println!(
                "applied {}: users {:?}, devices {}, slack {}, exment {}, time zone {}, wifi {}; removed it",
                args.settings.display(),
                applied.users,
                applied.devices,
                applied.slack,
                applied.exment,
                applied.time_zone.as_deref().unwrap_or("unchanged"),
                applied.wifi
            );
            Ok(())
        }
        Err(e) => {
            let message = format!(
                "genba could not apply {} and changed nothing:\n{e:#}\nFix the file and restart the device.\n",
                args.settings.display()
            );
            let path = error_file(&args.settings);
            if let Err(we) = write_file(&path, message.as_bytes(), 0o644, None) {
                eprintln!("cannot write {}: {we:#}", path.display());
            }
            Err(e)
        }
    }
}

fn apply(config_path: &Path, args: &FirstbootArgs) -> Result<Applied> {
    let bytes =
        fs::read(&args.settings).with_context(|| format!("reading {}", args.settings.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("settings file is not UTF-8 text ({e})"))?;
    let settings = Settings::parse(&text)?;

    // The config path may be a symlink from a read-only /etc to the data partition.
    let config_path = fs::canonicalize(config_path)
        .with_context(|| format!("config file {}", config_path.display()))?;
    let mut config = Config::read(&config_path)?;
    let secrets_path = config.secrets_path();
    let mut secrets = Secrets::load(&secrets_path)?;
    let applied = settings.apply(&mut config, &mut secrets)?;
    config.validate(&config_path)?;
    if !settings.devices.is_empty() {
        store_device_keys(&settings, &config.data_dir())?;
    }

    let secrets_text = toml::to_string(&secrets).context("serializing the secrets")?;
    write_file(
        &secrets_path,
        secrets_text.as_bytes(),
        0o600,
        dir_owner(&secrets_path)?,
    )?;
    let config_text = format!(
        "# Updated by `genba firstboot` from the settings file; edit freely.\n{}",
        toml::to_string(&config).context("serializing the config")?
    );
    write_file(
        &config_path,
        config_text.as_bytes(),
        0o600,
        dir_owner(&config_path)?,
    )?;
    if let Some(wifi) = &settings.wifi {
        let conf = wpa_supplicant_conf(wifi)?;
        if let Some(dir) = args.wifi_conf.parent() {
            fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        }
        write_file(&args.wifi_conf, conf.as_bytes(), 0o600, None)?;
    }
    Ok(applied)
}

/// The `[[devices]]` keys go into the store's api_keys table; the database files keep the data
/// directory's owner so the services can still write them.
fn store_device_keys(settings: &Settings, data_dir: &Path) -> Result<()> {
    let db = genba_store::db_path(data_dir);
    let stored = (|| -> Result<()> {
        let conn = genba_store::open(&db)?;
        let tx = conn.unchecked_transaction()?;
        for (i, device) in settings.devices.iter().enumerate() {
            genba_telemetry::keys::add_given(&tx, &device.id, &[], &device.api_key)
                .with_context(|| format!("settings file: key `devices[{i}]`"))?;
        }
        tx.commit()?;
        Ok(())
    })();
    let meta = fs::metadata(data_dir).with_context(|| format!("{}", data_dir.display()))?;
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", db.display()));
        if path.exists() {
            std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid()))
                .with_context(|| format!("chown {}", path.display()))?;
        }
    }
    stored
}

/// genba's files belong to whoever owns the directory they are in (the genba user).
pub(crate) fn dir_owner(path: &Path) -> Result<Option<(u32, u32)>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let meta = fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    Ok(Some((meta.uid(), meta.gid())))
}

/// Writes `path` atomically: a temporary file beside it, fsync, rename, fsync of the directory.
pub(crate) fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let tmp = path.with_extension("tmp");
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", tmp.display()))
        }
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}
