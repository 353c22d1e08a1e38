#!/usr/bin/env bash
# tollgate load benchmark (a benchmark, not a test: it is never part of CI and always exits 0 once it ran).
#
#   tests/bench/run.sh
#
# Builds the release binaries, then measures these targets on loopback, interleaved in every round so that
# drift (other work on the machine, thermal, Postgres checkpoints) hits them all alike:
#   direct    nginx `return 200` with a small JSON body (the upstream everything else forwards to)
#   nginx     nginx `proxy_pass` to that upstream (keepalive upstream pool)
#   tollgate  tollgate with the bundled policy (GET reads are allowed) and durable audit to Postgres
#   floor     (latency runs only) proxy/examples/floor_proxy.rs: commits one decision-shaped row durably, then
#             forwards, on tollgate's libraries and nothing else; a baseline for what recording before
#             forwarding costs on this machine without anything tollgate does of its own
# For each: max throughput (wrk, closed loop) and latency at a fixed rate (oha, open loop with latency
# correction); CPU per request from /proc/<pid>/stat (and, for tollgate and the floor proxy, the bench
# database's Postgres backends separately); at the end tollgate's RSS holding 1,000 idle keep-alive agent
# connections.
# Prints medians over rounds, tollgate's own /metrics histograms per run, how many of its Postgres connections
# use TLS, and each DESIGN.md "Performance budget" target with PASS/MISS. Results and their reading: BENCHMARKS.md.
#
# Environment (all optional):
#   DATABASE_URL             a Postgres it may create a database in (default postgres://postgres@127.0.0.1:5432/postgres);
#                            the script creates tollgate_bench_<pid> there and drops it on exit
#   BENCH_ROUNDS=5  BENCH_DURATION=10 (s per measurement)  BENCH_CONNECTIONS=64  BENCH_THREADS=2
#   BENCH_RATE=2000 (req/s, latency runs)  BENCH_IDLE_CONNECTIONS=1000
#   BENCH_PERF=1             also profile tollgate with `perf record` during one extra (uncounted) wrk run
#   BENCH_NO_INSTALL=1       do not apt-get/cargo install missing tools; fail instead
# Needs: nginx, wrk, oha, curl, psql, python3. Missing nginx/wrk come from Debian, oha from Debian if it has
# it, else `cargo install oha --locked` (several minutes, once; not part of the ~8-minute run).
# Everything listens on 127.0.0.1 only; everything it started is stopped on exit (also on Ctrl-C).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH_DIR="$ROOT/tests/bench"
ROUNDS=${BENCH_ROUNDS:-5}
DURATION=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
RATE=${BENCH_RATE:-2000}
IDLE_CONNS=${BENCH_IDLE_CONNECTIONS:-1000}
PERF=${BENCH_PERF:-0}
ADMIN_DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export PATH="$PATH:/usr/sbin:/sbin:${CARGO_HOME:-$HOME/.cargo}/bin"

