#!/usr/bin/env bash
# Static gateway binaries of edge-agent with cargo-zigbuild (no Docker; see Cross.toml for cross),
# and the Debian packages made from them with cargo-deb.
#
#   scripts/build-device.sh             # aarch64 + armv7 binaries, edge-agent_<ver>_{arm64,armhf}.deb
#   scripts/build-device.sh --deb-amd64 # and x86_64 musl + edge-agent_<ver>_amd64.deb (install test)
#   scripts/build-device.sh --smoke     # aarch64 binary only, then `--version` and `check` under qemu-user
#   EDGE_DEB_ARCHES="arm64 amd64" scripts/build-device.sh   # the packages (and binaries) of these arches
#   TARGETS="aarch64-unknown-linux-musl" scripts/build-device.sh
#   scripts/build-device.sh --no-deb    # binaries only
#
# Output: dist/edge-agent-<target> (stripped, statically linked) and dist/edge-agent_<ver>_<arch>.deb
# (`cargo deb --no-build --no-strip --target <target>` on that binary; device/Cargo.toml
# [package.metadata.deb], files and modes in device/packaging/README.Debian). Each binary runs
# `--version` and `check` (throwaway certs, example config) under qemu-user (natively for x86_64).
# armv7 musl has no prebuilt std here, so it is built with nightly -Zbuild-std (nightly and
# rust-src are installed on demand) in its own target dir (ARMV7_TARGET_DIR, default
# ~/.cache/edge-sync/target-armv7): build-std artifacts never mix with the shared cache, and it
# does not wait for that cache's lock. The first armv7 build compiles std and every dependency:
# ~40 min on 2 busy cores.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1;34m[build-device]\033[0m %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-sync/target}"
SUDO=""; if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

smoke=0
debs=1
deb_amd64=0
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1; debs=0 ;;
    --no-deb) debs=0 ;;
    --deb-amd64) deb_amd64=1 ;;
    *) echo "usage: $0 [--smoke] [--no-deb] [--deb-amd64]" >&2; exit 2 ;;
  esac
done

# Debian architecture <-> Rust musl target.
target_of_arch() {
  case "$1" in
    arm64) echo aarch64-unknown-linux-musl ;;
    armhf) echo armv7-unknown-linux-musleabihf ;;
    amd64) echo x86_64-unknown-linux-musl ;;
    *) echo "unknown Debian architecture '$1' (arm64, armhf, amd64)" >&2; return 1 ;;
  esac
}

if [ "$smoke" = 1 ]; then
  targets=(aarch64-unknown-linux-musl)
elif [ -n "${EDGE_DEB_ARCHES:-}" ]; then
  targets=()
  for arch in $EDGE_DEB_ARCHES; do targets+=("$(target_of_arch "$arch")"); done
else
  read -r -a targets <<<"${TARGETS:-aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf}"
fi
if [ "$deb_amd64" = 1 ] && [[ " ${targets[*]} " != *" x86_64-unknown-linux-musl "* ]]; then
  targets+=(x86_64-unknown-linux-musl)
fi

pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}
if ! have cargo-zigbuild || ! python3 -m ziglang version >/dev/null 2>&1; then
  log "installing ziglang + cargo-zigbuild (pip)"
  pip_install ziglang cargo-zigbuild
fi
if ! have qemu-aarch64-static || ! have qemu-arm-static; then
  log "installing qemu-user-static"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
fi

