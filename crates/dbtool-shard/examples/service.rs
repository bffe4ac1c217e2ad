//! A service's data layer on the shard router, to copy from.
//!
//! Every request carries a team id; the router gives that team's shard pool
//! (an `RwPool`: writes on the shard's primary, reads on its replicas). Pages
//! that span teams (an admin's "latest topics everywhere", a global count)
//! fan out to every shard and merge.
//!
//! ```text
//! DBTOOL_CONFIG=dbtool.toml cargo run -p dbtool-shard --example shard_service
//! ```
//! `dbtool.toml` needs `[[shard.shards]]` (and optionally `[shard.map]` or a
//! `[shard] catalog`, and `[pool]` for the per-shard pool settings). Without
//! `DBTOOL_CONFIG` it starts two throwaway shard servers from `dbtool-testkit`.

use std::sync::Arc;

use anyhow::Context as _;
use dbtool_shard::{merge_sorted, sum_counts, Config, Router};

/// What a request handler gets: the router (shared, cheap to clone).
#[derive(Clone)]
struct Topics {
    router: Arc<Router>,
}

/// One topic, as listed.
#[derive(Debug, Clone)]
struct Topic {
    team_id: String,
    title: String,
    created: i64,
}

impl Topics {
    /// `POST /teams/{team}/topics`: on the team's shard primary.
    async fn create(&self, team: &str, title: &str, created: i64) -> anyhow::Result<()> {
        // An id the scheme cannot route is the client's error: a 400, not a 500.
        let pool = self.router.team(team).context("bad team id")?;
        pool.write()
            .await?
            .execute(
                "INSERT INTO topics (team_id, title, created) VALUES ($1, $2, $3)",
                &[&team, &title, &created],
            )
            .await?;
        Ok(())
    }

    /// `GET /teams/{team}/topics`: a replica of the team's shard.
    async fn list(&self, team: &str) -> anyhow::Result<Vec<String>> {
        let conn = self.router.team(team)?.read().await?;
        let rows = conn
            .query(
                "SELECT title FROM topics WHERE team_id = $1 ORDER BY created DESC",
                &[&team],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// `GET /admin/topics/latest`: the newest `limit` topics of all teams:
    /// each shard's newest `limit`, merged. A shard that fails fails the
    /// page here (`into_result`); `partial()` would show the rest.
    async fn latest(&self, limit: i64) -> anyhow::Result<Vec<Topic>> {
        let parts = self
            .router
            .all(0, |shard| async move {
                let rows = shard
                    .pool
                    .read()
                    .await?
                    .query(
                        "SELECT team_id, title, created FROM topics ORDER BY created DESC LIMIT $1",
                        &[&limit],
                    )
                    .await?;
                Ok::<_, dbtool_pool::Error>(
                    rows.iter()
                        .map(|r| Topic {
                            team_id: r.get(0),
                            title: r.get(1),
                            created: r.get(2),
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .await
            .into_result()?;
        Ok(merge_sorted(
            parts.into_iter().map(|(_, topics)| topics),
            limit as usize,
            |t| std::cmp::Reverse(t.created),
        ))
    }

    /// `GET /admin/topics/count`.
    async fn count(&self) -> anyhow::Result<u64> {
        let counts = self
            .router
            .all(0, |shard| async move {
                let n: i64 = shard
                    .pool
                    .read()
                    .await?
                    .query_one("SELECT count(*) FROM topics", &[])
                    .await?
                    .get(0);
                Ok::<_, dbtool_pool::Error>(n as u64)
            })
            .await
            .into_result()?;
        Ok(sum_counts(counts.into_iter().map(|(_, n)| n)))
    }
}

/// `[shard]` and `[pool]` from `$DBTOOL_CONFIG`.
fn load_config() -> anyhow::Result<Option<(Config, dbtool_pool::Config)>> {
    #[derive(serde::Deserialize, Default)]
    struct File {
        #[serde(default)]
        shard: Config,
        #[serde(default)]
        pool: dbtool_pool::Config,
    }
    let Ok(path) = std::env::var("DBTOOL_CONFIG") else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let file: File = toml::from_str(&text).with_context(|| format!("invalid config {path}"))?;
    Ok(Some((file.shard, file.pool)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut _servers = Vec::new(); // keeps throwaway servers alive until the end
    let _shards;
    let (config, pool) = match load_config()? {
        Some(c) => c,
        None => {
            let shards = dbtool_testkit::Shards::start(2, 0)
                .await
                .context("cannot start throwaway shard servers")?;
            let mut config = Config::default();
            for (i, c) in shards.clusters().iter().enumerate() {
                let db = c.fresh_db().await;
                config.shards.push(dbtool_shard::ShardConfig {
                    name: format!("shard-{i}"),
                    primary: db.url(),
                    replicas: db.replica_urls(),
                });
                _servers.push(db);
            }
            _shards = shards;
            (config, dbtool_pool::Config::default())
        }
    };
    let router = Router::connect(&config, &pool)
        .await
        .context("cannot build the router")?;
    println!("{router:?}");
    router
        .all(0, |s| async move {
            s.pool
                .write()
                .await?
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS topics (
                         id bigserial PRIMARY KEY, team_id text NOT NULL,
                         title text NOT NULL, created bigint NOT NULL)",
                )
                .await
        })
        .await
        .into_result()?;

    let topics = Topics { router };
    let teams = [
        "6f1c2a4e-9d7b-4c1e-8f3a-2b5d7e9c1a0f",
        "0b9e4d21-3c5a-4f6e-9a8b-7c6d5e4f3a2b",
        "d4c3b2a1-0f9e-4d8c-b7a6-958473625140",
    ];
    for (i, team) in teams.iter().enumerate() {
        for j in 0..3 {
            let created = (i * 10 + j) as i64;
            topics
                .create(team, &format!("topic {j} of team {i}"), created)
                .await?;
        }
        println!(
            "team {team} -> {}: {:?}",
            topics.router.shard_name(topics.router.shard_of(team)?),
            topics.list(team).await?
        );
    }
    if let Err(e) = topics.create("", "x", 0).await {
        println!("refused: {e:#}");
    }
    println!("topics on all shards: {}", topics.count().await?);
    for t in topics.latest(4).await? {
        println!("latest: {} ({}, {})", t.title, t.team_id, t.created);
    }
    for s in topics.router.stats() {
        println!("{}: {} buckets, {} queries", s.shard, s.buckets, s.queries);
    }
    for h in topics.router.hot_teams(2) {
        println!("hot team {} ({} queries)", h.team_id, h.count);
    }
    Ok(())
}
