//! Tenant fields a device must never send (spec §2).
//!
//! Tenant scope comes from the authenticated MQTT session only. Ingress strips these top-level
//! keys and records that it did; a worker that still finds one rejects the payload
//! (`envelope_unstripped_tenant_fields`) because it means the ingress path was bypassed.
//! Only top-level keys count: a user column called `device_id` inside `row` is ordinary data.

use serde_json::Value;

/// Keys ingress removes from every device payload.
pub const FORBIDDEN_TENANT_FIELDS: [&str; 4] = ["device_id", "org_id", "project_id", "fleet_id"];

/// Removes forbidden top-level keys; returns the removed keys, sorted. Non-objects are untouched.
pub fn strip_forbidden_fields(payload: &mut Value) -> Vec<String> {
    let mut removed = Vec::new();
    if let Value::Object(map) = payload {
        for key in FORBIDDEN_TENANT_FIELDS {
            if map.remove(key).is_some() {
                removed.push(key.to_owned());
            }
        }
    }
    removed.sort();
    removed
}

/// Forbidden top-level keys present in `payload`, sorted.
pub fn forbidden_fields_present(payload: &Value) -> Vec<String> {
    let mut present: Vec<String> = match payload {
        Value::Object(map) => FORBIDDEN_TENANT_FIELDS
            .iter()
            .filter(|key| map.contains_key(**key))
            .map(|key| (*key).to_owned())
            .collect(),
        _ => Vec::new(),
    };
    present.sort();
    present
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strips_only_top_level_keys() {
        let mut v = json!({"org_id": "x", "device_id": "y", "rows": [{"row": {"device_id": 1}}]});
        assert_eq!(forbidden_fields_present(&v), ["device_id", "org_id"]);
        assert_eq!(strip_forbidden_fields(&mut v), ["device_id", "org_id"]);
        assert!(forbidden_fields_present(&v).is_empty());
        assert_eq!(v, json!({"rows": [{"row": {"device_id": 1}}]}));
        let mut not_object = json!([{"org_id": 1}]);
        assert!(strip_forbidden_fields(&mut not_object).is_empty());
    }
}
