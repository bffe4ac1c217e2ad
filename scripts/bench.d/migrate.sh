# The migrate sections: dbtool vs pgloader vs the COPY ceiling vs the physical floor,
# at the benchmark size (migrate) and at twice its rows (migrate-large). Sourced by
# scripts/bench.
# shellcheck shell=bash

# Tables of the sample, biggest first.
CEILING_TABLES="posts wiki_pages users topics forums teams settings"

# Sum of rows in the target's public tables named like the source's.
target_rows() {
    local url=$1 sql="" t
    for t in $CEILING_TABLES; do
        sql="$sql + (SELECT count(*) FROM public.\"$t\")"
    done
    psql -X -At "$url" -c "SELECT 0 $sql" 2>/dev/null || echo 0
}

# Probes whether `dbtool migrate` works: builds nothing, just runs it on a tiny file.
dbtool_migrate_works() {
    local out
    [ -x "$DBTOOL" ] || { DBTOOL_MISSING="the dbtool binary did not build"; return 1; }
    local url
    url=$(fresh_db bench_probe)
    if ! out=$("$DBTOOL" --quiet migrate --from "$BENCH_TINY_DB" --to "$url" 2>&1); then
        case $? in
            3) ;;  # completed with rejected rows: it works
            *) DBTOOL_MISSING="dbtool migrate failed on a tiny sample: $(printf '%s' "$out" | grep -m1 -i error | cut -c1-160)"
               drop_db bench_probe; return 1 ;;
        esac
    fi
    drop_db bench_probe
    return 0
}

# dbtool's data phase in seconds: from "loading rows" to "finishing" in its stamped
# progress lines (see scripts/bench.d/stamp); empty when the lines are not there.
dbtool_data_seconds() {
    awk '{ t = $0; sub(/^\[ */, "", t); t = t + 0 }
         /\] loading rows/ { s = t } /\] finishing/ { f = t }
         END { if (f > s && s > 0) printf "%.3f", f - s }' "$1"
}

# dbtool's finish phase (keys, indexes, foreign keys, ANALYZE): from "finishing" to
# the end of the run ($2, its wall time).
dbtool_finish_seconds() {
    awk -v w="$2" '{ t = $0; sub(/^\[ */, "", t); t = t + 0 }
         /\] finishing/ { f = t }
         END { if (f > 0 && w > f) printf "%.3f", w - f }' "$1"
}

# dbtool's planning phase (schema and value profiling), from the same lines.
dbtool_plan_seconds() {
    awk '{ t = $0; sub(/^\[ */, "", t); t = t + 0 }
         /\] planning/ { s = t } /\] creating the target/ { f = t }
         END { if (f > s) printf "%.3f", f - s }' "$1"
}

# Value of key=... in the floor's output line.
floor_value() { grep -o "$1=[^ ]*" "$2" | tail -n1 | cut -d= -f2; }

