//! Spill / snapshot uploads (protocol §7) on real PostgreSQL with the real local object store
//! and its HTTP PUT endpoint on a real socket: grants, upload tokens (expired, forged, too
//! large), finalize through the row intake, corrupt objects, bad lines, duplicates.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::sync::Arc;

use common::*;
use edge_cloud_core::spill::{object_key, SpillCode};
use edge_functions::env::Objects;
use edge_functions::ingest::Outcome;
use edge_functions::objects::local::{serve, LocalObjects};
use edge_protocol::control::{verify, ControlEnvelope, UploadOutcome};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

const SECRET: &[u8] = b"spill-test-secret";

struct Spill {
    e: Env,
    objects: LocalObjects,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The same directory and secret, reached at another address.
fn small_objects(o: &LocalObjects, addr: std::net::SocketAddr) -> LocalObjects {
    LocalObjects::new(o.dir(), &format!("http://{addr}"), SECRET.to_vec()).with_max_bytes(1_000)
}

async fn spill_env() -> Spill {
    let mut e = env().await;
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let objects = LocalObjects::new(dir.path(), &format!("http://{addr}"), SECRET.to_vec());
    e.deps = e.deps.clone().with_objects(Objects::Local(objects.clone()));
    let server = tokio::spawn(serve(
        Arc::new(objects.clone()),
        None,
        listener,
        std::future::pending(),
    ));
    Spill {
        e,
        objects,
        addr,
        _dir: dir,
        _server: server,
    }
}

fn request(kind: &str, batch_id: Uuid, table: &str) -> Vec<u8> {
    json!({"format_version": 1, "request_kind": kind, "source_table": table,
           "segment_kind": "payload_spill", "batch_id": batch_id.to_string()})
    .to_string()
    .into_bytes()
}

/// `url_request` / `finalize` of `batch_id` for `device_state`.
async fn ask(e: &Env, kind: &str, batch_id: Uuid) -> Outcome {
    e.send(
        "sync/ingest/request",
        &request(kind, batch_id, "device_state"),
    )
    .await
}

/// zstd JSON Lines, as the agent builds them.
fn object(rows: &[Change]) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    for (seq, op, pk, row) in rows {
        let line = json!({"commit_seq": seq, "op": op, "pk": pk, "row": row});
        serde_json::to_writer(&mut enc, &line).unwrap();
        enc.write_all(b"\n").unwrap();
    }
    enc.finish().unwrap()
}

