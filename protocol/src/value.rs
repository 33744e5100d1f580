//! SQLite values on the wire (spec §2).
//!
//! | storage class | JSON |
//! |---|---|
//! | NULL | `null` |
//! | INTEGER | number, exact over the full i64 range |
//! | REAL, finite | number |
//! | REAL, ±infinity | `{"$real":"inf"}` / `{"$real":"-inf"}` |
//! | TEXT | string |
//! | BLOB | `{"$base64":"<standard base64, padded>"}` |
//!
//! A JSON object in value position is always one of the two markers; anything else is an error.
//! NaN never reaches the wire: SQLite itself stores NaN as NULL, and we encode it as `null` too.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::Error as _;
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use thiserror::Error;

/// Marker key for non-finite REAL values.
pub const REAL_MARKER: &str = "$real";
/// Marker key for BLOB values.
pub const BASE64_MARKER: &str = "$base64";

/// One SQLite value, by storage class.
#[derive(Debug, Clone)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A row (or a primary key, or telemetry fields): column name → value, in byte order of names so
/// encoding is deterministic.
pub type Row = BTreeMap<String, SqlValue>;

/// Why a JSON value is not a valid [`SqlValue`]. [`ValueError::is_number_encoding`] tells which
/// rejection code applies (`invalid_number_encoding` vs `invalid_row`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValueError {
    #[error("integer {0} is outside the i64 range")]
    IntegerOutOfRange(String),
    #[error("number {0} is not finite")]
    NonFiniteNumber(String),
    #[error("`$real` marker must be \"inf\" or \"-inf\", got {0}")]
    InvalidRealMarker(String),
    #[error("`$base64` marker does not hold standard padded base64: {0}")]
    InvalidBase64(String),
    #[error("object {0} is not a `$real` or `$base64` marker")]
    UnknownMarker(String),
    #[error("arrays are not SQLite values")]
    Array,
    #[error("booleans are not SQLite values")]
    Bool,
    #[error("expected an object of column values")]
    NotAnObject,
}

impl ValueError {
    /// True for the errors that are about how a number is encoded (`invalid_number_encoding`).
    pub fn is_number_encoding(&self) -> bool {
        matches!(
            self,
            ValueError::IntegerOutOfRange(_)
                | ValueError::NonFiniteNumber(_)
                | ValueError::InvalidRealMarker(_)
        )
    }
}

impl SqlValue {
    /// Decodes one value from its JSON form.
    pub fn from_json(v: &Value) -> Result<SqlValue, ValueError> {
        match v {
            Value::Null => Ok(SqlValue::Null),
            Value::Bool(_) => Err(ValueError::Bool),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(SqlValue::Integer(i))
                } else if n.is_u64() {
                    Err(ValueError::IntegerOutOfRange(n.to_string()))
                } else {
                    match n.as_f64() {
                        Some(f) if f.is_finite() => Ok(SqlValue::Real(f)),
                        _ => Err(ValueError::NonFiniteNumber(n.to_string())),
                    }
                }
            }
            Value::String(s) => Ok(SqlValue::Text(s.clone())),
            Value::Array(_) => Err(ValueError::Array),
            Value::Object(map) => {
                let mut entries = map.iter();
                match (entries.next(), entries.next()) {
                    (Some((key, inner)), None) if key == REAL_MARKER => match inner.as_str() {
                        Some("inf") => Ok(SqlValue::Real(f64::INFINITY)),
                        Some("-inf") => Ok(SqlValue::Real(f64::NEG_INFINITY)),
                        _ => Err(ValueError::InvalidRealMarker(truncated(inner))),
                    },
                    (Some((key, inner)), None) if key == BASE64_MARKER => {
                        let text = inner
                            .as_str()
                            .ok_or_else(|| ValueError::InvalidBase64(truncated(inner)))?;
                        STANDARD
                            .decode(text)
                            .map(SqlValue::Blob)
                            .map_err(|e| ValueError::InvalidBase64(e.to_string()))
                    }
                    _ => Err(ValueError::UnknownMarker(truncated(v))),
                }
            }
        }
    }

    /// The JSON form of this value. NaN becomes `null` (what SQLite stores for it).
    pub fn to_json(&self) -> Value {
        match self {
            SqlValue::Null => Value::Null,
            SqlValue::Integer(i) => Value::from(*i),
            SqlValue::Real(f) if f.is_nan() => Value::Null,
            SqlValue::Real(f) if f.is_infinite() => {
                let text = if *f > 0.0 { "inf" } else { "-inf" };
                single_entry(REAL_MARKER, Value::from(text))
            }
            SqlValue::Real(f) => Value::from(*f),
            SqlValue::Text(s) => Value::from(s.as_str()),
            SqlValue::Blob(b) => single_entry(BASE64_MARKER, Value::from(STANDARD.encode(b))),
        }
    }

    /// SQLite storage class name, for messages and materialization.
    pub fn storage_class(&self) -> &'static str {
        match self {
            SqlValue::Null => "NULL",
            SqlValue::Integer(_) => "INTEGER",
            SqlValue::Real(_) => "REAL",
            SqlValue::Text(_) => "TEXT",
            SqlValue::Blob(_) => "BLOB",
        }
    }
}