# One contender, one run, at one size. Records wall, rows/s, peak RSS, rows loaded;
# for the floor, its computed time and parts instead of the measuring run's own.
# Usage: migrate_one <section> <contender> <run> <db> <source_rows>
migrate_one() {
    local section=$1 who=$2 run=$3 db=$4 rows=$5
    local name="bench_${who}" url log load
    url=$(fresh_db "$name")
    log="$BENCH_DIR/logs/$section-$who-$run.log"
    load=$(load1)
    # Let the previous contender's writes settle so it is not billed to this one.
    psql -q -X "$BENCH_PG_URL/postgres" -c CHECKPOINT >/dev/null 2>&1 || true
    case $who in
        # Not --quiet: the plain progress lines carry the phase boundaries.
        dbtool) timed "$log" "$BENCH_LIB/stamp" "$DBTOOL" migrate --from "$db" --to "$url" \
                    --report "$BENCH_DIR/logs/$section-dbtool-$run.json" ;;
        pgloader) timed "$log" "$BENCH_LIB/pgloader-load" "$db" "$url" "$BENCH_DIR" ;;
        ceiling) timed "$log" "$BENCH_LIB/ceiling-load" "$db" "$url" ;;
        floor) timed "$log" "$BENCH_LIB/floor" measure "$url" "$FLOOR_DIR" ;;
    esac
    if [ "$T_RC" -ne 0 ] && ! { [ "$who" = dbtool ] && [ "$T_RC" -eq 3 ]; }; then
        warn "$section: $who run $run failed (exit $T_RC), see $log"
        record "$section" "$who" failed "$run" "$T_RC" exit "see $log"
        drop_db "$name"
        return 0
    fi
    local loaded wall=$T_WALL
    loaded=$(target_rows "$url")
    [ "$who" = floor ] && wall=$(floor_value floor_s "$log")
    record "$section" "$who" wall_s "$run" "$wall" s
    record "$section" "$who" rows_per_s "$run" "$(awk -v r="$rows" -v w="$wall" 'BEGIN { printf "%.0f", r / w }')" rows/s
    [ "$who" = floor ] || record "$section" "$who" peak_rss_mib "$run" "$T_RSS_MIB" MiB
    record "$section" "$who" rows_loaded "$run" "$loaded" rows
    local d detail=""
    case $who in
        ceiling) record "$section" "$who" data_s "$run" "$T_WALL" s ;;
        dbtool)
            d=$(dbtool_data_seconds "$log")
            [ -n "$d" ] && record "$section" "$who" data_s "$run" "$d" s
            d=$(dbtool_plan_seconds "$log")
            [ -n "$d" ] && record "$section" "$who" plan_s "$run" "$d" s
            d=$(dbtool_finish_seconds "$log" "$T_WALL")
            [ -n "$d" ] && { record "$section" "$who" finish_s "$run" "$d" s; detail="  (finish $d s)"; }
            record "$section" "$who" cpu_s "$run" "$T_CPU" s
            [ -n "$T_BUSY" ] && record "$section" "$who" busy_pct "$run" "$T_BUSY" %
            detail="$detail  (dbtool's own CPU $T_CPU s; the cores busy ${T_BUSY:-?}% of the run)"
            ;;
        floor)
            local m
            for m in copy_s steps_s critical_s work_s; do
                record "$section" "$who" "$m" "$run" "$(floor_value "$m" "$log")" s
            done
            detail=$(printf '  (binary COPY %s s summed, largest %s s; finish steps %s s summed; longest chain %s s; all steps / %s cores %s s)' \
                "$(floor_value copy_s "$log")" "$(floor_value largest "$log" | sed 's/.*://')" \
                "$(floor_value steps_s "$log")" "$(floor_value critical_s "$log")" "$(nproc)" "$(floor_value work_s "$log")")
            ;;
    esac
    printf '   %-9s run %d: %7.1f s  %8s rows/s  %7s MiB peak  %s/%s rows  (load %s)%s\n' \
        "$who" "$run" "$wall" "$(awk -v r="$rows" -v w="$wall" 'BEGIN { printf "%.0f", r / w }')" \
        "$([ "$who" = floor ] && echo - || printf '%.0f' "$T_RSS_MIB")" "$loaded" "$rows" "$load" "$detail" >&2
    drop_db "$name"
}

# The floor's input for one file: a target dbtool migrated (the same tables, keys,
# indexes and foreign keys), exported once as schema and binary COPY files into
# $FLOOR_DIR. Returns 1 (and says why) when that migration fails.
floor_export() {
    local db=$1 url
    FLOOR_DIR="$BENCH_DIR/floor"
    rm -rf "$FLOOR_DIR"
    url=$(fresh_db bench_floor_source)
    "$DBTOOL" --quiet migrate --from "$db" --to "$url" >"$BENCH_DIR/logs/floor-export.log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne 3 ]; then
        FLOOR_MISSING="the migration the floor is measured on failed (exit $rc, see $BENCH_DIR/logs/floor-export.log)"
        drop_db bench_floor_source
        return 1
    fi
    if ! "$BENCH_LIB/floor" export "$url" "$FLOOR_DIR" >>"$BENCH_DIR/logs/floor-export.log" 2>&1; then
        FLOOR_MISSING="exporting the migrated target failed (see $BENCH_DIR/logs/floor-export.log)"
        drop_db bench_floor_source
        return 1
    fi
    drop_db bench_floor_source
}

