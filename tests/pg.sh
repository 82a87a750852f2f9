#!/usr/bin/env bash
# pg.sh - a throwaway PostgreSQL 15 cluster for tests, on a unix socket only.
#
#   tests/pg.sh start DIR PORT   create and start a cluster under DIR; prints the
#                                connection string on stdout
#   tests/pg.sh stop DIR         stop it (immediate shutdown) and remove DIR
#   tests/pg.sh halt DIR         stop it and keep DIR, for a later restart
#   tests/pg.sh restart DIR      restart it, or start it again after halt
#
# PostgreSQL refuses to run as root, so as root the cluster runs as the postgres user
# (created by the postgresql package) through runuser; DIR is handed to that user.
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[[ -x $bindir/initdb ]] || { echo "pg.sh: PostgreSQL server binaries not found" >&2; exit 1; }

as_owner() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cmd=${1:?usage: pg.sh start DIR PORT | stop DIR | halt DIR | restart DIR}
dir=${2:?missing DIR}

case $cmd in
start)
    port=${3:?missing PORT}
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
    chmod 700 "$dir"
    as_owner "$bindir/initdb" -D "$dir/data" -U cibad --auth=trust --no-sync -E UTF8 \
        --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    # The socket directory must be reachable by the test process (root or not).
    mkdir -p "$dir/sock"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$dir/sock"
    chmod 755 "$dir" "$dir/sock"
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o \
        "-c listen_addresses= -k $dir/sock -p $port -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    echo "host=$dir/sock port=$port user=cibad dbname=postgres"
    ;;
stop)
    if [[ -d $dir/data ]]; then
        as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
halt)
    # Used by tests of startup without a database.
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
restart)
    # Used by tests of reconnection: stop and start the same cluster. On a halted
    # cluster pg_ctl warns that the PID file is missing and starts it with the options
    # it last ran with, which it keeps in postmaster.opts.
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w restart -l "$dir/server.log" >/dev/null
    ;;
*)
    echo "pg.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
