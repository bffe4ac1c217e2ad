//! Cache-aside for a service: topics cached with tags, a stampede collapsed
//! to one query, a team-wide invalidation, and the counters.
//!
//! ```sh
//! # against your cluster (any node is a seed):
//! cargo run -p dbtool-cache --example cache_aside -- 127.0.0.1:7000
//! # or against a throwaway 6-node cluster started by the testkit:
//! cargo run -p dbtool-cache --example cache_aside
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dbtool_cache::{Cache, Config, Options};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Topic {
    id: i64,
    team_id: i64,
    title: String,
}

/// Stands in for `SELECT ... FROM topics WHERE id = $1`.
async fn db_topic(queries: &AtomicUsize, id: i64) -> Result<Option<Topic>, std::io::Error> {
    queries.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    Ok((id < 100).then(|| Topic {
        id,
        team_id: id % 3,
        title: format!("Topic {id}"),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut _cluster = None;
    let nodes: Vec<String> = match std::env::args().nth(1) {
        Some(n) => n.split(',').map(str::to_owned).collect(),
        None => {
            let c = dbtool_testkit::RedisCluster::start().await?;
            let nodes = c.nodes();
            _cluster = Some(c);
            nodes
        }
    };
    let mut config = Config::with_nodes(nodes);
    config.namespace = "example".into();
    config.l1.enabled = true;
    let cache = Cache::connect(config).await?;
    let queries = Arc::new(AtomicUsize::new(0));

    // 200 concurrent requests for a cold topic: one database query.
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (cache, queries) = (cache.clone(), queries.clone());
        tasks.push(tokio::spawn(async move {
            let opts = Options::ttl(Duration::from_secs(600)).tag("team:1");
            cache
                .get_or_load_with("topic:7", &opts, || db_topic(&queries, 7))
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "200 concurrent reads of a cold key -> {} query",
        queries.load(Ordering::SeqCst)
    );

    // A missing row is cached too (negative caching), briefly.
    for _ in 0..3 {
        let t = cache
            .get_or_load("topic:404", Duration::from_secs(600), || {
                db_topic(&queries, 404)
            })
            .await?;
        assert!(t.is_none());
    }
    println!(
        "3 reads of a missing topic -> {} queries in total so far",
        queries.load(Ordering::SeqCst)
    );

    // Everything of team 1 goes with one write, wherever its keys live.
    cache.invalidate_tag("team:1").await?;
    let again = cache.get::<Topic>("topic:7").await;
    println!(
        "after invalidate_tag(team:1): topic:7 cached? {}",
        again.is_some()
    );

    let s = cache.stats();
    println!(
        "hit rate {:.0}% ({} hits, {} misses), {} loads, {} redis errors, mean redis latency {:?}",
        s.hit_rate() * 100.0,
        s.hits,
        s.misses,
        s.loads,
        s.errors,
        s.mean_latency()
    );
    Ok(())
}
