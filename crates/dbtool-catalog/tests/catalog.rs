//! dbtool's own tables against a real Postgres: the migrations runner and
//! the typed access to runs, checkpoints and rejects.

use dbtool_catalog::checkpoints::{self, Advance, ChunkSpec, Key, KeyKind, TableCounts};
use dbtool_catalog::rejects::{self, PendingReject, Reject, RejectAction};
use dbtool_catalog::runs::{self, Fingerprint, Status};

fn fingerprint() -> Fingerprint {
    Fingerprint {
        size: 4096,
        mtime_ns: 1,
        change_counter: 2,
        schema_cookie: 3,
        wal: None,
    }
}

#[tokio::test]
async fn every_migration_file_is_applied_once_into_the_dbtool_schema() -> anyhow::Result<()> {
    let db = dbtool_testkit::pg().await;
    let target: dbtool_pool::Target = db.url().parse()?;
    let client = db.client().await;
    assert!(!dbtool_catalog::exists(&client).await?);
    // Concurrent callers serialize on the migrator's advisory lock.
    let (a, b) = tokio::join!(
        dbtool_catalog::migrate(&target),
        dbtool_catalog::migrate(&target)
    );
    a?;
    b?;
    dbtool_catalog::migrate(&target).await?;
    assert!(dbtool_catalog::exists(&client).await?);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations"))?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "sql"))
        .count();
    let applied: i64 = client
        .query_one(
            "SELECT count(*) FROM dbtool._sqlx_migrations WHERE success",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(applied, files as i64);
    assert_eq!(dbtool_catalog::MIGRATOR.iter().count(), files);
    let in_public: bool = client
        .query_one(
            "SELECT to_regclass('public._sqlx_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    assert!(!in_public, "the history table must stay out of public");
    Ok(())
}

#[tokio::test]
async fn a_run_round_trips_through_runs_checkpoints_and_rejects() -> anyhow::Result<()> {
    let db = dbtool_testkit::pg().await;
    let target: dbtool_pool::Target = db.url().parse()?;
    dbtool_catalog::migrate(&target).await?;
    let client = db.client().await;
    let plan = serde_json::json!({"tables": []});
    let id = runs::create_run(
        &client,
        "/data/a.db",
        &fingerprint(),
        "app",
        &plan,
        &serde_json::json!({}),
    )
    .await?;
    let rec = runs::find_unfinished(&client, "/data/a.db", "app")
        .await?
        .expect("the new run is unfinished");
    assert_eq!(
        (rec.id, rec.status, rec.fingerprint, rec.schema.as_str()),
        (id, Status::Loading, fingerprint(), "app")
    );
    assert!(runs::any(&client, "/data/a.db", "app").await?);
    assert!(!runs::any(&client, "/data/b.db", "app").await?);

    let spec = ChunkSpec {
        table: "posts".into(),
        chunk: 0,
        range: Some((1, 100)),
    };
    checkpoints::insert_table(
        &client,
        id,
        "posts",
        "posts",
        KeyKind::Rowid,
        std::slice::from_ref(&spec),
    )
    .await?;
    let adv = Advance {
        last_key: Some(Key::Rowid(100)),
        rows_read: 100,
        rows_written: 98,
        rows_rejected: 1,
        rows_nulled: 1,
        elapsed_ms: 5,
        done: true,
    };
    checkpoints::advance(&client, id, "posts", 0, &adv).await?;
    let reject = |rowid: i64, action| Reject {
        table: "posts".into(),
        rowid: Some(rowid),
        pk: None,
        column: "body".into(),
        reason: "text contains NUL".into(),
        value: serde_json::json!({"base64": "AA=="}),
        action,
    };
    rejects::insert_rejects(
        &client,
        id,
        0,
        &[
            PendingReject {
                ordinal: 7,
                reject: reject(7, RejectAction::Nulled),
            },
            PendingReject {
                ordinal: 3,
                reject: reject(3, RejectAction::Rejected),
            },
        ],
    )
    .await?;
    checkpoints::set_watermark(&client, id, "posts", Some(&Key::Rowid(100))).await?;

    let chunks = checkpoints::chunks(&client, id).await?;
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].spec, spec);
    assert_eq!(chunks[0].last_key, Some(Key::Rowid(100)));
    assert_eq!(
        (chunks[0].rows_read, chunks[0].rows_written, chunks[0].done),
        (100, 98, true)
    );
    assert_eq!(
        rejects::rejects(&client, id).await?,
        vec![
            reject(3, RejectAction::Rejected),
            reject(7, RejectAction::Nulled)
        ],
        "in chunk and row order"
    );
    assert_eq!(
        checkpoints::table_counts(&client, id).await?,
        vec![TableCounts {
            table: "posts".into(),
            rows_read: 100,
            rows_written: 98,
            rows_rejected: 1,
            rows_nulled: 1,
        }]
    );
    assert_eq!(
        checkpoints::watermarks(&client, id).await?,
        vec![("posts".to_string(), serde_json::json!({"rowid": 100}))]
    );

    // Not done yet: verify's "latest completed run" does not see it.
    assert!(runs::latest_done(&client, None, "/data/a.db")
        .await?
        .is_none());
    runs::set_status(&client, id, Status::Done).await?;
    runs::store_report(&client, id, &serde_json::json!({"exit_code": 0})).await?;
    let done = runs::latest_done(&client, Some("app"), "/elsewhere.db")
        .await?
        .expect("a completed run into app");
    assert_eq!(
        (done.id, done.schema.as_str(), &done.plan),
        (id, "app", &plan)
    );
    assert!(runs::latest_done(&client, Some("other"), "/data/a.db")
        .await?
        .is_none());
    let (lid, status, fp, report) = runs::latest(&client, "/data/a.db", "app")
        .await?
        .expect("the run");
    assert_eq!(
        (lid, status, fp, report),
        (
            id,
            Status::Done,
            fingerprint(),
            Some(serde_json::json!({"exit_code": 0}))
        )
    );
    assert_eq!(runs::plan(&client, id).await?, Some(plan));
    assert_eq!(runs::plan(&client, id + 1).await?, None);
    assert!(runs::find_unfinished(&client, "/data/a.db", "app")
        .await?
        .is_none());
    Ok(())
}
