//! The router against four real Postgres shards (dbtool-testkit, started once
//! per test binary): routing matches the map, a published map change reaches
//! a running router, fan-out names the shard that failed, the catalog keeps
//! versions immutable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dbtool_shard::catalog::Catalog;
use dbtool_shard::{sum_counts, Config, Router, Scheme, ShardConfig, ShardMap};
use dbtool_testkit::{shared_shards as shards, TestDb};

/// A fresh database on each shard, and the `[shard]` config naming them.
async fn fresh_shards() -> (Vec<TestDb>, Config) {
    let mut dbs = Vec::new();
    for c in shards().clusters() {
        dbs.push(c.fresh_db().await);
    }
    let config = Config {
        shards: dbs
            .iter()
            .enumerate()
            .map(|(i, db)| ShardConfig {
                name: format!("shard-{i}"),
                primary: db.url(),
                replicas: vec![],
            })
            .collect(),
        ..Config::default()
    };
    (dbs, config)
}

fn team(i: usize) -> String {
    uuid::Uuid::from_u128(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834u128.wrapping_mul(i as u128 + 1))
        .to_string()
}

#[tokio::test]
async fn rows_written_through_the_router_land_on_the_shard_the_map_names() -> anyhow::Result<()> {
    let (dbs, config) = fresh_shards().await;
    let router = Router::connect(&config, &dbtool_pool::Config::default()).await?;
    router
        .all(0, |s| async move {
            s.pool
                .write()
                .await?
                .batch_execute("CREATE TABLE seen (team_id text PRIMARY KEY)")
                .await
        })
        .await
        .into_result()?;
    let teams: Vec<String> = (0..200).map(team).collect();
    for t in &teams {
        router
            .team(t)?
            .write()
            .await?
            .execute("INSERT INTO seen VALUES ($1)", &[t])
            .await?;
    }
    let map = router.map();
    let mut per_shard = Vec::new();
    for (i, db) in dbs.iter().enumerate() {
        let rows = db
            .client()
            .await
            .query("SELECT team_id FROM seen", &[])
            .await?;
        for r in &rows {
            let t: String = r.get(0);
            assert_eq!(map.shard_of(&t)?, format!("shard-{i}"), "team {t}");
        }
        per_shard.push(rows.len());
    }
    // Every shard got some of 200 random teams, and none was lost.
    assert!(per_shard.iter().all(|&n| n > 20), "{per_shard:?}");
    let counts = router
        .all(2, |s| async move {
            let n: i64 = s
                .pool
                .read()
                .await?
                .query_one("SELECT count(*) FROM seen", &[])
                .await?
                .get(0);
            Ok::<_, dbtool_pool::Error>(n as u64)
        })
        .await
        .into_result()?;
    assert_eq!(sum_counts(counts.into_iter().map(|(_, n)| n)), 200);
    assert_eq!(router.stats().iter().map(|s| s.queries).sum::<u64>(), 200);
    Ok(())
}

#[tokio::test]
async fn a_map_published_to_the_catalog_reaches_a_running_router() -> anyhow::Result<()> {
    let (dbs, mut config) = fresh_shards().await;
    let catalog_url = dbs[0].url();
    let catalog = Catalog::connect(&catalog_url.parse()?).await?;
    let two = ShardMap::even(Scheme::Buckets, vec!["shard-0".into(), "shard-1".into()])?;
    assert_eq!(catalog.publish(&two, "two shards").await?, 1);
    // Publishing the same routing again writes no new version.
    assert_eq!(catalog.publish(&two, "again").await?, 1);

    config.catalog = Some(catalog_url);
    config.refresh_secs = 60; // LISTEN must do it, well before the poll
    let router = Router::connect(&config, &dbtool_pool::Config::default()).await?;
    assert_eq!(router.version(), 1);

    let three = two.with_shard_added("shard-2")?;
    let moved = (0..10_000)
        .map(team)
        .find(|t| three.shard_of(t).unwrap() == "shard-2")
        .expect("a team moves to shard-2");
    assert_ne!(router.shard_name(router.shard_of(&moved)?), "shard-2");
    assert_eq!(catalog.publish(&three, "add shard-2").await?, 2);
    wait_for(|| router.version() == 2).await;
    assert_eq!(router.shard_name(router.shard_of(&moved)?), "shard-2");

    // A version naming a shard this router has no pool for is refused; the
    // router keeps routing with version 2 and says why.
    let five = three
        .with_shard_added("shard-3")?
        .with_shard_added("shard-9")?;
    assert_eq!(catalog.publish(&five, "unknown shard").await?, 4);
    wait_for(|| router.refresh_error().is_some()).await;
    assert_eq!(router.version(), 2);
    assert!(router.refresh_error().unwrap().contains("\"shard-9\""));
    Ok(())
}

