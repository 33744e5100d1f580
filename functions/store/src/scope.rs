//! What every API read and write is scoped and paged by, and how timestamps are shown.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// The tenant scope of a request; only ever built from the authenticated session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub org_id: Uuid,
    pub project_id: Uuid,
}

/// A 1-based page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: i64,
    pub limit: i64,
}

impl Page {
    /// Rows before this page (page 0 and below read as page 1).
    pub fn offset(&self) -> i64 {
        (self.page.max(1) - 1).saturating_mul(self.limit)
    }
}

/// RFC 3339 text of a timestamp (what every API response carries).
pub fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}
