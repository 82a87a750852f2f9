#!/usr/bin/env bash
# bench.sh - `make bench`: load figures for cibad with wrk, everything on 127.0.0.1
#
# Starts a throwaway PostgreSQL cluster (tests/pg.sh: fsync=off, synchronous_commit=off,
# full_page_writes=off), the loopback SMS sink (bench_sink) and `cibad serve` with the
# http SMS driver pointed at the sink, then runs, in this order:
#   1. GET /healthz                  a static reply, as the baseline
#   2. POST /bc-authorize            login_hint rotating over BENCH_USERS users
#   3. RSS                           VmRSS of cibad once 10,000 requests are pending
#   4. POST /token, pending          polling: authorization_pending and slow_down
#  4b. the same with private_key_jwt client authentication: a second client's pending
#      requests, polled with ES256 client assertions made beforehand by bench_jwt
#  4c. the same as 4b with a third client that signs its assertions with PS256
#   5. POST /approve/REF             approves every request with the code from its SMS
#   6. POST /token, approved         issuance: every 200 is one token response
#   7. ping delivery                 requests of a ping client, approved, then the time
#                                    from each approval to its callback at a second sink
# and prints the figures next to the targets. Everything it starts is stopped on exit.
#
# Settings (environment): BENCH_THREADS (2), BENCH_CONNECTIONS (32), BENCH_DURATION
# (seconds, 10), BENCH_USERS (1000), BENCH_PING_SECONDS (2, the bc-authorize run that
# makes the ping requests), CIBAD_WORKERS (2), BENCH_KEEP=1 keeps the working
# directory, BENCH_PERF=1 records a perf profile of each run into it, BENCH_PG_DURABLE=1
# turns fsync, synchronous_commit and full_page_writes back on, BENCH_PG_EXPLAIN=1 logs
# slow statements with their plans (auto_explain) into the kept directory,
# BENCH_STOP_AFTER=bc stops after the bc-authorize run, BENCH_JWT_REQUESTS (5000,
# the pending requests of each private_key_jwt client), CIBAD_BIN, BENCH_SINK and
# BENCH_JWT name the binaries (make bench sets CIBAD_BIN).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${CIBAD_BIN:-$root/cibad}
sink_bin=${BENCH_SINK:-$(dirname "$bin")/bench_sink}
jwt_bin=${BENCH_JWT:-$(dirname "$bin")/bench_jwt}
jwt_requests=${BENCH_JWT_REQUESTS:-5000}
threads=${BENCH_THREADS:-2}
connections=${BENCH_CONNECTIONS:-32}
duration=${BENCH_DURATION:-10}
users=${BENCH_USERS:-1000}
workers=${CIBAD_WORKERS:-2}
min_pending=10000
clk_tck=$(getconf CLK_TCK)

# Targets, printed next to the figures.
target_poll_rps=20000
target_tokens_ps=5000
target_bc_rps=5000
target_p99_ms=20
target_rss_mib=64
target_ping_p99_ms=50

for tool in wrk psql curl openssl /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found; run make deps" >&2; exit 1; }
done
[[ -x $bin ]] || { echo "bench: $bin not found; run make first" >&2; exit 1; }
[[ -x $sink_bin ]] ||
    { echo "bench: $sink_bin not found; build it with make bench" >&2; exit 1; }
[[ -x $jwt_bin ]] ||
    { echo "bench: $jwt_bin not found; build it with make bench" >&2; exit 1; }

tmp=$(mktemp -d /tmp/cibad-bench.XXXXXX)
chmod 755 "$tmp" # the postgres user must reach the cluster below it
out=$tmp/out
mkdir -p "$out"
# A copy, because other builds in the same tree may relink the binary during the runs.
cp "$bin" "$tmp/cibad"
bin=$tmp/cibad
cibad_pid='' sink_pid='' ping_sink_pid='' time_pid='' perf_pid='' pg_started=0

cleanup() {
    local pid
    # GNU time ignores SIGINT and does not forward SIGTERM, so stop wrk itself.
    [[ -n $time_pid ]] && kill -TERM "$(wrk_pid)" 2>/dev/null || true
    for pid in "$perf_pid" "$cibad_pid" "$sink_pid" "$ping_sink_pid"; do
        [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$time_pid" "$perf_pid" "$cibad_pid" "$sink_pid" "$ping_sink_pid"; do
        [[ -n $pid ]] && wait "$pid" 2>/dev/null || true
    done
    [[ $pg_started == 1 && ${BENCH_PG_EXPLAIN:-0} == 1 ]] &&
        cp "$tmp/pg/server.log" "$out/postgres.log" 2>/dev/null
    [[ $pg_started == 1 ]] && "$here/pg.sh" stop "$tmp/pg"
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        echo "bench: kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "bench: $*" >&2; }

# Prints a TCP port on 127.0.0.1 that nothing listens on.
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 20000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
    done
}

# ---- CPU accounting ----------------------------------------------------------------

# Prints the CPU ticks (user + system) the given processes have used so far.
cpu_ticks() {
    local total=0 pid stat
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) } # the fields after "(comm) "
        read -r -a f <<<"$stat"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# Prints the CPU ticks of the postmaster and all its children (the backends of cibad
