//! Schema review transitions and the validation of an approval's column actions (cloud.md §5).
//!
//! Design: a review is a small state machine, `queued → in_review → approved | rejected`
//! (registry reviews may also end `abandoned`), guarded by `action_version`, which bumps on
//! every transition so two operators acting on the same version cannot both win. Approval
//! requires a claim first (the claimer is who decided); rejection is also allowed straight from
//! `queued` so an obviously wrong schema does not need a claim to be turned away.
//!
//! [`plan_approval`] turns the operator's column actions into what the store executes in one
//! transaction: the mirror table (created or widened), the data points to map or create, and
//! whether the lineage may become active.

use std::collections::{BTreeMap, BTreeSet};

use edge_protocol::fingerprint::SchemaColumns;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::mirror::{MirrorColumn, MirrorTable, MirrorType};
use crate::naming::{
    fit_identifier, mirror_column_names, mirror_table_name, MAX_IDENTIFIER_BYTES, PLATFORM_COLUMNS,
};

/// The states of a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    Queued,
    InReview,
    Approved,
    Rejected,
    Abandoned,
}

impl ReviewState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReviewState::Queued => "queued",
            ReviewState::InReview => "in_review",
            ReviewState::Approved => "approved",
            ReviewState::Rejected => "rejected",
            ReviewState::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<ReviewState> {
        [
            ReviewState::Queued,
            ReviewState::InReview,
            ReviewState::Approved,
            ReviewState::Rejected,
            ReviewState::Abandoned,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// What an operator does to a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewAction {
    Claim,
    Approve,
    Reject,
    /// Registry reviews only.
    Abandon,
}

/// Why a transition is refused (the API answers 409 with [`TransitionError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("action_version {given} is stale: the review is at {current}")]
    StaleVersion { given: i32, current: i32 },
    #[error("cannot {action} a review that is {state}")]
    WrongState {
        action: &'static str,
        state: &'static str,
    },
}

impl TransitionError {
    pub fn code(&self) -> &'static str {
        match self {
            TransitionError::StaleVersion { .. } => "stale_action_version",
            TransitionError::WrongState { .. } => "invalid_review_state",
        }
    }
}

/// The next state of a review, or why not. `given_version` is the client's `action_version`
/// (claim may omit it: claiming is only possible from `queued` anyway).
pub fn transition(
    state: ReviewState,
    current_version: i32,
    action: ReviewAction,
    given_version: Option<i32>,
) -> Result<ReviewState, TransitionError> {
    if let Some(given) = given_version {
        if given != current_version {
            return Err(TransitionError::StaleVersion {
                given,
                current: current_version,
            });
        }
    }
    let next = match (action, state) {
        (ReviewAction::Claim, ReviewState::Queued) => ReviewState::InReview,
        (ReviewAction::Approve, ReviewState::InReview) => ReviewState::Approved,
        (
            ReviewAction::Reject | ReviewAction::Abandon,
            ReviewState::Queued | ReviewState::InReview,
        ) => {
            if action == ReviewAction::Reject {
                ReviewState::Rejected
            } else {
                ReviewState::Abandoned
            }
        }
        (a, s) => {
            return Err(TransitionError::WrongState {
                action: match a {
                    ReviewAction::Claim => "claim",
                    ReviewAction::Approve => "approve",
                    ReviewAction::Reject => "reject",
                    ReviewAction::Abandon => "abandon",
                },
                state: s.as_str(),
            })
        }
    };
    Ok(next)
}

/// The column actions of cloud.md §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnActionKind {
    Mirror,
    Map,
    Ignore,
    Defer,
    AutoCreateAndMap,
}

impl ColumnActionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ColumnActionKind::Mirror => "mirror",
            ColumnActionKind::Map => "map",
            ColumnActionKind::Ignore => "ignore",
            ColumnActionKind::Defer => "defer",
            ColumnActionKind::AutoCreateAndMap => "auto_create_and_map",
        }
    }
}

/// One column action as the approve request carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnAction {
    pub source_column_name: String,
    pub action: ColumnActionKind,
    #[serde(default)]
    pub mirror_column_name: Option<String>,
    #[serde(default)]
    pub mirror_table_name: Option<String>,
    #[serde(default)]
    pub device_data_point_id: Option<Uuid>,
}

/// The policy switches approval reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApprovalPolicy {
    pub allow_auto_create_device_data_points: bool,
}

