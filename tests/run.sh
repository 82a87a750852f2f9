#!/usr/bin/env bash
# run.sh - run every Check binary (or a test script that ends with "N passed, N failed")
# against one throwaway PostgreSQL cluster and print one closing line with the totals.
#
# Each suite gets its own empty database, created from the cluster's template, in
# CIBAD_TEST_DATABASE_URL. Set CIBAD_TEST_KEEP=1 to keep the cluster for inspection.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
tmp=$(mktemp -d /tmp/cibad-test.XXXXXX)
chmod 755 "$tmp" # the postgres user must reach the cluster below it
port=$((20000 + RANDOM % 20000))

cleanup() {
    [[ ${CIBAD_TEST_KEEP:-0} == 1 ]] && { echo "kept test cluster in $tmp" >&2; return; }
    "$here/pg.sh" stop "$tmp/pg"
    rm -rf "$tmp"
}
trap cleanup EXIT

base_url=$("$here/pg.sh" start "$tmp/pg" "$port") || exit 1
export CIBAD_TEST_PG_DIR="$tmp/pg"
export CIBAD_TEST_MIGRATIONS="$root/migrations"
export CIBAD_TEST_ROOT="$root"
export CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-60}

passed=0 failed=0 status=0
for bin in "$@"; do
    name=$(basename "$bin")
    db="${name//[^a-z0-9_]/_}"
    psql "$base_url" -qAtc "CREATE DATABASE $db" >/dev/null || exit 1
    export CIBAD_TEST_DATABASE_URL="${base_url/dbname=postgres/dbname=$db}"
    echo "== $name"
    out=$("$bin" 2>"$tmp/$name.stderr")
    rc=$?
    echo "$out"
    # Check's summary: "100%: Checks: 7, Failures: 1, Errors: 2"
    line=$(grep -E '^[0-9]+%: Checks: [0-9]+' <<<"$out" | tail -n 1)
    # Or a script's plain closing line (tests/interop/interop.sh): "3 passed, 1 failed"
    plain=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' <<<"$out" | tail -n 1)
    if [[ -n $line ]]; then
        checks=$(sed -E 's/.*Checks: ([0-9]+).*/\1/' <<<"$line")
        bad=$(sed -E 's/.*Failures: ([0-9]+), Errors: ([0-9]+).*/\1+\2/' <<<"$line")
        bad=$((bad))
        passed=$((passed + checks - bad))
        failed=$((failed + bad))
    elif [[ -n $plain ]]; then
        passed=$((passed + ${plain%% *}))
        bad=${plain#*, }
        failed=$((failed + ${bad%% *}))
    else
        failed=$((failed + 1))
    fi
    if [[ $rc -ne 0 ]]; then
        status=1
        echo "-- $name stderr (last 40 lines):"
        tail -n 40 "$tmp/$name.stderr"
    fi
done

echo "$passed passed, $failed failed"
[[ $failed -eq 0 && $status -eq 0 ]]
