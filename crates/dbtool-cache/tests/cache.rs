//! Behaviour of `Cache` against the shared 6-node Redis Cluster of the testkit.
//! Each test works in its own namespace (the testkit's per-test prefix).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbtool_cache::{Cache, Config, Options};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Topic {
    id: i64,
    title: String,
    tags: Vec<String>,
    pinned: bool,
}

fn topic(id: i64) -> Topic {
    Topic {
        id,
        title: format!("topic {id} ✓"),
        tags: vec!["a".into(), "b".into()],
        pinned: id % 2 == 0,
    }
}

async fn config() -> Config {
    let r = dbtool_testkit::redis().await;
    Config {
        nodes: r.nodes(),
        namespace: r.prefix().trim_end_matches(':').to_owned(),
        stats_flush_secs: 0,
        ..Config::default()
    }
}

fn io_err(msg: &str) -> std::io::Error {
    std::io::Error::other(msg.to_owned())
}

#[tokio::test]
async fn typed_values_round_trip() -> anyhow::Result<()> {
    let cache = Cache::connect(config().await).await?;
    let ttl = Duration::from_secs(60);
    cache.set("topic:1", &topic(1), ttl).await?;
    cache.set("count", &42_i64, ttl).await?;
    cache.set("names", &vec!["ann", "bob"], ttl).await?;
    cache.set("title", "plain str", ttl).await?;

    assert_eq!(cache.get::<Topic>("topic:1").await, Some(topic(1)));
    assert_eq!(cache.get::<i64>("count").await, Some(42));
    assert_eq!(
        cache.get::<Vec<String>>("names").await,
        Some(vec!["ann".to_owned(), "bob".to_owned()])
    );
    assert_eq!(
        cache.get::<String>("title").await,
        Some("plain str".to_owned())
    );
    assert_eq!(cache.get::<Topic>("absent").await, None);
    // The wrong type is a miss, counted as a decode failure (not silent).
    assert_eq!(cache.get::<Topic>("count").await, None);
    assert_eq!(cache.stats().decode_errors, 1);

    cache.delete("topic:1").await?;
    assert_eq!(cache.get::<Topic>("topic:1").await, None);

    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.errors, s.decode_errors), (4, 3, 0, 1));
    Ok(())
}

#[tokio::test]
async fn ttl_is_jittered_down_and_never_up() -> anyhow::Result<()> {
    let cache = Cache::connect(Config {
        jitter: 0.2,
        ..config().await
    })
    .await?;
    for i in 0..20 {
        cache
            .set(&format!("k{i}"), &i, Duration::from_secs(100))
            .await?;
    }
    let mut ttls = Vec::new();
    for i in 0..20 {
        let info = cache.inspect(&format!("k{i}")).await?.expect("present");
        assert!(info.valid);
        ttls.push(info.pttl_ms);
    }
    assert!(
        ttls.iter().all(|t| (79_000..=100_000).contains(t)),
        "{ttls:?}"
    );
    let distinct: std::collections::BTreeSet<_> = ttls.iter().map(|t| t / 1000).collect();
    assert!(distinct.len() > 3, "ttls are spread: {ttls:?}");
    Ok(())
}

#[tokio::test]
async fn get_many_reads_keys_on_many_slots_in_order() -> anyhow::Result<()> {
    let cache = Cache::connect(config().await).await?;
    let keys: Vec<String> = (0..50).map(|i| format!("topic:{i}")).collect();
    for i in (0..50).filter(|i| i % 3 != 0) {
        cache
            .set(&keys[i as usize], &topic(i), Duration::from_secs(60))
            .await?;
    }
    let slots: std::collections::BTreeSet<u16> = keys
        .iter()
        .map(|k| {
            fred::util::redis_keyslot(format!("{}:v:{k}", cache.config().namespace).as_bytes())
        })
        .collect();
    assert!(slots.len() > 10, "keys spread over slots");

    let got: Vec<Option<Topic>> = cache.get_many(&keys).await;
    let want: Vec<Option<Topic>> = (0..50).map(|i| (i % 3 != 0).then(|| topic(i))).collect();
    assert_eq!(got, want);
    assert_eq!(cache.stats().errors, 0, "no CROSSSLOT or other errors");
    Ok(())
}

