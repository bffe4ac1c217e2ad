//! Shared helpers for the migrate integration tests: run a migration into a
//! fresh database, and check it with an independent reader of both sides.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use dbtool_migrate::plan::{Epoch, Plan};
use dbtool_migrate::report::Report;
use dbtool_migrate::run::{self, Options};
use rusqlite::types::ValueRef;

/// The corpus directory: `DBTOOL_CORPUS`, else `<workspace>/../shared/corpus`.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("DBTOOL_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    };
    dir.is_dir().then_some(dir)
}

/// The result of a migration in a test.
pub struct Migrated {
    /// What `run::migrate` returned.
    pub outcome: Report,
    /// The reject records (parsed JSON lines), empty when there is no file.
    pub rejects: Vec<serde_json::Value>,
}

/// Migrates `path` into the database at `url`, schema `schema`, with
/// `config`; the reject file goes to `dir`.
pub async fn migrate(
    path: &Path,
    url: &str,
    schema: &str,
    config: &dbtool_migrate::Config,
    dir: &Path,
) -> Result<Migrated, dbtool_migrate::Error> {
    let to = url.parse().expect("test url parses");
    let mut opts = Options::new(path, to);
    opts.schema = schema.to_string();
    let rejects_path = dir.join("rejects.jsonl");
    let _ = std::fs::remove_file(&rejects_path);
    opts.rejects = Some(rejects_path.clone());
    opts.jobs = Some(2);
    let outcome = run::migrate(opts, config, &run::Quiet).await?;
    let mut rejects = Vec::new();
    if let Ok(text) = std::fs::read_to_string(&rejects_path) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            rejects.push(serde_json::from_str(line).expect("reject line is JSON"));
        }
    }
    Ok(Migrated { outcome, rejects })
}

fn quote(n: &str) -> String {
    format!("\"{}\"", n.replace('"', "\"\""))
}

/// The original value as the reject file must record it: JSON text, number
/// or null, `{"base64": ..}` for bytes (and for text that is not UTF-8 or
/// holds NUL).
fn original_json(v: ValueRef<'_>) -> serde_json::Value {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => serde_json::Number::from_f64(f)
            .map_or_else(|| f.to_string().into(), serde_json::Value::Number),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) if !s.contains('\0') => s.into(),
            _ => serde_json::json!({ "base64": b64(t), "storage": "text" }),
        },
        ValueRef::Blob(b) => serde_json::json!({ "base64": b64(b) }),
    }
}

/// Every table and column of the source file is in the plan, or the plan
/// says why it is not (skipped, with a reason).
fn check_coverage(conn: &rusqlite::Connection, plan: &Plan) -> anyhow::Result<()> {
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for name in names {
        match plan.tables.iter().find(|t| t.source_name == name) {
            None => {
                let skipped = plan.skipped.iter().find(|s| s.name == name);
                if skipped.is_none_or(|s| s.reason.trim().is_empty()) {
                    bail!("table {name:?} is neither migrated nor reported as skipped");
                }
            }
            Some(t) => {
                let mut s = conn.prepare(&format!("PRAGMA table_xinfo({})", quote(&name)))?;
                let cols: Vec<(String, i64)> = s
                    .query_map([], |r| Ok((r.get(1)?, r.get(6)?)))?
                    .collect::<Result<_, _>>()?;
                for (c, hidden) in cols {
                    // hidden = 1: a virtual table's hidden column (fts5 `rank`).
                    if hidden != 1 && !t.columns.iter().any(|p| p.source_name == c) {
                        bail!("table {name:?}: column {c:?} is not migrated");
                    }
                }
            }
        }
    }
    Ok(())
}

