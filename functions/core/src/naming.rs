//! PostgreSQL identifiers: the one quoting function and the 63-byte shortening rule.
//!
//! Device-supplied strings (table and column names) only ever reach SQL through
//! [`quote_ident`]; names we derive from them go through [`fit_identifier`] first, because
//! PostgreSQL silently truncates identifiers to 63 bytes and two long names sharing a prefix
//! would otherwise collide.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Columns every mirror table has; source columns with these names are renamed.
pub const PLATFORM_COLUMNS: [&str; 6] = [
    "device_id",
    "_edge_epoch",
    "_edge_commit_seq",
    "_edge_deleted",
    "created_at",
    "updated_at",
];

/// Quotes an identifier: wraps it in double quotes and doubles embedded quotes. The only way
/// a name reaches SQL text in this workspace.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// Makes a name usable as a PostgreSQL identifier: NUL bytes (which PostgreSQL cannot store)
/// are dropped, and names over 63 bytes are cut at a character boundary and suffixed with `_`
/// and 8 hex digits of the SHA-256 of the full name, so the result is stable and distinct names
/// stay distinct.
pub fn fit_identifier(name: &str) -> String {
    let cleaned: String = name.chars().filter(|c| *c != '\0').collect();
    if cleaned.len() <= MAX_IDENTIFIER_BYTES && cleaned.len() == name.len() {
        return cleaned;
    }
    let digest = Sha256::digest(name.as_bytes());
    let suffix = format!("_{}", hex::encode(&digest[..4]));
    if cleaned.len() + suffix.len() <= MAX_IDENTIFIER_BYTES {
        // Only NULs were removed: still suffix, so "a\0b" and "ab" do not collide.
        return cleaned + &suffix;
    }
    let mut cut = MAX_IDENTIFIER_BYTES - suffix.len();
    while !cleaned.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &cleaned[..cut], suffix)
}

/// First 8 hex digits of a UUID (the `project8` / `fleet8` of cloud.md §6). Not for devices:
/// in a UUIDv7 these are timestamp bits ([`device8`]).
pub fn uuid8(id: &Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

/// The `device8` of a mirror name: the **last** 8 hex digits of the device UUID — random bits
/// in v4 and v7 — not the first, which in a v7 are its timestamp, so devices registered within
/// about a minute of each other (in any org) shared them (reliability.md §3).
pub fn device8(id: &Uuid) -> String {
    let hex = id.simple().to_string();
    hex[hex.len() - 8..].to_owned()
}

/// Per-device mirror table name `edge_mirror_{device8}_{source_table}`, fitted to 63 bytes.
/// The first candidate of [`mirror_table_candidate`].
pub fn mirror_table_name(device_id: &Uuid, source_table: &str) -> String {
    mirror_table_candidate(device_id, source_table, 1)
}

/// The `n`-th candidate name of a lineage's mirror (reliability.md §3): `n = 1` is
/// `edge_mirror_{device8}_{table}`, later ones add `_{n}` **before** fitting to 63 bytes, so a
/// fitted name owned by another lineage or coalesced mirror is never reused.
pub fn mirror_table_candidate(device_id: &Uuid, source_table: &str, n: u32) -> String {
    let base = format!("edge_mirror_{}_{}", device8(device_id), source_table);
    if n <= 1 {
        fit_identifier(&base)
    } else {
        fit_identifier(&format!("{base}_{n}"))
    }
}

/// Who owns a physical mirror table (`edge_mirror_tables`): exactly one lineage or one
/// coalesced mirror, in one org and project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorOwner {
    pub owner: OwnerRef,
    pub org_id: Uuid,
    pub project_id: Uuid,
}

/// The owning lineage or coalesced mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerRef {
    Lineage(Uuid),
    Coalesced(Uuid),
}

/// What a claimant may do with a mirror table (reliability.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Nobody owns it: record the claimant as owner.
    Free,
    /// The claimant owns it (or writes it as a lineage adopted into the coalesced mirror that
    /// owns it).
    Owned,
    /// Owned by another lineage or coalesced mirror of the same project: 409
    /// `mirror_table_in_use`.
    InUse,
    /// Owned in another project or org: 409 `mirror_table_not_owned`.
    NotOwned,
}

/// Decides a claim on a mirror table. `adopted` is set when the claimant is a lineage whose
/// stored mirror is this table because a coalesced mirror of its project adopted it; such a
/// lineage may widen the coalesced table, nothing else may.
pub fn claim(owner: Option<&MirrorOwner>, claimant: &MirrorOwner, adopted: bool) -> Claim {
    let Some(owner) = owner else {
        return Claim::Free;
    };
    if owner.org_id != claimant.org_id || owner.project_id != claimant.project_id {
        return Claim::NotOwned;
    }
    if owner.owner == claimant.owner {
        return Claim::Owned;
    }
    match (owner.owner, claimant.owner) {
        (OwnerRef::Coalesced(_), OwnerRef::Lineage(_)) if adopted => Claim::Owned,
        _ => Claim::InUse,
    }
}

