# The shard section: shard_of ns/call; Router::all overhead over 4 real shards.
# Sourced by scripts/bench.
# shellcheck shell=bash
. "$BENCH_LIB/peers.sh"

bench_shard() {
    run_peer_bench shard shard shard-fanout
}
