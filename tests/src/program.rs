//! Finding the programs the harness runs (servers, privilege-dropping helpers) on `PATH`.

use std::path::PathBuf;

/// `name` on `PATH`, if present.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
