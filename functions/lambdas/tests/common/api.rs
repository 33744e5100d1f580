//! The HTTP API driven in-process through the very router the `api` Lambda and the runner
//! serve: an HS256 token, `ORG-ID`, idempotency keys on POSTs. Tests add their own `impl T`
//! helpers beside these.

use edge_functions::api::auth::{mint, AuthConfig, Claims, MANAGE_DEVICES};
use edge_functions::api::{handle, Api};
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request};
use serde_json::Value;
use uuid::Uuid;

use super::{env, Env};

pub const SECRET: &[u8] = b"test-secret";

pub struct T {
    pub env: Env,
    pub api: Api,
    pub token: String,
}

pub fn token(org: Uuid, projects: Vec<Uuid>, manage: bool) -> String {
    mint(
        SECRET,
        &Claims {
            sub: "operator@test".into(),
            org_id: org,
            projects,
            permissions: if manage {
                vec![MANAGE_DEVICES.into()]
            } else {
                vec!["PROJECT_CAN_VIEW".into()]
            },
            exp: 4_000_000_000,
            iat: 0,
        },
    )
    .unwrap()
}

pub async fn t() -> T {
    let env = env().await;
    let api = Api::new(env.deps.pool.clone(), AuthConfig::hs256(SECRET.to_vec()));
    let token = token(env.device.org_id, vec![env.device.project_id], true);
    T { env, api, token }
}

/// A request: path under the project, its token and `ORG-ID` (fields open to tests that
/// change one).
pub struct Call<'a> {
    pub method: Method,
    pub path: String,
    pub token: Option<&'a str>,
    pub org: Option<String>,
    pub key: Option<String>,
    pub body: Option<String>,
}

impl T {
    pub fn base(&self) -> String {
        format!("/core/api/v1/projects/{}", self.env.device.project_id)
    }

    pub fn call(&self, method: Method, rel: &str) -> Call<'_> {
        Call {
            method,
            path: format!("{}{rel}", self.base()),
            token: Some(&self.token),
            org: Some(self.env.device.org_id.to_string()),
            key: None,
            body: None,
        }
    }

    pub async fn send(&self, c: Call<'_>) -> (StatusCode, Value) {
        let mut b = lambda_http::http::Request::builder()
            .method(c.method)
            .uri(c.path);
        if let Some(t) = c.token {
            b = b.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(o) = c.org {
            b = b.header("ORG-ID", o);
        }
        if let Some(k) = c.key {
            b = b.header("Idempotency-Key", k);
        }
        let req: Request = b
            .body(c.body.map(Body::Text).unwrap_or(Body::Empty))
            .unwrap();
        let resp = handle(&self.api, req).await;
        let status = resp.status();
        let body = match resp.body() {
            Body::Text(t) => serde_json::from_str(t).unwrap(),
            other => panic!("unexpected body {other:?}"),
        };
        (status, body)
    }

    pub async fn get(&self, rel: &str) -> (StatusCode, Value) {
        self.send(self.call(Method::GET, rel)).await
    }

    pub async fn post(&self, rel: &str, body: Value) -> (StatusCode, Value) {
        let mut c = self.call(Method::POST, rel);
        c.key = Some(Uuid::now_v7().to_string());
        c.body = Some(body.to_string());
        self.send(c).await
    }
}
