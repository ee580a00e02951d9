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
    // 4: the device platform: registry, streams of any telemetry field, raw points with
    // per-minute and per-hour rollups (kept up to date as points are inserted), the JSON
    // records a device sent (ThingScale's channel), and REST API tokens.
    "CREATE TABLE devices (
        id           TEXT    PRIMARY KEY,
        channel      INTEGER NOT NULL UNIQUE,            -- ThingScale's mapped channel number
        name         TEXT    NOT NULL DEFAULT '',
        description  TEXT    NOT NULL DEFAULT '',
        location     TEXT    NOT NULL DEFAULT '',
        device_type  TEXT    NOT NULL DEFAULT '',
        tags         TEXT    NOT NULL DEFAULT '[]',      -- JSON array of strings
        enabled      INTEGER NOT NULL DEFAULT 1,
        provisioned  TEXT    NOT NULL,                   -- 'manual' or 'auto'
        created_at   INTEGER NOT NULL,                   -- unix ms
        last_seen_at INTEGER,
        last_address TEXT,
        firmware     TEXT,
        rssi         INTEGER
     );
     CREATE TABLE streams (
        id          INTEGER PRIMARY KEY,
        device_id   TEXT    NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        name        TEXT    NOT NULL,                    -- field path ('env.temp') or probe id
        kind        TEXT    NOT NULL,                    -- 'number' or 'text'
        label       TEXT    NOT NULL DEFAULT '',
        unit        TEXT    NOT NULL DEFAULT '',
        created_at  INTEGER NOT NULL,
        last_at     INTEGER,
        last_value  REAL,
        last_text   TEXT,
        UNIQUE (device_id, name)
     );
     CREATE TABLE points (
        stream_id INTEGER NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
        at        INTEGER NOT NULL,                      -- unix ms
        value     REAL,
        text      TEXT,
        PRIMARY KEY (stream_id, at)
     ) WITHOUT ROWID;
     CREATE TABLE rollups (
        stream_id INTEGER NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
        period    INTEGER NOT NULL,                      -- bucket length in ms: 60000 or 3600000
        bucket    INTEGER NOT NULL,                      -- bucket start, unix ms
        count     INTEGER NOT NULL,
        min       REAL    NOT NULL,
        max       REAL    NOT NULL,
        sum       REAL    NOT NULL,
        PRIMARY KEY (stream_id, period, bucket)
     ) WITHOUT ROWID;
     CREATE TABLE records (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT    NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        at        INTEGER NOT NULL,                      -- unix ms
        tag       TEXT,
        body      TEXT    NOT NULL                       -- the JSON object as the device sent it
     );
     CREATE INDEX records_device_time ON records(device_id, at);
     CREATE TABLE api_tokens (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        name         TEXT    NOT NULL,
        token_sha256 TEXT    NOT NULL UNIQUE,            -- the token itself is never stored
        scopes       TEXT    NOT NULL,                   -- space separated: read write admin
        enabled      INTEGER NOT NULL DEFAULT 1,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER
     );",
    // 5: rules (from genba.toml or the API), their pending state, and alarms with their
    // lifecycle (raised -> acknowledged with a corrective-action note -> cleared).
    "CREATE TABLE rules (
        name       TEXT    PRIMARY KEY,
        source     TEXT    NOT NULL,                     -- 'config' or 'api'
        spec       TEXT    NOT NULL,                     -- the rule as JSON
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE rule_state (
        rule          TEXT    NOT NULL,
        device_id     TEXT    NOT NULL,
        stream        TEXT    NOT NULL,
        pending_since INTEGER NOT NULL,                  -- the condition holds since (unix ms)
        PRIMARY KEY (rule, device_id, stream)
     ) WITHOUT ROWID;
     CREATE TABLE alarms (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        rule         TEXT    NOT NULL,
        device_id    TEXT    NOT NULL,
        stream       TEXT    NOT NULL,
        condition    TEXT    NOT NULL,
        severity     TEXT    NOT NULL,
        threshold    REAL,
        value        REAL,
        message      TEXT    NOT NULL,
        raised_at    INTEGER NOT NULL,
        escalated_at INTEGER,
        acked_at     INTEGER,
        acked_by     TEXT,
        note         TEXT,                               -- the corrective action (HACCP record)
        cleared_at   INTEGER,
        clear_value  REAL
     );
     CREATE UNIQUE INDEX alarms_one_open ON alarms(rule, device_id, stream) WHERE cleared_at IS NULL;
     CREATE INDEX alarms_raised ON alarms(raised_at);",
    // 6: the MQTT clients connected now (written by the broker, read by /v2/session).
    "CREATE TABLE mqtt_sessions (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        client_id     TEXT    NOT NULL,
        username      TEXT,
        address       TEXT    NOT NULL,
        protocol      INTEGER NOT NULL,                  -- 4 (3.1.1) or 5
        keep_alive    INTEGER NOT NULL,
        clean_start   INTEGER NOT NULL,
        connected_at  INTEGER NOT NULL,
        subscriptions TEXT    NOT NULL DEFAULT '[]'      -- JSON array of topic filters
     );",
    // 7: an operator asked for a parked message to be tried again (after adding its device).
    "ALTER TABLE parked ADD COLUMN retry INTEGER NOT NULL DEFAULT 0;",
    // 8: broker state that survives a restart (written by the broker, genba-broker/src/persist.rs).
    "CREATE TABLE mqtt_retained (
        topic         TEXT    PRIMARY KEY,
        payload       BLOB    NOT NULL,
        qos           INTEGER NOT NULL,
        props         BLOB    NOT NULL,                  -- MQTT 5 properties passed on
        expires_at    INTEGER                            -- ms since epoch; NULL never
     ) WITHOUT ROWID;
     CREATE TABLE mqtt_stored_sessions (
        client_id     TEXT    PRIMARY KEY,
        expiry        INTEGER NOT NULL,                  -- seconds; 4294967295 never
        subscriptions TEXT    NOT NULL,                  -- JSON [[filter, options], ...]
        saved_at      INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE mqtt_queue (
        client_id     TEXT    NOT NULL,
        msg_id        INTEGER NOT NULL,
        topic         TEXT    NOT NULL,
        payload       BLOB    NOT NULL,
        qos           INTEGER NOT NULL,                  -- delivery QoS
        retain        INTEGER NOT NULL,
        props         BLOB    NOT NULL,
        expires_at    INTEGER,
        subscription_ids TEXT NOT NULL,                  -- JSON array
        PRIMARY KEY (client_id, msg_id)
     ) WITHOUT ROWID;",
    // 9: the wills of connected clients: a restart ends their connections, so their wills are
    // due after it (genba-broker/src/persist.rs).
    "CREATE TABLE mqtt_wills (
        client_id     TEXT    PRIMARY KEY,
        topic         TEXT    NOT NULL,
        payload       BLOB    NOT NULL,
        qos           INTEGER NOT NULL,
        retain        INTEGER NOT NULL,
        props         BLOB    NOT NULL,
        delay         INTEGER NOT NULL,                  -- MQTT 5 Will Delay Interval, seconds
        expiry        INTEGER                            -- Message Expiry Interval, seconds
     ) WITHOUT ROWID;",
    // 10: the Exment forwarder (genba-exment). The ledger and state tables were created by
    // genba-exment itself with IF NOT EXISTS before, so they may be there already in that
    // shape; what this migration adds to them is added with ALTER/IF NOT EXISTS after.
    "CREATE TABLE IF NOT EXISTS exment_ledger (
        key        TEXT PRIMARY KEY,                    -- <device>:<probe>:<slot start UTC>
        state      TEXT NOT NULL,                       -- 'sent', 'unknown' or 'refused'
        slot_start INTEGER NOT NULL,                    -- unix ms
        device_id  TEXT NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE IF NOT EXISTS exment_state (name TEXT PRIMARY KEY, value TEXT, at INTEGER);
     -- When a create whose outcome is unknown was last sent (unix ms; NULL: no create can be
     -- in flight, e.g. after a replay): it is looked up only after the request timeout and a
     -- margin, so a late-stored request is found instead of sent twice.
     ALTER TABLE exment_ledger ADD COLUMN unknown_since INTEGER;
     CREATE INDEX IF NOT EXISTS exment_ledger_slot ON exment_ledger(slot_start);
     -- Check slots seen in the readings (read once, past the cursor exment_state
     -- 'readings_cursor') that Exment has not confirmed yet; a row goes when its record is sent.
     CREATE TABLE IF NOT EXISTS exment_slots (
        key          TEXT PRIMARY KEY,
        device_id    TEXT    NOT NULL,
        sensor_hw_id TEXT    NOT NULL,
        slot_start   INTEGER NOT NULL                   -- unix ms
     ) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS exment_slots_start ON exment_slots(slot_start);
     -- Exment requests of the last minute (unix ms), shared by every process (the forwarder,
     -- `genba exment replay`), so the per-minute budget survives restarts.
     CREATE TABLE IF NOT EXISTS exment_requests (at INTEGER NOT NULL);
     CREATE INDEX IF NOT EXISTS exment_requests_at ON exment_requests(at);",
    // 11: firmware images kept for device updates; the file is DATA_DIR/firmware/SHA256.bin.
    "CREATE TABLE firmware (
        sha256   TEXT PRIMARY KEY,                       -- of the whole file, lower-case hex
        version  TEXT    NOT NULL,                       -- from the image's app descriptor
        project  TEXT    NOT NULL,
        size     INTEGER NOT NULL,                       -- bytes
        added_at INTEGER NOT NULL                        -- unix ms
     ) WITHOUT ROWID;",
    // 12: the last firmware update asked of each device (console, CLI), to show whether the
    // device runs it since.
    "CREATE TABLE update_requests (
        device_id    TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
        version      TEXT    NOT NULL,
        sha256       TEXT    NOT NULL,
        requested_at INTEGER NOT NULL,                   -- unix ms
        requested_by TEXT    NOT NULL                    -- 'cli', 'console:USER'
     ) WITHOUT ROWID;",
    // 13: an image added as a whole-flash board image also keeps that file, for new boards
    // (DATA_DIR/firmware/SHA256-board.bin, SHA256 the app's).
    "ALTER TABLE firmware ADD COLUMN board_size INTEGER; -- bytes; NULL: only the app is kept",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A database at version 9 on which genba-exment had already created its ledger tables
    /// with its old `CREATE TABLE IF NOT EXISTS`.
    fn version_9_with_old_ledger() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..9] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 9).unwrap();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS exment_ledger (
                key        TEXT PRIMARY KEY,
                state      TEXT NOT NULL,
                slot_start INTEGER NOT NULL,
                device_id  TEXT NOT NULL,
                attempts   INTEGER NOT NULL DEFAULT 0,
                last_error TEXT,
                updated_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS exment_state (name TEXT PRIMARY KEY, value TEXT, at INTEGER);
             INSERT INTO exment_ledger (key, state, slot_start, device_id, updated_at)
                VALUES ('d:s:2026-01-01T00:00:00Z', 'sent', 0, 'd', 1);
             INSERT INTO exment_state VALUES ('last_success', '1 created', 1);",
        )
        .unwrap();
        conn
    }

    #[test]
    fn migration_10_adopts_the_exment_tables_made_by_the_old_if_not_exists_code() {
        let conn = version_9_with_old_ledger();
        if migrate(&conn).is_err() {
            panic!("migration 10 failed on a database with the old exment tables");
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let (key, unknown_since): (String, Option<i64>) = conn
            .query_row("SELECT key, unknown_since FROM exment_ledger", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(
            (key.as_str(), unknown_since),
            ("d:s:2026-01-01T00:00:00Z", None)
        );
        let noted: String = conn
            .query_row("SELECT value FROM exment_state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(noted, "1 created");
        for table in ["exment_slots", "exment_requests"] {
            let n: i64 = conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 0, "{table}");
        }
    }

    #[test]
    fn migration_10_creates_the_exment_tables_on_a_new_database() {
        let conn = Connection::open_in_memory().unwrap();
        if migrate(&conn).is_err() {
            panic!("migrations failed on a new database");
        }
        conn.execute(
            "INSERT INTO exment_ledger (key, state, slot_start, device_id, updated_at, unknown_since)
             VALUES ('k', 'unknown', 0, 'd', 1, 1)",
            [],
        )
        .unwrap();
    }
}
