//! Classification of a batch's schema against a lineage's approved schema (cloud.md §3).
//!
//! [`classify`] is pure: (approved schema, whether the new hash is bound, new columns, policy)
//! → class, readable diff and what intake must do. The review's dry-run endpoint calls the
//! same function.

use std::collections::BTreeMap;
use std::fmt;

use edge_protocol::fingerprint::{Affinity, ColumnFingerprint, SchemaColumns};
use serde::{Deserialize, Serialize};

/// The classes of cloud.md §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaClass {
    CompatibleMapped,
    CompatibleAdditive,
    Ambiguous,
    Breaking,
    Unknown,
}

impl SchemaClass {
    /// The spelling stored in `edge_schema_versions.classification`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SchemaClass::CompatibleMapped => "compatible_mapped",
            SchemaClass::CompatibleAdditive => "compatible_additive",
            SchemaClass::Ambiguous => "ambiguous",
            SchemaClass::Breaking => "breaking",
            SchemaClass::Unknown => "unknown",
        }
    }
}

impl fmt::Display for SchemaClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A column whose affinity changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retyped {
    pub name: String,
    pub from: Affinity,
    pub to: Affinity,
}

/// A column whose primary-key position changed (0 = not in the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkChanged {
    pub name: String,
    pub from: i64,
    pub to: i64,
}

/// What changed between the approved schema and the new one; what a reviewer reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaDiff {
    pub added: Vec<ColumnFingerprint>,
    pub removed: Vec<ColumnFingerprint>,
    pub retyped: Vec<Retyped>,
    pub pk_changed: Vec<PkChanged>,
    /// Columns whose NOT NULL flag changed (harmless for mirrors, whose business columns are
    /// nullable, but still a new hash that someone must look at).
    pub nullability_changed: Vec<String>,
}

impl SchemaDiff {
    /// Column-by-column comparison; both sides are sorted by name already.
    pub fn between(approved: &SchemaColumns, new: &SchemaColumns) -> SchemaDiff {
        let old: BTreeMap<&str, &ColumnFingerprint> = approved
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c))
            .collect();
        let new_map: BTreeMap<&str, &ColumnFingerprint> =
            new.columns.iter().map(|c| (c.name.as_str(), c)).collect();
        let mut diff = SchemaDiff::default();
        for (name, col) in &new_map {
            match old.get(name) {
                None => diff.added.push((*col).clone()),
                Some(before) => {
                    if before.decl_type_affinity != col.decl_type_affinity {
                        diff.retyped.push(Retyped {
                            name: (*name).to_owned(),
                            from: before.decl_type_affinity,
                            to: col.decl_type_affinity,
                        });
                    }
                    if before.pk_ordinal != col.pk_ordinal {
                        diff.pk_changed.push(PkChanged {
                            name: (*name).to_owned(),
                            from: before.pk_ordinal,
                            to: col.pk_ordinal,
                        });
                    }
                    if before.not_null != col.not_null {
                        diff.nullability_changed.push((*name).to_owned());
                    }
                }
            }
        }
        for (name, col) in &old {
            if !new_map.contains_key(name) {
                diff.removed.push((*col).clone());
                if col.pk_ordinal > 0 {
                    diff.pk_changed.push(PkChanged {
                        name: (*name).to_owned(),
                        from: col.pk_ordinal,
                        to: 0,
                    });
                }
            }
        }
        for col in &diff.added {
            if col.pk_ordinal > 0 {
                diff.pk_changed.push(PkChanged {
                    name: col.name.clone(),
                    from: 0,
                    to: col.pk_ordinal,
                });
            }
        }
        diff
    }

    /// Every column of a first schema is "added".
    pub fn all_added(new: &SchemaColumns) -> SchemaDiff {
        SchemaDiff {
            added: new.columns.clone(),
            ..SchemaDiff::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.retyped.is_empty()
            && self.pk_changed.is_empty()
            && self.nullability_changed.is_empty()
    }

    /// One line per change, for logs and the review screen.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for c in &self.added {
            lines.push(format!(
                "added {} {}{}",
                c.name,
                c.decl_type_affinity,
                if c.not_null { " NOT NULL" } else { "" }
            ));
        }
        for c in &self.removed {
            lines.push(format!("removed {}", c.name));
        }
        for r in &self.retyped {
            lines.push(format!("retyped {}: {} -> {}", r.name, r.from, r.to));
        }
        for p in &self.pk_changed {
            lines.push(format!("pk changed {}: {} -> {}", p.name, p.from, p.to));
        }
        for n in &self.nullability_changed {
            lines.push(format!("nullability changed {n}"));
        }
        lines
    }
}

