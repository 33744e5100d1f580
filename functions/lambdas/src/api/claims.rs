//! Where a token keeps the tenant scope: the configurable mapping of the `org_id`, `projects`
//! and `permissions` claims onto [`Claims`] (pure; `env.rs` and `edge-cloud run` read the
//! settings, `auth.rs` feeds it verified payloads or API Gateway's authorizer claims).
//!
//! Identity providers put custom claims in different places: Cognito as `custom:org_id` (a
//! string attribute) or `cognito:groups` (an array), access-token scopes as one string
//! `"edge/read edge/PROJECT_CAN_MANAGE_DEVICES"`, Auth0 under namespaced names such as
//! `https://edge-sync.example/org_id`, Keycloak nested as `realm_access.roles`. So:
//!
//! - **A claim path** (`EDGE_JWT_CLAIM_ORG`, `…_PROJECTS`, `…_PERMISSIONS`) is first looked up
//!   as one claim name, whole — names may contain `:`, `/` and `.`. Only when no claim has that
//!   name is it read as a dotted path: the longest leading part that names a claim holding an
//!   object, then the rest inside that object, by the same rule. `realm_access.roles` is
//!   `{"realm_access":{"roles":[…]}}`; `https://edge-sync.example/claims.org` is the claim of
//!   that exact name if the token has one, else `org` inside `https://edge-sync.example/claims`.
//! - **A list value** (projects, permissions) is an array of strings, or one string holding a
//!   JSON array, API Gateway's flattened `[a b]`, or items separated by spaces and/or commas
//!   (OAuth `scope`, a Cognito string attribute `"p1,p2"`).
//! - **The organization** is one string (or an array of exactly one string) holding a UUID.
//! - **The scope prefix** (`EDGE_JWT_SCOPE_PREFIX`, e.g. `edge/` for a Cognito resource server
//!   `edge`): when set, only permission values that start with it count, with it removed; the
//!   rest (`openid`, another resource server's scopes) are ignored.
//! - Missing `org` or `projects` claim: [`ClaimError::Missing`] (401). A missing permissions
//!   claim is an empty list: a read-only caller.
//!
//! API Gateway's JWT authorizer hands every claim over as a string: arrays as `[a b]`, nested
//! objects as JSON text or Go's `map[k:v …]`; both are read when descending a dotted path, the
//! latter best-effort (a value containing spaces is ambiguous there: prefer a flat claim).

use std::collections::HashMap;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::auth::Claims;

/// The environment variables naming each mapped claim.
pub const ORG_VAR: &str = "EDGE_JWT_CLAIM_ORG";
pub const PROJECTS_VAR: &str = "EDGE_JWT_CLAIM_PROJECTS";
pub const PERMISSIONS_VAR: &str = "EDGE_JWT_CLAIM_PERMISSIONS";
pub const SCOPE_PREFIX_VAR: &str = "EDGE_JWT_SCOPE_PREFIX";

/// The defaults: what `edge-cloud token` mints.
pub const DEFAULT_ORG: &str = "org_id";
pub const DEFAULT_PROJECTS: &str = "projects";
pub const DEFAULT_PERMISSIONS: &str = "permissions";

/// Longest claim value quoted back in an error message.
const QUOTE_MAX: usize = 48;

/// A mapped claim that is absent or unusable. The message names the claim as configured and
/// the variable that configures it, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("token has no claim {claim} ({var})")]
    Missing { claim: String, var: &'static str },
    #[error("claim {claim} ({var}) {problem}")]
    Invalid {
        claim: String,
        var: &'static str,
        problem: String,
    },
}

impl ClaimError {
    /// The machine-readable code of the 401 answer.
    pub fn code(&self) -> &'static str {
        match self {
            ClaimError::Missing { .. } => "claim_missing",
            ClaimError::Invalid { .. } => "claim_invalid",
        }
    }

    /// The claim at fault, as configured.
    pub fn claim(&self) -> &str {
        match self {
            ClaimError::Missing { claim, .. } | ClaimError::Invalid { claim, .. } => claim,
        }
    }
}

/// Which claims hold the tenant scope (module docs). Built once per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    org: String,
    projects: String,
    permissions: String,
    scope_prefix: Option<String>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            org: DEFAULT_ORG.to_owned(),
            projects: DEFAULT_PROJECTS.to_owned(),
            permissions: DEFAULT_PERMISSIONS.to_owned(),
            scope_prefix: None,
        }
    }
}

