//! Opening and inspecting the SQLite source.
//!
//! [`open`] gives a read-only connection that tolerates the files real apps
//! leave behind (a WAL header without its `-wal` file, custom collations such
//! as Anki's `unicase`). [`inspect`] reads the schema into a [`Source`]:
//! tables, columns, keys, indexes, foreign keys, views, triggers, virtual
//! tables and their shadow tables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Opens `path` read-only.
///
/// No `immutable` flag when the file may be live (so SQLite notices writers
/// and the loader can detect a change); a file in WAL mode whose `-wal` file
/// is absent is opened with `immutable=1` instead, because a read-only
/// connection would otherwise create `-wal`/`-shm` files next to it (or fail
/// when the directory is read-only). Unknown collations are registered on
/// demand (`unicase` and `nocase`-like ones compare case-insensitively, any
/// other compares bytes), so files from apps with custom collations open.
pub fn open(path: &Path) -> Result<Connection, Error> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| Error::Source {
        path: shown.clone(),
        reason: format!("{e} (check the path)"),
    })?;
    if meta.is_dir() {
        return Err(Error::Source {
            path: shown,
            reason: "is a directory, not a SQLite file".into(),
        });
    }
    let header = read_header(path).map_err(|e| Error::Source {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    if header.len() < 100 || &header[..16] != b"SQLite format 3\0" {
        let reason = if header.is_empty() {
            "file is empty, not a database".to_string()
        } else {
            "file is not a database (is it encrypted?)".to_string()
        };
        return Err(Error::Source {
            path: shown,
            reason,
        });
    }
    let wal_mode = header[18] == 2 || header[19] == 2;
    let wal_file = wal_path(path);
    let immutable = wal_mode && !wal_file.exists();
    let conn = open_flags(path, immutable).map_err(|e| source_err(&shown, &e))?;
    register_collations(&conn).map_err(|e| source_err(&shown, &e))?;
    // Force SQLite to read the schema now, so a corrupt or foreign file fails
    // here with a clear message rather than at the first query.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| source_err(&shown, &e))?;
    Ok(conn)
}

/// Whether [`open`] would open this file with `immutable=1` (WAL header and
/// no `-wal` file). The loader uses it to decide how to detect changes.
pub fn opens_immutable(path: &Path) -> bool {
    match read_header(path) {
        Ok(h) if h.len() >= 20 => (h[18] == 2 || h[19] == 2) && !wal_path(path).exists(),
        _ => false,
    }
}

fn wal_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn read_header(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 100];
    let mut n = 0;
    while n < 100 {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    buf.truncate(n);
    Ok(buf)
}

fn open_flags(path: &Path, immutable: bool) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let uri = file_uri(path, immutable);
    Connection::open_with_flags(uri, flags)
}

/// A `file:` URI for `path`, percent-encoding what URIs reserve.
fn file_uri(path: &Path, immutable: bool) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut uri = String::from("file:");
    for b in abs.as_os_str().as_encoded_bytes() {
        match *b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                uri.push(*b as char)
            }
            other => uri.push_str(&format!("%{other:02X}")),
        }
    }
    uri.push_str("?mode=ro");
    if immutable {
        uri.push_str("&immutable=1");
    }
    uri
}

fn source_err(path: &str, e: &rusqlite::Error) -> Error {
    let msg = e.to_string();
    let reason = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            "file is not a database (is it encrypted?)".to_string()
        }
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => format!(
            "the file is corrupt or truncated ({msg}); restore it from a backup or run `sqlite3 FILE .recover`"
        ),
        Some(rusqlite::ErrorCode::CannotOpen) => format!("{msg} (check the path and permissions)"),
        _ => msg,
    };
    Error::Source {
        path: path.to_string(),
        reason,
    }
}

fn register_collations(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_collation("unicase", unicase_cmp)?;
    conn.collation_needed(on_collation_needed)?;
    Ok(())
}

fn unicase_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.chars()
        .flat_map(char::to_lowercase)
        .cmp(b.chars().flat_map(char::to_lowercase))
}

