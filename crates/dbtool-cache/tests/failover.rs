//! Failure behaviour against dedicated Redis Clusters that the tests break
//! or reshape: a killed master, every node stopped, a manual failover, a
//! slot migrating between masters.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbtool_cache::{Cache, Config};
use dbtool_testkit::RedisCluster;
use fred::interfaces::ClusterInterface as _;

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
    // Keep reading and writing through the failover (each call is bounded
    // by the command timeout, so each pass is too).
    let mut rates = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        rates.push(pass(2 + rates.len()).await);
    }
    // The loop overlapped the outage: some pass missed some of the dead
    // master's keys, so the rest of this test is about a failover.
    assert!(
        rates.iter().any(|r| *r < 1.0),
        "no pass saw the outage: {rates:?}"
    );
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
    // One breaker per master: the other masters' keys kept hitting, so no
    // pass lost every key.
    assert_eq!(zero, 0, "a pass missed every key: {rates:?}");
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

    // Bounded by the configured command timeout, with room for a loaded
    // machine (4x), and far below the connect timeout (5 s) that waiting on
    // a reconnect would take.
    let bound = timeout * 4;
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
    // 4 attempts bounded by the timeout, plus 600 ms of backoff, doubled
    // for a loaded machine.
    let retry_bound = 2 * (4 * timeout + Duration::from_millis(600));
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

