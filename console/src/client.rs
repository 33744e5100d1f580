//! The HTTP API client (console.md §1, §3): where the API is and who calls it, one request
//! answered as the envelope's `data`, and errors with their exit codes.

use serde_json::Value;
use thiserror::Error;

/// Where the API is and who calls it (flags > `EDGECTL_URL`, `EDGECTL_TOKEN`, `EDGECTL_ORG`,
/// `EDGECTL_PROJECT`; the URL defaults to `http://127.0.0.1:8080`).
#[derive(Clone)]
pub struct Connection {
    pub url: String,
    pub token: String,
    pub org: String,
    pub project: String,
    pub timeout: std::time::Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("org", &self.org)
            .field("project", &self.project)
            .finish()
    }
}

/// A failed call, as console.md §3 reports it.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Missing settings or a bad argument (exit 2, or 5 for a missing token).
    #[error("{message}")]
    Usage { message: String, exit: i32 },
    /// The API answered with an error envelope.
    #[error("{message} [{code}, HTTP {status}]")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer, or one that is not the API's (exit 1).
    #[error("{0}")]
    Transport(String),
}

impl ClientError {
    /// The exit code of console.md §3.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage { exit, .. } => *exit,
            ClientError::Api { status, .. } => exit_code_of(*status),
            ClientError::Transport(_) => 1,
        }
    }

    /// A hint printed after the error line.
    pub fn hint(&self, url: &str) -> Option<String> {
        match self {
            ClientError::Api { status: 401, .. } => Some("run `edgectl login`".into()),
            ClientError::Transport(_) => Some(format!("is `edge-cloud run` running at {url}?")),
            _ => None,
        }
    }

    /// `{"error":{"code","message","status"}}` for `--json`.
    pub fn to_json(&self) -> Value {
        match self {
            ClientError::Api {
                status,
                code,
                message,
            } => serde_json::json!({"error": {"code": code, "message": message, "status": status}}),
            other => {
                serde_json::json!({"error": {"code": "client", "message": other.to_string(), "status": null}})
            }
        }
    }
}

/// Exit code for an HTTP error status (console.md §3).
pub fn exit_code_of(status: u16) -> i32 {
    match status {
        400 | 405 => 2,
        404 => 3,
        409 | 422 => 4,
        401 | 403 => 5,
        _ => 1,
    }
}

impl Connection {
    /// From flags (`Some`) and the environment.
    pub fn resolve(
        url: Option<String>,
        token: Option<String>,
        org: Option<String>,
        project: Option<String>,
        timeout: std::time::Duration,
    ) -> Result<Connection, ClientError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let url = url
            .or_else(|| env("EDGECTL_URL"))
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token = token
            .or_else(|| env("EDGECTL_TOKEN"))
            .ok_or(ClientError::Usage {
                message: "no token: give --token or EDGECTL_TOKEN".into(),
                exit: 5,
            })?;
        let need = |v: Option<String>, flag: &str, var: &str| {
            v.or_else(|| env(var)).ok_or(ClientError::Usage {
                message: format!("no {flag}: give --{flag} or {var}"),
                exit: 2,
            })
        };
        Ok(Connection {
            url: url.trim_end_matches('/').to_owned(),
            token,
            org: need(org, "org", "EDGECTL_ORG")?,
            project: need(project, "project", "EDGECTL_PROJECT")?,
            timeout,
        })
    }

    /// `…/core/api/v1/projects/{project}/edge{rel}`.
    pub fn edge_url(&self, rel: &str) -> String {
        format!(
            "{}/core/api/v1/projects/{}/edge{rel}",
            self.url, self.project
        )
    }

    /// One request; `Ok` is the envelope's `data`. A mutation (`body` given) carries
    /// `idempotency_key`; connection errors and 5xx are retried 3 times with the same key.
    pub fn call(
        &self,
        method: &str,
        rel: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let agent = ureq::AgentBuilder::new().timeout(self.timeout).build();
        let mut last = ClientError::Transport("no attempt".into());
        for _ in 0..4 {
            let mut req = agent
                .request(method, &self.edge_url(rel))
                .set("Authorization", &format!("Bearer {}", self.token))
                .set("ORG-ID", &self.org);
            if let Some(k) = idempotency_key {
                req = req.set("Idempotency-Key", k);
            }
            let answer = match body {
                Some(b) => req
                    .set("Content-Type", "application/json")
                    .send_string(&b.to_string()),
                None => req.call(),
            };
            let (status, text) = match answer {
                Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
                Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
                Err(e) => {
                    last = ClientError::Transport(e.to_string());
                    continue;
                }
            };
            let doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if (200..300).contains(&status) {
                return Ok(doc.get("data").cloned().unwrap_or(Value::Null));
            }
            let err = ClientError::Api {
                status,
                code: doc["error"]["code"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_owned(),
                message: doc["error"]["message"]
                    .as_str()
                    .unwrap_or("the API answered with an error")
                    .to_owned(),
            };
            if status < 500 {
                return Err(err);
            }
            last = err;
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_the_documented_exit_codes() {
        let codes: Vec<i32> = [400, 405, 404, 409, 422, 401, 403, 500, 502]
            .into_iter()
            .map(exit_code_of)
            .collect();
        assert_eq!(codes, vec![2, 2, 3, 4, 4, 5, 5, 1, 1]);
    }
}
