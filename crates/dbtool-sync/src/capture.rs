//! Change capture inside the SQLite file: triggers that append every row
//! change to a log table in the writer's own transaction.
//!
//! Everything dbtool adds to the file is named with the prefix `_dbtool`:
//!
//! - `_dbtool_meta(key TEXT PRIMARY KEY, value)`: settings shared with the
//!   reverse stream (`echo_off`, `moved_to`), the sync id, and per table the
//!   captured column list (`columns:<table>`) and key (`key:<table>`).
//! - `_dbtool_changes(seq INTEGER PRIMARY KEY, tbl, op, ts, c0, c1, ...)`: the log
//!   (`ts`: when the change was written, a Julian day, for the lag).
//!   `seq` is the commit order (SQLite has one writer, so the order rows get
//!   their `seq` is the order they commit). The value columns have no declared
//!   type, so each holds the row's value exactly as SQLite stored it (integer,
//!   real with every bit, text, blob). `op` is `U` (upsert the row by key),
//!   `I` (insert, tables without a key), `D` (delete: by key, or the first
//!   row equal to the old row when the table has no key).
//! - `_dbtool_touched(tbl, k0, k1, k2, k3)`: keys whose changes were applied
//!   and trimmed from the log, for the cutover's incremental check.
//! - `_dbtool_canary(v)`: one row at rowid [`CANARY_ROWID`] with the rowids
//!   below it free. `VACUUM` renumbers the rows of every table without an
//!   `INTEGER PRIMARY KEY` from 1, this one like the app's rowid-only tables,
//!   so the row moving to rowid 1 tells that the file was vacuumed
//!   ([`renumbered`]); [`rearm`] puts it back.
//! - Triggers `_dbtool_ins_<t>`, `_dbtool_upd_<t>`, `_dbtool_del_<t>` (capture)
//!   and `_dbtool_moved_{ins,upd,del}_<t>` (the moved mark after a cutover).
//!
//! Every trigger fires only `WHEN (SELECT value FROM _dbtool_meta WHERE key =
//! 'echo_off') IS NOT 1`: the reverse stream sets `echo_off = 1` inside its
//! own write transaction and back before committing, so what it writes is
//! neither captured nor blocked, and no other connection ever sees 1.

use rusqlite::{params, Connection, OptionalExtension as _};

use crate::Error;

/// The guard every dbtool trigger carries (see the module docs).
pub const ECHO_GUARD: &str = "(SELECT value FROM _dbtool_meta WHERE key = 'echo_off') IS NOT 1";

/// The log table.
pub const LOG: &str = "_dbtool_changes";

/// The canary table (see the module docs).
pub const CANARY: &str = "_dbtool_canary";

/// Where the canary's row sits until a `VACUUM` renumbers it to 1.
pub const CANARY_ROWID: i64 = 2;

/// Key columns the touched-keys table holds; wider keys are checked by count only.
pub const TOUCHED_WIDTH: usize = 4;

/// One table as captured: its columns in log order and its key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Captured {
    /// Table name.
    pub name: String,
    /// Column names; column `i` is stored in the log's `c<i>`.
    pub columns: Vec<String>,
    /// Primary-key columns (indexes into `columns`), in key order; empty when
    /// the table has no declared primary key (rowid only).
    pub key: Vec<usize>,
    /// More columns (the shard key with `--shards`) whose change in an
    /// UPDATE logs a delete of the old row before the upsert, as a key change does.
    #[serde(default)]
    pub route: Vec<usize>,
}

