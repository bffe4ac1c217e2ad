# The shard-move scenario (issue 19): crates/dbtool/tests/shard_move_bench.rs (an
# ignored test: it needs the dbtool binary and the testkit's shard servers). A
# sample is migrated offline onto four shards with `dbtool migrate --shards` (the
# baseline), a fifth shard is added online while writers insert to every team, then
# small moves of 20 buckets run at 1,000 writes/s: copy rate against the offline
# migrate, catch-up apply rate, per-move freeze, and the throughput of the teams
# that do not move, before, during and after the add. Sourced by scripts/bench.
# shellcheck shell=bash

bench_shard-move() {
    local scale=1 moves=20 run log
    [ "$BENCH_QUICK" -eq 1 ] && scale=0.01 moves=2
    local opts=(--quiet --profile "$BENCH_CARGO_PROFILE" -p dbtool --test shard_move_bench)
    local sections=(shard-move-copy shard-move-catchup shard-move-freeze shard-move-throughput) s
    for ((run = 1; run <= BENCH_RUNS; run++)); do
        say "shard-move: run $run of $BENCH_RUNS: crates/dbtool/tests/shard_move_bench.rs (scale $scale, $moves moves)"
        log="$BENCH_DIR/logs/shard-move-$run.log"
        if ! (cd "$BENCH_REPO" && cargo test "${opts[@]}" --no-run) >"$log.build" 2>&1 \
            || ! (cd "$BENCH_REPO" && SHARD_MOVE_BENCH_SCALE=$scale SHARD_MOVE_BENCH_MOVES=$moves \
                timeout --kill-after=30 "${BENCH_EXAMPLE_TIMEOUT:-1800}" \
                cargo test "${opts[@]}" -- --ignored --nocapture --exact shard_move_bench) >"$log" 2>&1; then
            warn "shard-move run $run failed, see $log"
            for s in "${sections[@]}"; do
                record_missing "$s" "dbtool shard move" "run $run failed: $( (first_error "$log" || first_error "$log.build") || true)"
            done
            continue
        fi
        parse_shard_move_bench "$log" | record_lines "$run"
        grep -E '^(offline sharded|online copy|catch-up|non-moving|freeze over|writes:)' "$log" | sed 's/^/   /' >&2
    done
}

# The test's lines, as records (see record_lines); a missing line is recorded as such.
parse_shard_move_bench() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
out = []
def find(pattern, what, section, contender):
    m = re.search(pattern, text, re.M)
    if not m:
        out.append(("-", section, contender, f"no '{what}' line in the output"))
    return m
m = find(r"^offline sharded migrate: \d+ rows in [\d.]+ s = ([\d.]+) rows/s", "offline sharded migrate",
         "shard-move-copy", "stop the app, dbtool migrate --shards (4 shards)")
if m:
    out.append(("shard-move-copy", "stop the app, dbtool migrate --shards (4 shards)", "rows_per_s", m[1], "rows/s"))
m = find(r"^online copy .*: \d+ rows in [\d.]+ s = ([\d.]+) rows/s", "online copy", "shard-move-copy", "dbtool shard move (copy, 4 -> 5 shards)")
if m:
    out.append(("shard-move-copy", "dbtool shard move (copy, 4 -> 5 shards)", "rows_per_s", m[1], "rows/s"))
m = find(r"^catch-up: \d+ changes in [\d.]+ s = ([\d.]+|NaN|inf) changes/s", "catch-up", "shard-move-catchup", "dbtool shard move (catch-up)")
if m:
    if m[1] in ("NaN", "inf"):
        out.append(("-", "shard-move-catchup", "dbtool shard move (catch-up)", "no change to catch up"))
    else:
        out.append(("shard-move-catchup", "dbtool shard move (catch-up)", "changes_per_s", m[1], "changes/s"))
m = find(r"^freeze over (\d+) moves of 20 buckets at ([\d.]+) writes/s: p50 (\d+) ms, p99 (\d+) ms, max (\d+) ms, (\d+) aborted",
         "freeze", "shard-move-freeze", "dbtool shard move (20 buckets)")
if m:
    c = "dbtool shard move (20 buckets)"
    out.append(("shard-move-freeze", c, "moves", m[1], ""))
    out.append(("shard-move-freeze", c, "aborted", m[6], ""))
    out.append(("shard-move-freeze", c, "writes_per_s", m[2], "writes/s"))
    for metric, v in (("p50_ms", m[3]), ("p99_ms", m[4]), ("max_ms", m[5])):
        out.append(("shard-move-freeze", c, metric, v, "ms"))
m = find(r"^non-moving teams, .*: ([\d.]+) writes/s before, ([\d.]+) during", "non-moving teams",
         "shard-move-throughput", "dbtool shard move: teams not moving, during the add")
if m:
    out.append(("shard-move-throughput", "teams not moving, before the add", "writes_per_s", m[1], "writes/s"))
    out.append(("shard-move-throughput", "dbtool shard move: teams not moving, during the add", "writes_per_s", m[2], "writes/s"))
    a = re.search(r"^non-moving teams, .* during the add \([\d.]+x\), ([\d.]+) after it", text, re.M)
    if a:
        out.append(("shard-move-throughput", "dbtool shard move: teams not moving, after the add (guards left)", "writes_per_s", a[1], "writes/s"))
for o in out:
    print("\t".join(o))
PY
}
