//! UUIDv7 identities and the total order of changes.
//!
//! `batch_id` and `journal_epoch` are UUIDv7 (RFC 9562): 48 bits of Unix milliseconds first, so
//! byte order is creation order. Time and randomness are arguments, never read here, so the agent
//! can be tested deterministically.

use serde::{Deserialize, Serialize};
use uuid::{Builder, Uuid, Variant};

/// True for a version-7 UUID with the RFC 9562 variant (`10xx`).
pub fn is_uuid_v7(u: &Uuid) -> bool {
    u.get_version_num() == 7 && u.get_variant() == Variant::RFC4122
}

/// Parses the hyphenated form (`8-4-4-4-12`, either case) of a UUIDv7. Braced, URN and simple
/// forms are refused: the wire has one spelling so re-encoding gives back the same text.
pub fn parse_uuid_v7(s: &str) -> Option<Uuid> {
    parse_uuid_hyphenated(s).filter(is_uuid_v7)
}

/// Parses the hyphenated form of any UUID (control ids need not be v7).
pub fn parse_uuid_hyphenated(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

/// Builds a UUIDv7 from a Unix time in milliseconds (low 48 bits used) and 10 random bytes, of
/// which 74 bits end up in the id (version and variant bits overwrite the rest).
pub fn new_uuid_v7(unix_ms: u64, random: [u8; 10]) -> Uuid {
    Builder::from_unix_timestamp_millis(unix_ms, &random).into_uuid()
}

/// The Unix milliseconds of a UUIDv7, `None` for other UUIDs.
pub fn uuid_v7_unix_ms(u: &Uuid) -> Option<u64> {
    if !is_uuid_v7(u) {
        return None;
    }
    let b = u.as_bytes();
    Some(
        b[..6]
            .iter()
            .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte)),
    )
}

/// Position of one change in a device's history. The derived order (epoch bytes, then
/// `commit_seq`) is the total order of spec §3: a newer epoch (later UUIDv7) wins over any
/// sequence number of an older one, because a re-initialised journal restarts its numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommitPosition {
    pub journal_epoch: Uuid,
    pub commit_seq: i64,
}

impl CommitPosition {
    pub fn new(journal_epoch: Uuid, commit_seq: i64) -> Self {
        CommitPosition {
            journal_epoch,
            commit_seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_reads_v7() {
        let u = new_uuid_v7(1_714_294_800_123, [0xff; 10]);
        assert!(is_uuid_v7(&u));
        assert_eq!(uuid_v7_unix_ms(&u), Some(1_714_294_800_123));
        assert_eq!(new_uuid_v7(1_714_294_800_123, [0xff; 10]), u);
        assert_eq!(parse_uuid_v7(&u.to_string()), Some(u));
        assert_eq!(parse_uuid_v7(&u.to_string().to_uppercase()), Some(u));
    }

    #[test]
    fn refuses_other_versions_and_spellings() {
        let v4 = Builder::from_random_bytes([7; 16]).into_uuid();
        assert!(!is_uuid_v7(&v4));
        assert_eq!(parse_uuid_v7(&v4.to_string()), None);
        assert_eq!(uuid_v7_unix_ms(&v4), None);
        let v7 = new_uuid_v7(1, [0; 10]);
        assert_eq!(parse_uuid_v7(&v7.simple().to_string()), None);
        assert_eq!(parse_uuid_v7(&v7.braced().to_string()), None);
        assert_eq!(parse_uuid_v7(&v7.urn().to_string()), None);
        assert_eq!(parse_uuid_v7("not a uuid"), None);
        // Version nibble 7 but NCS variant (0xxx).
        assert_eq!(parse_uuid_v7("01939b4e-8c3a-7d2e-0f10-2b3c4d5e6f70"), None);
        assert!(parse_uuid_v7("01939b4e-8c3a-7d2e-9f10-2b3c4d5e6f70").is_some());
    }

    #[test]
    fn commit_positions_order_by_epoch_then_seq() {
        let old = new_uuid_v7(1_000, [0xff; 10]);
        let new = new_uuid_v7(2_000, [0; 10]);
        assert!(CommitPosition::new(old, 1_000_000) < CommitPosition::new(new, 1));
        assert!(CommitPosition::new(new, 1) < CommitPosition::new(new, 2));
        assert_eq!(CommitPosition::new(new, 2), CommitPosition::new(new, 2));
    }
}
