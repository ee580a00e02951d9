//! Per-sensor calibration offsets, keyed by `sensor_hw_id`.
//!
//! Offsets come from provisioning (a `ID=offset,ID=offset` list, see [`Offsets::parse_list`])
//! and from `offset` commands. A sensor without an entry has offset 0.

use core::fmt;

use heapless::Vec;

use crate::telemetry::{SensorId, SENSOR_ID_MAX};

/// Largest accepted offset magnitude, °C. A larger correction means a broken probe.
pub const MAX_OFFSET_C: f32 = 10.0;

/// Why an offset was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Not finite or beyond ±[`MAX_OFFSET_C`].
    OutOfRange,
    /// Empty, longer than 16 characters, or characters outside `A-Z a-z 0-9 - _ .`.
    BadSensorId,
    /// The table is full.
    Full,
    /// A provisioning list entry is not `ID=number`.
    BadList,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::OutOfRange => write!(f, "offset must be a number within ±{MAX_OFFSET_C} °C"),
            Error::BadSensorId => write!(
                f,
                "sensor id must be 1..={SENSOR_ID_MAX} characters of A-Z a-z 0-9 - _ ."
            ),
            Error::Full => f.write_str("offset table is full"),
            Error::BadList => f.write_str("offset list entries must look like SENSOR_ID=-0.25"),
        }
    }
}

crate::impl_error!(Error);

/// Checks a single offset value.
pub fn check_offset(offset_c: f32) -> Result<f32, Error> {
    if offset_c.is_finite() && offset_c.abs() <= MAX_OFFSET_C {
        Ok(offset_c)
    } else {
        Err(Error::OutOfRange)
    }
}

/// Checks a sensor id used as a key (non-empty, at most 16 characters, id characters).
pub fn check_sensor_id(id: &str) -> Result<SensorId, Error> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::BadSensorId);
    }
    SensorId::try_from(id).map_err(|_| Error::BadSensorId)
}

/// Up to `N` sensor offsets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offsets<const N: usize> {
    entries: Vec<(SensorId, f32), N>,
}

impl<const N: usize> Offsets<N> {
    /// An empty table.
    pub const fn new() -> Self {
        Offsets {
            entries: Vec::new(),
        }
    }

    /// The offset for a sensor, 0.0 if none is set.
    pub fn get(&self, sensor_hw_id: &str) -> f32 {
        self.entries
            .iter()
            .find(|(id, _)| id.as_str() == sensor_hw_id)
            .map_or(0.0, |(_, o)| *o)
    }

    /// Sets (or replaces) a sensor's offset. Setting 0 removes the entry, freeing its slot.
    pub fn set(&mut self, sensor_hw_id: &str, offset_c: f32) -> Result<(), Error> {
        let id = check_sensor_id(sensor_hw_id)?;
        let offset_c = check_offset(offset_c)?;
        let pos = self.entries.iter().position(|(k, _)| *k == id);
        match (pos, offset_c == 0.0) {
            (Some(i), true) => {
                self.entries.swap_remove(i);
            }
            (Some(i), false) => self.entries[i].1 = offset_c,
            (None, true) => {}
            (None, false) => self.entries.push((id, offset_c)).map_err(|_| Error::Full)?,
        }
        Ok(())
    }

    /// `raw + offset` for this sensor, rounded to 0.0001 °C.
    pub fn apply(&self, sensor_hw_id: &str, raw_celsius: f32) -> f32 {
        crate::round4(raw_celsius + self.get(sensor_hw_id))
    }

    /// Number of sensors with a non-zero offset.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no offsets are set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f32)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Parses a provisioning list such as `28FF4C3A91160457=-0.25, 28AA000000000001=0.5`
    /// (comma or semicolon separated; an empty string gives an empty table). All-or-nothing:
    /// on error nothing is kept.
    pub fn parse_list(list: &str) -> Result<Self, Error> {
        let mut out = Self::new();
        for entry in list
            .split([',', ';'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (id, value) = entry.split_once('=').ok_or(Error::BadList)?;
            let value: f32 = value.trim().parse().map_err(|_| Error::BadList)?;
            out.set(id.trim(), value)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_apply() {
        let mut o: Offsets<4> = Offsets::new();
        assert_eq!(o.get("28FF"), 0.0);
        assert_eq!(o.apply("28FF", 4.0), 4.0);
        o.set("28FF", -0.25).unwrap();
        o.set("28AA", 0.5).unwrap();
        assert_eq!(o.get("28FF"), -0.25);
        assert_eq!(o.apply("28FF", 4.0), 3.75);
        assert_eq!(o.apply("28AA", -10.125), -9.625);
        assert_eq!(o.apply("other", 4.0), 4.0);
        // replace, then clear with 0
        o.set("28FF", 1.0).unwrap();
        assert_eq!(o.get("28FF"), 1.0);
        assert_eq!(o.len(), 2);
        o.set("28FF", 0.0).unwrap();
        assert_eq!(o.get("28FF"), 0.0);
        assert_eq!(o.len(), 1);
        assert_eq!(o.iter().collect::<std::vec::Vec<_>>(), vec![("28AA", 0.5)]);
    }

    #[test]
    fn rejects_bad_values_and_ids() {
        let mut o: Offsets<2> = Offsets::new();
        assert_eq!(o.set("s", 10.5), Err(Error::OutOfRange));
        assert_eq!(o.set("s", f32::NAN), Err(Error::OutOfRange));
        assert_eq!(o.set("s", f32::INFINITY), Err(Error::OutOfRange));
        assert_eq!(o.set("", 1.0), Err(Error::BadSensorId));
        assert_eq!(o.set("28FF4C3A911604571", 1.0), Err(Error::BadSensorId));
        assert_eq!(o.set("a/b", 1.0), Err(Error::BadSensorId));
        assert!(o.set("s", -10.0).is_ok());
        o.set("t", 1.0).unwrap();
        assert_eq!(o.set("u", 1.0), Err(Error::Full));
        // replacing an existing entry still works when full
        assert!(o.set("t", 2.0).is_ok());
        assert_eq!(o.get("t"), 2.0);
    }

    #[test]
    fn parses_provisioning_lists() {
        let o: Offsets<4> =
            Offsets::parse_list("28FF4C3A91160457=-0.25, 28AA000000000001 = 0.5;").unwrap();
        assert_eq!(o.get("28FF4C3A91160457"), -0.25);
        assert_eq!(o.get("28AA000000000001"), 0.5);
        assert!(Offsets::<4>::parse_list("").unwrap().is_empty());
        assert_eq!(Offsets::<4>::parse_list("28FF"), Err(Error::BadList));
        assert_eq!(Offsets::<4>::parse_list("28FF=abc"), Err(Error::BadList));
        assert_eq!(Offsets::<4>::parse_list("28FF=99"), Err(Error::OutOfRange));
        assert_eq!(Offsets::<1>::parse_list("a=1,b=2"), Err(Error::Full));
    }
}