/// Checks, table by table, that every source row is in the target with equal
/// values, or in the reject records (and a nulled value is NULL in the
/// target and in the reject records), and that the exit code matches.
///
/// This is the test's own reader of both sides, sharing no code with the
/// migrator's cast or encoding: the source through rusqlite with its own
/// SQL; the target's column types from the catalog and its values as
/// PostgreSQL renders them; and its own rules (in `expected_value`) for the
/// value each SQLite value must become in a column of that type. From the
/// plan it takes only names (which table and column went where), the
/// date unit detected for epoch numbers, and the rowid expression.
pub async fn check_against_source(
    path: &Path,
    client: &tokio_postgres::Client,
    plan: &Plan,
    migrated: &Migrated,
) -> anyhow::Result<()> {
    // Opened as the migrator opens it (read-only, with the placeholder
    // collations that files from apps with custom collations need).
    let conn = dbtool_migrate::source::open(path)?;
    check_coverage(&conn, plan)?;
    for t in &plan.tables {
        // The target's columns as the catalog has them.
        let cat: BTreeMap<String, String> = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                   FROM pg_attribute a
                  WHERE a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass
                    AND a.attnum > 0 AND NOT a.attisdropped",
                &[&plan.schema, &t.target_name],
            )
            .await
            .with_context(|| {
                format!(
                    "table {} ({}) in the target catalog",
                    t.source_name, t.target_name
                )
            })?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if cat.len() != t.columns.len() {
            bail!(
                "table {}: the target has {} columns, the source {}",
                t.source_name,
                cat.len(),
                t.columns.len()
            );
        }
        let mut types = Vec::new();
        for c in &t.columns {
            let Some(ty) = cat.get(&c.target_name) else {
                bail!(
                    "table {}: column {} ({}) is not in the target",
                    t.source_name,
                    c.source_name,
                    c.target_name
                );
            };
            types.push(Catalog::of(ty));
        }

        // Reject records of this table: rows left out (by rowid, and a
        // count for rows without one) and values nulled (rowid -> column).
        let mut left_out: BTreeMap<i64, &serde_json::Value> = BTreeMap::new();
        let mut left_out_keyless = 0u64;
        let mut nulled: BTreeMap<(i64, String), &serde_json::Value> = BTreeMap::new();
        let mut nulled_keyless = 0u64;
        for r in migrated
            .rejects
            .iter()
            .filter(|r| r["table"].as_str() == Some(&t.source_name))
        {
            if r["reason"].as_str().is_none_or(|s| s.is_empty()) {
                bail!(
                    "table {}: reject record without a reason: {r}",
                    t.source_name
                );
            }
            let rowid = r["rowid"].as_i64();
            let column = r["column"].as_str().unwrap_or_default().to_string();
            match (r["action"].as_str(), rowid) {
                (Some("nulled"), Some(id)) => {
                    if nulled.insert((id, column), r).is_some() {
                        bail!(
                            "table {}: rowid {id} nulled twice in one column",
                            t.source_name
                        );
                    }
                }
                (Some("nulled"), None) => nulled_keyless += 1,
                (_, Some(id)) => {
                    if left_out.insert(id, r).is_some() {
                        bail!("table {}: rowid {id} is rejected twice", t.source_name);
                    }
                }
                (_, None) => left_out_keyless += 1,
            }
        }

        // Source side.
        let rid = t.rowid_expr();
        let mut sel: Vec<String> = rid.iter().map(|r| r.to_string()).collect();
        sel.extend(t.columns.iter().map(|c| quote(&c.source_name)));
        if sel.is_empty() {
            sel.push("1".into());
        }
        let sql = format!("SELECT {} FROM {}", sel.join(", "), quote(&t.source_name));
        let mut stmt = conn
            .prepare(&sql)
            .with_context(|| format!("source query {sql}"))?;
        let off = usize::from(rid.is_some());
        let mut rows = stmt.query([])?;
        let mut expected: Vec<Vec<Option<String>>> = Vec::new();
        let (mut seen_left_out, mut seen_nulled) = (0usize, 0usize);
        let mut unheld_keyless = 0u64;
        while let Some(row) = rows.next()? {
            let rowid: Option<i64> = if rid.is_some() { row.get(0)? } else { None };
            let where_ = || match rowid {
                Some(id) => format!("table {} rowid {id}", t.source_name),
                None => format!("table {} (no rowid)", t.source_name),
            };
            if let Some(r) = rowid.and_then(|id| left_out.get(&id)) {
                seen_left_out += 1;
                let col = r["column"].as_str().unwrap_or_default();
                let j = t
                    .columns
                    .iter()
                    .position(|c| c.source_name == col)
                    .with_context(|| {
                        format!("{}: reject names unknown column {col:?}", where_())
                    })?;
                let v = row.get_ref(off + j)?;
                let orig = original_json(v);
                if r["value"] != orig {
                    bail!(
                        "{} column {col}: reject record holds {} but the source holds {orig}",
                        where_(),
                        r["value"]
                    );
                }
                // A reject must be a value the column cannot hold by this
                // oracle's own rules: a regression that rejects good rows
                // (with their values faithfully recorded) fails here.
                if let Ok(fits) = expected_value(v, &types[j], t.columns[j].epoch) {
                    bail!(
                        "{} column {col}: the row is rejected ({}), but its value {orig} fits the column as {fits:?}",
                        where_(),
                        r["reason"]
                    );
                }
                continue;
            }
            let mut values = Vec::with_capacity(t.columns.len());
            let mut unheld = None;
            for (j, c) in t.columns.iter().enumerate() {
                let v = row.get_ref(off + j)?;
                if let Some(r) = rowid.and_then(|id| nulled.get(&(id, c.source_name.clone()))) {
                    seen_nulled += 1;
                    let orig = original_json(v);
                    if r["value"] != orig {
                        bail!(
                            "{} column {}: nulled value recorded as {} but the source holds {orig}",
                            where_(),
                            c.source_name,
                            r["value"]
                        );
                    }
                    if let Ok(fits) = expected_value(v, &types[j], c.epoch) {
                        bail!(
                            "{} column {}: the value is nulled ({}), but {orig} fits the column as {fits:?}",
                            where_(),
                            c.source_name,
                            r["reason"]
                        );
                    }
                    values.push(None);
                    continue;
                }
                match expected_value(v, &types[j], c.epoch) {
                    Ok(x) => values.push(x),
                    Err(why) => {
                        unheld = Some(format!(
                            "column {} value {} ({why})",
                            c.source_name,
                            original_json(v)
                        ));
                        values.push(Some(format!("<not holdable: {why}>")));
                    }
                }
            }
            match (unheld, rowid) {
                (Some(u), Some(_)) => bail!(
                    "{}: {u}, yet the row is not in the reject records",
                    where_()
                ),
                (Some(_), None) => unheld_keyless += 1,
                (None, _) => expected.push(values),
            }
        }
        if seen_left_out != left_out.len() || seen_nulled != nulled.len() {
            bail!(
                "table {}: the reject records name {} rejected rows and {} nulled values by rowid, but only {seen_left_out} and {seen_nulled} of them are source rows",
                t.source_name,
                left_out.len(),
                nulled.len()
            );
        }
        if nulled_keyless > 0 {
            bail!("table {}: {nulled_keyless} nulled values without a rowid: the check cannot place them", t.source_name);
        }

        // Rows without a rowid that the oracle cannot hold must be exactly the
        // ones rejected without one.
        if unheld_keyless != left_out_keyless {
            bail!(
                "table {}: {unheld_keyless} rows without a rowid hold values the target cannot, but {left_out_keyless} are rejected",
                t.source_name
            );
        }

        // Target side, rendered by PostgreSQL.
        let mut tsel: Vec<String> = t
            .columns
            .iter()
            .zip(&types)
            .map(|(c, ty)| ty.select(&quote(&c.target_name)))
            .collect();
        if tsel.is_empty() {
            tsel.push("NULL::text".into());
        }
        let tsql = format!(
            "SELECT {} FROM {}.{}",
            tsel.join(", "),
            quote(&plan.schema),
            quote(&t.target_name)
        );
        let trows = client
            .query(tsql.as_str(), &[])
            .await
            .with_context(|| format!("target query {tsql}"))?;
        let mut actual: Vec<Vec<Option<String>>> = Vec::with_capacity(trows.len());
        for r in &trows {
            let mut vals = Vec::with_capacity(types.len());
            for (j, ty) in types.iter().enumerate() {
                let s: Option<String> = r.try_get(j)?;
                vals.push(s.map(|s| ty.canonical_target(s)));
            }
            actual.push(vals);
        }

        expected.sort();
        actual.sort();
        if expected != actual {
            let missing: Vec<_> = expected
                .iter()
                .filter(|e| actual.binary_search(e).is_err())
                .collect();
            let extra: Vec<_> = actual
                .iter()
                .filter(|a| expected.binary_search(a).is_err())
                .collect();
            let show = |rows: &[&Vec<Option<String>>]| -> String {
                rows.iter()
                    .take(3)
                    .map(|r| {
                        let s = format!("{r:?}");
                        if s.len() > 300 {
                            format!("{}...", s.chars().take(300).collect::<String>())
                        } else {
                            s
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            bail!(
                "table {}: target differs from the source: {} expected rows, {} target rows; {} missing (e.g. {}); {} unexpected (e.g. {})",
                t.source_name,
                expected.len(),
                actual.len(),
                missing.len(),
                show(&missing),
                extra.len(),
                show(&extra)
            );
        }
    }
    let want = if migrated.rejects.is_empty() { 0 } else { 3 };
    if migrated.outcome.exit_code != want {
        bail!(
            "exit code {} but expected {want} ({} reject records)",
            migrated.outcome.exit_code,
            migrated.rejects.len()
        );
    }
    Ok(())
}

/// A target column's type as the catalog states it (not as the plan says).
#[derive(Debug, Clone, PartialEq)]
enum Catalog {
    Bool,
    Int(i128, i128),
    Float,
    Numeric,
    Text,
    Bytea,
    Timestamptz,
    Timestamp,
    Date,
    Other(String),
}

impl Catalog {
    fn of(type_name: &str) -> Catalog {
        match type_name {
            "boolean" => Catalog::Bool,
            "smallint" => Catalog::Int(i16::MIN.into(), i16::MAX.into()),
            "integer" => Catalog::Int(i32::MIN.into(), i32::MAX.into()),
            "bigint" => Catalog::Int(i64::MIN.into(), i64::MAX.into()),
            "double precision" | "real" => Catalog::Float,
            "text" => Catalog::Text,
            "bytea" => Catalog::Bytea,
            "timestamp with time zone" => Catalog::Timestamptz,
            "timestamp without time zone" => Catalog::Timestamp,
            "date" => Catalog::Date,
            t if t.starts_with("numeric") => Catalog::Numeric,
            t => Catalog::Other(t.to_string()),
        }
    }

    /// The SELECT expression that renders column `q` (quoted) as the
    /// oracle's canonical text.
    fn select(&self, q: &str) -> String {
        match self {
            Catalog::Bool => format!("CASE WHEN {q} THEN 't' WHEN NOT {q} THEN 'f' END"),
            Catalog::Int(..) | Catalog::Numeric | Catalog::Float | Catalog::Other(_) => {
                format!("{q}::text")
            }
            Catalog::Text => q.to_string(),
            Catalog::Bytea => format!("encode({q}, 'hex')"),
            Catalog::Timestamptz | Catalog::Timestamp => {
                format!("(extract(epoch FROM {q}) * 1000000)::numeric(30,0)::text")
            }
            Catalog::Date => format!("({q} - DATE '1970-01-01')::text"),
        }
    }

    /// The target's text (from [`Catalog::select`]) in canonical form.
    fn canonical_target(&self, s: String) -> String {
        match self {
            Catalog::Float => float_key(s.parse::<f64>().unwrap_or(f64::NAN), &s),
            Catalog::Numeric => decimal_key(&s).unwrap_or(s),
            _ => s,
        }
    }
}

/// A double as its exact bits (so 0.1 and 0.1000000000000000055 differ).
fn float_key(f: f64, raw: &str) -> String {
    if f.is_nan() {
        format!("float:{raw}")
    } else {
        format!("float:{:016x}", f.to_bits())
    }
}

/// A decimal number as `sign digits e exponent` with no leading or trailing
/// zeros, so `1.50`, `1.5` and `15e-1` are one key; `None` if `s` is not a
/// plain decimal.
fn decimal_key(s: &str) -> Option<String> {
    let s = s.trim();
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mant, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i64>().ok()?),
        None => (body, 0),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mut exp = exp - i64::try_from(frac.len()).ok()?;
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Some("0".into());
    }
    let kept = trimmed.trim_end_matches('0');
    exp += i64::try_from(trimmed.len() - kept.len()).ok()?;
    Some(format!("{}{kept}e{exp}", if neg { "-" } else { "" }))
}

/// The value a SQLite value must have in a target column of type `ty`, as
/// canonical text, decided here without the migrator's cast code; `Err`
/// says why the value cannot be held (the row must then be rejected or the
/// value nulled).
fn expected_value(
    v: ValueRef<'_>,
    ty: &Catalog,
    epoch: Option<Epoch>,
) -> Result<Option<String>, String> {
    let utf8 = |b: &[u8]| -> Result<String, String> {
        match std::str::from_utf8(b) {
            Ok(s) if s.contains('\0') => Err("text holds NUL".into()),
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err("not UTF-8".into()),
        }
    };
    let no = |what: &str| Err(format!("{what} does not fit {ty:?}"));
    if let ValueRef::Null = v {
        return Ok(None);
    }
    Ok(Some(match ty {
        Catalog::Bool => match v {
            ValueRef::Integer(0) => "f".into(),
            ValueRef::Integer(1) => "t".into(),
            ValueRef::Text(b) => match utf8(b)?.to_ascii_lowercase().as_str() {
                "t" | "true" => "t".into(),
                "f" | "false" => "f".into(),
                _ => return no("text"),
            },
            _ => return no("value"),
        },
        Catalog::Int(lo, hi) => match v {
            ValueRef::Integer(i) if (*lo..=*hi).contains(&i128::from(i)) => i.to_string(),
            _ => return no("value"),
        },
        Catalog::Float => match v {
            ValueRef::Real(f) => float_key(f, ""),
            ValueRef::Integer(i) if (i as f64) as i128 == i128::from(i) => float_key(i as f64, ""),
            _ => return no("value"),
        },
        Catalog::Numeric => match v {
            ValueRef::Integer(i) => decimal_key(&i.to_string()).unwrap_or_default(),
            // The shortest digits that read back as the same double.
            ValueRef::Real(f) if f.is_finite() => {
                decimal_key(&format!("{f:e}")).unwrap_or_default()
            }
            ValueRef::Real(f) => (if f > 0.0 { "Infinity" } else { "-Infinity" }).into(),
            ValueRef::Text(b) => decimal_key(&utf8(b)?).ok_or("text is not a number")?,
            ValueRef::Blob(_) | ValueRef::Null => return no("blob"),
        },
        Catalog::Text | Catalog::Other(_) => match v {
            ValueRef::Integer(i) => i.to_string(),
            ValueRef::Real(f) if f.is_finite() => {
                let s = format!("{f:?}");
                // Whatever digits were chosen, they must read back as the same double.
                debug_assert_eq!(s.parse::<f64>().ok(), Some(f));
                s
            }
            ValueRef::Real(f) => (if f > 0.0 { "Infinity" } else { "-Infinity" }).into(),
            ValueRef::Text(b) | ValueRef::Blob(b) => utf8(b)?,
            ValueRef::Null => unreachable!(),
        },
        Catalog::Bytea => match v {
            ValueRef::Text(b) | ValueRef::Blob(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
            _ => return no("number"),
        },
        Catalog::Timestamptz | Catalog::Timestamp | Catalog::Date => {
            let micros = match v {
                ValueRef::Integer(i) => match epoch {
                    Some(Epoch::Seconds) => i128::from(i) * 1_000_000,
                    Some(Epoch::Millis) => i128::from(i) * 1_000,
                    Some(Epoch::Micros) => i128::from(i),
                    Some(Epoch::Julian) => {
                        julian_micros(i as f64).ok_or("julian day out of range")?
                    }
                    None => return no("integer"),
                },
                ValueRef::Real(f) if f.is_finite() => match epoch {
                    Some(Epoch::Seconds) => exact_scaled(f, 1_000_000),
                    Some(Epoch::Millis) => exact_scaled(f, 1_000),
                    Some(Epoch::Micros) => exact_scaled(f, 1),
                    Some(Epoch::Julian) => julian_micros(f).ok_or("julian day out of range")?,
                    None => return no("real"),
                },
                ValueRef::Text(b) => {
                    let s = utf8(b)?;
                    let (us, zoned, date_only) = parse_date_text(&s).ok_or("text is not a date")?;
                    match ty {
                        Catalog::Timestamptz if !zoned => return no("text without a zone"),
                        Catalog::Timestamp | Catalog::Date if zoned => {
                            return no("text with a zone")
                        }
                        Catalog::Date if !date_only => return no("text with a time"),
                        _ => us,
                    }
                }
                _ => return no("value"),
            };
            // PostgreSQL's range: 4713 BC to 294276 AD.
            if !(-210_866_803_200_000_000..=9_224_318_016_000_000_000).contains(&micros) {
                return Err(format!("{micros} µs is out of the timestamp range"));
            }
            if *ty == Catalog::Date {
                micros.div_euclid(86_400_000_000).to_string()
            } else {
                micros.to_string()
            }
        }
    }))
}

/// `f * scale`, computed exactly from the double's bits and rounded half
/// away from zero to an integer.
fn exact_scaled(f: f64, scale: i128) -> i128 {
    let bits = f.to_bits();
    let neg = bits >> 63 == 1;
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1 << 52) - 1);
    let (m, e) = if exp == 0 {
        (frac, -1074)
    } else {
        (frac | 1 << 52, exp - 1075)
    };
    let mag = if e > 30 {
        // Beyond any timestamp: saturate (the range check rejects it).
        i128::MAX / 2
    } else if e >= 0 {
        (i128::from(m) * scale) << e
    } else if e <= -120 {
        0
    } else {
        let num = i128::from(m) * scale;
        let den = 1i128 << -e;
        (num + den / 2) / den
    };
    if neg {
        -mag
    } else {
        mag
    }
}

