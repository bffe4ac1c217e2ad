# The reverse-sync scenario (issue 17): crates/dbtool-sync/examples/reverse_bench.rs,
# which migrates a sample file into its own Postgres, cuts over, and measures the
# reverse apply rate (single-row Postgres transactions applied to the SQLite file)
# and the freeze of repeated rollbacks with the app writing 1,000 writes/s.
# Sourced by scripts/bench.
# shellcheck shell=bash

bench_reverse() {
    # Positional: changes, rollbacks, writes/s, sample scale.
    local args=(20000 20 1000 1)
    [ "$BENCH_QUICK" -eq 1 ] && args=(500 2 1000 0.01)
    local run log s
    for ((run = 1; run <= BENCH_RUNS; run++)); do
        say "reverse: run $run of $BENCH_RUNS: crates/dbtool-sync/examples/reverse_bench.rs ${args[*]}"
        log="$BENCH_DIR/logs/reverse-$run.log"
        if ! run_example "$log" dbtool-sync reverse_bench "${args[@]}"; then
            warn "reverse run $run failed, see $log"
            for s in reverse-apply reverse-rollback; do
                record_missing "$s" "dbtool reverse sync" "run $run failed: $(first_error "$log" || true)"
            done
            continue
        fi
        parse_reverse_bench "$log" | record_lines "$run"
        grep -E '^(reverse apply|slot retains|rollback freeze)' "$log" | sed 's/^/   /' >&2
    done
}

# The example's lines, as records (see record_lines); a missing line is recorded as such.
parse_reverse_bench() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
out = []
m = re.search(r"^reverse apply: (\d+) single-row transactions \((\d+) rows\) in [\d.]+ s = ([\d.]+) rows/s", text, re.M)
if m:
    # The printed rate (from the unrounded time), per row and per transaction.
    rate, txns, rows = float(m[3]), int(m[1]), int(m[2])
    c = "dbtool reverse sync"
    out.append(("reverse-apply", c, "changes_per_s", f"{rate * txns / rows:.0f}" if rows else "0", "changes/s"))
    out.append(("reverse-apply", c, "rows_per_s", m[3], "rows/s"))
else:
    out.append(("-", "reverse-apply", "dbtool reverse sync", "no 'reverse apply' line in the output"))
# Printed by newer versions of the example only: not recorded as missing when absent.
m = re.search(r"^slot retains [\d.]+ MB of WAL for \d+ unread changes \(([\d.]+) bytes per change\)", text, re.M)
if m:
    out.append(("reverse-apply", "dbtool reverse sync", "wal_per_change_b", m[1], "bytes"))
m = re.search(r"^rollback freeze at (\d+) writes/s .*: p50 (\d+) ms, p99 (\d+) ms, max (\d+) ms over (\d+) rollbacks \((\d+) aborted\)", text, re.M)
c = "dbtool rollback"
if not m:
    out.append(("-", "reverse-rollback", c, "no 'rollback freeze' line in the output"))
elif int(m[5]) == 0:
    out.append(("-", "reverse-rollback", c, f"every rollback aborted ({m[6]})"))
else:
    out.append(("reverse-rollback", c, "rollbacks", m[5], ""))
    out.append(("reverse-rollback", c, "aborted", m[6], ""))
    for metric, v in (("p50_ms", m[2]), ("p99_ms", m[3]), ("max_ms", m[4])):
        out.append(("reverse-rollback", c, metric, v, "ms"))
for o in out:
    print("\t".join(o))
PY
}