/// One of the three mapped claims.
#[derive(Debug, Clone, Copy)]
enum Mapped {
    Org,
    Projects,
    Permissions,
}

impl ClaimMapping {
    /// The mapping of these claim paths; a blank path keeps its default, a blank prefix is none.
    pub fn new(org: &str, projects: &str, permissions: &str, scope_prefix: Option<&str>) -> Self {
        let path = |p: &str, default: &str| {
            let p = p.trim();
            if p.is_empty() { default } else { p }.to_owned()
        };
        ClaimMapping {
            org: path(org, DEFAULT_ORG),
            projects: path(projects, DEFAULT_PROJECTS),
            permissions: path(permissions, DEFAULT_PERMISSIONS),
            scope_prefix: scope_prefix
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        }
    }

    pub fn org_claim(&self) -> &str {
        &self.org
    }

    pub fn projects_claim(&self) -> &str {
        &self.projects
    }

    pub fn permissions_claim(&self) -> &str {
        &self.permissions
    }

    pub fn scope_prefix(&self) -> Option<&str> {
        self.scope_prefix.as_deref()
    }

    /// How the permissions claim is read, for a 403 message: `scope (EDGE_JWT_CLAIM_PERMISSIONS,
    /// prefix edge/ stripped)`.
    pub fn describe_permissions(&self) -> String {
        match &self.scope_prefix {
            Some(p) => format!(
                "{} ({PERMISSIONS_VAR}; only values prefixed {p}, prefix removed)",
                self.permissions
            ),
            None => format!("{} ({PERMISSIONS_VAR})", self.permissions),
        }
    }

    fn path(&self, which: Mapped) -> (&str, &'static str) {
        match which {
            Mapped::Org => (&self.org, ORG_VAR),
            Mapped::Projects => (&self.projects, PROJECTS_VAR),
            Mapped::Permissions => (&self.permissions, PERMISSIONS_VAR),
        }
    }

    fn invalid(&self, which: Mapped, problem: impl Into<String>) -> ClaimError {
        let (claim, var) = self.path(which);
        ClaimError::Invalid {
            claim: claim.to_owned(),
            var,
            problem: problem.into(),
        }
    }

    fn missing(&self, which: Mapped) -> ClaimError {
        let (claim, var) = self.path(which);
        ClaimError::Missing {
            claim: claim.to_owned(),
            var,
        }
    }

    /// The claims of a verified token's payload (a JSON object). `exp` was checked by the
    /// verifier; it is copied here.
    pub fn from_payload(&self, payload: &Map<String, Value>) -> Result<Claims, ClaimError> {
        let org =
            lookup(payload, self.path(Mapped::Org).0).ok_or_else(|| self.missing(Mapped::Org))?;
        let projects = lookup(payload, self.path(Mapped::Projects).0)
            .ok_or_else(|| self.missing(Mapped::Projects))?;
        let permissions = lookup(payload, self.path(Mapped::Permissions).0);
        Ok(Claims {
            sub: payload
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            org_id: self.org_id(&org)?,
            projects: self.projects(&projects)?,
            permissions: match permissions {
                Some(p) => self.permissions(&p)?,
                None => Vec::new(),
            },
            exp: payload.get("exp").map_or(0, seconds),
            iat: payload.get("iat").map_or(0, seconds),
        })
    }

    /// The claims API Gateway's JWT authorizer verified, every value flattened to a string.
    pub fn from_gateway(&self, map: &HashMap<String, String>) -> Result<Claims, ClaimError> {
        let payload: Map<String, Value> = map
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        self.from_payload(&payload)
    }

