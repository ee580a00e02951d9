//! REST API tokens (requirement P5): stored as SHA-256 digests (the caller hashes), each with a
//! name, scopes (`read`, `write`, `admin`) and an enabled flag. Checks read the table every
//! time, so a revocation takes effect at once in every running role.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::now_ms;

pub const SCOPE_READ: &str = "read";
pub const SCOPE_WRITE: &str = "write";
pub const SCOPE_ADMIN: &str = "admin";
pub const SCOPES: &[&str] = &[SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN];
/// `last_used_at` is written at most this often per token.
const LAST_USED_EVERY_MS: i64 = 60_000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Token {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<String>,
    pub enabled: bool,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
}

impl Token {
    /// `admin` implies `write`, which implies `read`.
    pub fn allows(&self, scope: &str) -> bool {
        let rank = |s: &str| SCOPES.iter().position(|k| *k == s);
        let need = rank(scope);
        self.scopes
            .iter()
            .any(|s| need.is_some() && rank(s) >= need)
    }
}

const SELECT: &str = "SELECT id, name, scopes, enabled, created_at, last_used_at FROM api_tokens";

fn row(r: &Row) -> rusqlite::Result<Token> {
    let scopes: String = r.get(2)?;
    Ok(Token {
        id: r.get(0)?,
        name: r.get(1)?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        enabled: r.get(3)?,
        created_at_ms: r.get(4)?,
        last_used_at_ms: r.get(5)?,
    })
}

/// Stores a token's digest; the scopes must already be checked against [`SCOPES`].
pub fn add(
    conn: &Connection,
    name: &str,
    scopes: &[String],
    digest: &str,
) -> rusqlite::Result<Token> {
    conn.execute(
        "INSERT INTO api_tokens (name, token_sha256, scopes, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![name, digest, scopes.join(" "), now_ms()],
    )?;
    let id = conn.last_insert_rowid();
    conn.query_row(&format!("{SELECT} WHERE id = ?1"), params![id], row)
}

pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Token>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY id"))?;
    let rows = stmt.query_map([], row)?;
    rows.collect()
}

/// Revokes (false) or re-enables (true) a token; `None` when there is no such token.
pub fn set_enabled(conn: &Connection, id: i64, enabled: bool) -> rusqlite::Result<Option<Token>> {
    conn.execute(
        "UPDATE api_tokens SET enabled = ?2 WHERE id = ?1",
        params![id, enabled],
    )?;
    conn.query_row(&format!("{SELECT} WHERE id = ?1"), params![id], row)
        .optional()
}

/// The token with this digest, if any (enabled or not), marking it used.
pub fn find(conn: &Connection, digest: &str) -> rusqlite::Result<Option<Token>> {
    let token = conn
        .query_row(
            &format!("{SELECT} WHERE token_sha256 = ?1"),
            params![digest],
            row,
        )
        .optional()?;
    if let Some(t) = &token {
        let now = now_ms();
        if t.enabled
            && t.last_used_at_ms
                .is_none_or(|u| now - u >= LAST_USED_EVERY_MS)
        {
            // Best effort: a busy database must not turn a valid token into an error.
            let _ = conn.execute(
                "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                params![t.id, now],
            );
        }
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_rank_admin_over_write_over_read_and_revocation_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::open(&dir.path().join("t.sqlite3")).unwrap();
        let t = add(&conn, "dash", &["write".into()], "d1").unwrap();
        assert!(t.allows("read") && t.allows("write") && !t.allows("admin"));
        assert!(!t.allows("bogus"));
        assert!(find(&conn, "nope").unwrap().is_none());
        assert!(find(&conn, "d1").unwrap().unwrap().enabled);
        set_enabled(&conn, t.id, false).unwrap();
        assert!(!find(&conn, "d1").unwrap().unwrap().enabled);
        assert!(set_enabled(&conn, 99, false).unwrap().is_none());
    }
}
