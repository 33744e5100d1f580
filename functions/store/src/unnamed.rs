//! Unnamed statements: every statement the store runs, safe behind RDS Proxy and pgbouncer in
//! transaction mode.
//!
//! `tokio_postgres`'s `query`/`execute` with a `&str` prepare a *named* statement (`s0`, `s1`, …
//! from a per-process counter) in one round trip (Parse/Describe/Sync), then bind and execute it
//! in a second (Bind/Execute/Sync). Behind a transaction-mode pooler the server connection may
//! change between the two ("prepared statement s3 does not exist", SQLSTATE 26000), and two
//! processes' `s3` collide on one server connection (42P05); RDS Proxy pins a session that
//! creates named statements for its lifetime, which defeats multiplexing.
//!
//! The methods of [`UnnamedStatements`] send Parse (of the unnamed statement, with the parameter
//! types given), Bind, Describe, Execute and Sync as **one** message group: one round trip, no
//! server-side state left behind after Sync, so any server connection can take the next
//! statement. The price is that every parameter's PostgreSQL type must be known up front: the
//! [`SqlType`] of its Rust type ([`Param::sql_type`]). The mapping is the one tokio-postgres
//! itself accepts for each Rust type; a string is sent as `text` and a JSON value as `jsonb`
//! (PostgreSQL casts them implicitly to `varchar`/`name` and assigns `jsonb` to `json`).
//!
//! Result columns must be of built-in types: a column of a type tokio-postgres does not know
//! (an enum, a domain, an `information_schema` column) makes it look the type up with a named
//! statement of its own. The store selects only built-in types (casts such as `attname::text`).
//!
//! `batch_execute` (the simple query protocol: `BEGIN`, `COMMIT`, DDL, `SAVEPOINT`) never
//! prepares anything and is safe as is. Nothing here uses COPY (`copy_in` needs a prepared
//! statement); should it come, it belongs inside a transaction with its `Statement` dropped before
//! `COMMIT` — the pooler keeps one server connection for the whole transaction, and the Close
//! reaches that connection — and needs `// named-statement-ok:` plus a pooler test. `scripts/check-unnamed.sh` fails the build on a
//! `query`/`execute`/`prepare` call outside tests in the store and the handlers.

use std::future::Future;

use time::{Date, OffsetDateTime, PrimitiveDateTime};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Error, GenericClient, Row};
use uuid::Uuid;

/// The PostgreSQL type a Rust type is sent as (and of an array of it).
pub trait SqlType {
    /// The parameter's type.
    const TYPE: Type;
    /// The type of an array of it (`Vec<Self>`, `&[Self]`).
    const ARRAY: Type;
}

macro_rules! sql_types {
    ($($rust:ty => $scalar:ident, $array:ident;)*) => {
        $(impl SqlType for $rust {
            const TYPE: Type = Type::$scalar;
            const ARRAY: Type = Type::$array;
        })*
    };
}

sql_types! {
    bool => BOOL, BOOL_ARRAY;
    i16 => INT2, INT2_ARRAY;
    i32 => INT4, INT4_ARRAY;
    i64 => INT8, INT8_ARRAY;
    f32 => FLOAT4, FLOAT4_ARRAY;
    f64 => FLOAT8, FLOAT8_ARRAY;
    str => TEXT, TEXT_ARRAY;
    String => TEXT, TEXT_ARRAY;
    Uuid => UUID, UUID_ARRAY;
    OffsetDateTime => TIMESTAMPTZ, TIMESTAMPTZ_ARRAY;
    PrimitiveDateTime => TIMESTAMP, TIMESTAMP_ARRAY;
    Date => DATE, DATE_ARRAY;
    serde_json::Value => JSONB, JSONB_ARRAY;
    [u8] => BYTEA, BYTEA_ARRAY;
    Vec<u8> => BYTEA, BYTEA_ARRAY;
}

impl<T: SqlType + ?Sized> SqlType for &T {
    const TYPE: Type = T::TYPE;
    const ARRAY: Type = T::ARRAY;
}

/// `NULL` is sent with the type of the value it stands for.
impl<T: SqlType> SqlType for Option<T> {
    const TYPE: Type = T::TYPE;
    const ARRAY: Type = T::ARRAY;
}

impl<T: SqlType> SqlType for Vec<T> {
    const TYPE: Type = T::ARRAY;
    // PostgreSQL arrays are of any dimension with one type.
    const ARRAY: Type = T::ARRAY;
}

impl<T: SqlType> SqlType for [T] {
    const TYPE: Type = T::ARRAY;
    const ARRAY: Type = T::ARRAY;
}

/// A statement parameter: its value and the type it is sent as. Implemented for every
/// [`SqlType`] that is [`ToSql`], so call sites pass `&[&a, &b]` as with `query`.
pub trait Param: Sync {
    /// The value to encode.
    fn value(&self) -> &(dyn ToSql + Sync);
    /// The type named in the Parse message.
    fn sql_type(&self) -> Type;
}

impl<T: SqlType + ToSql + Sync> Param for T {
    fn value(&self) -> &(dyn ToSql + Sync) {
        self
    }
    fn sql_type(&self) -> Type {
        T::TYPE
    }
}

/// The `(value, type)` pairs `query_typed` takes.
pub fn typed<'a>(params: &'a [&'a dyn Param]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    params.iter().map(|p| (p.value(), p.sql_type())).collect()
}

/// `query`, `query_one`, `query_opt` and `execute` over unnamed statements (see the module
/// doc), for every client and transaction.
pub trait UnnamedStatements: GenericClient + Sync {
    /// All rows of the statement.
    fn query_unnamed(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send {
        async move { self.query_typed(sql, &typed(params)).await }
    }

    /// Exactly one row (an error otherwise).
    fn query_one_unnamed(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> impl Future<Output = Result<Row, Error>> + Send {
        async move { self.query_typed_one(sql, &typed(params)).await }
    }

    /// At most one row (an error for more).
    fn query_opt_unnamed(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send {
        async move { self.query_typed_opt(sql, &typed(params)).await }
    }

    /// The number of rows the statement affected.
    fn execute_unnamed(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> impl Future<Output = Result<u64, Error>> + Send {
        async move { self.execute_typed(sql, &typed(params)).await }
    }
}

impl<C: GenericClient + Sync + ?Sized> UnnamedStatements for C {}

#[cfg(test)]
mod tests {
    use super::*;

    fn type_of(p: &dyn Param) -> Type {
        p.sql_type()
    }

    #[test]
    fn rust_types_map_to_the_types_tokio_postgres_accepts() {
        let text: &str = "x";
        let none: Option<&str> = None;
        let keys: Vec<&str> = vec!["a"];
        let optional_json: Vec<Option<&serde_json::Value>> = vec![None];
        let bytes: &[u8] = b"x";
        let cases: [(&dyn Param, Type); 8] = [
            (&text, Type::TEXT),
            (&none, Type::TEXT),
            (&keys, Type::TEXT_ARRAY),
            (&optional_json, Type::JSONB_ARRAY),
            (&bytes, Type::BYTEA),
            (&vec![1_u8], Type::BYTEA),
            (&Uuid::nil(), Type::UUID),
            (&Some(1_i64), Type::INT8),
        ];
        for (param, expected) in cases {
            assert_eq!(type_of(param), expected);
            assert!(
                param
                    .value()
                    .to_sql_checked(&expected, &mut Default::default())
                    .is_ok(),
                "{expected} accepted"
            );
        }
    }
}
