//! Reading streams back (requirements P2, P3): the streams of a device, raw points in a time
//! range, and aggregates from the rollups (per minute, hour or day) so a one-year chart reads
//! at most 8,760 hourly rows per stream instead of millions of points.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::ingest::{HOUR_MS, MINUTE_MS};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamInfo {
    pub id: i64,
    pub device_id: String,
    pub name: String,
    pub kind: String,
    pub label: String,
    pub unit: String,
    pub created_at_ms: i64,
    pub last_at_ms: Option<i64>,
    pub last_value: Option<f64>,
    pub last_text: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    pub at_ms: i64,
    pub value: Option<f64>,
    pub text: Option<String>,
}

/// One aggregate bucket: its start and the values in it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    pub at_ms: i64,
    pub count: i64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub sum: f64,
}

/// The bucket length of an aggregate query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Minute,
    Hour,
    Day,
}

impl Resolution {
    pub fn millis(self) -> i64 {
        match self {
            Resolution::Minute => MINUTE_MS,
            Resolution::Hour => HOUR_MS,
            Resolution::Day => 24 * HOUR_MS,
        }
    }
    /// The rollup table period a bucket is summed from.
    fn source_period(self) -> i64 {
        match self {
            Resolution::Minute => MINUTE_MS,
            Resolution::Hour | Resolution::Day => HOUR_MS,
        }
    }
}

/// A time range `[from, to)` in unix ms, newest or oldest first, at most `limit` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: usize,
    pub newest_first: bool,
}

impl Range {
    fn order(&self) -> &'static str {
        if self.newest_first {
            "DESC"
        } else {
            "ASC"
        }
    }
}

const SELECT: &str = "SELECT id, device_id, name, kind, label, unit, created_at, last_at,
    last_value, last_text FROM streams";

fn row(r: &Row) -> rusqlite::Result<StreamInfo> {
    Ok(StreamInfo {
        id: r.get(0)?,
        device_id: r.get(1)?,
        name: r.get(2)?,
        kind: r.get(3)?,
        label: r.get(4)?,
        unit: r.get(5)?,
        created_at_ms: r.get(6)?,
        last_at_ms: r.get(7)?,
        last_value: r.get(8)?,
        last_text: r.get(9)?,
    })
}

pub fn of_device(conn: &Connection, device_id: &str) -> rusqlite::Result<Vec<StreamInfo>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} WHERE device_id = ?1 ORDER BY name"))?;
    let rows = stmt.query_map(params![device_id], row)?;
    rows.collect()
}

/// Every stream of every device.
pub fn all(conn: &Connection) -> rusqlite::Result<Vec<StreamInfo>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY device_id, name"))?;
    let rows = stmt.query_map([], row)?;
    rows.collect()
}

pub fn get(conn: &Connection, device_id: &str, name: &str) -> rusqlite::Result<Option<StreamInfo>> {
    conn.query_row(
        &format!("{SELECT} WHERE device_id = ?1 AND name = ?2"),
        params![device_id, name],
        row,
    )
    .optional()
}

/// Sets a stream's label and unit (`None` leaves it); false when there is no such stream.
pub fn describe(
    conn: &Connection,
    device_id: &str,
    name: &str,
    label: Option<&str>,
    unit: Option<&str>,
) -> rusqlite::Result<bool> {
    Ok(conn.execute(
        "UPDATE streams SET label = COALESCE(?3, label), unit = COALESCE(?4, unit)
         WHERE device_id = ?1 AND name = ?2",
        params![device_id, name, label, unit],
    )? > 0)
}

pub fn points(conn: &Connection, stream_id: i64, range: Range) -> rusqlite::Result<Vec<Point>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT at, value, text FROM points WHERE stream_id = ?1 AND at >= ?2 AND at < ?3
         ORDER BY at {} LIMIT ?4",
        range.order()
    ))?;
    let rows = stmt.query_map(
        params![stream_id, range.from_ms, range.to_ms, range.limit as i64],
        |r| {
            Ok(Point {
                at_ms: r.get(0)?,
                value: r.get(1)?,
                text: r.get(2)?,
            })
        },
    )?;
    rows.collect()
}

