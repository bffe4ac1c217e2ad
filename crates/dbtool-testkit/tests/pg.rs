//! The PostgreSQL side of the testkit, against real servers.

use std::time::{Duration, Instant};

use dbtool_testkit::{pg, PgCluster, Shards};

/// Polls a replica until `sql` returns `want` (replication is asynchronous:
/// until the replica has replayed the DDL, the table may not exist there yet,
/// so errors are retried too, and the last one is raised at the deadline).
async fn wait_for(client: &tokio_postgres::Client, sql: &str, want: i64) -> i64 {
    let start = Instant::now();
    loop {
        let result = client.query_one(sql, &[]).await;
        let timed_out = start.elapsed() > Duration::from_secs(20);
        match result {
            Ok(row) => {
                let got: i64 = row.get(0);
                if got == want || timed_out {
                    return got;
                }
            }
            Err(e) if timed_out => panic!("{sql} kept failing on the replica: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn row_written_on_primary_is_read_on_replica() {
    let db = pg().await;
    let primary = db.client().await;
    primary
        .batch_execute(
            "CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1, 'one')",
        )
        .await
        .unwrap();
    assert_eq!(db.replica_urls().len(), 1);
    let replica = db.replica_client(0).await;
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "the replica URL must point at a standby");
    assert_eq!(
        wait_for(
            &replica,
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'",
            1
        )
        .await,
        1
    );
    assert_eq!(
        wait_for(&replica, "SELECT count(*) FROM t WHERE v = 'one'", 1).await,
        1
    );
}

#[tokio::test]
async fn fresh_db_is_isolated_and_dropped_after_the_test() {
    let a = pg().await;
    let b = pg().await;
    assert_ne!(a.name(), b.name());
    assert!(a.name().starts_with("test_"));
    a.client()
        .await
        .batch_execute("CREATE TABLE only_in_a (id int)")
        .await
        .unwrap();
    let n: i64 = b
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 0,
        "a table in one test database must not appear in another"
    );

    let admin = b.client().await;
    let name = a.name().to_string();
    drop(a);
    let exists: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(exists, 0, "the database must be dropped with its TestDb");
}

#[tokio::test]
async fn chaos_on_the_shared_cluster_is_refused() {
    let shared = dbtool_testkit::shared_pg().await;
    let err = shared.kill_replica(0).unwrap_err().to_string();
    assert!(err.contains("PgCluster::start"), "{err}");
}

#[tokio::test]
async fn paused_replay_holds_back_rows_until_resumed() {
    let c = PgCluster::start(1).await.unwrap();
    let db = c.fresh_db().await;
    let primary = db.client().await;
    primary
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    let replica = db.replica_client(0).await;
    assert_eq!(
        wait_for(
            &replica,
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'",
            1
        )
        .await,
        1
    );

    c.pause_replay(0).await.unwrap();
    primary
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n: i64 = replica
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a paused replica must not apply new rows");

    c.resume_replay(0).await.unwrap();
    assert_eq!(wait_for(&replica, "SELECT count(*) FROM t", 1).await, 1);
}

#[tokio::test]
async fn promoted_replica_accepts_writes() {
    let c = PgCluster::start(1).await.unwrap();
    let db = c.fresh_db().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    let replica = db.replica_client(0).await;
    assert_eq!(
        wait_for(
            &replica,
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'",
            1
        )
        .await,
        1
    );
    assert!(replica
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .is_err());

    c.stop_primary().await.unwrap();
    c.promote(0).await.unwrap();
    replica
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    let n: i64 = replica
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn killed_replica_restarts_and_catches_up() {
    let c = PgCluster::start(1).await.unwrap();
    let db = c.fresh_db().await;
    let primary = db.client().await;
    primary
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();

    c.kill_replica(0).unwrap();
    assert!(
        tokio_postgres::connect(&db.replica_urls()[0], tokio_postgres::NoTls)
            .await
            .is_err()
    );
    primary
        .batch_execute("INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();

    c.start_replica(0).await.unwrap();
    let replica = db.replica_client(0).await;
    assert_eq!(wait_for(&replica, "SELECT count(*) FROM t", 2).await, 2);

    c.stop_replica(0).await.unwrap();
    assert!(
        tokio_postgres::connect(&db.replica_urls()[0], tokio_postgres::NoTls)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn stopped_primary_comes_back_with_its_data() {
    let c = PgCluster::start(0).await.unwrap();
    let db = c.fresh_db().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (7)")
        .await
        .unwrap();
    c.stop_primary().await.unwrap();
    assert!(tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .is_err());
    c.start_primary().await.unwrap();
    let n: i32 = db
        .client()
        .await
        .query_one("SELECT id FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7);
}

#[tokio::test]
async fn shards_are_independent_servers() {
    let s = Shards::start(3, 0).await.unwrap();
    let urls: Vec<String> = s.clusters().iter().map(|c| c.admin_url()).collect();
    assert_eq!(urls.len(), 3);
    let mut ids = Vec::new();
    for c in s.clusters() {
        let db = c.fresh_db().await;
        let client = db.client().await;
        let id: String = client
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let port: i32 = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        ids.push((id, port));
    }
    ids.sort();
    ids.dedup_by(|a, b| a.1 == b.1);
    assert_eq!(ids.len(), 3, "each shard is its own server: {ids:?}");
}

#[tokio::test]
async fn password_cluster_refuses_logins_with_a_wrong_password() {
    let c = PgCluster::start_with(
        dbtool_testkit::PgOptions::new()
            .replicas(1)
            .password("s3cr:t/pw"),
    )
    .await
    .unwrap();
    let db = c.fresh_db().await;
    assert!(
        db.url().contains(":s3cr%3At%2Fpw@"),
        "the URL carries the encoded password"
    );
    assert!(!dbtool_testkit::mask(&db.url()).contains("s3cr"));
    db.client()
        .await
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    let replica = db.replica_client(0).await;
    replica.query_one("SELECT 1", &[]).await.unwrap();
    let port = url::Url::parse(&db.url()).unwrap().port().unwrap();
    for p in [
        port,
        url::Url::parse(&db.replica_urls()[0])
            .unwrap()
            .port()
            .unwrap(),
    ] {
        let err = tokio_postgres::connect(
            &format!("postgres://postgres:wrong@127.0.0.1:{p}/postgres"),
            tokio_postgres::NoTls,
        )
        .await
        .err()
        .expect("a login with a wrong password must fail");
        let msg = format!("{:?}", err);
        assert!(msg.contains("password authentication failed"), "{msg}");
    }
}

#[tokio::test]
async fn fresh_db_does_not_wait_for_a_stopped_or_paused_replica() {
    let c = PgCluster::start(2).await.unwrap();
    c.stop_replica(0).await.unwrap();
    c.pause_replay(1).await.unwrap();
    let start = Instant::now();
    let db = c.fresh_db().await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    c.resume_replay(1).await.unwrap();
    c.start_replica(0).await.unwrap();
    // Both catch up and then serve the new database.
    for url in db.replica_urls() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "replica never got {}", db.name());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