/// A raw HTTP/1.1 PUT (what `ureq` sends); returns the status code.
async fn put(addr: std::net::SocketAddr, url: &str, body: &[u8], length: Option<u64>) -> u16 {
    let path = url.split_once(&addr.to_string()).unwrap().1;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        length.unwrap_or(body.len() as u64)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before the body: a broken pipe then is expected.
    let _ = s.write_all(body).await;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A PUT without `Content-Length` (chunked transfer): the limit is enforced while streaming.
async fn put_chunked(addr: std::net::SocketAddr, url: &str, body: &[u8]) -> u16 {
    let path = url.split_once(&addr.to_string()).unwrap().1;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(256) {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer 413 and close mid-body.
        if s.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Establishes the lineage (its hash and the device's epoch) with one batch, approved so the
/// rest materializes.
async fn with_lineage(e: &Env) -> Uuid {
    let epoch = e.id();
    let s = device_state();
    let batch = row_batch(e.id(), epoch, &s, true, &[ins(1, 1, "heat", 20.5)]);
    e.rows(&batch).await;
    e.approve("device_state").await;
    epoch
}

/// The grant most recently issued for `batch_id`.
async fn grant_of(e: &Env, batch_id: Uuid) -> ControlEnvelope {
    let v: Value = e
        .client
        .query_one(
            "SELECT envelope FROM edge_pending_controls WHERE control_kind = 'url_grant' \
             AND envelope->>'batch_id' = $1 ORDER BY created_at DESC, control_id DESC LIMIT 1",
            &[&batch_id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    serde_json::from_value(v).unwrap()
}

/// The `upload_result` most recently issued for `batch_id`.
async fn result_of(e: &Env, batch_id: Uuid) -> ControlEnvelope {
    let v: Value = e
        .client
        .query_one(
            "SELECT envelope FROM edge_pending_controls WHERE control_kind = 'upload_result' \
             AND envelope->>'batch_id' = $1 ORDER BY created_at DESC, control_id DESC LIMIT 1",
            &[&batch_id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    let result: ControlEnvelope = serde_json::from_value(v).unwrap();
    assert!(verify(&result, &e.device.control_key).is_ok());
    result
}

async fn mirror_row(e: &Env, id: i64) -> Option<(String, i64)> {
    let table: String = e
        .client
        .query_one(
            "SELECT mirror_table_name FROM edge_table_lineages WHERE source_table = 'device_state'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    e.client
        .query_opt(
            &format!("SELECT mode, _edge_commit_seq FROM \"{table}\" WHERE id = $1 AND NOT _edge_deleted"),
            &[&id],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

#[tokio::test]
async fn request_grant_put_finalize_materializes_and_duplicates_are_harmless() {
    let s = spill_env().await;
    let e = &s.e;
    with_lineage(e).await;
    let batch = e.id();
    let big = "x".repeat(300_000);
    let rows = [ins(2, 2, &big, 1.0), ins(3, 3, "cool", 2.0)];

    let o = ask(e, "url_request", batch).await;
    assert!(
        matches!(o, Outcome::UploadGranted { batch_id, .. } if batch_id == batch),
        "{o:?}"
    );
    let g = grant_of(e, batch).await;
    verify(&g, &e.device.control_key).unwrap();
    // The device asks again before the grant reached it: the same (unacked) grant is re-sent.
    let again = ask(e, "url_request", batch).await;
    assert_eq!(
        again,
        Outcome::UploadGranted {
            batch_id: batch,
            control_id: g.control_id
        }
    );
    assert_eq!(g.batch_id, Some(batch));
    assert_eq!(g.source_table.as_deref(), Some("device_state"));
    let url = g.presigned_url.clone().unwrap();
    let expires =
        edge_protocol::timestamp::parse(g.presigned_url_expires_at.as_deref().unwrap()).unwrap();
    let issued = edge_protocol::timestamp::parse(g.issued_at.as_deref().unwrap()).unwrap();
    assert_eq!((expires - issued).whole_seconds(), 15 * 60);

    assert_eq!(put(s.addr, &url, &object(&rows), None).await, 200);
    let o = ask(e, "finalize", batch).await;
    match &o {
        Outcome::Accepted {
            batch_id,
            materialized,
            staged,
            ..
        } => {
            assert_eq!(*batch_id, batch);
            assert_eq!((*materialized, *staged), (2, 0));
        }
        other => panic!("expected Accepted, got {other:?}"),
    }
    assert_eq!(mirror_row(e, 2).await, Some((big.clone(), 2)));
    assert_eq!(mirror_row(e, 3).await, Some(("cool".into(), 3)));
    let key = object_key(e.device.device_id, batch);
    assert!(
        !s.objects.dir().join(&key).exists(),
        "a committed object is removed from the local store"
    );
    let ledger = e
        .client
        .query_one(
            "SELECT kind, status, row_count, first_seq, last_seq FROM edge_export_segments \
             WHERE batch_id = $1",
            &[&batch],
        )
        .await
        .unwrap();
    assert_eq!(ledger.get::<_, String>(0), "spill");
    assert_eq!(ledger.get::<_, String>(1), "materialized");
    assert_eq!(ledger.get::<_, i32>(2), 2);
    assert_eq!(
        (
            ledger.get::<_, Option<i64>>(3),
            ledger.get::<_, Option<i64>>(4)
        ),
        (Some(2), Some(3))
    );

    // Duplicate finalize (QoS 1 redelivery): a no-op. A late url_request: no new grant.
    let o = ask(e, "finalize", batch).await;
    assert_eq!(o, Outcome::Duplicate { batch_id: batch });
    let o = ask(e, "url_request", batch).await;
    assert_eq!(o, Outcome::Duplicate { batch_id: batch });
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_export_segments WHERE kind = 'spill'")
            .await,
        1
    );
    // A restarted device is never left waiting (reliability §2): the late request is answered
    // with the signed result again, superseding the earlier unacked one.
    let v: Value = e
        .client
        .query_one(
            "SELECT envelope FROM edge_pending_controls WHERE control_kind = 'upload_result' \
             AND status = 'pending' AND envelope->>'batch_id' = $1",
            &[&batch.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    let result: ControlEnvelope = serde_json::from_value(v).unwrap();
    assert_eq!(result.outcome, Some(UploadOutcome::Committed));
    assert!(verify(&result, &e.device.control_key).is_ok());
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_spill_uploads WHERE status = 'finalized'")
            .await,
        1
    );
    // The device's ack ends the grant's re-sends.
    let ack = json!({"format_version": 1, "control_id": g.control_id.to_string()});
    let o = e.send("sync/ingest/ack", ack.to_string().as_bytes()).await;
    assert_eq!(
        o,
        Outcome::ControlAcked {
            control_id: g.control_id,
            known: true
        }
    );
}

#[tokio::test]
async fn upload_urls_refuse_expired_forged_and_oversized_puts() {
    let s = spill_env().await;
    let key = object_key(s.e.device.device_id, s.e.id());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = object(&[ins(1, 1, "a", 1.0)]);
    // Expired (signed correctly for a past instant).
    assert_eq!(
        put(s.addr, &s.objects.url(&key, now - 1), &body, None).await,
        403
    );
    // Forged: a valid URL with its expiry pushed out, and a signature from another secret.
    let good = s.objects.url(&key, now + 600);
    let pushed = good.replace(
        &format!("expires={}", now + 600),
        &format!("expires={}", now + 6000),
    );
    assert_eq!(put(s.addr, &pushed, &body, None).await, 403);
    let other = LocalObjects::new(
        s.objects.dir(),
        &format!("http://{}", s.addr),
        b"other".to_vec(),
    );
    assert_eq!(
        put(s.addr, &other.url(&key, now + 600), &body, None).await,
        403
    );
    let unsigned = good.split_once('?').unwrap().0.to_owned();
    assert_eq!(put(s.addr, &unsigned, &body, None).await, 403);
    // Over 1 GiB by Content-Length: refused before the body.
    assert_eq!(put(s.addr, &good, b"", Some((1 << 30) + 1)).await, 413);
    // Nothing was stored by any of them; the good URL works.
    assert!(!s.objects.dir().join(&key).exists());
    assert_eq!(put(s.addr, &good, &body, None).await, 200);
    assert_eq!(std::fs::read(s.objects.dir().join(&key)).unwrap(), body);
    // Without Content-Length the limit holds while streaming, and nothing is left behind.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let small_addr = listener.local_addr().unwrap();
    let small = small_objects(&s.objects, small_addr);
    tokio::spawn(serve(
        Arc::new(small.clone()),
        None,
        listener,
        std::future::pending(),
    ));
    let key2 = object_key(s.e.device.device_id, s.e.id());
    let url2 = small.url(&key2, now + 600);
    assert_eq!(put_chunked(small_addr, &url2, &[7u8; 5_000]).await, 413);
    assert_eq!(put_chunked(small_addr, &url2, &[7u8; 900]).await, 200);
    assert_eq!(
        std::fs::read(s.objects.dir().join(&key2)).unwrap(),
        [7u8; 900]
    );
    let leftovers: Vec<_> = std::fs::read_dir(s.objects.dir().join(&key2).parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".part-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Only PUT, only our keys.
    assert_eq!(
        put(s.addr, &good.replace("spill/", "spill/x"), &body, None).await,
        404
    );
}

#[tokio::test]
async fn corrupt_missing_and_bad_objects_are_named_and_can_be_retried() {
    let s = spill_env().await;
    let e = &s.e;
    with_lineage(e).await;
    let batch = e.id();
    let finalize = |e: &'static str| request(e, batch, "device_state");
    // Finalize without a request.
    let o = e.send("sync/ingest/request", &finalize("finalize")).await;
    assert!(
        matches!(
            o,
            Outcome::SpillFailed {
                code: SpillCode::NotRequested,
                ..
            }
        ),
        "{o:?}"
    );

    let o = e
        .send("sync/ingest/request", &finalize("url_request"))
        .await;
    assert!(matches!(o, Outcome::UploadGranted { .. }), "{o:?}");
    // Missing object.
    let o = e.send("sync/ingest/request", &finalize("finalize")).await;
    assert!(
        matches!(
            o,
            Outcome::SpillFailed {
                code: SpillCode::ObjectMissing,
                ..
            }
        ),
        "{o:?}"
    );
    // The device is told, signed, and may upload again (reliability §2).
    let result = result_of(e, batch).await;
    assert_eq!(result.outcome, Some(UploadOutcome::Failed));
    assert_eq!(result.code.as_deref(), Some("spill_object_missing"));
    assert_eq!(result.retryable, Some(true));
    // Not zstd.
    let url = grant_of(e, batch).await.presigned_url.unwrap();
    assert_eq!(put(s.addr, &url, b"this is not zstd", None).await, 200);
    let o = e.send("sync/ingest/request", &finalize("finalize")).await;
    assert!(
        matches!(
            o,
            Outcome::SpillFailed {
                code: SpillCode::ObjectCorrupt,
                ..
            }
        ),
        "{o:?}"
    );
    // Truncated zstd.
    let good = object(&[ins(2, 2, "big", 1.0), ins(3, 3, "b", 2.0)]);
    assert_eq!(put(s.addr, &url, &good[..good.len() - 4], None).await, 200);
    let o = e.send("sync/ingest/request", &finalize("finalize")).await;
    assert!(
        matches!(
            o,
            Outcome::SpillFailed {
                code: SpillCode::ObjectCorrupt,
                ..
            }
        ),
        "{o:?}"
    );
    // A bad second line: the first line's row is not kept either.
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.write_all(b"{\"commit_seq\":2,\"op\":\"insert\",\"pk\":{\"id\":2},\"row\":{\"id\":2,\"mode\":\"m\",\"setpoint\":1}}\n{\"commit_seq\":3,\"op\":\"delete\",\"pk\":{\"id\":2},\"row\":{\"id\":2}}\n").unwrap();
    assert_eq!(put(s.addr, &url, &enc.finish().unwrap(), None).await, 200);
    let o = e.send("sync/ingest/request", &finalize("finalize")).await;
    match &o {
        Outcome::SpillFailed {
            code: SpillCode::InvalidLine,
            message,
            ..
        } => {
            assert!(message.contains("line 2"), "{message}");
        }
        other => panic!("expected invalid line, got {other:?}"),
    }
    assert_eq!(mirror_row(e, 2).await, None);
    let result = result_of(e, batch).await;
    assert_eq!(result.code.as_deref(), Some("spill_invalid_line"));
    assert_eq!(
        result.retryable,
        Some(false),
        "a bad line never gets better"
    );
    // Empty object.
    assert_eq!(put(s.addr, &url, &object(&[]), None).await, 200);
    let o = e.send("sync/ingest/request", &finalize("finalize")).await;
    assert!(
        matches!(
            o,
            Outcome::SpillFailed {
                code: SpillCode::ObjectEmpty,
                ..
            }
        ),
        "{o:?}"
    );
    let (status, code): (String, Option<String>) = {
        let r = e
            .client
            .query_one(
                "SELECT status, outcome_code FROM edge_spill_uploads WHERE batch_id = $1",
                &[&batch],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("failed", Some("spill_object_empty"))
    );
    assert_eq!(
        e.scalar_i64("SELECT count(*) FROM edge_export_segments WHERE kind = 'spill'")
            .await,
        0,
        "failed finalizes leave no ledger row"
    );

    // The device asks again, uploads the right object, finalizes: all good.
    let o = e
        .send("sync/ingest/request", &finalize("url_request"))
        .await;
    assert!(matches!(o, Outcome::UploadGranted { .. }), "{o:?}");
    let url2 = grant_of(e, batch).await.presigned_url.unwrap();
    assert_eq!(put(s.addr, &url2, &good, None).await, 200);
    let o = e.send("sync/ingest/request", &finalize("finalize")).await;
    assert!(
        matches!(
            o,
            Outcome::Accepted {
                materialized: 2,
                ..
            }
        ),
        "{o:?}"
    );
    assert_eq!(mirror_row(e, 2).await, Some(("big".into(), 2)));
    // Only the newest grant is still re-sent.
    assert_eq!(
        e.scalar_i64(
            "SELECT count(*) FROM edge_pending_controls WHERE control_kind = 'url_grant' \
             AND status = 'pending'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn requests_without_a_known_header_or_store_get_no_grant() {
    let s = spill_env().await;
    let e = &s.e;
    let batch = e.id();
    // Nothing known of the device yet.
    let o = ask(e, "url_request", batch).await;
    assert_eq!(
        o,
        Outcome::UploadNotGranted {
            batch_id: batch,
            code: SpillCode::EpochUnknown
        }
    );
    // The device's epoch is known from another table, the table's schema is not.
    let other =
        edge_protocol::fingerprint::SchemaColumns::new("other", vec![col("id", "INTEGER", 1, 1)]);
    let b = row_batch(
        e.id(),
        e.id(),
        &other,
        true,
        &[(1, "insert", json!({"id": 1}), json!({"id": 1}))],
    );
    e.rows(&b).await;
    let o = ask(e, "url_request", batch).await;
    assert_eq!(
        o,
        Outcome::UploadNotGranted {
            batch_id: batch,
            code: SpillCode::SchemaUnknown
        }
    );
    // The schema observation the agent publishes before the request settles it.
    let obs = json!({"format_version": 1, "source_table": "device_state",
        "schema_hash": device_state().schema_hash(), "observed_at": "2026-04-28T09:00:00Z",
        "schema_columns": device_state()});
    e.send("sync/schema/observe", obs.to_string().as_bytes())
        .await;
    let o = ask(e, "url_request", batch).await;
    assert!(matches!(o, Outcome::UploadGranted { .. }), "{o:?}");
    // Rows of a spill into a lineage under review are staged, like a batch's.
    let url = grant_of(e, batch).await.presigned_url.unwrap();
    assert_eq!(
        put(s.addr, &url, &object(&[ins(5, 5, "m", 1.0)]), None).await,
        200
    );
    let o = ask(e, "finalize", batch).await;
    assert!(
        matches!(
            o,
            Outcome::Accepted {
                materialized: 0,
                staged: 1,
                ..
            }
        ),
        "{o:?}"
    );

    // Malformed request: a named rejection in the ledger.
    let o = e
        .send(
            "sync/ingest/request",
            br#"{"format_version":1,"request_kind":"nope"}"#,
        )
        .await;
    assert!(matches!(o, Outcome::Rejected { .. }), "{o:?}");
    // A deployment without an object store.
    let plain = env().await;
    let o = plain
        .send(
            "sync/ingest/request",
            &request("url_request", plain.id(), "t"),
        )
        .await;
    assert!(
        matches!(
            o,
            Outcome::UploadNotGranted {
                code: SpillCode::NotConfigured,
                ..
            }
        ),
        "{o:?}"
    );
}

#[tokio::test]
async fn large_objects_are_processed_in_chunks_in_one_transaction() {
    let s = spill_env().await;
    let e = &s.e;
    with_lineage(e).await;
    let batch = e.id();
    let n = edge_cloud_core::spill::CHUNK_ROWS as i64 * 2 + 17;
    let rows: Vec<Change> = (0..n)
        .map(|i| ins(10 + i, 10 + i, &format!("m{i}"), i as f64))
        .collect();
    let o = ask(e, "url_request", batch).await;
    assert!(matches!(o, Outcome::UploadGranted { .. }), "{o:?}");
    let url = grant_of(e, batch).await.presigned_url.unwrap();
    assert_eq!(put(s.addr, &url, &object(&rows), None).await, 200);
    let o = ask(e, "finalize", batch).await;
    assert!(
        matches!(o, Outcome::Accepted { materialized, staged: 0, .. } if materialized == n),
        "{o:?}"
    );
    let r = e
        .client
        .query_one(
            "SELECT row_count, first_seq, last_seq FROM edge_export_segments WHERE batch_id = $1",
            &[&batch],
        )
        .await
        .unwrap();
    assert_eq!(i64::from(r.get::<_, i32>(0)), n);
    assert_eq!(r.get::<_, Option<i64>>(1), Some(10));
    assert_eq!(r.get::<_, Option<i64>>(2), Some(10 + n - 1));
    assert_eq!(mirror_row(e, 10 + n - 1).await.unwrap().1, 10 + n - 1);

    // Out of order across a chunk boundary: nothing of the object is kept.
    let batch = e.id();
    let mut rows: Vec<Change> = (0..n)
        .map(|i| ins(100_000 + i, 100_000 + i, "x", 1.0))
        .collect();
    let last = rows.len() - 1;
    rows[last].0 = 100_000; // repeats the first commit_seq, in the last chunk
    ask(e, "url_request", batch).await;
    let url = grant_of(e, batch).await.presigned_url.unwrap();
    assert_eq!(put(s.addr, &url, &object(&rows), None).await, 200);
    let o = ask(e, "finalize", batch).await;
    assert!(
        matches!(
            o,
            Outcome::SpillFailed {
                code: SpillCode::OutOfOrder,
                ..
            }
        ),
        "{o:?}"
    );
    assert_eq!(mirror_row(e, 100_000).await, None);
}

/// A `url_request` with `content_length` (reliability §7).
fn sized_request(batch_id: Uuid, content_length: u64) -> Vec<u8> {
    json!({"format_version": 1, "request_kind": "url_request", "source_table": "device_state",
           "segment_kind": "payload_spill", "batch_id": batch_id.to_string(),
           "content_length": content_length})
    .to_string()
    .into_bytes()
}

/// Reliability §7 (defect 16, presigned PUT size): the device sends the object's size with its
/// `url_request`; the URL is signed for exactly that length, so a leaked URL cannot take
/// another object, and a size over the limit is refused before any URL exists.
#[tokio::test]
async fn presigned_put_urls_take_the_requested_length_only() {
    let s = spill_env().await;
    let e = &s.e;
    with_lineage(e).await;
    let batch = e.id();
    let body = object(&[ins(2, 2, "sized", 1.0)]);
    let n = body.len() as u64;
    let o = e
        .send("sync/ingest/request", &sized_request(batch, n))
        .await;
    assert!(matches!(o, Outcome::UploadGranted { .. }), "{o:?}");
    let url = grant_of(e, batch).await.presigned_url.unwrap();
    assert!(url.contains(&format!("&length={n}&")), "{url}");
    // Another length under the same URL; the signed length edited; no length at all.
    let longer = [body.clone(), vec![0u8; 64]].concat();
    assert_eq!(put(s.addr, &url, &longer, None).await, 403);
    assert_eq!(put(s.addr, &url, &body[..body.len() - 1], None).await, 403);
    let edited = url.replace(&format!("length={n}"), &format!("length={}", n + 64));
    assert_eq!(put(s.addr, &edited, &longer, None).await, 403);
    assert_eq!(put_chunked(s.addr, &url, &body).await, 411);
    let stripped = url.replace(&format!("&length={n}"), "");
    assert_eq!(put(s.addr, &stripped, &longer, None).await, 403);
    let key = object_key(e.device.device_id, batch);
    assert!(!s.objects.dir().join(&key).exists(), "nothing stored");
    // The length it was granted for.
    assert_eq!(put(s.addr, &url, &body, None).await, 200);
    let o = ask(e, "finalize", batch).await;
    assert!(
        matches!(
            o,
            Outcome::Accepted {
                materialized: 1,
                ..
            }
        ),
        "{o:?}"
    );
    assert_eq!(
        mirror_row(e, 2).await.map(|r| r.0).as_deref(),
        Some("sized")
    );

    // Over the protocol's 1 GiB: no URL; a failed, not retryable result blocks the table on
    // the device instead of a request every 30 s.
    let huge = e.id();
    let o = e
        .send("sync/ingest/request", &sized_request(huge, (1 << 30) + 1))
        .await;
    assert_eq!(
        o,
        Outcome::UploadNotGranted {
            batch_id: huge,
            code: SpillCode::ObjectTooLarge
        }
    );
    let r = result_of(e, huge).await;
    assert_eq!(r.outcome, Some(UploadOutcome::Failed));
    assert_eq!(r.code.as_deref(), Some("spill_object_too_large"));
    assert_eq!(r.retryable, Some(false));
    assert_eq!(
        e.scalar_i64(&format!(
            "SELECT count(*) FROM edge_pending_controls WHERE control_kind = 'url_grant' \
             AND envelope->>'batch_id' = '{huge}'"
        ))
        .await,
        0
    );
    // A content_length that is not a byte count is a named rejection.
    let bad = json!({"format_version": 1, "request_kind": "url_request",
        "source_table": "device_state", "segment_kind": "payload_spill",
        "batch_id": e.id().to_string(), "content_length": -5});
    let o = e
        .send("sync/ingest/request", bad.to_string().as_bytes())
        .await;
    assert!(
        matches!(&o, Outcome::Rejected { message, .. } if message.contains("content_length")),
        "{o:?}"
    );
}

/// Reliability §7: a device holds at most `MAX_OPEN_UPLOADS_PER_DEVICE` open uploads; the next
/// request gets no grant (retryable) until one of them is finalized.
#[tokio::test]
async fn a_device_holds_at_most_sixteen_open_uploads() {
    let s = spill_env().await;
    let e = &s.e;
    with_lineage(e).await;
    let cap = edge_cloud_core::spill::MAX_OPEN_UPLOADS_PER_DEVICE;
    assert_eq!(cap, 16);
    let batches: Vec<Uuid> = (0..cap).map(|_| e.id()).collect();
    for b in &batches {
        let o = ask(e, "url_request", *b).await;
        assert!(matches!(o, Outcome::UploadGranted { .. }), "{o:?}");
    }
    let extra = e.id();
    let o = ask(e, "url_request", extra).await;
    assert_eq!(
        o,
        Outcome::UploadNotGranted {
            batch_id: extra,
            code: SpillCode::TooManyOpenUploads
        }
    );
    assert!(SpillCode::TooManyOpenUploads.retryable());
    // An open upload asking again is not a new one: still served.
    let again = ask(e, "url_request", batches[0]).await;
    assert!(matches!(again, Outcome::UploadGranted { .. }), "{again:?}");
    // One finalized frees a slot.
    let url = grant_of(e, batches[0]).await.presigned_url.unwrap();
    assert_eq!(
        put(s.addr, &url, &object(&[ins(2, 2, "freed", 1.0)]), None).await,
        200
    );
    let o = ask(e, "finalize", batches[0]).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    let o = ask(e, "url_request", extra).await;
    assert!(matches!(o, Outcome::UploadGranted { .. }), "{o:?}");
}
