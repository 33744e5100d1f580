//! Running PostgreSQL as an unprivileged user when the tests run as root.
//!
//! `initdb` and `postgres` refuse to run as root, and both CI and the development machines run
//! the tests as root. We then drop to the `postgres` system user (or `nobody`) for those two
//! programs only, with `setpriv` (util-linux) or, failing that, `runuser`.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use crate::program::find_program;
use crate::HarnessError;

/// Who runs the PostgreSQL processes.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// The command prefix that switches to the user, e.g. `setpriv --reuid=…`.
    pub prefix: Vec<OsString>,
}

/// The effective uid of this process, from `/proc/self/status` (no `unsafe` `geteuid`).
pub(crate) fn effective_uid() -> Result<u32, HarnessError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(HarnessError::io("reading /proc/self/status"))?;
    parse_effective_uid(&status)
        .ok_or_else(|| HarnessError::Invalid("no Uid line in /proc/self/status".into()))
}

/// `Uid:` lists real, effective, saved and filesystem uids; we want the second.
fn parse_effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
}

/// `None` when we are not root (run the programs directly), otherwise how to drop privileges.
pub(crate) fn unprivileged_runner() -> Result<Option<RunAs>, HarnessError> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let user = ["postgres", "nobody"]
        .into_iter()
        .find(|user| id(user, "-u").is_ok())
        .ok_or_else(|| {
            HarnessError::Invalid(
                "running as root, but neither a `postgres` nor a `nobody` user exists to run \
                 PostgreSQL as"
                    .into(),
            )
        })?;
    let uid = id(user, "-u")?;
    let gid = id(user, "-g")?;
    let prefix: Vec<OsString> = if find_program("setpriv").is_some() {
        vec![
            "setpriv".into(),
            format!("--reuid={uid}").into(),
            format!("--regid={gid}").into(),
            "--init-groups".into(),
            "--".into(),
        ]
    } else if find_program("runuser").is_some() {
        vec!["runuser".into(), "-u".into(), user.into(), "--".into()]
    } else {
        return Err(HarnessError::MissingProgram(
            "setpriv or runuser (util-linux), needed to run PostgreSQL as non-root".into(),
        ));
    };
    Ok(Some(RunAs { uid, gid, prefix }))
}

/// `id -u USER` / `id -g USER`.
fn id(user: &str, flag: &str) -> Result<u32, HarnessError> {
    let output = Command::new("id")
        .arg(flag)
        .arg(user)
        .output()
        .map_err(HarnessError::io("running `id`"))?;
    if !output.status.success() {
        return Err(HarnessError::Invalid(format!("no user {user}")));
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| HarnessError::Invalid(format!("`id {flag} {user}` printed no number")))
}

/// Gives `dir` (recursively) to the unprivileged user.
pub(crate) fn chown_recursive(dir: &Path, run_as: &RunAs) -> Result<(), HarnessError> {
    std::os::unix::fs::chown(dir, Some(run_as.uid), Some(run_as.gid))
        .map_err(HarnessError::io(format!("chown {}", dir.display())))?;
    let entries =
        std::fs::read_dir(dir).map_err(HarnessError::io(format!("listing {}", dir.display())))?;
    for entry in entries {
        let path = entry
            .map_err(HarnessError::io(format!("listing {}", dir.display())))?
            .path();
        if path.is_dir() {
            chown_recursive(&path, run_as)?;
        } else {
            std::os::unix::fs::chown(&path, Some(run_as.uid), Some(run_as.gid))
                .map_err(HarnessError::io(format!("chown {}", path.display())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_effective_uid() {
        let status = "Name:\tcargo\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name:\tx\n"), None);
    }
}
