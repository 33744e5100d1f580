//! Registry coalescing (cloud.md §9): which registry scope governs a batch, what intake does
//! with an unbound hash under it, the shared mirror's name and the consolidation statement.
//!
//! In `project`/`fleet` mode a schema hash is reviewed once per (scope, table) instead of once
//! per device: the first device announcing it opens a *registry review*; while that review is
//! open (or after it was rejected) every device of the scope sending the hash stages and waits;
//! once approved, every such device is bound to the shared mirror without a review of its own.
//! An *abandoned* registry entry hands the hash back to per-device reviews.

use std::fmt::Write as _;

use uuid::Uuid;

use crate::naming::{fit_identifier, quote_ident, uuid8};
use crate::review::{ColumnAction, ColumnActionKind};

/// Project policy `schema_coalescing_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoalescingMode {
    None,
    Project,
    Fleet,
}

impl CoalescingMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            CoalescingMode::None => "none",
            CoalescingMode::Project => "project",
            CoalescingMode::Fleet => "fleet",
        }
    }

    pub fn parse(s: &str) -> Option<CoalescingMode> {
        match s {
            "none" => Some(CoalescingMode::None),
            "project" => Some(CoalescingMode::Project),
            "fleet" => Some(CoalescingMode::Fleet),
            _ => None,
        }
    }
}

/// The kind of a registry scope (stored as `project` | `fleet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    Project,
    Fleet,
}

impl ScopeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ScopeKind::Project => "project",
            ScopeKind::Fleet => "fleet",
        }
    }

    pub fn parse(s: &str) -> Option<ScopeKind> {
        match s {
            "project" => Some(ScopeKind::Project),
            "fleet" => Some(ScopeKind::Fleet),
            _ => None,
        }
    }
}

/// A registry scope: the project or the fleet a device belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryScope {
    pub kind: ScopeKind,
    pub id: Uuid,
}

/// The scope governing a device's unbound hashes; `None` in mode `none` (per-device reviews).
pub fn registry_scope(
    mode: CoalescingMode,
    project_id: Uuid,
    fleet_id: Uuid,
) -> Option<RegistryScope> {
    match mode {
        CoalescingMode::None => None,
        CoalescingMode::Project => Some(RegistryScope {
            kind: ScopeKind::Project,
            id: project_id,
        }),
        CoalescingMode::Fleet => Some(RegistryScope {
            kind: ScopeKind::Fleet,
            id: fleet_id,
        }),
    }
}

/// The shared mirror `edge_mirror_p{project8}_{table}` / `edge_mirror_f{fleet8}_{table}`,
/// fitted to 63 bytes. `device_id` is part of every mirror's key, so devices never collide.
pub fn coalesced_mirror_name(scope: RegistryScope, source_table: &str) -> String {
    let letter = match scope.kind {
        ScopeKind::Project => 'p',
        ScopeKind::Fleet => 'f',
    };
    fit_identifier(&format!(
        "edge_mirror_{letter}{}_{source_table}",
        uuid8(&scope.id)
    ))
}

/// State of a registry entry for (scope, table, hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryStatus {
    /// Review queued or in review.
    Pending,
    Approved,
    Rejected,
    Abandoned,
}

impl RegistryStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RegistryStatus::Pending => "pending",
            RegistryStatus::Approved => "approved",
            RegistryStatus::Rejected => "rejected",
            RegistryStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<RegistryStatus> {
        match s {
            "pending" => Some(RegistryStatus::Pending),
            "approved" => Some(RegistryStatus::Approved),
            "rejected" => Some(RegistryStatus::Rejected),
            "abandoned" => Some(RegistryStatus::Abandoned),
            _ => None,
        }
    }
}

/// What intake does with a hash the lineage has no bindings for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryIntake {
    /// Mode `none`, or the registry gave the hash back (abandoned): per-device review.
    PerDevice,
    /// Bind the lineage to the approved entry's shared mirror, then route as a bound hash.
    Adopt,
    /// Open the registry entry and its review if missing; stage and pause, no per-device review.
    AwaitRegistry,
}

/// Pure routing of an unbound hash under the coalescing mode (module docs).
pub fn registry_intake(
    scope: Option<RegistryScope>,
    entry: Option<RegistryStatus>,
) -> RegistryIntake {
    match (scope, entry) {
        (None, _) | (Some(_), Some(RegistryStatus::Abandoned)) => RegistryIntake::PerDevice,
        (Some(_), Some(RegistryStatus::Approved)) => RegistryIntake::Adopt,
        (Some(_), None | Some(RegistryStatus::Pending | RegistryStatus::Rejected)) => {
            RegistryIntake::AwaitRegistry
        }
    }
}

/// Why a registry approval's column actions are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryActionError {
    /// `map`/`auto_create_and_map` target data points, which belong to one device.
    #[error(
        "column {0:?}: registry approvals support mirror, ignore and defer; map the column \
         per device instead"
    )]
    DeviceSpecific(String),
}

/// Registry approvals bind many devices at once, so only device-independent actions apply.
pub fn check_registry_actions(actions: &[ColumnAction]) -> Result<(), RegistryActionError> {
    match actions.iter().find(|a| {
        matches!(
            a.action,
            ColumnActionKind::Map | ColumnActionKind::AutoCreateAndMap
        )
    }) {
        Some(a) => Err(RegistryActionError::DeviceSpecific(
            a.source_column_name.clone(),
        )),
        None => Ok(()),
    }
}

