//! The Redis Cluster side of the testkit, against real servers.

use dbtool_testkit::{redis, RedisCluster, Role};
use std::time::Duration;

use fred::prelude::*;

/// A connected fred client; commands time out instead of hanging a failing test.
async fn connect(config: Config) -> Client {
    let mut builder = Builder::from_config(config);
    builder.with_performance_config(|p| p.default_command_timeout = Duration::from_secs(10));
    let client = builder.build().unwrap();
    client.init().await.unwrap();
    client
}

/// A cluster-mode fred client that knows only `seed` at first.
async fn client_via(seed: &str) -> Client {
    connect(Config::from_url_clustered(&format!("redis-cluster://{seed}")).unwrap()).await
}

#[tokio::test]
async fn key_set_through_one_node_is_read_through_another() {
    let r = redis().await;
    let nodes = r.nodes();
    assert_eq!(nodes.len(), 6);
    let prefix = r.prefix();
    let a = client_via(&nodes[0]).await;
    let b = client_via(&nodes[5]).await;
    for i in 0..20 {
        let key = format!("{prefix}k{i}");
        a.set::<(), _, _>(&key, format!("v{i}"), None, None, false)
            .await
            .unwrap();
    }
    for i in 0..20 {
        let got: Option<String> = b.get(format!("{prefix}k{i}")).await.unwrap();
        assert_eq!(got.as_deref(), Some(format!("v{i}").as_str()));
    }
}

#[tokio::test]
async fn shared_cluster_has_three_masters_with_one_replica_each_and_refuses_chaos() {
    let r = redis().await;
    let info = r.command(0, &["CLUSTER", "INFO"]).unwrap();
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_size:3"), "{info}");
    assert_ne!(r.prefix(), r.prefix());
    let err = r.kill_master(0).unwrap_err().to_string();
    assert!(err.contains("RedisCluster::start()"), "{err}");
    // fred_config names every node.
    let client = connect(r.fred_config()).await;
    let pong: String = client.ping(None).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test]
async fn killed_master_is_replaced_by_its_replica_and_rejoins_as_replica() {
    let r = RedisCluster::start().await.unwrap();
    assert_eq!(r.masters().unwrap(), vec![0, 1, 2]);
    let replicas = r.replicas_of(0).unwrap();
    assert_eq!(replicas.len(), 1, "{:?}", r.roles().unwrap());
    let heir = replicas[0];

    r.kill_master(0).unwrap();
    r.wait_healthy().await.unwrap();
    let client = connect(r.fred_config()).await;
    let prefix = r.prefix();
    let roles = r.roles().unwrap();
    assert_eq!(roles[heir], Role::Master, "{roles:?}");
    assert_eq!(roles[0], Role::Down, "{roles:?}");

    // Every slot is writable again.
    for i in 0..50 {
        client
            .set::<(), _, _>(format!("{prefix}{i}"), i, None, None, false)
            .await
            .unwrap();
    }

    r.restart(0).await.unwrap();
    r.wait_healthy().await.unwrap();
    assert_eq!(r.roles().unwrap()[0], Role::Replica(heir));
}

#[tokio::test]
async fn stopped_cluster_starts_again_healthy() {
    let r = RedisCluster::start().await.unwrap();
    r.stop_all().unwrap();
    assert!(r.command(0, &["PING"]).is_err());
    r.start_all().await.unwrap();
    assert_eq!(r.masters().unwrap().len(), 3);
    let info = r.command(3, &["CLUSTER", "INFO"]).unwrap();
    assert!(info.contains("cluster_state:ok"), "{info}");
}
