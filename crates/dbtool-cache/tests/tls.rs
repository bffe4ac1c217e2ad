//! The cache on a Redis Cluster that speaks only TLS and requires a password
//! (the testkit's `RedisCluster::start_tls`): ACL user and password-only auth
//! with the server certificate checked, and clear failures for a wrong CA or
//! password.

use std::time::Duration;

use dbtool_cache::{Cache, Config};
use dbtool_testkit::RedisCluster;
use tokio::sync::OnceCell;

async fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceCell<RedisCluster> = OnceCell::const_new();
    CLUSTER
        .get_or_init(|| async {
            RedisCluster::start_tls()
                .await
                .expect("start a TLS redis cluster")
        })
        .await
}

fn config(r: &RedisCluster) -> Config {
    Config {
        nodes: r.nodes(),
        namespace: r.prefix().trim_end_matches(':').to_owned(),
        tls: true,
        tls_ca: r.ca_file(),
        stats_flush_secs: 0,
        connect_timeout_ms: 3000,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acl_user_in_a_rediss_url_sets_and_gets_over_verified_tls() {
    let r = cluster().await;
    let (user, password) = r.acl_user().unwrap();
    let url = format!(
        "rediss://{user}:{password}@{}?tls_ca={}",
        r.nodes().join(","),
        r.ca_file().unwrap().display()
    );
    let cache = Cache::connect(config(r).with_url(&url).unwrap())
        .await
        .unwrap();
    for i in 0..20 {
        cache
            .set(&format!("k{i}"), &i, Duration::from_secs(60))
            .await
            .unwrap();
    }
    for i in 0..20 {
        assert_eq!(cache.get::<i32>(&format!("k{i}")).await, Some(i));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_only_rediss_url_sets_and_gets_over_verified_tls() {
    let r = cluster().await;
    let url = format!(
        "rediss://:{}@{}?tls_ca={}",
        r.password().unwrap(),
        r.nodes()[0],
        r.ca_file().unwrap().display()
    );
    let cache = Cache::connect(config(r).with_url(&url).unwrap())
        .await
        .unwrap();
    cache
        .set("topic:1", &"hello", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        cache.get::<String>("topic:1").await,
        Some("hello".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_fails_to_connect_without_the_password() {
    let r = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, dbtool_testkit::TestCa::new().cert_pem()).unwrap();
    let password = r.password().unwrap();
    let err = Cache::connect(Config {
        password: Some(password.to_owned()),
        tls_ca: Some(other),
        ..config(r)
    })
    .await
    .map(|_| ())
    .unwrap_err();
    let shown = format!("{err:#} {err:?}");
    assert!(!shown.contains(password), "{shown}");
    assert!(
        shown.starts_with("cannot connect to the redis cluster at 127.0.0.1:"),
        "{shown}"
    );
    assert!(
        shown.contains("InvalidCertificate(UnknownIssuer)"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_fails_to_connect_without_the_password() {
    let r = cluster().await;
    let wrong = "not-the-password-4b1d";
    let err = Cache::connect(Config {
        password: Some(wrong.to_owned()),
        ..config(r)
    })
    .await
    .map(|_| ())
    .unwrap_err();
    let shown = format!("{err:#} {err:?}");
    assert!(!shown.contains(wrong), "{shown}");
    assert!(
        shown.starts_with("cannot connect to the redis cluster at 127.0.0.1:"),
        "{shown}"
    );
    assert!(
        shown.contains("WRONGPASS invalid username-password pair"),
        "{shown}"
    );
}
