//! Secrets by ARN: Secrets Manager (`arn:aws:secretsmanager:…`) or an SSM parameter
//! (`arn:aws:ssm:…:parameter/…`, SecureString decrypted), chosen by the ARN itself so the
//! template decides where a secret lives without a second setting.
//!
//! Lambdas read `EDGE_DATABASE_SECRET_ARN` (and optionally `EDGE_JWT_SECRET_ARN`); a local
//! `cargo lambda watch` has no AWS account, so a plain `EDGE_DATABASE_URL` / `DATABASE_URL`
//! (and `EDGE_JWT_SECRET`) is used when no ARN is set ([`crate::env`] reads which).

use std::fmt;

use aws_config::SdkConfig;

use super::config::LazySdk;
use super::AwsError;

/// A secret value; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a secret ARN points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    SecretsManager {
        arn: String,
    },
    /// SSM wants the parameter *name* (`/edge/db-url`), which is the ARN's resource part.
    Ssm {
        name: String,
    },
}

impl SecretRef {
    pub fn parse(arn: &str) -> Result<Self, AwsError> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        match parts.as_slice() {
            ["arn", _, "secretsmanager", _, _, rest] if rest.starts_with("secret:") => {
                Ok(SecretRef::SecretsManager {
                    arn: arn.to_owned(),
                })
            }
            ["arn", _, "ssm", _, _, rest] => match rest.strip_prefix("parameter") {
                // `parameter/edge/db` → `/edge/db`; a name without a slash (`parameter/db`) is
                // addressed without the leading slash.
                Some(name) if name.len() > 1 => {
                    let name = name.trim_start_matches('/');
                    let name = if name.contains('/') {
                        format!("/{name}")
                    } else {
                        name.to_owned()
                    };
                    Ok(SecretRef::Ssm { name })
                }
                _ => Err(AwsError::Config(format!("{arn}: not an SSM parameter ARN"))),
            },
            _ => Err(AwsError::Config(format!(
                "{arn}: expected a Secrets Manager secret or SSM parameter ARN"
            ))),
        }
    }
}

/// Fetches the secret's current value.
pub async fn fetch(sdk: &SdkConfig, arn: &str) -> Result<Secret, AwsError> {
    match SecretRef::parse(arn)? {
        SecretRef::SecretsManager { arn } => {
            let out = aws_sdk_secretsmanager::Client::new(sdk)
                .get_secret_value()
                .secret_id(&arn)
                .send()
                .await
                .map_err(|e| AwsError::service("secretsmanager:GetSecretValue", e))?;
            out.secret_string()
                .map(Secret::new)
                .ok_or_else(|| AwsError::Config(format!("{arn}: secret has no string value")))
        }
        SecretRef::Ssm { name } => {
            let out = aws_sdk_ssm::Client::new(sdk)
                .get_parameter()
                .name(&name)
                .with_decryption(true)
                .send()
                .await
                .map_err(|e| AwsError::service("ssm:GetParameter", e))?;
            out.parameter()
                .and_then(|p| p.value())
                .map(Secret::new)
                .ok_or_else(|| AwsError::Config(format!("{name}: parameter has no value")))
        }
    }
}

/// What completes (or redirects) a JSON database secret: RDS's managed master secret
/// (`ManageMasterUserPassword`) holds only `username` and `password`, and a secret written for
/// the instance names the instance, not the RDS Proxy in front of it. Read from
/// `EDGE_DATABASE_HOST`, `EDGE_DATABASE_PORT` and `EDGE_DATABASE_NAME` ([`crate::env`]); each
/// one set wins over the secret's field. A URL secret is taken as is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseDefaults {
    pub host: Option<String>,
    pub port: Option<String>,
    pub dbname: Option<String>,
}

/// The database connection string inside a secret: a URL or libpq key/value string as is,
/// JSON `{"url": …}`, or the JSON RDS writes for credentials (`username`, `password`, and,
/// except in a managed master secret, `host`, `port`, `dbname`) turned into a key/value string
/// (no URL-escaping pitfalls with generated passwords).
pub fn database_url_from_secret(value: &Secret) -> Result<Secret, AwsError> {
    database_url_from_secret_with(value, &DatabaseDefaults::default())
}

