//! Failure behaviour against dedicated Redis Clusters that the tests break:
//! a killed master, and every node stopped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dbtool_cache::{Cache, Config};
use dbtool_testkit::RedisCluster;

fn config(r: &RedisCluster, timeout_ms: u64) -> Config {
    Config {
        nodes: r.nodes(),
        namespace: "fo".into(),
        command_timeout_ms: timeout_ms,
        stats_flush_secs: 0,
        ..Config::default()
    }
}

fn value(i: usize) -> String {
    format!("value-{i}")
}

#[tokio::test]
async fn killed_master_during_a_read_write_loop_never_errors_and_hit_rate_recovers(
) -> anyhow::Result<()> {
    let r = RedisCluster::start().await?;
    let cache = Cache::connect(config(&r, 250)).await?;
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    let loads = AtomicUsize::new(0);

    // One pass over the keys: get_or_load each (the loader is the "database"),
    // and rewrite every 10th with set. Returns the pass's hit rate.
    let pass = |round: usize| {
        let cache = &cache;
        let keys = &keys;
        let loads = &loads;
        async move {
            let before = cache.stats();
            for (i, k) in keys.iter().enumerate() {
                let v = cache
                    .get_or_load(k, Duration::from_secs(600), || async move {
                        loads.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, std::io::Error>(Some(value(i)))
                    })
                    .await
                    .expect("the loader never fails, so no error may reach the caller");
                assert_eq!(v, Some(value(i)));
                if (i + round) % 10 == 0 {
                    // set is fail-open: during the switch the value is
                    // simply not cached, and no error reaches the caller.
                    cache
                        .set(k, &value(i), Duration::from_secs(600))
                        .await
                        .expect("set is fail-open, so no error may reach the caller");
                }
            }
            let after = cache.stats();
            let hits = after.hits - before.hits;
            let misses = after.misses - before.misses;
            hits as f64 / (hits + misses) as f64
        }
    };

    pass(0).await; // warm
    assert!(pass(1).await > 0.99, "warm cache hits");

    let victim = r.masters()?[0];
    let started = Instant::now();
    r.kill_master(victim)?;
    // Keep reading and writing through the failover.
    let mut rates = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        let t = Instant::now();
        rates.push(pass(2 + rates.len()).await);
        // Each pass must finish: fail-open bounds every call by the timeout.
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "a pass took {:?}",
            t.elapsed()
        );
    }
    r.wait_healthy().await?;
    // After promotion the client follows the new topology: hits come back.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rate = 0.0;
    while Instant::now() < deadline {
        rate = pass(100).await;
        if rate > 0.99 {
            break;
        }
    }
    let zero = rates.iter().filter(|r| **r < 0.01).count();
    eprintln!(
        "failover: {} passes during the switch ({zero} all-miss), rate after {rate:.3}, stats {:?}",
        rates.len(),
        cache.stats()
    );
    assert!(rate > 0.99, "hit rate recovered after promotion: {rate}");
    assert!(!cache.breaker_open());
    Ok(())
}

#[tokio::test]
async fn all_nodes_stopped_every_call_answers_through_the_loader_within_the_timeout(
) -> anyhow::Result<()> {
    let r = RedisCluster::start().await?;
    let timeout = Duration::from_millis(200);
    let cache = Cache::connect(config(&r, timeout.as_millis() as u64)).await?;
    for i in 0..20 {
        cache
            .set(&format!("k{i}"), &value(i), Duration::from_secs(600))
            .await?;
    }
    assert_eq!(cache.get::<String>("k1").await, Some(value(1)));
    // A second instance with L1 on, filled before the outage.
    let mut l1_cfg = config(&r, timeout.as_millis() as u64);
    l1_cfg.l1.enabled = true;
    let l1_cache = Cache::connect(l1_cfg).await?;
    for i in 0..20 {
        assert_eq!(
            l1_cache.get::<String>(&format!("k{i}")).await,
            Some(value(i))
        );
    }
    assert_eq!(l1_cache.l1_len(), 20);

    r.stop_all()?;
    // Losing the connection flushes L1 (its invalidations may be lost), so
    // nothing is served from it while the cluster is gone.
    let deadline = Instant::now() + Duration::from_secs(2);
    while l1_cache.l1_len() > 0 {
        assert!(
            Instant::now() < deadline,
            "L1 not flushed after the cluster stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let l1_hits = l1_cache.stats().l1_hits;
    for i in 0..20 {
        assert_eq!(l1_cache.get::<String>(&format!("k{i}")).await, None);
    }
    assert_eq!(l1_cache.stats().l1_hits, l1_hits);

    // A margin for the loader, the scheduler and a busy CI machine, but far
    // below anything that would mean waiting on a reconnect.
    let bound = timeout + Duration::from_millis(300);
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        for i in 0..20 {
            let t = Instant::now();
            let v = cache
                .get_or_load(&format!("k{i}"), Duration::from_secs(600), || async move {
                    Ok::<_, std::io::Error>(Some(format!("db-{i}")))
                })
                .await?;
            let took = t.elapsed();
            slowest = slowest.max(took);
            assert_eq!(v, Some(format!("db-{i}")), "round {round}");
            assert!(took < bound, "get_or_load took {took:?} (bound {bound:?})");

            let t = Instant::now();
            assert_eq!(cache.get::<String>(&format!("k{i}")).await, None);
            assert!(t.elapsed() < bound, "get took {:?}", t.elapsed());

            // set is fail-open: not stored, counted, no error.
            let t = Instant::now();
            let failed = cache.stats().errors + cache.stats().breaker_skips;
            cache
                .set(&format!("k{i}"), &1, Duration::from_secs(1))
                .await?;
            assert!(t.elapsed() < bound, "set took {:?}", t.elapsed());
            let s = cache.stats();
            assert!(
                s.errors + s.breaker_skips > failed,
                "set failure not counted"
            );
        }
    }
    // delete and invalidate_tag are not fail-open: they retry with the
    // retry policy (3 retries, 100/200/300 ms apart), then name the key.
    let retry_bound = 4 * timeout + Duration::from_millis(600 + 500);
    let t = Instant::now();
    let err = cache.delete("k3").await.unwrap_err();
    assert!(t.elapsed() < retry_bound, "delete took {:?}", t.elapsed());
    assert!(err.is_unavailable(), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("cache delete of \"k3\" did not reach redis"),
        "{text}"
    );
    assert!(text.contains("(after 4 attempts)"), "{text}");
    let err = cache.invalidate_tag("team:7").await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cache invalidate tag of \"team:7\""),
        "{err}"
    );
    assert!(
        cache.breaker_open(),
        "the breaker stopped waiting on the dead cluster"
    );
    let s = cache.stats();
    assert!(s.breaker_skips > 0);
    eprintln!("all down: slowest call {slowest:?}, stats {s:?}");

    // When the cluster comes back, the reconnect policy brings the client back.
    r.start_all().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if cache.set("back", &1, Duration::from_secs(60)).await.is_ok()
            && cache.get::<i64>("back").await == Some(1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client did not come back after start_all"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A `set` not stored during the outage does not land once the
    // nodes are back. Each one wrote `1` (an integer, not these strings), so
    // a replayed write would show here. (This outage, with every node
    // stopped, did not reproduce the replay that the double timeout allowed:
    // the test passes with it too. It pins the contract, not that bug.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..20 {
        assert_eq!(
            cache.get::<i64>(&format!("k{i}")).await,
            None,
            "k{i}: a failed set landed after the outage"
        );
    }
    Ok(())
}
