//! `dbtool cache stats|get|invalidate` through the binary, against the
//! testkit's shared 6-node Redis Cluster, each test in a fresh namespace:
//! values written through `dbtool_cache` are shown by `get`; `invalidate`
//! by key and by tag removes exactly those; `stats` prints the namespace's
//! counters; an unreachable cluster is a clear error with exit code 1.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{stderr, stdout, text};
use dbtool_cache::{Cache, Config, Options};

const TTL: Duration = Duration::from_secs(300);

/// The shared cluster's nodes and a fresh namespace.
async fn target() -> (Vec<String>, String) {
    let r = dbtool_testkit::redis().await;
    (r.nodes(), r.prefix().trim_end_matches(':').to_owned())
}

async fn cache(nodes: &[String], ns: &str) -> Cache {
    Cache::connect(Config {
        nodes: nodes.to_vec(),
        namespace: ns.to_owned(),
        stats_flush_secs: 0,
        ..Config::default()
    })
    .await
    .expect("connect to the shared redis cluster")
}

/// Runs `dbtool cache <args> --nodes .. --namespace ..` in an empty directory
/// (no dbtool.toml), off the async runtime's threads.
async fn dbtool(dir: &Path, args: &[&str], nodes: &[String], ns: &str) -> Output {
    let mut c = common::dbtool(dir);
    c.arg("cache")
        .args(args)
        .arg("--nodes")
        .arg(nodes.join(","))
        .arg("--namespace")
        .arg(ns);
    tokio::task::spawn_blocking(move || c.output().expect("run dbtool"))
        .await
        .unwrap()
}

#[tokio::test]
async fn get_shows_a_value_set_through_the_library() -> anyhow::Result<()> {
    let (nodes, ns) = target().await;
    let dir = tempfile::tempdir()?;
    let c = cache(&nodes, &ns).await;
    let value = serde_json::json!({"id": 42, "title": "Hello ✓", "pinned": true});
    c.set_with("topic:42", &value, &Options::ttl(TTL).tag("team:7"))
        .await?;

    let o = dbtool(dir.path(), &["get", "topic:42", "--json"], &nodes, &ns).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(j["payload"], value, "{}", text(&o));
    assert_eq!(j["valid"], true, "{}", text(&o));
    assert_eq!(j["envelope"], true, "{}", text(&o));
    assert_eq!(j["negative"], false, "{}", text(&o));
    assert_eq!(j["tags"][0][0], "team:7", "{}", text(&o));
    assert_eq!(j["tags"][0][1], j["tags"][0][2], "{}", text(&o));
    let redis_key = j["redis_key"].as_str().unwrap_or_default();
    assert!(
        redis_key.starts_with(&ns) && redis_key.ends_with("topic:42"),
        "{}",
        text(&o)
    );
    let pttl = j["pttl_ms"].as_i64().unwrap_or_default();
    assert!(pttl > 0, "{}", text(&o));

    // Text form: the state, the tag and the value, pretty-printed.
    let o = dbtool(dir.path(), &["get", "topic:42"], &nodes, &ns).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        out.contains("state      valid: a reader gets a hit\n"),
        "{}",
        text(&o)
    );
    assert!(
        out.contains("tag        team:7 (current)\n"),
        "{}",
        text(&o)
    );
    let pretty = serde_json::to_string_pretty(&value)?;
    assert!(out.ends_with(&format!("value\n{pretty}\n")), "{}", text(&o));

    // A key never set: exit 1, saying so on stderr.
    let o = dbtool(dir.path(), &["get", "topic:43"], &nodes, &ns).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(stdout(&o), "", "{}", text(&o));
    assert_eq!(
        stderr(&o),
        format!("\"topic:43\" is not cached (namespace {ns})\n"),
        "{}",
        text(&o)
    );
    Ok(())
}