#[tokio::test]
async fn a_polling_router_without_listen_picks_up_a_new_version() -> anyhow::Result<()> {
    let (dbs, mut config) = fresh_shards().await;
    let catalog = Catalog::connect(&dbs[1].url().parse()?).await?;
    catalog
        .publish(&ShardMap::even_n(Scheme::Buckets, 4)?, "")
        .await?;
    config.catalog = Some(dbs[1].url());
    config.listen = false;
    config.refresh_secs = 1;
    let router = Router::connect(&config, &dbtool_pool::Config::default()).await?;
    let swapped = ShardMap::even(
        Scheme::Buckets,
        ["shard-3", "shard-2", "shard-1", "shard-0"]
            .map(String::from)
            .to_vec(),
    )?;
    catalog.publish(&swapped, "reverse").await?;
    wait_for(|| router.version() == 2).await;
    assert!(router.map().routes_like(&swapped));
    Ok(())
}

#[tokio::test]
async fn fan_out_names_the_shard_whose_server_is_down() -> anyhow::Result<()> {
    let (_dbs, mut config) = fresh_shards().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    config.shards[2].primary = format!("postgres://postgres:secret@127.0.0.1:{closed}/nowhere");
    let pool = dbtool_pool::Config {
        connect_timeout_ms: 1000,
        checkout_timeout_ms: 1000,
        ..dbtool_pool::Config::default()
    };
    let router = Router::connect(&config, &pool).await?;
    let out = router
        .all(4, |s| async move {
            let v: i32 = s
                .pool
                .read()
                .await?
                .query_one("SELECT 1", &[])
                .await?
                .get(0);
            Ok::<_, dbtool_pool::Error>(v)
        })
        .await;
    assert_eq!(out.failed(), vec!["shard-2"]);
    let err = out.into_result().unwrap_err().to_string();
    assert!(err.starts_with("1 of 4 shards failed: shard-2 ("), "{err}");
    assert!(!err.contains("secret"), "{err}");
    assert_eq!(router.stats()[2].fanout_failed, 1);
    Ok(())
}

#[tokio::test]
async fn published_versions_cannot_be_changed_or_deleted() -> anyhow::Result<()> {
    let (dbs, _) = fresh_shards().await;
    let catalog = Catalog::connect(&dbs[3].url().parse()?).await?;
    let v = catalog
        .publish(&ShardMap::even_n(Scheme::Hex8Modulo, 3)?, "hex")
        .await?;
    let client = catalog.client();
    for sql in [
        "UPDATE dbtool.shard_map SET note = 'x'",
        "DELETE FROM dbtool.shard_map",
        "TRUNCATE dbtool.shard_map CASCADE",
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        assert!(format!("{err:?}").contains("immutable"), "{sql}: {err:?}");
    }
    let loaded = catalog.load(Some(v)).await?.unwrap();
    assert_eq!(loaded.scheme(), Scheme::Hex8Modulo);
    assert_eq!(loaded.shards(), ["shard-0", "shard-1", "shard-2"]);
    assert!(catalog.load(Some(v + 1)).await?.is_none());
    Ok(())
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[allow(dead_code)]
fn _router_is_shareable(r: Arc<Router>) -> impl Send + Sync {
    r
}
