//! Per-device API keys (H5): a key is shown once when made; only its SHA-256 digest is stored,
//! with its owner (device id), scopes, enabled flag and times. Checks read the table every
//! time, so `genba keys revoke` takes effect at once in every running role.

use genba_auth::passwords::{api_key_digest, generate_api_key};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

pub const SCOPE_TELEMETRY_WRITE: &str = "telemetry:write";
pub const SCOPE_TELEMETRY_READ: &str = "telemetry:read";
const KNOWN_SCOPES: &[&str] = &[SCOPE_TELEMETRY_WRITE, SCOPE_TELEMETRY_READ];
/// `last_used_at` is written at most this often per key (a write per request would be waste).
const LAST_USED_EVERY_MS: i64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unknown API key")]
    Unknown,
    #[error("this API key is revoked")]
    Revoked,
    #[error("this API key lacks the scope {0}")]
    MissingScope(String),
    #[error("unknown scope {0:?} (known: telemetry:write, telemetry:read)")]
    BadScope(String),
    #[error("device id {0:?}: 1-32 characters from A-Z a-z 0-9 - _ .")]
    BadDevice(String),
    #[error("this API key already belongs to another device")]
    KeyInUse,
    #[error("no API key with id {0}")]
    NoSuchKey(i64),
    #[error("api_keys table: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyInfo {
    pub id: i64,
    pub device_id: String,
    pub scopes: Vec<String>,
    pub enabled: bool,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
    /// Whether requests with this key must be signed (see [`crate::signing`]).
    pub signed: bool,
    /// The HMAC secret; never serialized or printed after `add`.
    #[serde(skip)]
    pub signing_secret: Option<String>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Makes a key for `device_id`; returns its record and the key itself (shown once). With
/// `sign`, the record's `signing_secret` holds the HMAC secret to give the device (shown once).
pub fn add(
    conn: &Connection,
    device_id: &str,
    scopes: &[String],
    sign: bool,
) -> Result<(KeyInfo, String), KeyError> {
    let key = generate_api_key();
    let secret = sign.then(generate_api_key);
    let info = insert(conn, device_id, scopes, &key, secret)?;
    Ok((info, key))
}

/// Stores a key the operator chose (the first-boot settings file's `[[devices]]`), unsigned.
/// Storing the same key again for the same device changes nothing.
pub fn add_given(
    conn: &Connection,
    device_id: &str,
    scopes: &[String],
    key: &str,
) -> Result<KeyInfo, KeyError> {
    let existing = conn
        .query_row(
            &format!("{SELECT} WHERE key_sha256 = ?1"),
            params![api_key_digest(key)],
            row,
        )
        .optional()?;
    match existing {
        Some(info) if info.device_id == device_id => Ok(info),
        Some(_) => Err(KeyError::KeyInUse),
        None => insert(conn, device_id, scopes, key, None),
    }
}

fn insert(
    conn: &Connection,
    device_id: &str,
    scopes: &[String],
    key: &str,
    secret: Option<String>,
) -> Result<KeyInfo, KeyError> {
    genba_firmware_core::telemetry::validate_device_id(device_id)
        .map_err(|_| KeyError::BadDevice(device_id.to_owned()))?;
    let scopes: Vec<String> = if scopes.is_empty() {
        vec![SCOPE_TELEMETRY_WRITE.to_owned()]
    } else {
        scopes.to_vec()
    };
    if let Some(bad) = scopes.iter().find(|s| !KNOWN_SCOPES.contains(&s.as_str())) {
        return Err(KeyError::BadScope(bad.clone()));
    }
    conn.execute(
        "INSERT INTO api_keys (device_id, key_sha256, scopes, enabled, created_at, signing_secret)
         VALUES (?1, ?2, ?3, 1, ?4, ?5)",
        params![
            device_id,
            api_key_digest(key),
            scopes.join(" "),
            now_ms(),
            secret
        ],
    )?;
    get(conn, conn.last_insert_rowid())
}

const SELECT: &str =
    "SELECT id, device_id, scopes, enabled, created_at, last_used_at, signing_secret FROM api_keys";