fn on_collation_needed(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    let lower = name.to_ascii_lowercase();
    if lower.contains("case") || lower.contains("ci") || lower.contains("icu") {
        conn.create_collation(name, unicase_cmp)
    } else {
        conn.create_collation(name, |a: &str, b: &str| a.cmp(b))
    }
}

/// The source database's schema.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Source {
    /// The file, as given.
    pub path: String,
    /// `UTF-8`, `UTF-16le` or `UTF-16be`.
    pub encoding: String,
    /// Ordinary and virtual tables, in `sqlite_master` order (no `sqlite_*` tables).
    pub tables: Vec<Table>,
    /// Views.
    pub views: Vec<View>,
    /// Triggers (reported, never migrated).
    pub triggers: Vec<Trigger>,
    /// `sqlite_sequence`: table name -> last AUTOINCREMENT value.
    pub sequences: BTreeMap<String, i64>,
    /// Internal tables that exist but are not migrated (`sqlite_stat1`, ...).
    pub internal_tables: Vec<String>,
}

impl Source {
    /// The table named `name` (SQLite names compare ASCII-case-insensitively).
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }
}

/// What kind of table this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TableKind {
    /// An ordinary table.
    Ordinary,
    /// A virtual table (`CREATE VIRTUAL TABLE ... USING module`).
    Virtual {
        /// The module (`fts5`, `rtree`, `vec0`, ...), lowercased.
        module: String,
        /// Whether this SQLite can read it (the module is built in).
        readable: bool,
        /// FTS `content=` option: the table holding the text, or `""` for contentless.
        content: Option<String>,
    },
    /// A shadow table that stores a virtual table's data.
    Shadow {
        /// The virtual table it belongs to.
        owner: String,
    },
}

/// A table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table {
    /// Its name in SQLite.
    pub name: String,
    /// Its `CREATE` statement.
    pub sql: String,
    /// Ordinary, virtual or shadow.
    pub kind: TableKind,
    /// Columns, in order (hidden columns of virtual tables left out).
    pub columns: Vec<Column>,
    /// Primary-key column names, in key order (empty when none is declared).
    pub primary_key: Vec<String>,
    /// `WITHOUT ROWID`.
    pub without_rowid: bool,
    /// Declared `AUTOINCREMENT`.
    pub autoincrement: bool,
    /// The column that aliases the rowid (`INTEGER PRIMARY KEY`), if any.
    pub rowid_alias: Option<String>,
    /// Indexes, including the automatic ones behind UNIQUE and PRIMARY KEY.
    pub indexes: Vec<Index>,
    /// Foreign keys.
    pub foreign_keys: Vec<ForeignKey>,
    /// CHECK constraint expressions, as written.
    pub checks: Vec<String>,
    /// Rows (`count(*)`), or `None` when the table cannot be read.
    pub rows: Option<u64>,
    /// Why the table cannot be read, when it cannot.
    pub unreadable: Option<String>,
}

impl Table {
    /// Whether the table has a rowid the loader can range over.
    pub fn has_rowid(&self) -> bool {
        !self.without_rowid
            && match &self.kind {
                TableKind::Virtual { module, .. } => {
                    module.starts_with("fts") || module == "rtree" || module == "geopoly"
                }
                _ => true,
            }
    }
}

/// Generated-column kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Generated {
    /// An ordinary column.
    No,
    /// `GENERATED ALWAYS AS (...) VIRTUAL`
    Virtual,
    /// `GENERATED ALWAYS AS (...) STORED`
    Stored,
}

/// A column.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// The declared type as written (`""` when untyped).
    pub decl_type: String,
    /// `NOT NULL`.
    pub not_null: bool,
    /// The default expression as written.
    pub default: Option<String>,
    /// 1-based position in the primary key, 0 when not part of it.
    pub pk: u32,
    /// Generated column?
    pub generated: Generated,
    /// The column's collation when declared (`NOCASE`, ...).
    pub collation: Option<String>,
}

/// What created an index, as `PRAGMA index_list` reports it (`c`, `u`, `pk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexOrigin {
    /// `CREATE INDEX` (`c`).
    #[serde(rename = "c")]
    CreateIndex,
    /// A UNIQUE constraint (`u`).
    #[serde(rename = "u")]
    Unique,
    /// The PRIMARY KEY (`pk`).
    #[serde(rename = "pk")]
    PrimaryKey,
}