#[tokio::test]
async fn concurrent_get_or_load_on_a_cold_key_runs_the_loader_once() -> anyhow::Result<()> {
    let cache = Cache::connect(config().await).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let cache = cache.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("cold", Duration::from_secs(60), || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::io::Error>(Some(topic(7)))
                })
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await??, Some(topic(7)));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // And it is in Redis for the next process.
    assert_eq!(cache.get::<Topic>("cold").await, Some(topic(7)));
    Ok(())
}

#[tokio::test]
async fn cross_process_lock_lets_one_instance_load_a_cold_key() -> anyhow::Result<()> {
    let cfg = Config {
        lock_ms: 3000,
        ..config().await
    };
    // Three instances with their own connections and single-flight maps,
    // standing in for three processes.
    let instances = [
        Cache::connect(cfg.clone()).await?,
        Cache::connect(cfg.clone()).await?,
        Cache::connect(cfg).await?,
    ];
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for cache in instances.iter() {
        for _ in 0..20 {
            let cache = cache.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load("deploy-cold", Duration::from_secs(60), || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, std::io::Error>(Some(1_i64))
                    })
                    .await
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await??, Some(1));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn negative_results_are_cached_for_the_negative_ttl() -> anyhow::Result<()> {
    let cache = Cache::connect(Config {
        negative_ttl_secs: 1,
        jitter: 0.0,
        ..config().await
    })
    .await?;
    let calls = AtomicUsize::new(0);
    let load = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<Option<Topic>, std::io::Error>(None)
    };
    assert_eq!(
        cache
            .get_or_load("user:404", Duration::from_secs(60), load)
            .await?,
        None
    );
    assert_eq!(
        cache
            .get_or_load("user:404", Duration::from_secs(60), load)
            .await?,
        None
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the second call hit the negative entry"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        cache
            .get_or_load("user:404", Duration::from_secs(60), load)
            .await?,
        None
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "expired after negative_ttl_secs"
    );
    Ok(())
}