#[tokio::test]
async fn invalidate_by_key_and_by_tag_removes_exactly_those() -> anyhow::Result<()> {
    let (nodes, ns) = target().await;
    let dir = tempfile::tempdir()?;
    let c = cache(&nodes, &ns).await;
    // Keys spread over slots; a and b share tag team:1, c has team:2.
    c.set_with("a", &1_i64, &Options::ttl(TTL).tag("team:1"))
        .await?;
    c.set_with("b", &2_i64, &Options::ttl(TTL).tag("team:1").tag("x"))
        .await?;
    c.set_with("c", &3_i64, &Options::ttl(TTL).tag("team:2"))
        .await?;
    c.set("d", &4_i64, TTL).await?;
    c.set("e", &5_i64, TTL).await?;
    let all = |c: &Cache| {
        let c = c.clone();
        async move {
            let mut v = Vec::new();
            for k in ["a", "b", "c", "d", "e"] {
                v.push(c.get::<i64>(k).await);
            }
            v
        }
    };
    assert_eq!(all(&c).await, [Some(1), Some(2), Some(3), Some(4), Some(5)]);

    let o = dbtool(dir.path(), &["invalidate", "--key", "e"], &nodes, &ns).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        stdout(&o),
        format!("invalidated key \"e\" in namespace {ns}\n"),
        "{}",
        text(&o)
    );
    assert_eq!(all(&c).await, [Some(1), Some(2), Some(3), Some(4), None]);
    let o = dbtool(dir.path(), &["get", "e"], &nodes, &ns).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    let o = dbtool(dir.path(), &["invalidate", "--tag", "team:1"], &nodes, &ns).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        stdout(&o),
        format!("invalidated every entry tagged \"team:1\" in namespace {ns}\n"),
        "{}",
        text(&o)
    );
    assert_eq!(all(&c).await, [None, None, Some(3), Some(4), None]);
    // `get` still finds the bytes of a tag-invalidated entry and says a
    // reader misses.
    let o = dbtool(dir.path(), &["get", "a"], &nodes, &ns).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).contains("state      invalid: a reader misses\n"),
        "{}",
        text(&o)
    );
    assert!(
        stdout(&o).contains("tag        team:1 (invalidated since)\n"),
        "{}",
        text(&o)
    );

    // Neither --key nor --tag: a usage error.
    let o = dbtool(dir.path(), &["invalidate"], &nodes, &ns).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(all(&c).await, [None, None, Some(3), Some(4), None]);
    Ok(())
}

#[tokio::test]
async fn stats_prints_the_namespace_counters() -> anyhow::Result<()> {
    let (nodes, ns) = target().await;
    let dir = tempfile::tempdir()?;
    let c = cache(&nodes, &ns).await;
    c.set("k", &1_i64, TTL).await?;
    assert_eq!(c.get::<i64>("k").await, Some(1));
    assert_eq!(c.get::<i64>("k").await, Some(1));
    assert_eq!(c.get::<i64>("absent").await, None);
    let loaded: Option<i64> = c
        .get_or_load("loaded", TTL, || async { Ok::<_, std::io::Error>(Some(7)) })
        .await?;
    assert_eq!(loaded, Some(7));
    // Flushes this process's counters to the namespace's hash.
    let mine = c.shared_stats().await?;
    assert_eq!((mine.hits, mine.misses, mine.loads), (2, 2, 1));

    let o = dbtool(dir.path(), &["stats", "--json"], &nodes, &ns).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let s = &j["namespace"];
    assert_eq!(s["namespace"], ns.as_str(), "{}", text(&o));
    assert_eq!(s["hits"], 2, "{}", text(&o));
    assert_eq!(s["misses"], 2, "{}", text(&o));
    assert_eq!(s["l1_hits"], 0, "{}", text(&o));
    assert_eq!(s["loads"], 1, "{}", text(&o));
    assert_eq!(s["load_errors"], 0, "{}", text(&o));
    assert_eq!(s["errors"], 0, "{}", text(&o));
    assert_eq!(j["hit_rate"], 0.5, "{}", text(&o));
    let masters = j["masters"].as_array().cloned().unwrap_or_default();
    assert_eq!(masters.len(), 3, "{}", text(&o));
    for m in &masters {
        let node = m["node"].as_str().unwrap_or_default();
        assert!(nodes.iter().any(|n| n == node), "{}", text(&o));
    }

    let o = dbtool(dir.path(), &["stats"], &nodes, &ns).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!(
            "namespace {ns} (all processes, since their counters were first flushed)\n\
             \x20 hit rate      50.0%  (2 hits, 2 misses, 0 from L1)\n\
             \x20 loads         1 (0 failed, 0 answered stale)\n\
             \x20 redis errors  0 (0 timeouts, 0 calls skipped by the breaker)\n"
        )),
        "{}",
        text(&o)
    );
    assert!(
        out.contains("masters (server-wide, all namespaces):\n"),
        "{}",
        text(&o)
    );
    // One line per master after the header lines.
    let rows = out
        .lines()
        .filter(|l| nodes.iter().any(|n| l.trim_start().starts_with(n.as_str())))
        .count();
    assert_eq!(rows, 3, "{}", text(&o));
    Ok(())
}

