//! The controls' half of `state.db` (reliability.md §1): per table **and per control family**
//! ([`ControlFamily`], the one list in the protocol crate) the `issued_at` of the last control
//! applied, for stale-control detection. (Handled control ids are `state`'s
//! `handled_controls`.)
//!
//! A control's effect, its handled id and its family's `issued_at` are written inside **one**
//! state.db transaction, opened by the daemon (`daemon::controls`), before the ack goes out;
//! these functions only issue statements on the connection, so they join whatever transaction
//! is open.
//!
//! [`init`] migrates a `state.db` of an earlier release in place (idempotent): the old
//! `control_applied(table_name, issued_at)` held one `issued_at` per table for every kind (the
//! defect: a later `url_grant` made a re-sent `pause_lineage` stale). Its value is the last
//! control of any kind, so it is an upper bound for each family that existed then: it becomes
//! the `upload` family's, and the `lineage` family takes the table's `pause_issued_at` when one
//! is recorded (the last pause: a lower bound, so nothing newer is ever refused), else the old
//! value. Then the old table goes, in the same transaction.

use edge_protocol::control::{ControlFamily, DeviceUnknown};
use rusqlite::{params, OptionalExtension};

use crate::state::{StateDb, StateError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS control_family_applied (
    table_name TEXT NOT NULL,
    family TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    PRIMARY KEY (table_name, family)
);
";

/// Creates the table and migrates the per-table `control_applied` of earlier releases.
pub fn init(state: &StateDb) -> Result<(), StateError> {
    let conn = state.conn();
    conn.execute_batch(SCHEMA)?;
    let has_old: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'control_applied'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if has_old {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             INSERT OR IGNORE INTO control_family_applied(table_name, family, issued_at)
                 SELECT table_name, 'upload', issued_at FROM control_applied;
             INSERT OR IGNORE INTO control_family_applied(table_name, family, issued_at)
                 SELECT c.table_name, 'lineage', coalesce(t.pause_issued_at, c.issued_at)
                 FROM control_applied c LEFT JOIN tables t ON t.table_name = c.table_name;
             DROP TABLE control_applied;
             COMMIT;",
        )
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
    }
    Ok(())
}

/// The `issued_at` of the last control of `family` applied to `table`.
pub fn last_applied(
    state: &StateDb,
    table: &str,
    family: ControlFamily,
) -> Result<Option<String>, StateError> {
    Ok(state
        .conn()
        .prepare_cached(
            "SELECT issued_at FROM control_family_applied WHERE table_name = ?1 AND family = ?2",
        )?
        .query_row(params![table, family.as_str()], |r| r.get(0))
        .optional()?)
}

/// Records `issued_at` as the last control of `family` applied to `table`.
pub fn set_last_applied(
    state: &StateDb,
    table: &str,
    family: ControlFamily,
    issued_at: &str,
) -> Result<(), StateError> {
    state
        .conn()
        .prepare_cached(
            "INSERT INTO control_family_applied(table_name, family, issued_at) \
             VALUES(?1, ?2, ?3) ON CONFLICT(table_name, family) \
             DO UPDATE SET issued_at = excluded.issued_at",
        )?
        .execute(params![table, family.as_str(), issued_at])?;
    Ok(())
}

/// The `meta` keys of the last `device_unknown` the cloud sent (shown by `status`).
pub const DEVICE_UNKNOWN_REASON: &str = "device_unknown_reason";
pub const DEVICE_UNKNOWN_AT: &str = "device_unknown_issued_at";

/// Remembers the last `device_unknown` for `status` (the one thing it may change).
pub fn set_device_unknown(state: &StateDb, notice: &DeviceUnknown) -> Result<(), StateError> {
    state.set_meta(DEVICE_UNKNOWN_REASON, &notice.reason)?;
    state.set_meta(DEVICE_UNKNOWN_AT, &notice.issued_at)
}

/// The last `device_unknown` as `(reason, issued_at)`, if the cloud ever sent one.
pub fn device_unknown(state: &StateDb) -> Result<Option<(String, String)>, StateError> {
    Ok(
        match (
            state.meta(DEVICE_UNKNOWN_REASON)?,
            state.meta(DEVICE_UNKNOWN_AT)?,
        ) {
            (Some(reason), Some(at)) => Some((reason, at)),
            _ => None,
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn families_are_independent() {
        let s = StateDb::open_in_memory().unwrap();
        init(&s).unwrap();
        set_last_applied(&s, "t", ControlFamily::Upload, "2026-01-01T00:00:02Z").unwrap();
        assert_eq!(last_applied(&s, "t", ControlFamily::Lineage).unwrap(), None);
        assert_eq!(
            last_applied(&s, "t", ControlFamily::Upload)
                .unwrap()
                .as_deref(),
            Some("2026-01-01T00:00:02Z")
        );
        assert_eq!(last_applied(&s, "u", ControlFamily::Upload).unwrap(), None);
    }

    #[test]
    fn the_per_table_issued_at_of_an_earlier_release_is_migrated_and_again_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = StateDb::open(&path).unwrap();
            s.conn()
                .execute_batch(
                    "CREATE TABLE control_applied (table_name TEXT PRIMARY KEY, issued_at TEXT NOT NULL);
                     INSERT INTO control_applied VALUES ('t', '2026-01-01T00:00:05Z'),
                                                        ('u', '2026-01-01T00:00:07Z');",
                )
                .unwrap();
            s.set_paused("t", 3, Some("2026-01-01T00:00:01Z")).unwrap();
        }
        for _ in 0..2 {
            let s = StateDb::open(&path).unwrap();
            init(&s).unwrap();
            let get = |t: &str, f| last_applied(&s, t, f).unwrap();
            assert_eq!(
                get("t", ControlFamily::Lineage).as_deref(),
                Some("2026-01-01T00:00:01Z")
            );
            assert_eq!(
                get("t", ControlFamily::Upload).as_deref(),
                Some("2026-01-01T00:00:05Z")
            );
            assert_eq!(
                get("u", ControlFamily::Lineage).as_deref(),
                Some("2026-01-01T00:00:07Z")
            );
            assert_eq!(get("u", ControlFamily::Policy), None);
            let old: Option<i64> = s
                .conn()
                .query_row(
                    "SELECT 1 FROM sqlite_schema WHERE name = 'control_applied'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .unwrap();
            assert_eq!(old, None);
        }
    }
}