/// Why a set of column actions cannot be approved (the API answers 400 with the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("column {0:?} is not in the reviewed schema")]
    UnknownColumn(String),
    #[error("column {0:?} has more than one action")]
    DuplicateColumn(String),
    #[error("column {0:?} has no action: every column of the schema needs one")]
    MissingColumn(String),
    #[error("primary-key column {0:?} must be mirrored")]
    PkNotMirrored(String),
    #[error("column {0:?}: `map` needs device_data_point_id")]
    MapWithoutDataPoint(String),
    #[error("column {0:?}: auto_create_and_map needs policy allow_auto_create_device_data_points")]
    AutoCreateNotAllowed(String),
    #[error("column {column:?}: mirror_column_name {name:?} is invalid: {why}")]
    BadMirrorColumnName {
        column: String,
        name: String,
        why: &'static str,
    },
    #[error("mirror_table_name {name:?} is invalid: {why}")]
    BadMirrorTableName { name: String, why: &'static str },
    #[error("column {0:?}: {1} is only valid for `mirror`")]
    FieldNotAllowed(String, &'static str),
    #[error("telemetry lineages have no mirror table: column {0:?} cannot be mirrored")]
    MirrorOnTelemetry(String),
}

impl ApprovalError {
    pub fn code(&self) -> &'static str {
        match self {
            ApprovalError::AutoCreateNotAllowed(_) => "auto_create_not_allowed",
            ApprovalError::PkNotMirrored(_) => "pk_column_not_mirrored",
            _ => "invalid_column_actions",
        }
    }
}

/// A column that becomes telemetry values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedColumn {
    pub source_column_name: String,
    /// `None` for `auto_create_and_map`: the store creates `{table}.{column}`.
    pub device_data_point_id: Option<Uuid>,
}

/// What the store executes for an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPlan {
    /// The mirror table with every mirrored column (None when nothing is mirrored).
    pub mirror: Option<MirrorTable>,
    pub mapped: Vec<MappedColumn>,
    pub ignored: Vec<String>,
    pub deferred: Vec<String>,
    /// Deferred columns that are NOT NULL in the source: they keep the lineage paused, since a
    /// projection without them would not be a faithful copy of any source row.
    pub blocking_deferred: Vec<String>,
}

impl ApprovalPlan {
    /// Whether the lineage may become active.
    pub fn activates(&self) -> bool {
        self.blocking_deferred.is_empty()
    }
}

/// Where an approval's mirror lives.
#[derive(Debug, Clone, Copy)]
pub struct ApprovalTarget<'a> {
    pub device_id: Uuid,
    pub source_table: &'a str,
    /// `telemetry` lineages have no mirror table.
    pub telemetry: bool,
    /// The lineage's mirror table from an earlier approval: reused (widened), never renamed.
    pub existing_mirror: Option<&'a str>,
    /// The name a first approval without `mirror_table_name` uses: the first candidate
    /// ([`crate::naming::mirror_table_candidate`]) no other lineage or coalesced mirror owns,
    /// chosen by the store. `None` = the first candidate.
    pub default_mirror: Option<&'a str>,
}

/// The lineage's approved schema after approving a review of `approving`: normally that
/// schema; but when the device is already on another approved schema (`approved` equals
/// `current`, the schema of its last batch), approving an older review binds that schema's
/// backlog and leaves the approved schema where the device is. Two reviews of one lineage can be
/// queued at once (an ADD COLUMN before the first review is decided) and decided in any order;
/// moving the approved schema back would diff the next change against a schema the device left
/// and hide the newer columns' bindings from the lineage views.
pub fn approved_schema_after<'a>(
    approved: Option<&'a str>,
    current: Option<&str>,
    approving: &'a str,
) -> &'a str {
    match approved {
        Some(a) if Some(a) == current && Some(approving) != current => a,
        _ => approving,
    }
}

