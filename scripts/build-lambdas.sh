#!/usr/bin/env bash
# Builds the four Lambda binaries (ingest, api, replay, sweep) for AWS Lambda arm64
# (provided.al2023) with cargo-lambda, which cross-links with zig: no Docker, no cross image.
# Artifacts: $EDGE_LAMBDA_TARGET_DIR/lambda/<function>/bootstrap (+ bootstrap.zip with
# EDGE_LAMBDA_ZIP=1, what infra/terraform's lambda_artifacts_dir expects). Prints each binary's size.
#
# Own target directory (default: the workspace's target dir + "-lambda", e.g.
# ~/.cache/edge-sync/target-lambda): an aarch64 release build shares no artifacts with the host
# debug/test builds, and in its own directory it neither waits for nor blocks their cargo lock.
#
#   scripts/build-lambdas.sh                 # release, thin LTO (see below)
#   EDGE_LAMBDA_LTO=fat scripts/build-lambdas.sh   # the workspace release profile as is
#
# Why thin LTO by default: the workspace's release profile (fat LTO, codegen-units = 1) is tuned
# for the device binary's size; applied to four SDK-heavy binaries on a 2-core CI machine it
# costs several times the build time for a few MiB less per function (docs/deploy.md has the
# measured numbers). Lambda bills by memory and duration, not by package size.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${EDGE_LAMBDA_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/edge-sync/target}-lambda}"

if ! command -v cargo-lambda >/dev/null 2>&1; then
  echo "cargo-lambda not found: run scripts/setup.sh (pip install cargo-lambda)" >&2
  exit 1
fi
if [ "${EDGE_LAMBDA_LTO:-thin}" != "fat" ]; then
  export CARGO_PROFILE_RELEASE_LTO=thin
  export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi

functions=(ingest api replay sweep)
args=(--release --arm64 -p edge-functions --locked)
for f in "${functions[@]}"; do args+=(--bin "$f"); done
if [ "${EDGE_LAMBDA_ZIP:-0}" = "1" ]; then args+=(--output-format zip); fi

t0=$(date +%s)
cargo lambda build "${args[@]}"
echo "cargo lambda build --release --arm64: $(( $(date +%s) - t0 ))s"

status=0
for f in "${functions[@]}"; do
  bin="$CARGO_TARGET_DIR/lambda/$f/bootstrap"
  if [ -f "$bin" ]; then
    printf '  %-7s %6.1f MiB  %s\n' "$f" "$(echo "scale=1; $(stat -c %s "$bin") / 1048576" | bc 2>/dev/null || echo 0)" "$(file -b "$bin" | cut -d, -f1-2)"
  elif [ -f "$CARGO_TARGET_DIR/lambda/$f/bootstrap.zip" ]; then
    printf '  %-7s zip %s bytes\n' "$f" "$(stat -c %s "$CARGO_TARGET_DIR/lambda/$f/bootstrap.zip")"
  else
    echo "  $f: no artifact" >&2; status=1
  fi
done
exit "$status"
