//! Commands received on `devices/{id}/commands`.
//!
//! JSON objects with a `cmd` field (unknown extra fields are ignored):
//!
//! | command | example |
//! |---|---|
//! | LED on/off | `{"cmd":"led","on":true}` |
//! | report interval (seconds, [`MIN_INTERVAL_S`]..=[`MAX_INTERVAL_S`]) | `{"cmd":"interval","seconds":60}` |
//! | per-sensor offset (°C, ±10; 0 clears it) | `{"cmd":"offset","sensor_hw_id":"28FF4C3A91160457","offset_c":-0.25}` |
//! | read and send now | `{"cmd":"send_now"}` |
//! | install a firmware update | `{"cmd":"update","version":"1.4.0","sha256":"3f16…9465","size":675472}` |
//!
//! `update` names an image the appliance keeps (`genba firmware add`); the device fetches it
//! from the appliance it reports to, at [`image::download_path`](crate::image::download_path)
//! of the SHA-256, and checks what it got against that SHA-256 and size.
//!
//! The plain-text payloads `LED_ON` and `LED_OFF` are accepted too, for simple publishers
//! (`mosquitto_pub -t devices/k1/commands -m LED_ON`).

use core::fmt;

use heapless::String;

use crate::discovery::{parse_fingerprint, Fingerprint};
use crate::image;
use crate::offsets::{self, Offsets};
use crate::telemetry::{self, SensorId, FW_MAX};

/// Shortest report interval, seconds.
pub const MIN_INTERVAL_S: u32 = 5;
/// Longest report interval, seconds (1 day).
pub const MAX_INTERVAL_S: u32 = 86_400;
/// Largest command payload accepted.
pub const MAX_COMMAND_LEN: usize = 256;

/// A parsed, checked command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Switch the status LED.
    Led(bool),
    /// Set the report interval, in seconds.
    Interval(u32),
    /// Set one sensor's calibration offset.
    Offset {
        /// The sensor.
        sensor_hw_id: SensorId,
        /// The offset, °C.
        offset_c: f32,
    },
    /// Take a reading and send it (and the backlog) now.
    SendNow,
    /// Install the firmware image with this SHA-256 from the appliance.
    Update {
        /// The image's version (what the device reports as `fw` once it runs it).
        version: String<FW_MAX>,
        /// SHA-256 of the whole image file.
        sha256: Fingerprint,
        /// Its size in bytes (at most an OTA slot).
        size: u32,
    },
}

/// Why a command was refused. The message is meant to be logged on the device and can be
/// shown to whoever sent the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Longer than [`MAX_COMMAND_LEN`].
    TooLong,
    /// Not a JSON object of the expected shape (or a field has the wrong type).
    BadJson,
    /// No `cmd` field.
    MissingCmd,
    /// `cmd` is not one of the known commands.
    UnknownCommand,
    /// A field the command needs is missing.
    MissingField(&'static str),
    /// `seconds` is outside [`MIN_INTERVAL_S`]..=[`MAX_INTERVAL_S`].
    IntervalOutOfRange,
    /// The offset or its sensor id is not acceptable.
    Offset(offsets::Error),
    /// This field of an `update` is not acceptable.
    BadUpdate(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooLong => write!(f, "command longer than {MAX_COMMAND_LEN} bytes"),
            Error::BadJson => {
                f.write_str("command must be a JSON object like {\"cmd\":\"led\",\"on\":true}")
            }
            Error::MissingCmd => f.write_str("command has no \"cmd\" field"),
            Error::UnknownCommand => {
                f.write_str("unknown cmd (expected led, interval, offset, send_now or update)")
            }
            Error::MissingField(name) => write!(f, "command is missing \"{name}\""),
            Error::IntervalOutOfRange => {
                write!(
                    f,
                    "interval seconds must be within {MIN_INTERVAL_S}..={MAX_INTERVAL_S}"
                )
            }
            Error::Offset(e) => write!(f, "{e}"),
            Error::BadUpdate("sha256") => f.write_str("update sha256 must be 64 hex digits"),
            Error::BadUpdate("size") => write!(
                f,
                "update size must be {}..={} bytes (an OTA slot)",
                image::MIN_LEN,
                image::SLOT_LEN
            ),
            Error::BadUpdate(field) => write!(f, "update {field} is not acceptable"),
        }
    }
}

