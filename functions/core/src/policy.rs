//! The project's replication policy (cloud.md §3, §5, §7, §9): its fields, the production
//! defaults (the one place they are written down — the store's reads, its writes and
//! [`Caps::default`] take them from here) and the rules a policy patch must satisfy.
//!
//! The migration's column defaults (`0001_core.sql`) state the same values; a migration is
//! history and is not rewritten, so a change of default here needs a migration too.

use crate::backpressure::Caps;
use crate::coalesce::CoalescingMode;

/// Default `max_pending_rows_per_lineage`.
pub const DEFAULT_MAX_PENDING_ROWS: i64 = 100_000;
/// Default `max_pending_bytes_per_lineage` (1 GiB).
pub const DEFAULT_MAX_PENDING_BYTES: i64 = 1 << 30;
/// Default `resume_threshold_percent`.
pub const DEFAULT_RESUME_THRESHOLD_PERCENT: i32 = 80;
/// Default `circuit_breaker_failures`.
pub const DEFAULT_CIRCUIT_BREAKER_FAILURES: i32 = 5;

/// A project's policy; [`Policy::default`] is the policy of a project without a policy row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub allow_additive_continue: bool,
    pub allow_auto_create_device_data_points: bool,
    /// `max_pending_rows_per_lineage`, `max_pending_bytes_per_lineage`,
    /// `resume_threshold_percent` and `circuit_breaker_failures` (cloud.md §7).
    pub caps: Caps,
    pub schema_coalescing_mode: CoalescingMode,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_additive_continue: false,
            allow_auto_create_device_data_points: false,
            caps: Caps::default(),
            schema_coalescing_mode: CoalescingMode::None,
        }
    }
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            max_pending_rows: DEFAULT_MAX_PENDING_ROWS,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            resume_threshold_percent: DEFAULT_RESUME_THRESHOLD_PERCENT,
            breaker_failures: DEFAULT_CIRCUIT_BREAKER_FAILURES,
        }
    }
}

/// Fields a policy patch may set (`None` keeps the stored value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyPatch {
    pub allow_additive_continue: Option<bool>,
    pub allow_auto_create_device_data_points: Option<bool>,
    pub max_pending_rows_per_lineage: Option<i64>,
    pub max_pending_bytes_per_lineage: Option<i64>,
    pub resume_threshold_percent: Option<i32>,
    pub circuit_breaker_failures: Option<i32>,
    pub schema_coalescing_mode: Option<String>,
}

/// Why a policy patch is refused (the API answers 400 `invalid_policy` with the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyPatchError {
    #[error("the patch sets no field")]
    Empty,
    #[error("max_pending_rows_per_lineage must be at least 1")]
    MaxPendingRows,
    #[error("max_pending_bytes_per_lineage must be at least 1")]
    MaxPendingBytes,
    #[error("resume_threshold_percent must be between 1 and 100")]
    ResumeThreshold,
    #[error("circuit_breaker_failures must be at least 1")]
    CircuitBreakerFailures,
    #[error("schema_coalescing_mode must be none, project or fleet")]
    CoalescingMode,
}

impl PolicyPatchError {
    /// The API error code of every refusal.
    pub fn code(&self) -> &'static str {
        "invalid_policy"
    }
}

/// Checks a patch before it is stored; the first broken rule wins, in field order.
pub fn validate_patch(p: &PolicyPatch) -> Result<(), PolicyPatchError> {
    if p.allow_additive_continue.is_none()
        && p.allow_auto_create_device_data_points.is_none()
        && p.max_pending_rows_per_lineage.is_none()
        && p.max_pending_bytes_per_lineage.is_none()
        && p.resume_threshold_percent.is_none()
        && p.circuit_breaker_failures.is_none()
        && p.schema_coalescing_mode.is_none()
    {
        return Err(PolicyPatchError::Empty);
    }
    if p.max_pending_rows_per_lineage.is_some_and(|v| v < 1) {
        return Err(PolicyPatchError::MaxPendingRows);
    }
    if p.max_pending_bytes_per_lineage.is_some_and(|v| v < 1) {
        return Err(PolicyPatchError::MaxPendingBytes);
    }
    if p.resume_threshold_percent
        .is_some_and(|v| !(1..=100).contains(&v))
    {
        return Err(PolicyPatchError::ResumeThreshold);
    }
    if p.circuit_breaker_failures.is_some_and(|v| v < 1) {
        return Err(PolicyPatchError::CircuitBreakerFailures);
    }
    if let Some(m) = &p.schema_coalescing_mode {
        if CoalescingMode::parse(m).is_none() {
            return Err(PolicyPatchError::CoalescingMode);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_production_defaults() {
        let p = Policy::default();
        assert_eq!(p.caps.max_pending_rows, 100_000);
        assert_eq!(p.caps.max_pending_bytes, 1_073_741_824);
        assert_eq!(p.caps.resume_threshold_percent, 80);
        assert_eq!(p.caps.breaker_failures, 5);
        assert_eq!(p.schema_coalescing_mode, CoalescingMode::None);
        assert!(!p.allow_additive_continue && !p.allow_auto_create_device_data_points);
        assert_eq!(Caps::default(), p.caps);
    }

    #[test]
    fn a_patch_is_checked_field_by_field_with_the_api_messages() {
        let empty = PolicyPatch::default();
        assert_eq!(validate_patch(&empty), Err(PolicyPatchError::Empty));
        assert_eq!(
            PolicyPatchError::Empty.to_string(),
            "the patch sets no field"
        );
        let ok = PolicyPatch {
            allow_additive_continue: Some(true),
            ..PolicyPatch::default()
        };
        assert_eq!(validate_patch(&ok), Ok(()));
        let cases = [
            (
                PolicyPatch {
                    max_pending_rows_per_lineage: Some(0),
                    ..PolicyPatch::default()
                },
                "max_pending_rows_per_lineage must be at least 1",
            ),
            (
                PolicyPatch {
                    max_pending_bytes_per_lineage: Some(-1),
                    ..PolicyPatch::default()
                },
                "max_pending_bytes_per_lineage must be at least 1",
            ),
            (
                PolicyPatch {
                    resume_threshold_percent: Some(101),
                    ..PolicyPatch::default()
                },
                "resume_threshold_percent must be between 1 and 100",
            ),
            (
                PolicyPatch {
                    circuit_breaker_failures: Some(0),
                    ..PolicyPatch::default()
                },
                "circuit_breaker_failures must be at least 1",
            ),
            (
                PolicyPatch {
                    schema_coalescing_mode: Some("tenant".into()),
                    ..PolicyPatch::default()
                },
                "schema_coalescing_mode must be none, project or fleet",
            ),
        ];
        for (patch, message) in cases {
            let e = validate_patch(&patch).expect_err(message);
            assert_eq!(e.to_string(), message);
            assert_eq!(e.code(), "invalid_policy");
        }
    }
}
