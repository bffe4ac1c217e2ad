//! The reverse stream's slot: created at the cutover point, listed with the
//! WAL it retains, removed with everything dbtool created.

use dbtool_sync::reverse;

#[tokio::test]
async fn slot_starts_at_cutover_is_listed_and_drop_all_removes_it() -> anyhow::Result<()> {
    let db = dbtool_testkit::pg().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE keyed (id bigint PRIMARY KEY, v text);
             CREATE TABLE keyless (a text, b bigint);
             INSERT INTO keyed VALUES (1, 'before');",
        )
        .await?;
    let slot = reverse::slot_name(db.name(), None);
    let tables = vec![
        "\"public\".\"keyed\"".to_string(),
        "\"public\".\"keyless\"".to_string(),
    ];
    let lsn = reverse::start_at_cutover(&client, &slot, &tables).await?;
    assert!(lsn.contains('/'), "an LSN, got {lsn}");

    // The keyless table can now be updated (published tables need a replica
    // identity) and its updates carry the old row.
    let ident: String = client
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = 'keyless'::regclass",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(ident, "f");
    client
        .batch_execute("INSERT INTO keyless VALUES ('x', 1); UPDATE keyless SET b = 2;")
        .await?;

    let listed = reverse::slots(&client).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, slot);
    assert_eq!(listed[0].plugin, "pgoutput");
    assert!(listed[0].retained_bytes.unwrap_or(-1) >= 0);

    // Calling it again (a cutover retried) replaces the slot: one slot still.
    reverse::start_at_cutover(&client, &slot, &tables).await?;
    assert_eq!(reverse::slots(&client).await?.len(), 1);

    let dropped = reverse::drop_all(&client).await?;
    assert_eq!(dropped, vec![slot.clone()]);
    assert!(reverse::slots(&client).await?.is_empty());
    let pubs: i64 = client
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await?
        .get(0);
    assert_eq!(pubs, 0);
    let ident: String = client
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = 'keyless'::regclass",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(ident, "d", "replica identity restored");
    Ok(())
}

#[tokio::test]
async fn slot_names_without_the_dbtool_prefix_are_refused() -> anyhow::Result<()> {
    let db = dbtool_testkit::pg().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await?;
    let err = reverse::start_at_cutover(&client, "myslot", &["\"public\".\"t\"".into()])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("must start with \"dbtool_\""),
        "{err}"
    );
    assert!(reverse::slots(&client).await?.is_empty());
    Ok(())
}