/// Quotes an SQLite identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQLite string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The application's tables in `conn` (not `sqlite_*`, not `_dbtool*`, not
/// virtual tables), with their columns and keys.
pub fn app_tables(conn: &Connection) -> Result<Vec<Captured>, Error> {
    let mut stmt = conn.prepare(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_dbtool%' ESCAPE '\\' \
         ORDER BY name",
    )?;
    let names: Vec<(String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (name, sql) in names {
        let virtual_table = sql.as_deref().is_some_and(|s| {
            s.trim_start()
                .to_ascii_uppercase()
                .starts_with("CREATE VIRTUAL")
        });
        if virtual_table {
            continue;
        }
        out.push(table_info(conn, &name)?);
    }
    Ok(out)
}

/// The columns and key of one table (`PRAGMA table_info`: generated columns
/// are not listed, they are computed again where they are read).
pub fn table_info(conn: &Connection, name: &str) -> Result<Captured, Error> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", quote(name)))?;
    let rows: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, i64>(5)?)))?
        .collect::<Result<_, _>>()?;
    let columns: Vec<String> = rows.iter().map(|(n, _)| n.clone()).collect();
    let mut key: Vec<(i64, usize)> = rows
        .iter()
        .enumerate()
        .filter(|(_, (_, pk))| *pk > 0)
        .map(|(i, (_, pk))| (*pk, i))
        .collect();
    key.sort();
    Ok(Captured {
        name: name.to_owned(),
        columns,
        key: key.into_iter().map(|(_, i)| i).collect(),
        route: Vec::new(),
    })
}

/// How many value columns the log has.
pub fn log_width(conn: &Connection) -> Result<usize, Error> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({LOG})"))?;
    let n = stmt.query_map([], |r| r.get::<_, String>(1))?.count();
    Ok(n.saturating_sub(4))
}

/// Whether the capture tables exist in `conn`'s file.
pub fn installed(conn: &Connection) -> Result<bool, Error> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [LOG],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Creates the meta, log and touched tables when missing and (re)creates the
/// capture triggers of `tables`; records each table's column list. Runs in
/// the caller's transaction (hold the write lock: `BEGIN IMMEDIATE`).
pub fn install(conn: &Connection, tables: &[Captured]) -> Result<(), Error> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _dbtool_meta(key TEXT PRIMARY KEY, value);
         CREATE TABLE IF NOT EXISTS _dbtool_changes(seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, op TEXT NOT NULL, ts REAL DEFAULT (julianday('now')));
         CREATE TABLE IF NOT EXISTS _dbtool_touched(tbl TEXT NOT NULL, k0, k1, k2, k3);
         CREATE UNIQUE INDEX IF NOT EXISTS _dbtool_touched_key ON _dbtool_touched(tbl, k0, k1, k2, k3);
         CREATE TABLE IF NOT EXISTS _dbtool_canary(v);",
    )?;
    conn.execute(
        &format!(
            "INSERT INTO {CANARY}(rowid, v) SELECT ?1, 'VACUUM renumbers this row to rowid 1' \
             WHERE NOT EXISTS (SELECT 1 FROM {CANARY})"
        ),
        [CANARY_ROWID],
    )?;
    let need = tables.iter().map(|t| t.columns.len()).max().unwrap_or(0);
    let have = log_width(conn)?;
    for i in have..need {
        conn.execute_batch(&format!("ALTER TABLE {LOG} ADD COLUMN c{i}"))?;
    }
    if get_meta(conn, "sync_id")?.is_none() {
        let id = format!("{:016x}", rand::random::<u64>());
        set_meta(conn, "sync_id", &id)?;
    }
    for t in tables {
        // Unchanged triggers are left alone: recreating them would bump the
        // schema version, and every app connection would re-prepare.
        let stmts = trigger_sql(t);
        let mut same = true;
        for create in stmts.iter().filter(|s| s.starts_with("CREATE TRIGGER")) {
            let name = trigger_name(create);
            let have: Option<String> = conn
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .optional()?;
            same &= have.as_deref() == Some(create.as_str());
        }
        if !same {
            for stmt in &stmts {
                conn.execute_batch(stmt)?;
            }
        }
        set_meta(
            conn,
            &format!("columns:{}", t.name),
            &serde_json::to_string(t).unwrap_or_default(),
        )?;
    }
    Ok(())
}

/// Whether a `VACUUM` renumbered the file's rowid-only tables since the
/// canary was last armed: its row is no longer at [`CANARY_ROWID`]. One
/// lookup in a one-row table; false when there is no canary (capture not
/// installed). Run it inside the read snapshot it should describe.
pub fn renumbered(conn: &Connection) -> Result<bool, Error> {
    let rowid = match conn.prepare_cached(&format!("SELECT max(rowid) FROM {CANARY}")) {
        Ok(mut stmt) => stmt.query_row([], |r| r.get::<_, Option<i64>>(0))?,
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.starts_with("no such table") => {
            return Ok(false)
        }
        Err(e) => return Err(e.into()),
    };
    Ok(rowid.is_some_and(|r| r != CANARY_ROWID))
}