#[tokio::test]
async fn loader_failure_serves_a_recently_expired_value() -> anyhow::Result<()> {
    let cache = Cache::connect(Config {
        stale_ttl_secs: 60,
        jitter: 0.0,
        early_refresh_beta: 0.0,
        ..config().await
    })
    .await?;
    let ttl = Duration::from_millis(300);
    let v = cache
        .get_or_load("page", ttl, || async {
            Ok::<_, std::io::Error>(Some(topic(1)))
        })
        .await?;
    assert_eq!(v, Some(topic(1)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Expired: a plain get misses...
    assert_eq!(cache.get::<Topic>("page").await, None);
    // ...but a failing loader is answered by the stale value.
    let v = cache
        .get_or_load("page", ttl, || async {
            Err::<Option<Topic>, _>(io_err("db down"))
        })
        .await?;
    assert_eq!(v, Some(topic(1)));
    assert_eq!(cache.stats().stale_served, 1);
    // Without a stale value the loader's error is returned.
    let err = cache
        .get_or_load("never", ttl, || async {
            Err::<Option<Topic>, _>(io_err("db down"))
        })
        .await
        .unwrap_err();
    assert!(err.is_loader(), "{err}");
    assert!(err.to_string().contains("db down"), "{err}");
    Ok(())
}

#[tokio::test]
async fn early_refresh_reloads_before_expiry_while_the_value_is_fresh() -> anyhow::Result<()> {
    // XFetch fires when -delta * beta * ln(rand) >= time left. With delta
    // >= 20 ms, beta 1e12 and 600 s left it misses only when rand >
    // exp(-3e-8), a 3e-8 chance. (beta 1e6 missed 3% of the time.)
    let cache = Cache::connect(Config {
        early_refresh_beta: 1e12,
        jitter: 0.0,
        ..config().await
    })
    .await?;
    let calls = AtomicUsize::new(0);
    let load = || async {
        let n = calls.fetch_add(1, Ordering::SeqCst) as i64;
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::io::Error>(Some(n))
    };
    assert_eq!(
        cache
            .get_or_load("hot", Duration::from_secs(600), load)
            .await?,
        Some(0)
    );
    assert_eq!(
        cache
            .get_or_load("hot", Duration::from_secs(600), load)
            .await?,
        Some(1)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.loads), (1, 1, 2));

    // With the default beta a fresh value an hour from expiry is never refreshed.
    let calm = Cache::connect(Config {
        namespace: format!("{}-calm", cache.config().namespace),
        early_refresh_beta: 1.0,
        ..cache.config().clone()
    })
    .await?;
    let calls = AtomicUsize::new(0);
    let load = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::io::Error>(Some(1_i64))
    };
    for _ in 0..20 {
        calm.get_or_load("hot", Duration::from_secs(3600), load)
            .await?;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn tag_invalidation_clears_exactly_the_tagged_keys_across_slots() -> anyhow::Result<()> {
    let cache = Cache::connect(config().await).await?;
    let ttl = Duration::from_secs(60);
    // 40 keys: even ids tagged team:1, odd ids team:2; every 5th also topic:x.
    for i in 0..40_i64 {
        let team = if i % 2 == 0 { "team:1" } else { "team:2" };
        let mut opts = Options::ttl(ttl).tag(team);
        if i % 5 == 0 {
            opts = opts.tag("topic:x");
        }
        if i < 20 {
            cache
                .set_with(&format!("post:{i}"), &topic(i), &opts)
                .await?;
        } else {
            let got = cache
                .get_or_load_with(&format!("post:{i}"), &opts, || async move {
                    Ok::<_, std::io::Error>(Some(topic(i)))
                })
                .await?;
            assert_eq!(got, Some(topic(i)));
        }
    }
    let keys: Vec<String> = (0..40).map(|i| format!("post:{i}")).collect();
    assert!(cache
        .get_many::<Topic, _>(&keys)
        .await
        .iter()
        .all(Option::is_some));

    cache.invalidate_tag("team:1").await?;
    let got: Vec<Option<Topic>> = cache.get_many(&keys).await;
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v.is_some(), i % 2 == 1, "post:{i}");
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            cache.get::<Topic>(key).await.is_some(),
            i % 2 == 1,
            "get post:{i}"
        );
    }

    cache.invalidate_tag("topic:x").await?;
    for (i, key) in keys.iter().enumerate() {
        let alive = i % 2 == 1 && i % 5 != 0;
        assert_eq!(cache.get::<Topic>(key).await.is_some(), alive, "post:{i}");
    }

    // A reload after invalidation is cached again under the new version.
    let calls = AtomicUsize::new(0);
    let opts = Options::ttl(ttl).tag("team:1");
    for _ in 0..2 {
        cache
            .get_or_load_with("post:0", &opts, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(Some(topic(100)))
            })
            .await?;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get::<Topic>("post:0").await, Some(topic(100)));
    assert_eq!(cache.stats().errors, 0);
    Ok(())
}

