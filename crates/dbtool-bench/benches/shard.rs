//! Shard scenario (goals from issue 7): `Router::shard_of` nanoseconds
//! per call (both schemes), beside the two other ways a service routes (one
//! `Routing` snapshot for a batch; `Router::team`, which also counts the query
//! for the per-shard and hot-team metrics), and the overhead `Router::all` adds over the slowest
//! shard's own time when fanning a query out to 4 real shards (testkit servers),
//! next to a hand-written `join_all` over the same pools.
//!
//! ```text
//! cargo bench -p dbtool-bench --bench shard -- [--quick] [--runs N]
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use dbtool_bench::{Args, Record};
use dbtool_shard::{Options, Router, Scheme, ShardMap};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

fn pool(url: &str) -> Pool {
    let cfg: tokio_postgres::Config = url.parse().expect("a postgres URL");
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(4)
        .runtime(Runtime::Tokio1)
        .build()
        .expect("a deadpool")
}

const QUERY: &str = "SELECT count(*) FROM generate_series(1, 20000)";

async fn timed_query(p: &Pool) -> Result<Duration, String> {
    let s = Instant::now();
    let c = p.get().await.map_err(|e| e.to_string())?;
    c.simple_query(QUERY).await.map_err(|e| e.to_string())?;
    Ok(s.elapsed())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // shard_of: a fixed set of UUID team ids, cycled.
    let ids: Vec<String> = (0..1024u128)
        .map(|i| {
            uuid::Uuid::from_u128(
                0x6f1c_2a4e_9d7b_4c1e_8f3a_2b5d_7e9c_1a0f_u128.wrapping_mul(i + 1),
            )
            .to_string()
        })
        .collect();
    let calls: usize = if args.quick { 2_000_000 } else { 20_000_000 };
    let per_call = |calls: usize, f: &dyn Fn(&str)| {
        let s = Instant::now();
        for i in 0..calls {
            f(black_box(&ids[i & 1023]));
        }
        s.elapsed().as_nanos() as f64 / calls as f64
    };
    for run in 1..=args.runs {
        for (scheme, label) in [
            (Scheme::Buckets, "buckets"),
            (Scheme::Hex8Modulo, "hex8-modulo"),
        ] {
            let map = ShardMap::even_n(scheme, 4).expect("a map");
            let router = Router::new(
                map,
                (0..4).map(|i| (format!("shard-{i}"), i)),
                Options::default(),
            )
            .expect("a router");
            let routing = router.routing();
            let mut measured = vec![
                (
                    format!("dbtool shard_of ({label})"),
                    per_call(calls, &|id| {
                        black_box(router.shard_of(id).ok());
                    }),
                ),
                (
                    format!("dbtool Routing::shard_of ({label})"),
                    per_call(calls, &|id| {
                        black_box(routing.shard_of(id).ok());
                    }),
                ),
            ];
            // team() also feeds the hot-team counter: ten times slower, ten times fewer calls.
            if scheme == Scheme::Buckets {
                measured.push((
                    format!("dbtool Router::team ({label})"),
                    per_call(calls / 10, &|id| {
                        black_box(router.team(id).ok());
                    }),
                ));
            }
            for (name, ns) in measured {
                Record::value("shard", &name, "ns_per_call", run, ns, "ns").emit();
                eprintln!("   shard {name:<36} run {run}: {ns:.1} ns/call");
            }
        }
    }

    // Fan-out over 4 shards.
    let shards = match dbtool_testkit::Shards::start(4, 0).await {
        Ok(s) => s,
        Err(e) => {
            Record::missing(
                "shard-fanout",
                "dbtool Router::all",
                &format!("cannot start 4 shard servers: {e}"),
            )
            .emit();
            return;
        }
    };
    let urls: Vec<String> = shards
        .clusters()
        .iter()
        .map(|c| c.primary_url("postgres"))
        .collect();
    let pools: Vec<Pool> = urls.iter().map(|u| pool(u)).collect();
    let map = ShardMap::even_n(Scheme::Buckets, 4).expect("a map");
    let router = Router::new(
        map,
        pools
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("shard-{i}"), p.clone())),
        Options::default(),
    )
    .expect("a router");
    let iterations = if args.quick { 50 } else { 300 };
    // Warm every connection.
    for p in &pools {
        let _ = timed_query(p).await;
    }
    for run in 1..=args.runs {
        let (mut ours, mut naive) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            let s = Instant::now();
            let out = router
                .all(4, |shard| async move { timed_query(shard.pool).await })
                .await;
            let total = s.elapsed().as_secs_f64() * 1e6;
            let slowest = out
                .results
                .iter()
                .filter_map(|r| r.outcome.as_ref().ok())
                .map(|d| d.as_secs_f64() * 1e6)
                .fold(0.0, f64::max);
            ours.push(total - slowest);

            let s = Instant::now();
            let own = futures::future::join_all(pools.iter().map(timed_query)).await;
            let total = s.elapsed().as_secs_f64() * 1e6;
            let slowest = own
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|d| d.as_secs_f64() * 1e6)
                .fold(0.0, f64::max);
            naive.push(total - slowest);
        }
        let (o, n) = (median(&mut ours), median(&mut naive));
        Record::value(
            "shard-fanout",
            "dbtool Router::all",
            "overhead_us",
            run,
            o,
            "µs",
        )
        .emit();
        Record::value(
            "shard-fanout",
            "futures join_all",
            "overhead_us",
            run,
            n,
            "µs",
        )
        .emit();
        eprintln!("   shard-fanout run {run}: Router::all adds {o:.0} µs, join_all {n:.0} µs over the slowest shard (median of {iterations})");
    }
}
