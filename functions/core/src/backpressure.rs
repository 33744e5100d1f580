//! Backpressure, the materialization circuit breaker and the resume sweep (cloud.md §7).
//!
//! Two states are decided here and kept apart on purpose:
//! - the **lineage** status (`active|paused` + `pause_reason`): whether the cloud materializes
//!   or stages the lineage's rows;
//! - the **device** pause (`device_pause_reason`): whether a `pause_lineage` control told the
//!   device to stop publishing the table. Only a `resume_lineage` control lifts it.
//!
//! An approval can activate a lineage whose device is still paused for volume; the sweep then
//! resumes the device once the backlog is below the threshold. A circuit-breaker pause is never
//! swept: an operator must fix the cause and reset it.

/// Why the cloud paused a device's table (the `reason` of a `pause_lineage` control).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PauseReason {
    VolumeBackpressure,
    CircuitBreaker,
}

impl PauseReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            PauseReason::VolumeBackpressure => "volume_backpressure",
            PauseReason::CircuitBreaker => "circuit_breaker",
        }
    }

    pub fn from_db(s: &str) -> Option<PauseReason> {
        match s {
            "volume_backpressure" => Some(PauseReason::VolumeBackpressure),
            "circuit_breaker" => Some(PauseReason::CircuitBreaker),
            _ => None,
        }
    }

    /// The human-readable `reason` field of the control.
    pub fn control_reason(&self) -> &'static str {
        match self {
            PauseReason::VolumeBackpressure => "backpressure: staged backlog cap exceeded",
            PauseReason::CircuitBreaker => "circuit breaker: repeated materialization failures",
        }
    }
}

/// The project policy's caps (cloud.md §7); `Caps::default()` is the default policy's
/// ([`crate::policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_pending_rows: i64,
    pub max_pending_bytes: i64,
    pub resume_threshold_percent: i32,
    /// Permanent failures in a row that trip the breaker.
    pub breaker_failures: i32,
}

/// What the decisions look at for one lineage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub staged_rows: i64,
    pub staged_bytes: i64,
    /// Permanent materialization failures since the last clean batch or reset.
    pub failure_count: i32,
    /// The lineage's own pause reason, when it is one of ours (a schema-review pause is `None`).
    pub lineage_pause: Option<PauseReason>,
    /// Set while the device is paused by a control.
    pub device_pause: Option<PauseReason>,
}

impl Load {
    fn over_cap(&self, caps: &Caps) -> bool {
        self.staged_rows > caps.max_pending_rows || self.staged_bytes > caps.max_pending_bytes
    }

    /// Both counters strictly below `threshold %` of their caps. Computed in i128 so a cap
    /// near `i64::MAX` cannot overflow.
    fn below_resume_threshold(&self, caps: &Caps) -> bool {
        let pct = i128::from(caps.resume_threshold_percent.clamp(1, 100));
        let below = |used: i64, cap: i64| i128::from(used) * 100 < i128::from(cap.max(0)) * pct;
        below(self.staged_rows, caps.max_pending_rows)
            && below(self.staged_bytes, caps.max_pending_bytes)
    }
}

/// Checked after every accepted batch, in the ingest transaction: pause the device (and the
/// lineage) with this reason, or `None`. A device already paused is not paused again, so a
/// flood of in-flight batches after the pause issues exactly one control. The breaker wins over
/// volume: it is the reason an operator must act on.
pub fn pause_after_intake(load: &Load, caps: &Caps) -> Option<PauseReason> {
    if load.device_pause.is_some() {
        return None;
    }
    if caps.breaker_failures > 0 && load.failure_count >= caps.breaker_failures {
        return Some(PauseReason::CircuitBreaker);
    }
    if load.over_cap(caps) {
        return Some(PauseReason::VolumeBackpressure);
    }
    None
}

/// Whether a batch (or replay chunk) ends the breaker's failure streak (reliability.md §4,
/// §6). The rule: the breaker trips when `breaker_failures` rows (default 5) failed with
/// **no row of the lineage materializing in between**, counted per batch / replay chunk — a
/// batch that materialized at least one row (written or superseded) resets the streak to 0
/// after its misfits were staged, so a single unfit row (or a few per batch) is staged as
/// `materialization_failed` and never pauses healthy traffic; a batch in which every row
/// failed (misfits, or one permanent write error for the whole batch) adds all its rows to the
/// streak. Failures are systemic when nothing gets through.
pub fn streak_ends(materialized_rows: i64) -> bool {
    materialized_rows > 0
}

