//! `[[rules]]`: what Genba watches in the device streams (requirement P4). The same typed
//! rule is read from genba.toml, the `/v2/rule` API and `genba rules add`.

use serde::{Deserialize, Serialize};

/// When a stream's value (or its silence) is a deviation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// value > threshold (also written `above`).
    #[serde(rename = ">", alias = "above")]
    Above,
    #[serde(rename = ">=")]
    AtOrAbove,
    /// value < threshold (also written `below`).
    #[serde(rename = "<", alias = "below")]
    Below,
    #[serde(rename = "<=")]
    AtOrBelow,
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    /// No value for `silent_minutes`.
    #[serde(rename = "silent")]
    Silent,
    /// The value changes faster than `threshold` per minute (either way).
    #[serde(rename = "rate")]
    Rate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Warning,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// 1-64 characters from A-Z a-z 0-9 - _ . (a topic level of `alarms/{device}/{rule}`).
    pub name: String,
    /// A device id, or unset for every device.
    #[serde(default)]
    pub device: Option<String>,
    /// Only devices with this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// The stream name (`temperature`, `env.temp`, a probe id), or `*` for every stream.
    pub stream: String,
    pub condition: Condition,
    #[serde(default)]
    pub threshold: Option<f64>,
    /// The condition must hold this long before an alarm is raised.
    #[serde(default)]
    pub for_secs: u64,
    /// Clearing needs the value back past the threshold by this much.
    #[serde(default)]
    pub hysteresis: f64,
    /// Minutes without a value (fractions allowed) for `silent`.
    #[serde(default)]
    pub silent_minutes: Option<f64>,
    /// Escalate an alarm nobody acknowledged within this many minutes (fractions allowed).
    #[serde(default)]
    pub escalate_after_minutes: Option<f64>,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub description: String,
    /// A command published to the device (on `devices/{id}/commands`) when the alarm is raised.
    #[serde(default)]
    pub command: Option<String>,
    /// An HTTP(S) URL that gets a JSON POST when an alarm of this rule is raised, escalated
    /// or cleared (ThingScale's event notification `post_url`).
    #[serde(default)]
    pub notify_url: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

pub(crate) fn name_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Rule {
    /// Checks what types cannot: returns the field at fault and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !name_ok(&self.name, 64) {
            return Err(("name", "1-64 characters from A-Z a-z 0-9 - _ .".into()));
        }
        if let Some(d) = &self.device {
            if !name_ok(d, 32) {
                return Err((
                    "device",
                    "a device id: 1-32 characters from A-Z a-z 0-9 - _ .".into(),
                ));
            }
        }
        if self
            .tag
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.len() > 32)
        {
            return Err(("tag", "1-32 characters".into()));
        }
        if self.stream.is_empty() || self.stream.len() > 100 {
            return Err(("stream", "a stream name (1-100 characters) or *".into()));
        }
        match self.condition {
            Condition::Silent => {
                if !self
                    .silent_minutes
                    .is_some_and(|m| m > 0.0 && m <= 525_600.0)
                {
                    return Err((
                        "silent_minutes",
                        "above 0, at most 525600 minutes; required for silent".into(),
                    ));
                }
            }
            _ => match self.threshold {
                Some(t) if t.is_finite() => {}
                _ => {
                    return Err((
                        "threshold",
                        "a finite number, required for this condition".into(),
                    ))
                }
            },
        }
        if self.condition == Condition::Rate && self.threshold.is_some_and(|t| t <= 0.0) {
            return Err(("threshold", "a rate above 0 (change per minute)".into()));
        }
        if !self.hysteresis.is_finite() || self.hysteresis < 0.0 {
            return Err(("hysteresis", "0 or more".into()));
        }
        if self.for_secs > 86_400 {
            return Err(("for_secs", "at most 86400 (a day)".into()));
        }
        if self
            .escalate_after_minutes
            .is_some_and(|m| !(m > 0.0 && m <= 525_600.0))
        {
            return Err(("escalate_after_minutes", "above 0, at most 525600".into()));
        }
        if self
            .command
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 4096)
        {
            return Err(("command", "1-4096 bytes".into()));
        }
        if let Some(url) = &self.notify_url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() <= 2048
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err((
                    "notify_url",
                    "an http:// or https:// URL without spaces".into(),
                ));
            }
        }
        if self.description.len() > 256 {
            return Err(("description", "at most 256 characters".into()));
        }
        Ok(())
    }

    /// Whether the rule watches this stream of this device (with these tags).
    pub fn selects(&self, device: &str, tags: &[String], stream: &str) -> bool {
        self.enabled
            && self.device.as_deref().is_none_or(|d| d == device)
            && self.tag.as_ref().is_none_or(|t| tags.contains(t))
            && (self.stream == "*" || self.stream == stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> Result<Rule, String> {
        toml::from_str::<Rule>(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn conditions_read_as_operators_or_words() {
        let r = rule(
            "name = \"warm\"\nstream = \"temperature\"\ncondition = \"above\"\nthreshold = 8.0",
        )
        .unwrap();
        assert_eq!(r.condition, Condition::Above);
        assert!(r.check().is_ok());
        let r = rule("name = \"w\"\nstream = \"t\"\ncondition = \"<=\"\nthreshold = -18").unwrap();
        assert_eq!(r.condition, Condition::AtOrBelow);
        assert!(rule("name = \"w\"\nstream = \"t\"\ncondition = \"hotter\"").is_err());
    }

    #[test]
    fn checks_name_the_field() {
        let base = "stream = \"t\"\ncondition = \"silent\"\n";
        let r = rule(&format!("name = \"a/b\"\n{base}silent_minutes = 5")).unwrap();
        assert_eq!(r.check().unwrap_err().0, "name");
        let r = rule(&format!("name = \"s\"\n{base}")).unwrap();
        assert_eq!(r.check().unwrap_err().0, "silent_minutes");
        let r = rule("name = \"x\"\nstream = \"t\"\ncondition = \">\"").unwrap();
        assert_eq!(r.check().unwrap_err().0, "threshold");
        let r = rule("name = \"x\"\nstream = \"t\"\ncondition = \"rate\"\nthreshold = 0").unwrap();
        assert_eq!(r.check().unwrap_err().0, "threshold");
    }

    #[test]
    fn selection_by_device_tag_and_stream() {
        let mut r = rule(
            "name = \"x\"\nstream = \"*\"\ncondition = \">\"\nthreshold = 1\ntag = \"fridge\"",
        )
        .unwrap();
        assert!(r.selects("d1", &["fridge".into()], "t"));
        assert!(!r.selects("d1", &[], "t"));
        r.tag = None;
        r.device = Some("d2".into());
        assert!(!r.selects("d1", &[], "t"));
        r.enabled = false;
        assert!(!r.selects("d2", &[], "t"));
    }
}
