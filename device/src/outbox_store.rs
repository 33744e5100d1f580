//! The publisher's own small tables in `state.db` (next to the capture layer's): key/value facts
//! shown by `status` (last ack time) and the `issued_at` of the last control applied per table
//! (stale-control detection), plus reading one outbox payload by id so only the batch about to be
//! published is held in memory.

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use crate::state::StateError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS publisher_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS control_applied (table_name TEXT PRIMARY KEY, issued_at TEXT NOT NULL);
";

pub fn init(conn: &Connection) -> Result<(), StateError> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

pub fn payload(conn: &Connection, batch_id: Uuid) -> Result<Option<Vec<u8>>, StateError> {
    Ok(conn
        .prepare_cached("SELECT payload FROM outbox WHERE batch_id = ?1")?
        .query_row([batch_id.to_string()], |r| r.get(0))
        .optional()?)
}

pub fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), StateError> {
    conn.prepare_cached(
        "INSERT INTO publisher_meta(key, value) VALUES(?1, ?2) \
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

pub fn meta(conn: &Connection, key: &str) -> Result<Option<String>, StateError> {
    // Read-only callers (`status`) may find the table missing on a never-run agent.
    let exists: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'publisher_meta'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT value FROM publisher_meta WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn last_applied(conn: &Connection, table: &str) -> Result<Option<String>, StateError> {
    Ok(conn
        .query_row(
            "SELECT issued_at FROM control_applied WHERE table_name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn set_last_applied(conn: &Connection, table: &str, issued_at: &str) -> Result<(), StateError> {
    conn.execute(
        "INSERT INTO control_applied(table_name, issued_at) VALUES(?1, ?2) \
         ON CONFLICT(table_name) DO UPDATE SET issued_at = excluded.issued_at",
        params![table, issued_at],
    )?;
    Ok(())
}
