//! The A/B slot logic of the SD-card image, run on the host: the image's own
//! `/usr/lib/genba/rauc-boot` (RAUC's custom bootloader backend, its post-install handler and the
//! early-boot "try once" step) driven through the calls RAUC and the units make, in a temporary
//! boot partition, and read back with `genba update status --json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

struct Card {
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image/overlay/usr/lib/genba/rauc-boot")
}

impl Card {
    /// A new card: slot A's boot files and command line, genba-slot.txt from `rauc-boot init`.
    fn new() -> Card {
        let card = Card {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::create_dir(card.boot().join("slot-a")).expect("slot-a");
        std::fs::write(
            card.boot().join("slot-a/cmdline.txt"),
            "console=ttyS1,115200 console=tty0 root=PARTUUID=6e3b1a52-02 ro rootwait rauc.slot=A\n",
        )
        .expect("cmdline");
        card.boot_slot('A');
        card.rauc_boot(&["init"]).expect("init");
        card
    }

    fn boot(&self) -> &Path {
        self.dir.path()
    }

    /// The kernel command line of the next calls: the slot the Pi runs.
    fn boot_slot(&self, slot: char) {
        std::fs::write(
            self.dir.path().join("cmdline"),
            format!(
                "console=ttyS1 root=PARTUUID=6e3b1a52-0{} rauc.slot={slot}\n",
                if slot == 'A' { 2 } else { 3 }
            ),
        )
        .expect("cmdline");
    }

    fn rauc_boot_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
        let out = Command::new("sh")
            .arg(script())
            .args(args)
            .env("GENBA_BOOT_DIR", self.boot())
            .env("GENBA_CMDLINE", self.dir.path().join("cmdline"))
            .env("GENBA_CONSOLES", "none")
            .env("GENBA_UPDATES_DIR", self.dir.path().join("updates"))
            .envs(env.iter().copied())
            .output()
            .expect("run rauc-boot");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    fn rauc_boot(&self, args: &[&str]) -> Result<String, String> {
        self.rauc_boot_env(args, &[])
    }

    /// RAUC's post-install handler after writing slot B from the bundle mounted at `mount`.
    fn post_install_into_b(&self, mount: &str) -> Result<String, String> {
        self.rauc_boot_env(
            &["post-install"],
            &[
                ("RAUC_BUNDLE_MOUNT_POINT", mount),
                ("RAUC_TARGET_SLOTS", "1"),
                ("RAUC_SLOT_BOOTNAME_1", "B"),
            ],
        )
    }

    /// What RAUC does for `rauc install` into the other slot: mark it bad, write it, make it
    /// primary.
    fn install(&self, slot: &str) {
        self.rauc_boot(&["set-state", slot, "bad"])
            .expect("set-state bad");
        self.rauc_boot(&["set-primary", slot]).expect("set-primary");
    }

    fn status(&self) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_genba"))
            .args(["update", "status", "--json", "--boot-dir"])
            .arg(self.boot())
            .arg("--cmdline")
            .arg(self.dir.path().join("cmdline"))
            .output()
            .expect("genba update status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn results(&self) -> String {
        std::fs::read_to_string(self.boot().join("genba-update-result.txt")).unwrap_or_default()
    }
}

fn slots(v: &Value) -> (String, String, String, String, Value) {
    (
        v["boots"].as_str().unwrap_or_default().to_string(),
        v["primary"].as_str().unwrap_or_default().to_string(),
        v["state_a"].as_str().unwrap_or_default().to_string(),
        v["state_b"].as_str().unwrap_or_default().to_string(),
        v["trial"].clone(),
    )
}

#[test]
fn a_new_card_boots_slot_a_and_slot_b_is_empty() {
    let card = Card::new();
    let s = card.status();
    assert_eq!(s["running"], "A");
    assert_eq!(
        slots(&s),
        (
            "A".into(),
            "A".into(),
            "good".into(),
            "bad".into(),
            Value::Null
        )
    );
    let file = std::fs::read_to_string(card.boot().join("genba-slot.txt")).expect("slot file");
    assert!(file.lines().any(|l| l == "os_prefix=slot-a/"), "{file}");
    assert_eq!(
        card.rauc_boot(&["get-primary"])
            .expect("get-primary")
            .trim(),
        "A"
    );
    assert_eq!(
        card.rauc_boot(&["get-state", "B"])
            .expect("get-state")
            .trim(),
        "bad"
    );
}

#[test]
fn an_installed_slot_is_booted_once_and_kept_when_marked_good() {
    let card = Card::new();
    card.install("B");
    let s = card.status();
    assert_eq!(
        slots(&s),
        (
            "B".into(),
            "B".into(),
            "good".into(),
            "bad".into(),
            "B pending".into()
        )
    );

    // The trial boot: the first thing it does is point the firmware back at A.
    assert_eq!(card.rauc_boot(&["trial"]).expect("trial"), "B pending\n");
    card.boot_slot('B');
    card.rauc_boot(&["boot"]).expect("boot");
    // What genba-update-commit and install-bundle ask.
    assert_eq!(card.rauc_boot(&["trial"]).expect("trial"), "B booted\n");
    let s = card.status();
    assert_eq!(s["running"], "B");
    assert_eq!(
        slots(&s),
        (
            "A".into(),
            "B".into(),
            "good".into(),
            "bad".into(),
            "B booted".into()
        )
    );

    // genba-update-commit: `rauc status mark-good booted`.
    card.rauc_boot(&["set-state", "B", "good"])
        .expect("mark good");
    let s = card.status();
    assert_eq!(
        slots(&s),
        (
            "B".into(),
            "B".into(),
            "good".into(),
            "good".into(),
            Value::Null
        )
    );

    assert_eq!(card.rauc_boot(&["trial"]).expect("trial"), "\n");

    // Later boots of B change nothing.
    card.rauc_boot(&["boot"]).expect("boot");
    assert_eq!(card.status()["boots"], "B");
}

#[test]
fn a_trial_slot_marked_bad_gives_the_firmware_back_to_the_old_slot() {
    let card = Card::new();
    card.install("B");
    card.boot_slot('B');
    card.rauc_boot(&["boot"]).expect("boot");
    card.rauc_boot(&["set-state", "B", "bad"])
        .expect("mark bad");
    let s = card.status();
    assert_eq!(
        slots(&s),
        (
            "A".into(),
            "A".into(),
            "good".into(),
            "bad".into(),
            Value::Null
        )
    );
}

#[test]
fn a_restart_during_the_trial_returns_to_the_old_slot_and_says_the_update_failed() {
    let card = Card::new();
    card.install("B");
    card.boot_slot('B');
    card.rauc_boot(&["boot"]).expect("boot");
    // B hangs or restarts before it is kept: the firmware boots A, which sees the failed trial.
    card.boot_slot('A');
    card.rauc_boot(&["boot"]).expect("boot");
    let s = card.status();
    assert_eq!(
        slots(&s),
        (
            "A".into(),
            "A".into(),
            "good".into(),
            "bad".into(),
            Value::Null
        )
    );
    assert!(
        card.results()
            .contains("failed: slot B started but Genba was not ready"),
        "{}",
        card.results()
    );
}

#[test]
fn a_slot_the_firmware_did_not_boot_is_marked_bad() {
    let card = Card::new();
    card.install("B");
    // The firmware found no viable slot-b/ and booted A.
    card.rauc_boot(&["boot"]).expect("boot");
    let s = card.status();
    assert_eq!(
        slots(&s),
        (
            "A".into(),
            "A".into(),
            "good".into(),
            "bad".into(),
            Value::Null
        )
    );
    assert!(
        card.results().contains("did not boot slot B"),
        "{}",
        card.results()
    );
}

#[test]
fn a_power_cut_during_an_install_leaves_the_old_slot_booting() {
    let card = Card::new();
    // RAUC marks the target bad before writing it; the cut comes before set-primary.
    card.rauc_boot(&["set-state", "B", "bad"])
        .expect("set-state bad");
    card.rauc_boot(&["boot"]).expect("boot");
    let s = card.status();
    assert_eq!(
        slots(&s),
        (
            "A".into(),
            "A".into(),
            "good".into(),
            "bad".into(),
            Value::Null
        )
    );
    assert_eq!(card.results(), "");
}

#[test]
fn post_install_puts_the_bundle_boot_files_in_the_target_slot_with_its_command_line() {
    let card = Card::new();
    let bundle = tempfile::tempdir().expect("bundle dir");
    std::fs::create_dir(bundle.path().join("boot")).expect("boot");
    for (name, body) in [
        ("vmlinuz", "kernel v2"),
        ("initrd.img", "initrd v2"),
        ("bcm2837-rpi-3-b.dtb", "dtb"),
    ] {
        std::fs::write(bundle.path().join("boot").join(name), body).expect("file");
    }
    let mount = bundle.path().to_str().expect("utf-8 path");
    card.post_install_into_b(mount).expect("post-install");
    let slot_b = card.boot().join("slot-b");
    assert_eq!(
        std::fs::read_to_string(slot_b.join("vmlinuz")).expect("vmlinuz"),
        "kernel v2"
    );
    assert_eq!(
        std::fs::read_to_string(slot_b.join("bcm2837-rpi-3-b.dtb")).expect("dtb"),
        "dtb"
    );
    assert_eq!(
        std::fs::read_to_string(slot_b.join("cmdline.txt")).expect("cmdline"),
        "console=ttyS1,115200 console=tty0 root=PARTUUID=6e3b1a52-03 ro rootwait rauc.slot=B\n"
    );
    assert!(!card.boot().join("slot-b.new").exists());

    // A bundle without a kernel is refused before slot-b/ is touched.
    std::fs::remove_file(bundle.path().join("boot/vmlinuz")).expect("rm");
    let err = card.post_install_into_b(mount).expect_err("no kernel");
    assert!(err.contains("no boot/vmlinuz"), "{err}");
    assert_eq!(
        std::fs::read_to_string(slot_b.join("vmlinuz")).expect("vmlinuz"),
        "kernel v2"
    );
}

#[test]
fn bad_slot_names_are_refused() {
    let card = Card::new();
    let err = card.rauc_boot(&["get-state", "C"]).expect_err("slot C");
    assert!(err.contains("no slot A or B"), "{err}");
    let err = card
        .rauc_boot(&["set-state", "B", "maybe"])
        .expect_err("state");
    assert!(err.contains("good|bad"), "{err}");
}

#[test]
fn status_says_what_is_missing_off_the_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_genba"))
        .args(["update", "status", "--boot-dir"])
        .arg(dir.path())
        .output()
        .expect("genba update status");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("genba-slot.txt"), "{err}");
}
