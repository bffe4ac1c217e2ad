//! Structure checks on the target: every planned table and column (with its
//! type and NOT NULL), the primary key, indexes and unique constraints,
//! foreign keys (present and valid), defaults, and identities/sequences
//! above max(id).

use std::collections::HashMap;

use dbtool_migrate::plan::IndexKind;
use tokio_postgres::Client;

use crate::report::StructureIssue;
use crate::spec::{quote, Key, TableSpec};
use crate::Error;

struct Issues<'a> {
    table: &'a str,
    out: &'a mut Vec<StructureIssue>,
}

impl Issues<'_> {
    fn problem(&mut self, kind: &str, detail: String) {
        self.push(kind, detail, false);
    }

    fn warning(&mut self, kind: &str, detail: String) {
        self.push(kind, detail, true);
    }

    fn push(&mut self, kind: &str, detail: String, warning: bool) {
        self.out.push(StructureIssue {
            table: self.table.to_owned(),
            kind: kind.to_owned(),
            detail,
            warning,
        });
    }
}

struct TargetColumn {
    name: String,
    ty: String,
    not_null: bool,
    identity: bool,
    default: Option<String>,
    attnum: i16,
}

/// Checks the structure of every table in `specs`; returns the issues found.
pub(crate) async fn check(
    client: &Client,
    schema: &str,
    specs: &[std::sync::Arc<TableSpec>],
) -> Result<Vec<StructureIssue>, Error> {
    let mut out = Vec::new();
    // Source table name -> target table name, for FK targets.
    let targets: HashMap<String, &TableSpec> = specs
        .iter()
        .map(|s| (s.source.to_ascii_lowercase(), s.as_ref()))
        .collect();
    for spec in specs {
        let mut issues = Issues {
            table: &spec.source,
            out: &mut out,
        };
        check_table(client, schema, spec, &targets, &mut issues).await?;
    }
    Ok(out)
}

