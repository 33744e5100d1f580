#!/usr/bin/env bash
# Installs everything a fresh Debian machine needs to build, test and demo edge-sync.
# Idempotent and quick when everything is present: each step checks before it installs.
#
#   scripts/setup.sh            # everything
#   EDGE_SETUP_SKIP_CROSS=1 ... # skip the ARM cross-build tools (zig, cargo-zigbuild, musl targets)
#   EDGE_SETUP_SKIP_LAMBDA=1 ... # skip cargo-lambda (AWS Lambda arm64 builds)
set -euo pipefail

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- Debian packages ---------------------------------------------------------------------
# binary-or-path => package
declare -A APT_WANTS=(
  [mosquitto]=mosquitto
  [mosquitto_pub]=mosquitto-clients
  [psql]=postgresql-client
  [qemu-aarch64-static]=qemu-user-static
  [curl]=curl
  [cc]=build-essential
  [pkg-config]=pkg-config
  [python3]=python3
  [pip3]=python3-pip
  [setpriv]=util-linux
  # RS256 API tests generate their RSA key with the CLI (tests/auth_rs256.rs)
  [openssl]=openssl
  # issue 13: the system libsqlite3 3.40 as the application's writer (device/tests/sqlite_versions.rs,
  # tests/tests/e2e_blocks.rs) and a clock set back (device/tests/epochs.rs, scripts/chaos.sh)
  [sqlite3]=sqlite3
  [faketime]=faketime
  # issue 14: the gateway .deb install test (scripts/test-deb.sh): a bookworm root to install into
  [debootstrap]=debootstrap
  [file]=file
  # issue 14: the transaction-mode pooler in front of the harness PostgreSQL (tests/src/pgbouncer.rs)
  [pgbouncer]=pgbouncer
)
missing=()
for bin in "${!APT_WANTS[@]}"; do
  if ! have "$bin" && [ ! -x "/usr/sbin/$bin" ]; then missing+=("${APT_WANTS[$bin]}"); fi
done
# The PostgreSQL server binaries live outside PATH on Debian.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! have initdb; then
  missing+=(postgresql)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# --- Rust toolchain components -------------------------------------------------------------
if ! have cargo; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs) and re-run" >&2
  exit 1
fi
if have rustup; then
  installed_components=$(rustup component list --installed 2>/dev/null || true)
  for comp in rustfmt clippy; do
    if ! grep -q "^${comp}" <<<"$installed_components"; then
      log "adding rustup component $comp"
      rustup component add "$comp"
    fi
  done
fi

# --- Cross-build tools for the gateway binaries (aarch64/armv7 musl) -----------------------
if [ "${EDGE_SETUP_SKIP_CROSS:-0}" != "1" ]; then
  if have rustup; then
    installed_targets=$(rustup target list --installed 2>/dev/null || true)
    for target in aarch64-unknown-linux-musl x86_64-unknown-linux-musl; do
      if ! grep -qx "$target" <<<"$installed_targets"; then
        log "adding rust target $target"
        rustup target add "$target"
      fi
    done
  fi
  pip_install() {
    python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
  }
  if ! have cargo-zigbuild || ! python3 -m ziglang version >/dev/null 2>&1; then
    log "installing ziglang + cargo-zigbuild (pip)"
    pip_install ziglang cargo-zigbuild
  fi
  # The gateway .debs (scripts/build-device.sh): cargo-deb from crates.io, ~2-5 min to compile once.
  if ! have cargo-deb; then
    log "installing cargo-deb (cargo install --locked)"
    env -u CARGO_TARGET_DIR cargo install cargo-deb --locked   # a throwaway build dir
  fi
fi

# --- AWS deployment tooling (pip): cfn-lint for infra/sam, python-hcl2 for the terraform parse
# check, aws-sam-cli for `sam validate --lint` / `sam build`, moto[server] (the AWS stand-in of
# functions/lambdas/tests/aws_moto.rs and scripts/deploy-rehearsal.py; aws-sam-translator comes
# with cfn-lint), cargo-lambda (+ ziglang) for `cargo lambda build --arm64` and local
# invocation. ---------------------------------------------------------------------------------
deploy_pip() {
  python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}
if ! have cfn-lint || ! python3 -c 'import hcl2' 2>/dev/null; then
  log "installing cfn-lint + python-hcl2 (pip)"
  deploy_pip cfn-lint python-hcl2
fi
if ! have sam; then
  log "installing aws-sam-cli (pip; large)"
  deploy_pip aws-sam-cli
fi
if ! have moto_server || ! python3 -c 'import moto.server, samtranslator, boto3' 2>/dev/null; then
  log "installing moto[server] (pip)"
  deploy_pip 'moto[server]'
fi
# promtool (scripts/check-infra.sh: `promtool check rules` / `test rules` on infra/prometheus):
# only the tool out of Debian's prometheus package, so no Prometheus server service is installed.
if ! have promtool; then
  log "installing promtool (from the Debian prometheus package, the binary only)"
  promtmp=$(mktemp -d)
  # a fresh machine may have no package lists yet: update once and retry
  if (cd "$promtmp" && { apt-get download prometheus >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }; } \
      && dpkg-deb -x prometheus_*.deb x); then
    $SUDO install -m 0755 "$promtmp/x/usr/bin/promtool" /usr/local/bin/promtool
  else
    echo "promtool: apt-get download prometheus failed; check-infra.sh will skip promtool" >&2
  fi
  rm -rf "$promtmp"
fi
if [ "${EDGE_SETUP_SKIP_LAMBDA:-0}" != "1" ] && ! have cargo-lambda; then
  log "installing cargo-lambda + ziglang (pip)"
  deploy_pip cargo-lambda ziglang
fi

log "ready"
