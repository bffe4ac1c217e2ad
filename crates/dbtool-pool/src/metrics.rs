//! Metric names, reported through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! Install a recorder (Prometheus exporter, ...) before building the pool:
//! the per-host histogram handles are taken once, when the pool is built.
//! Every metric carries `host` (`host:port`, never a password) unless noted.

/// Gauge: connections of this pool, labels `host`, `role` (`primary`,
/// `replica`, `unknown`) and `state` (`active`, `idle`, `waiting`). `waiting`
/// counts callers waiting for a connection. Updated every check interval.
pub const CONNECTIONS: &str = "dbtool_pool_connections";
/// Histogram (seconds): time to check out a connection, label `host`.
pub const CHECKOUT_WAIT: &str = "dbtool_pool_checkout_wait_seconds";
/// Histogram (seconds): duration of queries run through [`Conn`](crate::Conn)
/// and [`Transaction`](crate::Transaction), label `host`.
pub const QUERY_DURATION: &str = "dbtool_pool_query_duration_seconds";
/// Counter: replicas taken out of rotation, labels `host` and `reason`
/// (`lag`, `down`).
pub const EJECTIONS: &str = "dbtool_pool_ejections_total";
/// Counter: reads served by the primary, label `reason` (`no_replica`:
/// no healthy replica; `read_after`: no replica had replayed the token in time).
pub const FALLBACKS: &str = "dbtool_pool_fallbacks_total";
/// Counter: times the write target moved to another host, label `host` (the new primary).
pub const FAILOVERS: &str = "dbtool_pool_failovers_total";
/// Counter: timeouts, labels `host` and `kind` (`connect`, `checkout`, `query`).
pub const TIMEOUTS: &str = "dbtool_pool_timeouts_total";
/// Counter: failed health checks and failed connection attempts, label `host`.
pub const HOST_FAILURES: &str = "dbtool_pool_host_failures_total";
/// Gauge: 1 when the last check of the host succeeded, else 0, label `host`.
pub const HOST_UP: &str = "dbtool_pool_host_up";
/// Gauge: bytes of WAL a replica is behind the primary, label `host`.
pub const REPLICA_LAG_BYTES: &str = "dbtool_pool_replica_lag_bytes";
/// Gauge: seconds a replica's replay is behind, label `host`.
pub const REPLICA_LAG_SECONDS: &str = "dbtool_pool_replica_lag_seconds";

/// Gauge: 1 on each host that accepts writes while another host of the same
/// pool does too (a split brain), else 0, label `host`.
pub const SPLIT_BRAIN: &str = "dbtool_pool_split_brain";

/// Registers the descriptions of every metric above with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(CONNECTIONS, "connections by host, role and state");
    describe_histogram!(
        CHECKOUT_WAIT,
        Unit::Seconds,
        "time to check out a connection"
    );
    describe_histogram!(QUERY_DURATION, Unit::Seconds, "query duration");
    describe_counter!(EJECTIONS, "replicas taken out of rotation");
    describe_counter!(FALLBACKS, "reads served by the primary");
    describe_counter!(FAILOVERS, "write target moved to another host");
    describe_counter!(TIMEOUTS, "timeouts by kind");
    describe_counter!(HOST_FAILURES, "failed checks and connection attempts");
    describe_gauge!(HOST_UP, "1 when the last check of the host succeeded");
    describe_gauge!(
        REPLICA_LAG_BYTES,
        Unit::Bytes,
        "replica lag in bytes of WAL"
    );
    describe_gauge!(REPLICA_LAG_SECONDS, Unit::Seconds, "replica replay lag");
    describe_gauge!(
        SPLIT_BRAIN,
        "1 on each host accepting writes while another does too"
    );
}
