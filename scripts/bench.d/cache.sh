# The cache section: GET/SET of 1 KB JSON through dbtool-cache, raw fred and
# redis-benchmark -P 16 on one 6-node cluster; L1 hits. Sourced by scripts/bench.
# shellcheck shell=bash
. "$BENCH_LIB/peers.sh"

bench_cache() {
    run_peer_bench cache cache-get cache-set cache-l1
}