#[tokio::test]
async fn an_unreachable_cluster_is_a_clear_error_with_exit_1() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let node = format!("127.0.0.1:{port}");
    // The password comes from dbtool.toml and must not be printed.
    std::fs::write(
        dir.path().join("dbtool.toml"),
        "[cache]\npassword = \"s3cretpw\"\nconnect_timeout_ms = 500\n",
    )?;
    for args in [
        &["stats"][..],
        &["get", "topic:1"][..],
        &["invalidate", "--tag", "team:1"][..],
    ] {
        let started = Instant::now();
        let o = dbtool(dir.path(), args, std::slice::from_ref(&node), "nsx").await;
        let took = started.elapsed();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("cannot connect to the redis cluster at {node}")),
            "{args:?}: {}",
            text(&o)
        );
        assert!(!err.contains("s3cretpw"), "{args:?}: {}", text(&o));
        // A human message, not a Rust Debug struct of the io::Error.
        assert!(
            err.contains(&format!("at {node}: connection refused (is the cluster up")),
            "{args:?}: {}",
            text(&o)
        );
        assert!(!err.contains("Os {"), "{args:?}: {}", text(&o));
        assert_eq!(stdout(&o), "", "{args:?}: {}", text(&o));
        // Bounded by the configured connect timeout (500 ms), with room
        // for a loaded machine.
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_redis_url_with_a_password_is_never_printed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("redis://:s3cretpw@127.0.0.1:{port}");
    let expect = format!(
        "error: cannot connect to the redis cluster at 127.0.0.1:{port}: connection refused \
         (is the cluster up and are [cache] nodes right?)\n"
    );
    // On the command line ...
    std::fs::write(
        dir.path().join("dbtool.toml"),
        "[cache]\nconnect_timeout_ms = 500\n",
    )?;
    let o = dbtool(dir.path(), &["stats"], std::slice::from_ref(&url), "nsx").await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(stderr(&o), expect, "{}", text(&o));
    // ... and in [cache] nodes of dbtool.toml.
    std::fs::write(
        dir.path().join("dbtool.toml"),
        format!("[cache]\nnodes = [{url:?}]\nconnect_timeout_ms = 500\n"),
    )?;
    let mut cmd = common::dbtool(dir.path());
    cmd.args(["cache", "stats"]);
    let o = tokio::task::spawn_blocking(move || cmd.output().expect("run dbtool")).await?;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(stderr(&o), expect, "{}", text(&o));
    // A URL that is not host:port is a config error that masks it too.
    let bad = "redis://:s3cretpw@127.0.0.1:notaport";
    let o = dbtool(dir.path(), &["stats"], &[bad.to_owned()], "nsx").await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!text(&o).contains("s3cretpw"), "{}", text(&o));

    // A URL naming the live cluster works.
    let (nodes, ns) = target().await;
    let o = dbtool(
        dir.path(),
        &["stats"],
        &[format!("redis://{}", nodes[0])],
        &ns,
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).contains(&format!("namespace {ns}")),
        "{}",
        text(&o)
    );
    Ok(())
}

#[tokio::test]
async fn nodes_and_namespace_come_from_dbtool_toml_and_a_bad_node_is_exit_2() -> anyhow::Result<()>
{
    let (nodes, ns) = target().await;
    let dir = tempfile::tempdir()?;
    let c = cache(&nodes, &ns).await;
    c.set("from-toml", &"yes", TTL).await?;
    let list = nodes
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        dir.path().join("dbtool.toml"),
        format!("[cache]\nnodes = [{list}]\nnamespace = {ns:?}\n"),
    )?;
    let run = |args: &'static [&'static str]| {
        let mut cmd = common::dbtool(dir.path());
        cmd.arg("cache").args(args);
        tokio::task::spawn_blocking(move || cmd.output().expect("run dbtool"))
    };
    let o = run(&["get", "from-toml", "--json"]).await?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(j["payload"], "yes", "{}", text(&o));

    // A node that is not host:port: a config error (exit 2) naming it.
    let o = run(&["stats", "--nodes", "nonsense"]).await?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(
        stderr(&o),
        "error: invalid cache config: node \"nonsense\" is not host:port \
         (fix the [cache] table of dbtool.toml)\n",
        "{}",
        text(&o)
    );
    Ok(())
}