/// Aggregate buckets of `resolution` from the rollups; a bucket is listed when it holds a point.
pub fn buckets(
    conn: &Connection,
    stream_id: i64,
    resolution: Resolution,
    range: Range,
) -> rusqlite::Result<Vec<Bucket>> {
    let size = resolution.millis();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT bucket - (bucket % ?5) AS b, SUM(count), MIN(min), MAX(max), SUM(sum) FROM rollups
         WHERE stream_id = ?1 AND period = ?2 AND bucket >= ?3 AND bucket < ?4
         GROUP BY b ORDER BY b {} LIMIT ?6",
        range.order()
    ))?;
    let rows = stmt.query_map(
        params![
            stream_id,
            resolution.source_period(),
            range.from_ms,
            range.to_ms,
            size,
            range.limit as i64
        ],
        |r| {
            let count: i64 = r.get(1)?;
            let sum: f64 = r.get(4)?;
            Ok(Bucket {
                at_ms: r.get(0)?,
                count,
                min: r.get(2)?,
                max: r.get(3)?,
                sum,
                avg: if count > 0 { sum / count as f64 } else { 0.0 },
            })
        },
    )?;
    rows.collect()
}

/// One JSON record a device sent (ThingScale's channel stream).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    pub id: i64,
    pub at_ms: i64,
    pub tag: Option<String>,
    pub body: String,
}

pub fn records(
    conn: &Connection,
    device_id: &str,
    tag: Option<&str>,
    range: Range,
) -> rusqlite::Result<Vec<Record>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, at, tag, body FROM records WHERE device_id = ?1 AND at >= ?2 AND at < ?3
         AND (?4 IS NULL OR tag = ?4) ORDER BY at {0}, id {0} LIMIT ?5",
        range.order()
    ))?;
    let rows = stmt.query_map(
        params![
            device_id,
            range.from_ms,
            range.to_ms,
            tag,
            range.limit as i64
        ],
        |r| {
            Ok(Record {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                tag: r.get(2)?,
                body: r.get(3)?,
            })
        },
    )?;
    rows.collect()
}

/// Drops raw points and records older than `raw_before_ms` and rollups older than
/// `rollups_before_ms`; returns the rows removed.
pub fn prune(
    conn: &Connection,
    raw_before_ms: i64,
    rollups_before_ms: i64,
) -> rusqlite::Result<usize> {
    // Per stream, so each delete walks its primary key instead of scanning the table.
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM streams")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut n = 0;
    for id in ids {
        n += conn.execute(
            "DELETE FROM points WHERE stream_id = ?1 AND at < ?2",
            params![id, raw_before_ms],
        )?;
        n += conn.execute(
            "DELETE FROM rollups WHERE stream_id = ?1 AND period IN (60000, 3600000) AND bucket < ?2",
            params![id, rollups_before_ms],
        )?;
    }
    let devices: Vec<String> = conn
        .prepare("SELECT id FROM devices")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for d in devices {
        n += conn.execute(
            "DELETE FROM records WHERE device_id = ?1 AND at < ?2",
            params![d, raw_before_ms],
        )?;
    }
    Ok(n)
}

/// HACCP readings of one device in `[from, to)` by device time: (probe, time, °C), by probe
/// and time (walks the device-time index).
pub fn readings(
    conn: &Connection,
    device_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> rusqlite::Result<Vec<(String, i64, f64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT sensor_hw_id, ts_device, celsius FROM readings
         WHERE device_id = ?1 AND ts_device >= ?2 AND ts_device < ?3
         ORDER BY sensor_hw_id, ts_device",
    )?;
    let rows = stmt.query_map(params![device_id, from_ms, to_ms], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    rows.collect()
}
