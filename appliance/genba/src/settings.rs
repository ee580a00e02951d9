//! The first-boot settings file (`genba-settings.toml` on the Pi's boot partition): what a person
//! types on a PC before the first boot. [`Settings::apply`] folds it into `genba.toml` and the
//! secrets file; [`wpa_supplicant_conf`] turns its Wi-Fi part into a wpa_supplicant network.
//! `genba firstboot` does the file handling.

use pbkdf2::pbkdf2_hmac;
use serde::Deserialize;
use sha1::Sha1;

use genba_auth::passwords;
use genba_config::{Config, MqttUser, Secrets, SlackWebhook};

/// Name of the Slack webhook the settings file configures.
pub const SLACK_WEBHOOK_NAME: &str = "slack";
/// User name the admin password is given to (HTTP Basic and MQTT).
pub const ADMIN_USER: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings file: {0}")]
    Parse(String),
    #[error("settings file: key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Everything is optional: a file with only `[slack]` changes only Slack.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub wifi: Option<Wifi>,
    pub admin: Option<Admin>,
    pub mqtt_users: Vec<UserSetting>,
    pub slack: Option<SlackSetting>,
    pub exment: Option<ExmentSetting>,
    /// Thermometers and other devices posting to /api/telemetry with `X-API-Key`.
    pub devices: Vec<DeviceSetting>,
    /// The site's IANA time zone (e.g. "Asia/Tokyo"); goes to `[exment] time_zone`, the wall
    /// time of Exment's check slot. Unset: the config keeps its value (default UTC).
    pub time_zone: Option<genba_config::TimeZone>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSetting {
    pub id: String,
    /// The key the device sends; only its SHA-256 is stored.
    pub api_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    /// ISO 3166 country code for the radio's regulatory domain, e.g. "JP".
    pub country: String,
    pub ssid: String,
    /// WPA2 passphrase (8 to 63 characters); empty for an open network.
    #[serde(default)]
    pub password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSetting {
    pub name: String,
    pub password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSetting {
    pub webhook_url: String,
    /// Topic filters whose messages go to Slack; default every topic.
    #[serde(default = "all_topics")]
    pub filters: Vec<String>,
}

fn all_topics() -> Vec<String> {
    vec!["#".into()]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExmentSetting {
    pub base_url: String,
    pub table: Option<String>,
    pub client_id: String,
    pub client_secret: String,
    pub api_key: String,
}

/// What [`Settings::apply`] changed, for the log (never a secret).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub users: Vec<String>,
    pub slack: bool,
    pub exment: bool,
    /// The time zone set, if the file had one.
    pub time_zone: Option<String>,
    pub wifi: bool,
    pub devices: usize,
}

impl Settings {
    pub fn parse(text: &str) -> Result<Settings, SettingsError> {
        let settings: Settings =
            toml::from_str(text).map_err(|e| SettingsError::Parse(e.to_string()))?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), SettingsError> {
        if let Some(wifi) = &self.wifi {
            wpa_supplicant_conf(wifi)?;
        }
        if let Some(admin) = &self.admin {
            check_password("admin.password", &admin.password)?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, user) in self.mqtt_users.iter().enumerate() {
            let key = format!("mqtt_users[{i}]");
            if user.name.is_empty()
                || user.name.len() > 64
                || !user
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(invalid(
                    format!("{key}.name"),
                    "1 to 64 letters, digits, '-', '_' or '.'",
                ));
            }
            if user.name == ADMIN_USER && self.admin.is_some() {
                return Err(invalid(
                    format!("{key}.name"),
                    "\"admin\" is set by [admin]; pick another name",
                ));
            }
            if !names.insert(user.name.as_str()) {
                return Err(invalid(format!("{key}.name"), "duplicate user name"));
            }
            check_password(&format!("{key}.password"), &user.password)?;
        }
        if let Some(slack) = &self.slack {
            check_url("slack.webhook_url", &slack.webhook_url)?;
        }
        if let Some(exment) = &self.exment {
            check_url("exment.base_url", &exment.base_url)?;
            for (key, value) in [
                ("exment.client_id", &exment.client_id),
                ("exment.client_secret", &exment.client_secret),
                ("exment.api_key", &exment.api_key),
            ] {
                if value.trim().is_empty() {
                    return Err(invalid(key, "must not be empty"));
                }
                not_a_placeholder(key, value)?;
            }
        }
        for (i, device) in self.devices.iter().enumerate() {
            let key = &device.api_key;
            if !(20..=128).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    format!("devices[{i}].api_key"),
                    "20 to 128 printable ASCII characters without spaces",
                ));
            }
            not_a_placeholder(&format!("devices[{i}].api_key"), key)?;
        }
        Ok(())
    }

    /// Folds the settings into `config` and `secrets`: users are replaced by name, the Slack
    /// webhook is the one named [`SLACK_WEBHOOK_NAME`]. The caller validates `config` after.
    pub fn apply(
        &self,
        config: &mut Config,
        secrets: &mut Secrets,
    ) -> Result<Applied, SettingsError> {
        let mut applied = Applied::default();
        let hash = |key: &str, password: &str| {
            passwords::hash_password(password).map_err(|m| invalid(key, m))
        };
        if let Some(admin) = &self.admin {
            let password_hash = hash("admin.password", &admin.password)?;
            set_user(&mut config.mqtt.users, ADMIN_USER, &password_hash);
            set_user(&mut config.http.users, ADMIN_USER, &password_hash);
            applied.users.push(ADMIN_USER.into());
        }
        for (i, user) in self.mqtt_users.iter().enumerate() {
            let password_hash = hash(&format!("mqtt_users[{i}].password"), &user.password)?;
            set_user(&mut config.mqtt.users, &user.name, &password_hash);
            applied.users.push(user.name.clone());
        }
        if let Some(slack) = &self.slack {
            let hook = SlackWebhook::new(SLACK_WEBHOOK_NAME, slack.filters.clone());
            config
                .slack
                .webhooks
                .retain(|h| h.name != SLACK_WEBHOOK_NAME);
            config.slack.webhooks.push(hook);
            secrets
                .slack
                .insert(SLACK_WEBHOOK_NAME.into(), slack.webhook_url.clone());
            applied.slack = true;
        }
        if let Some(exment) = &self.exment {
            config.exment.base_url = Some(exment.base_url.trim_end_matches('/').to_owned());
            if let Some(table) = &exment.table {
                config.exment.table = table.clone();
            }
            secrets.exment.client_id = Some(exment.client_id.clone());
            secrets.exment.client_secret = Some(exment.client_secret.clone());
            secrets.exment.api_key = Some(exment.api_key.clone());
            applied.exment = true;
        }
        if let Some(zone) = self.time_zone {
            config.exment.time_zone = zone;
            applied.time_zone = Some(zone.name().to_owned());
        }
        applied.wifi = self.wifi.is_some();
        applied.devices = self.devices.len();
        Ok(applied)
    }
}