/// The part of the project policy classification reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassifyPolicy {
    /// `allow_additive_continue`: keep materializing the bound columns while the new ones wait
    /// for review. Production default: false.
    pub allow_additive_continue: bool,
}

/// What classification says intake must do with the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Materialize with the bindings of the batch's own hash.
    MaterializeOwnHash,
    /// Materialize the bound columns with the bindings of the approved hash, and open a review
    /// for the new columns (additive + `allow_additive_continue`).
    MaterializeApprovedAndReview,
    /// Stage the rows, open a review, pause the lineage (reason `schema_review`).
    StageAndReview,
}

/// The result of [`classify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub class: SchemaClass,
    pub diff: SchemaDiff,
    pub disposition: Disposition,
}

/// Classifies a batch's schema (cloud.md §3).
///
/// - `approved`: the lineage's approved schema, `None` before the first approval;
/// - `new_hash_bound`: bindings exist for the batch's `schema_hash`;
/// - `new`: the batch's columns, `None` when the batch did not carry them and the hash is not
///   known (then nothing can be compared: `unknown`, handled like `ambiguous`).
pub fn classify(
    approved: Option<&SchemaColumns>,
    new_hash_bound: bool,
    new: Option<&SchemaColumns>,
    policy: ClassifyPolicy,
) -> Classification {
    if new_hash_bound {
        let diff = match (approved, new) {
            (Some(a), Some(n)) => SchemaDiff::between(a, n),
            _ => SchemaDiff::default(),
        };
        return Classification {
            class: SchemaClass::CompatibleMapped,
            diff,
            disposition: Disposition::MaterializeOwnHash,
        };
    }
    let Some(new) = new else {
        return Classification {
            class: SchemaClass::Unknown,
            diff: SchemaDiff::default(),
            disposition: Disposition::StageAndReview,
        };
    };
    let Some(approved) = approved else {
        return Classification {
            class: SchemaClass::Ambiguous,
            diff: SchemaDiff::all_added(new),
            disposition: Disposition::StageAndReview,
        };
    };
    let diff = SchemaDiff::between(approved, new);
    let breaking =
        !diff.removed.is_empty() || !diff.retyped.is_empty() || !diff.pk_changed.is_empty();
    let additive = !breaking
        && !diff.added.is_empty()
        && diff.added.iter().all(|c| !c.not_null)
        && diff.nullability_changed.is_empty();
    let (class, disposition) = if breaking {
        (SchemaClass::Breaking, Disposition::StageAndReview)
    } else if additive {
        let disposition = if policy.allow_additive_continue {
            Disposition::MaterializeApprovedAndReview
        } else {
            Disposition::StageAndReview
        };
        (SchemaClass::CompatibleAdditive, disposition)
    } else {
        // New NOT NULL columns, nullability changes, or an unchanged column set whose hash is
        // nevertheless unbound: a human decides.
        (SchemaClass::Ambiguous, Disposition::StageAndReview)
    };
    Classification {
        class,
        diff,
        disposition,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn col(name: &str, ty: &str, notnull: i64, pk: i64) -> ColumnFingerprint {
        ColumnFingerprint::from_table_info(name, ty, notnull, pk)
    }

    fn base() -> SchemaColumns {
        SchemaColumns::new(
            "device_state",
            vec![
                col("id", "INTEGER", 1, 1),
                col("mode", "TEXT", 0, 0),
                col("setpoint", "REAL", 0, 0),
            ],
        )
    }

    fn with(extra: Vec<ColumnFingerprint>, drop: &[&str]) -> SchemaColumns {
        let mut cols: Vec<ColumnFingerprint> = base()
            .columns
            .into_iter()
            .filter(|c| !drop.contains(&c.name.as_str()))
            .collect();
        cols.extend(extra);
        SchemaColumns::new("device_state", cols)
    }

    #[test]
    fn bound_hash_is_compatible_mapped() {
        let c = classify(
            Some(&base()),
            true,
            Some(&base()),
            ClassifyPolicy::default(),
        );
        assert_eq!(c.class, SchemaClass::CompatibleMapped);
        assert_eq!(c.disposition, Disposition::MaterializeOwnHash);
        assert!(c.diff.is_empty());
    }

    #[test]
    fn first_schema_is_ambiguous_with_every_column_added() {
        let c = classify(None, false, Some(&base()), ClassifyPolicy::default());
        assert_eq!(c.class, SchemaClass::Ambiguous);
        assert_eq!(c.diff.added.len(), 3);
        assert_eq!(c.disposition, Disposition::StageAndReview);
    }

    #[test]
    fn missing_columns_are_unknown() {
        let c = classify(Some(&base()), false, None, ClassifyPolicy::default());
        assert_eq!(c.class, SchemaClass::Unknown);
        assert_eq!(c.disposition, Disposition::StageAndReview);
    }

    #[test]
    fn nullable_addition_is_additive_and_policy_decides() {
        let new = with(vec![col("note", "TEXT", 0, 0)], &[]);
        let c = classify(Some(&base()), false, Some(&new), ClassifyPolicy::default());
        assert_eq!(c.class, SchemaClass::CompatibleAdditive);
        assert_eq!(c.disposition, Disposition::StageAndReview);
        assert_eq!(c.diff.summary(), ["added note TEXT"]);
        let cont = ClassifyPolicy {
            allow_additive_continue: true,
        };
        let c = classify(Some(&base()), false, Some(&new), cont);
        assert_eq!(c.disposition, Disposition::MaterializeApprovedAndReview);
    }

    #[test]
    fn not_null_addition_is_ambiguous() {
        let new = with(vec![col("note", "TEXT", 1, 0)], &[]);
        let c = classify(Some(&base()), false, Some(&new), ClassifyPolicy::default());
        assert_eq!(c.class, SchemaClass::Ambiguous);
    }

    #[test]
    fn drop_retype_and_pk_change_are_breaking() {
        let dropped = with(vec![], &["mode"]);
        let c = classify(
            Some(&base()),
            false,
            Some(&dropped),
            ClassifyPolicy::default(),
        );
        assert_eq!(c.class, SchemaClass::Breaking);
        assert_eq!(c.diff.summary(), ["removed mode"]);

        let retyped = with(vec![col("mode", "INTEGER", 0, 0)], &["mode"]);
        let c = classify(
            Some(&base()),
            false,
            Some(&retyped),
            ClassifyPolicy::default(),
        );
        assert_eq!(c.class, SchemaClass::Breaking);
        assert_eq!(c.diff.summary(), ["retyped mode: TEXT -> INTEGER"]);

        let pk = with(vec![col("mode", "TEXT", 1, 2)], &["mode"]);
        let c = classify(Some(&base()), false, Some(&pk), ClassifyPolicy::default());
        assert_eq!(c.class, SchemaClass::Breaking);
        assert!(c
            .diff
            .summary()
            .contains(&"pk changed mode: 0 -> 2".to_owned()));
    }

    #[test]
    fn diff_serializes_for_the_review() {
        let new = with(vec![col("note", "TEXT", 0, 0)], &["mode"]);
        let diff = SchemaDiff::between(&base(), &new);
        let v = serde_json::to_value(&diff).unwrap();
        assert_eq!(v["added"][0]["name"], "note");
        assert_eq!(v["removed"][0]["name"], "mode");
    }
}