    fn org_id(&self, v: &Value) -> Result<Uuid, ClaimError> {
        let text = match v {
            Value::String(s) => s.as_str(),
            Value::Array(a) if a.len() == 1 => a[0]
                .as_str()
                .ok_or_else(|| self.invalid(Mapped::Org, "is not a string"))?,
            _ => return Err(self.invalid(Mapped::Org, "is not a string")),
        };
        // API Gateway flattens a one-element array to `[x]`.
        let text = text.trim();
        let text = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text)
            .trim();
        Uuid::parse_str(text)
            .map_err(|_| self.invalid(Mapped::Org, format!("is not a UUID: {}", quote(text))))
    }

    fn projects(&self, v: &Value) -> Result<Vec<Uuid>, ClaimError> {
        list(v)
            .map_err(|p| self.invalid(Mapped::Projects, p))?
            .iter()
            .map(|p| {
                Uuid::parse_str(p).map_err(|_| {
                    self.invalid(
                        Mapped::Projects,
                        format!("holds {}, which is not a UUID", quote(p)),
                    )
                })
            })
            .collect()
    }

    fn permissions(&self, v: &Value) -> Result<Vec<String>, ClaimError> {
        let items = list(v).map_err(|p| self.invalid(Mapped::Permissions, p))?;
        Ok(match &self.scope_prefix {
            None => items,
            Some(prefix) => items
                .iter()
                .filter_map(|i| i.strip_prefix(prefix.as_str()))
                .filter(|i| !i.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// The value at `path` in `claims` (module docs: the whole name first, then the longest
/// leading part naming an object).
fn lookup(claims: &Map<String, Value>, path: &str) -> Option<Value> {
    if let Some(v) = claims.get(path) {
        return Some(v.clone());
    }
    for (i, _) in path.rmatch_indices('.') {
        let (head, rest) = (&path[..i], &path[i + 1..]);
        if head.is_empty() || rest.is_empty() {
            continue;
        }
        if let Some(inner) = claims.get(head).and_then(as_object) {
            if let Some(v) = lookup(&inner, rest) {
                return Some(v);
            }
        }
    }
    None
}

/// A claim's value as an object: an object, or one flattened to JSON text or Go's `map[…]`.
fn as_object(v: &Value) -> Option<Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m.clone()),
        Value::String(s) => {
            let s = s.trim();
            match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(m)) => Some(m),
                _ => go_map(s),
            }
        }
        _ => None,
    }
}

/// Go's `fmt` rendering of a map, as API Gateway flattens a nested claim:
/// `map[k:v list:[a b] inner:map[x:y]]`. Values become strings (lists stay `[a b]`, read by
/// [`list`]; inner maps stay `map[…]`, read by [`as_object`] on the way down).
fn go_map(s: &str) -> Option<Map<String, Value>> {
    let body = s.strip_prefix("map[")?.strip_suffix(']')?;
    let mut out = Map::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let colon = rest.find(':')?;
        let key = &rest[..colon];
        if key.is_empty() || key.contains(' ') {
            return None;
        }
        let after = &rest[colon + 1..];
        // The value ends at the first space outside brackets.
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.checked_sub(1)?,
                ' ' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        out.insert(key.to_owned(), Value::String(after[..end].to_owned()));
        rest = after[end..].trim_start();
    }
    Some(out)
}

/// A list claim's items (module docs), or why the value is not a list of strings.
fn list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(|s| s.trim().to_owned())
                    .ok_or_else(|| "is not a list of strings".to_owned())
            })
            .filter(|i| i.as_ref().map_or(true, |s| !s.is_empty()))
            .collect(),
        Value::String(s) => Ok(split_list(s)),
        _ => Err("is not a list of strings or a string".into()),
    }
}

