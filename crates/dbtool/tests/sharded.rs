//! `dbtool migrate --shards` and `dbtool verify --shards` through the binary,
//! against four real Postgres servers: a sharded migration killed with
//! SIGKILL resumes on a re-run and verifies equal; a row moved to the wrong
//! shard makes verify exit 1 naming it `misplaced`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use dbtool_shard::{Scheme, ShardMap};
use dbtool_testkit::shared_shards as shards;

use common::{dbtool, run, text};

/// The sample at scale 0.05 (one team) plus two small teams per shard.
fn source(dir: &Path, map: &ShardMap) -> PathBuf {
    let path = dir.join("forums.db");
    let mut o = dbtool_sample::Options::new(&path);
    o.scale = 0.05;
    dbtool_sample::generate(&o).expect("generate the sample");
    let c = rusqlite::Connection::open(&path).unwrap();
    let mut per_shard: BTreeMap<String, usize> = BTreeMap::new();
    let mut k = 0;
    for i in 0u64.. {
        if per_shard.len() == 4 && per_shard.values().all(|&n| n == 2) {
            break;
        }
        let team = format!("{i:08x}-c1c1-4000-8000-{i:012x}");
        let n = per_shard
            .entry(map.shard_of(&team).unwrap().to_owned())
            .or_default();
        if *n == 2 {
            continue;
        }
        *n += 1;
        k += 1;
        let id = 800_000 + k;
        c.execute_batch(&format!(
            "INSERT INTO teams (id, name, plan, created_at) VALUES ('{team}', 'team {k}', 'free', '2024-01-02T03:04:05Z');
             INSERT INTO forums (id, team_id, name, position, created_at)
                  VALUES ({id}, '{team}', 'forum {k}', 0, '2024-01-02T03:04:05Z');
             INSERT INTO wiki_pages (id, team_id, slug, title, body, updated_at)
                  VALUES ({id}, '{team}', 'home', 'Home', 'hello', '2024-01-02T03:04:05.123Z');"
        ))
        .unwrap();
    }
    path
}

