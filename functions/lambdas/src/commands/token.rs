//! `edge-cloud token`: a signed development token for the HTTP API (HS256 with the runner's
//! `EDGE_JWT_SECRET`).

use uuid::Uuid;

use super::CommandError;
use crate::api::auth::{mint, Claims};

/// Prints a token for `subject` in `org` with `project`s and `permission`s, valid for `ttl`.
pub fn print(
    org: Uuid,
    project: Vec<Uuid>,
    permission: Vec<String>,
    ttl: &str,
    subject: String,
    jwt_secret: &str,
) -> Result<(), CommandError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(CommandError::Clock)?
        .as_secs();
    let claims = Claims {
        sub: subject,
        org_id: org,
        projects: project,
        permissions: permission,
        exp: now + parse_ttl(ttl)?,
        iat: now,
    };
    println!("{}", mint(jwt_secret.as_bytes(), &claims)?);
    Ok(())
}

/// `90s`, `30m`, `1h`, `7d` → seconds.
pub fn parse_ttl(s: &str) -> Result<u64, CommandError> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|source| CommandError::TtlNumber {
        ttl: s.to_owned(),
        source,
    })?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(CommandError::Refused(format!(
                "ttl {s:?}: unit must be s, m, h or d"
            )))
        }
    };
    Ok(n * mult)
}