impl IndexOrigin {
    /// From `PRAGMA index_list`'s `origin` column; anything unknown is taken
    /// for `CREATE INDEX`, which the planner translates from its SQL.
    fn from_pragma(s: &str) -> IndexOrigin {
        match s {
            "u" => IndexOrigin::Unique,
            "pk" => IndexOrigin::PrimaryKey,
            _ => IndexOrigin::CreateIndex,
        }
    }
}

/// An index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    /// Its name (`sqlite_autoindex_*` for automatic ones).
    pub name: String,
    /// UNIQUE.
    pub unique: bool,
    /// What created it.
    pub origin: IndexOrigin,
    /// Has a WHERE clause.
    pub partial: bool,
    /// Key parts in order.
    pub columns: Vec<IndexColumn>,
    /// The `CREATE INDEX` statement (none for automatic indexes).
    pub sql: Option<String>,
}

/// One key part of an index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexColumn {
    /// The column, or `None` for an expression.
    pub name: Option<String>,
    /// Descending.
    pub desc: bool,
    /// Collation name (`BINARY`, `NOCASE`, ...).
    pub collation: String,
}

/// A foreign key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForeignKey {
    /// The id SQLite gives it (`PRAGMA foreign_key_list`).
    pub id: i64,
    /// The referenced table.
    pub table: String,
    /// Referencing columns.
    pub from: Vec<String>,
    /// Referenced columns (`None`: the referenced table's primary key).
    pub to: Vec<Option<String>>,
    /// `ON UPDATE` action.
    pub on_update: String,
    /// `ON DELETE` action.
    pub on_delete: String,
}

/// A view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct View {
    /// Its name.
    pub name: String,
    /// Its `CREATE VIEW` statement.
    pub sql: String,
}

/// A trigger.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trigger {
    /// Its name.
    pub name: String,
    /// The table it fires on.
    pub table: String,
    /// Its `CREATE TRIGGER` statement.
    pub sql: String,
}

/// Quotes a SQLite identifier (`"a""b"`).
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Reads the schema of the open source `conn` (opened from `path`).
pub fn inspect(conn: &Connection, path: &Path) -> Result<Source, Error> {
    let shown = path.display().to_string();
    let err = |e: rusqlite::Error| source_err(&shown, &e);
    let encoding: String = conn
        .query_row("PRAGMA encoding", [], |r| r.get(0))
        .map_err(err)?;
    let mut src = Source {
        path: shown.clone(),
        encoding,
        ..Source::default()
    };
    let mut objects: Vec<(String, String, String, Option<String>)> = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(err)?;
        for row in rows {
            objects.push(row.map_err(err)?);
        }
    }
    // Virtual tables first, so shadow tables can be recognised.
    let mut vtabs: Vec<(String, String)> = Vec::new();
    for (ty, name, _, sql) in &objects {
        if ty == "table" {
            if let Some(module) = sql.as_deref().and_then(virtual_module) {
                vtabs.push((name.clone(), module));
            }
        }
    }
    for (ty, name, tbl_name, sql) in &objects {
        let sql = sql.clone().unwrap_or_default();
        match ty.as_str() {
            "table" => {
                // `_dbtool*`: dbtool sync's own capture tables (dbtool-sync),
                // never application data.
                if name.starts_with("sqlite_") || name.starts_with("_dbtool") {
                    if name == "sqlite_sequence" {
                        src.sequences = read_sequences(conn).map_err(err)?;
                    }
                    src.internal_tables.push(name.clone());
                    continue;
                }
                src.tables
                    .push(inspect_table(conn, name, &sql, &vtabs).map_err(err)?);
            }
            "view" => src.views.push(View {
                name: name.clone(),
                sql,
            }),
            "trigger" if name.starts_with("_dbtool") => {}
            "trigger" => src.triggers.push(Trigger {
                name: name.clone(),
                table: tbl_name.clone(),
                sql,
            }),
            _ => {}
        }
    }
    Ok(src)
}