async fn count(db: &dbtool_testkit::TestDb, sql: &str) -> i64 {
    let c = db.client().await;
    // Before the run creates its tables, there is nothing to count.
    match c.query_one(sql, &[]).await {
        Ok(r) => r.get(0),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn sharded_migrate_killed_resumes_and_verify_finds_a_misplaced_row() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let map = ShardMap::even_n(Scheme::Buckets, 4)?;
    let src = source(dir.path(), &map);
    let mut dbs = Vec::new();
    for c in shards().clusters() {
        dbs.push(c.fresh_db().await);
    }
    let mut toml = String::from("[migrate.sharding]\nkeys = { teams = \"id\" }\n\n");
    for (i, db) in dbs.iter().enumerate() {
        toml.push_str(&format!(
            "[[shard.shards]]\nname = \"shard-{i}\"\nprimary = \"{}\"\n\n",
            db.url()
        ));
    }
    let config = dir.path().join("shards.toml");
    std::fs::write(&config, toml)?;
    let (src_s, config_s) = (src.to_str().unwrap(), config.to_str().unwrap());
    let migrate = [
        "migrate",
        "--from",
        src_s,
        "--shards",
        config_s,
        "--batch-rows",
        "10",
        "--jobs",
        "1",
    ];

    // Kill it once the shard of the sample's (big) team has committed
    // batches: shards migrate in order, so the ones before it are done.
    let big_team: String = rusqlite::Connection::open(&src)?.query_row(
        "SELECT team_id FROM posts GROUP BY team_id ORDER BY count(*) DESC LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    let big: usize = map
        .shard_of(&big_team)?
        .trim_start_matches("shard-")
        .parse()?;
    let mut child = dbtool(dir.path())
        .args(migrate)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let start = Instant::now();
    while count(
        &dbs[big],
        "SELECT count(*) FROM dbtool.checkpoints WHERE rows_read > 0",
    )
    .await
        == 0
    {
        assert!(
            child.try_wait()?.is_none(),
            "the migration ended before the kill"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no progress on shard-{big}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill()?; // SIGKILL
    child.wait()?;
    let done = |i: usize| {
        count(
            &dbs[i],
            "SELECT count(*) FROM dbtool.runs WHERE status = 'done'",
        )
    };
    for i in 0..big {
        assert_eq!(
            done(i).await,
            1,
            "shard-{i} finished before shard-{big} started"
        );
    }
    assert_eq!(
        done(big).await,
        0,
        "the kill came after shard-{big} finished"
    );

    let mut resume = migrate.to_vec();
    resume.push("--resume");
    let again = run(dir.path(), &resume);
    let out = text(&again);
    assert_eq!(again.status.code(), Some(0), "{out}");
    if big > 0 {
        assert!(
            out.contains("shard shard-0") && out.contains("already migrated"),
            "{out}"
        );
    }
    assert!(out.contains("resuming run"), "{out}");
    for i in 0..4 {
        assert_eq!(done(i).await, 1, "shard-{i}: {out}");
    }

    // Once more: every shard is left as it is, even one whose stored report
    // this version cannot read (its counts come from the checkpoints).
    dbs[3]
        .client()
        .await
        .batch_execute("UPDATE dbtool.runs SET report = '{\"from\": \"another version\"}'")
        .await?;
    let third = run(dir.path(), &migrate);
    let out = text(&third);
    assert_eq!(third.status.code(), Some(0), "{out}");
    assert_eq!(out.matches("already migrated by run").count(), 4, "{out}");
    let shard3 = out
        .lines()
        .find(|l| l.starts_with("shard-3 "))
        .unwrap_or("");
    assert!(shard3.contains("already migrated"), "{out}");
    let written: u64 = shard3.split_whitespace().nth(2).unwrap_or("0").parse()?;
    assert!(written > 0, "{out}");

    let report = dir.path().join("verify.json");
    let verify = [
        "verify",
        "--from",
        src_s,
        "--shards",
        config_s,
        "--report",
        report.to_str().unwrap(),
    ];
    let v = run(dir.path(), &verify);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    assert!(text(&v).contains("4 shards: EQUAL"), "{}", text(&v));

    // Move a forum of a shard-2 team to shard-0 by hand (one of the added
    // teams', which no topic references).
    let from = dbs[2].client().await;
    let to = dbs[0].client().await;
    let row = from
        .query_one(
            "SELECT id::bigint, row_to_json(f)::text FROM forums f ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?;
    let (id, json): (i64, String) = (row.get(0), row.get(1));
    to.batch_execute("SET session_replication_role = replica")
        .await?;
    to.execute(
        "INSERT INTO forums SELECT * FROM json_populate_record(NULL::forums, $1::text::json)",
        &[&json],
    )
    .await?;
    from.execute("DELETE FROM forums WHERE id = $1", &[&id])
        .await?;

    let v = run(dir.path(), &verify);
    let out = text(&v);
    assert_eq!(v.status.code(), Some(1), "{out}");
    assert!(out.contains("4 shards: DIFFERENT"), "{out}");
    assert!(
        out.contains(&format!("forums Misplaced pk={{\"id\":{id}}}")),
        "{out}"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    assert_eq!(json["misplaced"][0]["found_on"], "shard-0", "{json}");
    assert_eq!(json["misplaced"][0]["expected"], "shard-2", "{json}");
    assert_eq!(json["misplaced"].as_array().unwrap().len(), 1, "{json}");
    Ok(())
}

#[test]
fn shards_and_to_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["migrate", "verify"] {
        let out = run(
            dir.path(),
            &[
                cmd,
                "--from",
                "x.db",
                "--to",
                "postgres://h/db",
                "--shards",
                "s.toml",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out));
    }
}

#[test]
fn a_shards_file_without_shards_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.toml"), "[shard]\n").unwrap();
    std::fs::write(dir.path().join("x.db"), "").unwrap();
    let out = run(
        dir.path(),
        &["migrate", "--from", "x.db", "--shards", "empty.toml"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("empty.toml") && text(&out).contains("[[shard.shards]]"),
        "{}",
        text(&out)
    );
}

#[test]
fn snapshot_is_refused_with_shards() {
    let dir = tempfile::tempdir().unwrap();
    // A real source, so the refusal checked is the option's, not a missing file's.
    rusqlite::Connection::open(dir.path().join("x.db"))
        .unwrap()
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .unwrap();
    std::fs::write(
        dir.path().join("s.toml"),
        "[[shard.shards]]\nname = \"a\"\nprimary = \"postgres://u:s3cret@127.0.0.1:1/db\"\n",
    )
    .unwrap();
    let out = run(
        dir.path(),
        &[
            "migrate",
            "--from",
            "x.db",
            "--shards",
            "s.toml",
            "--snapshot",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--snapshot is not supported with --shards"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("s3cret"), "{}", text(&out));
}

#[test]
fn shard_route_prints_the_shard_the_map_names() {
    let dir = tempfile::tempdir().unwrap();
    let map = ShardMap::even_n(Scheme::Buckets, 4).unwrap();
    let teams: Vec<String> = (0..50u32)
        .map(|i| {
            format!(
                "{:08x}-0000-4000-8000-{:012x}",
                i.wrapping_mul(2_654_435_761),
                i
            )
        })
        .collect();
    let mut args = vec!["shard", "route", "--shards", "4"];
    args.extend(teams.iter().map(String::as_str));
    let out = run(dir.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let want: String = teams
        .iter()
        .map(|t| format!("{t} {}\n", map.shard_of(t).unwrap()))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);

    // The app's scheme: parseInt("0000000a", 16) % 4 == 2; "" cannot be routed.
    let out = run(
        dir.path(),
        &[
            "shard",
            "route",
            "--scheme",
            "hex8-modulo",
            "--shards",
            "4",
            "0000000a-1111-4222-8333-444455556666",
            "",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0000000a-1111-4222-8333-444455556666 shard-2\n"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot route team id \"\""),
        "{}",
        text(&out)
    );
}

#[test]
fn shard_map_lists_the_bucket_ranges_of_each_shard() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["shard", "map", "--shards", "4"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (shard, range) in [
        ("shard-0", "0-1023"),
        ("shard-1", "1024-2047"),
        ("shard-2", "2048-3071"),
        ("shard-3", "3072-4095"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(shard) && l.contains(range)),
            "{shard} {range}:\n{stdout}"
        );
    }
}
