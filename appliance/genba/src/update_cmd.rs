//! `genba update`: A/B updates of the Genba SD-card image (docs/image.md, "Updates").
//!
//! `install` hands a signed bundle (`.raucb`) to RAUC, which checks it against the key the image
//! was built with and writes the root slot that is not running; the Pi then restarts to try the
//! new slot once. `status` reads what `/usr/lib/genba/rauc-boot` keeps in `genba-slot.txt` on the
//! boot partition (which slot the Pi firmware boots, RAUC's primary, each slot's good or bad, a
//! slot on trial) and the last lines of `genba-update-result.txt`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde::Serialize;

use genba_bridge::system_update::{booted_slot, last_results};

use crate::platform_cmd::print_json;

const BOOT_DIR: &str = "/boot/firmware";

#[derive(Subcommand)]
pub enum UpdateCommand {
    /// Install an update bundle (.raucb, from scripts/build-image) into the slot that is not
    /// running, then restart to try it: it is kept once Genba is ready, else the Pi goes back.
    Install {
        file: PathBuf,
        /// Install only; the new slot is tried at the next restart.
        #[arg(long)]
        no_reboot: bool,
        /// The boot partition (where genba-slot.txt is).
        #[arg(long, default_value = BOOT_DIR)]
        boot_dir: PathBuf,
    },
    /// The slot running, the slot the Pi boots next, each slot's state and the last results.
    Status {
        /// The boot partition (where genba-slot.txt is).
        #[arg(long, default_value = BOOT_DIR)]
        boot_dir: PathBuf,
        /// The kernel command line to read the running slot from (rauc.slot=).
        #[arg(long, default_value = "/proc/cmdline", hide = true)]
        cmdline: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The slot state in genba-slot.txt, as rauc-boot writes it.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Slots {
    /// The slot the Pi firmware boots next (`os_prefix=slot-a/`).
    pub boots: char,
    /// RAUC's primary slot.
    pub primary: char,
    /// "good" or "bad" for slots A and B.
    pub state_a: String,
    pub state_b: String,
    /// A slot on trial: "B pending" (installed, not yet booted) or "B booted" (running once,
    /// not yet kept).
    pub trial: Option<String>,
}

/// Reads genba-slot.txt: `os_prefix=slot-X/` and the `# key=value` lines rauc-boot keeps.
pub fn parse_slots(text: &str) -> Result<Slots> {
    let mut boots = None;
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("# ")?.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    for line in text.lines() {
        if let Some(prefix) = line.trim().strip_prefix("os_prefix=") {
            boots = match prefix {
                "slot-a/" => Some('A'),
                "slot-b/" => Some('B'),
                other => bail!("genba-slot.txt: os_prefix={other} is neither slot-a/ nor slot-b/"),
            };
        }
    }
    let boots = boots.context("genba-slot.txt has no os_prefix= line")?;
    let slot = |key: &str| -> Result<char> {
        match value(key) {
            Some("A") => Ok('A'),
            Some("B") => Ok('B'),
            Some(other) => bail!("genba-slot.txt: {key}={other} is neither A nor B"),
            None => Ok(boots),
        }
    };
    Ok(Slots {
        boots,
        primary: slot("primary")?,
        state_a: value("state.A").unwrap_or("good").to_string(),
        state_b: value("state.B").unwrap_or("bad").to_string(),
        trial: value("trial").filter(|t| !t.is_empty()).map(str::to_string),
    })
}

#[derive(Serialize)]
struct Status {
    running: Option<char>,
    #[serde(flatten)]
    slots: Slots,
    results: Vec<String>,
}

fn status(boot_dir: &Path, cmdline: &Path) -> Result<Status> {
    let slot_file = boot_dir.join("genba-slot.txt");
    let text = std::fs::read_to_string(&slot_file).with_context(|| {
        format!(
            "{} (is this a Genba SD-card image with A/B slots?)",
            slot_file.display()
        )
    })?;
    let cmdline = std::fs::read_to_string(cmdline).unwrap_or_default();
    let results = last_results(&boot_dir.join("genba-update-result.txt"), 5);
    Ok(Status {
        running: booted_slot(&cmdline),
        slots: parse_slots(&text)?,
        results,
    })
}

pub fn run(cmd: UpdateCommand) -> Result<()> {
    match cmd {
        UpdateCommand::Status {
            boot_dir,
            cmdline,
            json,
        } => {
            let s = status(&boot_dir, &cmdline)?;
            if json {
                return print_json(&s);
            }
            let running = s.running.map_or("unknown".to_string(), |c| c.to_string());
            println!("running:  slot {running}");
            println!(
                "boots:    slot {} (primary {})",
                s.slots.boots, s.slots.primary
            );
            println!("slot A:   {}", s.slots.state_a);
            println!("slot B:   {}", s.slots.state_b);
            if let Some(trial) = &s.slots.trial {
                println!("on trial: {trial}");
            }
            for line in s.results.iter().rev() {
                println!("result:   {line}");
            }
            Ok(())
        }
        UpdateCommand::Install {
            file,
            no_reboot,
            boot_dir,
        } => {
            std::fs::metadata(&file).with_context(|| format!("{}", file.display()))?;
            let slots = std::fs::read_to_string(boot_dir.join("genba-slot.txt"))
                .context("genba-slot.txt on the boot partition (is this a Genba SD-card image?)")?;
            if let Some(trial) = parse_slots(&slots)?.trial {
                bail!("slot {trial} is on trial; install after it is kept or given up");
            }
            let ok = Command::new("rauc")
                .arg("install")
                .arg(&file)
                .status()
                .context("running rauc (is this a Genba SD-card image?)")?
                .success();
            if !ok {
                bail!("RAUC refused {} (its message is above)", file.display());
            }
            let slots = parse_slots(&std::fs::read_to_string(boot_dir.join("genba-slot.txt"))?)?;
            println!("installed {} into slot {}", file.display(), slots.primary);
            if no_reboot {
                println!("the Pi tries slot {} at its next restart", slots.primary);
                return Ok(());
            }
            println!("restarting to try it");
            let ok = Command::new("systemctl")
                .arg("reboot")
                .status()
                .context("systemctl reboot")?
                .success();
            if !ok {
                bail!("systemctl reboot failed: restart the Pi to try the new slot");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_file_without_a_known_os_prefix_is_an_error_that_names_it() {
        let err = parse_slots("os_prefix=slot-c/\n# primary=A\n").unwrap_err();
        assert!(err.to_string().contains("os_prefix=slot-c/"), "{err}");
        let err = parse_slots("# primary=A\n").unwrap_err();
        assert!(err.to_string().contains("no os_prefix"), "{err}");
        let err = parse_slots("os_prefix=slot-a/\n# primary=Z\n").unwrap_err();
        assert!(err.to_string().contains("primary=Z"), "{err}");
    }
}
