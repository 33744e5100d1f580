//! Property tests: encode → decode is the identity for arbitrary well-formed documents, and the
//! decoders never panic on arbitrary input. Case counts are kept moderate so the suite runs in
//! seconds on a shared 2-core machine.

// Test helpers outside #[test] fns are not covered by clippy.toml's allow-unwrap-in-tests.
#![allow(clippy::unwrap_used)]

use edge_protocol::batch::{Op, RowBatch, RowChange};
use edge_protocol::ids::new_uuid_v7;
use edge_protocol::telemetry::{TelemetryBatch, TelemetryRow};
use edge_protocol::timestamp;
use edge_protocol::validate;
use edge_protocol::value::{Row, SqlValue};
use proptest::collection::{btree_map, vec};
use proptest::num::f64 as pf64;
use proptest::prelude::*;
use time::OffsetDateTime;

fn sql_value() -> impl Strategy<Value = SqlValue> {
    prop_oneof![
        Just(SqlValue::Null),
        any::<i64>().prop_map(SqlValue::Integer),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0), Just(-1)].prop_map(SqlValue::Integer),
        // Every non-NaN f64: normals, subnormals, ±0, ±inf. (NaN encodes as null, by design.)
        (pf64::POSITIVE
            | pf64::NEGATIVE
            | pf64::NORMAL
            | pf64::SUBNORMAL
            | pf64::ZERO
            | pf64::INFINITE)
            .prop_map(SqlValue::Real),
        prop_oneof![
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE)
        ]
        .prop_map(SqlValue::Real),
        any::<String>().prop_map(SqlValue::Text),
        vec(any::<u8>(), 0..48).prop_map(SqlValue::Blob),
    ]
}

fn column_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_][a-z0-9_]{0,8}",
        any::<String>(),
        Just("$real".to_owned())
    ]
}

fn row_values() -> impl Strategy<Value = Row> {
    btree_map(column_name(), sql_value(), 0..6)
}

fn uuid_v7() -> impl Strategy<Value = uuid::Uuid> {
    (0u64..(1 << 48), any::<[u8; 10]>()).prop_map(|(ms, r)| new_uuid_v7(ms, r))
}

fn row_change(commit_seq: i64) -> impl Strategy<Value = RowChange> {
    (
        prop_oneof![Just(Op::Insert), Just(Op::Update), Just(Op::Delete)],
        btree_map(column_name(), sql_value(), 1..3),
        row_values(),
    )
        .prop_map(move |(op, pk, rest)| {
            let row = match op {
                Op::Delete => None,
                // The full row contains the pk columns with the same values.
                _ => Some(rest.into_iter().chain(pk.clone()).collect()),
            };
            RowChange {
                commit_seq,
                op,
                pk,
                row,
            }
        })
}

fn row_batch() -> impl Strategy<Value = RowBatch> {
    (
        any::<i64>(),
        vec(1i64..1_000, 1..12),
        uuid_v7(),
        uuid_v7(),
        "[a-z_]{1,12}",
        "[0-9a-f]{64}",
    )
        .prop_flat_map(|(start, gaps, batch_id, epoch, table, hash)| {
            // Strictly increasing commit_seqs without overflow.
            let start = start.clamp(i64::MIN, i64::MAX - 20_000);
            let seqs: Vec<i64> = gaps
                .iter()
                .scan(start, |acc, g| {
                    *acc += g;
                    Some(*acc)
                })
                .collect();
            let rows: Vec<_> = seqs.into_iter().map(row_change).collect();
            rows.prop_map(move |rows| {
                RowBatch::new(batch_id, epoch, table.clone(), hash.clone(), None, rows)
            })
        })
}

fn rfc3339() -> impl Strategy<Value = String> {
    // 1970..2100, with nanoseconds and a few offsets.
    (
        0i64..4_102_444_800,
        prop_oneof![Just(0u32), 0u32..1_000_000_000],
        prop_oneof![Just(0i32), Just(3600), Just(-19_800)],
    )
        .prop_map(|(secs, nanos, offset)| {
            let t = OffsetDateTime::from_unix_timestamp(secs)
                .unwrap()
                .replace_nanosecond(nanos)
                .unwrap()
                .to_offset(time::UtcOffset::from_whole_seconds(offset).unwrap());
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        })
}

fn telemetry_batch() -> impl Strategy<Value = TelemetryBatch> {
    (
        uuid_v7(),
        any::<i64>(),
        "[a-z_]{1,12}",
        "[0-9a-f]{64}",
        vec(
            (
                rfc3339(),
                proptest::option::of("[A-Za-z0-9._:-]{1,128}"),
                row_values(),
            )
                .prop_map(|(ts, row_id, fields)| TelemetryRow { ts, row_id, fields }),
            1..10,
        ),
    )
        .prop_map(|(id, seq, table, hash, rows)| TelemetryBatch::new(id, seq, table, hash, rows))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn sql_value_round_trips(v in sql_value()) {
        let text = serde_json::to_string(&v).unwrap();
        let back: SqlValue = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(SqlValue::from_json(&v.to_json()).unwrap(), v);
    }

    #[test]
    fn row_batch_round_trips(batch in row_batch()) {
        let bytes = serde_json::to_vec(&batch).unwrap();
        let decoded = validate::decode_row_batch(&bytes);
        prop_assert_eq!(decoded, Ok(batch));
    }

    #[test]
    fn telemetry_batch_round_trips(batch in telemetry_batch()) {
        let bytes = serde_json::to_vec(&batch).unwrap();
        let decoded = validate::decode_telemetry_batch(&bytes);
        prop_assert_eq!(decoded, Ok(batch.clone()));
        // Cursors are the extreme instants.
        let min = batch.rows.iter().map(|r| timestamp::parse(&r.ts).unwrap()).min();
        prop_assert_eq!(timestamp::parse(&batch.cursor_start_ts).ok(), min);
    }

    #[test]
    fn decoders_never_panic_on_bytes(bytes in vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_json_ish_text(
        text in r#"[\[\]{}":,0-9eE.+\-a-z$_ \\NI]{0,200}"#
    ) {
        decode_all(text.as_bytes());
    }

    #[test]
    fn decoders_never_panic_on_mutated_documents(
        batch in row_batch(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = serde_json::to_vec(&batch).unwrap();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        decode_all(&bytes);
        let keep = cut.index(bytes.len());
        decode_all(&bytes[..keep]);
    }
}

fn decode_all(bytes: &[u8]) {
    let _ = validate::decode_row_batch(bytes);
    let _ = validate::decode_telemetry_batch(bytes);
    let _ = validate::decode_schema_observation(bytes);
    let _ = validate::decode_ingest_ack(bytes);
    let _ = validate::decode_ingest_request(bytes);
    let _ = validate::decode_control_envelope(bytes);
}