/// One string holding a list: JSON array text, `[a b]`, or items separated by spaces/commas.
fn split_list(s: &str) -> Vec<String> {
    let s = s.trim();
    if let Ok(v) = serde_json::from_str::<Vec<String>>(s) {
        return v
            .into_iter()
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .collect();
    }
    let inner = s
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(s);
    inner
        .split([' ', ','])
        .map(|p| p.trim().trim_matches('"'))
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A number of seconds (`exp`, `iat`): a JSON number or, from API Gateway, digits.
fn seconds(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .unwrap_or(0),
        Value::String(s) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

/// `s` quoted for a message, cut at [`QUOTE_MAX`] characters.
fn quote(s: &str) -> String {
    if s.chars().count() > QUOTE_MAX {
        let cut: String = s.chars().take(QUOTE_MAX).collect();
        format!("{cut:?}…")
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const ORG: &str = "0193a000-0000-7000-8000-0000000000a1";
    const P1: &str = "0193a000-0000-7000-8000-0000000000b1";
    const P2: &str = "0193a000-0000-7000-8000-0000000000b2";

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn uuid(s: &str) -> Uuid {
        Uuid::parse_str(s).unwrap()
    }

    #[test]
    fn defaults_read_what_edge_cloud_token_mints() {
        let m = ClaimMapping::default();
        let c = m
            .from_payload(&obj(json!({
                "sub": "op", "org_id": ORG, "projects": [P1, P2],
                "permissions": ["PROJECT_CAN_MANAGE_DEVICES"], "exp": 10, "iat": 5
            })))
            .unwrap();
        assert_eq!(c.sub, "op");
        assert_eq!(c.org_id, uuid(ORG));
        assert_eq!(c.projects, vec![uuid(P1), uuid(P2)]);
        assert_eq!(c.permissions, vec!["PROJECT_CAN_MANAGE_DEVICES"]);
        assert_eq!((c.exp, c.iat), (10, 5));
        // Blank settings keep the defaults.
        assert_eq!(ClaimMapping::new(" ", "", "", Some(" ")), m);
    }

    #[test]
    fn cognito_id_token_custom_attributes_and_groups() {
        let m = ClaimMapping::new("custom:org_id", "custom:projects", "cognito:groups", None);
        let c = m
            .from_payload(&obj(json!({
                "custom:org_id": ORG,
                "custom:projects": format!("{P1},{P2}"),
                "cognito:groups": ["PROJECT_CAN_MANAGE_DEVICES", "viewers"],
                "token_use": "id", "exp": 1
            })))
            .unwrap();
        assert_eq!(c.projects, vec![uuid(P1), uuid(P2)]);
        assert_eq!(c.permissions, vec!["PROJECT_CAN_MANAGE_DEVICES", "viewers"]);
    }

    #[test]
    fn scope_strings_with_a_resource_server_prefix() {
        let m = ClaimMapping::new("custom:org_id", "custom:projects", "scope", Some("edge/"));
        let c = m
            .from_payload(&obj(json!({
                "custom:org_id": ORG, "custom:projects": P1,
                "scope": "openid edge/read  other/PROJECT_CAN_MANAGE_DEVICES edge/PROJECT_CAN_MANAGE_DEVICES edge/",
            })))
            .unwrap();
        // Unprefixed and other resource servers' scopes do not count.
        assert_eq!(c.permissions, vec!["read", "PROJECT_CAN_MANAGE_DEVICES"]);
        // Without a prefix the scope values are taken as they are.
        let plain = ClaimMapping::new("custom:org_id", "custom:projects", "scope", None);
        let c = plain
            .from_payload(&obj(json!({
                "custom:org_id": ORG, "custom:projects": P1, "scope": "a, b c"
            })))
            .unwrap();
        assert_eq!(c.permissions, vec!["a", "b", "c"]);
    }

    #[test]
    fn whole_names_first_then_dotted_paths() {
        let m = ClaimMapping::new(
            "https://edge-sync.example/org_id",
            "https://edge-sync.example/claims.projects",
            "realm_access.roles",
            None,
        );
        let c = m
            .from_payload(&obj(json!({
                "https://edge-sync.example/org_id": ORG,
                "https://edge-sync.example/claims": {"projects": [P1]},
                "realm_access": {"roles": ["PROJECT_CAN_MANAGE_DEVICES"]},
            })))
            .unwrap();
        assert_eq!(c.org_id, uuid(ORG));
        assert_eq!(c.projects, vec![uuid(P1)]);
        assert_eq!(c.permissions, vec!["PROJECT_CAN_MANAGE_DEVICES"]);
        // A claim whose whole name matches wins over the nested one.
        let c = m
            .from_payload(&obj(json!({
                "https://edge-sync.example/org_id": ORG,
                "https://edge-sync.example/claims.projects": [P2],
                "https://edge-sync.example/claims": {"projects": [P1]},
            })))
            .unwrap();
        assert_eq!(c.projects, vec![uuid(P2)]);
        // Deeper nesting, and a dotted key inside an object.
        let m = ClaimMapping::new("a.b.c", "x.y.z", "permissions", None);
        let c = m
            .from_payload(&obj(json!({
                "a": {"b": {"c": ORG}}, "x": {"y.z": [P1]},
            })))
            .unwrap();
        assert_eq!((c.org_id, c.projects), (uuid(ORG), vec![uuid(P1)]));
        assert!(c.permissions.is_empty());
    }

    #[test]
    fn missing_and_invalid_claims_are_named() {
        let m = ClaimMapping::new("custom:org_id", "custom:projects", "scope", None);
        let err = m
            .from_payload(&obj(json!({"custom:projects": P1})))
            .unwrap_err();
        assert_eq!(err.code(), "claim_missing");
        assert_eq!(
            err.to_string(),
            "token has no claim custom:org_id (EDGE_JWT_CLAIM_ORG)"
        );
        let err = m
            .from_payload(&obj(json!({"custom:org_id": ORG})))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "token has no claim custom:projects (EDGE_JWT_CLAIM_PROJECTS)"
        );
        let err = m
            .from_payload(&obj(
                json!({"custom:org_id": "acme", "custom:projects": P1}),
            ))
            .unwrap_err();
        assert_eq!(err.code(), "claim_invalid");
        assert_eq!(err.claim(), "custom:org_id");
        assert_eq!(
            err.to_string(),
            "claim custom:org_id (EDGE_JWT_CLAIM_ORG) is not a UUID: \"acme\""
        );
        let err = m
            .from_payload(&obj(json!({"custom:org_id": 7, "custom:projects": P1})))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "claim custom:org_id (EDGE_JWT_CLAIM_ORG) is not a string"
        );
        let err = m
            .from_payload(&obj(
                json!({"custom:org_id": ORG, "custom:projects": format!("{P1} site-7")}),
            ))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "claim custom:projects (EDGE_JWT_CLAIM_PROJECTS) holds \"site-7\", which is not a UUID"
        );
        let err = m
            .from_payload(&obj(
                json!({"custom:org_id": ORG, "custom:projects": P1, "scope": [1]}),
            ))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "claim scope (EDGE_JWT_CLAIM_PERMISSIONS) is not a list of strings"
        );
        // A path through a non-object is missing, not a crash.
        let m = ClaimMapping::new("a.b", "projects", "permissions", None);
        assert_eq!(
            m.from_payload(&obj(json!({"a": "x", "projects": []})))
                .unwrap_err()
                .code(),
            "claim_missing"
        );
        // Long values are cut in messages.
        let long = "x".repeat(500);
        let msg = ClaimMapping::default()
            .from_payload(&obj(json!({"org_id": long, "projects": []})))
            .unwrap_err()
            .to_string();
        assert!(msg.len() < 120, "{msg}");
    }

    #[test]
    fn gateway_flattened_values() {
        let m = ClaimMapping::default();
        let mut g = HashMap::new();
        g.insert("sub".to_owned(), "op".to_owned());
        g.insert("org_id".to_owned(), ORG.to_owned());
        g.insert("projects".to_owned(), format!("[{P1} {P2}]"));
        g.insert(
            "permissions".to_owned(),
            "[PROJECT_CAN_MANAGE_DEVICES]".to_owned(),
        );
        g.insert("exp".to_owned(), "4102444800".to_owned());
        let c = m.from_gateway(&g).unwrap();
        assert_eq!(c.projects, vec![uuid(P1), uuid(P2)]);
        assert_eq!(c.permissions, vec!["PROJECT_CAN_MANAGE_DEVICES"]);
        assert_eq!(c.exp, 4_102_444_800);
        // JSON text, a one-element array for the org.
        g.insert("projects".to_owned(), format!("[\"{P2}\"]"));
        g.insert("org_id".to_owned(), format!("[{ORG}]"));
        let c = m.from_gateway(&g).unwrap();
        assert_eq!((c.org_id, c.projects), (uuid(ORG), vec![uuid(P2)]));
        // Nested claims as JSON text and as Go's map rendering.
        let m = ClaimMapping::new("org.id", "realm_access.roles", "realm_access.perms", None);
        let mut g = HashMap::new();
        g.insert("org".to_owned(), format!("{{\"id\":\"{ORG}\"}}"));
        g.insert(
            "realm_access".to_owned(),
            format!("map[perms:[PROJECT_CAN_MANAGE_DEVICES x] roles:[{P1} {P2}]]"),
        );
        let c = m.from_gateway(&g).unwrap();
        assert_eq!(c.org_id, uuid(ORG));
        assert_eq!(c.projects, vec![uuid(P1), uuid(P2)]);
        assert_eq!(c.permissions, vec!["PROJECT_CAN_MANAGE_DEVICES", "x"]);
        g.insert("org".to_owned(), format!("map[inner:map[x:1] id:{ORG}]"));
        assert_eq!(m.from_gateway(&g).unwrap().org_id, uuid(ORG));
        // Malformed map text is no object: the claim is missing.
        g.insert("org".to_owned(), "map[id".to_owned());
        assert_eq!(m.from_gateway(&g).unwrap_err().code(), "claim_missing");
    }

    #[test]
    fn go_map_parsing() {
        let m = go_map("map[a:1 b:[x y] c:map[d:e]]").unwrap();
        assert_eq!(m["a"], "1");
        assert_eq!(m["b"], "[x y]");
        assert_eq!(m["c"], "map[d:e]");
        assert!(go_map("map[]").unwrap().is_empty());
        assert!(go_map("map[a:]]").is_none());
        assert!(go_map("[a b]").is_none());
    }
}