# and the background processes).
postgres_ticks() {
    local postmaster children
    postmaster=$(head -n 1 "$tmp/pg/data/postmaster.pid")
    read -r -a children <<<"$(ps -o pid= --ppid "$postmaster" | tr '\n' ' ')"
    cpu_ticks "$postmaster" "${children[@]}"
}

# Prints busy and total ticks of the whole machine, from /proc/stat.
machine_ticks() {
    local cpu user nice system idle iowait irq softirq steal rest
    read -r cpu user nice system idle iowait irq softirq steal rest </proc/stat
    local busy=$((user + nice + system + irq + softirq + steal))
    echo "$busy $((busy + idle + iowait))"
}

cpu_mark() {
    CPU_CIBAD=$(cpu_ticks "$cibad_pid")
    CPU_PG=$(postgres_ticks)
    CPU_SINK=$(cpu_ticks "$sink_pid")
    read -r CPU_BUSY CPU_TOTAL < <(machine_ticks)
}

# Prints how much CPU each part used since cpu_mark, in % of one core as top shows it
# (200% is both cores). wrk's own use comes from /usr/bin/time in $1.
cpu_report() {
    local wrk_time=$1 cibad pg sink busy total wrk_ticks
    cibad=$(($(cpu_ticks "$cibad_pid") - CPU_CIBAD))
    pg=$(($(postgres_ticks) - CPU_PG))
    sink=$(($(cpu_ticks "$sink_pid") - CPU_SINK))
    read -r busy total < <(machine_ticks)
    busy=$((busy - CPU_BUSY))
    total=$((total - CPU_TOTAL))
    wrk_ticks=$(awk -v hz="$clk_tck" '{printf "%d", ($2 + $3) * hz}' "$wrk_time")
    awk -v c="$cibad" -v p="$pg" -v s="$sink" -v w="$wrk_ticks" -v b="$busy" -v t="$total" \
        -v n="$(nproc)" 'BEGIN {
            f = 100 * n / (t > 0 ? t : 1)
            o = b - c - p - s - w; if (o < 0) o = 0
            printf "cibad %.0f%%, postgres %.0f%%, wrk %.0f%%, sink %.0f%%, other %.0f%%, idle %.0f%% (of %d%%)\n",
                c * f, p * f, w * f, s * f, o * f, (t - b) * f, 100 * n
        }'
}

# ---- wrk runs ----------------------------------------------------------------------

# Starts wrk with a script for $2 seconds, under /usr/bin/time (which records wrk's CPU
# time in $out/$1.time). Extra environment for the script goes before the call.
wrk_start() {
    local name=$1 seconds=$2 script=$3 path=${4:-/}
    /usr/bin/time -f '%e %U %S' -o "$out/$name.time" \
        wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency \
        -s "$here/bench/$script" "http://127.0.0.1:$http_port$path" >"$out/$name.txt" 2>&1 &
    time_pid=$!
}

# Prints the pid of wrk, the child of /usr/bin/time.
wrk_pid() {
    ps -o pid= --ppid "$time_pid" | tr -d ' '
}

# Waits for the wrk run $1 and keeps its BENCH line in $out/$1.bench.
wrk_wait() {
    local name=$1 rc=0
    wait "$time_pid" || rc=$?
    time_pid=''
    if [[ $rc -ne 0 ]] || ! grep '^BENCH ' "$out/$name.txt" >"$out/$name.bench"; then
        echo "bench: wrk run $name failed:" >&2
        cat "$out/$name.txt" >&2
        return 1
    fi
}

# Runs wrk to the end. With BENCH_PERF=1, `perf record -a -g` samples the whole machine
# meanwhile, into $out/$1.perf.data (the sampling costs CPU, so these figures run low).
run_wrk() {
    if [[ ${BENCH_PERF:-0} == 1 ]]; then
        perf record -a -g -F 499 -o "$out/$1.perf.data" -- sleep "$2" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    wrk_start "$@"
    wrk_wait "$1"
    if [[ -n $perf_pid ]]; then
        wait "$perf_pid" || true
        perf_pid=''
    fi
}

