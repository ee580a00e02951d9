//! The site's time zone, an IANA name (`"Asia/Tokyo"`), for times shown in the site's local
//! wall time (Exment's check slot). Parsed when the config is loaded, so a misspelt name is an
//! error naming `time_zone`. The default is UTC: the Pi's own local zone is not a reliable
//! guess (a fresh image runs in UTC until someone sets it).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(pub chrono_tz::Tz);

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone(chrono_tz::Tz::UTC)
    }
}

impl TimeZone {
    pub fn tz(&self) -> chrono_tz::Tz {
        self.0
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TimeZone {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse::<chrono_tz::Tz>().map(TimeZone).map_err(|_| {
            format!(
                "time_zone {s:?} is not an IANA time zone name (e.g. \"Asia/Tokyo\", \"Europe/Berlin\", \"UTC\")"
            )
        })
    }
}

impl Serialize for TimeZone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iana_names_parse_and_others_are_refused_by_name() {
        assert_eq!(
            "Asia/Tokyo".parse::<TimeZone>().unwrap().name(),
            "Asia/Tokyo"
        );
        assert_eq!(TimeZone::default().name(), "UTC");
        let err = "Asia/Tokio".parse::<TimeZone>().unwrap_err();
        assert!(
            err.contains("time_zone") && err.contains("Asia/Tokio"),
            "{err}"
        );
        assert!("+09:00".parse::<TimeZone>().is_err());
    }
}
