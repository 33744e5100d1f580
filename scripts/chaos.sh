#!/usr/bin/env bash
# The whole-stack fault suite (issue 13; docs/reliability.md "The fault suite").
#
# Real processes — PostgreSQL, mosquitto (mTLS + ACL, persistent sessions, max_queued_messages 0),
# `edge-cloud run`, `edge-agent` — and an application writing a real SQLite file through the
# system libsqlite3 (tests/src/chaos/writer.py). Faults at moments drawn from a printed seed:
# kill -9 of the agent and of the runner, a second runner on the same subscription, broker
# restart, PostgreSQL kill -9 and a 60 s outage, a device clock set back at a new journal epoch.
# Verdict: the mirror equals the source (REALs bit for bit) and every change the agent logged as
# acknowledged is in the mirror. The driver is tests/src/bin/chaos.rs.
#
#   scripts/chaos.sh                    # CI mode: fixed seed 1 (CHAOS_SEEDS="1 2 3" for more), ~5 min
#   scripts/chaos.sh --seed 7           # CI mode, another seed
#   scripts/chaos.sh --soak 30m         # soak: random faults for 30 minutes at a higher rate, plus
#                                       # disk full on the agent's directory (a 48 MB tmpfs) and the
#                                       # writer alternating with a second SQLite (the bundled 3.54)
#
# Exit status: 0 PASS, 1 FAIL (reasons printed; logs kept and their path printed), 2 set-up error.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '[chaos.sh] %s\n' "$*"; }
die() { printf '[chaos.sh] %s\n' "$*" >&2; exit 2; }

seeds=${CHAOS_SEEDS:-1}
soak=""
while [ $# -gt 0 ]; do
  case $1 in
    --seed) seeds=$2; shift 2 ;;
    --soak)
      case $2 in
        *h) soak=$(( ${2%h} * 3600 )) ;;
        *m) soak=$(( ${2%m} * 60 )) ;;
        *s) soak=${2%s} ;;
        *) soak=$2 ;;
      esac
      shift 2 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done

if ! command -v faketime >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    log "installing faketime"
    apt-get install -y faketime >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y faketime >/dev/null 2>&1; } \
      || die "faketime is missing and could not be installed"
  else
    die "faketime is missing (apt-get install faketime)"
  fi
fi
for p in mosquitto python3 curl setpriv; do
  command -v "$p" >/dev/null || [ -x "/usr/sbin/$p" ] || die "$p is missing (scripts/setup.sh)"
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-sync/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
log "building edge-agent, edge-cloud and the driver"
cargo build --quiet -p edge-agent --bin edge-agent -p edge-functions --bin edge-cloud -p edge-e2e --bin chaos
BIN="$CARGO_TARGET_DIR/debug"

rc=0
for seed in $seeds; do
  WORK=$(mktemp -d /tmp/edge-chaos.XXXXXX)
  chmod 755 "$WORK"
  extra=()
  mounted=""
  if [ -n "$soak" ]; then
    [ "$(id -u)" -eq 0 ] || die "soak mode needs root (tmpfs for the disk-full fault)"
    mkdir -p "$WORK/device"
    mount -t tmpfs -o size=48m tmpfs "$WORK/device"
    mounted="$WORK/device"
    # A second SQLite for the application: the amalgamation rusqlite bundles, as a shared
    # library that Python's sqlite3 module loads instead of the system one.
    amalgamation=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/libsqlite3-sys-*/sqlite3/sqlite3.c 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$amalgamation" ] && command -v cc >/dev/null; then
      log "building $(grep -m1 '#define SQLITE_VERSION ' "$amalgamation" | awk '{print $3}') as a second libsqlite3"
      mkdir -p "$WORK/sqlite2"
      cc -O1 -shared -fPIC -DSQLITE_THREADSAFE=1 -DSQLITE_ENABLE_COLUMN_METADATA \
        -o "$WORK/sqlite2/libsqlite3.so.0" "$amalgamation" -lpthread -ldl -lm
      extra+=(--second-sqlite "$WORK/sqlite2")
    else
      log "no amalgamation or C compiler: the writer stays on the system libsqlite3"
    fi
    extra+=(--soak "$soak" --agent-dir "$WORK/device")
  fi
  t0=$(date +%s)
  set +e
  "$BIN/chaos" --seed "$seed" --agent "$BIN/edge-agent" --cloud "$BIN/edge-cloud" \
    --writer "$ROOT/tests/src/chaos/writer.py" --work "$WORK/run" "${extra[@]}"
  status=$?
  set -e
  log "seed $seed: exit $status after $(( $(date +%s) - t0 ))s"
  if [ -n "$mounted" ]; then
    mkdir -p "$WORK/device-copy"
    cp -a "$mounted"/. "$WORK/device-copy"/ 2>/dev/null || true
    umount "$mounted" || true
  fi
  if [ "$status" -eq 0 ]; then
    rm -rf "$WORK"
  else
    log "seed $seed: logs kept in $WORK/run/logs"
    [ "$status" -gt "$rc" ] && rc=$status
  fi
done
exit "$rc"
