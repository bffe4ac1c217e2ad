//! Backend selection and its error messages. One test function: it changes
//! process-wide env vars, so nothing else may run beside it in this binary.

use dbtool_testkit::{Backend, Error, PgCluster, RedisCluster, Shards};

#[tokio::test]
async fn backends_are_chosen_by_env_and_fail_with_clear_messages() {
    // SAFETY of set_var: this is the only test in this binary.
    std::env::set_var("DBTOOL_TEST_BACKEND", "bogus");
    let err = Backend::from_env().unwrap_err().to_string();
    assert!(err.contains("use local, docker or external"), "{err}");

    // external without URLs says which variable to set.
    std::env::set_var("DBTOOL_TEST_BACKEND", "external");
    std::env::remove_var("DBTOOL_TEST_PG_URL");
    let err = PgCluster::start(1).await.unwrap_err().to_string();
    assert!(err.contains("DBTOOL_TEST_PG_URL"), "{err}");
    std::env::remove_var("DBTOOL_TEST_REDIS_NODES");
    let err = RedisCluster::start().await.unwrap_err().to_string();
    assert!(err.contains("DBTOOL_TEST_REDIS_NODES"), "{err}");

    // external pointing at a local server works for fresh databases, and refuses chaos.
    std::env::set_var("DBTOOL_TEST_BACKEND", "local");
    let local = PgCluster::start(1).await.unwrap();
    std::env::set_var("DBTOOL_TEST_BACKEND", "external");
    std::env::set_var("DBTOOL_TEST_PG_URL", local.admin_url());
    std::env::set_var(
        "DBTOOL_TEST_PG_REPLICA_URLS",
        local.replica_url(0, "postgres"),
    );
    std::env::set_var("DBTOOL_TEST_PG_SHARD_URLS", local.admin_url());
    let ext = PgCluster::start(1).await.unwrap();
    assert_eq!(ext.backend(), Backend::External);
    let db = ext.fresh_db().await;
    let n: i32 = db
        .client()
        .await
        .query_one("SELECT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(db.replica_urls(), vec![local.replica_url(0, db.name())]);
    let err = ext.kill_replica(0).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                backend: "external",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("DBTOOL_TEST_BACKEND=local"),
        "{err}"
    );
    let shards = Shards::start(1, 0).await.unwrap();
    assert_eq!(shards.clusters()[0].admin_url(), local.admin_url());
    assert!(Shards::start(2, 0).await.is_err());
    drop(db);
    drop(ext);

    // docker: no engine on the CI machines; if there is none, the error says so.
    std::env::set_var("DBTOOL_TEST_BACKEND", "docker");
    if let Err(e) = PgCluster::start(0).await {
        assert!(e.to_string().contains("is a Docker engine running"), "{e}");
    }
}
