# The live-sync scenario (issue 16): crates/dbtool-sync/examples/bench.rs, which
# starts its own Postgres, writes the forums workload into a sample file and
# measures the capture triggers' cost (write rate with and without them), the apply
# rate, the lag at 1,000 writes/s (with the write rate reached) and the freeze of
# repeated cutovers at 1,000 writes/s; next to it, what a user would otherwise do:
# stop the app and `dbtool migrate` the file. Outside --quick the example also cuts
# over a copy of the benchmark file itself (--downtime-file), so its freeze stands
# next to an offline migrate of the same file (timed by the example and here with
# the dbtool binary). Sourced by scripts/bench.
# shellcheck shell=bash

bench_sync() {
    local args=(--changes 50000 --cutovers 20 --scale 0.2 --downtime-file "$BENCH_DB")
    # Quick: one cutover, a two-second lag window, a tiny file, no benchmark-size cutover.
    [ "$BENCH_QUICK" -eq 1 ] && args=(--changes 2000 --cutovers 1 --scale 0.01 --lag-secs 2)
    local sections=(sync-capture sync-apply sync-lag sync-cutover sync-downtime) s run log url
    for ((run = 1; run <= BENCH_RUNS; run++)); do
        say "sync: run $run of $BENCH_RUNS: crates/dbtool-sync/examples/bench.rs ${args[*]}"
        log="$BENCH_DIR/logs/sync-$run.log"
        if ! run_example "$log" dbtool-sync bench "${args[@]}"; then
            warn "sync run $run failed, see $log"
            for s in "${sections[@]}"; do
                record_missing "$s" "dbtool sync" "run $run failed: $(first_error "$log" || true)"
            done
            continue
        fi
        parse_sync_bench "$log" "${args[@]}" | record_lines "$run"
        grep -E '^(trigger cost|apply rate|lag at|freeze over|offline migrate|downtime on)' "$log" | sed 's/^/   /' >&2

        # The offline path on the benchmark file: the app is down for all of it.
        if [ -x "$DBTOOL" ]; then
            url=$(fresh_db bench_sync_offline)
            timed "$BENCH_DIR/logs/sync-offline-$run.log" "$DBTOOL" --quiet migrate --from "$BENCH_DB" --to "$url"
            if [ "$T_RC" -eq 0 ]; then
                record sync-downtime "stop the app, dbtool migrate (benchmark file)" downtime_s "$run" "$T_WALL" s
                printf '   offline migrate of %s: %.1f s\n' "$(basename "$BENCH_DB")" "$T_WALL" >&2
            else
                record_missing sync-downtime "stop the app, dbtool migrate (benchmark file)" "exit $T_RC"
            fi
            drop_db bench_sync_offline
        else
            record_missing sync-downtime "stop the app, dbtool migrate (benchmark file)" "dbtool did not build"
        fi
    done
}

# The example's lines, as records (see record_lines). A line that is not there is
# recorded as missing, so a changed message shows in the report, not as a silent gap.
parse_sync_bench() {
    python3 - "$@" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
out = []
def find(pattern, what, section, contender):
    m = re.search(pattern, text, re.M)
    if not m:
        out.append(("-", section, contender, f"no '{what}' line in the output"))
    return m
num = lambda s: s.replace(",", "")
m = find(r"^trigger cost: (?:median )?([\d.]+) writes/s without capture, ([\d.]+) with", "trigger cost", "sync-capture", "dbtool capture triggers")
if m:
    out.append(("sync-capture", "SQLite workload, no capture", "writes_per_s", m[1], "writes/s"))
    out.append(("sync-capture", "dbtool capture triggers", "writes_per_s", m[2], "writes/s"))
m = find(r"^apply rate: .* = ([\d.]+) changes/s", "apply rate", "sync-apply", "dbtool sync")
if m:
    out.append(("sync-apply", "dbtool sync", "changes_per_s", m[1], "changes/s"))
m = find(r"^lag at ([\d.]+) writes/s .*: p50 ([\d.]+) s, p99 ([\d.]+) s, max ([\d.]+) s", "lag", "sync-lag", "dbtool sync")
if m:
    c = "dbtool sync"
    out.append(("sync-lag", c, "writes_per_s", m[1], "writes/s"))
    for metric, v in (("p50_ms", m[2]), ("p99_ms", m[3]), ("max_ms", m[4])):
        out.append(("sync-lag", c, metric, f"{float(v) * 1000:.0f}", "ms"))
m = find(r"^freeze over (\d+) cutovers at .* \((\d+) aborted\): p50 ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+) ms", "freeze", "sync-cutover", "dbtool cutover")
if m:
    c = "dbtool cutover"
    if int(m[1]) == 0:
        out.append(("-", "sync-cutover", c, f"every cutover aborted ({m[2]})"))
    else:
        out.append(("sync-cutover", c, "cutovers", m[1], ""))
        out.append(("sync-cutover", c, "aborted", m[2], ""))
        for metric, v in (("p50_ms", m[3]), ("p99_ms", m[4]), ("max_ms", m[5])):
            out.append(("sync-cutover", c, metric, v, "ms"))
        out.append(("sync-downtime", "dbtool sync + cutover (p99 freeze)", "downtime_s", f"{float(m[4]) / 1000:.3f}", "s"))
if "--downtime-file" in sys.argv[2:]:
    m = find(r"^downtime on the benchmark file \(([\d.]+) MB\): live cutover froze the app's writes (\d+) ms .*; offline migrate ([\d.]+) s", "downtime on the benchmark file", "sync-downtime", "dbtool sync + cutover (benchmark file)")
    if m:
        out.append(("sync-downtime", "dbtool sync + cutover (benchmark file)", "downtime_s", f"{float(m[2]) / 1000:.3f}", "s"))
m = find(r"^offline migrate of the same file \(([\d.]+) MB\): ([\d.]+) s", "offline migrate", "sync-downtime", "stop the app, dbtool migrate (same file)")
if m:
    out.append(("sync-downtime", "stop the app, dbtool migrate (same file)", "downtime_s", m[2], "s"))
for o in out:
    print("\t".join(o))
PY
}
