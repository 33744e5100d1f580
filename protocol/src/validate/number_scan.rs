//! Finds number literals `serde_json` cannot or must not represent, before `serde_json` sees them.
//!
//! `serde_json` fails the whole parse on `1e999` ("number out of range") and on `NaN` /
//! `Infinity` (not JSON), and silently turns integers beyond u64 into floats. The protocol wants
//! a named `invalid_number_encoding` for these rather than `malformed_json`, and wants tenant
//! fields checked first, so this pass lists the offending tokens; the caller then parses a copy
//! with each of them replaced by `0` to see whether the rest of the document is sound.
//!
//! Rules: an integer literal (no `.`/`e`/`E`) must fit i64; a float literal must be finite in
//! f64; the bare tokens `NaN`, `Infinity`, `-Infinity` (as JavaScript/Python emit them) are
//! non-finite numbers. Works on bytes, outside string literals only; never panics.

use std::num::IntErrorKind;

/// One offending token: byte range and the token text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadNumber {
    pub start: usize,
    pub end: usize,
    pub text: String,
}

pub(crate) fn find_bad_numbers(bytes: &[u8]) -> Vec<BadNumber> {
    let mut found = Vec::new();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 2,
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                _ => i += 1,
            }
            continue;
        }
        let rest = &bytes[i..];
        let bare = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|word| rest.starts_with(word));
        if let Some(word) = bare {
            found.push(bad(bytes, i, i + word.len()));
            i += word.len();
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                if is_unrepresentable(&bytes[start..i]) {
                    found.push(bad(bytes, start, i));
                }
            }
            _ => i += 1,
        }
    }
    found
}

/// A copy of `bytes` with every bad token replaced by `0`.
pub(crate) fn replace_with_zero(bytes: &[u8], bad: &[BadNumber]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut pos = 0;
    for token in bad {
        out.extend_from_slice(bytes.get(pos..token.start).unwrap_or_default());
        out.push(b'0');
        pos = token.end;
    }
    out.extend_from_slice(bytes.get(pos..).unwrap_or_default());
    out
}

fn bad(bytes: &[u8], start: usize, end: usize) -> BadNumber {
    let token = bytes.get(start..end).unwrap_or_default();
    let mut text = String::from_utf8_lossy(token).into_owned();
    if text.len() > 40 {
        text.truncate(40);
        text.push('…');
    }
    BadNumber { start, end, text }
}

fn is_unrepresentable(token: &[u8]) -> bool {
    // The token holds only ASCII digits, signs, '.', 'e', 'E'.
    let Ok(text) = std::str::from_utf8(token) else {
        return false;
    };
    if text.contains(['.', 'e', 'E']) {
        // Syntax errors are left to serde_json (→ malformed_json).
        matches!(text.parse::<f64>(), Ok(f) if !f.is_finite())
    } else {
        matches!(
            text.parse::<i64>().map_err(|e| *e.kind()),
            Err(IntErrorKind::PosOverflow | IntErrorKind::NegOverflow)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<String> {
        find_bad_numbers(s.as_bytes())
            .into_iter()
            .map(|b| b.text)
            .collect()
    }

    #[test]
    fn finds_overflows_and_bare_non_finite_tokens() {
        assert_eq!(
            texts(r#"{"a":1e999,"b":-1E400,"c":[NaN,Infinity,-Infinity],"d":9223372036854775808}"#),
            [
                "1e999",
                "-1E400",
                "NaN",
                "Infinity",
                "-Infinity",
                "9223372036854775808"
            ]
        );
        assert!(
            texts(r#"{"a":1e308,"b":-9223372036854775808,"c":"1e999 NaN","d":2.5e-400}"#)
                .is_empty()
        );
    }

    #[test]
    fn respects_escapes_in_strings() {
        assert!(texts(r#"{"a\"1e999":"x\\","b":"\"NaN"}"#).is_empty());
        assert_eq!(texts(r#"{"a":"\\",  "b":1e999}"#), ["1e999"]);
    }

    #[test]
    fn replacement_keeps_the_document_parseable() {
        let text = br#"{"a":1e999,"b":[NaN,-Infinity],"c":"ok"}"#;
        let bad = find_bad_numbers(text);
        let fixed = replace_with_zero(text, &bad);
        let v: serde_json::Value = serde_json::from_slice(&fixed).unwrap();
        assert_eq!(v, serde_json::json!({"a":0,"b":[0,0],"c":"ok"}));
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for s in ["\"\\", "-", "1e", "\"abc", "NaN", "-Infinit", ""] {
            let bad = find_bad_numbers(s.as_bytes());
            let _ = replace_with_zero(s.as_bytes(), &bad);
        }
    }
}
