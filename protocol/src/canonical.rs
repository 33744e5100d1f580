//! Canonical JSON: object keys sorted by byte order, no insignificant whitespace.
//!
//! Hashes (§8) and signatures (§6) are computed over this text, so it must not depend on how
//! `serde_json` happens to be configured in the final binary: with the `preserve_order` feature
//! (which any crate in the graph may switch on) `Value::to_string` keeps insertion order. Hence a
//! small writer of our own instead of `to_string`.

use serde_json::Value;

/// Canonical JSON text of `v`: keys sorted (byte order), no whitespace, strings escaped as
/// `serde_json` escapes them (only `"`, `\` and control characters; non-ASCII is written raw).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, value);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_recursively_without_whitespace() {
        let v = json!({"b": 1, "a": {"z": [1, 2.5, null], "y": true}, "B": "x"});
        assert_eq!(
            canonical_json(&v),
            r#"{"B":"x","a":{"y":true,"z":[1,2.5,null]},"b":1}"#
        );
    }

    #[test]
    fn escapes_like_serde_json() {
        let s = "q\"b\\n\n\u{1}é\u{7f}\t\u{8}\u{c}\r";
        let v = Value::String(s.to_owned());
        assert_eq!(canonical_json(&v), serde_json::to_string(&v).unwrap());
    }

    #[test]
    fn integers_are_exact() {
        let v = json!([i64::MIN, i64::MAX, u64::MAX]);
        assert_eq!(
            canonical_json(&v),
            "[-9223372036854775808,9223372036854775807,18446744073709551615]"
        );
    }
}
