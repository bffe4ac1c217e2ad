# The cache-coherence scenario (issue 18): crates/dbtool-cache/examples/coherence.rs,
# the forums loop (writes on the primary then invalidation, cache-aside reads loading
# from a replica, 16 tasks) on its own primary + replica and 6-node Redis Cluster:
# throughput and stale reads of the old app's raw cache-aside on fred next to
# dbtool's Cache with fill leases only, with the full protection, and with the L1.
# Sourced by scripts/bench.
# shellcheck shell=bash

bench_coherence() {
    local secs=10 run log
    [ "$BENCH_QUICK" -eq 1 ] && secs=1
    for ((run = 1; run <= BENCH_RUNS; run++)); do
        say "coherence: run $run of $BENCH_RUNS: crates/dbtool-cache/examples/coherence.rs (SECS=$secs per variant)"
        log="$BENCH_DIR/logs/coherence-$run.log"
        if ! SECS=$secs CONCURRENCY=16 run_example "$log" dbtool-cache coherence; then
            warn "coherence run $run failed, see $log"
            record_missing cache-coherence "dbtool Cache, protected" "run $run failed: $(first_error "$log" || true)"
            continue
        fi
        parse_coherence "$log" | record_lines "$run"
        sed -n '/^variant/,$p' "$log" | sed 's/^/   /' >&2
    done
}

# The example's table, as records (see record_lines); a missing variant is recorded as such.
parse_coherence() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
names = {
    "raw": "fred cache-aside, no protection",
    "leases": "dbtool Cache, fill leases only",
    "protected": "dbtool Cache, protected",
    "protected+l1": "dbtool Cache, protected + L1",
}
for variant, contender in names.items():
    m = re.search(r"^" + re.escape(variant) + r" +([\d.]+) +(\d+) +(\d+) +(\d+)\s*$", text, re.M)
    if not m:
        print("\t".join(("-", "cache-coherence", contender, f"no '{variant}' row in the output")))
        continue
    print("\t".join(("cache-coherence", contender, "ops_per_s", m[1], "ops/s")))
    print("\t".join(("cache-coherence", contender, "stale_reads", m[4], "")))
PY
}
