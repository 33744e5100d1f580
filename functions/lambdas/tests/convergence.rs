//! Any permutation of any multiset of batches converges to the source state: 1,000 random
//! batches (inserts, updates, deletes, primary-key changes, two journal epochs), each delivered
//! 1–3 times, shuffled, half before approval (staged, then replayed) and half after (live),
//! through four concurrent workers.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use edge_functions::ingest::Outcome;
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// Deterministic xorshift: the test's randomness is reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shuffled_duplicated_batches_converge_to_the_source_state() {
    let e = Arc::new(env().await);
    let schema = device_state();
    let seed = std::env::var("EDGE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    let mut rng = Rng(seed);
    // The source table as the device sees it: id → (mode, setpoint).
    let mut source: BTreeMap<i64, (String, f64)> = BTreeMap::new();
    let epochs = [e.id(), e.id()];
    let mut batches: Vec<Value> = Vec::new();
    let mut seq = 0i64;
    for b in 0..1000 {
        let epoch = if b < 500 { epochs[0] } else { epochs[1] };
        if b == 500 {
            // A new journal epoch restarts commit_seq: (epoch, seq) still orders everything.
            seq = 0;
        }
        let mut rows: Vec<Change> = Vec::new();
        for _ in 0..1 + rng.below(8) {
            seq += 1;
            let id = i64::try_from(rng.below(300)).unwrap();
            let mode = format!("m{}", rng.below(1000));
            let setpoint = f64::from(u32::try_from(rng.below(10_000)).unwrap()) / 10.0;
            match (source.contains_key(&id), rng.below(4)) {
                (false, _) => {
                    source.insert(id, (mode.clone(), setpoint));
                    rows.push(ins(seq, id, &mode, setpoint));
                }
                (true, 0) => {
                    source.remove(&id);
                    rows.push(del(seq, id));
                }
                (true, 1) => {
                    // Primary-key change: delete of the old key, insert of the new one.
                    let new_id = 1000 + i64::try_from(rng.below(300)).unwrap();
                    if source.contains_key(&new_id) {
                        continue;
                    }
                    let old = source.remove(&id).unwrap();
                    rows.push(del(seq, id));
                    seq += 1;
                    rows.push(ins(seq, new_id, &old.0, old.1));
                    source.insert(new_id, old);
                }
                (true, _) => {
                    source.insert(id, (mode.clone(), setpoint));
                    rows.push((
                        seq,
                        "update",
                        json!({"id": id}),
                        json!({"id": id, "mode": mode, "setpoint": setpoint}),
                    ));
                }
            }
        }
        if rows.is_empty() {
            continue;
        }
        batches.push(row_batch(e.id(), epoch, &schema, true, &rows));
    }

    // Deliveries: every batch 1–3 times, shuffled (Fisher–Yates).
    let mut deliveries: Vec<usize> = Vec::new();
    for i in 0..batches.len() {
        for _ in 0..1 + rng.below(3) {
            deliveries.push(i);
        }
    }
    for i in (1..deliveries.len()).rev() {
        let j = usize::try_from(rng.below(u64::try_from(i + 1).unwrap())).unwrap();
        deliveries.swap(i, j);
    }
    let batches = Arc::new(batches);
    let half = deliveries.len() / 2;
    let deliver = |slice: Vec<usize>| {
        let e = Arc::clone(&e);
        let batches = Arc::clone(&batches);
        async move {
            let queue = Arc::new(Mutex::new(slice));
            let mut workers = Vec::new();
            for _ in 0..4 {
                let (e, batches, queue) =
                    (Arc::clone(&e), Arc::clone(&batches), Arc::clone(&queue));
                workers.push(tokio::spawn(async move {
                    loop {
                        let Some(i) = queue.lock().await.pop() else {
                            break;
                        };
                        match e.rows(&batches[i]).await {
                            Outcome::Accepted { .. } | Outcome::Duplicate { .. } => {}
                            other => panic!("batch {i}: {other:?}"),
                        }
                    }
                }));
            }
            for w in workers {
                w.await.unwrap();
            }
        }
    };
    deliver(deliveries[..half].to_vec()).await;
    e.approve("device_state").await;
    deliver(deliveries[half..].to_vec()).await;

    let mirror: BTreeMap<i64, (String, f64)> = e
        .client
        .query(
            "SELECT id, mode, setpoint FROM edge_mirror_0000d007_device_state \
             WHERE NOT _edge_deleted",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(mirror.len(), source.len());
    assert_eq!(mirror, source, "seed {seed}");
    // Nothing left behind in staging, and every batch is in the ledger exactly once.
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_staged_rows").await,
        0
    );
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_export_segments")
            .await,
        i64::try_from(batches.len()).unwrap()
    );
}
