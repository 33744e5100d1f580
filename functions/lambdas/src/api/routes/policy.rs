//! The project's replication policy: read and patch.

use std::sync::Arc;

use axum::extract::State;

use edge_cloud_store::policy as policy_store;

use crate::api::answer::{Answer, Success};
use crate::api::body::PolicyPatchBody;
use crate::api::docs::Envelope;
use crate::api::extract::Read;
use crate::api::mutation::Mutation;
use crate::api::Api;

/// The project policy (production defaults until patched).
#[utoipa::path(get, path = "/core/api/v1/projects/{project_id}/edge/policy", tag = "policy",
    params(("project_id" = Uuid, Path)),
    responses((status = 200, body = inline(Envelope<policy_store::PolicyView>))))]
pub async fn get_policy(read: Read) -> Answer {
    read.params(&[])?;
    Ok(Success::data(
        policy_store::policy_view(read.db(), read.scope).await?,
    ))
}

/// Changes the project policy.
#[utoipa::path(patch, path = "/core/api/v1/projects/{project_id}/edge/policy", tag = "policy",
    params(("project_id" = Uuid, Path)),
    request_body = PolicyPatchBody,
    responses((status = 200, body = inline(Envelope<policy_store::PolicyView>))))]
pub async fn patch_policy(State(api): State<Arc<Api>>, m: Mutation<PolicyPatchBody>) -> Answer {
    m.commit(&api, None, |tx, s, _, b| {
        Box::pin(async move {
            let patch = b.patch();
            Ok(Success::data(
                policy_store::patch_policy(tx, s, &patch).await?,
            ))
        })
    })
    .await
}