say() { printf '[bench %s] %s\n' "$(date +%T)" "$*"; }
die() { say "error: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------------- cleanup
WORK=""
BENCH_DB=""
PIDS=()        # processes this script started, stopped in reverse order
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        # nginx masters wait for their workers; give every process up to 5 s, then SIGKILL that one.
        for _ in $(seq 50); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${PIDS[i]}" 2>/dev/null
        wait "${PIDS[i]}" 2>/dev/null
    done
    if [[ -n "$BENCH_DB" ]]; then
        psql "$ADMIN_DATABASE_URL" -qAt -v ON_ERROR_STOP=1 \
            -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null 2>&1 ||
            psql "$ADMIN_DATABASE_URL" -qAt -c "DROP DATABASE IF EXISTS $BENCH_DB" >/dev/null 2>&1 ||
            say "warning: could not drop database $BENCH_DB" >&2
    fi
    [[ -n "$WORK" && -d "$WORK" ]] && rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------- prerequisites
ensure_tools() {
    local apt=()
    command -v nginx >/dev/null || apt+=(nginx)
    command -v wrk >/dev/null || apt+=(wrk)
    command -v curl >/dev/null || apt+=(curl)
    command -v psql >/dev/null || apt+=(postgresql-client)
    command -v python3 >/dev/null || apt+=(python3)
    if ((${#apt[@]})); then
        [[ "${BENCH_NO_INSTALL:-0}" == 1 ]] && die "missing: ${apt[*]}"
        say "installing from Debian: ${apt[*]}"
        apt-get update -qq || die "apt-get update failed"
        local pkgs=("${apt[@]}")
        # nginx-light is enough (and smaller) where the release still has it.
        if [[ " ${pkgs[*]} " == *" nginx "* ]] && apt-cache show nginx-light >/dev/null 2>&1; then
            pkgs=("${pkgs[@]/#nginx/nginx-light}")
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null || die "apt-get install ${pkgs[*]} failed"
    fi
    if ! command -v oha >/dev/null; then
        [[ "${BENCH_NO_INSTALL:-0}" == 1 ]] && die "missing: oha"
        if apt-cache policy oha 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            say "installing oha from Debian"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq oha >/dev/null || die "apt-get install oha failed"
        else
            say "installing oha from crates.io (cargo install oha --locked; takes several minutes, once)"
            cargo install oha --locked >/dev/null 2>&1 || die "cargo install oha failed"
        fi
    fi
    for t in nginx wrk oha curl psql python3; do command -v "$t" >/dev/null || die "$t not found"; done
}

ensure_tools
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true
(( $(ulimit -n) > IDLE_CONNS + 512 )) || die "open-file limit $(ulimit -n) is too low for $IDLE_CONNS connections"

# The load goes to loopback only; so does the audit traffic.
db_host=$(python3 -c 'import sys, urllib.parse as u; print(u.urlsplit(sys.argv[1]).hostname or "")' "$ADMIN_DATABASE_URL")
case "$db_host" in
    127.* | localhost | ::1 | "" | /*) ;;
    *) die "DATABASE_URL must point at this machine (127.0.0.1, localhost or a socket), not $db_host" ;;
esac
psql "$ADMIN_DATABASE_URL" -qAt -c 'select 1' >/dev/null 2>&1 || die "cannot reach Postgres at DATABASE_URL"

say "building: cargo build --release --locked -p tollgate --bin tollgate --example floor_proxy"
(cd "$ROOT" && cargo build --release --locked -p tollgate --bin tollgate --example floor_proxy) || die "build failed"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/tollgate"
FLOOR_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/floor_proxy"
[[ -x "$BIN" && -x "$FLOOR_BIN" ]] || die "$BIN or $FLOOR_BIN not found"

WORK=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
record() { (IFS=$'\t'; echo "$*") >>"$RESULTS"; }

# -------------------------------------------------------------------------------------------------- the machine
pg_version=$(psql "$ADMIN_DATABASE_URL" -qAt -c 'show server_version')
pg_durability=$(psql "$ADMIN_DATABASE_URL" -qAt -c "select 'fsync=' || current_setting('fsync') || ' synchronous_commit=' || current_setting('synchronous_commit')")
record info cpus "$(nproc)"
record info cpu_model "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
record info memory "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
record info kernel "$(uname -r)"
record info postgres "$pg_version ($pg_durability)"
record info nginx "$(nginx -v 2>&1 | sed 's/.*nginx\///')"
record info wrk "$(wrk -v 2>&1 | head -n1 | awk '{print $2}')"
record info oha "$(oha --version | awk '{print $2}')"
record info revision "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD -- proxy policies Cargo.lock 2>/dev/null || echo ' + uncommitted changes in proxy/ or policies/')"
record info load_at_start "$(cut -d' ' -f1-3 /proc/loadavg)"
record info settings "rounds=$ROUNDS duration=${DURATION}s connections=$CONNS threads=$THREADS rate=$RATE/s"

# --------------------------------------------------------------------------------------------------- services
free_ports() { # N free TCP ports on 127.0.0.1
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
read -r P_STATIC P_PROXY P_TG P_ADMIN P_FLOOR <<<"$(free_ports 5)"

nginx_conf() { # name listen-port server-block
    local dir="$WORK/$1"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    $3
}
EOF
}
BODY='{"result":[],"result_info":{"page":1,"per_page":20,"count":0,"total_count":0},"success":true,"errors":[],"messages":[]}'
nginx_conf static "$P_STATIC" "server {
        listen 127.0.0.1:$P_STATIC default_server backlog=4096;
        location / { default_type application/json; return 200 '$BODY'; }
    }"
nginx_conf proxy "$P_PROXY" "upstream static {
        server 127.0.0.1:$P_STATIC;
        keepalive 128;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$P_PROXY default_server backlog=4096;
        location /cloudflare/ {
            proxy_pass http://static/;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
for name in static proxy; do
    nginx -t -q -c "$WORK/$name/nginx.conf" -p "$WORK/$name" 2>"$WORK/$name/check.log" ||
        die "nginx config ($name): $(cat "$WORK/$name/check.log")"
    nginx -c "$WORK/$name/nginx.conf" -p "$WORK/$name" -g 'daemon off;' 2>>"$WORK/$name/error.log" &
    PIDS+=($!)
    eval "NGX_${name^^}_PID=$!"
done

BENCH_DB="tollgate_bench_$$"
psql "$ADMIN_DATABASE_URL" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE $BENCH_DB" >/dev/null || {
    BENCH_DB=""
    die "cannot create the bench database"
}
BENCH_DB_URL=$(python3 -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$ADMIN_DATABASE_URL" "$BENCH_DB")

# tollgate's whole configuration comes from the environment (no tollgate.toml in its working directory).
# The load comes from one agent key over many connections, and the idle-connection measurement holds
# connections open for longer than the default keep-alive idle timeout: both limits are lifted here.
mkdir -p "$WORK/tollgate"
unset TOLLGATE_CONFIG
export DATABASE_URL="$BENCH_DB_URL" RUST_LOG=warn \
    TOLLGATE_SERVER__MAX_REQUESTS_PER_AGENT=1000000 TOLLGATE_SERVER__HEADER_TIMEOUT_MS=3600000 \
    TOLLGATE_AUDIT__MAX_STORED_BYTES_PER_AGENT_PER_MINUTE=1099511627776 \
    TOLLGATE_SERVER__LISTEN="127.0.0.1:$P_TG" TOLLGATE_SERVER__ADMIN_LISTEN="127.0.0.1:$P_ADMIN" \
    TOLLGATE_POLICY__DIR="$ROOT/policies" \
    TOLLGATE_PROVIDERS__CLOUDFLARE__UPSTREAM="http://127.0.0.1:$P_STATIC" \
    TOLLGATE_PROVIDERS__STRIPE__UPSTREAM="http://127.0.0.1:$P_STATIC" \
    CLOUDFLARE_API_TOKEN=bench-dummy-cloudflare-token STRIPE_SECRET_KEY=sk_test_bench_dummy \
    TOLLGATE_ADMIN_TOKEN="bench-admin-$$" \
    TOLLGATE_VAULT_KEY="$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"
(cd "$WORK/tollgate" && exec "$BIN" serve --migrate >"$WORK/tollgate/stdout" 2>"$WORK/tollgate/log") &
TG_PID=$!
PIDS+=("$TG_PID")
for _ in $(seq 300); do
    grep -q '^tollgate listening for agents on ' "$WORK/tollgate/stdout" 2>/dev/null && break
    kill -0 "$TG_PID" 2>/dev/null || die "tollgate exited: $(tail -n 20 "$WORK/tollgate/log")"
    sleep 0.1
done
grep -q '^tollgate listening for agents on ' "$WORK/tollgate/stdout" || die "tollgate did not start in 30 s"
vmrss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null; }
record rss tollgate_started "$(vmrss_kib "$TG_PID")"

KEY=$(cd "$WORK/tollgate" && "$BIN" agents create bench-agent --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])') ||
    die "agents create failed"

URL_DIRECT="http://127.0.0.1:$P_STATIC/client/v4/zones"
URL_NGINX="http://127.0.0.1:$P_PROXY/cloudflare/client/v4/zones"
URL_TOLLGATE="http://127.0.0.1:$P_TG/cloudflare/client/v4/zones"
URL_FLOOR="http://127.0.0.1:$P_FLOOR/cloudflare/client/v4/zones"
TARGETS=(direct nginx tollgate)           # throughput runs
LAT_TARGETS=(direct nginx floor tollgate) # fixed-rate latency runs
url_of() {
    case $1 in
        direct) echo "$URL_DIRECT" ;; nginx) echo "$URL_NGINX" ;; tollgate) echo "$URL_TOLLGATE" ;; floor) echo "$URL_FLOOR" ;;
    esac
}
code=$(curl -s -o "$WORK/check.tollgate" -w '%{http_code}' -H "Authorization: Bearer $KEY" "$URL_TOLLGATE")
[[ "$code" == 200 ]] || die "tollgate answered $code: $(cat "$WORK/check.tollgate")"

# The commit probe: a table like `decisions` (same indexes), one real decision row to copy into it, and the
# statement that commits one copy, for pgbench's commit floor and for the floor proxy.
cat >"$WORK/probe_commit.sql" <<'SQL'
INSERT INTO commit_probe SELECT gen_random_uuid(), clock_timestamp(), writer_id, nextval('commit_probe_seq'), prev_hash, hash, agent_id, agent_name, run_id, on_behalf_of, provider, method, path, query, action, risk, outcome, code, rules, reasons, policy_revision, charge_cents, approval_id, input, policy_outcome, shadow_outcome FROM commit_probe_src;
SQL
PROBE=1
psql "$BENCH_DB_URL" -qAt -v ON_ERROR_STOP=1 >/dev/null <<'SQL' || { PROBE=0; say "warning: commit probe setup failed: no commit floor, no floor proxy"; }
CREATE TABLE commit_probe (LIKE decisions INCLUDING ALL);
CREATE TABLE commit_probe_src AS SELECT * FROM decisions ORDER BY at DESC LIMIT 1;
CREATE SEQUENCE commit_probe_seq;
SQL
FLOOR_PID=""
drop_floor() { # reason: the floor proxy is a baseline; without it the run goes on
    say "warning: floor proxy: $1; measuring without it"
    LAT_TARGETS=(direct nginx tollgate)
}
if ((PROBE)); then
    # Four pooled connections, as pgbench's floor uses four clients.
    "$FLOOR_BIN" "127.0.0.1:$P_FLOOR" "http://127.0.0.1:$P_STATIC" "$BENCH_DB_URL" "$WORK/probe_commit.sql" 4 \
        >"$WORK/floor.out" 2>&1 &
    FLOOR_PID=$!
    PIDS+=("$FLOOR_PID")
    for _ in $(seq 100); do
        grep -q '^listening on ' "$WORK/floor.out" 2>/dev/null && break
        kill -0 "$FLOOR_PID" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^listening on ' "$WORK/floor.out" 2>/dev/null || drop_floor "did not start: $(tail -n 3 "$WORK/floor.out")"
else
    drop_floor "no commit probe"
fi
for t in "${LAT_TARGETS[@]}"; do
    code=$(curl -s -o "$WORK/check.$t" -w '%{http_code}' -H "Authorization: Bearer $KEY" "$(url_of "$t")")
    [[ "$code" == 200 ]] || die "$t answered $code: $(cat "$WORK/check.$t")"
done
say "services up: direct :$P_STATIC, nginx :$P_PROXY, ${FLOOR_PID:+floor :$P_FLOOR, }tollgate :$P_TG (db $BENCH_DB, pid $TG_PID)"

# ------------------------------------------------------------------------------------------------ measurement
children() { echo "$1" $(pgrep -P "$1"); } # an nginx master and its workers
ticks() { # utime+stime (clock ticks) summed over the given pids; a process's stat covers all its threads
    local t=0 pid v
    for pid in "$@"; do
        v=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
pg_pids() { # the backends connected to the bench database (queried from the admin database): tollgate's and
    # the floor proxy's; the one not under load is idle
    psql "$ADMIN_DATABASE_URL" -qAt -c "select pid from pg_stat_activity where datname = '$BENCH_DB'" 2>/dev/null
}
declare -A PG_BEFORE
SNAP=""
snapshot() { # sets SNAP="static proxy tollgate host_busy host_total floor" (ticks); remembers each bench backend's ticks
    local pid
    PG_BEFORE=()
    for pid in $(pg_pids); do PG_BEFORE[$pid]=$(ticks "$pid"); done
    SNAP="$(ticks $(children "$NGX_STATIC_PID")) $(ticks $(children "$NGX_PROXY_PID")) $(ticks "$TG_PID") $(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat) $(ticks "$FLOOR_PID")"
}
pg_delta() { # ticks of the bench backends since snapshot, over the backends alive now (a backend that exited
    # during the run is lost, one that started is counted from zero; tollgate's pool keeps its connections)
    local sum=0 pid
    for pid in $(pg_pids); do sum=$((sum + $(ticks "$pid") - ${PG_BEFORE[$pid]:-0})); done
    echo "$sum"
}
cpu_delta() { # target before after pg → "ticks_self ticks_pg host_busy_pct"
    local t=$1 b=($2) a=($3) pg=$4 self
    case $t in
        direct) self=$((a[0] - b[0])) ;; nginx) self=$((a[1] - b[1])) ;; tollgate) self=$((a[2] - b[2])) ;; floor) self=$((a[5] - b[5])) ;;
    esac
    # The bench database's backends serve tollgate and the floor proxy; the one not under load idles.
    [[ $t == tollgate || $t == floor ]] || pg=0
    echo "$self $pg $(awk -v b=$((a[3] - b[3])) -v tot=$((a[4] - b[4])) 'BEGIN {printf "%.0f", tot ? 100 * b / tot : 0}')"
}

# tollgate's own histograms (admin /metrics): sums and counts, to tell server-side time apart per phase.
METRICS=(request_duration_seconds policy_evaluation_duration_seconds upstream_duration_seconds
    audit_commit_duration_seconds audit_batch_size)
metric_sums() { # → "sum count" for each of METRICS, summed over label sets
    local text m
    text=$(curl -s --max-time 5 "http://127.0.0.1:$P_ADMIN/metrics")
    for m in "${METRICS[@]}"; do
        awk -v m="tollgate_$m" '
            index($1, m "_sum") == 1 && (length($1) == length(m) + 4 || substr($1, length(m) + 5, 1) == "{") {s += $NF}
            index($1, m "_count") == 1 && (length($1) == length(m) + 6 || substr($1, length(m) + 7, 1) == "{") {c += $NF}
            END {printf "%.9f %d ", s, c}' <<<"$text"
    done
    echo
}
metric_delta() { # before after → per-field differences
    awk -v b="$1" -v a="$2" 'BEGIN {n = split(b, x, " "); split(a, y, " "); for (i = 1; i <= n; i++) printf "%.9f ", y[i] - x[i]; print ""}'
}

run_wrk() { # target round
    local t=$1 r=$2 out="$WORK/wrk.$1.$2" before after pg m_before
    [[ $t == tollgate ]] && m_before=$(metric_sums)
    snapshot
    before=$SNAP
    timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" \
        -H "Authorization: Bearer $KEY" "$(url_of "$t")" >"$out" 2>&1
    sleep 1 # let work queued by the last requests (audit outcomes) finish before reading CPU
    pg=$(pg_delta)
    snapshot
    after=$SNAP
    local reqs rps non2xx errs
    reqs=$(awk '/requests in/ {print $1}' "$out")
    rps=$(awk '/^Requests\/sec/ {print $2}' "$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$out")
    errs=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")
    [[ $t == tollgate ]] && record met "$r" thr $(metric_delta "$m_before" "$(metric_sums)")
    record thr "$r" "$t" "${reqs:-0}" "${rps:-0}" "${non2xx:-0}" "${errs:-0}" $(cpu_delta "$t" "$before" "$after" "$pg")
    say "round $r  throughput  $(printf '%-8s' "$t") ${rps:-?} req/s  (${reqs:-?} requests, non-2xx ${non2xx:-0}, socket errors ${errs:-0})"
}

run_oha() { # target round
    local t=$1 r=$2 out="$WORK/oha.$1.$2.json" before after pg m_before
    [[ $t == tollgate ]] && m_before=$(metric_sums)
    snapshot
    before=$SNAP
    timeout $((DURATION + 30)) oha --no-tui --output-format json -z "${DURATION}s" -q "$RATE" \
        --latency-correction -c "$CONNS" -H "Authorization: Bearer $KEY" "$(url_of "$t")" >"$out" 2>"$out.err"
    sleep 1
    pg=$(pg_delta)
    snapshot
    after=$SNAP
    local parsed
    parsed=$(python3 - "$out" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print("0 nan nan 0 1"); sys.exit()
codes = {str(k): v for k, v in (d.get("statusCodeDistribution") or {}).items()}
n = sum(codes.values())
# Requests still in flight when the duration ends are cancelled by oha ("aborted due to deadline"): not errors.
errors = sum(v for k, v in (d.get("errorDistribution") or {}).items() if "deadline" not in k.lower())
p = d.get("latencyPercentiles") or {}
ms = lambda v: "nan" if v is None else f"{v * 1000:.3f}"
print(n, ms(p.get("p50")), ms(p.get("p99")), n - codes.get("200", 0), errors)
EOF
)
    local n p50 p99 non200 errs
    read -r n p50 p99 non200 errs <<<"$parsed"
    [[ $t == tollgate ]] && record met "$r" lat $(metric_delta "$m_before" "$(metric_sums)")
    record lat "$r" "$t" "$n" "$p50" "$p99" "$non200" "$errs" $(cpu_delta "$t" "$before" "$after" "$pg")
    say "round $r  @${RATE}/s    $(printf '%-8s' "$t") p50 ${p50} ms  p99 ${p99} ms  ($n requests, non-200 $non200, errors $errs)"
}

say "warm-up: 3 s of wrk per target"
for t in "${LAT_TARGETS[@]}"; do
    timeout 20 wrk -t"$THREADS" -c"$CONNS" -d3s -H "Authorization: Bearer $KEY" "$(url_of "$t")" >/dev/null 2>&1
done

# The floor under "durable before forwarding": what one durable single-row commit of a decision-shaped row
# costs on this Postgres, from pgbench (C, libpq, prepared), and a bare round trip beside it. Every allowed
# request waits for at least one such commit, however fast tollgate is; at the fixed rate batches hold ~1 row.
# It is measured in every round, right after the latency runs, so that the same drift (checkpoints, other work)
# reaches it and tollgate alike.
PGBENCH=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -n1)
[[ -x "$PGBENCH" ]] || { PGBENCH=""; say "warning: no pgbench: the commit floor is not measured"; }
((PROBE)) || PGBENCH=""
if [[ -n "$PGBENCH" ]]; then
    echo 'SELECT 1;' >"$WORK/probe_select.sql"
    pgb() { # script → average latency in ms
        "$PGBENCH" -n -M prepared -c 1 -T 5 -f "$1" "$BENCH_DB_URL" 2>/dev/null | awk '/latency average/ {print $4}'
    }
    pgb_rate() { # script → "p50 p99" in ms at $RATE commits/s from 4 clients, measured from each
        # transaction's scheduled start (like oha's latency correction)
        (cd "$WORK" && rm -f pgbench_log.* &&
            "$PGBENCH" -n -M prepared -c 4 -R "$RATE" -T "$DURATION" -l -f "$1" "$BENCH_DB_URL" >/dev/null 2>&1 &&
            cat pgbench_log.* | awk '{print $3}' | sort -n |
            awk '{a[NR] = $1} END {if (NR) printf "%.3f %.3f\n", a[int(NR * 0.5)] / 1000, a[int(NR * 0.99)] / 1000}')
    }
fi

for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${TARGETS[@]}"; do run_wrk "$t" "$r"; done
    for t in "${LAT_TARGETS[@]}"; do run_oha "$t" "$r"; done
    if [[ -n "$PGBENCH" ]]; then
        read -r f50 f99 <<<"$(pgb_rate "$WORK/probe_commit.sql")"
        record floor_round "$r" "${f50:-nan}" "${f99:-nan}"
        say "round $r  @${RATE}/s    commit   p50 ${f50:-?} ms  p99 ${f99:-?} ms  (pgbench, durable single-row commits, 4 clients)"
    fi
done

record rss tollgate_after_load "$(vmrss_kib "$TG_PID")"

if [[ "$PERF" == 1 ]] && command -v perf >/dev/null; then
    # DWARF call graphs: the release profile keeps line tables but no frame pointers.
    say "profiling tollgate (perf record, ${DURATION}s of wrk; not counted in the results)"
    perf record -F 499 --call-graph dwarf,16384 -p "$TG_PID" -o "$WORK/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 &
    perf_pid=$!
    timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" \
        -H "Authorization: Bearer $KEY" "$URL_TOLLGATE" | awk '/^Requests\/sec/ {print "(profiled run: " $2 " req/s)"}'
    wait "$perf_pid"
    perf report -i "$WORK/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null | grep '%' >"$WORK/perf.dso"
    perf report -i "$WORK/perf.data" --stdio --children --sort sym -g none 2>/dev/null | grep '%' >"$WORK/perf.children"
    perf report -i "$WORK/perf.data" --stdio --no-children --sort sym -g none --percent-limit 1 2>/dev/null |
        grep '%' >"$WORK/perf.self"
    echo "--- perf: tollgate CPU samples by object ---"
    head -n 6 "$WORK/perf.dso"
    echo "--- perf: inclusive share of selected frames (children) ---"
    grep -E '\] (tollgate::[a-z_]+::[A-Za-z_]+(::[A-Za-z_]+)?(::\{\{closure\}\})?|tokio::runtime::blocking::pool::(Inner::run|spawn_blocking)|regorus::rvm::vm::execution::.*::execute|sqlx_core::net::tls::tls_rustls::.*poll_complete_io|hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_catch|finish_task_switch[.a-z0-9]*)\s*$' \
        "$WORK/perf.children" | head -n 20
    echo "--- perf: top symbols by self time (≥ 1 %) ---"
    head -n 25 "$WORK/perf.self"
fi

# 1,000 idle keep-alive agent connections: tollgate, and nginx proxy_pass for comparison.
hold_idle() { # port path → "open ok rss_kib" for the pid(s) given after
    local port=$1 path=$2; shift 2
    local out="$WORK/idle.$port" pid
    python3 "$BENCH_DIR/idle_conns.py" 127.0.0.1 "$port" "$path" "$KEY" -n "$IDLE_CONNS" --hold 120 >"$out" 2>"$out.err" &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 600); do grep -q '^READY' "$out" && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    sleep 1
    local open ok rss=0 p established
    read -r _ open ok <<<"$(grep '^READY' "$out")"
    for p in "$@"; do rss=$((rss + $(vmrss_kib "$p"))); done
    established=$(ss -Htn state established "( sport = :$port )" | wc -l)
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    echo "${open:-0} ${ok:-0} $established $rss"
}
say "holding $IDLE_CONNS idle keep-alive connections to tollgate"
read -r open ok est rss <<<"$(hold_idle "$P_TG" /cloudflare/client/v4/zones "$TG_PID")"
record rss tollgate_idle_conns "$rss" "$open" "$ok" "$est"
say "holding $IDLE_CONNS idle keep-alive connections to nginx proxy_pass"
read -r open ok est rss <<<"$(hold_idle "$P_PROXY" /cloudflare/client/v4/zones $(children "$NGX_PROXY_PID"))"
record rss nginx_idle_conns "$rss" "$open" "$ok" "$est"
record rss tollgate_peak "$(awk '/^VmHWM/ {print $2}' "/proc/$TG_PID/status")"

# Audit check: every tollgate request is a durable decision row, and all of them were allowed.
record audit decisions "$(psql "$BENCH_DB_URL" -qAt -c "select count(*) from decisions")"
record audit not_allowed "$(psql "$BENCH_DB_URL" -qAt -c "select count(*) from decisions where outcome <> 'allow'")"
if [[ -n "$PGBENCH" ]]; then
    say "floor: one durable single-row decision commit and a bare round trip (pgbench, 5 s each)"
    record floor commit_ms "$(pgb "$WORK/probe_commit.sql")"
    record floor select_ms "$(pgb "$WORK/probe_select.sql")"
fi
record info pg_tls "$(psql "$ADMIN_DATABASE_URL" -qAt -c "select count(*) filter (where s.ssl) || ' of ' || count(*) from pg_stat_activity a join pg_stat_ssl s using (pid) where a.datname = '$BENCH_DB' and a.application_name <> 'floor_proxy'")"
record info load_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"
record info clk_tck "$(getconf CLK_TCK)"

python3 "$BENCH_DIR/summarize.py" "$RESULTS"
exit 0