/// Issue 18, item 2: one failed master must cost only the keys in its own
/// slots. A kill -9 of one master of three, with a loop of `get_or_load`
/// over keys spread over every master: the other masters' keys keep hitting
/// (not waiting on the dead one), the dead master's keys are answered by
/// the loader with the database's value, and a `delete` of one of them
/// during the outage is kept until it lands, so no read after it returned,
/// and none after the failover, sees the old value.
#[tokio::test]
async fn a_killed_master_costs_only_its_own_keys_and_a_delete_during_the_outage_is_not_lost(
) -> anyhow::Result<()> {
    let r = RedisCluster::start().await?;
    let timeout = Duration::from_millis(250);
    let mut cfg = config(&r, timeout.as_millis() as u64);
    cfg.retry.retries = 1;
    let cache = Cache::connect(cfg).await?;
    let keys: Vec<String> = (0..150).map(|i| format!("k{i}")).collect();
    // The "database": the loader reads it.
    let db: Arc<std::sync::Mutex<Vec<String>>> =
        Arc::new(std::sync::Mutex::new((0..keys.len()).map(value).collect()));
    let loads = Arc::new(AtomicUsize::new(0));
    let read = |i: usize| {
        let (cache, db, loads, key) = (cache.clone(), db.clone(), loads.clone(), keys[i].clone());
        async move {
            let started = Instant::now();
            let v = cache
                .get_or_load(&key, Duration::from_secs(600), || async move {
                    loads.fetch_add(1, Ordering::Relaxed);
                    let v = db.lock().expect("db")[i].clone();
                    Ok::<_, std::io::Error>(Some(v))
                })
                .await
                .expect("the loader never fails, so no error may reach the caller");
            (v, started.elapsed())
        }
    };
    for i in 0..keys.len() {
        read(i).await;
    }
    // Let the replicas receive the values before their master dies.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let victim = r.masters()?[0];
    let victim_addr = r.nodes()[victim].clone();
    let victim_port: u16 = victim_addr.rsplit(':').next().unwrap_or("0").parse()?;
    let state = cache
        .redis()
        .cached_cluster_state()
        .expect("cluster state after connect");
    let on_victim = |k: &str| {
        let slot = fred::util::redis_keyslot(format!("fo:v:{k}").as_bytes());
        state.get_server(slot).map(|s| s.port) == Some(victim_port)
    };
    let (victim_keys, other_keys): (Vec<usize>, Vec<usize>) =
        (0..keys.len()).partition(|&i| on_victim(&keys[i]));
    assert!(!victim_keys.is_empty() && !other_keys.is_empty());
    let doomed_i = victim_keys[0];
    let doomed = keys[doomed_i].clone();

    r.kill_master(victim)?;
    // The database changes `doomed`; its invalidation runs into the outage,
    // while the loop below keeps reading.
    db.lock().expect("db")[doomed_i] = "value-new".into();
    let delete_done = Arc::new(AtomicBool::new(false));
    let delete = {
        let (cache, doomed, done) = (cache.clone(), doomed.clone(), delete_done.clone());
        tokio::spawn(async move {
            let r = cache.delete(&doomed).await;
            done.store(true, Ordering::Release);
            r
        })
    };
    let mut passes = 0;
    let mut outage_passes = 0;
    let mut after_delete_passes = 0;
    let (mut other_reads, mut other_hits) = (0usize, 0usize);
    let (mut victim_reads, mut victim_loaded) = (0usize, 0usize);
    let mut slowest_other = Duration::ZERO;
    let mut open_seen: Vec<String> = Vec::new();
    // Passes until the outage was seen and two passes ran after the delete
    // returned (bounded: at most 60 passes, each read bounded by the
    // command timeout and the loader).
    while (outage_passes == 0 || after_delete_passes < 2) && passes < 60 {
        passes += 1;
        let mut victim_missed = false;
        let deleted_before_pass = delete_done.load(Ordering::Acquire);
        let (mut v_reads, mut v_loaded) = (0, 0);
        for &i in &victim_keys {
            let returned = delete_done.load(Ordering::Acquire);
            let before = loads.load(Ordering::Relaxed);
            let (got, _) = read(i).await;
            let loaded = loads.load(Ordering::Relaxed) > before;
            if i == doomed_i {
                // Judged only for reads that began after the delete returned.
                if returned {
                    assert_eq!(
                        got.as_deref(),
                        Some("value-new"),
                        "the deleted key was served stale (pass {passes})"
                    );
                }
            } else {
                assert_eq!(got, Some(value(i)), "{}", keys[i]);
                v_reads += 1;
                if loaded {
                    v_loaded += 1;
                    victim_missed = true;
                }
            }
            for n in cache.open_breakers() {
                if !open_seen.contains(&n) {
                    open_seen.push(n);
                }
            }
        }
        let (mut hits, mut slowest) = (0, Duration::ZERO);
        for &i in &other_keys {
            let before = loads.load(Ordering::Relaxed);
            let (got, took) = read(i).await;
            assert_eq!(got, Some(value(i)), "{}", keys[i]);
            if loads.load(Ordering::Relaxed) == before {
                hits += 1;
            }
            slowest = slowest.max(took);
        }
        if victim_missed {
            outage_passes += 1;
            other_reads += other_keys.len();
            other_hits += hits;
            victim_reads += v_reads;
            victim_loaded += v_loaded;
            slowest_other = slowest_other.max(slowest);
        }
        if deleted_before_pass {
            after_delete_passes += 1;
        }
    }
    let deleted = delete.await?;
    eprintln!(
        "outage: delete {deleted:?}; {outage_passes} of {passes} passes missed the dead master's keys; \
         other keys hit {other_hits}/{other_reads}, slowest {slowest_other:?}; \
         dead master's keys loaded {victim_loaded}/{victim_reads}; open breakers seen {open_seen:?}; stats {:?}",
        cache.stats()
    );
    // The loop overlapped the outage.
    assert!(outage_passes > 0, "the dead master's keys never missed");
    assert!(after_delete_passes >= 2);
    // The other masters' keys kept hitting, each read answered within the
    // command timeout (waiting on the dead master, or on a client that
    // reconnects every node together, would take the whole timeout and miss).
    assert!(
        other_hits * 100 >= other_reads * 95,
        "other masters' keys hit {other_hits} of {other_reads} reads during the outage"
    );
    assert!(
        slowest_other < timeout,
        "a read of a live master's key took {slowest_other:?} (command timeout {timeout:?})"
    );
    // Only the dead master's breaker opened.
    assert!(
        open_seen
            .iter()
            .all(|n| n.ends_with(&format!(":{victim_port}"))),
        "breakers of live masters opened: {open_seen:?}"
    );
    // One retry only (below): the delete gives up long before the
    // promotion, so what follows is about an invalidation kept and retried.
    let err = deleted.expect_err("the delete ran into the outage");
    assert!(err.is_unavailable(), "{err}");

    // After the promotion the kept invalidation lands, and another process
    // (which never knew of it) does not get the old value either.
    r.wait_healthy().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache.pending_invalidations() > 0 {
        assert!(
            Instant::now() < deadline,
            "the delete never reached redis after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = Cache::connect(config(&r, 250)).await?;
    assert_eq!(other.get::<String>(&doomed).await, None);
    assert!(other.inspect(&doomed).await?.is_none());
    assert_eq!(read(doomed_i).await.0.as_deref(), Some("value-new"));
    // And every key is served again from Redis, with no breaker left open:
    // the promoted replica's slots are routed to it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut hits = 0;
        for (i, k) in keys.iter().enumerate() {
            let want = db.lock().expect("db")[i].clone();
            if other.get::<String>(k).await == Some(want.clone())
                && cache.get::<String>(k).await == Some(want)
            {
                hits += 1;
            }
        }
        if hits == keys.len() && !cache.breaker_open() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keys not served again after the failover ({hits} of {})",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// After a manual failover (`CLUSTER FAILOVER` on a replica) the old master
/// is alive and answers `MOVED` for the slots it gave away: the cache
/// retries those reads where the `MOVED` points and re-reads its slot
/// table at once, so the keys keep hitting without waiting for a periodic
/// refresh, and the promoted replica becomes one of the masters it routes to.
#[tokio::test]
async fn a_manual_failover_is_followed_through_moved_and_keys_keep_hitting() -> anyhow::Result<()> {
    let r = RedisCluster::start().await?;
    let cache = Cache::connect(config(&r, 250)).await?;
    let keys: Vec<String> = (0..150).map(|i| format!("k{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        cache.set(k, &value(i), Duration::from_secs(600)).await?;
    }
    // The replica must have the values before it takes over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = r.masters()?[0];
    let new = r.replicas_of(old)?[0];
    let new_addr = r.nodes()[new].clone();
    assert!(!cache.nodes().await?.iter().any(|n| n.node == new_addr));

    r.command(new, &["CLUSTER", "FAILOVER"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !r.masters()?.contains(&new) {
        assert!(
            Instant::now() < deadline,
            "the manual failover did not happen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Read every key for 2 s from the moment the roles switched: the cache's
    // table still names the old master, which is up and answers MOVED.
    let before = cache.stats();
    let started = Instant::now();
    let mut reads = 0usize;
    while started.elapsed() < Duration::from_secs(2) {
        for (i, k) in keys.iter().enumerate() {
            let v = cache
                .get_or_load(k, Duration::from_secs(600), || async move {
                    Ok::<_, std::io::Error>(Some(value(i)))
                })
                .await?;
            assert_eq!(v, Some(value(i)));
            reads += 1;
        }
    }
    let after = cache.stats();
    let hits = after.hits - before.hits;
    eprintln!(
        "manual failover: {hits} hits of {reads} reads in the 2 s after the switch; stats {after:?}"
    );
    // A MOVED answered as a failure would miss a third of the keys until
    // their breaker opened and the table was read again (94% hits in 3 s
    // measured that way; 100% as built).
    assert!(
        hits * 100 >= reads as u64 * 99,
        "{hits} hits of {reads} reads after the failover"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cache.nodes().await?.iter().any(|n| n.node == new_addr) {
        assert!(
            Instant::now() < deadline,
            "the promoted replica {new_addr} never became a routed master"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!cache.breaker_open());
    Ok(())
}

/// During a slot migration (`CLUSTER SETSLOT .. IMPORTING/MIGRATING`, then
/// `MIGRATE` of some of its keys) the source master answers `ASK` for the
/// keys it no longer holds: reads, fills and deletes of those keys follow
/// it to the target with no error, a delete made mid-migration leaves no
/// stale read, and once the slot is handed over its `MOVED` is followed.
#[tokio::test]
async fn ask_redirections_during_a_slot_migration_are_followed_with_no_error_and_no_stale_read(
) -> anyhow::Result<()> {
    let r = RedisCluster::start().await?;
    let cache = Cache::connect(config(&r, 1000)).await?;
    // One hash tag: every key in one slot.
    let keys: Vec<String> = (0..20).map(|i| format!("{{mig}}k{i}")).collect();
    let n = keys.len();
    let slot = fred::util::redis_keyslot(b"fo:v:{mig}k0");
    let nodes = r.nodes();
    let state = cache
        .redis()
        .cached_cluster_state()
        .expect("cluster state after connect");
    let owner = state.get_server(slot).expect("an owner").port;
    let masters = r.masters()?;
    let source = *masters
        .iter()
        .find(|&&i| nodes[i].ends_with(&format!(":{owner}")))
        .expect("the owner is a master");
    let target = *masters.iter().find(|&&i| i != source).expect("3 masters");
    let id = |i: usize| {
        r.command(i, &["CLUSTER", "MYID"])
            .map(|s| s.trim().to_owned())
    };
    let (source_id, target_id) = (id(source)?, id(target)?);
    let (host, port) = nodes[target].rsplit_once(':').expect("host:port");

    let db: Arc<std::sync::Mutex<Vec<String>>> =
        Arc::new(std::sync::Mutex::new((0..n + 1).map(value).collect()));
    let loads = Arc::new(AtomicUsize::new(0));
    let read = |i: usize, key: String| {
        let (cache, db, loads) = (cache.clone(), db.clone(), loads.clone());
        async move {
            cache
                .get_or_load(&key, Duration::from_secs(600), || async move {
                    loads.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, std::io::Error>(Some(db.lock().expect("db")[i].clone()))
                })
                .await
        }
    };
    for (i, k) in keys.iter().enumerate() {
        read(i, k.clone()).await?;
    }
    assert_eq!(loads.load(Ordering::Relaxed), n);

    let slot_arg = slot.to_string();
    r.command(
        target,
        &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &source_id],
    )?;
    r.command(
        source,
        &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &target_id],
    )?;
    let migrate = |range: std::ops::Range<usize>| -> anyhow::Result<()> {
        for k in &keys[range] {
            let reply = r.command(
                source,
                &[
                    "MIGRATE",
                    host,
                    port,
                    "",
                    "0",
                    "5000",
                    "KEYS",
                    &format!("fo:v:{k}"),
                ],
            )?;
            anyhow::ensure!(reply.trim() == "OK", "MIGRATE {k}: {reply}");
        }
        Ok(())
    };
    // Half of the keys move: the source answers ASK for them.
    migrate(0..n / 2)?;
    let before = cache.stats();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(read(i, k.clone()).await?, Some(value(i)), "{k}");
    }
    let read_stats = cache.stats();
    assert_eq!(
        loads.load(Ordering::Relaxed),
        n,
        "moved keys are hits: {read_stats:?}"
    );
    // Writes mid-migration, each followed by its delete: one moved key, one
    // not moved; and a key new to the slot (absent on both nodes).
    db.lock().expect("db")[0] = "new-0".into();
    cache.delete(&keys[0]).await?;
    db.lock().expect("db")[n - 1] = "new-last".into();
    cache.delete(&keys[n - 1]).await?;
    assert_eq!(read(0, keys[0].clone()).await?.as_deref(), Some("new-0"));
    assert_eq!(
        read(n - 1, keys[n - 1].clone()).await?.as_deref(),
        Some("new-last")
    );
    let fresh = "{mig}new".to_owned();
    assert_eq!(read(n, fresh.clone()).await?, Some(value(n)));
    assert_eq!(loads.load(Ordering::Relaxed), n + 3);
    let mid = cache.stats();
    assert_eq!(
        (
            mid.errors - before.errors,
            mid.breaker_skips - before.breaker_skips
        ),
        (0, 0),
        "no command failed while the slot migrated: {mid:?}"
    );

    // The rest moves and the slot is handed over: the source answers MOVED.
    migrate(n / 2..n)?;
    // The target first, then the source, then the others (the order the
    // Redis Cluster docs give, so no node bounces the slot back).
    let mut order = vec![target, source];
    order.extend(masters.iter().filter(|&&m| m != target && m != source));
    for m in order {
        r.command(m, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target_id])?;
    }
    let want = |i: usize| db.lock().expect("db")[i].clone();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(read(i, k.clone()).await?, Some(want(i)), "{k}");
    }
    assert_eq!(read(n, fresh).await?, Some(value(n)));
    assert_eq!(loads.load(Ordering::Relaxed), n + 3, "every key still hits");
    let after = cache.stats();
    assert_eq!(after.errors - before.errors, 0, "{after:?}");
    Ok(())
}
