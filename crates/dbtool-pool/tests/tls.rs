//! Postgres over TLS, against the testkit's secured cluster: a primary and a
//! replica that accept only TLS logins with a password (scram-sha-256), with
//! certificates from a throwaway CA.

use std::path::Path;

use dbtool_pool::{Health, RwPool, Target};
use dbtool_testkit::{shared_tls_pg, PgCluster, TestCa};

/// `url` (which says `sslmode=require`) with full verification against `ca`.
fn verify_full(url: &str, ca: &Path) -> String {
    url.replace(
        "sslmode=require",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    )
}

fn port_of(url: &str) -> u16 {
    let t: Target = url.parse().expect("testkit URL parses");
    t.get_ports()[0]
}

async fn cluster() -> (&'static PgCluster, &'static str) {
    let pg = shared_tls_pg().await;
    (pg, pg.password().expect("the TLS cluster has a password"))
}

#[tokio::test]
async fn verify_full_with_the_servers_ca_connects_encrypted() {
    let (pg, _) = cluster().await;
    let db = pg.fresh_db().await;
    let target: Target = verify_full(&db.url(), &pg.ca_file().unwrap())
        .parse()
        .unwrap();
    let client = target.connect().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the session is encrypted");
    assert!(row.get::<_, String>(1).starts_with("TLSv1."));
}

#[tokio::test]
async fn a_wrong_ca_is_refused_naming_the_host_not_the_password() {
    let (pg, password) = cluster().await;
    let db = pg.fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, TestCa::new().cert_pem()).unwrap();
    let target: Target = verify_full(&db.url(), &other_ca).parse().unwrap();
    let err = target.connect().await.unwrap_err().to_string();
    let host = format!("127.0.0.1:{}", port_of(&db.url()));
    assert!(
        err.starts_with(&format!("cannot connect to postgres://postgres@{host}/")),
        "{err}"
    );
    assert!(
        err.contains("error performing TLS handshake: invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(!err.contains(password), "{err}");
}

#[tokio::test]
async fn a_wrong_password_is_refused_naming_the_host_not_the_password() {
    let (pg, password) = cluster().await;
    let db = pg.fresh_db().await;
    let wrong = "not-the-password-7f3a";
    let url = verify_full(&db.url(), &pg.ca_file().unwrap()).replace(password, wrong);
    let target: Target = url.parse().unwrap();
    let err = target.connect().await.unwrap_err().to_string();
    let host = format!("127.0.0.1:{}", port_of(&db.url()));
    assert!(err.contains(&host), "{err}");
    assert!(
        err.contains("password authentication failed for user \"postgres\""),
        "{err}"
    );
    assert!(!err.contains(wrong) && !err.contains(password), "{err}");
}

#[tokio::test]
async fn a_plaintext_login_is_refused_by_the_server() {
    let (pg, password) = cluster().await;
    let db = pg.fresh_db().await;
    let target: Target = db
        .url()
        .replace("sslmode=require", "sslmode=disable")
        .parse()
        .unwrap();
    let err = target.connect().await.unwrap_err().to_string();
    assert!(err.contains("no encryption"), "{err}");
    assert!(!err.contains(password), "{err}");
}

#[tokio::test]
async fn the_pool_writes_and_reads_over_verify_full() {
    let (pg, password) = cluster().await;
    let db = pg.fresh_db().await;
    let ca = pg.ca_file().unwrap();
    let pool = RwPool::builder()
        .primary(verify_full(&db.url(), &ca))
        .replicas(db.replica_urls().iter().map(|u| verify_full(u, &ca)))
        .build()
        .await
        .unwrap();
    pool.write()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let status = pool.status();
    assert_eq!(status.len(), 2);
    for host in &status {
        assert_eq!(host.health, Health::Up, "{host:?}");
        assert!(!host.url.contains(password), "{}", host.url);
    }
    let ssl: bool = pool
        .read()
        .await
        .unwrap()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}
