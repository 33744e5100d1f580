//! `edgectl lineages unblock ID --retry | --skip SEQ` (reliability.md §2): the operator's
//! decision about a table the device blocked itself, sent as
//! `POST /edge/lineages/{id}/unblock {"action","commit_seq"}`. `--retry` reads the blocking
//! entry's `commit_seq` from the lineage's `device_block` first; `--skip` names it, so an entry
//! is only ever dropped by the operator who saw its number.

use serde_json::{json, Value};

use crate::client::{ClientError, Connection};

/// What the operator decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Retry,
    Skip { commit_seq: i64 },
}

/// The request body for `decision` on the entry `commit_seq`.
pub fn body(decision: Decision, commit_seq: i64) -> Value {
    match decision {
        Decision::Retry => json!({"action": "retry", "commit_seq": commit_seq}),
        Decision::Skip { commit_seq } => json!({"action": "skip", "commit_seq": commit_seq}),
    }
}

/// Sends the decision; returns the route's `data` (`lineage_id`, `control_id`, `action`,
/// `commit_seq`).
pub fn run(
    conn: &Connection,
    lineage_id: &str,
    decision: Decision,
    idempotency_key: &str,
) -> Result<Value, ClientError> {
    let commit_seq = match decision {
        Decision::Skip { commit_seq } => commit_seq,
        Decision::Retry => {
            let lineage = conn.call("GET", &format!("/lineages/{lineage_id}"), None, None)?;
            lineage["lineage"]["device_block"]["commit_seq"]
                .as_i64()
                .ok_or_else(|| ClientError::Api {
                    status: 409,
                    code: "lineage_not_blocked".into(),
                    message: "the device has not blocked this lineage's table".into(),
                })?
        }
    };
    conn.call(
        "POST",
        &format!("/lineages/{lineage_id}/unblock"),
        Some(&body(decision, commit_seq)),
        Some(idempotency_key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_the_action_and_the_entry() {
        assert_eq!(
            body(Decision::Skip { commit_seq: 7 }, 7),
            json!({"action": "skip", "commit_seq": 7})
        );
        assert_eq!(
            body(Decision::Retry, 9),
            json!({"action": "retry", "commit_seq": 9})
        );
    }
}
