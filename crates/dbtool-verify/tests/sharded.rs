//! Sharded migrate + verify against four real Postgres servers: every row
//! lands on the shard the map names and the shards verify equal; a row
//! moved by hand to another shard is reported as `misplaced`, once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dbtool_migrate::run::{Options, Quiet};
use dbtool_migrate::shard::Sharding;
use dbtool_migrate::sharded::{migrate_sharded, Target};
use dbtool_shard::{Scheme, ShardMap};
use dbtool_testkit::{shared_shards as shards, TestDb};
use dbtool_verify::shard::verify_sharded;
use dbtool_verify::DiffKind;

/// The sample forums.db at scale 0.05 (one team, about 5k rows), plus two
/// small teams per shard of `map` (so every shard gets rows), and a team
/// whose id is empty with one wiki page and one tag (none can be routed).
fn source(dir: &Path, map: &ShardMap) -> PathBuf {
    let path = dir.join("forums.db");
    let mut o = dbtool_sample::Options::new(&path);
    o.scale = 0.05;
    dbtool_sample::generate(&o).expect("generate the sample");
    let c = rusqlite::Connection::open(&path).unwrap();
    // A WITHOUT ROWID table: its rows are found by key, not rowid.
    c.execute_batch(
        "CREATE TABLE team_tags (team_id TEXT NOT NULL, tag TEXT NOT NULL,
                                 PRIMARY KEY (team_id, tag)) WITHOUT ROWID;",
    )
    .unwrap();
    let mut per_shard: BTreeMap<String, usize> = BTreeMap::new();
    let mut k = 0;
    for i in 0u64.. {
        let team = format!("{i:08x}-5eed-4000-8000-{i:012x}");
        let n = per_shard
            .entry(map.shard_of(&team).unwrap().to_owned())
            .or_default();
        if *n == 2 {
            if per_shard.len() == 4 && per_shard.values().all(|&n| n == 2) {
                break;
            }
            continue;
        }
        *n += 1;
        k += 1;
        let id = 900_000 + k;
        c.execute_batch(&format!(
            "INSERT INTO teams (id, name, plan, created_at) VALUES ('{team}', 'team {k}', 'free', '2024-01-02T03:04:05Z');
             INSERT INTO users (id, team_id, email, display_name, is_admin, created_at, last_seen)
                  VALUES ({id}, '{team}', 'u{k}@example.com', 'user {k}', 1, '2024-01-02T03:04:05Z', 1704164645);
             INSERT INTO forums (id, team_id, name, position, created_at)
                  VALUES ({id}, '{team}', 'forum {k}', 0, '2024-01-02T03:04:05Z');
             INSERT INTO topics (id, team_id, forum_id, user_id, title, created_at, updated_at)
                  VALUES ({id}, '{team}', {id}, {id}, 'topic {k}', '2024-01-02T03:04:05Z', 1704164645000);
             INSERT INTO posts (team_id, topic_id, user_id, body, created_at)
                  VALUES ('{team}', {id}, {id}, 'first', '2024-01-02 03:04:05'),
                         ('{team}', {id}, {id}, 'second', '2024-01-02 03:04:06');
             INSERT INTO wiki_pages (id, team_id, slug, title, body, updated_at)
                  VALUES ({id}, '{team}', 'home', 'Home', 'hello', '2024-01-02T03:04:05.123Z');
             INSERT INTO team_tags VALUES ('{team}', 'a'), ('{team}', 'b');"
        ))
        .unwrap();
    }
    c.execute_batch(
        "INSERT INTO teams (id, name, plan, created_at) VALUES ('', 'nameless', 'free', '2024-01-02T03:04:05Z');
         INSERT INTO wiki_pages (id, team_id, slug, title, body, updated_at)
              VALUES (999999, '', 'lost', 'Lost', 'no team', '2024-01-02T03:04:05.000Z');
         INSERT INTO team_tags VALUES ('', 'lost');",
    )
    .unwrap();
    path
}

