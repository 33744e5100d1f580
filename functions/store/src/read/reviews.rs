//! Reviews as the API shows them, of both kinds: per-device schema reviews
//! (`edge_schema_reviews`, scoped through their lineage) and registry reviews
//! (`edge_registry_reviews`, cloud.md §9). One list and one by-id read serve both, parameterised
//! by [`ReviewKind`]; the transitions ([`crate::review`]) use the same kinds.

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::error::OpError;
use crate::read::page::page_with_total;
use crate::scope::{ts, Page, Scope};
use crate::unnamed::UnnamedStatements;

/// A kind of review: where its rows live and how the API shows one.
pub trait ReviewKind {
    /// The review as the API shows it.
    type View;
    /// The review table (alias `r`).
    const TABLE: &'static str;
    /// The view's select list.
    const SELECT: &'static str;
    /// `FROM` the review table joined to what scopes and describes it.
    const FROM: &'static str;
    /// Alias whose `org_id`/`project_id` scope the review.
    const SCOPED_BY: &'static str;
    /// Column of the parent a list may filter by (lineage or registry entry).
    const PARENT: &'static str;
    /// Row locks a transition takes.
    const LOCK: &'static str;
    /// What a missing review is called in the 404.
    const NOT_FOUND: &'static str;
    /// What a corrupt state is called in the error.
    const STATE: &'static str;

    fn view(r: &Row) -> Self::View;
    /// The view's state and action version (what a transition checks).
    fn state(v: &Self::View) -> (&str, i32);
}

/// Per-device schema reviews (cloud.md §5).
#[derive(Debug, Clone, Copy)]
pub struct DeviceReview;

/// Registry reviews (cloud.md §9).
#[derive(Debug, Clone, Copy)]
pub struct RegistryReview;