/// Decodes a JSON object of column values (`row`, `pk`, `fields`).
pub fn row_from_json(v: &Value) -> Result<Row, ValueError> {
    let map = v.as_object().ok_or(ValueError::NotAnObject)?;
    map.iter()
        .map(|(k, v)| SqlValue::from_json(v).map(|sv| (k.clone(), sv)))
        .collect()
}

/// The JSON object form of a row.
pub fn row_to_json(row: &Row) -> Value {
    Value::Object(row.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

fn single_entry(key: &str, value: Value) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(key.to_owned(), value);
    Value::Object(map)
}

/// Error messages quote the offending JSON, but never all of a hostile 512 KiB value.
fn truncated(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Bitwise for REAL (so `-0.0 != 0.0` and a value always equals itself): equality here means
/// "decodes to the same bytes", which is what round-trip and dedup care about.
impl PartialEq for SqlValue {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SqlValue::Null, SqlValue::Null) => true,
            (SqlValue::Integer(a), SqlValue::Integer(b)) => a == b,
            (SqlValue::Real(a), SqlValue::Real(b)) => a.to_bits() == b.to_bits(),
            (SqlValue::Text(a), SqlValue::Text(b)) => a == b,
            (SqlValue::Blob(a), SqlValue::Blob(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for SqlValue {}

impl fmt::Display for SqlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        SqlValue::Integer(v)
    }
}

impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        SqlValue::Real(v)
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_owned())
    }
}

impl From<Vec<u8>> for SqlValue {
    fn from(v: Vec<u8>) -> Self {
        SqlValue::Blob(v)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

impl Serialize for SqlValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SqlValue::Null => serializer.serialize_unit(),
            SqlValue::Integer(i) => serializer.serialize_i64(*i),
            SqlValue::Real(f) if f.is_nan() => serializer.serialize_unit(),
            SqlValue::Real(f) if f.is_infinite() => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(REAL_MARKER, if *f > 0.0 { "inf" } else { "-inf" })?;
                map.end()
            }
            SqlValue::Real(f) => serializer.serialize_f64(*f),
            SqlValue::Text(s) => serializer.serialize_str(s),
            SqlValue::Blob(b) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(BASE64_MARKER, &STANDARD.encode(b))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for SqlValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through `Value`: values are small, and one decoding path keeps serde and the validator
        // in agreement.
        let v = Value::deserialize(deserializer)?;
        SqlValue::from_json(&v).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_every_storage_class() {
        let cases = [
            (SqlValue::Null, json!(null)),
            (SqlValue::Integer(i64::MAX), json!(i64::MAX)),
            (SqlValue::Integer(i64::MIN), json!(i64::MIN)),
            (SqlValue::Real(20.5), json!(20.5)),
            (SqlValue::Real(f64::INFINITY), json!({"$real": "inf"})),
            (SqlValue::Real(f64::NEG_INFINITY), json!({"$real": "-inf"})),
            (SqlValue::Text("héllo".into()), json!("héllo")),
            (SqlValue::Blob(vec![0, 255, 1]), json!({"$base64": "AP8B"})),
        ];
        for (value, expected) in cases {
            assert_eq!(serde_json::to_value(&value).unwrap(), expected);
            assert_eq!(value.to_json(), expected);
            assert_eq!(SqlValue::from_json(&expected).unwrap(), value);
            let text = serde_json::to_string(&value).unwrap();
            assert_eq!(serde_json::from_str::<SqlValue>(&text).unwrap(), value);
        }
    }

    #[test]
    fn nan_encodes_as_null() {
        assert_eq!(
            serde_json::to_string(&SqlValue::Real(f64::NAN)).unwrap(),
            "null"
        );
        assert_eq!(SqlValue::Real(f64::NAN).to_json(), Value::Null);
    }

    #[test]
    fn integral_reals_stay_real() {
        let text = serde_json::to_string(&SqlValue::Real(21.0)).unwrap();
        assert_eq!(text, "21.0");
        assert_eq!(
            serde_json::from_str::<SqlValue>(&text).unwrap(),
            SqlValue::Real(21.0)
        );
        let neg_zero = serde_json::to_string(&SqlValue::Real(-0.0)).unwrap();
        assert_eq!(
            serde_json::from_str::<SqlValue>(&neg_zero).unwrap(),
            SqlValue::Real(-0.0)
        );
    }

    #[test]
    fn rejects_bad_markers_with_the_right_class() {
        let number = [
            json!({"$real": "nan"}),
            json!({"$real": "Infinity"}),
            json!({"$real": 1.0}),
            json!(u64::MAX),
        ];
        for v in number {
            let err = SqlValue::from_json(&v).unwrap_err();
            assert!(err.is_number_encoding(), "{v}: {err}");
        }
        let row = [
            json!({"$base64": "not base64!"}),
            json!({"$base64": 5}),
            json!({"$blob": "AA=="}),
            json!({"$real": "inf", "$base64": "AA=="}),
            json!({}),
            json!([1]),
            json!(true),
        ];
        for v in row {
            let err = SqlValue::from_json(&v).unwrap_err();
            assert!(!err.is_number_encoding(), "{v}: {err}");
        }
    }

    #[test]
    fn equality_is_bitwise_for_reals() {
        assert_ne!(SqlValue::Real(0.0), SqlValue::Real(-0.0));
        assert_eq!(SqlValue::Real(f64::NAN), SqlValue::Real(f64::NAN));
        assert_ne!(SqlValue::Integer(1), SqlValue::Real(1.0));
    }
}