struct Fixture {
    _dir: tempfile::TempDir,
    dbs: Vec<TestDb>,
    targets: Vec<Target>,
    map: ShardMap,
    sharding: Sharding,
    source: PathBuf,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let map = ShardMap::even_n(Scheme::Buckets, 4).unwrap();
    let source = source(dir.path(), &map);
    let mut dbs = Vec::new();
    for c in shards().clusters() {
        dbs.push(c.fresh_db().await);
    }
    let targets = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| Target {
            name: format!("shard-{i}"),
            to: db.url().parse().unwrap(),
        })
        .collect();
    let sharding = Sharding {
        keys: [("teams".to_owned(), "id".to_owned())].into(),
        ..Sharding::default()
    };
    Fixture {
        _dir: dir,
        dbs,
        targets,
        map,
        sharding,
        source,
    }
}

async fn migrate(f: &Fixture) -> dbtool_migrate::sharded::ShardedReport {
    let mut opts = Options::new(&f.source, f.targets[0].to.clone());
    opts.jobs = Some(2);
    opts.rejects = Some(f._dir.path().join("rejects.jsonl"));
    migrate_sharded(
        opts,
        &f.targets,
        &f.map,
        &f.sharding,
        &Default::default(),
        &Quiet,
    )
    .await
    .expect("sharded migration")
}

async fn verify(f: &Fixture) -> dbtool_verify::shard::ShardedReport {
    let targets: Vec<dbtool_verify::shard::Target> = f
        .targets
        .iter()
        .map(|t| dbtool_verify::shard::Target {
            name: t.name.clone(),
            to: t.to.clone(),
        })
        .collect();
    let opts = dbtool_verify::Options::new(&f.source, "");
    verify_sharded(&opts, &targets, &f.map, &f.sharding)
        .await
        .expect("sharded verify runs")
}

fn source_count(f: &Fixture, table: &str) -> u64 {
    let c = rusqlite::Connection::open(&f.source).unwrap();
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as u64
}

#[tokio::test]
async fn sharded_migration_puts_each_row_on_its_teams_shard_and_verifies_equal(
) -> anyhow::Result<()> {
    let f = fixture().await;
    let report = migrate(&f).await;

    // The three unroutable rows are rejected exactly once, on the first shard.
    assert_eq!(report.exit_code, 3, "{}", report.render_summary());
    let rejected: Vec<u64> = report.shards.iter().map(|s| s.rows_rejected).collect();
    assert_eq!(rejected, [3, 0, 0, 0]);
    let rejects = std::fs::read_to_string(report.shards[0].rejects_file.as_ref().unwrap())?;
    let lines: Vec<serde_json::Value> = rejects
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 3, "{rejects}");
    let of = |t: &str| lines.iter().find(|l| l["table"] == t).unwrap();
    assert_eq!(of("teams")["column"], "id");
    assert_eq!(
        of("team_tags")["pk"],
        serde_json::json!({"team_id": "", "tag": "lost"})
    );
    let line = of("wiki_pages");
    assert_eq!(line["table"], "wiki_pages");
    assert_eq!(line["rowid"], 999_999);
    assert_eq!(line["column"], "team_id");
    assert_eq!(line["value"], "");
    assert!(
        line["reason"].as_str().unwrap().contains("team_id"),
        "{line}"
    );
    assert!(report.shards[1..].iter().all(|s| s.rejects_file.is_none()));

    // Keyed tables are split (every row once), settings are everywhere.
    let written = |table: &str| -> Vec<u64> {
        report
            .shards
            .iter()
            .map(|s| {
                s.tables
                    .iter()
                    .find(|t| t.source_name == table)
                    .unwrap()
                    .rows_written
            })
            .collect()
    };
    for (table, unroutable) in [
        ("teams", 1),
        ("users", 0),
        ("forums", 0),
        ("topics", 0),
        ("posts", 0),
        ("wiki_pages", 1),
        ("team_tags", 1),
    ] {
        let w = written(table);
        assert_eq!(
            w.iter().sum::<u64>(),
            source_count(&f, table) - unroutable,
            "{table}: {w:?}"
        );
        assert!(w.iter().all(|&n| n > 0), "{table}: {w:?}");
    }
    let settings = source_count(&f, "settings");
    assert_eq!(written("settings"), [settings; 4]);
    assert_eq!(report.rules["settings"], "every");
    assert_eq!(report.rules["teams"], "key id");

    // Every row is where the map says.
    for (i, db) in f.dbs.iter().enumerate() {
        let c = db.client().await;
        for (table, col) in [
            ("teams", "id"),
            ("posts", "team_id"),
            ("wiki_pages", "team_id"),
        ] {
            for r in c
                .query(&format!("SELECT DISTINCT {col}::text FROM {table}"), &[])
                .await?
            {
                let team: String = r.get(0);
                assert_eq!(
                    f.map.shard_of(&team)?,
                    format!("shard-{i}"),
                    "{table} {team}"
                );
            }
        }
    }

    let v = verify(&f).await;
    let mut text = Vec::new();
    v.write_summary(&mut text)?;
    let text = String::from_utf8(text)?;
    assert!(v.is_equal(), "{text}");
    assert_eq!(v.exit_code(), 0);
    assert!(v.misplaced.is_empty());
    // The rejected row is listed as rejected on the first shard only.
    let rejected: Vec<usize> = v
        .shards
        .iter()
        .map(|s| {
            s.report
                .diffs
                .iter()
                .filter(|d| d.kind == DiffKind::Rejected)
                .count()
        })
        .collect();
    assert_eq!(rejected, [3, 0, 0, 0], "{text}");
    Ok(())
}