crate::impl_error!(Error);

#[derive(serde::Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    cmd: Option<&'a str>,
    on: Option<bool>,
    seconds: Option<u32>,
    #[serde(borrow)]
    sensor_hw_id: Option<&'a str>,
    offset_c: Option<f32>,
    #[serde(borrow)]
    version: Option<&'a str>,
    #[serde(borrow)]
    sha256: Option<&'a str>,
    size: Option<u32>,
}

impl Command {
    /// Parses and checks a command payload.
    pub fn parse(payload: &[u8]) -> Result<Command, Error> {
        if payload.len() > MAX_COMMAND_LEN {
            return Err(Error::TooLong);
        }
        let text = payload.trim_ascii();
        match text {
            b"LED_ON" => return Ok(Command::Led(true)),
            b"LED_OFF" => return Ok(Command::Led(false)),
            _ => {}
        }
        let (raw, used): (Raw<'_>, usize) =
            serde_json_core::from_slice(text).map_err(|_| Error::BadJson)?;
        if used != text.len() {
            return Err(Error::BadJson);
        }
        match raw.cmd.ok_or(Error::MissingCmd)? {
            "led" => raw.on.map(Command::Led).ok_or(Error::MissingField("on")),
            "interval" => {
                let s = raw.seconds.ok_or(Error::MissingField("seconds"))?;
                if (MIN_INTERVAL_S..=MAX_INTERVAL_S).contains(&s) {
                    Ok(Command::Interval(s))
                } else {
                    Err(Error::IntervalOutOfRange)
                }
            }
            "offset" => {
                let id = raw
                    .sensor_hw_id
                    .ok_or(Error::MissingField("sensor_hw_id"))?;
                let offset_c = raw.offset_c.ok_or(Error::MissingField("offset_c"))?;
                let sensor_hw_id = offsets::check_sensor_id(id).map_err(Error::Offset)?;
                let offset_c = offsets::check_offset(offset_c).map_err(Error::Offset)?;
                Ok(Command::Offset {
                    sensor_hw_id,
                    offset_c,
                })
            }
            "send_now" => Ok(Command::SendNow),
            "update" => {
                let version = raw.version.ok_or(Error::MissingField("version"))?;
                let sha256 = raw.sha256.ok_or(Error::MissingField("sha256"))?;
                let size = raw.size.ok_or(Error::MissingField("size"))?;
                telemetry::validate_firmware(version).map_err(|_| Error::BadUpdate("version"))?;
                let sha256 = parse_fingerprint(sha256).ok_or(Error::BadUpdate("sha256"))?;
                if !(image::MIN_LEN..=image::SLOT_LEN).contains(&(size as usize)) {
                    return Err(Error::BadUpdate("size"));
                }
                Ok(Command::Update {
                    version: String::try_from(version).map_err(|_| Error::BadUpdate("version"))?,
                    sha256,
                    size,
                })
            }
            _ => Err(Error::UnknownCommand),
        }
    }
}

/// The settings a device changes through commands.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings<const N: usize> {
    /// Status LED state.
    pub led_on: bool,
    /// Report interval, seconds.
    pub interval_s: u32,
    /// Per-sensor offsets.
    pub offsets: Offsets<N>,
}

/// What the device loop must do after a command was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The LED changed: drive the pin.
    Led(bool),
    /// The interval changed: restart the wait.
    Interval,
    /// An offset changed: applies from the next reading on.
    Offset,
    /// Read and send immediately.
    SendNow,
    /// Install a firmware update (the command says which); the settings are unchanged.
    Update,
}

