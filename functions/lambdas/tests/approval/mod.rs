//! A stand-in for the review API's approval in these tests: mirror + bindings + lineage active
//! + a pending replay intent, in one transaction, *without* replaying (the worker does that).
#![allow(dead_code, clippy::unwrap_used)]

use edge_cloud_core::mirror::MirrorTable;
use edge_functions::store::lineage::{lock_lineage, schema_columns};
use edge_functions::store::mirror::ensure_mirror;
use uuid::Uuid;

use crate::common::Env;

/// Approval as the review API does it (mirror + bindings + active + a pending replay intent),
/// without replaying inside the approval: the worker must do that. Returns the rows staged at
/// the moment of approval (the approval holds the lineage lock, so this is exact).
pub async fn approve_with_intent(e: &Env, table: &str) -> i64 {
    let lineage = e.lineage_id(table).await;
    let mut c = e.deps.pool.get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    lock_lineage(&*tx, lineage).await.unwrap();
    let hash: String = tx
        .query_one(
            "SELECT current_schema_hash FROM edge_table_lineages WHERE id = $1",
            &[&lineage],
        )
        .await
        .unwrap()
        .get(0);
    let cols = schema_columns(&*tx, lineage, &hash).await.unwrap().unwrap();
    let t = MirrorTable::for_schema(&e.device.device_id, &cols);
    ensure_mirror(&*tx, &t).await.unwrap();
    for col in &t.columns {
        tx.execute(
            "INSERT INTO edge_column_bindings (lineage_id, schema_hash, source_column_name, \
                 action, mirror_table_name, mirror_column_name, mirror_type, pk_ordinal) \
             VALUES ($1, $2, $3, 'mirror', $4, $5, $6, $7)",
            &[
                &lineage,
                &hash,
                &col.source_name,
                &t.name,
                &col.name,
                &col.ty.sql(),
                &i32::try_from(col.pk_ordinal).unwrap(),
            ],
        )
        .await
        .unwrap();
    }
    tx.execute(
        "UPDATE edge_table_lineages SET status = 'active', pause_reason = NULL, \
             approved_schema_hash = $2, mirror_table_name = $3 WHERE id = $1",
        &[&lineage, &hash, &t.name],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE edge_schema_reviews SET state = 'approved' WHERE lineage_id = $1",
        &[&lineage],
    )
    .await
    .unwrap();
    tx.execute(
        "INSERT INTO edge_replay_intents (id, lineage_id, schema_hash, action_kind) \
         VALUES ($1, $2, $3, 'approve')",
        &[&Uuid::now_v7(), &lineage, &hash],
    )
    .await
    .unwrap();
    let staged: i64 = tx
        .query_one(
            "SELECT count(*) FROM edge_staged_rows WHERE lineage_id = $1",
            &[&lineage],
        )
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    staged
}
