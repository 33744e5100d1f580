//! Property: for random sequences of inserts, updates (including key changes), deletes, schema
//! changes, polls and acknowledgements, replaying the journal — read through the public reader
//! and converted to protocol `RowChange`s exactly as the publisher sends them — onto an empty
//! copy reproduces the source table exactly (values and storage classes).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use edge_protocol::batch::RowChange;
use proptest::prelude::*;
use rusqlite::types::Value;

const TABLE: &str = "pro\"p 表 select";

#[derive(Debug, Clone)]
enum Action {
    Insert(i64, String, Value, Value),
    Update(i64, String, Value, Value),
    ChangeKey(i64, String, i64),
    Delete(i64, String),
    AddColumn,
    Poll,
    AckAll,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        prop_oneof![
            any::<f64>().prop_filter("finite, non-negative-zero", |f| f.is_finite()
                && !(f == &0.0 && f.is_sign_negative())),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
        ]
        .prop_map(Value::Real),
        ".{0,6}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(Value::Blob),
    ]
}

fn key() -> impl Strategy<Value = (i64, String)> {
    (
        0i64..6,
        prop_oneof![Just("a".to_string()), Just("b'\"".to_string())],
    )
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (key(), value(), value()).prop_map(|((k, s), a, b)| Action::Insert(k, s, a, b)),
        3 => (key(), value(), value()).prop_map(|((k, s), a, b)| Action::Update(k, s, a, b)),
        1 => (key(), 0i64..6).prop_map(|((k, s), n)| Action::ChangeKey(k, s, n)),
        2 => key().prop_map(|(k, s)| Action::Delete(k, s)),
        1 => Just(Action::AddColumn),
        1 => Just(Action::Poll),
        1 => Just(Action::AckAll),
    ]
}

/// Reads everything pending as the publisher would, optionally acknowledging it.
fn collect(
    cap: &mut edge_agent::capture::Capture,
    state: &edge_agent::state::StateDb,
    seen: &mut Vec<RowChange>,
    ack: bool,
) {
    let read = read_all(cap, state);
    seen.extend(changes_of(&read, TABLE));
    if ack {
        if let Some(seq) = read.covered.get(TABLE) {
            cap.ack(state, TABLE, *seq, 7).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    #[test]
    fn replaying_the_journal_reproduces_the_table(actions in proptest::collection::vec(action(), 1..60)) {
        let mut env = Env::new();
        let app = env.app();
        let t = q(TABLE);
        app.execute_batch(&format!(
            "CREATE TABLE {t} (k INTEGER NOT NULL, \"s k\" TEXT NOT NULL, a, \"b c\" REAL, PRIMARY KEY (k, \"s k\"));"
        )).unwrap();
        let mut state = env.state();
        let mut cap = env.capture(&mut state, no_snapshot());
        let mut seen: Vec<RowChange> = Vec::new();
        let mut extra = 0;
        for act in &actions {
            match act {
                Action::Insert(k, s, a, b) => {
                    app.execute(&format!("INSERT OR REPLACE INTO {t} (k, \"s k\", a, \"b c\") VALUES (?1, ?2, ?3, ?4)"),
                        rusqlite::params![k, s, a, b]).unwrap();
                }
                Action::Update(k, s, a, b) => {
                    app.execute(&format!("UPDATE {t} SET a = ?3, \"b c\" = ?4 WHERE k = ?1 AND \"s k\" = ?2"),
                        rusqlite::params![k, s, a, b]).unwrap();
                }
                Action::ChangeKey(k, s, n) => {
                    app.execute(&format!("UPDATE OR REPLACE {t} SET k = ?3 WHERE k = ?1 AND \"s k\" = ?2"),
                        rusqlite::params![k, s, n]).unwrap();
                }
                Action::Delete(k, s) => {
                    app.execute(&format!("DELETE FROM {t} WHERE k = ?1 AND \"s k\" = ?2"), rusqlite::params![k, s]).unwrap();
                }
                Action::AddColumn => {
                    extra += 1;
                    app.execute_batch(&format!("ALTER TABLE {t} ADD COLUMN \"x{extra}\" INTEGER DEFAULT {extra};")).unwrap();
                    // Writes right after the ALTER, before the agent notices: captured by the
                    // old triggers, refreshed on read.
                    app.execute(&format!("UPDATE {t} SET \"x{extra}\" = k * 10 WHERE k % 2 = 0"), []).unwrap();
                }
                Action::Poll => {
                    cap.poll(&mut state, &mut env.ids).unwrap();
                    collect(&mut cap, &state, &mut seen, false);
                }
                Action::AckAll => {
                    cap.poll(&mut state, &mut env.ids).unwrap();
                    collect(&mut cap, &state, &mut seen, true);
                }
            }
        }
        cap.poll(&mut state, &mut env.ids).unwrap();
        collect(&mut cap, &state, &mut seen, true);
        // Entries read without ack are read again later; a mirror applies by commit order.
        seen.sort_by_key(|c| c.commit_seq);
        let target = empty_copy(&app, TABLE);
        replay(&target, TABLE, &seen);
        prop_assert_eq!(dump(&target, TABLE), dump(&app, TABLE));
    }
}