#[tokio::test]
async fn l1_is_invalidated_by_another_instance() -> anyhow::Result<()> {
    let mut cfg = config().await;
    cfg.l1.enabled = true;
    // `a` and `b` have their own connections, L1s and instance ids: two
    // processes as far as Redis and the invalidation channel can tell.
    let a = Cache::connect(cfg.clone()).await?;
    let b = Cache::connect(cfg).await?;
    let ttl = Duration::from_secs(60);

    b.set("profile:1", &topic(1), ttl).await?;
    assert_eq!(a.get::<Topic>("profile:1").await, Some(topic(1)));
    // b's set also published an invalidation. When it reaches `a` while a's
    // first read is in flight, the epoch guard rightly keeps that value out of
    // L1, so read until one read is served from L1 (3 s at most).
    wait_until(|| async {
        a.get::<Topic>("profile:1").await == Some(topic(1)) && a.stats().l1_hits >= 1
    })
    .await;

    // An update in b reaches a's L1.
    b.set("profile:1", &topic(2), ttl).await?;
    wait_until(|| async { a.get::<Topic>("profile:1").await == Some(topic(2)) }).await;

    // A delete in b too.
    b.delete("profile:1").await?;
    wait_until(|| async { a.get::<Topic>("profile:1").await.is_none() }).await;

    // And a tag invalidation.
    let opts = Options::ttl(ttl).tag("team:5");
    a.get_or_load_with("profile:2", &opts, || async {
        Ok::<_, std::io::Error>(Some(topic(3)))
    })
    .await?;
    assert_eq!(a.get::<Topic>("profile:2").await, Some(topic(3)));
    let l1_before = a.stats().l1_hits;
    assert!(l1_before >= 1);
    b.invalidate_tag("team:5").await?;
    wait_until(|| async { a.get::<Topic>("profile:2").await.is_none() }).await;
    Ok(())
}

/// Env var that turns [`child_writer`] into the second process of
/// [`l1_is_invalidated_by_another_process`]: `set <key> <topic id>`,
/// `delete <key>` or `invalidate_tag <tag>`.
const CHILD_OP: &str = "DBTOOL_CACHE_TEST_CHILD_OP";
/// The cluster's nodes (`host:port,...`) and the namespace, for the child:
/// it must not call `dbtool_testkit::redis()`, which would start a cluster of
/// its own.
const CHILD_NODES: &str = "DBTOOL_CACHE_TEST_CHILD_NODES";
const CHILD_NAMESPACE: &str = "DBTOOL_CACHE_TEST_CHILD_NAMESPACE";

/// The second OS process of `l1_is_invalidated_by_another_process`: connects
/// its own `Cache` (no L1: a plain writer, like another service), does one
/// write, and exits. Without `DBTOOL_CACHE_TEST_CHILD_OP` it does nothing.
#[tokio::test]
#[ignore = "child process of l1_is_invalidated_by_another_process"]
async fn child_writer() -> anyhow::Result<()> {
    let Ok(op) = std::env::var(CHILD_OP) else {
        return Ok(());
    };
    let cfg = Config {
        nodes: std::env::var(CHILD_NODES)?
            .split(',')
            .map(str::to_owned)
            .collect(),
        namespace: std::env::var(CHILD_NAMESPACE)?,
        stats_flush_secs: 0,
        ..Config::default()
    };
    let cache = Cache::connect(cfg).await?;
    match op.split(' ').collect::<Vec<_>>()[..] {
        ["set", key, id] => {
            cache
                .set(key, &topic(id.parse()?), Duration::from_secs(60))
                .await?
        }
        ["delete", key] => cache.delete(key).await?,
        ["invalidate_tag", tag] => cache.invalidate_tag(tag).await?,
        _ => anyhow::bail!("{CHILD_OP}: unknown operation {op:?}"),
    }
    // Redis answered every command: a publish that failed would be swallowed
    // (fail-open), so make that visible to the parent.
    anyhow::ensure!(cache.stats().errors == 0, "child: {:?}", cache.stats());
    Ok(())
}