if [ "$debs" = 1 ] && ! have cargo-deb; then
  log "installing cargo-deb (cargo install --locked; compiles for ~2 min)"
  env -u CARGO_TARGET_DIR cargo install cargo-deb --locked   # a throwaway build dir
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# `--version` and `check --config <generated example>` of one binary under qemu-user (--smoke
# adds the bad-config path at the end: one error line, non-zero exit).
run_checks() {
  local bin=$1 qemu=$2
  log "$bin --version under ${qemu:-the host}: $(${qemu:+"$qemu"} "$bin" --version)"
  if [ ! -f "$work/agent.toml" ]; then
    # A throwaway CA + device certificate and an empty source database (a 0-byte file is a
    # valid empty SQLite database), so `check` exercises config, PEM loading, expiry and DB access.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=smoke-ca" \
      -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=gw-07" \
      -keyout "$work/device.key" -out "$work/device.csr" 2>/dev/null
    # X.509 v3 (webpki refuses v1 certificates, which `openssl x509 -req` makes without extensions).
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' >"$work/ext"
    openssl x509 -req -in "$work/device.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
      -days 2 -extfile "$work/ext" -out "$work/device.crt" 2>/dev/null
    : >"$work/source.db"
    sed -e "s#/etc/edge-agent/AmazonRootCA1.pem#$work/ca.crt#" \
        -e "s#/etc/edge-agent/device.crt#$work/device.crt#" \
        -e "s#/etc/edge-agent/device.key#$work/device.key#" \
        -e "s#/var/lib/app/source.db#$work/source.db#" \
        -e "s#/var/lib/edge-agent/state.db#$work/state.db#" \
        device/packaging/edge-agent.example.toml >"$work/agent.toml"
  fi
  log "$bin check --config <generated example> under ${qemu:-the host}"
  OMEGA_AUTH_TOKEN=smoke ${qemu:+"$qemu"} "$bin" check --config "$work/agent.toml"
}

mkdir -p dist
for target in "${targets[@]}"; do
  case "$target" in
    armv7-unknown-linux-musleabihf)
      # No prebuilt std for this target here: build std from source on nightly.
      if ! rustup toolchain list | grep -q '^nightly'; then
        log "installing the nightly toolchain (minimal profile)"
        rustup toolchain install nightly --profile minimal
      fi
      if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
        log "adding rust-src to nightly"
        rustup component add rust-src --toolchain nightly
      fi
      target_dir="${ARMV7_TARGET_DIR:-$HOME/.cache/edge-sync/target-armv7}"
      log "building $target (nightly, -Zbuild-std, target dir $target_dir)"
      # link-self-contained=no: zig provides musl's crt and libc; rustc's self-contained
      # objects for this target do not exist without a prebuilt std.
      CARGO_TARGET_DIR="$target_dir" RUSTFLAGS="-C link-self-contained=no" \
        cargo +nightly zigbuild -Zbuild-std=std,panic_abort \
        --release --locked -p edge-agent --bin edge-agent --target "$target"
      ;;
    *)
      target_dir="$CARGO_TARGET_DIR"
      if ! rustup target list --installed | grep -qx "$target"; then
        log "adding rust target $target"
        rustup target add "$target"
      fi
      log "building $target"
      cargo zigbuild --release --locked -p edge-agent --bin edge-agent --target "$target"
      ;;
  esac
  cp "$target_dir/$target/release/edge-agent" "dist/edge-agent-$target"
  size=$(stat -c %s "dist/edge-agent-$target")
  log "dist/edge-agent-$target: $size bytes ($(( size / 1024 )) KiB), $(file -b "dist/edge-agent-$target" 2>/dev/null | cut -d, -f1-2 || true)"
  case "$target" in
    aarch64-*) qemu=qemu-aarch64-static ;;
    armv7-*) qemu=qemu-arm-static ;;
    *) qemu="" ;;
  esac
  run_checks "dist/edge-agent-$target" "$qemu"
  if [ "$debs" = 1 ]; then
    # --no-strip: the release profile strips already (and the host's strip cannot read ARM).
    deb=$(CARGO_TARGET_DIR="$target_dir" cargo deb -p edge-agent --no-build --no-strip \
      --target "$target" --output dist/ | tail -n 1)
    log "$deb: $(dpkg-deb --field "$deb" Package Version Architecture | tr '\n' ' ')"
  fi
done

if [ "$smoke" = 1 ]; then
  bin="dist/edge-agent-aarch64-unknown-linux-musl"
  log "smoke: bad config gives one error line and a non-zero exit"
  if OMEGA_AUTH_TOKEN=smoke OMEGA_MQTT_BROKER_URL=mqtt://x qemu-aarch64-static "$bin" check --config "$work/agent.toml" 2>"$work/err"; then
    echo "expected check to fail on a plaintext URL" >&2; exit 1
  fi
  [ "$(wc -l <"$work/err")" -eq 1 ] || { echo "expected one error line, got:" >&2; cat "$work/err" >&2; exit 1; }
  cat "$work/err"
  log "smoke test passed"
fi