#[tokio::test]
async fn a_row_moved_to_another_shard_is_reported_misplaced() -> anyhow::Result<()> {
    let f = fixture().await;
    migrate(&f).await;
    // Move one wiki page of a shard-1 team to shard-3, by hand.
    let from = f.dbs[1].client().await;
    let to = f.dbs[3].client().await;
    let row = from
        .query_one(
            "SELECT id::bigint, team_id::text, row_to_json(w)::text FROM wiki_pages w ORDER BY id LIMIT 1",
            &[],
        )
        .await?;
    let (id, team, json): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
    // The FK to teams would refuse it (the team is not on shard-3): a
    // hand-made mistake goes around it.
    to.batch_execute("SET session_replication_role = replica")
        .await?;
    to.execute(
        "INSERT INTO wiki_pages SELECT * FROM json_populate_record(NULL::wiki_pages, $1::text::json)",
        &[&json],
    )
    .await?;
    from.execute("DELETE FROM wiki_pages WHERE id = $1", &[&id])
        .await?;

    let v = verify(&f).await;
    let mut text = Vec::new();
    v.write_summary(&mut text)?;
    let text = String::from_utf8(text)?;
    assert_eq!(v.exit_code(), 1, "{text}");
    assert_eq!(
        v.misplaced,
        [dbtool_verify::shard::Misplaced {
            table: "wiki_pages".into(),
            pk: serde_json::json!({ "id": id }),
            key: Some(team.clone()),
            found_on: "shard-3".into(),
            expected: "shard-1".into(),
        }],
        "{text}"
    );
    // One difference, not a missing row plus an extra one.
    let differences: Vec<(&str, DiffKind)> = v
        .shards
        .iter()
        .flat_map(|s| {
            s.report
                .diffs
                .iter()
                .filter(|d| d.kind != DiffKind::Rejected)
                .map(move |d| (s.shard.as_str(), d.kind))
        })
        .collect();
    assert_eq!(differences, [("shard-3", DiffKind::Misplaced)], "{text}");
    let wiki = |s: usize| {
        v.shards[s]
            .report
            .tables
            .iter()
            .find(|t| t.table == "wiki_pages")
            .unwrap()
            .clone()
    };
    assert_eq!((wiki(3).misplaced, wiki(3).extra), (1, 0));
    assert_eq!(wiki(1).missing, 0);
    assert!(
        text.contains("found on shard-3, belongs on shard-1"),
        "{text}"
    );
    Ok(())
}

#[allow(dead_code)]
fn _report_is_shareable(r: Arc<dbtool_verify::shard::ShardedReport>) -> impl Send + Sync {
    r
}
