//! Who is calling: Bearer JWT verification (HS256 secret or RS256 JWKS) or, in AWS, the claims
//! API Gateway's JWT authorizer already verified; and minting development tokens.
//!
//! The claims carry the tenant scope: `org_id`, the `projects` the caller may see and the
//! `permissions` it holds (`PROJECT_CAN_MANAGE_DEVICES` for every mutation). Nothing else —
//! no header, no body field — can widen that scope (DESIGN invariant 3). Which token claims
//! hold them is the configured [`ClaimMapping`] (`super::claims`).

use std::collections::HashMap;
use std::fmt;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use super::claims::{ClaimError, ClaimMapping};

/// The permission every mutation needs.
pub const MANAGE_DEVICES: &str = "PROJECT_CAN_MANAGE_DEVICES";

/// The verified identity of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub org_id: Uuid,
    #[serde(default)]
    pub projects: Vec<Uuid>,
    #[serde(default)]
    pub permissions: Vec<String>,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
}

impl Claims {
    pub fn may_see(&self, project_id: Uuid) -> bool {
        self.projects.contains(&project_id)
    }

    pub fn has(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }
}

/// How tokens are verified. Built once per process from the environment by the binary.
#[derive(Clone, Default)]
pub struct AuthConfig {
    hs256_secret: Option<Vec<u8>>,
    jwks: Option<JwkSet>,
    /// Accepted `iss` values; unchecked when empty. A JWKS is usually an identity provider's,
    /// shared by every application it signs for: issuer and audience are what tie a token
    /// to this API.
    issuers: Vec<String>,
    /// Accepted `aud` values (or `client_id`, for tokens without `aud`); unchecked when empty.
    audiences: Vec<String>,
    /// Only the `api` Lambda sets this: there API Gateway's JWT authorizer has verified the
    /// token and the request context carries its claims. Locally no request context exists.
    pub trust_gateway_claims: bool,
    /// Which claims hold the org, projects and permissions.
    claim_mapping: ClaimMapping,
}

// Secrets never reach logs.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks_keys", &self.jwks.as_ref().map(|j| j.keys.len()))
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("trust_gateway_claims", &self.trust_gateway_claims)
            .field("claim_mapping", &self.claim_mapping)
            .finish()
    }
}

/// A configuration or token problem.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization: Bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("JWKS: {0}")]
    Jwks(String),
    #[error("no verification key configured (set EDGE_JWT_SECRET or EDGE_JWT_JWKS)")]
    NotConfigured,
    /// A verified token whose org/projects/permissions claim is absent or unusable.
    #[error(transparent)]
    Claim(#[from] ClaimError),
}

impl AuthConfig {
    /// HS256 with a shared secret (the local runner and development).
    pub fn hs256(secret: impl Into<Vec<u8>>) -> Self {
        AuthConfig {
            hs256_secret: Some(secret.into()),
            ..AuthConfig::default()
        }
    }

    /// Adds RS256 keys from a JWKS document (`{"keys": [...]}`).
    pub fn with_jwks_json(mut self, json: &str) -> Result<Self, AuthError> {
        let set: JwkSet = serde_json::from_str(json).map_err(|e| AuthError::Jwks(e.to_string()))?;
        self.jwks = Some(set);
        Ok(self)
    }