# Prints field $2 of the BENCH line of run $1, or 0 when the line lacks it.
field() {
    local value
    value=$(grep -oE "(^| )$2=[0-9.]+" "$out/$1.bench" | head -n 1 | cut -d= -f2)
    echo "${value:-0}"
}

# Prints the reply counts of run $1 as "key n, key n".
reply_mix() {
    grep -oE 'count\.[^ ]+' "$out/$1.bench" | sed -E 's/^count\.//; s/=/ /' |
        paste -sd, - | sed 's/,/, /g'
}

rate() { # count duration_us
    awk -v n="$1" -v d="$2" 'BEGIN { printf "%.0f", (d > 0) ? n * 1e6 / d : 0 }'
}

ms() { # microseconds
    awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'
}

sql() {
    psql "$db_url" -qAtc "$1"
}

rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$cibad_pid/status"
}

# ---- setup -------------------------------------------------------------------------

pg_port=$(free_port)
http_port=$(free_port)
sink_port=$(free_port)
while [[ $sink_port == "$http_port" ]]; do sink_port=$(free_port); done
ping_port=$(free_port)
while [[ $ping_port == "$http_port" || $ping_port == "$sink_port" ]]; do
    ping_port=$(free_port)
done

say "starting PostgreSQL in $tmp/pg"
base_url=$("$here/pg.sh" start "$tmp/pg" "$pg_port")
pg_started=1
psql "$base_url" -qAtc "CREATE DATABASE cibad" >/dev/null
db_url=${base_url/dbname=postgres/dbname=cibad}
if [[ ${BENCH_PG_DURABLE:-0} == 1 ]]; then
    # pg.sh turns them off on the command line, which no other setting overrides, so
    # restart with pg.sh's other options and the defaults (on) for these three.
    pg_bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    as_owner=()
    [[ $(id -u) -eq 0 ]] && as_owner=(runuser -u postgres --)
    "${as_owner[@]}" "$pg_bindir/pg_ctl" -D "$tmp/pg/data" -l "$tmp/pg/server.log" -m fast \
        -w restart -o "-c listen_addresses= -k $tmp/pg/sock -p $pg_port \
        -c max_connections=200" >/dev/null
fi

if [[ ${BENCH_PG_EXPLAIN:-0} == 1 ]]; then
    # Logs every statement over 25 ms with its plan and buffers (not its timings, which
    # cost too much), and lock waits over 5 ms, to $out/postgres.log at the end.
    for setting in "log_min_duration_statement = '25ms'" \
        "session_preload_libraries = 'auto_explain'" \
        "auto_explain.log_min_duration = '25ms'" "auto_explain.log_analyze = on" \
        "auto_explain.log_timing = off" "auto_explain.log_buffers = on" \
        "log_lock_waits = on" "deadlock_timeout = '5ms'" "log_checkpoints = on" \
        "log_autovacuum_min_duration = 0" "log_line_prefix = '%m [%p] '"; do
        psql "$base_url" -qAt -c "LOAD 'auto_explain'" -c "ALTER SYSTEM SET $setting" \
            >/dev/null
    done
    psql "$base_url" -qAtc "SELECT pg_reload_conf()" >/dev/null
fi

export CIBAD_DATABASE_URL=$db_url
issuer=http://127.0.0.1:$http_port
export CIBAD_MIGRATIONS_DIR=$root/migrations
export CIBAD_SECRET
CIBAD_SECRET=$(openssl rand -hex 32)
sms_token=$(openssl rand -hex 16)
"$bin" migrate >/dev/null 2>&1 || { "$bin" migrate; exit 1; }

client_json=$("$bin" client create --name "Bench agent" --scope openid --client-id bench \
    --json)
client_secret=$(sed -nE 's/.*"client_secret": *"([^"]+)".*/\1/p' <<<"$client_json")
[[ -n $client_secret ]] || { echo "bench: no client_secret in: $client_json" >&2; exit 1; }
BENCH_AUTH="Basic $(printf 'bench:%s' "$client_secret" | base64 -w 0)"
export BENCH_AUTH

# A ping client whose notification endpoint is a second sink on loopback. The sink
# accepts only "Bearer $sms_token", so the requests use that as client_notification_token.
export CIBAD_NOTIFICATION_ALLOW_LOOPBACK=true
ping_json=$("$bin" client create --name "Bench ping agent" --scope openid \
    --client-id bench-ping --delivery-mode ping \
    --notification-endpoint "http://127.0.0.1:$ping_port/ping" --json)
