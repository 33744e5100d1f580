//! Decoding of the journal's row images (the text SQLite's `json_array` produced in a trigger).
//!
//! A general JSON parser is the wrong tool here: the row image is written by the *application's*
//! SQLite, whatever its version (reliability.md §6), an integer must come back as an exact `i64`
//! while `1.0` must stay a REAL, and a REAL must come back bit for bit. The grammar is tiny, so
//! it is parsed here by hand; strings are unescaped by `serde_json`, which handles every JSON
//! escape correctly. Every form a supported version (3.38+) writes is read:
//! - a REAL as the triggers write it today (`triggers` module docs): `printf('%!.17e', x)`'s 18
//!   significant digits, parsed with Rust's correctly rounded parser, or `{"$real":"inf"}` /
//!   `{"$real":"-inf"}`;
//! - what older triggers (plain `json_array`) left in the journal before an upgrade re-created
//!   them: `Inf` / `-Inf` (3.40 and older: not JSON, but what is there), `9.0e+999` /
//!   `-9.0e+999` (3.54), and 15-digit REALs (read as written: the digits lost are lost);
//! - `{"$hex":"…"}` for a BLOB.

use edge_protocol::value::SqlValue;
use rusqlite::types::Value;
use thiserror::Error;

use super::triggers::{HEX_MARKER, REAL_MARKER};

/// A row image that is not what the triggers write (a corrupted or foreign journal row).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed row image at byte {offset}: {what}")]
pub struct CodecError {
    pub offset: usize,
    pub what: String,
}

/// Converts a decoded SQLite value to a bindable one.
pub(crate) fn to_sql(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::Integer(*i),
        SqlValue::Real(f) => Value::Real(*f),
        SqlValue::Text(s) => Value::Text(s.clone()),
        SqlValue::Blob(b) => Value::Blob(b.clone()),
    }
}

/// Converts a value read from SQLite.
pub(crate) fn from_sql(v: Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Integer(i) => SqlValue::Integer(i),
        Value::Real(f) => SqlValue::Real(f),
        Value::Text(s) => SqlValue::Text(s),
        Value::Blob(b) => SqlValue::Blob(b),
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err<T>(&self, what: impl Into<String>) -> Result<T, CodecError> {
        Err(CodecError {
            offset: self.pos,
            what: what.into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), CodecError> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            self.err(format!("expected '{}'", byte as char))
        }
    }

    /// A JSON string token, unescaped.
    fn string(&mut self) -> Result<String, CodecError> {
        self.skip_ws();
        let start = self.pos;
        if self.peek() != Some(b'"') {
            return self.err("expected a string");
        }
        self.pos += 1;
        loop {
            match self.peek() {
                None => return self.err("unterminated string"),
                Some(b'\\') => self.pos += 2,
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(_) => self.pos += 1,
            }
        }
        let token = self.text.get(start..self.pos).unwrap_or_default();
        serde_json::from_str::<String>(token).or_else(|e| self.err(e.to_string()))
    }

    fn number(&mut self) -> Result<SqlValue, CodecError> {
        let start = self.pos;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.pos += 1;
        }
        let token = self.text.get(start..self.pos).unwrap_or_default();
        if token.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            // Rust's parser maps SQLite's `9.0e+999` to infinity, which is what was stored.
            token
                .parse::<f64>()
                .map(SqlValue::Real)
                .or_else(|_| self.err(format!("bad real {token:?}")))
        } else {
            token
                .parse::<i64>()
                .map(SqlValue::Integer)
                .or_else(|_| self.err(format!("bad integer {token:?}")))
        }
    }

    fn value(&mut self) -> Result<SqlValue, CodecError> {
        self.skip_ws();
        let rest = self.text.get(self.pos..).unwrap_or_default();
        match self.peek() {
            Some(b'n') if rest.starts_with("null") => {
                self.pos += 4;
                Ok(SqlValue::Null)
            }
            // SQLite ≤ 3.40's `json_array` spelling of ±infinity (older triggers' rows).
            Some(b'I') if rest.starts_with("Inf") => {
                self.pos += 3;
                Ok(SqlValue::Real(f64::INFINITY))
            }
            Some(b'-') if rest.starts_with("-Inf") => {
                self.pos += 4;
                Ok(SqlValue::Real(f64::NEG_INFINITY))
            }
            Some(b'"') => self.string().map(SqlValue::Text),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'{') => {
                self.pos += 1;
                let key = self.string()?;
                self.expect(b':')?;
                let inner = self.string()?;
                self.expect(b'}')?;
                match key.as_str() {
                    HEX_MARKER => hex::decode(&inner)
                        .map(SqlValue::Blob)
                        .or_else(|e| self.err(format!("bad hex: {e}"))),
                    REAL_MARKER => match inner.as_str() {
                        "inf" => Ok(SqlValue::Real(f64::INFINITY)),
                        "-inf" => Ok(SqlValue::Real(f64::NEG_INFINITY)),
                        other => self.err(format!("bad {REAL_MARKER} marker {other:?}")),
                    },
                    other => self.err(format!("unknown marker {other:?}")),
                }
            }
            _ => self.err("expected a value"),
        }
    }
}