    /// Adds RS256 keys from a JWKS file (what `EDGE_JWT_JWKS_FILE` names).
    pub fn with_jwks_file(self, path: &std::path::Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthError::Jwks(format!("reading {}: {e}", path.display())))?;
        self.with_jwks_json(&text)
    }

    /// Accepts only tokens whose `iss` is `issuer` (call again to accept several).
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.push(issuer.into());
        self
    }

    /// Accepts only tokens whose `aud` holds `audience`, or without `aud` whose `client_id` is
    /// `audience` (a Cognito access token); call again to accept several.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// The optional `EDGE_JWT_ISSUER` / `EDGE_JWT_AUDIENCE` checks, as both the `api` Lambda
    /// and `edge-cloud run` configure them (empty or unset: no check).
    pub fn with_expected_claims_from_env(mut self) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(issuer) = var("EDGE_JWT_ISSUER") {
            self = self.with_issuer(issuer);
        }
        if let Some(audience) = var("EDGE_JWT_AUDIENCE") {
            self = self.with_audience(audience);
        }
        self
    }

    /// Reads the tenant scope from these claims (default: `org_id`, `projects`, `permissions`).
    pub fn with_claim_mapping(mut self, mapping: ClaimMapping) -> Self {
        self.claim_mapping = mapping;
        self
    }

    pub fn claim_mapping(&self) -> &ClaimMapping {
        &self.claim_mapping
    }

    pub fn is_configured(&self) -> bool {
        self.hs256_secret.is_some() || self.jwks.is_some() || self.trust_gateway_claims
    }

    /// Verifies a compact JWT (signature, `exp`, `nbf`, configured `iss`/`aud`) and returns
    /// its claims, read through the claim mapping.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => {
                let secret = self.hs256_secret.as_ref().ok_or(AuthError::NotConfigured)?;
                DecodingKey::from_secret(secret)
            }
            Algorithm::RS256 => {
                let set = self.jwks.as_ref().ok_or(AuthError::NotConfigured)?;
                let jwk = match &header.kid {
                    Some(kid) => set.find(kid),
                    None if set.keys.len() == 1 => set.keys.first(),
                    None => None,
                }
                .ok_or_else(|| AuthError::Invalid("no JWKS key matches the token's kid".into()))?;
                rs256_key(jwk)?
            }
            // Refusing every other algorithm (none, HS384, …) closes algorithm-confusion holes.
            other => {
                return Err(AuthError::Invalid(format!(
                    "algorithm {other:?} is not accepted"
                )))
            }
        };
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.leeway = 30;
        validation.validate_nbf = true;
        // The audience is checked below, on the payload: a Cognito access token carries its
        // app client in `client_id` instead of `aud` (API Gateway's JWT authorizer accepts
        // either), which jsonwebtoken's own check cannot express.
        validation.validate_aud = false;
        // A configured claim must also be present: jsonwebtoken only compares an `iss` that a
        // token carries, so without this a token that omits it passed (found by the RS256
        // test).
        let mut required = vec!["exp"];
        if !self.issuers.is_empty() {
            validation.set_issuer(&self.issuers);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let payload =
            decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
                .map_err(|e| AuthError::Invalid(e.to_string()))?
                .claims;
        self.check_audience(&payload)?;
        Ok(self.claim_mapping.from_payload(&payload)?)
    }

    /// With audiences configured: the token's `aud` (a string or an array) holds one of them,
    /// or, when it has no `aud`, its `client_id` is one (Cognito access tokens).
    fn check_audience(
        &self,
        payload: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), AuthError> {
        use serde_json::Value;
        if self.audiences.is_empty() {
            return Ok(());
        }
        let accepted = |v: &Value| {
            v.as_str()
                .is_some_and(|a| self.audiences.iter().any(|x| x == a))
        };
        let ok = match (payload.get("aud"), payload.get("client_id")) {
            (Some(Value::Array(auds)), _) => auds.iter().any(accepted),
            (Some(aud), _) => accepted(aud),
            (None, Some(client_id)) => accepted(client_id),
            (None, None) => {
                return Err(AuthError::Invalid(
                    "the token has neither aud nor client_id (EDGE_JWT_AUDIENCE is set)".into(),
                ))
            }
        };
        if ok {
            Ok(())
        } else {
            Err(AuthError::Invalid(
                "the token's aud/client_id is not an accepted audience (EDGE_JWT_AUDIENCE)".into(),
            ))
        }
    }

    /// The claims API Gateway's JWT authorizer verified (every value flattened to a string:
    /// arrays become `[a b]` or JSON text, numbers become digits), read through the mapping.
    pub fn gateway_claims(&self, map: &HashMap<String, String>) -> Result<Claims, AuthError> {
        Ok(self.claim_mapping.from_gateway(map)?)
    }
}

/// The verification key of a JWKS entry for an RS256 token. A key published for another
/// algorithm (`alg`) or for encryption (`use: enc`) is refused rather than tried: the identity
/// provider said what the key is for.
fn rs256_key(jwk: &Jwk) -> Result<DecodingKey, AuthError> {
    if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
        return Err(AuthError::Invalid(
            "the token's JWKS key is not an RSA key".into(),
        ));
    }
    if jwk
        .common
        .key_algorithm
        .is_some_and(|a| a != KeyAlgorithm::RS256)
    {
        return Err(AuthError::Invalid(
            "the token's JWKS key is not published for RS256".into(),
        ));
    }
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err(AuthError::Invalid(
            "the token's JWKS key is an encryption key".into(),
        ));
    }
    DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Jwks(e.to_string()))
}

/// Signs a development token (HS256) — `edge-cloud token` and the tests.
pub fn mint(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "op".into(),
            org_id: Uuid::nil(),
            projects: vec![Uuid::max()],
            permissions: vec![MANAGE_DEVICES.into()],
            exp,
            iat: 0,
        }
    }

    #[test]
    fn hs256_round_trip_and_refusals() {
        let cfg = AuthConfig::hs256(b"s3cret".to_vec());
        let t = mint(b"s3cret", &claims(u64::MAX / 2)).unwrap();
        assert_eq!(cfg.verify(&t).unwrap(), claims(u64::MAX / 2));
        let wrong = mint(b"other", &claims(u64::MAX / 2)).unwrap();
        assert!(cfg.verify(&wrong).is_err());
        let expired = mint(b"s3cret", &claims(1)).unwrap();
        assert!(cfg.verify(&expired).is_err());
        assert!(cfg.verify("garbage").is_err());
        // RS256 without a JWKS is refused, not accepted.
        assert!(AuthConfig::default().verify(&t).is_err());
    }

    #[test]
    fn gateway_claims_are_parsed_from_flattened_strings() {
        let cfg = AuthConfig::default();
        let mut m = HashMap::new();
        m.insert("sub".into(), "op".into());
        m.insert("org_id".into(), Uuid::nil().to_string());
        m.insert(
            "projects".into(),
            format!("[{} {}]", Uuid::nil(), Uuid::max()),
        );
        m.insert("permissions".into(), "[PROJECT_CAN_MANAGE_DEVICES]".into());
        let c = cfg.gateway_claims(&m).unwrap();
        assert_eq!(c.projects.len(), 2);
        assert!(c.has(MANAGE_DEVICES));
        m.insert("projects".into(), format!("[\"{}\"]", Uuid::max()));
        assert_eq!(cfg.gateway_claims(&m).unwrap().projects, vec![Uuid::max()]);
        m.remove("org_id");
        assert!(cfg.gateway_claims(&m).is_err());
    }
}