ping_secret=$(sed -nE 's/.*"client_secret": *"([^"]+)".*/\1/p' <<<"$ping_json")
[[ -n $ping_secret ]] || { echo "bench: no client_secret in: $ping_json" >&2; exit 1; }
ping_auth="Basic $(printf 'bench-ping:%s' "$ping_secret" | base64 -w 0)"

# Two private_key_jwt clients with an inline JWKS of one key each: bench-jwt signs its
# assertions with a P-256 key (ES256), bench-jwt-ps with an RSA 2048-bit key (PS256).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/bench-jwt.pem" \
    2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/bench-jwt-ps.pem" \
    2>/dev/null
"$bin" client create --name "Bench JWT agent" --scope openid --client-id bench-jwt \
    --auth-method private_key_jwt --auth-signing-alg ES256 \
    --jwks "$("$jwt_bin" jwks "$tmp/bench-jwt.pem" bench-key)" >/dev/null
"$bin" client create --name "Bench PS256 agent" --scope openid --client-id bench-jwt-ps \
    --auth-method private_key_jwt --auth-signing-alg PS256 \
    --jwks "$("$jwt_bin" jwks "$tmp/bench-jwt-ps.pem" bench-key)" >/dev/null

# Writes $4 assertions of client $1 for the endpoint path $3 into the file $2, from two
# processes in parallel. Each assertion expires 300 s after it is made.
make_assertions() {
    local client=$1 file=$2 path=$3 count=$4 half=$(($4 / 2))
    "$jwt_bin" sign "$tmp/$client.pem" bench-key "$client" "$issuer$path" "$half" \
        >"$file.1" &
    "$jwt_bin" sign "$tmp/$client.pem" bench-key "$client" "$issuer$path" \
        $((count - half)) >"$file.2"
    wait $!
    cat "$file.1" "$file.2" >"$file"
    rm -f "$file.1" "$file.2"
    (($(wc -l <"$file") == count)) ||
        { echo "bench: bench_jwt made too few assertions" >&2; exit 1; }
}

# Users bu1000001... with phones +15551000001... Each gets an equal share of the codes,
# so no phone reaches CIBAD_SMS_PER_PHONE_MAX.
say "creating $users users"
user_first=1000001
seq "$user_first" $((user_first + users - 1)) |
    xargs -P 4 -I{} "$bin" user create --phone "+1555{}" --username "bu{}" >/dev/null
[[ $(sql "SELECT count(*) FROM app_user") == "$users" ]] ||
    { echo "bench: expected $users users in the database" >&2; exit 1; }

"$sink_bin" "$sink_port" "$out/sms.jsonl" "$sms_token" 2>"$out/sink.log" &
sink_pid=$!
"$sink_bin" "$ping_port" "$out/ping.jsonl" "$sms_token" 2>"$out/ping_sink.log" &
ping_sink_pid=$!

say "starting cibad on 127.0.0.1:$http_port with $workers workers"
CIBAD_LISTEN=127.0.0.1:$http_port CIBAD_ISSUER=$issuer \
    CIBAD_WORKERS=$workers CIBAD_LOG_LEVEL=warn CIBAD_SMS_DRIVER=http \
    CIBAD_SMS_HTTP_URL=http://127.0.0.1:$sink_port/sms CIBAD_SMS_HTTP_TOKEN=$sms_token \
    CIBAD_SMS_ALLOW_HTTP_LOOPBACK=true CIBAD_SMS_PER_PHONE_MAX=1000 \
    CIBAD_OTP_LIFETIME=300 CIBAD_AUTH_REQ_MAX_EXPIRY=1800 CIBAD_AUTH_REQ_DEFAULT_EXPIRY=1800 \
    "$bin" serve >"$out/cibad.log" 2>&1 &
cibad_pid=$!
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break
    kill -0 "$cibad_pid" 2>/dev/null || { cat "$out/cibad.log" >&2; exit 1; }
    sleep 0.1
done
curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null ||
    { echo "bench: cibad not ready after 10 s" >&2; cat "$out/cibad.log" >&2; exit 1; }
rss_idle=$(rss_kib)
loadavg=$(cut -d' ' -f1-3 /proc/loadavg)

export BENCH_LUA_DIR=$here/bench BENCH_OUT=$out BENCH_THREADS=$threads
export BENCH_USERS=$users BENCH_USER_PREFIX=bu BENCH_USER_FIRST=$user_first
declare -A cpu

# ---- 1. baseline -------------------------------------------------------------------

say "1/6 GET /healthz for ${duration}s"
cpu_mark
run_wrk healthz "$duration" healthz.lua /healthz
cpu[healthz]=$(cpu_report "$out/healthz.time")