/// Runs `child_writer` in a new process of this test binary and waits for
/// it to exit with success.
async fn run_child(nodes: &[String], namespace: &str, op: &str) {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", "child_writer", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_OP, op)
        .env(CHILD_NODES, nodes.join(","))
        .env(CHILD_NAMESPACE, namespace);
    // Blocking wait off the runtime, so the parent's subscriber keeps reading.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("wait for the child")
        .expect("start the child test process");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "child `{op}` failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads `key` until one read is an L1 hit with `want`: the parent then holds
/// `want` in its L1 (an invalidation arriving during the first read keeps
/// that read's value out of L1, hence the loop).
async fn hold_in_l1(cache: &Cache, key: &str, want: &Topic) {
    wait_until(|| async {
        let before = cache.stats().l1_hits;
        cache.get::<Topic>(key).await.as_ref() == Some(want) && cache.stats().l1_hits == before + 1
    })
    .await;
}

/// Polls `cond` for up to 2 s and returns how long it took.
async fn within_2s<F, Fut>(what: &str, cond: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{what}: not seen within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

// Issue 8: "L1 invalidated in a second process". The writer is a real second
// OS process (this test binary re-executed as `child_writer`), with its own
// connections and instance id. The L1 keeps entries for 30 s
// (`l1.ttl_secs`) and the values live 60 s, so seeing the new value within
// 2 s can only come from the invalidation message.
#[tokio::test]
async fn l1_is_invalidated_by_another_process() -> anyhow::Result<()> {
    let mut cfg = config().await;
    cfg.l1.enabled = true;
    assert_eq!(cfg.l1.ttl_secs, 30);
    let (nodes, ns) = (cfg.nodes.clone(), cfg.namespace.clone());
    let cache = Cache::connect(cfg).await?;
    let ttl = Duration::from_secs(60);

    // An update in the child reaches the parent's L1.
    cache.set("profile:1", &topic(1), ttl).await?;
    hold_in_l1(&cache, "profile:1", &topic(1)).await;
    run_child(&nodes, &ns, "set profile:1 2").await;
    let set = within_2s("child's set", || async {
        cache.get::<Topic>("profile:1").await == Some(topic(2))
    })
    .await;

    // A delete too.
    hold_in_l1(&cache, "profile:1", &topic(2)).await;
    run_child(&nodes, &ns, "delete profile:1").await;
    let delete = within_2s("child's delete", || async {
        cache.get::<Topic>("profile:1").await.is_none()
    })
    .await;

    // And a tag invalidation, of exactly the tagged key. (An L1 entry read
    // by plain `get` has unknown tags and is dropped by any tag message, so
    // the other key is loaded with its own tag.)
    for (key, tag, value) in [("profile:2", "team:5", 3), ("profile:3", "team:6", 4)] {
        let loaded = cache
            .get_or_load_with(key, &Options::ttl(ttl).tag(tag), || async {
                Ok::<_, std::io::Error>(Some(topic(value)))
            })
            .await?;
        assert_eq!(loaded, Some(topic(value)));
    }
    hold_in_l1(&cache, "profile:2", &topic(3)).await;
    hold_in_l1(&cache, "profile:3", &topic(4)).await;
    run_child(&nodes, &ns, "invalidate_tag team:5").await;
    let tag = within_2s("child's invalidate_tag", || async {
        cache.get::<Topic>("profile:2").await.is_none()
    })
    .await;
    let l1_hits = cache.stats().l1_hits;
    assert_eq!(cache.get::<Topic>("profile:3").await, Some(topic(4)));
    assert_eq!(
        cache.stats().l1_hits,
        l1_hits + 1,
        "team:5 message dropped profile:3 (tagged team:6) from L1"
    );

    eprintln!("seen after the child exited: set {set:?}, delete {delete:?}, tag {tag:?}");
    assert_eq!(cache.stats().errors, 0);
    Ok(())
}

// L1 keeps an entry until its own expiry in Redis, not for the whole
// `l1.ttl_secs` (30 s): a value cached for 1.5 s is not served after 1.5 s.
#[tokio::test]
async fn l1_never_serves_an_entry_past_its_ttl() -> anyhow::Result<()> {
    let mut cfg = config().await;
    cfg.l1.enabled = true;
    cfg.jitter = 0.0;
    let cache = Cache::connect(cfg).await?;
    // Long enough for the reads below on a loaded CI machine.
    let ttl = Duration::from_millis(1500);
    let written = Instant::now();
    cache.set("short", &topic(1), ttl).await?;
    let opts = Options::ttl(ttl);
    let loaded = cache
        .get_or_load_with("loaded", &opts, || async {
            Ok::<_, std::io::Error>(Some(topic(2)))
        })
        .await?;
    // Its entry was written just before get_or_load returned.
    let loaded_at = Instant::now();
    assert_eq!(loaded, Some(topic(2)));
    assert_eq!(cache.get::<Topic>("short").await, Some(topic(1)));
    // Both are in L1 now: the second reads are L1 hits.
    let l1_hits = cache.stats().l1_hits;
    assert_eq!(cache.get::<Topic>("short").await, Some(topic(1)));
    assert_eq!(cache.get::<Topic>("loaded").await, Some(topic(2)));
    assert_eq!(cache.stats().l1_hits, l1_hits + 2);

    assert!(written.elapsed() < ttl, "the reads above took too long");
    tokio::time::sleep_until((loaded_at + ttl + Duration::from_millis(100)).into()).await;
    assert_eq!(cache.get::<Topic>("short").await, None);
    assert_eq!(cache.get::<Topic>("loaded").await, None);
    assert_eq!(cache.stats().l1_hits, l1_hits + 2, "no L1 hit after expiry");
    Ok(())
}

#[tokio::test]
async fn get_arc_hands_out_the_l1_value_without_copying_it() -> anyhow::Result<()> {
    let mut cfg = config().await;
    cfg.l1.enabled = true;
    let cache = Cache::connect(cfg).await?;
    cache.set("t", &topic(1), Duration::from_secs(60)).await?;
    let first = cache.get_arc::<Topic>("t").await.expect("in redis");
    assert_eq!(*first, topic(1));
    let second = cache.get_arc::<Topic>("t").await.expect("in L1");
    assert!(Arc::ptr_eq(&first, &second), "the same allocation, from L1");
    // `get` and `get_arc` share the entry.
    assert_eq!(cache.get::<Topic>("t").await, Some(topic(1)));
    assert_eq!(cache.stats().l1_hits, 2);
    // Another type under the same key is not an L1 hit of the wrong type.
    assert_eq!(cache.get_arc::<i64>("t").await, None);
    assert!(cache.get_arc::<Topic>("absent").await.is_none());

    // Without L1 it still answers, from Redis.
    let plain = Cache::connect(config().await).await?;
    plain.set("u", &topic(3), Duration::from_secs(60)).await?;
    assert_eq!(
        plain.get_arc::<Topic>("u").await.as_deref(),
        Some(&topic(3))
    );
    Ok(())
}

#[tokio::test]
async fn callers_that_wait_on_another_callers_load_are_counted() -> anyhow::Result<()> {
    // 200 concurrent misses of one cold key: one load, 200 misses (each
    // caller's read counted once, as the leader's was); then 200 concurrent
    // reads of the warm key: 200 hits.
    let cache = Cache::connect(config().await).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Barrier::new(200));
    let round = |expect_load: bool| {
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (cache, calls, gate) = (cache.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                gate.wait().await;
                cache
                    .get_or_load("cold", Duration::from_secs(60), || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        assert!(expect_load, "the warm round never loads");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, std::io::Error>(Some(7_i64))
                    })
                    .await
            }));
        }
        tasks
    };
    for t in round(true) {
        assert_eq!(t.await??, Some(7));
    }
    let s = cache.stats();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!((s.hits, s.misses, s.loads), (0, 200, 1), "{s:?}");
    for t in round(false) {
        assert_eq!(t.await??, Some(7));
    }
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.loads), (200, 200, 1), "{s:?}");
    Ok(())
}

