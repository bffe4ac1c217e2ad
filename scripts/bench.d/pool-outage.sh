# The replica-outage scenario (issue 18, item 4): crates/dbtool-pool/examples/replica_outage.rs
# on its own primary + replica: 64 readers (20 ms queries) and 2 writers through an
# RwPool of 16 connections per host; write latency with the replica up, and with it
# down (every read falls back to the primary) without and with the write reserve.
# Sourced by scripts/bench.
# shellcheck shell=bash

bench_pool-outage() {
    local secs=10 run log
    [ "$BENCH_QUICK" -eq 1 ] && secs=1
    for ((run = 1; run <= BENCH_RUNS; run++)); do
        say "pool-outage: run $run of $BENCH_RUNS: crates/dbtool-pool/examples/replica_outage.rs ($secs s per phase)"
        log="$BENCH_DIR/logs/pool-outage-$run.log"
        if ! run_example "$log" dbtool-pool replica_outage "$secs"; then
            warn "pool-outage run $run failed, see $log"
            record_missing pool-outage "dbtool RwPool, replica up" "run $run failed: $(first_error "$log" || true)"
            continue
        fi
        parse_replica_outage "$log" "$secs" | record_lines "$run"
        sed -n '/^phase/,$p' "$log" | sed 's/^/   /' >&2
    done
}

# The example's table, as records (see record_lines); a missing phase is recorded as such.
parse_replica_outage() {
    python3 - "$1" "$2" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
secs = float(sys.argv[2])
for phase in ("replica up", "replica down, write_reserve = 0", "replica down, write_reserve = 4 (default)"):
    contender = f"dbtool RwPool, {phase}"
    m = re.search(r"^" + re.escape(phase) + r" +([\d.]+)ms +([\d.]+)ms +(\d+) +([\d.]+) +(\d+)\s*$", text, re.M)
    if not m:
        print("\t".join(("-", "pool-outage", contender, f"no '{phase}' row in the output")))
        continue
    print("\t".join(("pool-outage", contender, "p50_us", f"{float(m[1]) * 1000:.0f}", "µs")))
    print("\t".join(("pool-outage", contender, "p99_us", f"{float(m[2]) * 1000:.0f}", "µs")))
    print("\t".join(("pool-outage", contender, "writes_per_s", f"{int(m[3]) / secs:.0f}", "writes/s")))
    print("\t".join(("pool-outage", contender, "qps", f"{float(m[4]):.0f}", "queries/s")))
    print("\t".join(("pool-outage", contender, "errors", m[5], "")))
PY
}
