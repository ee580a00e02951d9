//! The device registry (requirement P1): devices added by hand or provisioned on their first
//! message, with metadata, enabled flag and what was last seen of them.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::now_ms;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Device {
    pub id: String,
    pub channel: i64,
    pub name: String,
    pub description: String,
    pub location: String,
    pub device_type: String,
    pub tags: Vec<String>,
    pub enabled: bool,
    /// `manual` or `auto` (first message).
    pub provisioned: String,
    pub created_at_ms: i64,
    pub last_seen_at_ms: Option<i64>,
    pub last_address: Option<String>,
    pub firmware: Option<String>,
    pub rssi: Option<i64>,
}

/// The editable part of a device; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceChange {
    pub name: Option<String>,
    pub description: Option<String>,
    pub location: Option<String>,
    pub device_type: Option<String>,
    pub tags: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

const SELECT: &str = "SELECT id, channel, name, description, location, device_type, tags, enabled,
    provisioned, created_at, last_seen_at, last_address, firmware, rssi FROM devices";

fn row(r: &Row) -> rusqlite::Result<Device> {
    let tags: String = r.get(6)?;
    Ok(Device {
        id: r.get(0)?,
        channel: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        location: r.get(4)?,
        device_type: r.get(5)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        enabled: r.get(7)?,
        provisioned: r.get(8)?,
        created_at_ms: r.get(9)?,
        last_seen_at_ms: r.get(10)?,
        last_address: r.get(11)?,
        firmware: r.get(12)?,
        rssi: r.get(13)?,
    })
}

pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Device>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY id"))?;
    let rows = stmt.query_map([], row)?;
    rows.collect()
}

pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<Device>> {
    conn.query_row(&format!("{SELECT} WHERE id = ?1"), params![id], row)
        .optional()
}

/// The device, enabled flag and scopes of the device key with this SHA-256 digest.
pub fn key_owner(
    conn: &Connection,
    digest: &str,
) -> rusqlite::Result<Option<(String, bool, String)>> {
    conn.query_row(
        "SELECT device_id, enabled, scopes FROM api_keys WHERE key_sha256 = ?1",
        params![digest],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
}

/// The ids of the disabled devices (the broker refuses their publishes).
pub fn disabled_ids(conn: &Connection) -> rusqlite::Result<std::collections::HashSet<String>> {
    let mut stmt = conn.prepare_cached("SELECT id FROM devices WHERE enabled = 0")?;
    let ids = stmt.query_map([], |r| r.get(0))?;
    ids.collect()
}

/// The device mapped to a ThingScale channel number.
pub fn by_channel(conn: &Connection, channel: i64) -> rusqlite::Result<Option<Device>> {
    conn.query_row(
        &format!("{SELECT} WHERE channel = ?1"),
        params![channel],
        row,
    )
    .optional()
}

/// Adds a device by hand; `None` when the id is taken. The id must already be checked.
pub fn add(conn: &Connection, id: &str, change: &DeviceChange) -> rusqlite::Result<Option<Device>> {
    let added = conn.execute(
        "INSERT OR IGNORE INTO devices (id, channel, provisioned, created_at)
         VALUES (?1, (SELECT COALESCE(MAX(channel), 0) + 1 FROM devices), 'manual', ?2)",
        params![id, now_ms()],
    )?;
    if added == 0 {
        return Ok(None);
    }
    update(conn, id, change)
}

/// Changes what `change` names; `None` when there is no such device.
pub fn update(
    conn: &Connection,
    id: &str,
    change: &DeviceChange,
) -> rusqlite::Result<Option<Device>> {
    let tags = change
        .tags
        .as_ref()
        .map(|t| serde_json::to_string(t).unwrap_or_else(|_| "[]".into()));
    let n = conn.execute(
        "UPDATE devices SET name = COALESCE(?2, name), description = COALESCE(?3, description),
         location = COALESCE(?4, location), device_type = COALESCE(?5, device_type),
         tags = COALESCE(?6, tags), enabled = COALESCE(?7, enabled) WHERE id = ?1",
        params![
            id,
            change.name,
            change.description,
            change.location,
            change.device_type,
            tags,
            change.enabled
        ],
    )?;
    if n == 0 {
        return Ok(None);
    }
    get(conn, id)
}

/// Removes a device with its streams, points and records (readings and the journal stay).
pub fn delete(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM devices WHERE id = ?1", params![id])? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_get_channels_in_order_and_changes_touch_only_named_fields() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::open(&dir.path().join("d.sqlite3")).unwrap();
        let a = add(
            &conn,
            "fridge-1",
            &DeviceChange {
                name: Some("Fridge".into()),
                tags: Some(vec!["kitchen".into()]),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!((a.channel, a.name.as_str(), a.enabled), (1, "Fridge", true));
        assert_eq!(a.provisioned, "manual");
        assert!(add(&conn, "fridge-1", &DeviceChange::default())
            .unwrap()
            .is_none());
        let b = add(&conn, "fridge-2", &DeviceChange::default())
            .unwrap()
            .unwrap();
        assert_eq!(b.channel, 2);
        let changed = update(
            &conn,
            "fridge-1",
            &DeviceChange {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (changed.name.as_str(), changed.tags.clone(), changed.enabled),
            ("Fridge", vec!["kitchen".to_string()], false)
        );
        assert_eq!(by_channel(&conn, 2).unwrap().unwrap().id, "fridge-2");
        assert!(update(&conn, "nope", &DeviceChange::default())
            .unwrap()
            .is_none());
        assert!(delete(&conn, "fridge-2").unwrap());
        assert_eq!(list(&conn).unwrap().len(), 1);
    }
}