# ---- 2. bc-authorize ---------------------------------------------------------------

say "2/6 POST /bc-authorize for ${duration}s"
cpu_mark
run_wrk bc "$duration" bc_authorize.lua
cpu[bc]=$(cpu_report "$out/bc.time")
bc_ok=$(field bc count.200)
if [[ ${BENCH_STOP_AFTER:-} == bc ]]; then
    echo "POST /bc-authorize: $(rate "$(field bc requests)" "$(field bc duration_us)")" \
        "req/s, p50 $(ms "$(field bc p50_us)") ms, p99 $(ms "$(field bc p99_us)") ms;" \
        "replies: $(reply_mix bc)"
    echo "CPU: ${cpu[bc]}"
    exit 0
fi

# More requests, counted apart from the measured run, until there are enough for the
# memory figure and for two issuance runs at the target rate. Those are a probe of up to
# 3 s and the measured run of $duration s.
need_ids=$(((duration + 3) * target_tokens_ps * 11 / 10))
((need_ids > min_pending)) || need_ids=$min_pending
bc_rps=$(rate "$(field bc requests)" "$(field bc duration_us)")
fill=0
while (($(cat "$out"/auth_req_ids.* | wc -l) < need_ids)); do
    ((++fill <= 5)) || { echo "bench: cannot create $need_ids requests" >&2; exit 1; }
    have=$(cat "$out"/auth_req_ids.* | wc -l)
    seconds=$(awk -v n=$((need_ids - have)) -v r="$bc_rps" \
        'BEGIN { s = int(1.1 * n / ((r > 0) ? r : 1)) + 1; print (s > 60) ? 60 : s }')
    say "   POST /bc-authorize for ${seconds}s more, to reach $need_ids requests"
    run_wrk "fill$fill" "$seconds" bc_authorize.lua
done
cat "$out"/auth_req_ids.* >"$out/ids.txt"
ids_total=$(wc -l <"$out/ids.txt")

# Every accepted request sends one SMS after its reply; wait for the sink to have them.
for _ in $(seq 300); do
    (($(wc -l <"$out/sms.jsonl") >= ids_total)) && break
    sleep 0.1
done
sms_total=$(wc -l <"$out/sms.jsonl")
((sms_total >= ids_total)) ||
    say "only $sms_total SMS arrived for $ids_total requests after 30 s"

# ---- 3. memory ---------------------------------------------------------------------

pending=$(sql "SELECT count(*) FROM auth_req WHERE status = 'pending'")
rss_pending=$(rss_kib)
say "3/6 VmRSS $rss_pending KiB with $pending pending requests"

# ---- 4. polling --------------------------------------------------------------------

say "4/6 POST /token for pending requests for ${duration}s"
cpu_mark
BENCH_IDS=$out/ids.txt run_wrk poll "$duration" poll.lua /token
cpu[poll]=$(cpu_report "$out/poll.time")

# ---- 4b and 4c. polling with private_key_jwt -----------------------------------------

# Polls for $duration seconds as client $2 (run name $1), with a fresh assertion per
# request: first it makes $jwt_requests pending requests of that client, with
# assertions as well, in their own directory, so that the steps below see only the
# first client's ids and codes. Then $3 assertions per second of the run are made just
# before it, because they expire.
run_poll_jwt() {
    local run=$1 client=$2 per_second=$3 dir=$out/$1
    mkdir -p "$dir"
    make_assertions "$client" "$dir/bc_assertions.txt" /bc-authorize "$jwt_requests"
    BENCH_OUT=$dir BENCH_ASSERTIONS=$dir/bc_assertions.txt \
        run_wrk "${run}_bc" "$duration" bc_authorize.lua
    cat "$dir"/auth_req_ids.* >"$dir/ids.txt"
    make_assertions "$client" "$dir/poll_assertions.txt" /token $((duration * per_second))
    cpu_mark
    BENCH_IDS=$dir/ids.txt BENCH_ASSERTIONS=$dir/poll_assertions.txt \
        run_wrk "$run" "$duration" poll.lua /token
    cpu[$run]=$(cpu_report "$out/$run.time")
}

say "4b/6 POST /token for pending requests with private_key_jwt (ES256) for ${duration}s"
run_poll_jwt poll_jwt bench-jwt 25000
# PS256 signing takes bench_jwt about 300 us per assertion, so make fewer of them: a
# run that uses them up is marked in the table.
say "4c/6 POST /token for pending requests with private_key_jwt (PS256) for ${duration}s"
run_poll_jwt poll_ps bench-jwt-ps 18000

