//! The generator: plans row counts from the scale, then writes every table in one
//! transaction with prepared statements.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::{params, types::Value, Connection};

use crate::{schema, text, Error, Options, Summary, TableRows};

/// 2019-01-01T00:00:00Z: the forum opens.
const START: i64 = 1_546_300_800;
/// 2025-01-01T00:00:00Z: the snapshot is taken. Fixed, not "now": the file must not
/// depend on when it is generated.
const END: i64 = 1_735_689_600;
const SPAN: i64 = END - START;

/// Rows per table at a scale.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counts {
    teams: u64,
    users: u64,
    forums: u64,
    topics: u64,
    posts: u64,
    wiki_pages: u64,
    settings: u64,
}

impl Counts {
    pub(crate) fn new(scale: f64) -> Result<Self, Error> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::Scale { scale });
        }
        let n = |base: f64| ((base * scale).round() as u64).max(1);
        let teams = n(20.0);
        Ok(Self {
            teams,
            // Every team gets at least one user and one forum.
            users: n(2_000.0).max(teams),
            forums: n(200.0).max(teams),
            topics: n(8_000.0),
            posts: n(88_000.0),
            wiki_pages: n(1_500.0),
            settings: SETTINGS_SECTIONS.len() as u64 * SETTINGS_KEYS.len() as u64,
        })
    }

    pub(crate) fn tables(&self) -> Vec<TableRows> {
        let rows = [
            self.teams,
            self.users,
            self.forums,
            self.topics,
            self.posts,
            self.wiki_pages,
            self.settings,
        ];
        schema::TABLE_NAMES
            .iter()
            .zip(rows)
            .map(|(&table, rows)| TableRows { table, rows })
            .collect()
    }
}

struct Topic {
    team: usize,
    forum: i64,
    user: Option<i64>,
    created: i64,
}

