# Runs one Rust scenario of crates/dbtool-bench (benches/<scenario>.rs) and appends
# its records to the results file. Sourced by scripts/bench for every scenario
# without a scripts/bench.d/<scenario>.sh of its own.
# shellcheck shell=bash

# Usage: run_rust_bench <scenario> <section...>  (the sections are marked missing on failure)
run_rust_bench() {
    local name=$1; shift
    local log="$BENCH_DIR/logs/$name.log" out="$BENCH_DIR/logs/$name.out"
    local args=(--runs "$BENCH_RUNS")
    [ "$BENCH_QUICK" -eq 1 ] && args+=(--quick)
    say "$name: building and running crates/dbtool-bench/benches/$name.rs (${args[*]})"
    set +e
    # --profile: quick runs reuse the dev build; full runs measure optimized code.
    (cd "$BENCH_REPO" && cargo bench --quiet --profile "$BENCH_CARGO_PROFILE" -p dbtool-bench \
        --bench "$name" -- "${args[@]}") >"$out" 2> >(tee "$log" | grep -E '^   |^[a-z-]+:' >&2)
    local rc=$?
    set -e
    grep -P '^RESULT\t' "$out" | cut -f2- >>"$BENCH_RESULTS" || true
    if [ $rc -ne 0 ]; then
        local why
        why=$(grep -m1 -iE 'error|panicked' "$log" | cut -c1-200)
        warn "$name benchmark failed (exit $rc), see $log"
        local s
        for s in "$@"; do
            grep -qP "^$s\t" "$BENCH_RESULTS" || record_missing "$s" "all" "benchmark failed: ${why:-exit $rc}"
        done
    fi
}