/// Sets `name`'s password (a device account stays one).
fn set_user(users: &mut Vec<MqttUser>, name: &str, password_hash: &str) {
    let device = users
        .iter()
        .find(|u| u.name == name)
        .and_then(|u| u.device.clone());
    users.retain(|u| u.name != name);
    users.push(MqttUser {
        name: name.into(),
        password_hash: password_hash.into(),
        device,
    });
}

fn check_password(key: &str, password: &str) -> Result<(), SettingsError> {
    if password.chars().count() < 8 {
        return Err(invalid(key, "must be at least 8 characters"));
    }
    not_a_placeholder(key, password)
}

fn check_url(key: &str, url: &str) -> Result<(), SettingsError> {
    genba_config::check_url(url).map_err(|why| invalid(key, why))?;
    not_a_placeholder(key, url)
}

/// The secret values `genba-settings.example.toml` ships (image/): a copy of the example with
/// them left in would give every such Pi the same, published credentials.
const PLACEHOLDERS: &[&str] = &[
    "change me please",
    "another long password",
    "replace-with-a-long-random-key",
    "wifi passphrase",
    "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    "...",
];

/// Passwords at the top of every leaked-password list, refused too.
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password123",
    "passw0rd",
    "12345678",
    "123456789",
    "1234567890",
    "11111111",
    "00000000",
    "87654321",
    "qwertyuiop",
    "qwerty123",
    "abcdefgh",
    "abcd1234",
    "iloveyou",
    "letmein123",
    "changeme",
    "change me",
    "admin123",
    "administrator",
    "raspberry",
    "genba123",
    "welcome1",
];

fn not_a_placeholder(key: &str, value: &str) -> Result<(), SettingsError> {
    let v = value.trim().to_lowercase();
    if PLACEHOLDERS.iter().any(|p| p.to_lowercase() == v) {
        return Err(invalid(
            key,
            "still the example's placeholder (published in Genba's repository); put your own",
        ));
    }
    if COMMON_PASSWORDS.contains(&v.as_str()) {
        return Err(invalid(
            key,
            "one of the most common passwords; choose a longer, unguessable one",
        ));
    }
    Ok(())
}