/// Declares the API view of a review kind: `id`, the kind's own fields, then the fields every
/// review has (one list, so both kinds answer alike).
macro_rules! review_view {
    (
        $(#[$doc:meta])*
        $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* }
        $(#[$status_doc:meta])*
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
        pub struct $name {
            pub id: Uuid,
            $($(#[$fdoc])* pub $field: $ty,)*
            pub source_table: String,
            pub schema_hash: String,
            pub classification: String,
            pub diff: serde_json::Value,
            $(#[$status_doc])*
            pub status: String,
            pub action_version: i32,
            pub claimed_by: Option<String>,
            pub decided_by: Option<String>,
            pub decided_at: Option<String>,
            pub reason: Option<String>,
            pub created_at: String,
            pub updated_at: String,
        }
    };
}

review_view! {
    /// A schema review as the API shows it.
    ReviewView {
        lineage_id: Uuid,
        device_id: Uuid,
    }
}

impl ReviewKind for DeviceReview {
    type View = ReviewView;
    const TABLE: &'static str = "edge_schema_reviews";
    const SELECT: &'static str = "r.id, r.lineage_id, l.device_id, l.source_table, \
         r.schema_hash, r.classification, r.diff, r.state, r.action_version, r.claimed_by, \
         r.decided_by, r.decided_at, r.reason, r.created_at, r.updated_at";
    const FROM: &'static str =
        "FROM edge_schema_reviews r JOIN edge_table_lineages l ON l.id = r.lineage_id";
    const SCOPED_BY: &'static str = "l";
    const PARENT: &'static str = "r.lineage_id";
    const LOCK: &'static str = " FOR UPDATE OF r, l";
    const NOT_FOUND: &'static str = "schema review";
    const STATE: &'static str = "review state";

    fn view(r: &Row) -> ReviewView {
        ReviewView {
            id: r.get(0),
            lineage_id: r.get(1),
            device_id: r.get(2),
            source_table: r.get(3),
            schema_hash: r.get(4),
            classification: r.get(5),
            diff: r.get(6),
            status: r.get(7),
            action_version: r.get(8),
            claimed_by: r.get(9),
            decided_by: r.get(10),
            decided_at: r.get::<_, Option<OffsetDateTime>>(11).map(ts),
            reason: r.get(12),
            created_at: ts(r.get(13)),
            updated_at: ts(r.get(14)),
        }
    }

    fn state(v: &ReviewView) -> (&str, i32) {
        (&v.status, v.action_version)
    }
}

review_view! {
    /// A registry review as the API shows it.
    RegistryReviewView {
        registry_id: Uuid,
        /// `project` | `fleet`
        scope: String,
        scope_id: Uuid,
    }
    /// queued | in_review | approved | rejected | abandoned
}

impl ReviewKind for RegistryReview {
    type View = RegistryReviewView;
    const TABLE: &'static str = "edge_registry_reviews";
    const SELECT: &'static str = "r.id, r.registry_id, g.scope_kind, g.scope_id, \
         g.source_table, g.schema_hash, g.classification, g.diff, r.state, r.action_version, \
         r.claimed_by, r.decided_by, r.decided_at, r.reason, r.created_at, r.updated_at";
    const FROM: &'static str =
        "FROM edge_registry_reviews r JOIN edge_schema_registry g ON g.id = r.registry_id";
    const SCOPED_BY: &'static str = "r";
    const PARENT: &'static str = "r.registry_id";
    const LOCK: &'static str = " FOR UPDATE OF r, g";
    const NOT_FOUND: &'static str = "registry review";
    const STATE: &'static str = "registry review state";

    fn view(r: &Row) -> RegistryReviewView {
        RegistryReviewView {
            id: r.get(0),
            registry_id: r.get(1),
            scope: r.get(2),
            scope_id: r.get(3),
            source_table: r.get(4),
            schema_hash: r.get(5),
            classification: r.get(6),
            diff: r.get(7),
            status: r.get(8),
            action_version: r.get(9),
            claimed_by: r.get(10),
            decided_by: r.get(11),
            decided_at: r.get::<_, Option<OffsetDateTime>>(12).map(ts),
            reason: r.get(13),
            created_at: ts(r.get(14)),
            updated_at: ts(r.get(15)),
        }
    }

    fn state(v: &RegistryReviewView) -> (&str, i32) {
        (&v.status, v.action_version)
    }
}

/// A page of the scope's reviews of kind `K`, newest first, optionally of one state and one
/// parent (lineage or registry entry).
pub async fn list<K: ReviewKind, C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    status: Option<&str>,
    parent: Option<Uuid>,
    page: Page,
) -> Result<(Vec<K::View>, i64), OpError> {
    let s = K::SCOPED_BY;
    page_with_total(
        c,
        K::SELECT,
        &format!(
            "{} WHERE {s}.org_id = $1 AND {s}.project_id = $2 \
             AND ($3::text IS NULL OR r.state = $3) AND ($4::uuid IS NULL OR {} = $4)",
            K::FROM,
            K::PARENT
        ),
        "r.created_at DESC, r.id DESC",
        &[
            (&scope.org_id, Type::UUID),
            (&scope.project_id, Type::UUID),
            (&status, Type::TEXT),
            (&parent, Type::UUID),
        ],
        page,
        K::view,
    )
    .await
}

/// One review of kind `K` in the scope (`lock`: row-locked for a transition).
pub async fn one<K: ReviewKind, C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
    lock: bool,
) -> Result<K::View, OpError> {
    let s = K::SCOPED_BY;
    let row = c
        .query_opt_unnamed(
            &format!(
                "SELECT {} {} WHERE r.id = $1 AND {s}.org_id = $2 AND {s}.project_id = $3{}",
                K::SELECT,
                K::FROM,
                if lock { K::LOCK } else { "" }
            ),
            &[&id, &scope.org_id, &scope.project_id],
        )
        .await?
        .ok_or(OpError::NotFound(K::NOT_FOUND))?;
    Ok(K::view(&row))
}

/// The reviews of one registry entry, oldest first (the entry is already scope-checked).
pub(crate) async fn entry_reviews<C: GenericClient + Sync>(
    c: &C,
    registry_id: Uuid,
) -> Result<Vec<RegistryReviewView>, OpError> {
    Ok(c.query_unnamed(
        &format!(
            "SELECT {} {} WHERE r.registry_id = $1 ORDER BY r.created_at, r.id",
            RegistryReview::SELECT,
            RegistryReview::FROM
        ),
        &[&registry_id],
    )
    .await?
    .iter()
    .map(RegistryReview::view)
    .collect())
}

/// A page of the scope's schema reviews, newest first.
pub async fn list_reviews<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    status: Option<&str>,
    lineage_id: Option<Uuid>,
    page: Page,
) -> Result<(Vec<ReviewView>, i64), OpError> {
    list::<DeviceReview, C>(c, scope, status, lineage_id, page).await
}

/// One schema review of the scope (`lock`: row-locked with its lineage for a transition).
pub async fn review<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
    lock: bool,
) -> Result<ReviewView, OpError> {
    one::<DeviceReview, C>(c, scope, id, lock).await
}

/// A page of the scope's registry reviews, newest first.
pub async fn list_registry_reviews<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    status: Option<&str>,
    registry_id: Option<Uuid>,
    page: Page,
) -> Result<(Vec<RegistryReviewView>, i64), OpError> {
    list::<RegistryReview, C>(c, scope, status, registry_id, page).await
}

/// One registry review of the scope (`lock`: row-locked with its entry for a transition).
pub async fn registry_review<C: GenericClient + Sync>(
    c: &C,
    scope: Scope,
    id: Uuid,
    lock: bool,
) -> Result<RegistryReviewView, OpError> {
    one::<RegistryReview, C>(c, scope, id, lock).await
}
