//! `genba firstboot`: the settings file from the boot partition becomes genba.toml, the secrets
//! file and the Wi-Fi network (mode 600), is removed, and the appliance then runs with it:
//! the admin password guards /notify and the Slack URL receives the message.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::fake_slack::FakeSlack;
use common::http::Http;
use common::{wait_until, Appliance};

/// The image's starting config: serves the LAN, nobody may connect until users are set.
const IMAGE_CONFIG: &str =
    "[mqtt]\nlisten = \"0.0.0.0:1883\"\nallow_anonymous = false\n[http]\nlisten = \"0.0.0.0:80\"\n";

struct Card {
    dir: tempfile::TempDir,
}

impl Card {
    fn new() -> Card {
        let card = Card {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in ["boot", "data/genba", "data/network"] {
            std::fs::create_dir_all(card.path(d)).unwrap();
        }
        let config = format!(
            "data_dir = \"{}\"\n{IMAGE_CONFIG}",
            card.path("data/genba").display()
        );
        std::fs::write(card.config(), config).unwrap();
        card
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn config(&self) -> PathBuf {
        self.path("data/genba/genba.toml")
    }
    fn settings(&self) -> PathBuf {
        self.path("boot/genba-settings.toml")
    }
    fn firstboot(&self) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_genba"))
            .arg("firstboot")
            .arg("--config")
            .arg(self.config())
            .arg("--settings")
            .arg(self.settings())
            .arg("--wifi-conf")
            .arg(self.path("data/network/wpa_supplicant-wlan0.conf"))
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn settings_file_is_applied_with_mode_600_removed_and_the_appliance_uses_it() {
    let slack = FakeSlack::start();
    let card = Card::new();
    std::fs::write(
        card.settings(),
        format!(
            "[wifi]\ncountry = \"JP\"\nssid = \"shop floor\"\npassword = \"wifi-pass-1\"\n\n\
             [admin]\npassword = \"admin-pass-1\"\n\n\
             [[mqtt_users]]\nname = \"thermo\"\npassword = \"thermo-pass\"\n\n\
             [slack]\nwebhook_url = \"{}\"\n\n\
             [[devices]]\nid = \"fridge-1\"\napi_key = \"fridge-1-key-0123456789\"\n",
            slack.url()
        ),
    )
    .unwrap();
    let (ok, out) = card.firstboot();
    assert!(ok, "{out}");
    assert!(!card.settings().exists(), "the settings file is removed");
    let secrets = card.path("data/genba/secrets.toml");
    let wifi = card.path("data/network/wpa_supplicant-wlan0.conf");
    for f in [&card.config(), &secrets, &wifi] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let secrets_text = std::fs::read_to_string(&secrets).unwrap();
    assert!(secrets_text.contains(&slack.url()));
    let config_text = std::fs::read_to_string(card.config()).unwrap();
    assert!(
        !config_text.contains("admin-pass-1"),
        "only the hash is stored"
    );
    assert!(!std::fs::read_to_string(&wifi)
        .unwrap()
        .contains("wifi-pass-1"));
    assert!(out.contains("\"admin\", \"thermo\"], devices 1"), "{out}");
    let keys = Command::new(env!("CARGO_BIN_EXE_genba"))
        .args(["keys", "list", "--json", "--config"])
        .arg(card.config())
        .output()
        .unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&keys.stdout).unwrap();
    assert_eq!(keys[0]["device_id"], "fridge-1", "{keys}");
    assert_eq!(keys.as_array().unwrap().len(), 1);

    // The Exment unit's ExecCondition: not configured yet (exit 1), then configured.
    let exment_check = || {
        Command::new(env!("CARGO_BIN_EXE_genba"))
            .args(["exment", "check", "--config"])
            .arg(card.config())
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(exment_check(), Some(1));
    std::fs::write(
        card.settings(),
        "[exment]\nbase_url = \"https://exment.example.com\"\nclient_id = \"i\"\nclient_secret = \"s\"\napi_key = \"k\"\n",
    )
    .unwrap();
    let (ok, out) = card.firstboot();
    assert!(ok, "{out}");
    assert_eq!(exment_check(), Some(0));
    let secrets_text = std::fs::read_to_string(&secrets).unwrap();
    assert!(
        secrets_text.contains(&slack.url()),
        "earlier settings are kept"
    );
    let config_text = std::fs::read_to_string(card.config()).unwrap();

    // A second run without a file changes nothing.
    let (ok, out) = card.firstboot();
    assert!(ok && out.contains("nothing to do"), "{out}");
    assert_eq!(std::fs::read_to_string(card.config()).unwrap(), config_text);

    // The appliance runs with what firstboot wrote.
    let app = Appliance::start(&config_text, &secrets_text);
    let http = Http::new();
    let body = r#"{"topic":"kitchen/door","message":"first message"}"#;
    let anonymous = http.post(&app.url("/notify"), "application/json", body, &[]);
    assert_eq!(anonymous.status, 401);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:admin-pass-1")
    );
    let reply = http.post(
        &app.url("/notify"),
        "application/json",
        body,
        &[("authorization", &basic)],
    );
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert!(
        wait_until(Duration::from_secs(20), || slack
            .delivered_texts()
            .iter()
            .any(|t| t.contains("first message"))),
        "the message reached Slack: {:?}",
        slack.delivered_texts()
    );
}

#[test]
fn bad_settings_change_nothing_keep_the_file_and_name_the_key() {
    let card = Card::new();
    let before = std::fs::read_to_string(card.config()).unwrap();
    for (text, expect) in [
        (&b"[admin]\npassword = \"short\"\n"[..], "admin.password"),
        (
            &b"[wifi]\ncountry = \"JP\"\nssid = \"x\"\n\xff\n"[..],
            "UTF-8",
        ),
        (&b"[slack]\nwebhook_url = 42\n"[..], "webhook_url"),
        (
            &b"[admin]\npassword = \"long enough\"\n[[devices]]\nid = \"bad id!\"\napi_key = \"0123456789abcdefghijk\"\n"[..],
            "devices[0]",
        ),
    ] {
        std::fs::write(card.settings(), text).unwrap();
        let (ok, out) = card.firstboot();
        assert!(!ok, "{out}");
        assert!(out.contains(expect), "{expect}: {out}");
        assert!(card.settings().exists(), "a bad file is kept for fixing");
        let error = std::fs::read_to_string(card.path("boot/genba-settings-error.txt")).unwrap();
        assert!(error.contains(expect), "{error}");
        assert_eq!(std::fs::read_to_string(card.config()).unwrap(), before);
        assert!(!card.path("data/genba/secrets.toml").exists());
    }
    // Fixed: applied, and the error file goes too.
    std::fs::write(card.settings(), "[admin]\npassword = \"long enough\"\n").unwrap();
    let (ok, out) = card.firstboot();
    assert!(ok, "{out}");
    assert!(!card.path("boot/genba-settings-error.txt").exists());
    assert!(!card.settings().exists());
}
