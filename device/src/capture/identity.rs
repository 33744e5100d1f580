//! Is this still the same database and the same journal? The facts the agent gathers when it
//! (re)attaches to a source database, the pure decision whether a new journal epoch starts, and
//! the file identity (device + inode) that tells a replaced `source.db` apart.

use std::path::Path;

use super::CaptureError;

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
