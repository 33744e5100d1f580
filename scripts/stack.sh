# The local stack's pieces, sourced by scripts/demo.sh and scripts/api-contract.sh (one place
# for how PostgreSQL, mosquitto and the runner are started on this machine).
#
# The caller defines `log` and `die`, a `pids` array (every started process is appended, for
# its cleanup) and `CLOUD` (the edge-cloud binary).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_until() { # seconds, description, command...
  local deadline=$(( $(date +%s) + $1 )); local what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out waiting for $what"
    sleep 0.2
  done
}

# stack_postgres DIR LOGS: a private cluster in DIR/data (socket in DIR) on a free port, as an
# unprivileged user when run as root (PostgreSQL refuses root), with the database `edge`
# migrated. Sets PG_BIN, PG_PORT, DATABASE_URL and `as_pg` (for the caller's `pg_ctl stop`).
stack_postgres() {
  local dir=$1 logs=$2
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$PG_BIN" ] || PG_BIN=$(dirname "$(command -v initdb)")
  if [ "$(id -u)" -eq 0 ]; then
    PG_USER=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
    chown "$PG_USER" "$dir"
    as_pg() { setpriv --reuid="$PG_USER" --regid="$(id -g "$PG_USER")" --init-groups -- "$@"; }
  else
    as_pg() { "$@"; }
  fi
  PG_PORT=$(free_port)
  log "PostgreSQL on 127.0.0.1:$PG_PORT"
  as_pg "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$logs/initdb.log" 2>&1
  as_pg "$PG_BIN/postgres" -D "$dir/data" -p "$PG_PORT" -k "$dir" \
    -c listen_addresses=127.0.0.1 -c fsync=off >"$logs/postgres.log" 2>&1 &
  pids+=($!)
  wait_until 30 "PostgreSQL" "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT"
  "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres edge
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/edge"
  log "DATABASE_URL=$DATABASE_URL"
  "$CLOUD" migrate >"$logs/migrate.log" 2>&1
}

# stack_mosquitto DIR PKI LOGS [EXTRA_CONF]: mosquitto standing in for AWS IoT Core — mTLS with
# `require_certificate` and `use_identity_as_username`, the ACL the caller wrote to DIR/acl — on
# a free port. Sessions persist in DIR (`persistence true`) and a persistent session's queue has
# no cap (`max_queued_messages 0`; mosquitto's default of 1,000 silently drops the rest while the
# runner is away — reliability.md §1). Sets MQTT_PORT.
stack_mosquitto() {
  local dir=$1 pki=$2 logs=$3 extra=${4:-}
  MQTT_PORT=$(free_port)
  cat >"$dir/mosquitto.conf" <<CONF
per_listener_settings false
allow_anonymous false
acl_file $dir/acl
persistence true
persistence_location $dir/
max_queued_messages 0
$extra
user $(id -un)
log_dest stderr
listener $MQTT_PORT 127.0.0.1
cafile $pki/ca.crt
certfile $pki/server.crt
keyfile $pki/server.key
require_certificate true
use_identity_as_username true
CONF
  local mosquitto
  mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  log "mosquitto (mTLS + ACL) on 127.0.0.1:$MQTT_PORT"
  "$mosquitto" -c "$dir/mosquitto.conf" >"$logs/mosquitto.log" 2>&1 &
  pids+=($!)
  wait_until 10 "mosquitto" python3 -c "import socket; socket.create_connection(('127.0.0.1', $MQTT_PORT), 1)"
}

# stack_runner PKI LOGS SPILL: `edge-cloud run` (ingest, replay, sweep and the HTTP API) as the
# service identity against the broker of stack_mosquitto, with a fresh EDGE_JWT_SECRET; waits
# for the API. Sets HTTP_PORT and API, and METRICS (its `GET /metrics` URL, on a free port).
stack_runner() {
  local pki=$1 logs=$2 spill=$3
  HTTP_PORT=$(free_port)
  METRICS_PORT=$(free_port)
  METRICS="http://127.0.0.1:$METRICS_PORT/metrics"
  export EDGE_JWT_SECRET
  EDGE_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  API="http://127.0.0.1:$HTTP_PORT"
  log "edge-cloud run (API on $API)"
  "$CLOUD" run --mqtt-url "mqtts://127.0.0.1:$MQTT_PORT" \
    --ca "$pki/ca.crt" --cert "$pki/edge-service.crt" --key "$pki/edge-service.key" \
    --http "127.0.0.1:$HTTP_PORT" --metrics "127.0.0.1:$METRICS_PORT" \
    --spill-dir "$spill" >"$logs/edge-cloud.log" 2>&1 &
  pids+=($!)
  wait_until 30 "the HTTP API" python3 -c "import urllib.request; urllib.request.urlopen('$API/openapi.json', timeout=1)"
}