/// SQLSTATE classes of a mirror write error that no retry can fix: 22 data exception, 23
/// integrity constraint violation, 42 syntax error or access rule violation (42P10: the
/// upsert's `ON CONFLICT` target is not the table's key; 42703 undefined column; 42804
/// datatype mismatch). Such an error affects every row of the statement: the batch's rows are
/// staged as `materialization_failed` with the error text and count toward the breaker
/// ([`streak_ends`]) instead of dead-lettering batch after batch.
pub fn permanent_write_error(sqlstate: &str) -> bool {
    ["22", "23", "42"].iter().any(|c| sqlstate.starts_with(c))
}

/// What the resume sweep does for one lineage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The lineage was paused for volume: set it active again.
    pub activate_lineage: bool,
    /// The device was paused by a control: send `resume_lineage` with the watermark.
    pub send_resume: bool,
}

/// The resume sweep (scheduled): a volume pause ends once both counters are below the
/// threshold percentage of the caps. Circuit-breaker pauses are left to reset-materialization.
pub fn sweep(load: &Load, caps: &Caps) -> Option<Resume> {
    let volume = |p: Option<PauseReason>| p == Some(PauseReason::VolumeBackpressure);
    let activate_lineage = volume(load.lineage_pause);
    let send_resume = volume(load.device_pause);
    if !(activate_lineage || send_resume) || !load.below_resume_threshold(caps) {
        return None;
    }
    // A breaker pause of the lineage outranks a volume pause of the device: keep holding.
    if load.lineage_pause == Some(PauseReason::CircuitBreaker) {
        return None;
    }
    Some(Resume {
        activate_lineage,
        send_resume,
    })
}

/// Why a reset-materialization request is refused (HTTP 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResetRefusal {
    #[error("lineage is not blocked: nothing to reset")]
    NotBlocked,
    #[error("a schema review is open for this lineage: decide it first")]
    ReviewOpen,
    #[error("lineage is paused for schema review: approve or fix the schema first")]
    AwaitingSchema,
}

/// Whether reset-materialization may run. Blocked = paused by us (breaker or volume), device
/// paused by a control, or failed rows waiting.
pub fn may_reset(
    load: &Load,
    schema_review_pause: bool,
    review_open: bool,
    failed_rows: i64,
) -> Result<(), ResetRefusal> {
    if review_open {
        return Err(ResetRefusal::ReviewOpen);
    }
    if schema_review_pause {
        return Err(ResetRefusal::AwaitingSchema);
    }
    let blocked = load.lineage_pause.is_some()
        || load.device_pause.is_some()
        || failed_rows > 0
        || load.failure_count > 0;
    if blocked {
        Ok(())
    } else {
        Err(ResetRefusal::NotBlocked)
    }
}