/// Validates the column actions against the reviewed schema and the policy (module docs).
pub fn plan_approval(
    target: ApprovalTarget<'_>,
    schema: &SchemaColumns,
    actions: &[ColumnAction],
    policy: ApprovalPolicy,
) -> Result<ApprovalPlan, ApprovalError> {
    let columns: BTreeMap<&str, &edge_protocol::fingerprint::ColumnFingerprint> = schema
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    let mut by_column: BTreeMap<&str, &ColumnAction> = BTreeMap::new();
    for a in actions {
        if !columns.contains_key(a.source_column_name.as_str()) {
            return Err(ApprovalError::UnknownColumn(a.source_column_name.clone()));
        }
        if by_column.insert(a.source_column_name.as_str(), a).is_some() {
            return Err(ApprovalError::DuplicateColumn(a.source_column_name.clone()));
        }
        if a.action != ColumnActionKind::Mirror {
            if a.mirror_column_name.is_some() {
                return Err(ApprovalError::FieldNotAllowed(
                    a.source_column_name.clone(),
                    "mirror_column_name",
                ));
            }
            if a.mirror_table_name.is_some() {
                return Err(ApprovalError::FieldNotAllowed(
                    a.source_column_name.clone(),
                    "mirror_table_name",
                ));
            }
        }
    }
    if let Some(missing) = columns.keys().find(|c| !by_column.contains_key(*c)) {
        return Err(ApprovalError::MissingColumn((*missing).to_owned()));
    }

    let mut plan = ApprovalPlan {
        mirror: None,
        mapped: Vec::new(),
        ignored: Vec::new(),
        deferred: Vec::new(),
        blocking_deferred: Vec::new(),
    };
    let mut mirrored = Vec::new();
    let mut table_override: Option<&str> = None;
    for (name, action) in &by_column {
        let col = columns[name];
        if col.pk_ordinal > 0 && action.action != ColumnActionKind::Mirror && !target.telemetry {
            return Err(ApprovalError::PkNotMirrored((*name).to_owned()));
        }
        match action.action {
            ColumnActionKind::Mirror => {
                if target.telemetry {
                    return Err(ApprovalError::MirrorOnTelemetry((*name).to_owned()));
                }
                if let Some(t) = action.mirror_table_name.as_deref() {
                    if table_override.is_some_and(|o| o != t) {
                        return Err(ApprovalError::BadMirrorTableName {
                            name: t.to_owned(),
                            why: "columns name different mirror tables",
                        });
                    }
                    table_override = Some(t);
                }
                mirrored.push((col, action.mirror_column_name.as_deref()));
            }
            ColumnActionKind::Map => {
                let Some(dp) = action.device_data_point_id else {
                    return Err(ApprovalError::MapWithoutDataPoint((*name).to_owned()));
                };
                plan.mapped.push(MappedColumn {
                    source_column_name: (*name).to_owned(),
                    device_data_point_id: Some(dp),
                });
            }
            ColumnActionKind::AutoCreateAndMap => {
                if !policy.allow_auto_create_device_data_points {
                    return Err(ApprovalError::AutoCreateNotAllowed((*name).to_owned()));
                }
                plan.mapped.push(MappedColumn {
                    source_column_name: (*name).to_owned(),
                    device_data_point_id: None,
                });
            }
            ColumnActionKind::Ignore => plan.ignored.push((*name).to_owned()),
            ColumnActionKind::Defer => {
                plan.deferred.push((*name).to_owned());
                if col.not_null {
                    plan.blocking_deferred.push((*name).to_owned());
                }
            }
        }
    }
    if mirrored.is_empty() {
        return Ok(plan);
    }
    let table = mirror_table(target, table_override)?;
    // Default names come from the same rule as the dev path, so an unrenamed approval yields
    // the table the dev path would have built.
    let defaults = mirror_column_names(mirrored.iter().map(|(c, _)| c.name.as_str()));
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::with_capacity(mirrored.len());
    for ((col, rename), default) in mirrored.iter().zip(defaults) {
        let name = match rename {
            None => default,
            Some(r) => {
                validate_column_name(&col.name, r)?;
                (*r).to_owned()
            }
        };
        if !taken.insert(name.clone()) {
            return Err(ApprovalError::BadMirrorColumnName {
                column: col.name.clone(),
                name,
                why: "another mirrored column already has this name",
            });
        }
        out.push(MirrorColumn {
            source_name: col.name.clone(),
            name,
            ty: MirrorType::from_affinity(col.decl_type_affinity),
            pk_ordinal: col.pk_ordinal,
        });
    }
    plan.mirror = Some(MirrorTable {
        name: table,
        columns: out,
    });
    Ok(plan)
}

