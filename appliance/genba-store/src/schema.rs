//! Schema migrations, numbered by `PRAGMA user_version`.

use rusqlite::Connection;

pub(crate) enum MigrateError {
    Sqlite(rusqlite::Error),
    TooNew { found: i64, supported: i64 },
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sqlite(e)
    }
}

/// Each entry moves the schema from version i to i + 1.
const MIGRATIONS: &[&str] = &[
    // 1: journal, sink cursors, parked messages.
    "CREATE TABLE journal (
        id          INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused, so cursors stay valid after pruning
        received_at INTEGER NOT NULL,                  -- unix ms
        source      TEXT    NOT NULL,                  -- 'http', 'mqtt:<client id>'
        topic       TEXT    NOT NULL,
        payload     BLOB    NOT NULL,
        qos         INTEGER NOT NULL,
        retain      INTEGER NOT NULL,
        mqtt_pid    INTEGER                            -- packet id of a QoS 1/2 publish, to drop DUP resends
     );
     CREATE INDEX journal_received ON journal(received_at);
     CREATE INDEX journal_resend ON journal(source, mqtt_pid) WHERE mqtt_pid IS NOT NULL;
     CREATE TABLE sinks (
        name          TEXT PRIMARY KEY,
        cursor        INTEGER NOT NULL,                -- last journal id this sink has passed
        delivered     INTEGER NOT NULL DEFAULT 0,
        parked        INTEGER NOT NULL DEFAULT 0,
        failures      INTEGER NOT NULL DEFAULT 0,      -- consecutive failed attempts
        last_ok_at    INTEGER,
        last_error    TEXT,
        last_error_at INTEGER,
        retry_at      INTEGER
     );
     CREATE TABLE parked (
        sink       TEXT    NOT NULL,
        journal_id INTEGER NOT NULL,
        topic      TEXT    NOT NULL,
        reason     TEXT    NOT NULL,
        parked_at  INTEGER NOT NULL,
        PRIMARY KEY (sink, journal_id)
     );",
    // 2: HACCP temperature readings (unique per device, device time and probe) and device API keys.
    "CREATE TABLE readings (
        id           INTEGER PRIMARY KEY AUTOINCREMENT, -- consumers (Exment) keep cursors on it
        device_id    TEXT    NOT NULL,
        recorded_at  TEXT    NOT NULL,                  -- as the device sent it ('' when unsynced)
        ts_device    INTEGER NOT NULL,                  -- device time, unix ms
        sensor_hw_id TEXT    NOT NULL,
        raw_celsius  REAL    NOT NULL,
        offset_c     REAL    NOT NULL,
        celsius      REAL    NOT NULL,
        rssi         INTEGER NOT NULL,
        source       TEXT    NOT NULL,                  -- 'http:<address>' or 'mqtt:<client id>'
        received_at  INTEGER NOT NULL,                  -- unix ms
        UNIQUE (device_id, ts_device, sensor_hw_id)
     );
     CREATE INDEX readings_device_time ON readings(device_id, ts_device);
     CREATE TABLE api_keys (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id    TEXT    NOT NULL,                  -- owner
        key_sha256   TEXT    NOT NULL UNIQUE,           -- hex SHA-256 of the key; the key itself is never stored
        scopes       TEXT    NOT NULL,                  -- space separated, e.g. 'telemetry:write'
        enabled      INTEGER NOT NULL DEFAULT 1,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER
     );",
    // 3: optional request signing per key (HMAC-SHA256 of timestamp and body).
    "ALTER TABLE api_keys ADD COLUMN signing_secret TEXT; -- NULL: this key's requests are not signed",
];

pub(crate) fn migrate(conn: &Connection) -> Result<(), MigrateError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(MigrateError::TooNew {
            found: version,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        // IMMEDIATE takes the write lock first, so two roles starting together migrate once.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let step = (|| {
            let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if now <= i as i64 {
                conn.execute_batch(sql)?;
                conn.pragma_update(None, "user_version", (i + 1) as i64)?;
            }
            conn.execute_batch("COMMIT")
        })();
        if let Err(e) = step {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
    }
    Ok(())
}