fn row(r: &rusqlite::Row) -> rusqlite::Result<KeyInfo> {
    let scopes: String = r.get(2)?;
    Ok(KeyInfo {
        id: r.get(0)?,
        device_id: r.get(1)?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        enabled: r.get(3)?,
        created_at_ms: r.get(4)?,
        last_used_at_ms: r.get(5)?,
        signing_secret: r.get(6)?,
        signed: r.get::<_, Option<String>>(6)?.is_some(),
    })
}

pub fn get(conn: &Connection, id: i64) -> Result<KeyInfo, KeyError> {
    conn.query_row(&format!("{SELECT} WHERE id = ?1"), params![id], row)
        .optional()?
        .ok_or(KeyError::NoSuchKey(id))
}

pub fn list(conn: &Connection) -> Result<Vec<KeyInfo>, KeyError> {
    let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY id"))?;
    let rows = stmt.query_map([], row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Revokes (false) or re-enables (true) a key.
pub fn set_enabled(conn: &Connection, id: i64, enabled: bool) -> Result<KeyInfo, KeyError> {
    let n = conn.execute(
        "UPDATE api_keys SET enabled = ?2 WHERE id = ?1",
        params![id, enabled],
    )?;
    if n == 0 {
        return Err(KeyError::NoSuchKey(id));
    }
    get(conn, id)
}

/// Checks a presented key for `scope`: Unknown/Revoked (401) or MissingScope (403).
pub fn authorize(conn: &Connection, key: &str, scope: &str) -> Result<KeyInfo, KeyError> {
    let info = conn
        .query_row(
            &format!("{SELECT} WHERE key_sha256 = ?1"),
            params![api_key_digest(key)],
            row,
        )
        .optional()?
        .ok_or(KeyError::Unknown)?;
    if !info.enabled {
        return Err(KeyError::Revoked);
    }
    if !info.scopes.iter().any(|s| s == scope) {
        return Err(KeyError::MissingScope(scope.to_owned()));
    }
    let now = now_ms();
    if info
        .last_used_at_ms
        .is_none_or(|t| now - t >= LAST_USED_EVERY_MS)
    {
        // Best effort: a busy database must not turn a valid key into an error.
        let _ = conn.execute(
            "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
            params![info.id, now],
        );
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_hashed_and_revocation_and_scopes_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let conn = genba_store::open(&dir.path().join("k.sqlite3")).unwrap();
        let (a, key_a) = add(&conn, "fridge-1", &[], false).unwrap();
        let (_, key_b) = add(&conn, "fridge-2", &[], true).unwrap();
        let (_, key_r) = add(&conn, "dashboard", &[SCOPE_TELEMETRY_READ.into()], false).unwrap();
        let stored: String = conn
            .query_row("SELECT group_concat(key_sha256) FROM api_keys", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(!stored.contains(&key_a), "the key itself is never stored");

        assert_eq!(
            authorize(&conn, &key_a, SCOPE_TELEMETRY_WRITE)
                .unwrap()
                .device_id,
            "fridge-1"
        );
        assert!(matches!(
            authorize(&conn, "nope", SCOPE_TELEMETRY_WRITE),
            Err(KeyError::Unknown)
        ));
        assert!(matches!(
            authorize(&conn, &key_r, SCOPE_TELEMETRY_WRITE),
            Err(KeyError::MissingScope(_))
        ));
        set_enabled(&conn, a.id, false).unwrap();
        assert!(matches!(
            authorize(&conn, &key_a, SCOPE_TELEMETRY_WRITE),
            Err(KeyError::Revoked)
        ));
        assert!(
            authorize(&conn, &key_b, SCOPE_TELEMETRY_WRITE).is_ok(),
            "other devices unaffected"
        );
        set_enabled(&conn, a.id, true).unwrap();
        assert!(authorize(&conn, &key_a, SCOPE_TELEMETRY_WRITE).is_ok());
        assert!(list(&conn).unwrap()[0].last_used_at_ms.is_some());
        assert!(matches!(
            add(&conn, "x", &["admin".into()], false),
            Err(KeyError::BadScope(_))
        ));
        assert!(matches!(
            set_enabled(&conn, 99, false),
            Err(KeyError::NoSuchKey(99))
        ));
    }
}