/// Writes a sample forums.db as described by `options`.
///
/// The file is written next to `out` under a `.partial` name and renamed into place
/// at the end, so an interrupted run never leaves a half-written `out`.
pub fn generate(options: &Options) -> Result<Summary, Error> {
    let started = Instant::now();
    let counts = Counts::new(options.scale)?;
    let out = &options.out;
    if out.exists() && !options.overwrite {
        return Err(Error::Exists { path: out.clone() });
    }
    let partial = partial_path(out);
    remove_if_exists(&partial)?;

    let sqlite = |source| Error::Sqlite {
        path: out.clone(),
        source,
    };
    let mut conn = Connection::open(&partial).map_err(sqlite)?;
    write_all(&mut conn, &counts, options.seed).map_err(sqlite)?;
    conn.close().map_err(|(_, e)| sqlite(e))?;

    std::fs::rename(&partial, out).map_err(|source| Error::Io {
        path: out.clone(),
        source,
    })?;
    let bytes = std::fs::metadata(out)
        .map_err(|source| Error::Io {
            path: out.clone(),
            source,
        })?
        .len();
    Ok(Summary {
        path: out.clone(),
        tables: counts.tables(),
        bytes,
        elapsed: started.elapsed(),
    })
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// One random stream per table, so a change to one table's generator leaves the
/// others' rows as they were.
fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// A team index, skewed: a few big teams, many small ones (team 0 holds about
/// `1/sqrt(teams)` of the rows), as in any multi-tenant app, and what a shard
/// router has to cope with.
fn pick_team(rng: &mut ChaCha8Rng, teams: usize) -> usize {
    let u: f64 = rng.random();
    ((u * u * teams as f64) as usize).min(teams - 1)
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// The next id of an AUTOINCREMENT table: mostly +1, sometimes a gap (deleted rows).
fn next_id(rng: &mut ChaCha8Rng, id: &mut i64, gap_percent: u32) {
    *id += 1;
    if rng.random_ratio(gap_percent, 100) {
        *id += rng.random_range(1..=4);
    }
}

fn iso(buf: &mut String, t: i64) {
    buf.clear();
    let dt = chrono::DateTime::from_timestamp(t, 0).unwrap_or_default();
    let _ = write!(buf, "{}", dt.format("%Y-%m-%dT%H:%M:%SZ"));
}

fn iso_millis(buf: &mut String, t: i64, ms: u32) {
    buf.clear();
    let dt = chrono::DateTime::from_timestamp(t, ms * 1_000_000).unwrap_or_default();
    let _ = write!(buf, "{}", dt.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
}

fn sqlite_ts(buf: &mut String, t: i64) {
    buf.clear();
    let dt = chrono::DateTime::from_timestamp(t, 0).unwrap_or_default();
    let _ = write!(buf, "{}", dt.format("%Y-%m-%d %H:%M:%S"));
}

const TEAM_ADJ: &[&str] = &[
    "Blue",
    "Quiet",
    "Rapid",
    "Golden",
    "Northern",
    "Little",
    "Brave",
    "Crimson",
    "Lucky",
    "Électrique",
    "Grüne",
    "Sakura",
    "Zen",
    "Midnight",
    "Open",
    "Silver",
];
const TEAM_NOUN: &[&str] = &[
    "Otters",
    "Labs",
    "Works",
    "Collective",
    "Guild",
    "Studio",
    "Foundry",
    "Garage",
    "Crew",
    "Société",
    "Kollektiv",
    "工房",
    "Club",
    "Systems",
    "Makers",
    "Co-op",
];
const PLANS: &[&str] = &[
    "free",
    "free",
    "free",
    "team",
    "team",
    "business",
    "enterprise",
];
const FORUM_NAMES: &[&str] = &[
    "General",
    "Announcements",
    "Help & Support",
    "Off-topic 🎲",
    "Engineering",
    "Design",
    "Feedback",
    "Jobs",
    "Café ☕",
    "Releases",
    "Show & tell",
    "Random",
    "Ideas",
    "Bugs 🐛",
];
const SETTINGS_SECTIONS: &[&str] = &[
    "site", "mail", "uploads", "search", "auth", "billing", "feature", "limits",
];
const SETTINGS_KEYS: &[&str] = &["enabled", "max_size", "name", "ratio", "retention_days"];

fn write_all(conn: &mut Connection, c: &Counts, seed: u64) -> rusqlite::Result<()> {
    // The file is disposable until renamed into place: no journal, no fsync.
    conn.execute_batch(
        "PRAGMA journal_mode = OFF;
         PRAGMA synchronous = OFF;
         PRAGMA locking_mode = EXCLUSIVE;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -131072;
         PRAGMA foreign_keys = OFF;",
    )?;
    conn.execute_batch(schema::TABLES)?;
    let tx = conn.transaction()?;
    let mut ts = String::new();
    let mut ts2 = String::new();
    let mut txt = String::new();
    let mut txt2 = String::new();

    // teams: created during the two years before the forum software was adopted.
    let mut rng = rng_for(seed, 1);
    let n_teams = c.teams as usize;
    let mut team_ids = Vec::with_capacity(n_teams);
    let mut team_created = Vec::with_capacity(n_teams);
    {
        let mut st =
            tx.prepare("INSERT INTO teams (id, name, plan, created_at) VALUES (?1, ?2, ?3, ?4)")?;
        for i in 0..n_teams {
            let id = uuid::Builder::from_random_bytes(rng.random())
                .into_uuid()
                .to_string();
            txt.clear();
            let _ = write!(
                txt,
                "{} {}",
                pick(&mut rng, TEAM_ADJ),
                pick(&mut rng, TEAM_NOUN)
            );
            if i >= TEAM_ADJ.len() {
                let _ = write!(txt, " {}", i + 1);
            }
            let created = START - 2 * 365 * 86_400 + rng.random_range(0..2 * 365 * 86_400);
            iso(&mut ts, created);
            st.execute(params![id, txt, pick(&mut rng, PLANS), ts])?;
            team_ids.push(id);
            team_created.push(created);
        }
    }

    // users: spread over the whole span; the first user of each team is its admin.
    let mut rng = rng_for(seed, 2);
    let mut team_users: Vec<Vec<i64>> = vec![Vec::new(); n_teams];
    {
        let mut st = tx.prepare(
            "INSERT INTO users (id, team_id, email, display_name, is_admin, created_at, last_seen, avatar)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut id = 0i64;
        let mut avatar = Vec::new();
        let n = c.users as i64;
        for i in 0..n {
            next_id(&mut rng, &mut id, 3);
            let team = if (i as usize) < n_teams {
                i as usize
            } else {
                pick_team(&mut rng, n_teams)
            };
            let created =
                (START + SPAN * i / n).max(team_created[team]) + rng.random_range(0..3_600);
            iso(&mut ts, created);
            let email = format!("user{id}@t{team}.example.com");
            text::display_name(&mut rng, &mut txt);
            let is_admin = (i as usize) < n_teams || rng.random_ratio(3, 100);
            let last_seen = (!rng.random_ratio(4, 100))
                .then(|| created + rng.random_range(0..=(END - created).max(1)));
            let avatar = if rng.random_ratio(35, 100) {
                avatar.clear();
                avatar.extend_from_slice(b"\x89PNG\r\n\x1a\n");
                let len = rng.random_range(200..4_000);
                avatar.extend((0..len).map(|_| rng.random::<u8>()));
                Some(avatar.as_slice())
            } else {
                None
            };
            st.execute(params![
                id,
                team_ids[team],
                email,
                txt,
                is_admin,
                ts,
                last_seen,
                avatar
            ])?;
            team_users[team].push(id);
        }
    }

    // forums: spread evenly over teams, 10 each at the default ratio.
    let mut rng = rng_for(seed, 3);
    let mut team_forums: Vec<Vec<i64>> = vec![Vec::new(); n_teams];
    {
        let mut st = tx.prepare(
            "INSERT INTO forums (id, team_id, name, description, position, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let n = c.forums as usize;
        for i in 0..n {
            let team = i % n_teams;
            let position = team_forums[team].len() as i64;
            let id = i as i64 + 1;
            let name = FORUM_NAMES[position as usize % FORUM_NAMES.len()];
            let description = if rng.random_ratio(7, 10) {
                txt.clear();
                text::sentence(&mut rng, &mut txt, 3, 12);
                Some(txt.as_str())
            } else {
                None
            };
            iso(
                &mut ts,
                team_created[team] + position * 86_400 + rng.random_range(0..86_400),
            );
            st.execute(params![id, team_ids[team], name, description, position, ts])?;
            team_forums[team].push(id);
        }
    }

    // topics: planned now (posts need them), inserted after the posts so that
    // updated_at can be the time of the last post.
    let mut rng = rng_for(seed, 4);
    let n_topics = c.topics as i64;
    let step = (SPAN / n_topics).max(1);
    let topics: Vec<Topic> = (0..n_topics)
        .map(|i| {
            let team = pick_team(&mut rng, n_teams);
            let forum = pick(&mut rng, &team_forums[team]);
            let user = (!rng.random_ratio(1, 100)).then(|| pick(&mut rng, &team_users[team]));
            Topic {
                team,
                forum,
                user,
                created: START + SPAN * i / n_topics + rng.random_range(0..step),
            }
        })
        .collect();
    let mut last_activity: Vec<i64> = topics.iter().map(|t| t.created).collect();

    // posts: ids in time order; each goes to a topic that exists by then, mostly a
    // recent one.
    let mut rng = rng_for(seed, 5);
    {
        let mut st = tx.prepare(
            "INSERT INTO posts (id, team_id, topic_id, user_id, body, created_at, edited_at, score)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let n = c.posts as i64;
        let step = (SPAN / n).max(1);
        let mut id = 0i64;
        for i in 0..n {
            next_id(&mut rng, &mut id, 2);
            let mut t = START + SPAN * i / n + rng.random_range(0..step);
            let open = topics.partition_point(|tp| tp.created <= t);
            let j = if open == 0 {
                t = topics[0].created + rng.random_range(60..3_600);
                0
            } else {
                let u: f64 = rng.random();
                open - 1 - ((u * u * u * open as f64) as usize).min(open - 1)
            };
            let topic = &topics[j];
            last_activity[j] = last_activity[j].max(t);
            let user = (!rng.random_ratio(1, 200)).then(|| pick(&mut rng, &team_users[topic.team]));
            text::post(&mut rng, &mut txt);
            sqlite_ts(&mut ts, t);
            let edited = rng.random_ratio(8, 100).then(|| {
                sqlite_ts(&mut ts2, t + rng.random_range(30..3 * 86_400));
                ts2.as_str()
            });
            let score = if rng.random_ratio(3, 10) {
                0.0
            } else {
                rng.random::<f64>() * 20.0 - 3.0
            };
            st.execute(params![
                id,
                team_ids[topic.team],
                j as i64 + 1,
                user,
                txt,
                ts,
                edited,
                score
            ])?;
        }
    }

    let mut rng = rng_for(seed, 6);
    {
        let mut st = tx.prepare(
            "INSERT INTO topics (id, team_id, forum_id, user_id, title, created_at, updated_at, pinned, view_count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for (j, topic) in topics.iter().enumerate() {
            text::title(&mut rng, &mut txt);
            iso(&mut ts, topic.created);
            let updated_ms = last_activity[j] * 1_000 + rng.random_range(0..1_000);
            let pinned = rng.random_ratio(2, 100);
            let u: f64 = rng.random();
            let views = (3.0 / (1.0 - u * 0.9999).powf(1.2)) as i64;
            st.execute(params![
                j as i64 + 1,
                team_ids[topic.team],
                topic.forum,
                topic.user,
                txt,
                ts,
                updated_ms,
                pinned,
                views
            ])?;
        }
    }

    // wiki_pages: long Markdown bodies, a slug unique per team.
    let mut rng = rng_for(seed, 7);
    {
        let mut st = tx.prepare(
            "INSERT INTO wiki_pages (id, team_id, slug, title, body, revision, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for i in 0..c.wiki_pages as i64 {
            let id = i + 1;
            let team = pick_team(&mut rng, n_teams);
            let slug = format!(
                "{}-{}-{id}",
                text::slug_word(&mut rng),
                text::slug_word(&mut rng)
            );
            text::title(&mut rng, &mut txt2);
            text::wiki(&mut rng, &txt2, &mut txt);
            let u: f64 = rng.random();
            let revision = 1 + (u * u * u * 60.0) as i64;
            iso_millis(
                &mut ts,
                START + rng.random_range(0..SPAN),
                rng.random_range(0..1_000),
            );
            st.execute(params![id, team_ids[team], slug, txt2, txt, revision, ts])?;
        }
    }

    // settings: global (no team_id); the untyped `value` column mixes integers,
    // reals and text, as key/value tables in SQLite apps do.
    let mut rng = rng_for(seed, 8);
    {
        let mut st =
            tx.prepare("INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3)")?;
        for section in SETTINGS_SECTIONS {
            for key in SETTINGS_KEYS {
                let value = match *key {
                    "enabled" => Value::Integer(rng.random_range(0..=1)),
                    "max_size" => Value::Integer(rng.random_range(1..=64) << 20),
                    "ratio" => Value::Real(rng.random_range(0..1_000) as f64 / 1_000.0),
                    "retention_days" if rng.random_ratio(1, 2) => Value::Text("forever".into()),
                    "retention_days" => Value::Integer(rng.random_range(7..=400)),
                    _ => Value::Text(format!("{section} ✨ {}", pick(&mut rng, TEAM_NOUN))),
                };
                iso(&mut ts, START + rng.random_range(0..SPAN));
                st.execute(params![format!("{section}.{key}"), value, ts])?;
            }
        }
    }

    // AUTOINCREMENT tables whose newest rows were deleted: the sequence is above max(id).
    tx.execute_batch(
        "UPDATE sqlite_sequence SET seq = seq + 3 WHERE name = 'users';
         UPDATE sqlite_sequence SET seq = seq + 7 WHERE name = 'posts';",
    )?;
    tx.execute_batch(schema::INDEXES)?;
    tx.commit()
}