/// After the reset retried the failed rows: resume unless the retry tripped the breaker again.
pub fn resume_after_reset(failures_after_retry: i32, caps: &Caps) -> bool {
    caps.breaker_failures <= 0 || failures_after_retry < caps.breaker_failures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(rows: i64, bytes: i64) -> Load {
        Load {
            staged_rows: rows,
            staged_bytes: bytes,
            failure_count: 0,
            lineage_pause: None,
            device_pause: None,
        }
    }

    #[test]
    fn over_either_cap_pauses_for_volume() {
        let caps = Caps::default();
        assert_eq!(pause_after_intake(&load(100_000, 0), &caps), None);
        assert_eq!(
            pause_after_intake(&load(100_001, 0), &caps),
            Some(PauseReason::VolumeBackpressure)
        );
        assert_eq!(
            pause_after_intake(&load(1, (1 << 30) + 1), &caps),
            Some(PauseReason::VolumeBackpressure)
        );
    }

    #[test]
    fn an_already_paused_device_is_not_paused_again() {
        let mut l = load(500_000, 0);
        l.device_pause = Some(PauseReason::VolumeBackpressure);
        assert_eq!(pause_after_intake(&l, &Caps::default()), None);
        l.failure_count = 9;
        assert_eq!(pause_after_intake(&l, &Caps::default()), None);
    }

    #[test]
    fn breaker_trips_at_the_threshold_and_outranks_volume() {
        let mut l = load(500_000, 0);
        l.failure_count = 4;
        assert_eq!(
            pause_after_intake(&l, &Caps::default()),
            Some(PauseReason::VolumeBackpressure)
        );
        l.failure_count = 5;
        assert_eq!(
            pause_after_intake(&l, &Caps::default()),
            Some(PauseReason::CircuitBreaker)
        );
        let off = Caps {
            breaker_failures: 0,
            ..Caps::default()
        };
        assert_eq!(
            pause_after_intake(&l, &off),
            Some(PauseReason::VolumeBackpressure)
        );
    }

    #[test]
    fn sweep_resumes_strictly_below_the_threshold_on_both_counters() {
        let caps = Caps::default();
        let mut l = load(80_000, 0);
        l.device_pause = Some(PauseReason::VolumeBackpressure);
        assert_eq!(sweep(&l, &caps), None, "80 % is not below 80 %");
        l.staged_rows = 79_999;
        assert_eq!(
            sweep(&l, &caps),
            Some(Resume {
                activate_lineage: false,
                send_resume: true
            })
        );
        l.staged_bytes = 1 << 30;
        assert_eq!(sweep(&l, &caps), None, "bytes still over");
        l.staged_bytes = 0;
        l.lineage_pause = Some(PauseReason::VolumeBackpressure);
        assert_eq!(
            sweep(&l, &caps),
            Some(Resume {
                activate_lineage: true,
                send_resume: true
            })
        );
    }

    #[test]
    fn sweep_leaves_breaker_and_unpaused_lineages_alone() {
        let caps = Caps::default();
        assert_eq!(sweep(&load(0, 0), &caps), None);
        let mut l = load(0, 0);
        l.device_pause = Some(PauseReason::CircuitBreaker);
        l.lineage_pause = Some(PauseReason::CircuitBreaker);
        assert_eq!(sweep(&l, &caps), None);
        l.device_pause = Some(PauseReason::VolumeBackpressure);
        assert_eq!(sweep(&l, &caps), None);
    }

    #[test]
    fn threshold_math_cannot_overflow() {
        let caps = Caps {
            max_pending_rows: i64::MAX,
            max_pending_bytes: i64::MAX,
            resume_threshold_percent: 100,
            breaker_failures: 5,
        };
        let mut l = load(i64::MAX - 1, i64::MAX - 1);
        l.device_pause = Some(PauseReason::VolumeBackpressure);
        assert!(sweep(&l, &caps).is_some());
        assert_eq!(pause_after_intake(&load(i64::MAX, 0), &caps), None);
    }

    #[test]
    fn reset_is_refused_when_nothing_is_blocked_or_a_review_is_open() {
        let idle = load(0, 0);
        assert_eq!(
            may_reset(&idle, false, false, 0),
            Err(ResetRefusal::NotBlocked)
        );
        let mut blocked = idle;
        blocked.lineage_pause = Some(PauseReason::CircuitBreaker);
        assert_eq!(may_reset(&blocked, false, false, 0), Ok(()));
        assert_eq!(
            may_reset(&blocked, false, true, 0),
            Err(ResetRefusal::ReviewOpen)
        );
        assert_eq!(
            may_reset(&idle, true, false, 3),
            Err(ResetRefusal::AwaitingSchema)
        );
        assert_eq!(may_reset(&idle, false, false, 2), Ok(()));
    }

    #[test]
    fn only_a_batch_with_nothing_materialized_extends_the_streak() {
        assert!(streak_ends(1));
        assert!(!streak_ends(0));
        assert!(permanent_write_error("42P10"));
        assert!(permanent_write_error("22003"));
        assert!(!permanent_write_error("40001"));
        assert!(!permanent_write_error("08006"));
    }

    #[test]
    fn reset_resumes_unless_the_retry_trips_again() {
        let caps = Caps::default();
        assert!(resume_after_reset(0, &caps));
        assert!(resume_after_reset(4, &caps));
        assert!(!resume_after_reset(5, &caps));
    }
}
