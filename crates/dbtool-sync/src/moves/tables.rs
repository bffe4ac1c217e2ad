//! The tables a move carries: every table of the schema with the team key
//! column (per-table overrides from `[migrate.sharding] keys`), with its
//! columns, primary key and key type, read from the source shard.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::error::Error;

/// Which column holds the team id, per table (`[migrate.sharding]`).
#[derive(Debug, Clone)]
pub struct Keys {
    /// The key column of every table that has it (default `team_id`).
    pub default: String,
    /// Per-table key columns (table -> column), over `default`.
    pub per_table: BTreeMap<String, String>,
    /// Tables that stay where they are even with the key column.
    pub unkeyed_tables: Vec<String>,
}

impl Default for Keys {
    fn default() -> Keys {
        Keys {
            default: "team_id".into(),
            per_table: BTreeMap::new(),
            unkeyed_tables: Vec::new(),
        }
    }
}

/// A column of a moved table.
#[derive(Debug, Clone)]
pub(crate) struct Col {
    pub name: String,
    /// `format_type(type, typmod)`: what text values are cast back to.
    pub ty: String,
    /// A generated column: never written, not in COPY.
    pub generated: bool,
}

/// A table a move carries.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub schema: String,
    pub name: String,
    /// `"schema"."name"`.
    pub qualified: String,
    pub key: String,
    pub key_type: String,
    pub columns: Vec<Col>,
    pub pk: Vec<String>,
}

impl Table {
    pub fn col(&self, name: &str) -> Option<&Col> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The writable columns, quoted and joined.
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .filter(|c| !c.generated)
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `"ident"` with inner quotes doubled.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A SQL string literal of a text array holding `items`.
pub(crate) fn text_array_literal(items: &[String]) -> String {
    let body: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("'{{{}}}'", body.join(",").replace('\'', "''"))
}

/// The keyed tables of `schema` on a shard, in name order.
///
/// # Errors
/// [`Error::Usage`] for a keyed table without a primary key (changes are
/// applied by key); [`Error::Postgres`] when the catalog queries fail.
pub(crate) async fn discover(
    client: &Client,
    place: &str,
    schema: &str,
    keys: &Keys,
) -> Result<Vec<Table>, Error> {
    let rows = client
        .query(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    a.attgenerated <> '', \
                    coalesce(a.attnum = ANY(i.indkey::int2[]), false) \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') \
             ORDER BY c.relname, a.attnum",
            &[&schema],
        )
        .await
        .map_err(Error::pg(
            format!("cannot list the tables of schema {schema:?}"),
            place,
        ))?;
    let mut by_table: BTreeMap<String, (Vec<Col>, Vec<String>)> = BTreeMap::new();
    for r in rows {
        let (table, col, ty, generated, in_pk): (String, String, String, bool, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let entry = by_table.entry(table).or_default();
        if in_pk {
            entry.1.push(col.clone());
        }
        entry.0.push(Col {
            name: col,
            ty,
            generated,
        });
    }
    let mut out = Vec::new();
    for (name, (columns, pk)) in by_table {
        if keys.unkeyed_tables.contains(&name) {
            continue;
        }
        let key = keys.per_table.get(&name).unwrap_or(&keys.default).clone();
        let Some(key_col) = columns.iter().find(|c| c.name == key) else {
            continue;
        };
        if pk.is_empty() {
            return Err(Error::Usage(format!(
                "table {schema}.{name} on {place} has the key column {key:?} but no primary key: \
                 a move applies changes by primary key; add one (or list the table in \
                 [migrate.sharding] unkeyed_tables)"
            )));
        }
        out.push(Table {
            qualified: format!("{}.{}", quote(schema), quote(&name)),
            schema: schema.to_string(),
            key_type: key_col.ty.clone(),
            key,
            name,
            columns,
            pk,
        });
    }
    Ok(out)
}
