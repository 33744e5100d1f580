#!/usr/bin/env bash
# Fails when the store or the handlers prepare a named statement (issue 14): tokio-postgres's
# query/query_one/query_opt/query_raw/execute/execute_raw with a &str, prepare/prepare_typed,
# deadpool's prepare_cached, copy_in/copy_out (which need a prepared statement). Behind
# pgbouncer in transaction mode a named statement breaks ("prepared statement s3 does not
# exist", 26000; "already exists", 42P05) and RDS Proxy pins the session. Use the store's
# UnnamedStatements (query_unnamed, query_one_unnamed, query_opt_unnamed, execute_unnamed),
# query_typed* / execute_typed, or batch_execute (simple protocol) instead.
#
# Test code may use plain query: everything from a file's first `#[cfg(test)]` line on is
# skipped (the crates keep their unit-test module at the end of a file), and tests/ and benches/
# are not scanned. A deliberate exception carries `// named-statement-ok: <why>` on its line.
set -euo pipefail
cd "$(dirname "$0")/.."

pattern='\.(query|query_one|query_opt|query_raw|execute|execute_raw|prepare|prepare_typed|prepare_cached|copy_in|copy_out|bind|bind_raw)\((?!\))'
found=0
while IFS= read -r file; do
  hits=$(awk '/^[[:space:]]*#\[cfg\(test\)\]/ { exit } { printf "%s:%d:%s\n", FILENAME, FNR, $0 }' "$file" \
    | grep -P "$pattern" | grep -v 'named-statement-ok:' || true)
  if [ -n "$hits" ]; then
    printf '%s\n' "$hits"
    found=1
  fi
done < <(find functions/store/src functions/lambdas/src -name '*.rs' | sort)

if [ "$found" -ne 0 ]; then
  echo "check-unnamed: named statements above; see functions/store/src/unnamed.rs" >&2
  exit 1
fi
echo "check-unnamed: every statement in functions/store/src and functions/lambdas/src is unnamed"