#[tokio::test]
async fn a_loader_may_fail_with_an_anyhow_error() -> anyhow::Result<()> {
    let cache = Cache::connect(config().await).await?;
    let err = cache
        .get_or_load::<i64, _, _, _>("k", Duration::from_secs(60), || async {
            Err(anyhow::anyhow!("topic 42 is gone"))
        })
        .await
        .unwrap_err();
    assert!(err.is_loader());
    assert_eq!(err.to_string(), "loading \"k\" failed: topic 42 is gone");
    // A plain String works too.
    let err = cache
        .get_or_load::<i64, _, _, _>("k", Duration::from_secs(60), || async {
            Err(String::from("no database"))
        })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "loading \"k\" failed: no database");
    Ok(())
}

// Each event is counted in one atomic, and a flush claims the deltas since
// the previous one: two flushes at once must not add the same counts twice.
#[tokio::test]
async fn stats_count_each_read_exactly_once() -> anyhow::Result<()> {
    let mut cfg = config().await;
    cfg.l1.enabled = true;
    let cache = Cache::connect(cfg).await?;
    let ttl = Duration::from_secs(60);
    cache.set("a", &1_i64, ttl).await?;
    assert_eq!(cache.get::<i64>("a").await, Some(1)); // redis hit
    assert_eq!(cache.get::<i64>("a").await, Some(1)); // L1 hit
    assert_eq!(cache.get::<i64>("b").await, None); // miss
    let v = cache
        .get_or_load("c", ttl, || async { Ok::<_, std::io::Error>(Some(3_i64)) })
        .await?; // miss + load
    assert_eq!(v, Some(3));
    let s = cache.stats();
    assert_eq!(
        (s.hits, s.l1_hits, s.misses, s.loads, s.errors),
        (2, 1, 2, 1, 0),
        "{s:?}"
    );
    let (x, y) = tokio::join!(cache.shared_stats(), cache.shared_stats());
    let (x, y) = (x?, y?);
    let shared = cache.shared_stats().await?;
    assert_eq!(
        (shared.hits, shared.l1_hits, shared.misses, shared.loads),
        (2, 1, 2, 1),
        "concurrent flushes {x:?} {y:?}"
    );
    Ok(())
}