/// Mirror column names for a table's source columns, in the same order: fitted to 63 bytes,
/// platform column names avoided (`created_at` → `created_at_src`), and unique (a collision
/// after shortening gets a numbered suffix), deterministic for a given input order.
pub fn mirror_column_names<'a>(source: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken: Vec<String> = PLATFORM_COLUMNS.iter().map(|s| (*s).to_owned()).collect();
    let mut out = Vec::new();
    for name in source {
        let mut candidate = fit_identifier(name);
        if taken.contains(&candidate) {
            candidate = fit_identifier(&format!("{name}_src"));
        }
        let mut n = 2;
        while taken.contains(&candidate) {
            candidate = fit_identifier(&format!("{name}_src{n}"));
            n += 1;
        }
        taken.push(candidate.clone());
        out.push(candidate);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quotes_and_doubles_quotes() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("\"; DROP TABLE x; --"),
            "\"\"\"; DROP TABLE x; --\""
        );
    }

    #[test]
    fn short_names_are_kept() {
        assert_eq!(fit_identifier("device_state"), "device_state");
        let exactly = "x".repeat(63);
        assert_eq!(fit_identifier(&exactly), exactly);
    }

    #[test]
    fn long_names_are_shortened_stably_and_distinctly() {
        let a = format!("{}_a", "long".repeat(20));
        let b = format!("{}_b", "long".repeat(20));
        let fa = fit_identifier(&a);
        assert!(fa.len() <= MAX_IDENTIFIER_BYTES);
        assert_eq!(fa, fit_identifier(&a));
        assert_ne!(fa, fit_identifier(&b));
    }

    #[test]
    fn shortening_respects_char_boundaries() {
        let name = "é".repeat(40); // 80 bytes
        let fitted = fit_identifier(&name);
        assert!(fitted.len() <= MAX_IDENTIFIER_BYTES);
        assert!(fitted.starts_with('é'));
    }

    #[test]
    fn nul_bytes_are_removed_without_collisions() {
        let f = fit_identifier("a\0b");
        assert!(!f.contains('\0'));
        assert_ne!(f, fit_identifier("ab"));
    }

    #[test]
    fn mirror_names() {
        let device = Uuid::parse_str("01939b4e-8c3a-7d2e-9f10-2b3c4d5e6f70").unwrap();
        assert_eq!(
            mirror_table_name(&device, "device_state"),
            "edge_mirror_4d5e6f70_device_state"
        );
        let long = mirror_table_name(&device, &"t".repeat(80));
        assert_eq!(long.len(), MAX_IDENTIFIER_BYTES);
    }

    /// Defect 4 (issue 13): two UUIDv7s minted in the same minute share their first 8 hex
    /// digits (the timestamp); the mirror names must still differ.
    #[test]
    fn device8_is_the_last_8_hex_digits() {
        let a = Uuid::parse_str("01939b4e-8c3a-7d2e-9f10-2b3c4d5e6f70").unwrap();
        let b = Uuid::parse_str("01939b4e-8c3b-7aaa-8bbb-0123456789ab").unwrap();
        assert_eq!(device8(&a), "4d5e6f70");
        assert_ne!(mirror_table_name(&a, "t"), mirror_table_name(&b, "t"));
    }

    #[test]
    fn later_candidates_are_suffixed_before_fitting() {
        let d = Uuid::parse_str("01939b4e-8c3a-7d2e-9f10-2b3c4d5e6f70").unwrap();
        assert_eq!(
            mirror_table_candidate(&d, "device_state", 2),
            "edge_mirror_4d5e6f70_device_state_2"
        );
        let long = "t".repeat(80);
        let (one, two) = (
            mirror_table_candidate(&d, &long, 1),
            mirror_table_candidate(&d, &long, 2),
        );
        assert_ne!(one, two);
        assert!(two.len() <= MAX_IDENTIFIER_BYTES);
    }

    #[test]
    fn claims_follow_ownership() {
        let (org, project, other) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let me = MirrorOwner {
            owner: OwnerRef::Lineage(Uuid::from_u128(10)),
            org_id: org,
            project_id: project,
        };
        assert_eq!(claim(None, &me, false), Claim::Free);
        assert_eq!(claim(Some(&me), &me, false), Claim::Owned);
        let sibling = MirrorOwner {
            owner: OwnerRef::Lineage(Uuid::from_u128(11)),
            ..me
        };
        assert_eq!(claim(Some(&sibling), &me, false), Claim::InUse);
        let foreign = MirrorOwner {
            org_id: other,
            ..sibling
        };
        assert_eq!(claim(Some(&foreign), &me, false), Claim::NotOwned);
        let shared = MirrorOwner {
            owner: OwnerRef::Coalesced(Uuid::from_u128(20)),
            ..me
        };
        assert_eq!(claim(Some(&shared), &me, true), Claim::Owned);
        assert_eq!(claim(Some(&shared), &me, false), Claim::InUse);
    }

    #[test]
    fn column_names_avoid_platform_columns_and_collisions() {
        let long = "c".repeat(70);
        let names = mirror_column_names(["id", "created_at", "created_at_src", &long, &long]);
        assert_eq!(names[0], "id");
        assert_eq!(names[1], "created_at_src");
        assert_ne!(names[2], "created_at_src");
        assert_ne!(names[3], names[4]);
        assert!(names.iter().all(|n| n.len() <= MAX_IDENTIFIER_BYTES));
    }
}