# The section's medians side by side: dbtool, the floor and pgloader, with the load.
migrate_summary() {
    python3 - "$1" "$BENCH_RESULTS" <<'PY' >&2
import statistics, sys
section, path = sys.argv[1], sys.argv[2]
walls, loads = {}, []
for line in open(path, encoding="utf-8"):
    f = line.rstrip("\n").split("\t")
    if len(f) > 6 and f[0] == section and f[2] == "wall_s":
        walls.setdefault(f[1], []).append(float(f[4]))
        loads.append(f[6])
med = {k: statistics.median(v) for k, v in walls.items()}
d = med.get("dbtool")
def s(v):
    return f"{v:.1f} s" if v >= 10 else f"{v:.2f} s"
parts = [f"dbtool {s(d)}" if d else "dbtool not measured"]
for who in ("floor", "pgloader", "ceiling"):
    if who in med:
        parts.append(f"{who} {s(med[who])}" + (f" (dbtool {d / med[who]:.2f}x)" if d else ""))
print(f"   {section} medians: " + ", ".join(parts) + f"; load {loads[0] if loads else '?'} to {loads[-1] if loads else '?'}")
# The floor leaves out the tool's own work (reading SQLite, encoding rows), which
# runs on the same cores. With dbtool's measured CPU added to the server's steps,
# max(longest chain, (server steps + dbtool CPU) / cores) is the least time a run
# doing dbtool's work could take on this machine.
import os
def medof(who, metric):
    v = [float(f[4]) for f in (l.rstrip("\n").split("\t") for l in open(path, encoding="utf-8"))
         if len(f) > 6 and f[0] == section and f[1] == who and f[2] == metric]
    return statistics.median(v) if v else None
cpu, crit, work = medof("dbtool", "cpu_s"), medof("floor", "critical_s"), medof("floor", "work_s")
if d and cpu is not None and crit is not None and work is not None:
    cores = os.cpu_count() or 1
    bound = max(crit, work + cpu / cores)
    print(f"   {section}: the floor with dbtool's own CPU ({cpu:.1f} s) on the same {cores} cores: "
          f"{s(bound)} (dbtool {d / bound:.2f}x)")
PY
}

# One size: every contender, alternating, $BENCH_RUNS times.
# Usage: migrate_size <section> <db> <rows>
migrate_size() {
    local section=$1 db=$2 rows=$3 run who
    local contenders=("${MIGRATE_CONTENDERS[@]}")
    cat "$db" >/dev/null   # same warm page cache for every contender
    if [ -x "$DBTOOL" ] && [ -z "${DBTOOL_MISSING:-}" ] && floor_export "$db"; then
        contenders+=(floor)
    else
        warn "$section: the floor is not measured: ${FLOOR_MISSING:-dbtool migrate does not work}"
        record_missing "$section" floor "${FLOOR_MISSING:-needs dbtool migrate: ${DBTOOL_MISSING:-not working}}"
    fi
    say "$section: ${contenders[*]} on $(basename "$db") ($rows rows, $(du -h "$db" | cut -f1)), $BENCH_RUNS runs each"
    for ((run = 1; run <= BENCH_RUNS; run++)); do
        for who in $(rotate "$run" "${contenders[@]}"); do
            migrate_one "$section" "$who" "$run" "$db" "$rows"
        done
    done
    rm -rf "$BENCH_DIR/floor"
    migrate_summary "$section"
}

# The scenario: the benchmark file, then the one with twice its rows.
bench_migrate() {
    MIGRATE_CONTENDERS=(dbtool pgloader ceiling)
    if ! dbtool_migrate_works; then
        warn "migrate: dbtool is not measured: $DBTOOL_MISSING"
        record_missing migrate dbtool "$DBTOOL_MISSING"
        record_missing migrate-large dbtool "$DBTOOL_MISSING"
        MIGRATE_CONTENDERS=(pgloader ceiling)
    fi
    migrate_size migrate "$BENCH_DB" "$BENCH_ROWS"
    migrate_size migrate-large "$BENCH_LARGE_DB" "$BENCH_LARGE_ROWS"
}