/// [`database_url_from_secret`], host, port and database name from `defaults` when set.
pub fn database_url_from_secret_with(
    value: &Secret,
    defaults: &DatabaseDefaults,
) -> Result<Secret, AwsError> {
    let v = value.expose().trim();
    if !v.starts_with('{') {
        return Ok(Secret::new(v));
    }
    let json: serde_json::Value = serde_json::from_str(v)
        .map_err(|e| AwsError::Config(format!("database secret is not valid JSON: {e}")))?;
    if let Some(url) = json.get("url").and_then(|u| u.as_str()) {
        return Ok(Secret::new(url));
    }
    let field = |k: &str| -> Option<String> {
        match json.get(k) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    };
    let credential = |k: &str| {
        field(k)
            .ok_or_else(|| AwsError::Config(format!("database secret lacks \"url\" and \"{k}\"")))
    };
    let host = defaults
        .host
        .clone()
        .or_else(|| field("host"))
        .ok_or_else(|| {
            AwsError::Config(
                "database secret has no \"host\" (an RDS-managed master secret holds only \
             username and password): set EDGE_DATABASE_HOST to the RDS Proxy endpoint"
                    .into(),
            )
        })?;
    let quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    let port = defaults
        .port
        .clone()
        .or_else(|| field("port"))
        .unwrap_or_else(|| "5432".to_owned());
    let dbname = defaults
        .dbname
        .clone()
        .or_else(|| field("dbname"))
        .unwrap_or_else(|| "postgres".to_owned());
    Ok(Secret::new(format!(
        "host={} port={} user={} password={} dbname={}",
        quote(&host),
        quote(&port),
        quote(&credential("username")?),
        quote(&credential("password")?),
        quote(&dbname),
    )))
}

/// Where a secret's value comes from: an ARN to fetch through the SDK (Lambdas), or the value
/// itself (a local run has no AWS account). Which one is decided when the configuration is read
/// ([`crate::env`]); the fetch happens when the dependencies are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Arn(String),
    Value(Secret),
}

impl SecretSource {
    /// The secret's value (fetched through the SDK, loaded on first use, for an ARN).
    pub async fn resolve(&self, sdk: &mut LazySdk) -> Result<Secret, AwsError> {
        match self {
            SecretSource::Arn(arn) => fetch(sdk.get().await, arn).await,
            SecretSource::Value(v) => Ok(v.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn arns_pick_the_service() {
        assert_eq!(
            SecretRef::parse("arn:aws:secretsmanager:eu-west-1:1:secret:edge/db-AbC").unwrap(),
            SecretRef::SecretsManager {
                arn: "arn:aws:secretsmanager:eu-west-1:1:secret:edge/db-AbC".into()
            }
        );
        assert_eq!(
            SecretRef::parse("arn:aws:ssm:eu-west-1:1:parameter/edge/db-url").unwrap(),
            SecretRef::Ssm {
                name: "/edge/db-url".into()
            }
        );
        assert_eq!(
            SecretRef::parse("arn:aws:ssm:eu-west-1:1:parameter/dburl").unwrap(),
            SecretRef::Ssm {
                name: "dburl".into()
            }
        );
        assert!(SecretRef::parse("postgres://x").is_err());
        assert!(SecretRef::parse("arn:aws:s3:::bucket").is_err());
        assert!(SecretRef::parse("arn:aws:ssm:eu-west-1:1:document/x").is_err());
    }

    #[test]
    fn database_secrets_in_every_shape() {
        let s = |v: &str| database_url_from_secret(&Secret::new(v)).unwrap();
        assert_eq!(s(" postgres://u:p@h/db\n").expose(), "postgres://u:p@h/db");
        assert_eq!(
            s(r#"{"url":"postgres://h/db"}"#).expose(),
            "postgres://h/db"
        );
        let rds = s(
            r#"{"username":"edge","password":"p'w\\d","host":"proxy.local","port":5432,"dbname":"edge"}"#,
        );
        assert_eq!(
            rds.expose(),
            r"host='proxy.local' port='5432' user='edge' password='p\'w\\d' dbname='edge'"
        );
        // What tokio-postgres parses is what RDS wrote.
        let cfg: tokio_postgres::Config = rds.expose().parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"p'w\\d"[..]));
        assert!(database_url_from_secret(&Secret::new(r#"{"host":"h"}"#)).is_err());
        // An RDS-managed master secret: credentials only, the rest from the environment.
        let managed = Secret::new(r#"{"username":"edge","password":"pw"}"#);
        let err = database_url_from_secret(&managed).unwrap_err().to_string();
        assert!(err.contains("EDGE_DATABASE_HOST"), "{err}");
        let defaults = DatabaseDefaults {
            host: Some("proxy.local".into()),
            port: None,
            dbname: Some("edge".into()),
        };
        assert_eq!(
            database_url_from_secret_with(&managed, &defaults)
                .unwrap()
                .expose(),
            "host='proxy.local' port='5432' user='edge' password='pw' dbname='edge'"
        );
        // Set, they win over an instance secret's own fields (the Lambdas go through the proxy).
        let instance = Secret::new(
            r#"{"username":"u","password":"p","host":"db-1.rds","port":5433,"dbname":"x"}"#,
        );
        assert_eq!(
            database_url_from_secret_with(&instance, &defaults)
                .unwrap()
                .expose(),
            "host='proxy.local' port='5433' user='u' password='p' dbname='edge'"
        );
        assert!(format!("{:?}", Secret::new("hunter2")).contains("redacted"));
    }
}
