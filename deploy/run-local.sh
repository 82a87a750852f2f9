#!/usr/bin/env bash
# run-local.sh - `make run`: cibad on 127.0.0.1:8080 with a private PostgreSQL under var/
#
# The first run creates these files under var/ in the repository:
#   var/pg/           a PostgreSQL cluster reachable only by its unix socket (var/pg/sock)
#   var/secret        the server secret (random, mode 600)
#   var/cibad.conf    the settings for this setup (mode 600; it contains the secret)
#   var/demo-client.json  the demo client's id and secret (mode 600)
# and a demo client and a demo user. Later runs reuse all of it and start PostgreSQL if
# it is stopped. cibad then runs in the foreground, with SMS written to the log, until
# Ctrl-C. Other commands use the same settings:
#   ./cibad --config var/cibad.conf client list
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
var=$root/var
pg=$var/pg
port=5433
bin=$root/cibad
conf=$var/cibad.conf
demo_json=$var/demo-client.json
demo_client_id=demo-agent
demo_phone=+15555550100

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[[ -x $bindir/initdb ]] || { echo "run-local: PostgreSQL server binaries not found; run make deps" >&2; exit 1; }
[[ -x $bin ]] || { echo "run-local: $bin not found; run make first" >&2; exit 1; }

# PostgreSQL refuses to run as root, so as root the cluster belongs to the postgres user.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cibad() {
    "$bin" --config "$conf" "$@"
}

start_postgres() {
    mkdir -p "$var"
    chmod 755 "$var" # the postgres user must reach var/pg
    if [[ ! -d $pg/data ]]; then
        echo "run-local: creating a PostgreSQL cluster in $pg"
        mkdir -p "$pg/sock"
        [[ $(id -u) -eq 0 ]] && chown -R postgres: "$pg"
        chmod 700 "$pg/sock"
        chmod 755 "$pg"
        as_owner "$bindir/initdb" -D "$pg/data" -U cibad --auth=trust -E UTF8 \
            --locale=C.UTF-8 >"$pg/initdb.log" 2>&1 ||
            { cat "$pg/initdb.log" >&2; exit 1; }
    fi
    if ! as_owner "$bindir/pg_ctl" -D "$pg/data" status >/dev/null 2>&1; then
        echo "run-local: starting PostgreSQL (log: $pg/server.log)"
        # Unix socket only, in a directory only its owner (and root) can enter.
        as_owner "$bindir/pg_ctl" -D "$pg/data" -l "$pg/server.log" -w -o \
            "-c listen_addresses= -k $pg/sock -p $port -c unix_socket_permissions=0700" \
            start >/dev/null || { tail -n 20 "$pg/server.log" >&2; exit 1; }
    fi
    if ! psql "host=$pg/sock port=$port user=cibad dbname=cibad" -qAtc '' >/dev/null 2>&1; then
        echo "run-local: creating database cibad"
        createdb -h "$pg/sock" -p "$port" -U cibad cibad
    fi
}

write_config() {
    (
        umask 077
        if [[ ! -s $var/secret ]]; then
            echo "run-local: generating the server secret in $var/secret"
            openssl rand -base64 48 | tr -d '\n' >"$var/secret"
        fi
        cat >"$conf" <<EOF
# Written by deploy/run-local.sh on every run; edit that script, not this file.
issuer = ${CIBAD_ISSUER:-http://127.0.0.1:8080}
listen = ${CIBAD_LISTEN:-127.0.0.1:8080}
database_url = host=$pg/sock port=$port dbname=cibad user=cibad
migrations_dir = $root/migrations
sms_driver = console
secret = $(cat "$var/secret")
EOF
    )
}

# Creates the demo client once and keeps its credentials in var/demo-client.json.
ensure_demo_client() {
    cibad scope set payments "Make payments on your behalf" >/dev/null
    if cibad client show "$demo_client_id" >/dev/null 2>&1; then
        if [[ -s $demo_json ]]; then
            echo "Demo client (credentials from $demo_json):"
            cat "$demo_json"
        else
            echo "Demo client $demo_client_id exists, but $demo_json is gone and the secret"
            echo "cannot be shown again. To get a new one:"
            echo "  ./cibad --config var/cibad.conf client delete $demo_client_id && make run"
        fi
        return
    fi
    (
        umask 077
        cibad client create --name "Demo agent" --scope "openid payments" \
            --client-id "$demo_client_id" --json >"$demo_json.tmp"
        mv "$demo_json.tmp" "$demo_json"
    )
    echo "Demo client created (the secret is also in $demo_json):"
    cat "$demo_json"
}

ensure_demo_user() {
    if ! cibad user list --json | grep -q "\"phone_number\": \"$demo_phone\""; then
        cibad user create --phone "$demo_phone" --username demo >/dev/null
    fi
    echo "Demo user: username demo, phone $demo_phone (codes appear in this log)"
}

cd "$root"
start_postgres
write_config
cibad migrate >/dev/null
ensure_demo_client
ensure_demo_user
echo
echo "Other commands: ./cibad --config var/cibad.conf --help"
echo "Starting cibad on ${CIBAD_ISSUER:-http://127.0.0.1:8080} (Ctrl-C stops it; PostgreSQL keeps running:"
echo "  stop it with $( [[ $(id -u) -eq 0 ]] && echo 'runuser -u postgres -- ')$bindir/pg_ctl -D $pg/data stop)"
exec "$bin" --config "$conf" serve
