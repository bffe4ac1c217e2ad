# The verify section: `dbtool verify` on the migrated benchmark file, its wall time
# against the migration's, and once with `--sample 10` (checksums of a tenth of the
# key ranges: what a quick check after a cutover costs). Sourced by scripts/bench.
# shellcheck shell=bash
. "$BENCH_LIB/migrate.sh"   # dbtool_migrate_works

bench_verify() {
    if ! dbtool_migrate_works 2>/dev/null; then
        record_missing verify dbtool "needs dbtool migrate: ${DBTOOL_MISSING:-not working}"
        warn "verify: skipped (dbtool migrate does not work yet)"
        return 0
    fi
    # The probe: verify on the tiny sample, after migrating it.
    local url out
    url=$(fresh_db bench_verify_probe)
    "$DBTOOL" --quiet migrate --from "$BENCH_TINY_DB" --to "$url" >/dev/null 2>&1 || true
    # Exit 1 (differences found) still means verify ran to the end: time it, and say so.
    out=$("$DBTOOL" verify --from "$BENCH_TINY_DB" --to "$url" 2>&1) || true
    if ! printf '%s' "$out" | grep -qE '^(EQUAL|DIFFERENT|equal|different)|DIFFERENT in|EQUAL in'; then
        record_missing verify dbtool "dbtool verify failed on a tiny sample: $(printf '%s' "$out" | grep -m1 -i error | cut -c1-160)"
        warn "verify: skipped (dbtool verify does not work yet)"
        drop_db bench_verify_probe
        return 0
    fi
    drop_db bench_verify_probe

    say "verify: migrating $(basename "$BENCH_DB") once, then verifying it $BENCH_RUNS times"
    url=$(fresh_db bench_verify)
    timed "$BENCH_DIR/logs/verify-migrate.log" "$DBTOOL" --quiet migrate --from "$BENCH_DB" --to "$url"
    if [ "$T_RC" -ne 0 ] && [ "$T_RC" -ne 3 ]; then
        record_missing verify dbtool "the migration before verify failed (exit $T_RC)"
        return 0
    fi
    record verify "dbtool migrate" wall_s 1 "$T_WALL" s
    record verify "dbtool migrate" peak_rss_mib 1 "$T_RSS_MIB" MiB
    local run note
    for ((run = 1; run <= BENCH_RUNS; run++)); do
        timed "$BENCH_DIR/logs/verify-$run.log" "$DBTOOL" verify --from "$BENCH_DB" --to "$url" \
            --report "$BENCH_DIR/logs/verify-$run.json"
        if [ "$T_RC" -eq 1 ]; then
            note=$(grep -m3 -E '^structure:|DIFFERENT' "$BENCH_DIR/logs/verify-$run.log" | tr '\n' ' ')
            record_missing verify "dbtool verify" "run $run exit 1 (differences found, timed anyway): $note"
        elif [ "$T_RC" -ne 0 ]; then
            record verify "dbtool verify" failed "$run" "$T_RC" exit "exit $T_RC: 2 = could not run"
            warn "verify run $run: exit $T_RC (see $BENCH_DIR/logs/verify-$run.log)"
            continue
        fi
        record verify "dbtool verify" wall_s "$run" "$T_WALL" s
        record verify "dbtool verify" rows_per_s "$run" "$(awk -v r="$BENCH_ROWS" -v w="$T_WALL" 'BEGIN { printf "%.0f", r / w }')" rows/s
        record verify "dbtool verify" peak_rss_mib "$run" "$T_RSS_MIB" MiB
        printf '   verify run %d: %.1f s, %.0f MiB peak (load %s)\n' "$run" "$T_WALL" "$T_RSS_MIB" "$(load1)" >&2
    done
    timed "$BENCH_DIR/logs/verify-sample.log" "$DBTOOL" verify --sample 10 --from "$BENCH_DB" --to "$url"
    if [ "$T_RC" -eq 0 ] || [ "$T_RC" -eq 1 ]; then
        record verify "dbtool verify --sample 10" wall_s 1 "$T_WALL" s
        record verify "dbtool verify --sample 10" peak_rss_mib 1 "$T_RSS_MIB" MiB
        printf '   verify --sample 10: %.1f s, %.0f MiB peak (load %s)\n' "$T_WALL" "$T_RSS_MIB" "$(load1)" >&2
    else
        record verify "dbtool verify --sample 10" failed 1 "$T_RC" exit "exit $T_RC: 2 = could not run"
    fi
    drop_db bench_verify
}