/// Parses a row image (`[v1, v2, …]`) into values.
pub fn parse_values(text: &str) -> Result<Vec<SqlValue>, CodecError> {
    let mut p = Parser { text, pos: 0 };
    p.expect(b'[')?;
    let mut out = Vec::new();
    p.skip_ws();
    if p.peek() == Some(b']') {
        p.pos += 1;
    } else {
        loop {
            out.push(p.value()?);
            p.skip_ws();
            match p.peek() {
                Some(b',') => p.pos += 1,
                Some(b']') => {
                    p.pos += 1;
                    break;
                }
                _ => return p.err("expected ',' or ']'"),
            }
        }
    }
    p.skip_ws();
    if p.pos != text.len() {
        return p.err("trailing characters");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_storage_class() {
        let v = parse_values(
            r#"[9.0e+999,-9.0e+999,0.30000000000000004,9223372036854775807,-9223372036854775808,1.0,null,"a\"b\\c\u0000é",{"$hex":"00FF"}]"#,
        )
        .unwrap();
        assert_eq!(v[0], SqlValue::Real(f64::INFINITY));
        assert_eq!(v[1], SqlValue::Real(f64::NEG_INFINITY));
        assert_eq!(v[2], SqlValue::Real(0.1 + 0.2));
        assert_eq!(v[3], SqlValue::Integer(i64::MAX));
        assert_eq!(v[4], SqlValue::Integer(i64::MIN));
        assert_eq!(v[5], SqlValue::Real(1.0));
        assert_eq!(v[6], SqlValue::Null);
        assert_eq!(v[7], SqlValue::Text("a\"b\\c\u{0}é".into()));
        assert_eq!(v[8], SqlValue::Blob(vec![0, 255]));
        assert_eq!(parse_values("[]").unwrap(), vec![]);
    }

    /// Every spelling of a REAL the supported SQLite versions leave in a journal row.
    #[test]
    fn reads_every_real_spelling_of_supported_versions() {
        let v = parse_values(
            r#"[Inf, -Inf,{"$real":"inf"}, {"$real":"-inf"},3.33333333333333314829e-01,0.333333333333333,1.15292150460684697597e+18,-0.0,4.94065645841247e-324,1.0e+308,5.84475195528291398662e+05]"#,
        )
        .unwrap();
        let want = [
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1.0 / 3.0,
            0.333333333333333,
            2f64.powi(60),
            -0.0,
            5e-324,
            1e308,
            584475.1955282914,
        ];
        assert_eq!(v.len(), want.len());
        for (got, want) in v.iter().zip(want) {
            assert_eq!(got, &SqlValue::Real(want));
        }
        for bad in [
            r#"[{"$real":"nan"}]"#,
            "[In]",
            "[-Infx]",
            r#"[{"$real":1}]"#,
        ] {
            assert!(parse_values(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_garbage_with_a_named_error() {
        for bad in [
            "",
            "[",
            "[1,",
            "[tru]",
            "[1] x",
            "[{\"$x\":\"00\"}]",
            "[{\"$hex\":\"0\"}]",
            "[\"a]",
        ] {
            assert!(parse_values(bad).is_err(), "{bad}");
        }
    }
}