/// Puts the canary's row back at [`CANARY_ROWID`] (rowid 1 below it free
/// again), so the next `VACUUM` is seen too. Runs in the caller's write
/// transaction.
pub fn rearm(conn: &Connection) -> Result<(), Error> {
    conn.execute(
        &format!("DELETE FROM {CANARY} WHERE rowid <> (SELECT max(rowid) FROM {CANARY})"),
        [],
    )?;
    conn.execute(&format!("UPDATE {CANARY} SET rowid = ?1"), [CANARY_ROWID])?;
    Ok(())
}

/// The message sync gives, and goes on, when a `VACUUM` renumbered the
/// rowids of `tables` (the file's tables without a primary key) in `file`.
pub fn renumbered_message(file: &str, tables: &[String]) -> String {
    format!(
        "VACUUM ran on {file}: tables without a primary key ({}) may now have other rowids than before; sync goes on, because it matches their rows by content, never by rowid (an update or delete applies to a row equal to the old one), and no rowid of these tables is copied to Postgres; nothing to do, unless the app keeps these rowids elsewhere: then give the tables a primary key",
        tables.join(", ")
    )
}

/// The statements that (re)create one table's capture triggers.
pub fn trigger_sql(t: &Captured) -> Vec<String> {
    let table = quote(&t.name);
    let name = |kind: &str| quote(&format!("_dbtool_{kind}_{}", t.name));
    let cols: Vec<String> = (0..t.columns.len()).map(|i| format!("c{i}")).collect();
    let cols = if cols.is_empty() {
        String::new()
    } else {
        format!(", {}", cols.join(", "))
    };
    let vals = |row: &str| -> String {
        t.columns
            .iter()
            .map(|c| format!(", {row}.{}", quote(c)))
            .collect()
    };
    let tbl = literal(&t.name);
    let keyed = !t.key.is_empty();
    let insert = |op: &str, row: &str| {
        format!(
            "INSERT INTO {LOG}(tbl, op{cols}) VALUES ({tbl}, '{op}'{});",
            vals(row)
        )
    };
    let upd_body = if keyed {
        let changed: Vec<String> = t
            .key
            .iter()
            .chain(&t.route)
            .map(|&i| {
                let c = quote(&t.columns[i]);
                format!("OLD.{c} IS NOT NEW.{c}")
            })
            .collect();
        format!(
            "INSERT INTO {LOG}(tbl, op{cols}) SELECT {tbl}, 'D'{} WHERE {};\n    {}",
            vals("OLD"),
            changed.join(" OR "),
            insert("U", "NEW")
        )
    } else {
        format!("{}\n    {}", insert("D", "OLD"), insert("I", "NEW"))
    };
    let ins_op = if keyed { "U" } else { "I" };
    vec![
        format!("DROP TRIGGER IF EXISTS {}", name("ins")),
        format!("DROP TRIGGER IF EXISTS {}", name("upd")),
        format!("DROP TRIGGER IF EXISTS {}", name("del")),
        format!(
            "CREATE TRIGGER {} AFTER INSERT ON {table} WHEN {ECHO_GUARD}\nBEGIN\n    {}\nEND",
            name("ins"),
            insert(ins_op, "NEW")
        ),
        format!(
            "CREATE TRIGGER {} AFTER UPDATE ON {table} WHEN {ECHO_GUARD}\nBEGIN\n    {upd_body}\nEND",
            name("upd")
        ),
        format!(
            "CREATE TRIGGER {} AFTER DELETE ON {table} WHEN {ECHO_GUARD}\nBEGIN\n    {}\nEND",
            name("del"),
            insert("D", "OLD")
        ),
    ]
}

/// The (unquoted) trigger name of a `CREATE TRIGGER "name" ...` statement.
fn trigger_name(create: &str) -> String {
    let rest = create.trim_start_matches("CREATE TRIGGER ").trim_start();
    let mut out = String::new();
    let mut chars = rest.chars().skip(1).peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            if chars.peek() == Some(&'"') {
                chars.next();
                out.push('"');
                continue;
            }
            break;
        }
        out.push(c);
    }
    out
}

