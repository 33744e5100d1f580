#!/usr/bin/env bash
# All checks CI runs: set-up, format, lints, every test (real SQLite, PostgreSQL and mosquitto
# started by the test harness on free ports), then a one-line summary.
#
# Reuses a build directory outside the clone so repeated runs (and CI) do not rebuild the world:
#   CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/edge-sync/target}
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-sync/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n\033[1;34m==> %s\033[0m\n' "$*"; }
started=$(date +%s)
declare -a results=()
failed=0

run_step() { # name, command...
  local name=$1; shift
  local t0; t0=$(date +%s)
  step "$name"
  if "$@"; then
    results+=("ok    $name ($(( $(date +%s) - t0 ))s)")
  else
    results+=("FAIL  $name ($(( $(date +%s) - t0 ))s)")
    failed=1
  fi
}

run_step "setup" scripts/setup.sh
run_step "cargo fmt --check" cargo fmt --all -- --check
run_step "cargo clippy -D warnings" cargo clippy --workspace --all-targets --locked -- -D warnings
# Statements must be unnamed to work behind RDS Proxy / pgbouncer transaction mode (issue 14);
# functions/lambdas/tests/pooler.rs proves the paths through a real pgbouncer.
run_step "unnamed statements (scripts/check-unnamed.sh)" scripts/check-unnamed.sh

# The harness's PostgreSQL accepts TLS only (hostssl pg_hba.conf) and every database test
# connects with sslmode=verify-full against its CA; this is the default, stated here so a
# stray EDGE_TEST_PG_TLS=0 in the environment cannot turn it off in CI.
export EDGE_TEST_PG_TLS=1

test_log=$(mktemp)
run_tests() {
  cargo test --workspace --all-targets --locked --no-fail-fast 2>&1 | tee "$test_log"
  return "${PIPESTATUS[0]}"
}
run_step "cargo test (workspace)" run_tests

# The API against docs/openapi.json: schemathesis on a running `edge-cloud run` (PostgreSQL +
# mosquitto), every check, 0 failures.
run_step "api contract (schemathesis)" scripts/api-contract.sh

# The whole-stack fault suite, CI mode (fixed seed, ~5 min): real agent, runner, broker and
# PostgreSQL under kill -9, restarts, a 60 s database outage and a clock set back; the mirror
# must equal the source and hold every acknowledged change (docs/reliability.md).
run_step "fault suite (scripts/chaos.sh, CI mode)" scripts/chaos.sh

if [ -x scripts/build-device.sh ] && [ "${EDGE_TEST_SKIP_CROSS:-0}" != "1" ]; then
  run_step "device cross-build + qemu smoke test" scripts/build-device.sh --smoke
  # The amd64 + arm64 .debs, installed into a debootstrap bookworm root (files, modes, conffile
  # upgrades, `edge-agent check` as the edge-agent user, purge): ~25 s, plus the x86_64 musl
  # release build when it is not cached (~5 min on 2 cores) and a first debootstrap (~70 s).
  run_step "gateway .deb install test (scripts/test-deb.sh)" scripts/test-deb.sh
fi

run_step "infra: cfn-lint, sam validate --lint, terraform + observability checks" scripts/check-infra.sh

# The SAM template transformed by aws-sam-translator and created in moto's CloudFormation
# (docs/deploy.md "Rehearsal against moto"; ~10 s). The AWS adapter tests against moto
# (functions/lambdas/tests/aws_moto.rs, ~35 s) run in the workspace tests above.
run_step "infra: deploy rehearsal (moto CloudFormation)" python3 scripts/deploy-rehearsal.py

# EDGE_TEST_LAMBDA_BUILD=0 skips the release arm64 Lambda build (see docs/deploy.md for its cost).
if [ -x scripts/build-lambdas.sh ] && [ "${EDGE_TEST_LAMBDA_BUILD:-1}" != "0" ]; then
  run_step "cargo lambda build --release --arm64" scripts/build-lambdas.sh
fi

# cargo prints one "test result: ok. N passed; M failed; ..." line per test binary.
read -r passed tfailed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i }
  } END { print p+0, f+0 }' "$test_log")
rm -f "$test_log"

step "summary ($(( $(date +%s) - started ))s)"
printf '  %s\n' "${results[@]}"
echo "${passed:-0} passed, ${tfailed:-0} failed"
exit "$failed"