# ---- 5. approval -------------------------------------------------------------------

# "... Code 123456. Review: http://.../approve/REF" -> "REF 123456", for the first
# client's requests only: their SMS came before those of the JWT client.
head -n "$sms_total" "$out/sms.jsonl" |
    sed -nE 's/.*Code ([0-9]{6})\..*\/approve\/([A-Za-z0-9_-]+).*/\2 \1/p' >"$out/pairs.txt"
say "5/6 POST /approve for $(wc -l <"$out/pairs.txt") requests"
cpu_mark
BENCH_PAIRS=$out/pairs.txt wrk_start approve 600 approve.lua
# Each wrk thread leaves a marker when it has sent its last pair, but wrk itself runs for
# its whole -d. So interrupt it then: on SIGINT wrk prints its summary and exits.
for _ in $(seq 6000); do
    (($(find "$out" -name 'approve_done.*' | wc -l) >= threads)) && break
    kill -0 "$time_pid" 2>/dev/null || break
    sleep 0.1
done
sleep 0.5 # the replies still in flight
kill -INT "$(wrk_pid)" 2>/dev/null || true
wrk_wait approve
cpu[approve]=$(cpu_report "$out/approve.time")

# Lists the ids in ids.txt whose request is approved and not yet redeemed. The database
# keeps only the SHA-256 of each auth_req_id, so the ids are hashed there.
approved_ids() {
    psql "$db_url" -qAt -c "CREATE TEMP TABLE ids (id text)" -c "\\copy ids FROM '$out/ids.txt'" \
        -c "SELECT i.id FROM ids i JOIN auth_req a
            ON a.auth_req_id_hash = encode(sha256(convert_to(i.id, 'UTF8')), 'hex')
            WHERE a.status = 'approved'"
}
approved_ids >"$out/approved_ids.txt"
approved=$(wc -l <"$out/approved_ids.txt")

# ---- 6. issuance -------------------------------------------------------------------

# A run that uses up its ids would measure idle time. Issuance does what a poll does
# plus two ES256 signatures, so it should not outrun polling, and a probe of
# 80% * approved / poll_rps seconds (1 to 3) should not run out. The measured run then
# lasts as long as the ids left allow at the probe's rate, with 20% to spare, at most
# $duration seconds. A run that still runs out is marked in the table.
poll_rps=$(rate "$(field poll requests)" "$(field poll duration_us)")
probe_seconds=$(awk -v a="$approved" -v r="$poll_rps" \
    'BEGIN { s = int(0.8 * a / ((r > 0) ? r : 1)); print (s > 3) ? 3 : (s < 1) ? 1 : s }')
say "6/6 POST /token for approved requests: ${probe_seconds}s probe ($approved approved)"
BENCH_IDS=$out/approved_ids.txt run_wrk tokens_probe "$probe_seconds" tokens.lua /token
approved_ids >"$out/approved_ids_left.txt"
approved_left=$(wc -l <"$out/approved_ids_left.txt")
probe_tps=$(rate "$(field tokens_probe count.200)" "$(field tokens_probe duration_us)")
token_seconds=$(awk -v a="$approved_left" -v r="$probe_tps" -v d="$duration" \
    'BEGIN { s = int(0.8 * a / ((r > 0) ? r : 1)); print (s > d) ? d : s }')
tokens_run=tokens
if ((token_seconds >= 1)); then
    say "   POST /token for approved requests for ${token_seconds}s ($approved_left approved)"
    cpu_mark
    BENCH_IDS=$out/approved_ids_left.txt run_wrk tokens "$token_seconds" tokens.lua /token
    cpu[tokens]=$(cpu_report "$out/tokens.time")
else
    say "   too few approved requests left for a second run: reporting the probe"
    tokens_run=tokens_probe
    token_seconds=$probe_seconds
    cpu[tokens]="(not measured)"
fi

# ---- 7. ping delivery --------------------------------------------------------------

# Requests of the ping client, their SMS codes, their approvals, and then the pings at
# the second sink. The audit log has the time of each approval (the decide statement)
# and of each delivery (recorded after the sink's reply), so the latency below runs from
# the committed approval to the recorded 2xx: a little more than until the callback.
ping_seconds=${BENCH_PING_SECONDS:-2}
mkdir -p "$out/ping"
sms_before=$(wc -l <"$out/sms.jsonl")
say "7/7 ping: POST /bc-authorize for a ping client for ${ping_seconds}s"
BENCH_OUT=$out/ping BENCH_AUTH=$ping_auth \
    BENCH_EXTRA_FORM="&client_notification_token=$sms_token" \
    run_wrk ping_bc "$ping_seconds" bc_authorize.lua