fn read_sequences(conn: &Connection) -> rusqlite::Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    let mut stmt = conn.prepare("SELECT name, seq FROM sqlite_sequence")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?,
            r.get::<_, rusqlite::types::Value>(1)?,
        ))
    })?;
    for row in rows {
        let (name, seq) = row?;
        let seq = match seq {
            rusqlite::types::Value::Integer(i) => i,
            rusqlite::types::Value::Real(f) => f as i64,
            rusqlite::types::Value::Text(t) => t.trim().parse().unwrap_or(0),
            _ => 0,
        };
        if let Some(name) = name {
            let e = out.entry(name).or_insert(seq);
            *e = (*e).max(seq);
        }
    }
    Ok(out)
}

/// The module of a `CREATE VIRTUAL TABLE` statement, lowercased.
fn virtual_module(sql: &str) -> Option<String> {
    let upper = sql.trim_start().to_ascii_uppercase();
    if !upper.starts_with("CREATE VIRTUAL TABLE") {
        return None;
    }
    let pos = find_keyword(&upper, "USING")?;
    let rest = sql[pos + 5..].trim_start();
    let end = rest
        .find(|c: char| c == '(' || c.is_whitespace() || c == ';')
        .unwrap_or(rest.len());
    Some(
        rest[..end]
            .trim_matches(['"', '`', '[', ']'])
            .to_ascii_lowercase(),
    )
}

/// Byte position of `kw` as a whole word in `upper` (already uppercased).
fn find_keyword(upper: &str, kw: &str) -> Option<usize> {
    let b = upper.as_bytes();
    let mut start = 0;
    while let Some(i) = upper[start..].find(kw) {
        let at = start + i;
        let before = at == 0 || !is_word(b[at - 1]);
        let after = at + kw.len() >= b.len() || !is_word(b[at + kw.len()]);
        if before && after {
            return Some(at);
        }
        start = at + kw.len();
    }
    None
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Suffixes of the shadow tables the built-in modules create.
fn shadow_suffixes(module: &str) -> Option<&'static [&'static str]> {
    Some(match module {
        "fts3" | "fts4" => &["_content", "_segments", "_segdir", "_docsize", "_stat"],
        "fts5" => &["_data", "_idx", "_content", "_docsize", "_config"],
        "rtree" | "rtree_i32" | "geopoly" => &["_node", "_rowid", "_parent"],
        _ => return None,
    })
}

fn shadow_owner(name: &str, vtabs: &[(String, String)]) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    for (vt, module) in vtabs {
        let prefix = vt.to_ascii_lowercase();
        if lower.len() <= prefix.len() || !lower.starts_with(&prefix) {
            continue;
        }
        let suffix = &lower[prefix.len()..];
        let hit = match shadow_suffixes(module) {
            Some(list) => list.contains(&suffix),
            // Unknown modules (vec0, ...): their shadow tables are named `<vtab>_...`.
            None => suffix.starts_with('_'),
        };
        if hit {
            return Some(vt.clone());
        }
    }
    None
}