impl<const N: usize> Settings<N> {
    /// Settings with the LED off, the given interval (clamped to the allowed range) and offsets.
    pub fn new(interval_s: u32, offsets: Offsets<N>) -> Self {
        Settings {
            led_on: false,
            interval_s: interval_s.clamp(MIN_INTERVAL_S, MAX_INTERVAL_S),
            offsets,
        }
    }

    /// Applies a command; on error the settings are unchanged.
    pub fn apply(&mut self, cmd: &Command) -> Result<Effect, Error> {
        Ok(match cmd {
            Command::Led(on) => {
                self.led_on = *on;
                Effect::Led(*on)
            }
            Command::Interval(s) => {
                self.interval_s = *s;
                Effect::Interval
            }
            Command::Offset {
                sensor_hw_id,
                offset_c,
            } => {
                self.offsets
                    .set(sensor_hw_id, *offset_c)
                    .map_err(Error::Offset)?;
                Effect::Offset
            }
            Command::SendNow => Effect::SendNow,
            Command::Update { .. } => Effect::Update,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, Error> {
        Command::parse(s.as_bytes())
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(p(r#"{"cmd":"led","on":true}"#), Ok(Command::Led(true)));
        assert_eq!(
            p(r#" { "cmd" : "led" , "on" : false } "#),
            Ok(Command::Led(false))
        );
        assert_eq!(p("LED_ON"), Ok(Command::Led(true)));
        assert_eq!(p("LED_OFF\n"), Ok(Command::Led(false)));
        assert_eq!(
            p(r#"{"cmd":"interval","seconds":60}"#),
            Ok(Command::Interval(60))
        );
        assert_eq!(
            p(r#"{"cmd":"offset","sensor_hw_id":"28FF4C3A91160457","offset_c":-0.25}"#),
            Ok(Command::Offset {
                sensor_hw_id: SensorId::try_from("28FF4C3A91160457").unwrap(),
                offset_c: -0.25
            })
        );
        assert_eq!(p(r#"{"cmd":"send_now"}"#), Ok(Command::SendNow));
        // extra fields (a request id, say) are ignored
        assert_eq!(
            p(r#"{"id":"abc-1","cmd":"send_now","meta":{"by":"ui"}}"#),
            Ok(Command::SendNow)
        );
    }

    #[test]
    fn an_update_names_a_checked_version_hash_and_size() {
        let sha = "3f16f28bf4be28206a27c665d0e71be2dec8e68f7254a59448bef7b9dc1d9465";
        let cmd = p(&std::format!(
            r#"{{"cmd":"update","version":"1.4.0","sha256":"{sha}","size":675472}}"#
        ))
        .unwrap();
        let Command::Update {
            version,
            sha256,
            size,
        } = &cmd
        else {
            panic!("{cmd:?}")
        };
        assert_eq!(version.as_str(), "1.4.0");
        assert_eq!(crate::discovery::hex(sha256).as_str(), sha);
        assert_eq!(*size, 675_472);
        assert_eq!(
            crate::image::download_path(sha256).as_str(),
            std::format!("/firmware/{sha}.bin")
        );
        let mut settings: Settings<4> = Settings::new(60, Offsets::new());
        let before = settings.clone();
        assert_eq!(settings.apply(&cmd), Ok(Effect::Update));
        assert_eq!(settings, before);

        let update = |version: &str, sha: &str, size: u64| {
            p(&std::format!(
                r#"{{"cmd":"update","version":"{version}","sha256":"{sha}","size":{size}}}"#
            ))
        };
        assert_eq!(
            update("1.4 beta", sha, 675_472),
            Err(Error::BadUpdate("version"))
        );
        assert_eq!(
            update("1.4.0", &sha[..63], 675_472),
            Err(Error::BadUpdate("sha256"))
        );
        assert_eq!(update("1.4.0", sha, 100), Err(Error::BadUpdate("size")));
        let too_big = crate::image::SLOT_LEN as u64 + 1;
        assert_eq!(update("1.4.0", sha, too_big), Err(Error::BadUpdate("size")));
        assert_eq!(
            p(r#"{"cmd":"update","version":"1.4.0","size":675472}"#),
            Err(Error::MissingField("sha256"))
        );
        assert!(Error::BadUpdate("size").to_string().contains("OTA slot"));
    }

    #[test]
    fn bad_commands_have_clear_errors() {
        assert_eq!(p(""), Err(Error::BadJson));
        assert_eq!(p("LED_BLINK"), Err(Error::BadJson));
        assert_eq!(p("[1,2]"), Err(Error::BadJson));
        assert_eq!(
            p(r#"{"cmd":"led","on":true} trailing"#),
            Err(Error::BadJson)
        );
        assert_eq!(p(r#"{"on":true}"#), Err(Error::MissingCmd));
        assert_eq!(p(r#"{"cmd":"reboot"}"#), Err(Error::UnknownCommand));
        assert_eq!(p(r#"{"cmd":"led"}"#), Err(Error::MissingField("on")));
        assert_eq!(p(r#"{"cmd":"led","on":"yes"}"#), Err(Error::BadJson));
        assert_eq!(
            p(r#"{"cmd":"interval"}"#),
            Err(Error::MissingField("seconds"))
        );
        assert_eq!(
            p(r#"{"cmd":"interval","seconds":4}"#),
            Err(Error::IntervalOutOfRange)
        );
        assert_eq!(
            p(r#"{"cmd":"interval","seconds":86401}"#),
            Err(Error::IntervalOutOfRange)
        );
        assert_eq!(p(r#"{"cmd":"interval","seconds":-1}"#), Err(Error::BadJson));
        assert_eq!(
            p(r#"{"cmd":"interval","seconds":5}"#),
            Ok(Command::Interval(5))
        );
        assert_eq!(
            p(r#"{"cmd":"offset","offset_c":1}"#),
            Err(Error::MissingField("sensor_hw_id"))
        );
        assert_eq!(
            p(r#"{"cmd":"offset","sensor_hw_id":"28FF"}"#),
            Err(Error::MissingField("offset_c"))
        );
        assert_eq!(
            p(r#"{"cmd":"offset","sensor_hw_id":"28FF","offset_c":11}"#),
            Err(Error::Offset(offsets::Error::OutOfRange))
        );
        assert_eq!(
            p(r#"{"cmd":"offset","sensor_hw_id":"a/b","offset_c":1}"#),
            Err(Error::Offset(offsets::Error::BadSensorId))
        );
        let long = format!(r#"{{"cmd":"send_now","pad":"{}"}}"#, "x".repeat(300));
        assert_eq!(p(&long), Err(Error::TooLong));
        // every error renders a message
        assert!(Error::IntervalOutOfRange.to_string().contains("5..=86400"));
    }

    #[test]
    fn settings_apply_commands() {
        let mut s: Settings<4> = Settings::new(1, Offsets::new());
        assert_eq!(s.interval_s, MIN_INTERVAL_S);
        assert_eq!(s.apply(&Command::Led(true)), Ok(Effect::Led(true)));
        assert!(s.led_on);
        assert_eq!(
            s.apply(&p(r#"{"cmd":"interval","seconds":120}"#).unwrap()),
            Ok(Effect::Interval)
        );
        assert_eq!(s.interval_s, 120);
        let off = p(r#"{"cmd":"offset","sensor_hw_id":"28FF","offset_c":0.5}"#).unwrap();
        assert_eq!(s.apply(&off), Ok(Effect::Offset));
        assert_eq!(s.offsets.apply("28FF", 4.0), 4.5);
        assert_eq!(s.apply(&Command::SendNow), Ok(Effect::SendNow));
        // a full offset table refuses and leaves the settings alone
        let mut tiny: Settings<1> = Settings::new(60, Offsets::new());
        tiny.apply(&off).unwrap();
        let other = p(r#"{"cmd":"offset","sensor_hw_id":"28AA","offset_c":0.5}"#).unwrap();
        assert_eq!(tiny.apply(&other), Err(Error::Offset(offsets::Error::Full)));
        assert_eq!(tiny.offsets.get("28AA"), 0.0);
    }
}
