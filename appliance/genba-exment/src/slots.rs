//! Check slots: readings grouped per (device, probe, slot of `slot_minutes`), one value each.

use std::collections::BTreeMap;

/// One reading as stored (the columns the forwarder needs).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingRow {
    pub device_id: String,
    pub sensor_hw_id: String,
    pub ts_device: i64,
    pub celsius: f64,
}

/// One HACCP check record for Exment.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `<device>:<probe>:<slot start, RFC 3339 UTC>`.
    pub key: String,
    pub device_id: String,
    pub sensor_hw_id: String,
    pub slot_start_ms: i64,
    pub celsius: f64,
}

pub use genba_config::Aggregation;

pub fn slot_key(device: &str, sensor: &str, slot_start_ms: i64) -> String {
    let at = chrono::DateTime::from_timestamp_millis(slot_start_ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| slot_start_ms.to_string());
    format!("{device}:{sensor}:{at}")
}

/// Records for every slot that ended before `closed_before_ms`.
pub fn build(
    readings: &[ReadingRow],
    slot_ms: i64,
    agg: Aggregation,
    closed_before_ms: i64,
) -> Vec<Record> {
    let mut groups: BTreeMap<(String, String, i64), Vec<&ReadingRow>> = BTreeMap::new();
    for r in readings {
        let start = r.ts_device.div_euclid(slot_ms) * slot_ms;
        if start + slot_ms <= closed_before_ms {
            groups
                .entry((r.device_id.clone(), r.sensor_hw_id.clone(), start))
                .or_default()
                .push(r);
        }
    }
    groups
        .into_iter()
        .map(|((device_id, sensor_hw_id, start), rows)| {
            let values = rows.iter().map(|r| r.celsius);
            let celsius = match agg {
                Aggregation::Nearest => rows
                    .iter()
                    .min_by_key(|r| (r.ts_device - start).abs())
                    .map(|r| r.celsius)
                    .unwrap_or_default(),
                Aggregation::Min => values.fold(f64::INFINITY, f64::min),
                Aggregation::Max => values.fold(f64::NEG_INFINITY, f64::max),
                Aggregation::Avg => values.sum::<f64>() / rows.len() as f64,
            };
            Record {
                key: slot_key(&device_id, &sensor_hw_id, start),
                device_id,
                sensor_hw_id,
                slot_start_ms: start,
                celsius: (celsius * 10_000.0).round() / 10_000.0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ts_min: i64, c: f64) -> ReadingRow {
        ReadingRow {
            device_id: "d".into(),
            sensor_hw_id: "s".into(),
            ts_device: ts_min * 60_000,
            celsius: c,
        }
    }

    #[test]
    fn readings_group_into_closed_slots_with_the_chosen_value() {
        let rows = [r(0, 4.0), r(10, 6.0), r(29, 2.0), r(30, 5.0), r(61, 9.0)];
        let slot = 30 * 60_000;
        let open_after_60 = 60 * 60_000;
        let nearest = build(&rows, slot, Aggregation::Nearest, open_after_60);
        assert_eq!(nearest.len(), 2, "the slot at 60 min is still open");
        assert_eq!(nearest[0].celsius, 4.0);
        assert_eq!(nearest[0].key, "d:s:1970-01-01T00:00:00Z");
        assert_eq!(nearest[1].celsius, 5.0);
        assert_eq!(
            build(&rows, slot, Aggregation::Min, open_after_60)[0].celsius,
            2.0
        );
        assert_eq!(
            build(&rows, slot, Aggregation::Max, open_after_60)[0].celsius,
            6.0
        );
        assert_eq!(
            build(&rows, slot, Aggregation::Avg, open_after_60)[0].celsius,
            4.0
        );
    }
}