fn mirror_table(
    target: ApprovalTarget<'_>,
    requested: Option<&str>,
) -> Result<String, ApprovalError> {
    match (target.existing_mirror, requested) {
        (Some(existing), Some(r)) if existing != r => Err(ApprovalError::BadMirrorTableName {
            name: r.to_owned(),
            why: "the lineage already writes to another mirror table",
        }),
        (Some(existing), _) => Ok(existing.to_owned()),
        (None, Some(r)) => {
            // The prefix keeps an operator's rename from ever pointing the DDL at one of the
            // platform's own tables (edge_devices, …): quoting alone would not prevent that.
            if !r.starts_with("edge_mirror_") || r.len() <= "edge_mirror_".len() {
                return Err(ApprovalError::BadMirrorTableName {
                    name: r.to_owned(),
                    why: "must start with edge_mirror_",
                });
            }
            if fit_identifier(r) != r {
                return Err(ApprovalError::BadMirrorTableName {
                    name: r.to_owned(),
                    why: "longer than 63 bytes or contains NUL",
                });
            }
            Ok(r.to_owned())
        }
        (None, None) => Ok(target.default_mirror.map_or_else(
            || mirror_table_name(&target.device_id, target.source_table),
            str::to_owned,
        )),
    }
}

fn validate_column_name(column: &str, name: &str) -> Result<(), ApprovalError> {
    let bad = |why| ApprovalError::BadMirrorColumnName {
        column: column.to_owned(),
        name: name.to_owned(),
        why,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_IDENTIFIER_BYTES || name.contains('\0') {
        return Err(bad("longer than 63 bytes or contains NUL"));
    }
    if PLATFORM_COLUMNS.contains(&name) {
        return Err(bad("is a platform column"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use edge_protocol::fingerprint::ColumnFingerprint;

    #[test]
    fn approving_an_older_schema_keeps_the_approved_schema_the_device_is_on() {
        // First approval; in order; newest first then the older one; the device went back.
        assert_eq!(approved_schema_after(None, Some("b"), "a"), "a");
        assert_eq!(approved_schema_after(Some("a"), Some("b"), "b"), "b");
        assert_eq!(approved_schema_after(Some("b"), Some("b"), "a"), "b");
        assert_eq!(approved_schema_after(Some("b"), Some("a"), "a"), "a");
        // Neither is where the device is: the latest decision wins.
        assert_eq!(approved_schema_after(Some("a"), Some("c"), "b"), "b");
    }

    /// `device_state` with a NOT NULL `mode`, so deferring `mode` blocks activation.
    fn schema_with_required_mode() -> SchemaColumns {
        SchemaColumns::new(
            "device_state",
            vec![
                ColumnFingerprint::from_table_info("id", "INTEGER", 1, 1),
                ColumnFingerprint::from_table_info("mode", "TEXT", 1, 0),
                ColumnFingerprint::from_table_info("setpoint", "REAL", 0, 0),
            ],
        )
    }

    fn act(col: &str, kind: ColumnActionKind) -> ColumnAction {
        ColumnAction {
            source_column_name: col.into(),
            action: kind,
            mirror_column_name: None,
            mirror_table_name: None,
            device_data_point_id: None,
        }
    }

    fn target() -> ApprovalTarget<'static> {
        ApprovalTarget {
            device_id: Uuid::nil(),
            source_table: "device_state",
            telemetry: false,
            existing_mirror: None,
            default_mirror: None,
        }
    }

    use ColumnActionKind::*;

    /// Approves every column of [`schema_with_required_mode`] as mirrored, under the default
    /// policy.
    fn mirror_all(target: ApprovalTarget<'_>) -> ApprovalPlan {
        plan_approval(
            target,
            &schema_with_required_mode(),
            &[
                act("id", Mirror),
                act("mode", Mirror),
                act("setpoint", Mirror),
            ],
            ApprovalPolicy::default(),
        )
        .unwrap()
    }

    #[test]
    fn transitions_follow_the_state_machine() {
        use ReviewAction as A;
        use ReviewState as S;
        assert_eq!(transition(S::Queued, 1, A::Claim, None), Ok(S::InReview));
        assert_eq!(
            transition(S::InReview, 2, A::Approve, Some(2)),
            Ok(S::Approved)
        );
        assert_eq!(
            transition(S::Queued, 1, A::Reject, Some(1)),
            Ok(S::Rejected)
        );
        assert_eq!(
            transition(S::Queued, 1, A::Approve, Some(1))
                .unwrap_err()
                .code(),
            "invalid_review_state"
        );
        assert_eq!(
            transition(S::InReview, 3, A::Approve, Some(2))
                .unwrap_err()
                .code(),
            "stale_action_version"
        );
        assert!(transition(S::Approved, 3, A::Claim, None).is_err());
        assert!(transition(S::Rejected, 3, A::Reject, Some(3)).is_err());
    }

    #[test]
    fn mirror_all_builds_the_dev_path_table() {
        let plan = mirror_all(target());
        assert!(plan.activates());
        assert_eq!(
            plan.mirror.unwrap(),
            MirrorTable::for_schema(&Uuid::nil(), &schema_with_required_mode())
        );
    }

    #[test]
    fn rename_ignore_and_blocking_defer() {
        let mut sp = act("setpoint", Mirror);
        sp.mirror_column_name = Some("target_temp".into());
        let plan = plan_approval(
            target(),
            &schema_with_required_mode(),
            &[act("id", Mirror), act("mode", Defer), sp],
            ApprovalPolicy::default(),
        )
        .unwrap();
        let m = plan.mirror.as_ref().unwrap();
        assert_eq!(m.columns[1].name, "target_temp");
        assert_eq!(plan.blocking_deferred, ["mode"]);
        assert!(!plan.activates());

        let plan = plan_approval(
            target(),
            &schema_with_required_mode(),
            &[
                act("id", Mirror),
                act("mode", Ignore),
                act("setpoint", Defer),
            ],
            ApprovalPolicy::default(),
        )
        .unwrap();
        assert!(plan.activates());
        assert_eq!(plan.ignored, ["mode"]);
    }

    #[test]
    fn refusals_are_named() {
        let p = ApprovalPolicy::default();
        let err = |actions: &[ColumnAction]| {
            plan_approval(target(), &schema_with_required_mode(), actions, p)
        };
        assert_eq!(
            err(&[
                act("id", Ignore),
                act("mode", Mirror),
                act("setpoint", Mirror)
            ]),
            Err(ApprovalError::PkNotMirrored("id".into()))
        );
        assert_eq!(
            err(&[act("id", Mirror), act("mode", Mirror)]),
            Err(ApprovalError::MissingColumn("setpoint".into()))
        );
        assert!(matches!(
            err(&[act("id", Mirror), act("nope", Mirror)]),
            Err(ApprovalError::UnknownColumn(_))
        ));
        assert!(matches!(
            err(&[act("id", Mirror), act("id", Mirror)]),
            Err(ApprovalError::DuplicateColumn(_))
        ));
        assert!(matches!(
            err(&[act("id", Mirror), act("mode", Map), act("setpoint", Mirror)]),
            Err(ApprovalError::MapWithoutDataPoint(_))
        ));
        let e = err(&[
            act("id", Mirror),
            act("mode", AutoCreateAndMap),
            act("setpoint", Mirror),
        ])
        .unwrap_err();
        assert_eq!(e.code(), "auto_create_not_allowed");
        let mut bad = act("mode", Mirror);
        bad.mirror_column_name = Some("_edge_deleted".into());
        assert!(matches!(
            err(&[act("id", Mirror), bad, act("setpoint", Mirror)]),
            Err(ApprovalError::BadMirrorColumnName { .. })
        ));
        let mut bad = act("id", Mirror);
        bad.mirror_table_name = Some("edge_devices".into());
        assert!(matches!(
            err(&[bad, act("mode", Mirror), act("setpoint", Mirror)]),
            Err(ApprovalError::BadMirrorTableName { .. })
        ));
    }

    #[test]
    fn auto_create_with_policy_maps() {
        let plan = plan_approval(
            target(),
            &schema_with_required_mode(),
            &[
                act("id", Mirror),
                act("mode", Ignore),
                act("setpoint", AutoCreateAndMap),
            ],
            ApprovalPolicy {
                allow_auto_create_device_data_points: true,
            },
        )
        .unwrap();
        assert_eq!(plan.mapped.len(), 1);
        assert_eq!(plan.mapped[0].device_data_point_id, None);
    }

    #[test]
    fn existing_mirror_is_kept() {
        let t = ApprovalTarget {
            existing_mirror: Some("edge_mirror_x"),
            ..target()
        };
        let plan = mirror_all(t);
        assert_eq!(plan.mirror.unwrap().name, "edge_mirror_x");
    }
}
