# The pool section: RwPool::read() vs bare deadpool-postgres vs pgbouncer (transaction
# mode), SELECT 1 and a point select, 32 tasks. Sourced by scripts/bench.
# shellcheck shell=bash
. "$BENCH_LIB/peers.sh"

bench_pool() {
    run_peer_bench pool pool-select1 pool-point
}