/// A Julian day number as µs since 1970, exactly (the day number is
/// `2440587.5` at the Unix epoch); `None` outside years 1..9999.
fn julian_micros(f: f64) -> Option<i128> {
    if !(1_721_425.5..=5_373_484.5).contains(&f) {
        return None;
    }
    // 2440587.5 days = 210866760000000000 µs; f * 86400e6 exactly, minus it.
    Some(exact_scaled(f, 86_400_000_000) - 210_866_760_000_000_000)
}

/// Date text the migrator promises to read: ISO 8601 date, date and time
/// with `T` or space, optional seconds and fraction (µs or coarser), optional
/// zone (`Z`, `+hh`, `+hhmm`, `+hh:mm`), and MediaWiki's 14 digits (UTC).
/// Returns (µs since 1970 in UTC or wall-clock, zoned, date only).
fn parse_date_text(s: &str) -> Option<(i128, bool, bool)> {
    use chrono::{NaiveDate, NaiveDateTime, Timelike as _};
    if s.len() == 14 && s.bytes().all(|c| c.is_ascii_digit()) {
        let t = NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S").ok()?;
        return Some((t.and_utc().timestamp_micros().into(), true, false));
    }
    if s.len() == 10 {
        let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
        if !s[5..].starts_with(|c: char| c.is_ascii_digit()) || s.as_bytes()[4] != b'-' {
            return None;
        }
        let t = d.and_hms_opt(0, 0, 0)?;
        return Some((t.and_utc().timestamp_micros().into(), false, true));
    }
    // Split off a zone after the time of day.
    let (body, offset_s, zoned) = if let Some(b) = s.strip_suffix(['Z', 'z']) {
        (b, 0i64, true)
    } else if let Some(i) = s
        .get(16..)
        .and_then(|t| t.rfind(['+', '-']))
        .map(|i| i + 16)
    {
        let z = &s[i + 1..];
        let (h, m) = match z.len() {
            2 => (z, "00"),
            4 => (&z[..2], &z[2..]),
            5 if &z[2..3] == ":" => (&z[..2], &z[3..]),
            _ => return None,
        };
        let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
        if h > 15 || m > 59 {
            return None;
        }
        let sign = if &s[i..=i] == "-" { -1 } else { 1 };
        (&s[..i], sign * (h * 3600 + m * 60), true)
    } else {
        (s, 0, false)
    };
    let body = body.strip_suffix(' ').unwrap_or(body);
    // Fixed-width fields only: chrono alone would take `2020-1-5`.
    let b = body.as_bytes();
    if b.len() < 16
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b' ' | b'T')
        || b[13] != b':'
    {
        return None;
    }
    let norm = format!("{} {}", &body[..10], &body[11..]);
    let t = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(&norm, f).ok())?;
    if t.nanosecond() % 1000 != 0 {
        return None;
    }
    let us = i128::from(t.and_utc().timestamp_micros()) - i128::from(offset_s) * 1_000_000;
    Some((us, zoned, false))
}

