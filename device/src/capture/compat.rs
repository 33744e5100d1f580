//! Can the application's SQLite run our triggers? (reliability.md §6)
//!
//! The triggers run inside the application's library, not ours (we link a bundled 3.54), and
//! use `json_array`, `json_object`, `json`, `printf`, `hex`, `typeof`, `abs`: built in since
//! 3.38, only with JSON1 compiled in before. Installing them on a library without JSON would make
//! every application write fail ("no such function: json_array"). The agent cannot see the
//! application's library; what it can see is the database file's header, whose bytes 96..100
//! hold `SQLITE_VERSION_NUMBER` of the library that last wrote the file. Before the agent's first
//! enrolment (no journal yet) nothing of ours has written it, so it names the application's (or
//! its provisioning tool's) library. Older than 3.38 → refused with a clear message unless the
//! operator confirms JSON1 (`sqlite-replication.app_sqlite_has_json1 = true`). After enrolment the
//! field mostly names our own library, so it is not checked again. Pure, but for reading the
//! header.

use std::io::Read as _;
use std::path::Path;

/// Oldest application SQLite with the JSON functions built in.
pub const MIN_APP_SQLITE: u32 = 3_038_000;

/// `3038000` → `3.38.0`.
pub fn version_text(n: u32) -> String {
    format!("{}.{}.{}", n / 1_000_000, n / 1000 % 1000, n % 1000)
}

/// `SQLITE_VERSION_NUMBER` of the library that last wrote `path` (`None`: no file, an empty
/// file, or a field of 0).
pub fn header_writer_version(path: &Path) -> std::io::Result<Option<u32>> {
    let mut header = [0u8; 100];
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut read = 0;
    while read < header.len() {
        let n = f.read(&mut header[read..])?;
        if n == 0 {
            return Ok(None);
        }
        read += n;
    }
    let v = u32::from_be_bytes([header[96], header[97], header[98], header[99]]);
    Ok((v != 0).then_some(v))
}

/// The refusal, if the application's library (as the header says) cannot run the triggers.
pub fn refuse_app_sqlite(header_version: Option<u32>, json1_confirmed: bool) -> Option<String> {
    let v = header_version?;
    if v >= MIN_APP_SQLITE || json1_confirmed {
        return None;
    }
    Some(format!(
        "source.db was last written by SQLite {} (file header); the capture triggers need the \
         JSON functions, built in since {} — installing them on a library without JSON1 would \
         fail every write of the application. Upgrade the application's SQLite to {} or newer, \
         or, if its library has JSON1 compiled in (check: SELECT json_array(1) on the \
         application's connection), set sqlite-replication.app_sqlite_has_json1 = true",
        version_text(v),
        version_text(MIN_APP_SQLITE),
        version_text(MIN_APP_SQLITE),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_only_older_libraries_without_confirmation() {
        assert_eq!(version_text(3_040_001), "3.40.1");
        assert!(refuse_app_sqlite(None, false).is_none());
        assert!(refuse_app_sqlite(Some(3_038_000), false).is_none());
        assert!(refuse_app_sqlite(Some(3_054_001), false).is_none());
        let msg = refuse_app_sqlite(Some(3_037_002), false).unwrap();
        assert!(
            msg.contains("3.37.2") && msg.contains("app_sqlite_has_json1"),
            "{msg}"
        );
        assert!(refuse_app_sqlite(Some(3_037_002), true).is_none());
    }
}
