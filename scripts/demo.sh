#!/usr/bin/env bash
# The whole local stack syncing a sample database end to end:
#
#   writer.py ─► source.db ─► edge-agent ──MQTT/mTLS──► mosquitto (ACL) ──► edge-cloud run ─► PostgreSQL
#                                                                              ▲ HTTP API
#                                                                   review.py (the operator)
#
# Everything runs on this machine in ./.demo (PostgreSQL's data directory in a temp dir, because
# PostgreSQL refuses to run as root and its user must be able to reach the directory). The sample
# application creates two tables; each appears as a queued schema review, which the operator
# script claims and approves through the API (printing the equivalent curl calls); staged rows
# replay into the mirror and new writes flow straight through. Half-way the application adds a
# column: a new review, approved the same way. Stop with Ctrl-C: everything is shut down.
#
#   scripts/demo.sh                 # runs until Ctrl-C
#   EDGE_DEMO_SECONDS=60 scripts/demo.sh   # stops by itself after 60 s (used by CI smoke runs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '\033[1;32m[demo]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[demo] %s\033[0m\n' "$*" >&2; exit 1; }

EDGE_SETUP_SKIP_CROSS=1 scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-sync/target}"
log "building edge-agent and edge-cloud"
cargo build --quiet -p edge-agent --bin edge-agent -p edge-functions --bin edge-cloud
AGENT="$CARGO_TARGET_DIR/debug/edge-agent"
CLOUD="$CARGO_TARGET_DIR/debug/edge-cloud"

DEMO="$ROOT/.demo"
rm -rf "$DEMO"
mkdir -p "$DEMO"/{pki,mqtt,device,logs}
PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/edge-sync-demo-pg.XXXXXX")
chmod 755 "$PG_DIR"

pids=()
cleanup() {
  trap - EXIT INT TERM
  log "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${PG_BIN:-}" ] && [ -f "$PG_DIR/data/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PG_DIR"
  log "logs are in $DEMO/logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/stack.sh
. scripts/stack.sh

# --- PostgreSQL ------------------------------------------------------------------------------
stack_postgres "$PG_DIR" "$DEMO/logs"

# --- certificates and the device registry ---------------------------------------------------
log "local CA, broker and service certificates in .demo/pki"
"$CLOUD" pki init --ca-dir "$DEMO/pki" >/dev/null
DEVICE_JSON=$("$CLOUD" devices create --name demo-gw --slug demo --ca-dir "$DEMO/pki")
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$DEVICE_JSON" "$1"; }
ORG=$(field org_id); PROJECT=$(field project_id); CONTROL_KEY=$(field control_key)
log "registered device demo-gw (org $ORG, project $PROJECT)"

# --- mosquitto standing in for AWS IoT Core ---------------------------------------------------
cat >"$DEMO/mqtt/acl" <<'EOF'
# Username = client certificate CN. Devices publish only their own device->cloud topics and
# receive only their own control topic; `+` also matches a slugless root's empty level.
pattern write +/%u/sync/rows/batch
pattern write +/%u/sync/telemetry/batch
pattern write +/%u/sync/schema/observe
pattern write +/%u/sync/ingest/ack
pattern write +/%u/sync/ingest/request
pattern read +/%u/sync/ingest/control

user edge-service
topic read +/+/sync/#
topic write +/+/sync/ingest/control
EOF
stack_mosquitto "$DEMO/mqtt" "$DEMO/pki" "$DEMO/logs"

# --- the cloud runner: ingest, replay, sweep, HTTP API ----------------------------------------
stack_runner "$DEMO/pki" "$DEMO/logs" "$DEMO/spill"

# --- the gateway: an application writing source.db, and the agent --------------------------
log "sample application writing .demo/device/source.db"
python3 scripts/demo/writer.py "$DEMO/device/source.db" 0.3 60 &
pids+=($!)
wait_until 10 "the sample database" test -s "$DEMO/device/source.db"
cat >"$DEMO/device/agent.toml" <<EOF
[connection]
server_url = "mqtts://127.0.0.1:$MQTT_PORT"
device_name = "demo-gw"
root_topic = "demo/demo-gw"
ca_cert_path = "$DEMO/pki/ca.crt"
client_cert_path = "$DEMO/pki/demo-gw.crt"
client_key_path = "$DEMO/pki/demo-gw.key"

[sqlite-replication]
source_db_path = "$DEMO/device/source.db"
state_db_path = "$DEMO/device/state.db"
flush_interval = "1s"
low_latency = true
snapshot_on_first_run = true

[security]
signed_control = true
EOF
log "edge-agent run (signed controls; key from OMEGA_AUTH_TOKEN)"
OMEGA_AUTH_TOKEN="$CONTROL_KEY" "$AGENT" check --config "$DEMO/device/agent.toml" | sed 's/^/[agent check] /'
OMEGA_AUTH_TOKEN="$CONTROL_KEY" "$AGENT" run --config "$DEMO/device/agent.toml" >"$DEMO/logs/edge-agent.log" 2>&1 &
pids+=($!)

# --- the operator ------------------------------------------------------------------------------
TOKEN=$("$CLOUD" token --org "$ORG" --project "$PROJECT" --permission PROJECT_CAN_MANAGE_DEVICES --ttl 2h)
log "operator token minted (edge-cloud token); TOKEN=\$(cat .demo/token)"
echo "$TOKEN" >"$DEMO/token"
log "reviewing schemas through the API; mirror contents every few seconds. Ctrl-C to stop."
python3 scripts/demo/review.py "http://127.0.0.1:$HTTP_PORT" "$TOKEN" "$ORG" "$PROJECT" &
pids+=($!)

if [ -n "${EDGE_DEMO_SECONDS:-}" ]; then
  sleep "$EDGE_DEMO_SECONDS"
else
  wait "${pids[-1]}"
fi