/// The statement copying one device's rows from a per-device mirror into the shared one
/// (`$1` = device_id), with the same version guard as live writes so a newer row already in the
/// shared mirror is never overwritten by an older copy. `columns` are the business columns both
/// tables have with the same type; `pk` are the shared mirror's key columns besides device_id.
pub fn consolidate_sql(shared: &str, source: &str, columns: &[String], pk: &[String]) -> String {
    let mut cols = String::from("\"device_id\"");
    for c in columns {
        let _ = write!(cols, ", {}", quote_ident(c));
    }
    cols.push_str(
        ", \"_edge_epoch\", \"_edge_commit_seq\", \"_edge_deleted\", \"created_at\", \
         \"updated_at\"",
    );
    let mut conflict = String::from("\"device_id\"");
    for c in pk {
        let _ = write!(conflict, ", {}", quote_ident(c));
    }
    let mut sets = String::new();
    for c in columns.iter().filter(|c| !pk.contains(c)) {
        let q = quote_ident(c);
        let _ = write!(sets, "{q} = EXCLUDED.{q}, ");
    }
    sets.push_str(
        "\"_edge_epoch\" = EXCLUDED.\"_edge_epoch\", \
         \"_edge_commit_seq\" = EXCLUDED.\"_edge_commit_seq\", \
         \"_edge_deleted\" = EXCLUDED.\"_edge_deleted\", \"updated_at\" = EXCLUDED.\"updated_at\"",
    );
    format!(
        "INSERT INTO {shared} AS m ({cols}) SELECT {cols} FROM {source} WHERE \"device_id\" = $1 \
         ON CONFLICT ({conflict}) DO UPDATE SET {sets} \
         WHERE (m.\"_edge_epoch\", m.\"_edge_commit_seq\") \
         < (EXCLUDED.\"_edge_epoch\", EXCLUDED.\"_edge_commit_seq\")",
        shared = quote_ident(shared),
        source = quote_ident(source),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(kind: ScopeKind) -> RegistryScope {
        RegistryScope {
            kind,
            id: Uuid::parse_str("0193a000-0000-7000-8000-000000000001").unwrap_or_default(),
        }
    }

    #[test]
    fn scope_follows_the_mode() {
        let (p, f) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(registry_scope(CoalescingMode::None, p, f), None);
        assert_eq!(
            registry_scope(CoalescingMode::Project, p, f),
            Some(RegistryScope {
                kind: ScopeKind::Project,
                id: p
            })
        );
        assert_eq!(
            registry_scope(CoalescingMode::Fleet, p, f).map(|s| s.id),
            Some(f)
        );
        assert_eq!(CoalescingMode::parse("fleet"), Some(CoalescingMode::Fleet));
        assert_eq!(CoalescingMode::parse("devices"), None);
    }

    #[test]
    fn shared_mirror_names() {
        assert_eq!(
            coalesced_mirror_name(scope(ScopeKind::Project), "device_state"),
            "edge_mirror_p0193a000_device_state"
        );
        assert_eq!(
            coalesced_mirror_name(scope(ScopeKind::Fleet), "device_state"),
            "edge_mirror_f0193a000_device_state"
        );
        let long = coalesced_mirror_name(scope(ScopeKind::Fleet), &"x".repeat(80));
        assert_eq!(long.len(), 63);
    }

    #[test]
    fn intake_routing() {
        let s = Some(scope(ScopeKind::Project));
        use RegistryIntake as I;
        use RegistryStatus as R;
        assert_eq!(registry_intake(None, None), I::PerDevice);
        assert_eq!(registry_intake(None, Some(R::Approved)), I::PerDevice);
        assert_eq!(registry_intake(s, None), I::AwaitRegistry);
        assert_eq!(registry_intake(s, Some(R::Pending)), I::AwaitRegistry);
        assert_eq!(registry_intake(s, Some(R::Rejected)), I::AwaitRegistry);
        assert_eq!(registry_intake(s, Some(R::Approved)), I::Adopt);
        assert_eq!(registry_intake(s, Some(R::Abandoned)), I::PerDevice);
    }

    #[test]
    fn registry_actions_must_be_device_independent() {
        let a = |n: &str, k| ColumnAction {
            source_column_name: n.into(),
            action: k,
            mirror_column_name: None,
            mirror_table_name: None,
            device_data_point_id: None,
        };
        assert!(check_registry_actions(&[
            a("id", ColumnActionKind::Mirror),
            a("x", ColumnActionKind::Ignore),
            a("y", ColumnActionKind::Defer)
        ])
        .is_ok());
        assert_eq!(
            check_registry_actions(&[a("v", ColumnActionKind::Map)]),
            Err(RegistryActionError::DeviceSpecific("v".into()))
        );
    }

    #[test]
    fn consolidation_is_version_guarded_and_quoted() {
        let sql = consolidate_sql(
            "edge_mirror_p1_t",
            "edge_mirror_d\"x_t",
            &["id".into(), "mode".into()],
            &["id".into()],
        );
        assert!(
            sql.starts_with("INSERT INTO \"edge_mirror_p1_t\" AS m"),
            "{sql}"
        );
        assert!(sql.contains("FROM \"edge_mirror_d\"\"x_t\""), "{sql}");
        assert!(sql.contains("ON CONFLICT (\"device_id\", \"id\")"), "{sql}");
        assert!(sql.contains("\"mode\" = EXCLUDED.\"mode\""), "{sql}");
        assert!(!sql.contains("\"id\" = EXCLUDED.\"id\""), "{sql}");
        assert!(sql.contains("< (EXCLUDED.\"_edge_epoch\""), "{sql}");
    }
}