/// Creates a SQLite file at `dir/name` by running `sql`.
pub fn sqlite_file(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    let c = rusqlite::Connection::open(&p).expect("create sqlite file");
    c.execute_batch(sql).expect("build sqlite file");
    drop(c);
    p
}

/// Plans `path` as `dbtool plan` does (`Profiling::Full`) and as a
/// migration does (`Profiling::Load`) and checks that the two decide the
/// same: the plans are equal but for what the load's profile leaves out
/// (which kind each text is: the evidence, the reasons and date formats
/// that name kinds, the note on ISO dates kept as text, and predicted texts
/// Postgres cannot hold), each column holds as many values of each storage
/// class in both, and a column whose texts were all classified has the
/// same evidence and predictions. A file that cannot be planned must fail
/// both ways. Returns how many texts the load's plan left unclassified.
pub fn check_load_profiling(
    path: &Path,
    config: &dbtool_migrate::plan::PlanConfig,
) -> anyhow::Result<u64> {
    use dbtool_migrate::plan::{self, Profiling};
    use dbtool_migrate::profile::Kind;
    let plan_with = |profiling| -> Result<Plan, dbtool_migrate::Error> {
        let conn = dbtool_migrate::source::open(path)?;
        let src = dbtool_migrate::source::inspect(&conn, path)?;
        plan::plan_timed_with(&conn, &src, config, "public", profiling).map(|(p, _)| p)
    };
    let (full, load) = match (plan_with(Profiling::Full), plan_with(Profiling::Load)) {
        (Ok(f), Ok(l)) => (f, l),
        (Err(_), Err(_)) => return Ok(0),
        (f, l) => bail!(
            "planned one way only: full {:?}, load {:?}",
            f.err().map(|e| e.to_string()),
            l.err().map(|e| e.to_string())
        ),
    };
    let strip = |p: &Plan| -> anyhow::Result<serde_json::Value> {
        let mut v = serde_json::to_value(p)?;
        for t in v["tables"].as_array_mut().context("tables")? {
            for c in t["columns"].as_array_mut().context("columns")? {
                let c = c.as_object_mut().context("column")?;
                for k in [
                    "evidence",
                    "reason",
                    "predicted",
                    "date_formats",
                    "unclassified_text",
                ] {
                    c.remove(k);
                }
            }
            // A migration leaves the orphan count to the finish phase.
            for fk in t["foreign_keys"].as_array_mut().context("foreign keys")? {
                let fk = fk.as_object_mut().context("foreign key")?;
                for k in ["orphans", "orphan_rowids", "orphans_deferred"] {
                    fk.remove(k);
                }
            }
            let notes = t["notes"].as_array_mut().context("notes")?;
            notes.retain(|n| !n.as_str().unwrap_or("").contains("holds only ISO dates"));
        }
        Ok(v)
    };
    if strip(&full)? != strip(&load)? {
        bail!(
            "the plans differ beyond the evidence:\nfull: {:#}\nload: {:#}",
            strip(&full)?,
            strip(&load)?
        );
    }
    let mut unclassified = 0;
    for (ft, lt) in full.tables.iter().zip(&load.tables) {
        for (f, l) in ft.columns.iter().zip(&lt.columns) {
            let at = format!("{}.{}", ft.source_name, f.source_name);
            let classes = |c: &dbtool_migrate::plan::ColumnPlan| {
                let mut m: BTreeMap<&str, u64> = BTreeMap::new();
                for (k, n) in &c.evidence {
                    *m.entry(k.storage_class()).or_default() += n;
                }
                m
            };
            if classes(f) != classes(l) {
                bail!(
                    "{at}: values per storage class differ: full {:?}, load {:?}",
                    f.evidence,
                    l.evidence
                );
            }
            let held = |c: &dbtool_migrate::plan::ColumnPlan| -> Vec<(Kind, u64, Vec<i64>)> {
                c.predicted
                    .iter()
                    .filter(|p| !p.kind.is_unholdable_text())
                    .map(|p| (p.kind, p.count, p.sample_rowids.clone()))
                    .collect()
            };
            if held(f) != held(l) {
                bail!(
                    "{at}: predictions differ: full {:?}, load {:?}",
                    f.predicted,
                    l.predicted
                );
            }
            if l.unclassified_text == 0 {
                if (&f.evidence, &f.reason, &f.date_formats)
                    != (&l.evidence, &l.reason, &l.date_formats)
                    || f.predicted.len() != l.predicted.len()
                {
                    bail!("{at}: every value was classified, yet the evidence differs: full {f:?}, load {l:?}");
                }
            } else if f.unclassified_text != 0 {
                bail!("{at}: the full profile left texts unclassified");
            }
            unclassified += l.unclassified_text;
        }
    }
    Ok(unclassified)
}