fn fts_content_option(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    let mut start = 0;
    while let Some(i) = lower[start..].find("content") {
        let at = start + i;
        start = at + 7;
        let before_ok = at == 0 || !is_word(lower.as_bytes()[at - 1]);
        let rest = lower[at + 7..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let orig_rest = sql[sql.len() - rest.len() + 1..].trim_start();
        let end = orig_rest.find([',', ')']).unwrap_or(orig_rest.len());
        let v = orig_rest[..end].trim();
        return Some(v.trim_matches(['\'', '"', '`', '[', ']']).to_string());
    }
    None
}

fn inspect_table(
    conn: &Connection,
    name: &str,
    sql: &str,
    vtabs: &[(String, String)],
) -> rusqlite::Result<Table> {
    let q = quote(name);
    let kind = if let Some(module) = virtual_module(sql) {
        // A virtual table is readable when its module is built in: try it.
        let readable = conn.prepare(&format!("SELECT * FROM {q} LIMIT 0")).is_ok();
        let content = if module.starts_with("fts") {
            fts_content_option(sql)
        } else {
            None
        };
        TableKind::Virtual {
            module,
            readable,
            content,
        }
    } else if let Some(owner) = shadow_owner(name, vtabs) {
        TableKind::Shadow { owner }
    } else {
        TableKind::Ordinary
    };
    let upper = sql.to_ascii_uppercase();
    let without_rowid = {
        let compact: String = upper.split_whitespace().collect::<Vec<_>>().join(" ");
        compact.contains("WITHOUT ROWID")
    };
    let autoincrement = find_keyword(&upper, "AUTOINCREMENT").is_some();
    let mut table = Table {
        name: name.to_string(),
        sql: sql.to_string(),
        kind: kind.clone(),
        columns: Vec::new(),
        primary_key: Vec::new(),
        without_rowid,
        autoincrement,
        rowid_alias: None,
        indexes: Vec::new(),
        foreign_keys: Vec::new(),
        checks: Vec::new(),
        rows: None,
        unreadable: None,
    };
    if let TableKind::Virtual {
        readable: false,
        module,
        ..
    } = &kind
    {
        table.unreadable = Some(format!("no such module: {module}"));
        return Ok(table);
    }
    // Columns (table_xinfo also reports generated and hidden columns).
    let mut pk: Vec<(u32, String)> = Vec::new();
    {
        let mut stmt = conn.prepare(&format!("PRAGMA table_xinfo({q})"))?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        for row in rows {
            let (cname, decl, notnull, dflt, pkpos, hidden) = row?;
            if hidden == 1 {
                continue; // hidden column of a virtual table (fts5 `rank`, ...)
            }
            let generated = match hidden {
                2 => Generated::Virtual,
                3 => Generated::Stored,
                _ => Generated::No,
            };
            if pkpos > 0 {
                pk.push((pkpos as u32, cname.clone()));
            }
            table.columns.push(Column {
                collation: column_collation(conn, name, &cname),
                name: cname,
                decl_type: decl.unwrap_or_default(),
                not_null: notnull != 0,
                default: dflt,
                pk: pkpos as u32,
                generated,
            });
        }
    }
    pk.sort();
    table.primary_key = pk.into_iter().map(|(_, n)| n).collect();
    if !without_rowid && table.primary_key.len() == 1 {
        let col = table
            .columns
            .iter()
            .find(|c| c.name == table.primary_key[0]);
        if let Some(c) = col {
            // Only the exact declared type INTEGER makes a rowid alias
            // (`INT PRIMARY KEY` does not; `INTEGER PRIMARY KEY DESC` does not either,
            // which we do not detect: harmless, the values are the same).
            if c.decl_type.eq_ignore_ascii_case("INTEGER")
                && matches!(kind, TableKind::Ordinary | TableKind::Shadow { .. })
            {
                table.rowid_alias = Some(c.name.clone());
            }
        }
    }
    table.indexes = read_indexes(conn, name)?;
    table.foreign_keys = read_foreign_keys(conn, name)?;
    table.checks = extract_checks(sql);
    match conn.query_row(&format!("SELECT count(*) FROM {q}"), [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(n) => table.rows = Some(n as u64),
        Err(e) => table.unreadable = Some(e.to_string()),
    }
    Ok(table)
}

fn column_collation(conn: &Connection, table: &str, column: &str) -> Option<String> {
    // sqlite3_table_column_metadata is not exposed for collation by rusqlite
    // without `column_metadata`; parse it from the CREATE statement instead.
    let _ = (conn, table, column);
    None
}

fn read_indexes(conn: &Connection, table: &str) -> rusqlite::Result<Vec<Index>> {
    let q = quote(table);
    let mut list: Vec<(String, bool, String, bool)> = Vec::new();
    {
        let mut stmt = conn.prepare(&format!("PRAGMA index_list({q})"))?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? != 0,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)? != 0,
            ))
        })?;
        for row in rows {
            list.push(row?);
        }
    }
    let mut out = Vec::new();
    for (name, unique, origin, partial) in list {
        let mut columns = Vec::new();
        let mut stmt = conn.prepare(&format!("PRAGMA index_xinfo({})", quote(&name)))?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)? != 0,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)? != 0,
            ))
        })?;
        for row in rows {
            let (cid, cname, desc, coll, key) = row?;
            if !key {
                continue;
            }
            columns.push(IndexColumn {
                name: if cid == -2 { None } else { cname },
                desc,
                collation: coll.unwrap_or_else(|| "BINARY".into()),
            });
        }
        let sql: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [&name],
                |r| r.get(0),
            )
            .unwrap_or(None);
        out.push(Index {
            name,
            unique,
            origin: IndexOrigin::from_pragma(&origin),
            partial,
            columns,
            sql,
        });
    }
    // index_list lists newest first; keep creation order for stable output.
    out.reverse();
    Ok(out)
}

