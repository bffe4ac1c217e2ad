//! A service's data layer on `RwPool`, to copy from.
//!
//! It shows the pieces a web service needs: the pool built from the `[pool]`
//! table of `dbtool.toml`, writes in a transaction, the consistency token
//! handed back to the client (a cookie or a header), and the next request
//! reading its own write from a replica through that token.
//!
//! ```text
//! DBTOOL_CONFIG=dbtool.toml cargo run -p dbtool-pool --example service
//! # or, without a config file:
//! DATABASE_URL=postgres://app:secret@db1/forums REPLICA_URLS=postgres://app:secret@db2/forums \
//!   cargo run -p dbtool-pool --example service
//! ```
//! With neither set, it starts throwaway servers from `dbtool-testkit`.

use std::time::Duration;

use anyhow::Context as _;
use dbtool_pool::{Config, RwPool, Token};

/// What a request handler gets: the pool (cheap to clone into every handler).
#[derive(Clone)]
struct Posts {
    pool: RwPool,
}

impl Posts {
    /// `POST /topics/{topic}/posts`: writes on the primary, returns the new id
    /// and the token to send back to the client.
    async fn create(&self, topic: i64, body: &str) -> anyhow::Result<(i64, Token)> {
        let mut conn = self.pool.write().await?;
        let tx = conn.transaction().await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO posts (topic_id, body) VALUES ($1, $2) RETURNING id",
                &[&topic, &body],
            )
            .await?
            .get(0);
        tx.execute(
            "UPDATE topics SET posts = posts + 1 WHERE id = $1",
            &[&topic],
        )
        .await?;
        tx.commit().await?;
        // After the commit, on the same connection.
        let token = self.pool.commit_token(&conn).await?;
        Ok((id, token))
    }

    /// `GET /topics/{topic}`: with the client's token (if it sent one) the
    /// read sees its own earlier writes; without one any healthy replica will do.
    async fn list(&self, topic: i64, token: Option<&str>) -> anyhow::Result<Vec<String>> {
        let conn = match token.map(str::parse::<Token>) {
            Some(Ok(t)) => self.pool.read_after(&t).await?,
            // A malformed token is the client's problem, not a reason to fail.
            Some(Err(_)) | None => self.pool.read().await?,
        };
        let rows = conn
            .query(
                "SELECT body FROM posts WHERE topic_id = $1 ORDER BY id",
                &[&topic],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// The `[pool]` table from `$DBTOOL_CONFIG`, else `DATABASE_URL` + `REPLICA_URLS`.
fn load_config() -> anyhow::Result<Option<Config>> {
    #[derive(serde::Deserialize, Default)]
    struct File {
        #[serde(default)]
        pool: Config,
    }
    if let Ok(path) = std::env::var("DBTOOL_CONFIG") {
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let file: File = toml::from_str(&text).with_context(|| format!("invalid config {path}"))?;
        return Ok(Some(file.pool));
    }
    let Ok(primary) = std::env::var("DATABASE_URL") else {
        return Ok(None);
    };
    Ok(Some(Config {
        primary: Some(primary),
        replicas: std::env::var("REPLICA_URLS")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        ..Config::default()
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("dbtool_pool=info")
        .init();
    // With a metrics recorder (a Prometheus exporter, say), install it here,
    // before the pool is built; then describe the pool's metrics.
    dbtool_pool::metrics::describe();

    let _servers; // keeps throwaway servers alive until the end
    let config = match load_config()? {
        Some(c) => c,
        None => {
            let db = dbtool_testkit::pg().await;
            let c = Config {
                primary: Some(db.url()),
                replicas: db.replica_urls(),
                ..Config::default()
            };
            _servers = db;
            c
        }
    };
    let pool = config.build().await.context("cannot build the pool")?;
    for h in pool.status() {
        println!(
            "{:<22} {:<8} {:?} writes={} reads={}",
            h.host, h.role, h.health, h.writes, h.reads
        );
    }

    pool.write()
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS topics (id bigint PRIMARY KEY, posts int NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS posts (id bigserial PRIMARY KEY, topic_id bigint NOT NULL, body text NOT NULL);
             INSERT INTO topics (id) VALUES (1) ON CONFLICT DO NOTHING;",
        )
        .await?;

    let posts = Posts { pool: pool.clone() };
    let (id, token) = posts.create(1, "hello from the example").await?;
    // The token goes to the client as a string ...
    let cookie = token.to_string();
    println!("created post {id}; consistency token {cookie}");
    // ... and comes back with its next request.
    let bodies = posts.list(1, Some(&cookie)).await?;
    assert!(bodies.iter().any(|b| b == "hello from the example"));
    println!("read back {} post(s) through read_after", bodies.len());

    // Let the monitor run a round, then show what it sees.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    println!("{}", serde_json::to_string_pretty(&pool.status())?);
    Ok(())
}
