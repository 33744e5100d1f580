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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_until() { # seconds, description, command...
  local deadline=$(( $(date +%s) + $1 )); local what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out waiting for $what"
    sleep 0.2
  done
}

# --- PostgreSQL ------------------------------------------------------------------------------
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$PG_BIN" ] || PG_BIN=$(dirname "$(command -v initdb)")
if [ "$(id -u)" -eq 0 ]; then
  PG_USER=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
  chown "$PG_USER" "$PG_DIR"
  as_pg() { setpriv --reuid="$PG_USER" --regid="$(id -g "$PG_USER")" --init-groups -- "$@"; }
else
  as_pg() { "$@"; }
fi
PG_PORT=$(free_port)
log "PostgreSQL on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres --no-sync >"$DEMO/logs/initdb.log" 2>&1
as_pg "$PG_BIN/postgres" -D "$PG_DIR/data" -p "$PG_PORT" -k "$PG_DIR" \
  -c listen_addresses=127.0.0.1 -c fsync=off >"$DEMO/logs/postgres.log" 2>&1 &
pids+=($!)
wait_until 30 "PostgreSQL" "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT"
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres edge
export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/edge"
"$CLOUD" migrate >"$DEMO/logs/migrate.log" 2>&1

# --- certificates and the device registry ---------------------------------------------------
log "local CA, broker and service certificates in .demo/pki"
"$CLOUD" pki init --ca-dir "$DEMO/pki" >/dev/null
DEVICE_JSON=$("$CLOUD" devices create --name demo-gw --slug demo --ca-dir "$DEMO/pki")
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$DEVICE_JSON" "$1"; }
ORG=$(field org_id); PROJECT=$(field project_id); CONTROL_KEY=$(field control_key)
log "registered device demo-gw (org $ORG, project $PROJECT)"

# --- mosquitto standing in for AWS IoT Core ---------------------------------------------------
MQTT_PORT=$(free_port)
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
cat >"$DEMO/mqtt/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous false
acl_file $DEMO/mqtt/acl
persistence true
persistence_location $DEMO/mqtt/
user $(id -un)
log_dest stderr
listener $MQTT_PORT 127.0.0.1
cafile $DEMO/pki/ca.crt
certfile $DEMO/pki/server.crt
keyfile $DEMO/pki/server.key
require_certificate true
use_identity_as_username true
EOF
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
log "mosquitto (mTLS + ACL) on 127.0.0.1:$MQTT_PORT"
"$MOSQUITTO" -c "$DEMO/mqtt/mosquitto.conf" >"$DEMO/logs/mosquitto.log" 2>&1 &
pids+=($!)
wait_until 10 "mosquitto" python3 -c "import socket; socket.create_connection(('127.0.0.1', $MQTT_PORT), 1)"

# --- the cloud runner: ingest, replay, sweep, HTTP API ----------------------------------------
HTTP_PORT=$(free_port)
export EDGE_JWT_SECRET
EDGE_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
log "edge-cloud run (API on http://127.0.0.1:$HTTP_PORT)"
"$CLOUD" run --mqtt-url "mqtts://127.0.0.1:$MQTT_PORT" \
  --ca "$DEMO/pki/ca.crt" --cert "$DEMO/pki/edge-service.crt" --key "$DEMO/pki/edge-service.key" \
  --http "127.0.0.1:$HTTP_PORT" --spill-dir "$DEMO/spill" >"$DEMO/logs/edge-cloud.log" 2>&1 &
pids+=($!)
wait_until 30 "the HTTP API" python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/openapi.json', timeout=1)"

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
