# The migrate section: dbtool vs pgloader vs the COPY ceiling. Sourced by scripts/bench.
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

# dbtool's planning phase (schema and value profiling), from the same lines.
dbtool_plan_seconds() {
    awk '{ t = $0; sub(/^\[ */, "", t); t = t + 0 }
         /\] planning/ { s = t } /\] creating the target/ { f = t }
         END { if (f > s) printf "%.3f", f - s }' "$1"
}

# One contender, one run, at one size. Records wall, rows/s, peak RSS, rows loaded.
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
    esac
    if [ "$T_RC" -ne 0 ] && ! { [ "$who" = dbtool ] && [ "$T_RC" -eq 3 ]; }; then
        warn "$section: $who run $run failed (exit $T_RC), see $log"
        record "$section" "$who" failed "$run" "$T_RC" exit "see $log"
        drop_db "$name"
        return 0
    fi
    local loaded
    loaded=$(target_rows "$url")
    record "$section" "$who" wall_s "$run" "$T_WALL" s
    record "$section" "$who" rows_per_s "$run" "$(awk -v r="$rows" -v w="$T_WALL" 'BEGIN { printf "%.0f", r / w }')" rows/s
    record "$section" "$who" peak_rss_mib "$run" "$T_RSS_MIB" MiB
    record "$section" "$who" rows_loaded "$run" "$loaded" rows
    case $who in
        ceiling) record "$section" "$who" data_s "$run" "$T_WALL" s ;;
        dbtool)
            local d
            d=$(dbtool_data_seconds "$log")
            [ -n "$d" ] && record "$section" "$who" data_s "$run" "$d" s
            d=$(dbtool_plan_seconds "$log")
            [ -n "$d" ] && record "$section" "$who" plan_s "$run" "$d" s
            ;;
    esac
    printf '   %-9s run %d: %7.1f s  %8s rows/s  %7.0f MiB peak  %s/%s rows  (load %s)\n' \
        "$who" "$run" "$T_WALL" "$(awk -v r="$rows" -v w="$T_WALL" 'BEGIN { printf "%.0f", r / w }')" \
        "$T_RSS_MIB" "$loaded" "$rows" "$load" >&2
    drop_db "$name"
}

# The section: every contender, alternating, $BENCH_RUNS times, on the benchmark file;
# then one run of each at a quarter of the size, for peak memory at two sizes.
bench_migrate() {
    local contenders=(dbtool pgloader ceiling) run who
    if ! dbtool_migrate_works; then
        warn "migrate: dbtool is not measured: $DBTOOL_MISSING"
        record_missing migrate dbtool "$DBTOOL_MISSING"
        contenders=(pgloader ceiling)
    fi
    say "migrate: ${contenders[*]} on $(basename "$BENCH_DB") ($BENCH_ROWS rows, $(du -h "$BENCH_DB" | cut -f1)), $BENCH_RUNS runs each"
    for ((run = 1; run <= BENCH_RUNS; run++)); do
        for who in $(rotate "$run" "${contenders[@]}"); do
            migrate_one migrate "$who" "$run" "$BENCH_DB" "$BENCH_ROWS"
        done
    done
    say "migrate-small: ${contenders[*]} on $(basename "$BENCH_SMALL_DB") ($BENCH_SMALL_ROWS rows), 1 run each (peak memory at a second size)"
    for who in "${contenders[@]}"; do
        migrate_one migrate-small "$who" 1 "$BENCH_SMALL_DB" "$BENCH_SMALL_ROWS"
    done
}
