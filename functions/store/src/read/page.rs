//! The paging helpers of the API's lists: a page and the total matching its filters —
//! [`page_with_total`] for most lists, [`ordered_page_with_total`] where an index serves the
//! order (the fleet view).

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row};

use crate::error::OpError;
use crate::scope::Page;

/// One typed statement parameter.
pub type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// `SELECT {select} {from_where} ORDER BY {order}` cut to `page`, with the number of rows
/// `from_where` matches. `params` are `$1…$n` of `from_where`; the page's limit and offset
/// follow as `$n+1`, `$n+2`.
///
/// The total rides along with the page as a window count (one round trip); past the last page
/// the window count is gone with the rows, so it is counted separately. Typed statements: one
/// round trip each (no separate prepare) on the API's hottest reads.
pub async fn page_with_total<C: GenericClient + Sync, T>(
    c: &C,
    select: &str,
    from_where: &str,
    order: &str,
    params: &[Param<'_>],
    page: Page,
    view: impl Fn(&Row) -> T,
) -> Result<(Vec<T>, i64), OpError> {
    let offset = page.offset();
    let n = params.len();
    let mut all: Vec<Param<'_>> = params.to_vec();
    all.push((&page.limit, Type::INT8));
    all.push((&offset, Type::INT8));
    let rows = c
        .query_typed(
            &format!(
                "SELECT {select}, count(*) OVER () {from_where} ORDER BY {order} LIMIT ${} \
                 OFFSET ${}",
                n + 1,
                n + 2
            ),
            &all,
        )
        .await?;
    let total = match rows.first() {
        Some(r) => r.get(r.len() - 1),
        None => c
            .query_typed(&format!("SELECT count(*) {from_where}"), params)
            .await?
            .first()
            .map_or(0, |r| r.get(0)),
    };
    Ok((rows.iter().map(view).collect(), total))
}

/// A page whose order an index serves, with per-row extras of the page's rows
/// ([`ordered_page_with_total`]).
#[derive(Debug, Clone, Copy)]
pub struct OrderedPage<'a> {
    /// The page's columns (over `from` and `join`), each named: the outer query reads `p.name`.
    pub select: &'a str,
    /// The table the total counts, with its alias.
    pub from: &'a str,
    /// Tables joined for the page's columns only (the total does without them).
    pub join: &'a str,
    /// The filter, over `from` alone.
    pub filter: &'a str,
    pub order: &'a str,
    /// The answer's columns over the page `p` and `outer_from`: correlated subqueries here and
    /// LATERAL joins there run once per page row.
    pub outer_select: &'a str,
    pub outer_from: &'a str,
    /// The order again, on `p`'s columns.
    pub outer_order: &'a str,
}

/// Like [`page_with_total`], for a list whose order an index serves: the page is cut by a
/// `LIMIT` straight over the ordered rows, and the total is a separate `count(*)` evaluated
/// once in the same statement (an init plan) — a window count would make PostgreSQL read every
/// matching row before returning the first. The page's rows then get their extras
/// (`outer_select`, `outer_from`). `params` are `$1…$n`; limit and offset follow. The total is
/// the answer's last column.
pub async fn ordered_page_with_total<C: GenericClient + Sync, T>(
    c: &C,
    q: &OrderedPage<'_>,
    params: &[Param<'_>],
    page: Page,
    view: impl Fn(&Row) -> T,
) -> Result<(Vec<T>, i64), OpError> {
    let offset = page.offset();
    let mut all: Vec<Param<'_>> = params.to_vec();
    all.push((&page.limit, Type::INT8));
    all.push((&offset, Type::INT8));
    let rows = c.query_typed(&q.statement(params.len()), &all).await?;
    let total = match rows.first() {
        Some(r) => r.get(r.len() - 1),
        None => c
            .query_typed(&q.count_statement(), params)
            .await?
            .first()
            .map_or(0, |r| r.get(0)),
    };
    Ok((rows.iter().map(view).collect(), total))
}

impl OrderedPage<'_> {
    /// The statement [`ordered_page_with_total`] sends, for `n` filter parameters (limit and
    /// offset are `$n+1`, `$n+2`): for `EXPLAIN`.
    pub fn statement(&self, n: usize) -> String {
        format!(
            "SELECT {}, ({}) FROM (SELECT {} FROM {} {} WHERE {} ORDER BY {} \
             LIMIT ${} OFFSET ${}) p {} ORDER BY {}",
            self.outer_select,
            self.count_statement(),
            self.select,
            self.from,
            self.join,
            self.filter,
            self.order,
            n + 1,
            n + 2,
            self.outer_from,
            self.outer_order,
        )
    }

    /// The total's statement (also the init plan of [`OrderedPage::statement`]).
    pub fn count_statement(&self) -> String {
        format!("SELECT count(*) FROM {} WHERE {}", self.from, self.filter)
    }
}
