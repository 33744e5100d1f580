//! The one paging helper of the API's lists: a page and the total matching its filters.

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