ping_ids=$(cat "$out"/ping/auth_req_ids.* | wc -l)
for _ in $(seq 300); do
    (($(wc -l <"$out/sms.jsonl") >= sms_before + ping_ids)) && break
    sleep 0.1
done
tail -n +$((sms_before + 1)) "$out/sms.jsonl" |
    sed -nE 's/.*Code ([0-9]{6})\..*\/approve\/([A-Za-z0-9_-]+).*/\2 \1/p' \
        >"$out/ping_pairs.txt"
say "   POST /approve for $(wc -l <"$out/ping_pairs.txt") ping requests"
cpu_mark
BENCH_OUT=$out/ping BENCH_PAIRS=$out/ping_pairs.txt wrk_start ping_approve 600 approve.lua
for _ in $(seq 6000); do
    (($(find "$out/ping" -name 'approve_done.*' | wc -l) >= threads)) && break
    kill -0 "$time_pid" 2>/dev/null || break
    sleep 0.1
done
sleep 0.5
kill -INT "$(wrk_pid)" 2>/dev/null || true
wrk_wait ping_approve
ping_approved=$(sql "SELECT count(*) FROM audit_log WHERE client_id = 'bench-ping'
    AND action = 'approve' AND decision = 'approved'")
for _ in $(seq 600); do
    (($(wc -l <"$out/ping.jsonl") >= ping_approved)) && break
    sleep 0.1
done
cpu[ping]=$(cpu_report "$out/ping_approve.time")
# delivered, p50 ms, p99 ms, notifications/s from the first approval to the last delivery
read -r ping_delivered ping_p50 ping_p99 ping_rate < <(sql "
    WITH a AS (SELECT auth_req_id_hash, at FROM audit_log WHERE client_id = 'bench-ping'
               AND action = 'approve' AND decision = 'approved'),
         n AS (SELECT auth_req_id_hash, at FROM audit_log WHERE client_id = 'bench-ping'
               AND action = 'notify' AND decision = 'delivered'),
         d AS (SELECT extract(epoch FROM n.at - a.at) * 1000 AS ms, a.at AS approved,
                      n.at AS delivered FROM a JOIN n USING (auth_req_id_hash))
    SELECT count(*),
           round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2),
           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 2),
           round(count(*) / greatest(extract(epoch FROM max(delivered) - min(approved)),
                                     0.001))
    FROM d" | tr '|' ' ')