async fn check_table(
    client: &Client,
    schema: &str,
    spec: &TableSpec,
    targets: &HashMap<String, &TableSpec>,
    issues: &mut Issues<'_>,
) -> Result<(), Error> {
    let qualified = format!("{}.{}", quote(schema), quote(&spec.target));
    let what = |w: &str| format!("checking {w} of {qualified}");
    let oid: Option<u32> = client
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &spec.target],
        )
        .await
        .map_err(Error::target(what("the table")))?
        .map(|r| r.get(0));
    let Some(oid) = oid else {
        issues.problem("missing table", format!("{qualified} does not exist"));
        return Ok(());
    };

    // Columns: presence, type, NOT NULL, default, identity.
    let cols: Vec<TargetColumn> = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    a.attidentity <> '' OR pg_get_serial_sequence($2, a.attname) IS NOT NULL, \
                    pg_get_expr(d.adbin, d.adrelid), a.attnum \
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid, &qualified],
        )
        .await
        .map_err(Error::target(what("the columns")))?
        .into_iter()
        .map(|r| TargetColumn {
            name: r.get(0),
            ty: r.get(1),
            not_null: r.get(2),
            identity: r.get(3),
            default: r.get(4),
            attnum: r.get(5),
        })
        .collect();
    let by_name: HashMap<&str, &TargetColumn> = cols.iter().map(|c| (c.name.as_str(), c)).collect();
    let by_num: HashMap<i16, &str> = cols.iter().map(|c| (c.attnum, c.name.as_str())).collect();
    let target_of = |source_col: &str| -> Option<&str> {
        spec.columns
            .iter()
            .find(|c| c.source.eq_ignore_ascii_case(source_col))
            .map(|c| c.target.as_str())
    };
    for c in &spec.columns {
        let Some(tc) = by_name.get(c.target.as_str()) else {
            issues.problem(
                "missing column",
                format!("{}.{} does not exist", spec.target, c.target),
            );
            continue;
        };
        if tc.ty != c.pg_type.sql_name() {
            issues.problem(
                "column type",
                format!(
                    "{}.{} is {}, planned {}",
                    spec.target,
                    c.target,
                    tc.ty,
                    c.pg_type.sql_name()
                ),
            );
        }
        if c.not_null && !tc.not_null {
            issues.problem(
                "not null",
                format!("{}.{} lacks the planned NOT NULL", spec.target, c.target),
            );
        }
        let planned_default = spec
            .plan
            .columns
            .iter()
            .find(|p| p.target_name == c.target)
            .and_then(|p| p.default.as_deref());
        if let Some(d) = planned_default {
            if tc.default.is_none() && !tc.identity {
                issues.problem(
                    "missing default",
                    format!(
                        "{}.{} has no default; planned DEFAULT {d}",
                        spec.target, c.target
                    ),
                );
            }
        }
    }

    // Constraints.
    let cons = client
        .query(
            "SELECT conname::text, contype::text, convalidated, conkey, confrelid, \
                    confrelid::regclass::text, confkey \
             FROM pg_constraint WHERE conrelid = $1",
            &[&oid],
        )
        .await
        .map_err(Error::target(what("the constraints")))?;
    let names = |keys: &Option<Vec<i16>>| -> Vec<String> {
        keys.iter()
            .flatten()
            .map(|k| {
                by_num
                    .get(k)
                    .map_or_else(|| format!("#{k}"), |s| (*s).to_owned())
            })
            .collect()
    };
    if spec.key != Key::None {
        let want: Vec<&str> = spec
            .key_columns()
            .iter()
            .map(|&i| spec.columns[i].target.as_str())
            .collect();
        let pk = cons.iter().find(|r| r.get::<_, String>(1) == "p");
        match pk {
            None => issues.problem(
                "missing primary key",
                format!("{} has no PRIMARY KEY ({})", spec.target, want.join(", ")),
            ),
            Some(r) => {
                let have = names(&r.get(3));
                if have != want {
                    issues.problem(
                        "primary key",
                        format!(
                            "{} PRIMARY KEY is ({}), planned ({})",
                            spec.target,
                            have.join(", "),
                            want.join(", ")
                        ),
                    );
                }
            }
        }
    }

    // Indexes (unique constraints are unique indexes too).
    let idx = client
        .query(
            "SELECT c.relname::text, i.indisunique, i.indkey::int2[], i.indpred IS NOT NULL, i.indexprs IS NOT NULL \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1",
            &[&oid],
        )
        .await
        .map_err(Error::target(what("the indexes")))?;
    let pg_indexes: Vec<(String, bool, Vec<String>, bool, bool)> = idx
        .iter()
        .map(|r| {
            let keys: Vec<i16> = r.get(2);
            (r.get(0), r.get(1), names(&Some(keys)), r.get(3), r.get(4))
        })
        .collect();
    let pk_unique = crate::planned::pk_planned_unique(&spec.plan);
    for ip in &spec.plan.indexes {
        // The primary key is checked above, unless the plan made it a UNIQUE
        // constraint (it holds NULLs): then it is checked like one.
        if ip.kind == IndexKind::PrimaryKey && !pk_unique {
            continue;
        }
        if ip.sql.is_none() {
            issues.warning(
                "index not migrated",
                format!(
                    "{} ({}): {}",
                    ip.source_name,
                    ip.kind,
                    ip.note.as_deref().unwrap_or("not translated by the plan")
                ),
            );
            continue;
        }
        if !pg_indexes.iter().any(|(name, ..)| *name == ip.target_name) {
            let kind = if ip.kind == IndexKind::Unique || ip.kind == IndexKind::PrimaryKey {
                "missing unique constraint"
            } else {
                "missing index"
            };
            issues.problem(
                kind,
                format!("{} ({}) on {}", ip.target_name, ip.source_name, spec.target),
            );
        }
    }

    // Foreign keys: present, and valid or with no more orphans than the source had.
    for fk in &spec.plan.foreign_keys {
        let Some(parent) = targets.get(&fk.ref_table.to_ascii_lowercase()) else {
            issues.warning(
                "foreign key",
                format!(
                    "{} references {}, which is not compared",
                    spec.source, fk.ref_table
                ),
            );
            continue;
        };
        if fk.sql.is_none() {
            issues.warning(
                "foreign key not migrated",
                format!(
                    "{} -> {}: {}",
                    fk.columns.join(", "),
                    fk.ref_table,
                    fk.problem.as_deref().unwrap_or("not created by the plan")
                ),
            );
            continue;
        }
        let from: Option<Vec<&str>> = fk.columns.iter().map(|c| target_of(c)).collect();
        let Some(from) = from else { continue };
        let found = cons
            .iter()
            .find(|r| r.get::<_, String>(1) == "f" && r.get::<_, String>(0) == fk.target_name);
        let Some(r) = found else {
            issues.problem(
                "missing foreign key",
                format!(
                    "{} on {} ({}) REFERENCES {}",
                    fk.target_name,
                    spec.target,
                    from.join(", "),
                    parent.target
                ),
            );
            continue;
        };
        let validated: bool = r.get(2);
        if validated {
            continue;
        }
        // NOT VALID: count the orphans on the target.
        let parent_cols: Vec<String> = match r.get::<_, Option<Vec<i16>>>(6) {
            Some(keys) => {
                let rows = client
                    .query(
                        "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum = ANY($2) \
                         ORDER BY array_position($2, attnum)",
                        &[&r.get::<_, u32>(4), &keys],
                    )
                    .await
                    .map_err(Error::target(what("a foreign key")))?;
                rows.iter().map(|r| r.get(0)).collect()
            }
            None => Vec::new(),
        };
        let conname: String = r.get(0);
        let parent_name: String = r.get(5);
        let not_null: Vec<String> = from
            .iter()
            .map(|c| format!("c.{} IS NOT NULL", quote(c)))
            .collect();
        let join: Vec<String> = from
            .iter()
            .zip(&parent_cols)
            .map(|(c, p)| format!("p.{} = c.{}", quote(p), quote(c)))
            .collect();
        let sql = format!(
            "SELECT count(*) FROM {qualified} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {parent_name} p WHERE {})",
            not_null.join(" AND "),
            join.join(" AND ")
        );
        let n: i64 = client
            .query_one(&sql, &[])
            .await
            .map_err(Error::target(what("foreign key orphans")))?
            .get(0);
        let in_source = fk.orphans;
        let detail = format!(
            "{conname} on {} is NOT VALID with {n} orphan rows on the target ({in_source} in the source)",
            spec.target
        );
        if n as u64 > in_source {
            issues.problem("foreign key orphans", detail);
        } else {
            issues.warning("foreign key not valid", detail);
        }
    }

    // Identities and sequences above max(column).
    for c in cols.iter().filter(|c| c.identity) {
        let seq: Option<String> = client
            .query_one(
                "SELECT pg_get_serial_sequence($1, $2)",
                &[&qualified, &c.name],
            )
            .await
            .map_err(Error::target(what("a sequence")))?
            .get(0);
        let Some(seq) = seq else { continue };
        let row = client
            .query_one(
                &format!(
                    "SELECT last_value, is_called, (SELECT max({})::int8 FROM {qualified}) FROM {seq}",
                    quote(&c.name)
                ),
                &[],
            )
            .await
            .map_err(Error::target(what("a sequence")))?;
        let (last, called, max): (i64, bool, Option<i64>) = (row.get(0), row.get(1), row.get(2));
        let next = if called { last.saturating_add(1) } else { last };
        if let Some(max) = max {
            if next <= max {
                issues.problem(
                    "sequence behind max(id)",
                    format!("{seq} would give {next} next, but max({}) is {max}", c.name),
                );
            }
        }
    }
    if let Some((i, _)) = spec.plan.identity {
        if let Some(c) = spec.columns.get(i) {
            if by_name
                .get(c.target.as_str())
                .is_some_and(|tc| !tc.identity)
            {
                issues.problem(
                    "missing identity",
                    format!(
                        "{}.{} is planned as an identity column but has none",
                        spec.target, c.target
                    ),
                );
            }
        }
    }
    Ok(())
}
