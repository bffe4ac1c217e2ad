# Helpers for scripts/bench and its sections. Sourced, not run.
# shellcheck shell=bash

export PGOPTIONS="-c client_min_messages=warning"

# say, die, ensure_packages, pg_bin, as_pg and free_port are shared with
# scripts/demo and scripts/test.
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

warn() { printf 'warning: %s\n' "$*" >&2; }

# Starts a throwaway PostgreSQL for the benchmark under $1; sets BENCH_PG_PORT and
# BENCH_PG_URL. The settings are a bulk-load server's: durability off (fsync,
# full_page_writes, synchronous_commit) so that disk flushes shared with other
# users of the machine do not add noise; every contender loads into this same server.
start_bench_pg() {
    local dir=$1 bin port
    bin=$(pg_bin)
    rm -rf "$dir"
    mkdir -p "$dir/data"
    [ "$(id -u)" -eq 0 ] && chown -R postgres "$dir"
    as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
        || die "initdb failed, see $dir/initdb.log"
    port=$(free_port)
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp \
            -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
            -c shared_buffers=1GB -c maintenance_work_mem=512MB -c work_mem=64MB \
            -c max_wal_size=8GB -c checkpoint_timeout=30min -c max_connections=200 \
            -c autovacuum=off" \
        start >/dev/null || die "postgres did not start, see $dir/server.log"
    BENCH_PG_DIR=$dir
    BENCH_PG_PORT=$port
    BENCH_PG_URL="postgres://postgres@127.0.0.1:$port"
    export BENCH_PG_DIR BENCH_PG_PORT BENCH_PG_URL
}

stop_bench_pg() {
    [ -n "${BENCH_PG_DIR:-}" ] || return 0
    as_pg "$(pg_bin)/pg_ctl" -D "$BENCH_PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
}

# A fresh, empty database: prints its URL.
fresh_db() {
    local name=$1
    psql -q -X "$BENCH_PG_URL/postgres" -v ON_ERROR_STOP=1 \
        -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" -c "CREATE DATABASE \"$name\"" >/dev/null \
        || die "cannot create database $name on $BENCH_PG_URL"
    echo "$BENCH_PG_URL/$name"
}

drop_db() {
    psql -q -X "$BENCH_PG_URL/postgres" -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null 2>&1 || true
}

# The 1-minute load average, noted next to every run (the machine is shared).
load1() { cut -d' ' -f1 /proc/loadavg; }

# Runs a command under GNU time; sets T_WALL (s), T_RSS_MIB (peak resident set of the
# largest process in the tree), T_CPU (user + system seconds of the command and the
# children it waited for: not the database server's), T_BUSY (% of all cores' time
# the whole machine was busy meanwhile, from /proc/stat: the server's work included)
# and T_RC. Output goes to $2 (log file).
# Usage: timed <log> cmd args...
timed() {
    local log=$1; shift
    local tf s0 s1
    tf=$(mktemp)
    s0=$(head -n1 /proc/stat 2>/dev/null || true)
    set +e
    /usr/bin/time -v -o "$tf" "$@" >"$log" 2>&1
    T_RC=$?
    set -e
    s1=$(head -n1 /proc/stat 2>/dev/null || true)
    T_WALL=$(awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.3f", s }' "$tf")
    T_RSS_MIB=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$tf")
    T_CPU=$(awk -F': ' '/User time \(seconds\)|System time \(seconds\)/ { s += $2 } END { printf "%.2f", s }' "$tf")
    # cpu user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    T_BUSY=$(printf '%s\n%s\n' "$s0" "$s1" | awk '$1 == "cpu" {
        t = 0; for (i = 2; i <= 9; i++) t += $i; idle = $5 + $6
        if (NR == 1) { t0 = t; i0 = idle } else if (t > t0) printf "%.0f", 100 * (1 - (idle - i0) / (t - t0)) }')
    rm -f "$tf"
}

# Appends one measurement to the results file (tab-separated: section, contender,
# metric, run, value, unit, 1-minute load, note, UTC time).
# Usage: record <section> <contender> <metric> <run> <value> <unit> [note]
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$(load1)" "${7:-}" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$BENCH_RESULTS"
}

# Records that a contender could not be measured, with the reason (shown in the doc).
record_missing() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "-" "-" "-" "-" "$(load1)" "$3" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$BENCH_RESULTS"
}

# The order of contenders for run $1: rotated each run so that no contender always
# goes first (cold caches) or last (a checkpoint left by the others).
rotate() {
    local run=$1; shift
    local n=$# i
    local a=("$@")
    for ((i = 0; i < n; i++)); do
        echo "${a[$(((i + run - 1) % n))]}"
    done
}

# Runs a crate's example program (a benchmark its crate keeps next to its code: it
# starts its own servers through dbtool-testkit) with the run's cargo profile
# (optimized for full runs, the dev build for --quick). Its output goes to $1; the
# build's to $1.build. Fails with the build's or the run's exit code; the run is cut
# after BENCH_EXAMPLE_TIMEOUT seconds (default 1800) so that a hung program cannot
# stall the whole benchmark.
# Usage: run_example <log> <crate> <example> [args...]  (env: set it before the call)
run_example() {
    local log=$1 crate=$2 example=$3
    shift 3
    local opts=(--quiet --profile "$BENCH_CARGO_PROFILE" -p "$crate" --example "$example")
    if ! (cd "$BENCH_REPO" && cargo build "${opts[@]}") >"$log.build" 2>&1; then
        warn "$crate example $example did not build, see $log.build"
        return 1
    fi
    (cd "$BENCH_REPO" && timeout --kill-after=30 "${BENCH_EXAMPLE_TIMEOUT:-1800}" \
        cargo run "${opts[@]}" -- "$@") >"$log" 2>&1
}

# Reads the tab-separated lines `section contender metric value unit` from stdin and
# records each for run $1; a line `- section contender reason` records a missing one.
record_lines() {
    local run=$1 section contender metric value unit
    while IFS=$'\t' read -r section contender metric value unit; do
        if [ "$section" = - ]; then
            # Shifted by one: section, contender, reason.
            record_missing "$contender" "$metric" "$value"
        else
            record "$section" "$contender" "$metric" "$run" "$value" "$unit"
        fi
    done
}

# The first error line of a log, for a "not measured" note.
first_error() { grep -m1 -iE 'error|panicked|aborted' "$1" 2>/dev/null | cut -c1-200; }