ping_retries=$(sql "SELECT count(*) FROM audit_log WHERE client_id = 'bench-ping'
    AND action = 'notify' AND decision <> 'delivered'")
ping_received=$(wc -l <"$out/ping.jsonl")

rss_end=$(rss_kib)
rss_peak=$(awk '/^VmHWM:/ { print $2 }' "/proc/$cibad_pid/status")

# ---- report ------------------------------------------------------------------------

verdict() { # value op target
    awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {
        ok = (op == ">=") ? v >= t : v < t; print ok ? "met" : "MISSED" }'
}

# Prints one table row: name, run, the count that makes the rate, its unit, and the
# target rate (empty for no target).
row() {
    local name=$1 run=$2 count=$3 unit=$4 target=$5 r p50 p99 goal result
    r=$(rate "$(field "$run" "$count")" "$(field "$run" duration_us)")
    p50=$(ms "$(field "$run" p50_us)")
    p99=$(ms "$(field "$run" p99_us)")
    goal=- result=-
    if [[ -n $target ]]; then
        goal=">= $target, p99 < $target_p99_ms ms"
        result="rate $(verdict "$r" ">=" "$target"), p99 $(verdict "$p99" "<" "$target_p99_ms")"
        (($(field "$run" exhausted_threads) == 0)) || result="$result (ran out of ids)"
    fi
    printf "$row_format" "$name" "$r" "$unit" "$p50" "$p99" "$goal" "$result"
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

pg_version=$(sql "SHOW server_version" | cut -d' ' -f1)
pg_settings=$(sql "SELECT string_agg(name || '=' || current_setting(name), ', ')
    FROM unnest(ARRAY['fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers'])
    AS name")

echo
echo "cibad bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load average before" \
    "the runs $loadavg"
echo "cibad: $workers workers, log_level=warn, http SMS driver to the loopback sink"
echo "wrk: -t$threads -c$connections, ${duration}s per run (issuance ${token_seconds}s)," \
    "$users users"
echo "PostgreSQL $pg_version on a unix socket: $pg_settings"
echo
row_format='%-33s %7s %-8s %6s %6s  %-24s %s\n'
printf "$row_format" scenario rate unit "p50 ms" "p99 ms" target result
row "GET /healthz (baseline)" healthz requests "req/s" ""
row "POST /token, pending (polling)" poll requests "req/s" "$target_poll_rps"
# Prints the row of a private_key_jwt polling run: name, run.
jwt_row() {
    local name=$1 run=$2 r result
    r=$(rate "$(field "$run" requests)" "$(field "$run" duration_us)")
    result="$(verdict "$r" ">=" "$((poll_rps / 2))") ($((100 * r / (poll_rps > 0 ? poll_rps : 1)))% of polling)"
    (($(field "$run" exhausted_threads) == 0)) || result="$result (ran out of assertions)"
    printf "$row_format" "$name" "$r" "req/s" "$(ms "$(field "$run" p50_us)")" \
        "$(ms "$(field "$run" p99_us)")" ">= 50% of polling" "$result"
}
jwt_row "  the same, private_key_jwt ES256" poll_jwt
jwt_row "  the same, private_key_jwt PS256" poll_ps
row "POST /bc-authorize, http SMS" bc requests "req/s" "$target_bc_rps"
row "POST /token, approved (issuance)" "$tokens_run" count.200 "tokens/s" "$target_tokens_ps"
printf "$row_format" "VmRSS, $pending pending" "$(mib "$rss_pending")" MiB "" "" \
    "< $target_rss_mib MiB" "$(verdict "$(mib "$rss_pending")" "<" "$target_rss_mib")"
printf "$row_format" "ping: approval to callback" "${ping_rate:-0}" "pings/s" \
    "${ping_p50:-0}" "${ping_p99:-0}" "p99 < $target_ping_p99_ms ms" \
    "p99 $(verdict "${ping_p99:-0}" "<" "$target_ping_p99_ms")"
echo
echo "Replies:"
echo "  healthz:       $(field healthz requests) requests, $(field healthz status_errors) non-2xx"
echo "  polling:       $(reply_mix poll)"
for run in poll_jwt poll_ps; do
    echo "  $run:" "$(reply_mix "$run"), over $(wc -l <"$out/$run/ids.txt") pending" \
        "requests of its client ($(reply_mix "${run}_bc") when they were made)"
done
echo "  bc-authorize:  $(reply_mix bc) (+ $((ids_total - bc_ok)) from top-up runs;" \
    "$sms_total SMS received by the sink)"
echo "  approval:      $approved approved in the database; replies: $(reply_mix approve)," \
    "$(rate "$(field approve requests)" "$(field approve duration_us)") req/s"
echo "  issuance:      $(reply_mix "$tokens_run"), $(field "$tokens_run" requests) requests," \
    "$(field "$tokens_run" exhausted_threads) threads ran out of ids; the ${probe_seconds}s" \
    "probe before it: $probe_tps tokens/s"
echo "  ping:          $ping_ids requests, $ping_approved approved ($(reply_mix ping_approve))," \
    "$ping_delivered delivered and recorded, $ping_received received by the sink," \
    "$ping_retries retried or failed attempts"
echo "  socket errors (of them timeouts, no reply within 2 s): healthz $(field healthz errors)" \
    "($(field healthz timeouts)), polling $(field poll errors) ($(field poll timeouts))," \
    "bc-authorize $(field bc errors) ($(field bc timeouts)), issuance" \
    "$(field "$tokens_run" errors) ($(field "$tokens_run" timeouts)), polling with ES256" \
    "$(field poll_jwt errors) ($(field poll_jwt timeouts)), polling with PS256" \
    "$(field poll_ps errors) ($(field poll_ps timeouts))"
echo "Memory: VmRSS idle $(mib "$rss_idle") MiB, with $pending pending $(mib "$rss_pending")" \
    "MiB, after the runs $(mib "$rss_end") MiB, peak (VmHWM) $(mib "$rss_peak") MiB"
echo "CPU during each run, in % of one core like top (other: processes outside this bench):"
busy_runs=''
for run in healthz poll poll_jwt poll_ps bc approve tokens ping; do
    printf '  %-13s  %s\n' "$run:" "${cpu[$run]}"
    other=$(grep -oE 'other [0-9]+' <<<"${cpu[$run]}" | cut -d' ' -f2)
    ((${other:-0} <= 20)) || busy_runs="$busy_runs${busy_runs:+, }$run"
done
if [[ -n $busy_runs ]]; then
    echo "WARNING: processes outside this bench used more than 20% of a core during" \
        "$busy_runs. Those figures are low, so run make bench again on an idle machine."
fi
