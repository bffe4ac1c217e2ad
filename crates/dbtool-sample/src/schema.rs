//! The forums.db schema: what a SQLite web app grown over a few years looks like.

/// Tables, created before the rows are loaded.
///
/// The comments survive into `sqlite_master` on purpose: a migration tool sees them
/// the way it sees a real app's DDL.
pub(crate) const TABLES: &str = r#"
CREATE TABLE teams (
    id TEXT PRIMARY KEY NOT NULL,          -- UUID text
    name TEXT NOT NULL,
    plan TEXT NOT NULL DEFAULT 'free',
    created_at TEXT NOT NULL               -- ISO 8601, '2021-03-04T05:06:07Z'
);
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- gaps: deleted accounts
    team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    email TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    is_admin BOOLEAN NOT NULL DEFAULT 0,   -- 0/1
    created_at TEXT NOT NULL,              -- ISO 8601 with 'T' and 'Z'
    last_seen DATETIME,                    -- epoch seconds (INTEGER) despite the type
    avatar BLOB
);
CREATE TABLE forums (
    id INTEGER PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT,
    position INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE topics (
    id INTEGER PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    forum_id INTEGER NOT NULL REFERENCES forums(id) ON DELETE CASCADE,
    user_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
    title TEXT NOT NULL,
    created_at TEXT NOT NULL,              -- ISO 8601 with 'T' and 'Z'
    updated_at DATETIME NOT NULL,          -- epoch milliseconds (INTEGER) despite the type
    pinned BOOLEAN NOT NULL DEFAULT 0,
    view_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE posts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- gaps: deleted posts
    team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    topic_id INTEGER NOT NULL REFERENCES topics(id) ON DELETE CASCADE,
    user_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,              -- 'YYYY-MM-DD HH:MM:SS' (SQLite's CURRENT_TIMESTAMP)
    edited_at TEXT,
    score REAL NOT NULL DEFAULT 0
);
CREATE TABLE wiki_pages (
    id INTEGER PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    slug TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL               -- ISO 8601 with milliseconds, JavaScript's toISOString()
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY NOT NULL,         -- global: the one table without team_id
    value,                                 -- no declared type: integers, reals and text mixed
    updated_at TEXT NOT NULL
);
"#;

/// Indexes, created after the rows (faster than maintaining them during the load).
pub(crate) const INDEXES: &str = r#"
CREATE INDEX users_team_id ON users(team_id);
CREATE INDEX forums_team_position ON forums(team_id, position);
CREATE INDEX topics_forum_updated ON topics(forum_id, updated_at);
CREATE INDEX topics_team_id ON topics(team_id);
CREATE INDEX topics_pinned ON topics(forum_id) WHERE pinned = 1;
CREATE INDEX posts_topic_created ON posts(topic_id, created_at);
CREATE INDEX posts_user_id ON posts(user_id);
CREATE INDEX posts_team_id ON posts(team_id);
CREATE UNIQUE INDEX wiki_pages_team_slug ON wiki_pages(team_id, slug);
"#;

/// Every table, in load order.
pub const TABLE_NAMES: [&str; 7] = [
    "teams",
    "users",
    "forums",
    "topics",
    "posts",
    "wiki_pages",
    "settings",
];
