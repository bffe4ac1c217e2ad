//! A table whose SQLite primary key holds NULLs (planned as a UNIQUE
//! constraint, since Postgres forbids NULLs in a primary key) verifies equal
//! after a clean migration, and a changed value is found on a row whose key
//! is NULL as well as on a row whose key is not.

use dbtool_verify::{DiffKind, Method, Options};

#[tokio::test]
async fn a_primary_key_holding_nulls_is_compared_as_a_multiset() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("nullkey.db");
    let c = rusqlite::Connection::open(&source).unwrap();
    c.execute_batch(
        "CREATE TABLE codes (code TEXT PRIMARY KEY, v INTEGER);
         INSERT INTO codes VALUES (NULL, 1), (NULL, 2), (NULL, 3), ('a', 10), ('b', 20);",
    )
    .unwrap();
    drop(c);
    let db = dbtool_testkit::pg().await;
    let opts = dbtool_migrate::run::Options::new(&source, db.url().parse().unwrap());
    let outcome = dbtool_migrate::run::migrate(
        opts,
        &dbtool_migrate::Config::default(),
        &dbtool_migrate::run::Quiet,
    )
    .await
    .expect("migration runs");
    assert_eq!(outcome.exit_code, 0);

    let verify = || async {
        dbtool_verify::verify(&Options::new(&source, db.url()))
            .await
            .expect("verify runs")
    };
    let r = verify().await;
    assert!(r.is_equal(), "{r:#?}");
    assert_eq!(r.exit_code(), 0);
    let t = &r.tables[0];
    assert_eq!(
        (t.method, t.rows_compared, t.equal),
        (Method::Multiset, 5, 5)
    );

    db.client()
        .await
        .batch_execute(
            "UPDATE codes SET v = 22 WHERE code IS NULL AND v = 2;
             UPDATE codes SET v = 11 WHERE code = 'a';",
        )
        .await
        .unwrap();
    let r = verify().await;
    assert_eq!(r.exit_code(), 1);
    let mut found: Vec<(DiffKind, serde_json::Value)> = r
        .diffs
        .iter()
        .map(|d| (d.kind, d.row.clone().unwrap()))
        .collect();
    found.sort_by_key(|(k, row)| (*k as u8, row.to_string()));
    assert_eq!(
        found,
        vec![
            (DiffKind::Missing, serde_json::json!({"code": "a", "v": 10})),
            (DiffKind::Missing, serde_json::json!({"code": null, "v": 2})),
            (DiffKind::Extra, serde_json::json!({"code": "a", "v": 11})),
            (DiffKind::Extra, serde_json::json!({"code": null, "v": 22})),
        ]
    );
    let t = &r.tables[0];
    assert_eq!((t.missing, t.extra, t.changed), (2, 2, 0));
}