fn read_foreign_keys(conn: &Connection, table: &str) -> rusqlite::Result<Vec<ForeignKey>> {
    let mut by_id: BTreeMap<i64, ForeignKey> = BTreeMap::new();
    let mut stmt = conn.prepare(&format!("PRAGMA foreign_key_list({})", quote(table)))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
        ))
    })?;
    for row in rows {
        let (id, target, from, to, on_update, on_delete) = row?;
        let fk = by_id.entry(id).or_insert_with(|| ForeignKey {
            id,
            table: target,
            from: Vec::new(),
            to: Vec::new(),
            on_update,
            on_delete,
        });
        fk.from.push(from);
        fk.to.push(to);
    }
    Ok(by_id.into_values().collect())
}

/// The CHECK constraint expressions of a CREATE TABLE statement, as written.
pub fn extract_checks(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut quote_ch: Option<u8> = None;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote_ch {
            if c == q || (q == b'[' && c == b']') {
                quote_ch = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'\'' | b'"' | b'`' | b'[' => {
                quote_ch = Some(c);
                i += 1;
            }
            _ if (c == b'C' || c == b'c')
                && sql.len() >= i + 5
                && sql[i..i + 5].eq_ignore_ascii_case("check")
                && (i == 0 || !is_word(bytes[i - 1]))
                && (i + 5 >= bytes.len() || !is_word(bytes[i + 5])) =>
            {
                let mut j = i + 5;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j < bytes.len() && bytes[j] == b'(' {
                    if let Some(end) = matching_paren(sql, j) {
                        out.push(sql[j + 1..end].trim().to_string());
                        i = end + 1;
                        continue;
                    }
                }
                i += 5;
            }
            _ => i += 1,
        }
    }
    out
}

/// Position of the `)` matching the `(` at `open`, skipping quoted text.
pub fn matching_paren(s: &str, open: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0i32;
    let mut i = open;
    let mut q: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        if let Some(qc) = q {
            if c == qc || (qc == b'[' && c == b']') {
                q = None;
            }
        } else {
            match c {
                b'\'' | b'"' | b'`' | b'[' => q = Some(c),
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Names used in `sqlite_master`, for callers that need a set.
pub fn table_names(src: &Source) -> BTreeSet<String> {
    src.tables.iter().map(|t| t.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_extracted_with_nested_parens_and_quotes() {
        let sql = "CREATE TABLE t (a INT CHECK (a > 0), b TEXT, \"check\" int, CONSTRAINT c CHECK (length(b) < 5 AND b <> ')'))";
        assert_eq!(
            extract_checks(sql),
            vec!["a > 0", "length(b) < 5 AND b <> ')'"]
        );
    }

    #[test]
    fn virtual_module_is_found() {
        assert_eq!(
            virtual_module("CREATE VIRTUAL TABLE x USING fts5(a, b)").as_deref(),
            Some("fts5")
        );
        assert_eq!(virtual_module("CREATE TABLE x (a)"), None);
    }

    #[test]
    fn fts_content_option_is_parsed() {
        assert_eq!(
            fts_content_option(
                "CREATE VIRTUAL TABLE f USING fts5(a, content='docs', content_rowid='id')"
            )
            .as_deref(),
            Some("docs")
        );
        assert_eq!(
            fts_content_option("CREATE VIRTUAL TABLE f USING fts5(a, content='')").as_deref(),
            Some("")
        );
        assert_eq!(
            fts_content_option("CREATE VIRTUAL TABLE f USING fts5(a)"),
            None
        );
    }
}