/// The wpa_supplicant configuration for the Wi-Fi settings. The SSID is written in hex and the
/// passphrase as its derived 256-bit PSK, so no quoting can go wrong and the passphrase itself
/// is not stored.
pub fn wpa_supplicant_conf(wifi: &Wifi) -> Result<String, SettingsError> {
    let country = &wifi.country;
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(
            "wifi.country",
            "two capital letters (ISO 3166), e.g. \"JP\"",
        ));
    }
    if wifi.ssid.is_empty() || wifi.ssid.len() > 32 {
        return Err(invalid("wifi.ssid", "1 to 32 bytes"));
    }
    let password = &wifi.password;
    let security = if password.is_empty() {
        "\tkey_mgmt=NONE\n".to_owned()
    } else {
        if !(8..=63).contains(&password.len()) || !password.bytes().all(|b| (32..127).contains(&b))
        {
            return Err(invalid(
                "wifi.password",
                "8 to 63 printable ASCII characters (WPA2 passphrase)",
            ));
        }
        // The example's placeholder, not a network's password (common passwords stay allowed:
        // the shop's network is what it is).
        if PLACEHOLDERS.contains(&password.trim()) {
            return Err(invalid(
                "wifi.password",
                "still the example's placeholder; put your network's password",
            ));
        }
        let mut psk = [0u8; 32];
        pbkdf2_hmac::<Sha1>(password.as_bytes(), wifi.ssid.as_bytes(), 4096, &mut psk);
        format!("\tkey_mgmt=WPA-PSK\n\tpsk={}\n", hex(&psk))
    };
    Ok(format!(
        "# Written by `genba firstboot` from genba-settings.toml.\n\
         ctrl_interface=DIR=/run/wpa_supplicant\n\
         update_config=0\n\
         country={country}\n\
         network={{\n\
         \tssid={}\n\
         \tscan_ssid=1\n\
         {security}}}\n",
        hex(wifi.ssid.as_bytes())
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example shipped on the card, as a user who copied it without editing would have it.
    const EXAMPLE: &str = include_str!("../../../image/genba-settings.example.toml");

    #[test]
    fn every_placeholder_of_the_example_is_refused_until_replaced() {
        let mut text = EXAMPLE.to_owned();
        // Each placeholder is refused in turn, naming its key; replaced, the next one is.
        let steps = [
            (
                "wifi passphrase",
                "wifi.password",
                "our-real-wifi-passphrase",
            ),
            (
                "change me please",
                "admin.password",
                "a-real-admin-passphrase-93",
            ),
            (
                "another long password",
                "mqtt_users[0].password",
                "thermo-passphrase-77",
            ),
            (
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
                "slack.webhook_url",
                "https://hooks.slack.com/services/T1/B2/realtoken",
            ),
            (
                "replace-with-a-long-random-key",
                "devices[0].api_key",
                "9f2c41d08e7b6a35c1d4e2f0",
            ),
        ];
        for (placeholder, key, real) in steps {
            let e = match Settings::parse(&text) {
                Ok(_) => panic!("the example was accepted with {placeholder:?} in it"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(key) && e.contains("placeholder"), "{key}: {e}");
            text = text.replacen(placeholder, real, 1);
        }
        assert!(
            Settings::parse(&text).is_ok(),
            "{:?}",
            Settings::parse(&text).err()
        );
    }

    #[test]
    fn common_passwords_are_refused_for_accounts_not_for_the_wifi() {
        let admin = "[admin]\npassword = \"password123\"\n";
        let e = Settings::parse(admin)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("admin.password") && e.contains("common"), "{e}");
        let wifi = "[wifi]\ncountry = \"JP\"\nssid = \"shop\"\npassword = \"password123\"\n";
        assert!(Settings::parse(wifi).is_ok());
    }

    const FULL: &str = r#"
time_zone = "Asia/Tokyo"

[wifi]
country = "JP"
ssid = "IEEE"
password = "password"

[admin]
password = "correct horse"

[[mqtt_users]]
name = "thermo-1"
password = "probe-secret"

[slack]
webhook_url = "https://hooks.slack.com/services/T0/B0/XYZ"
filters = ["alerts/#"]

[exment]
base_url = "https://exment.example.com/"
table = "haccp"
client_id = "id"
client_secret = "shh"
api_key = "key"
"#;

    fn error_key(text: &str) -> String {
        match Settings::parse(text) {
            Err(SettingsError::Invalid { key, .. }) => key,
            Err(other) => panic!("expected an invalid key, got {other}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn wifi_passphrase_becomes_the_ieee_802_11i_psk_and_the_ssid_hex() {
        let settings = Settings::parse(FULL).unwrap();
        let conf = wpa_supplicant_conf(settings.wifi.as_ref().unwrap()).unwrap();
        // IEEE 802.11i-2004 annex H.4 test vector: "password" on SSID "IEEE".
        assert!(
            conf.contains("psk=f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e\n")
        );
        assert!(conf.contains("ssid=49454545\n"), "{conf}");
        assert!(conf.contains("country=JP\n"));
        assert!(
            !conf.contains("password"),
            "the passphrase itself is not stored"
        );
    }

    #[test]
    fn apply_sets_users_slack_and_exment_and_replaces_by_name() {
        let mut config = Config::default();
        config.mqtt.users.push(MqttUser {
            name: "admin".into(),
            password_hash: "old".into(),
            device: None,
        });
        let mut secrets = Secrets::default();
        let applied = Settings::parse(FULL)
            .unwrap()
            .apply(&mut config, &mut secrets)
            .unwrap();
        assert_eq!(applied.users, ["admin", "thermo-1"]);
        assert!(applied.slack && applied.exment && applied.wifi);
        let admin: Vec<_> = config
            .mqtt
            .users
            .iter()
            .filter(|u| u.name == "admin")
            .collect();
        assert_eq!(admin.len(), 1, "the old admin entry is replaced");
        assert!(passwords::verify_password(
            "correct horse",
            &admin[0].password_hash
        ));
        assert_eq!(config.http.users.len(), 1);
        assert_eq!(config.slack.webhooks[0].filters, ["alerts/#"]);
        assert_eq!(
            secrets.slack["slack"],
            "https://hooks.slack.com/services/T0/B0/XYZ"
        );
        assert_eq!(
            config.exment.base_url.as_deref(),
            Some("https://exment.example.com")
        );
        assert_eq!(config.exment.table, "haccp");
        assert_eq!(config.exment.time_zone.name(), "Asia/Tokyo");
        assert_eq!(applied.time_zone.as_deref(), Some("Asia/Tokyo"));
        assert_eq!(secrets.exment.client_secret.as_deref(), Some("shh"));
        config.mqtt.listen = "0.0.0.0:1883".parse().unwrap();
        config.validate(std::path::Path::new("genba.toml")).unwrap();

        // Applying the same file again leaves one entry per name.
        Settings::parse(FULL)
            .unwrap()
            .apply(&mut config, &mut secrets)
            .unwrap();
        assert_eq!(config.mqtt.users.len(), 2);
        assert_eq!(config.slack.webhooks.len(), 1);
    }

    #[test]
    fn a_misspelt_time_zone_is_refused_by_name_and_none_keeps_the_config() {
        let err = Settings::parse("time_zone = \"Asia/Tokio\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("time_zone") && err.contains("Asia/Tokio"),
            "{err}"
        );
        let mut config = Config::default();
        Settings::parse("")
            .unwrap()
            .apply(&mut config, &mut Secrets::default())
            .unwrap();
        assert_eq!(config.exment.time_zone.name(), "UTC");
    }

    #[test]
    fn bad_settings_name_the_key() {
        assert_eq!(error_key("[admin]\npassword = \"short\""), "admin.password");
        assert_eq!(
            error_key("[wifi]\ncountry = \"jp\"\nssid = \"x\"\npassword = \"12345678\""),
            "wifi.country"
        );
        assert_eq!(
            error_key("[wifi]\ncountry = \"JP\"\nssid = \"x\"\npassword = \"1234567\""),
            "wifi.password"
        );
        assert_eq!(
            error_key("[slack]\nwebhook_url = \"hooks.slack.com/x\""),
            "slack.webhook_url"
        );
        assert_eq!(
            error_key("[[mqtt_users]]\nname = \"a b\"\npassword = \"12345678\""),
            "mqtt_users[0].name"
        );
        assert_eq!(
            error_key("[exment]\nbase_url = \"https://e\"\nclient_id = \"i\"\nclient_secret = \" \"\napi_key = \"k\""),
            "exment.client_secret"
        );
        assert!(matches!(
            Settings::parse("[wlan]\nssid = \"x\""),
            Err(SettingsError::Parse(m)) if m.contains("wlan")
        ));
    }

    #[test]
    fn open_network_has_no_psk() {
        let wifi = Wifi {
            country: "DE".into(),
            ssid: "cafe \"quoted\"".into(),
            password: String::new(),
        };
        let conf = wpa_supplicant_conf(&wifi).unwrap();
        assert!(conf.contains("key_mgmt=NONE") && !conf.contains("psk="));
        assert!(!conf.contains('"'), "hex SSID needs no quoting: {conf}");
    }
}
