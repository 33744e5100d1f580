//! Is this still the same database and the same journal? The facts the agent gathers when it
//! (re)attaches to a source database, the pure decision whether a new journal epoch starts, and
//! the file identity (device + inode) that tells a replaced `source.db` apart, and the id of a
//! new epoch ([`next_epoch`]: versions only move forward, reliability.md §5).

use std::path::Path;

use edge_protocol::ids::{new_uuid_v7, uuid_v7_unix_ms};
use uuid::Uuid;

use super::CaptureError;

/// The id of a new journal epoch: `candidate` (a fresh UUIDv7 from the device's clock) if it
/// sorts after `previous` (the epoch state.db knows), else a UUIDv7 one millisecond after
/// `previous`'s with `candidate`'s random bits: max(now, previous plus 1 ms), reliability.md §5. A gateway
/// without an RTC that starts before NTP has a clock behind real time; an epoch taken from it
/// would sort below the old one, and the cloud's version guard would then ignore every later
/// change. Pure: the time comes in with `candidate`.
pub fn next_epoch(previous: Option<Uuid>, candidate: Uuid) -> Uuid {
    let Some(prev) = previous else {
        return candidate;
    };
    if candidate > prev {
        return candidate;
    }
    // A previous epoch that is not a v7 (hand-edited state.db) sorts by its bytes: the first six
    // are what a v7 keeps its milliseconds in, so continue from them all the same.
    let prev_ms = uuid_v7_unix_ms(&prev).unwrap_or_else(|| {
        prev.as_bytes()[..6]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    });
    let mut random = [0u8; 10];
    random.copy_from_slice(&candidate.as_bytes()[6..]);
    let next = new_uuid_v7(prev_ms.saturating_add(1), random);
    if next > prev {
        next
    } else {
        // Only at the end of the 48-bit millisecond range (year 10889): keep the old epoch's
        // time and make the random part the largest; still strictly greater unless it was.
        new_uuid_v7(prev_ms, [0xff; 10]).max(candidate)
    }
}

/// Why a new journal epoch is needed, decided by [`decide_identity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityDecision {
    /// Same database, same journal.
    Continue,
    /// Start a new epoch; `resnapshot` when the mirror may now miss rows.
    NewEpoch { resnapshot: bool, reason: String },
}

/// What the agent knows when it (re)attaches to a source database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFacts<'a> {
    pub state_has_epoch: bool,
    pub state_instance: Option<&'a str>,
    pub source_instance: &'a str,
    /// The journal table did not exist and was just created.
    pub journal_created: bool,
    pub journal_max_seq: i64,
    pub state_high_water: i64,
}

/// Decides whether the journal continues or a new epoch starts. Pure.
pub fn decide_identity(f: &IdentityFacts<'_>) -> IdentityDecision {
    if !f.state_has_epoch {
        return IdentityDecision::NewEpoch {
            resnapshot: false,
            reason: "no journal epoch in state.db (first run, or state.db was lost)".into(),
        };
    }
    match f.state_instance {
        Some(known) if known != f.source_instance => {
            return IdentityDecision::NewEpoch {
                resnapshot: true,
                reason: format!(
                    "source database instance changed ({known} -> {}): file replaced or restored",
                    f.source_instance
                ),
            }
        }
        None => {
            return IdentityDecision::NewEpoch {
                resnapshot: true,
                reason: "state.db does not know this source database".into(),
            }
        }
        Some(_) => {}
    }
    if f.journal_created {
        return IdentityDecision::NewEpoch {
            resnapshot: true,
            reason: "journal table was missing and has been recreated".into(),
        };
    }
    if f.journal_max_seq < f.state_high_water {
        return IdentityDecision::NewEpoch {
            resnapshot: true,
            reason: format!(
                "journal went backwards (max commit_seq {} < high-water {}): restored or reset",
                f.journal_max_seq, f.state_high_water
            ),
        };
    }
    IdentityDecision::Continue
}

#[cfg(unix)]
pub(super) fn file_identity(path: &Path) -> Result<Option<(u64, u64)>, CaptureError> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((m.dev(), m.ino()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CaptureError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(not(unix))]
pub(super) fn file_identity(_path: &Path) -> Result<Option<(u64, u64)>, CaptureError> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> IdentityFacts<'static> {
        IdentityFacts {
            state_has_epoch: true,
            state_instance: Some("a"),
            source_instance: "a",
            journal_created: false,
            journal_max_seq: 10,
            state_high_water: 10,
        }
    }

    /// Defect 7 (issue 13): a clock set back must not give the new epoch an id that sorts below
    /// the previous one.
    #[test]
    fn defect_7_new_epoch_after_clock_set_back_sorts_after_previous() {
        let prev = new_uuid_v7(1_800_000_000_000, [7; 10]);
        // The clock is a day behind (no RTC, before NTP).
        let behind = new_uuid_v7(1_800_000_000_000 - 86_400_000, [9; 10]);
        let next = next_epoch(Some(prev), behind);
        assert!(next > prev, "{next} must sort after {prev}");
        assert_eq!(uuid_v7_unix_ms(&next), Some(1_800_000_000_001));
        assert!(edge_protocol::ids::is_uuid_v7(&next));
        // Same millisecond, smaller random bits: still after.
        let same_ms = new_uuid_v7(1_800_000_000_000, [0; 10]);
        assert!(next_epoch(Some(prev), same_ms) > prev);
        // A clock ahead of the previous epoch is taken as it is; no previous epoch: as it is.
        let ahead = new_uuid_v7(1_800_000_000_500, [1; 10]);
        assert_eq!(next_epoch(Some(prev), ahead), ahead);
        assert_eq!(next_epoch(None, behind), behind);
        // Repeated new epochs with a stuck clock keep moving forward.
        let mut e = prev;
        for _ in 0..5 {
            let n = next_epoch(Some(e), behind);
            assert!(n > e);
            e = n;
        }
    }

    #[test]
    fn identity_decisions() {
        assert_eq!(decide_identity(&facts()), IdentityDecision::Continue);
        let lost = IdentityFacts {
            state_has_epoch: false,
            state_instance: None,
            ..facts()
        };
        assert!(matches!(
            decide_identity(&lost),
            IdentityDecision::NewEpoch {
                resnapshot: false,
                ..
            }
        ));
        let swapped = IdentityFacts {
            source_instance: "b",
            ..facts()
        };
        assert!(matches!(
            decide_identity(&swapped),
            IdentityDecision::NewEpoch {
                resnapshot: true,
                ..
            }
        ));
        let recreated = IdentityFacts {
            journal_created: true,
            ..facts()
        };
        assert!(matches!(
            decide_identity(&recreated),
            IdentityDecision::NewEpoch {
                resnapshot: true,
                ..
            }
        ));
        let backwards = IdentityFacts {
            journal_max_seq: 3,
            ..facts()
        };
        assert!(matches!(
            decide_identity(&backwards),
            IdentityDecision::NewEpoch {
                resnapshot: true,
                ..
            }
        ));
    }
}
