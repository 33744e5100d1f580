#!/usr/bin/env bash
# Benchmarks; results go to docs/benchmarks.md (copied by hand with the machine description).
#
#   scripts/bench.sh                 # every section
#   scripts/bench.sh materialize     # one section
#
# Each section is owned by the component it measures; keep them separate.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-sync/target}"
only="${1:-all}"

# --- capture (edge-agent) ------------------------------------------------------------------
# Capture overhead (agent.md §1): a 5-column table, WAL, with the agent's triggers vs without,
# alternating in one run, median of EDGE_BENCH_CAPTURE_ROUNDS (default 7) rounds; bulk
# 1,000-row transactions (insert, update of one numeric column) and single-row transactions
# (synchronous=NORMAL and FULL). Also shows a naive json_object/AUTOINCREMENT journal and the
# bare-trigger floor. Files go to EDGE_BENCH_DIR (default: the temp dir) — put it on the real
# storage for FULL numbers. Installs nothing; prints a markdown table.
if [ "$only" = all ] || [ "$only" = capture ]; then
  echo "== capture =="
  cargo bench -p edge-agent --bench capture
fi

# --- drain (edge-agent publisher) -----------------------------------------------------------
# Journal backlog (EDGE_BENCH_DRAIN_ROWS, default 1000000) → batches → the harness' mosquitto
# over mTLS → PUBACK → cursor advance, token bucket off, with the optimised binary: rows/s,
# CPU-s per 100k rows, peak and idle RSS via /usr/bin/time -v, and a raw rumqttc publish loop of
# the same batch bytes in the same run. Needs the `time` package.
if [ "$only" = all ] || [ "$only" = drain ]; then
  echo "== drain =="
  cargo bench -p edge-agent --bench drain
fi

# --- materialize (cloud ingest, functions/) ------------------------------------------------
# Rows/s into a mirror table (insert-only and 50 % updates, batches of 500) against COPY of the
# same rows into an identical plain table, same run, on the harness' PostgreSQL (or
# DATABASE_URL). EDGE_BENCH_ROWS sets the rows per run (default 200000).
if [ "$only" = all ] || [ "$only" = materialize ]; then
  echo "== materialize =="
  cargo bench -p edge-functions --bench materialize
fi

# --- replay (cloud governance, functions/) ------------------------------------------------
# Replay drain rate: staged rows/s into the mirror through the replay worker (chunk
# transactions with cursor + deletes) for a backlog, against COPY of the same rows with the same
# rows per transaction, same run. EDGE_BENCH_REPLAY_ROWS sets the backlog (default 1000000),
# EDGE_REPLAY_CHUNK the rows per chunk (default 2000).
if [ "$only" = all ] || [ "$only" = replay ]; then
  echo "== replay =="
  cargo bench -p edge-functions --bench replay
fi

# --- api (cloud governance HTTP API, functions/) ------------------------------------------
# p50/p99 of the lineage list (limit 50) and mirror-rows pages (limit 100) under 20 concurrent
# clients through the API router, 500 lineages and a 20,000-row mirror. EDGE_BENCH_REQUESTS
# sets the requests per client (default 200).
if [ "$only" = all ] || [ "$only" = api ]; then
  echo "== api =="
  cargo bench -p edge-functions --bench api
fi

# --- latency (whole local stack, tests/) ----------------------------------------------------
# Commit-to-mirror latency p50/p99 through the real agent, mosquitto (mTLS) and the runner, with
# flush_interval = 1s and in low-latency mode. EDGE_BENCH_LATENCY_ROWS (default 200) rows, one
# every EDGE_BENCH_LATENCY_INTERVAL_MS (default 50).
if [ "$only" = all ] || [ "$only" = latency ]; then
  echo "== latency =="
  cargo bench -p edge-e2e --bench latency
fi