/// A value of `_dbtool_meta`.
pub fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>, Error> {
    let exists = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_dbtool_meta'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT CAST(value AS TEXT) FROM _dbtool_meta WHERE key = ?1",
            [key],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

/// Sets a value of `_dbtool_meta`.
pub fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), Error> {
    conn.execute(
        "INSERT INTO _dbtool_meta(key, value) VALUES (?1, ?2) \
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The captured tables as recorded by [`install`].
pub fn captured(conn: &Connection) -> Result<Vec<Captured>, Error> {
    if !installed(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt =
        conn.prepare("SELECT value FROM _dbtool_meta WHERE key LIKE 'columns:%' ORDER BY key")?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(rows
        .iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect())
}

/// Removes every `_dbtool*` trigger, index and table from the file, in one
/// transaction: afterwards `sqlite_master` is exactly what it was before the
/// sync started. Returns how many objects were dropped. Waits up to 30 s
/// for the write lock.
pub fn remove_all(conn: &Connection) -> Result<usize, Error> {
    crate::txn::immediate(conn, std::time::Duration::from_secs(30), |tx| {
        let mut stmt = tx.prepare(
            "SELECT type, name FROM sqlite_master WHERE name LIKE '\\_dbtool%' ESCAPE '\\' \
             AND type IN ('trigger', 'table') ORDER BY type = 'table', name",
        )?;
        let objects: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        for (kind, name) in &objects {
            let kind = if kind == "trigger" {
                "TRIGGER"
            } else {
                "TABLE"
            };
            tx.execute_batch(&format!("DROP {kind} IF EXISTS {}", quote(name)))?;
        }
        Ok(objects.len())
    })
}

/// The message a write to a moved file fails with.
pub fn moved_message(file: &str, target: &str) -> String {
    format!("{file} has moved to {target} (dbtool cutover); write there, or run dbtool rollback")
}

/// Marks the file as moved to `target` (already masked): BEFORE
/// INSERT/UPDATE/DELETE triggers `_dbtool_moved_*` on every application
/// table that abort the write with [`moved_message`], and
/// `_dbtool_meta('moved_to', target)`. Runs in the caller's transaction (the
/// cutover holds the write lock); the reverse stream passes them with
/// `echo_off`.
pub fn mark_moved(conn: &Connection, file: &str, target: &str) -> Result<(), Error> {
    let message = literal(&moved_message(file, target));
    conn.execute_batch("CREATE TABLE IF NOT EXISTS _dbtool_meta(key TEXT PRIMARY KEY, value)")?;
    for t in app_tables(conn)? {
        for (kind, event) in [("ins", "INSERT"), ("upd", "UPDATE"), ("del", "DELETE")] {
            let name = quote(&format!("_dbtool_moved_{kind}_{}", t.name));
            conn.execute_batch(&format!(
                "DROP TRIGGER IF EXISTS {name};
                 CREATE TRIGGER {name} BEFORE {event} ON {} WHEN {ECHO_GUARD}
                 BEGIN SELECT RAISE(ABORT, {message}); END",
                quote(&t.name)
            ))?;
        }
    }
    set_meta(conn, "moved_to", target)?;
    Ok(())
}

/// Lifts the moved mark (what `dbtool rollback` does): drops every
/// `_dbtool_moved_*` trigger and the `moved_to` row. Runs in the caller's
/// transaction.
pub fn lift_moved(conn: &Connection) -> Result<(), Error> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_dbtool\\_moved\\_%' ESCAPE '\\'",
    )?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    drop(stmt);
    for n in names {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote(&n)))?;
    }
    if installed_meta(conn)? {
        conn.execute("DELETE FROM _dbtool_meta WHERE key = 'moved_to'", [])?;
    }
    Ok(())
}

fn installed_meta(conn: &Connection) -> Result<bool, Error> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_dbtool_meta'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Opens the file for capture, trimming and the cutover's lock: read-write,
/// with a busy timeout so dbtool waits for the app's writes like any writer.
pub fn open_rw(path: &std::path::Path) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Source {
        path: path.display().to_string(),
        reason: format!(
            "cannot open it read-write: {e} (dbtool sync adds capture triggers to the file)"
        ),
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}
