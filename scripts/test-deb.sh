#!/usr/bin/env bash
# The gateway package, installed for real: builds edge-agent_<ver>_amd64.deb and _arm64.deb
# (scripts/build-device.sh), installs the amd64 one into a throwaway Debian bookworm root
# (debootstrap --variant=minbase, cached in ~/.cache/edge-sync/debootstrap-bookworm.tar) with the
# root's own apt/dpkg running the maintainer scripts chrooted, and checks:
#   - files, owners, modes, the edge-agent user, the conffile and the stat overrides;
#   - a changed edge-agent.toml and env survive a reinstall and an upgrade whose packaged config
#     changed too (--force-confdef --force-confold);
#   - `edge-agent check` as the edge-agent user with the packaged modes, certificates installed as
#     docs/deploy.md says and OMEGA_AUTH_TOKEN from /etc/edge-agent/env: exit 0; an unreadable key
#     or a missing token: exit 1 with the error naming the key;
#   - `systemd-analyze verify` of the installed unit (skipped when systemd-analyze is missing);
#   - remove keeps configuration and state, purge removes what the package created;
#   - the arm64 (and armhf, when EDGE_DEB_ARCHES names it) packages: control fields, an ELF of
#     the right machine, `--version` and `check --help` under qemu-user.
# Needs root (chroot, ownership inside the root); exits 0 with "skipped" otherwise.
#
#   scripts/test-deb.sh                         # build + test (amd64, arm64)
#   EDGE_DEB_ARCHES="amd64 arm64 armhf" scripts/test-deb.sh   # also the armhf package (~40 min)
#   EDGE_DEB_NO_BUILD=1 scripts/test-deb.sh     # test the .debs already in dist/
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1;34m[test-deb]\033[0m %s\n' "$*"; }
passed=0
failed=0
ok() { passed=$((passed + 1)); printf '  ok    %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf '  FAIL  %s\n' "$*"; }
# expect "what" "$actual" "$expected"
expect() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: got '$2', want '$3'"; fi; }
# expect_in "what" "$haystack" "needle"
expect_in() {
  if [[ "$2" == *"$3"* ]]; then ok "$1"; else bad "$1: '$3' not in: $2"; fi
}

if [ "$(id -u)" -ne 0 ]; then
  echo "test-deb: skipped: needs root (chroot into a debootstrap root, file ownership)"
  exit 0
fi

arches=${EDGE_DEB_ARCHES:-amd64 arm64}
[[ " $arches " == *" amd64 "* ]] || arches="amd64 $arches"
version=$(cargo pkgid -p edge-agent | sed 's/.*[#@]//')
deb_of() { echo "dist/edge-agent_${version}-1_$1.deb"; }

if [ "${EDGE_DEB_NO_BUILD:-0}" != 1 ]; then
  log "building the packages: $arches"
  EDGE_DEB_ARCHES="$arches" scripts/build-device.sh
fi
for arch in $arches; do
  [ -f "$(deb_of "$arch")" ] || { echo "test-deb: $(deb_of "$arch") was not built" >&2; exit 1; }
done

for tool in debootstrap qemu-aarch64-static file openssl sqlite3; do
  command -v "$tool" >/dev/null || { echo "test-deb: $tool missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

work=$(mktemp -d)
root="$work/root"
cleanup() {
  umount "$root/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- the throwaway root -----------------------------------------------------------------------
cache="$HOME/.cache/edge-sync/debootstrap-bookworm.tar"
if [ ! -f "$cache" ]; then
  log "debootstrap --variant=minbase bookworm (once; cached in $cache)"
  mkdir -p "$(dirname "$cache")" "$work/fresh"
  debootstrap --variant=minbase bookworm "$work/fresh" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  tar -C "$work/fresh" --exclude='./proc/*' --exclude='./sys/*' -cf "$cache.tmp" .
  mv "$cache.tmp" "$cache"
  rm -rf "$work/fresh"
fi
mkdir -p "$root"
tar -C "$root" -xf "$cache"
mount -t proc proc "$root/proc"
in_root() { chroot "$root" "$@"; }
# owner:group mode of a path inside the root, names from the root's own passwd/group
stat_in() { in_root stat -c '%U:%G %a' "$1" 2>&1; }

deb_amd64=$(deb_of amd64)
cp "$deb_amd64" "$root/tmp/edge-agent.deb"

# --- the package's metadata ---------------------------------------------------------------------
log "dpkg-deb --info/--contents $deb_amd64"
expect "Package" "$(dpkg-deb --field "$deb_amd64" Package)" "edge-agent"
expect "Architecture amd64" "$(dpkg-deb --field "$deb_amd64" Architecture)" "amd64"
expect "Depends" "$(dpkg-deb --field "$deb_amd64" Depends)" "adduser"
expect "conffiles" "$(dpkg-deb --ctrl-tarfile "$deb_amd64" | tar -xO ./conffiles)" "/etc/edge-agent/edge-agent.toml"
# mode, owner (cargo-deb writes numeric ids: 0/0 is root/root), path
listing() { dpkg-deb --contents "$1" | awk '{print $1, $2, $6}' | sed 's#^\([^ ]*\) root/root #\1 0/0 #'; }
contents=$(listing "$deb_amd64")
for entry in \
  "-rwxr-xr-x 0/0 ./usr/bin/edge-agent" \
  "-rw-r--r-- 0/0 ./lib/systemd/system/edge-agent.service" \
  "-rw-r----- 0/0 ./etc/edge-agent/edge-agent.toml" \
  "-rw-r--r-- 0/0 ./usr/share/doc/edge-agent/edge-agent.example.toml" \
  "-rw-r--r-- 0/0 ./usr/share/doc/edge-agent/README.Debian" \
  "-rw-r--r-- 0/0 ./usr/share/doc/edge-agent/copyright"; do
  expect_in "contents: $entry" "$contents" "$entry"
done

# --- install (the documented `apt install ./edge-agent_*.deb`) --------------------------------
log "apt-get install ./edge-agent.deb in the bookworm root"
if in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/edge-agent.deb >"$work/apt.log" 2>&1; then
  ok "apt-get install ./edge-agent.deb"
else
  bad "apt-get install ./edge-agent.deb"; cat "$work/apt.log"
fi
expect "dpkg status" "$(in_root dpkg-query -W -f '${Status}' edge-agent)" "install ok installed"
expect "user edge-agent (home, shell)" "$(in_root getent passwd edge-agent | cut -d: -f6,7)" "/var/lib/edge-agent:/usr/sbin/nologin"
uid=$(in_root id -u edge-agent)
[ "$uid" -lt 1000 ] && ok "edge-agent is a system user (uid $uid)" || bad "edge-agent uid $uid is not a system uid"
expect "group edge-agent is the user's primary group" "$(in_root id -gn edge-agent)" "edge-agent"
expect "/usr/bin/edge-agent" "$(stat_in /usr/bin/edge-agent)" "root:root 755"
expect "/lib/systemd/system/edge-agent.service" "$(stat_in /lib/systemd/system/edge-agent.service)" "root:root 644"
expect "/etc/edge-agent" "$(stat_in /etc/edge-agent)" "root:edge-agent 750"
expect "/etc/edge-agent/edge-agent.toml" "$(stat_in /etc/edge-agent/edge-agent.toml)" "root:edge-agent 640"
expect "/etc/edge-agent/env" "$(stat_in /etc/edge-agent/env)" "root:edge-agent 640"
expect "/var/lib/edge-agent" "$(stat_in /var/lib/edge-agent)" "edge-agent:edge-agent 750"
expect "/usr/share/doc/edge-agent/README.Debian" "$(stat_in /usr/share/doc/edge-agent/README.Debian)" "root:root 644"
expect "stat overrides" "$(in_root dpkg-statoverride --list | sort | tr '\n' ';')" \
  "root edge-agent 640 /etc/edge-agent/edge-agent.toml;root edge-agent 750 /etc/edge-agent;"
expect "env holds no token yet" "$(grep -c '^OMEGA_AUTH_TOKEN' "$root/etc/edge-agent/env" || true)" "0"
expect "installed config = example" "$(cmp -s "$root/etc/edge-agent/edge-agent.toml" device/packaging/edge-agent.example.toml && echo same)" "same"
unit="$root/lib/systemd/system/edge-agent.service"
doc=$(sed -n 's#^Documentation=file://##p' "$unit")
[ -f "$root$doc" ] && ok "the unit's Documentation= exists ($doc)" || bad "Documentation=file://$doc is not installed"
for exe in $(sed -n 's#^ExecStart\(Pre\)\?=\([^ ]*\).*#\2#p' "$unit"); do
  [ -x "$root$exe" ] && ok "unit runs an installed binary ($exe)" || bad "unit's $exe is not installed"
done
# Every writable path optional ("-"): a gateway without /var/lib/app yet still starts the unit.
expect "the unit's ReadWritePaths" "$(sed -n 's/^ReadWritePaths=//p' "$unit")" "-/var/lib/edge-agent -/var/lib/app"
expect "the unit's EnvironmentFile" "$(sed -n 's/^EnvironmentFile=//p' "$unit")" "-/etc/edge-agent/env"
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/edge-agent.service" ] \
  && ok "the unit is not enabled by the install" || bad "the install enabled the unit"

# --- the operator's set-up, as README.Debian / docs/deploy.md say ---------------------------
log "certificates, env, the application's database"
pki="$work/pki"
mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 60 -subj "/CN=deb-test-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=gw-07" \
  -keyout "$pki/device.key" -out "$pki/device.csr" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' >"$pki/ext"
openssl x509 -req -in "$pki/device.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 60 -extfile "$pki/ext" -out "$pki/device.crt" 2>/dev/null
cp "$pki/ca.crt" "$pki/device.crt" "$pki/device.key" "$root/tmp/"
in_root install -m 0644 /tmp/ca.crt /etc/edge-agent/AmazonRootCA1.pem
in_root install -m 0644 /tmp/device.crt /etc/edge-agent/device.crt
in_root install -m 0640 -g edge-agent /tmp/device.key /etc/edge-agent/device.key
rm -f "$root/tmp/device.key"
echo "OMEGA_AUTH_TOKEN=deb-test-control-key" >"$root/etc/edge-agent/env"
# The operator's edit of the conffile, which every later install must keep.
sed -i 's/^device_name = "gw-07"/device_name = "gw-07"  # operator edit/' "$root/etc/edge-agent/edge-agent.toml"
edited=$(sha256sum <"$root/etc/edge-agent/edge-agent.toml")
# The application: its own user and group, the database directory group-writable.
in_root groupadd --system app
in_root useradd --system --gid app --home /var/lib/app --shell /usr/sbin/nologin app
in_root install -d -o app -g app -m 2770 /var/lib/app
sqlite3 "$root/var/lib/app/source.db" 'PRAGMA journal_mode=WAL; CREATE TABLE sensor_readings (id INTEGER PRIMARY KEY, recorded_at TEXT, value REAL, unit TEXT); INSERT INTO sensor_readings VALUES (1, "2026-01-01T00:00:00Z", 1.5, "C"); CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT); INSERT INTO orders VALUES (1, "bolt");' >/dev/null
in_root chown app:app /var/lib/app/source.db
chmod 0660 "$root/var/lib/app/source.db"
in_root usermod -aG app edge-agent

# `edge-agent check` as the unit runs it: the env file read by root (systemd), the process as
# edge-agent with its groups.
as_agent() { # edge-agent subcommand
  in_root sh -c 'set -a; . /etc/edge-agent/env; set +a
    exec setpriv --reuid=edge-agent --regid=edge-agent --init-groups \
      /usr/bin/edge-agent "$1" --config /etc/edge-agent/edge-agent.toml' sh "$1"
}
check_as_agent() { as_agent check; }
log "edge-agent check as the edge-agent user"
if out=$(check_as_agent 2>&1); then
  ok "check as edge-agent: exit 0"
else
  bad "check as edge-agent: exit $?: $out"
fi
expect_in "check: certificates" "$out" "certificates  ok"
expect_in "check: source db" "$out" "source db     ok (/var/lib/app/source.db"
expect_in "check: state db" "$out" "state db      ok (/var/lib/edge-agent/state.db)"

# Without the token (env file emptied): the named error, exit 1.
cp "$root/etc/edge-agent/env" "$work/env.saved"
: >"$root/etc/edge-agent/env"
set +e; out=$(check_as_agent 2>&1); rc=$?; set -e
expect "check without OMEGA_AUTH_TOKEN: exit" "$rc" "1"
expect_in "check without OMEGA_AUTH_TOKEN: names it" "$out" "OMEGA_AUTH_TOKEN"
cp "$work/env.saved" "$root/etc/edge-agent/env"


# What the unit's user cannot read or write stops `check` with one stderr line naming the key
# (the daemon would only fail later).
check_fails() { # what, expected error line
  local out rc
  set +e; out=$(check_as_agent 2>&1 >/dev/null); rc=$?; set -e
  expect "check with $1: exit" "$rc" "1"
  expect "check with $1: the error" "$out" "edge-agent: error: $2"
}
in_root chown root:root /etc/edge-agent/device.key
in_root chmod 0600 /etc/edge-agent/device.key
check_fails "an unreadable key" \
  "config key \`connection.client_key_path\`: cannot read /etc/edge-agent/device.key: Permission denied (os error 13)"
in_root chown root:edge-agent /etc/edge-agent/device.key
in_root chmod 0640 /etc/edge-agent/device.key
in_root chmod 0640 /var/lib/app/source.db
check_fails "a read-only source.db" \
  "config key \`sqlite-replication.source_db_path\`: /var/lib/app/source.db is not writable by this user: Permission denied (os error 13)"
in_root chmod 0660 /var/lib/app/source.db
in_root chmod 2750 /var/lib/app
check_fails "a read-only database directory" \
  "config key \`sqlite-replication.source_db_path\`: directory /var/lib/app is not writable by this user (SQLite's -wal and -journal files): Permission denied (os error 13)"
in_root chmod 2770 /var/lib/app
in_root gpasswd --delete edge-agent app >/dev/null
check_fails "edge-agent not in the application's group" \
  "config key \`sqlite-replication.source_db_path\`: cannot access /var/lib/app/source.db: Permission denied (os error 13)"
in_root usermod -aG app edge-agent
in_root chown root:root /var/lib/edge-agent
check_fails "a root-owned /var/lib/edge-agent" \
  "config key \`sqlite-replication.state_db_path\`: directory /var/lib/edge-agent is not writable by this user: Permission denied (os error 13)"
in_root chown edge-agent:edge-agent /var/lib/edge-agent
check_as_agent >/dev/null 2>&1 && ok "check as edge-agent again after the fixes" || bad "check as edge-agent after the fixes"
# `snapshot` opens both databases as the daemon does: the user creates state.db and installs
# the capture triggers in the application's database (a real write through the group).
if out=$(as_agent snapshot 2>&1); then ok "snapshot as edge-agent"; else bad "snapshot as edge-agent: $out"; fi
expect "state.db created by the edge-agent user" "$(in_root stat -c '%U:%G' /var/lib/edge-agent/state.db 2>&1)" "edge-agent:edge-agent"
expect "capture triggers (insert, update, delete) installed on orders" \
  "$(sqlite3 "$root/var/lib/app/source.db" "SELECT count(*) >= 3 FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'orders' AND name LIKE '\_\_omega\_%' ESCAPE '\'")" "1"
if out=$(as_agent status 2>&1); then ok "status as edge-agent"; else bad "status as edge-agent: $out"; fi

# --- systemd-analyze verify -------------------------------------------------------------------
# The minbase root has no systemd: verify in a root of the host's units plus the installed unit
# and binary (verify resolves ExecStart= and the dependencies under --root). Any output, a
# warning such as an unknown key included, fails.
if command -v systemd-analyze >/dev/null && [ -f /lib/systemd/system/sysinit.target ]; then
  vroot="$work/verify-root"
  mkdir -p "$vroot/lib/systemd" "$vroot/usr/bin" "$vroot/etc"
  cp -a /lib/systemd/system "$vroot/lib/systemd/"
  cp "$root/lib/systemd/system/edge-agent.service" "$vroot/lib/systemd/system/"
  cp "$root/usr/bin/edge-agent" "$vroot/usr/bin/"
  if out=$(systemd-analyze verify --root="$vroot" edge-agent.service 2>&1) && [ -z "$out" ]; then
    ok "systemd-analyze verify edge-agent.service"
  else
    bad "systemd-analyze verify edge-agent.service: $out"
  fi
else
  echo "  skip  systemd-analyze verify (no systemd-analyze or systemd units on this machine)"
fi

# --- reinstall and upgrade keep the operator's configuration --------------------------------
log "dpkg --install again (same version)"
in_root dpkg --install /tmp/edge-agent.deb >"$work/dpkg.log" 2>&1 </dev/null \
  && ok "reinstall" || { bad "reinstall"; cat "$work/dpkg.log"; }
expect "reinstall keeps the edited edge-agent.toml" "$(sha256sum <"$root/etc/edge-agent/edge-agent.toml")" "$edited"
expect "reinstall keeps env" "$(cat "$root/etc/edge-agent/env")" "OMEGA_AUTH_TOKEN=deb-test-control-key"

# The next version ships a changed example config: dpkg would ask; confold keeps the operator's.
log "upgrade to ${version}-2 whose packaged edge-agent.toml changed (--force-confdef --force-confold)"
rm -rf "$work/v2"
dpkg-deb --raw-extract "$deb_amd64" "$work/v2"
sed -i "s/^Version: .*/Version: ${version}-2/" "$work/v2/DEBIAN/control"
echo "# a line the next version adds" >>"$work/v2/etc/edge-agent/edge-agent.toml"
(cd "$work/v2" && find . -path ./DEBIAN -prune -o -type f -print0 | xargs -0 md5sum | sed 's# \./# #' >DEBIAN/md5sums)
dpkg-deb --root-owner-group --build "$work/v2" "$root/tmp/edge-agent-v2.deb" >/dev/null
in_root dpkg --force-confdef --force-confold --install /tmp/edge-agent-v2.deb >"$work/dpkg.log" 2>&1 </dev/null \
  && ok "upgrade" || { bad "upgrade"; cat "$work/dpkg.log"; }
expect "upgraded version" "$(in_root dpkg-query -W -f '${Version}' edge-agent)" "${version}-2"
expect "upgrade keeps the edited edge-agent.toml" "$(sha256sum <"$root/etc/edge-agent/edge-agent.toml")" "$edited"
[ -f "$root/etc/edge-agent/edge-agent.toml.dpkg-dist" ] && ok "the new packaged config is left as .dpkg-dist" \
  || bad "no edge-agent.toml.dpkg-dist after the upgrade"
expect "upgrade keeps env" "$(cat "$root/etc/edge-agent/env")" "OMEGA_AUTH_TOKEN=deb-test-control-key"
expect "edge-agent.toml after upgrade" "$(stat_in /etc/edge-agent/edge-agent.toml)" "root:edge-agent 640"
expect "/var/lib/edge-agent after upgrade" "$(stat_in /var/lib/edge-agent)" "edge-agent:edge-agent 750"
check_as_agent >/dev/null 2>&1 && ok "check as edge-agent after the upgrade" || bad "check as edge-agent after the upgrade"

# --- remove, purge --------------------------------------------------------------------------
log "dpkg --remove, then --purge"
in_root dpkg --remove edge-agent >"$work/dpkg.log" 2>&1 && ok "remove" || { bad "remove"; cat "$work/dpkg.log"; }
[ ! -e "$root/usr/bin/edge-agent" ] && ok "remove: binary gone" || bad "remove left /usr/bin/edge-agent"
expect "remove keeps the edited edge-agent.toml" "$(sha256sum <"$root/etc/edge-agent/edge-agent.toml")" "$edited"
[ -f "$root/var/lib/edge-agent/state.db" ] && ok "remove keeps state.db" || bad "remove: no state.db"
in_root dpkg --purge edge-agent >"$work/dpkg.log" 2>&1 && ok "purge" || { bad "purge"; cat "$work/dpkg.log"; }
for gone in /etc/edge-agent/edge-agent.toml /etc/edge-agent/env /var/lib/edge-agent; do
  [ ! -e "$root$gone" ] && ok "purge removes $gone" || bad "purge left $gone"
done
[ -f "$root/etc/edge-agent/device.key" ] && ok "purge keeps the operator's device key" || bad "purge removed device.key"
in_root getent passwd edge-agent >/dev/null && ok "purge keeps the edge-agent user" || bad "purge removed the user"
expect "purge removes the stat overrides" "$(in_root dpkg-statoverride --list | grep -c edge-agent || true)" "0"

# --- the ARM packages -------------------------------------------------------------------------
for arch in $arches; do
  case "$arch" in
    arm64) qemu=qemu-aarch64-static; elf="ELF 64-bit LSB executable, ARM aarch64" ;;
    armhf) qemu=qemu-arm-static; elf="ELF 32-bit LSB executable, ARM, EABI5" ;;
    *) continue ;;
  esac
  deb=$(deb_of "$arch")
  log "$deb"
  expect "$arch: Architecture" "$(dpkg-deb --field "$deb" Architecture)" "$arch"
  expect "$arch: Package" "$(dpkg-deb --field "$deb" Package)" "edge-agent"
  expect "$arch: same file list as amd64" "$(listing "$deb")" "$contents"
  rm -rf "$work/$arch"
  dpkg-deb --extract "$deb" "$work/$arch"
  bin="$work/$arch/usr/bin/edge-agent"
  kind=$(file -b "$bin")
  expect_in "$arch: $elf" "$kind" "$elf"
  expect_in "$arch: statically linked" "$kind" "statically linked"
  expect "$arch: --version under $qemu" "$("$qemu" "$bin" --version 2>&1)" "edge-agent $version"
  if out=$("$qemu" "$bin" check --help 2>&1); then
    expect_in "$arch: check --help under $qemu" "$out" "--config <FILE>"
  else
    bad "$arch: check --help under $qemu: $out"
  fi
done

echo "test-deb: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