/// Polls `cond` for up to 3 s (pub/sub delivery is asynchronous).
async fn wait_until<F, Fut>(cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "condition not met within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn shared_stats_sum_over_instances() -> anyhow::Result<()> {
    let cfg = config().await;
    let a = Cache::connect(cfg.clone()).await?;
    let b = Cache::connect(cfg).await?;
    a.set("x", &1, Duration::from_secs(60)).await?;
    a.get::<i64>("x").await;
    b.get::<i64>("x").await;
    b.get::<i64>("y").await;
    let _ = a.shared_stats().await?;
    let s = b.shared_stats().await?;
    assert_eq!((s.hits, s.misses), (2, 1));
    Ok(())
}

#[tokio::test]
async fn inspect_shows_the_envelope() -> anyhow::Result<()> {
    let cache = Cache::connect(config().await).await?;
    cache
        .set_with(
            "t",
            &topic(1),
            &Options::ttl(Duration::from_secs(60)).tag("team:1"),
        )
        .await?;
    let info = cache.inspect("t").await?.expect("present");
    assert!(info.envelope && info.valid && !info.negative);
    assert_eq!(info.redis_key, format!("{}:v:t", cache.config().namespace));
    assert_eq!(info.payload, serde_json::to_value(topic(1))?);
    assert_eq!(info.tags.len(), 1);
    assert_eq!(Some(info.tags[0].1), info.tags[0].2);
    cache.invalidate_tag("team:1").await?;
    assert!(!cache.inspect("t").await?.expect("still stored").valid);
    assert!(cache.inspect("nothing").await?.is_none());
    Ok(())
}
