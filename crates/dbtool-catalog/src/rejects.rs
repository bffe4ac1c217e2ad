//! `dbtool.rejects`: one record per value a run could not cast. The reject
//! file is written from here at the end of the run, so it has no duplicates
//! however often the run resumed.

use serde::{Deserialize, Serialize};
use tokio_postgres::types::Json;
use tokio_postgres::GenericClient;

use crate::Error;

/// Whether a reject record means the row was left out or a value was nulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectAction {
    /// The row is not in the target.
    Rejected,
    /// The row is in the target with NULL in this column.
    Nulled,
}

impl RejectAction {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectAction::Rejected => "rejected",
            RejectAction::Nulled => "nulled",
        }
    }
}

/// One value that could not be cast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    /// Source table.
    pub table: String,
    /// The row's rowid, when the table has one.
    pub rowid: Option<i64>,
    /// The row's primary key (source column name -> value), when it has one.
    pub pk: Option<serde_json::Value>,
    /// Source column.
    pub column: String,
    /// Why it could not be cast.
    pub reason: String,
    /// The original value: JSON text/number/null, or `{"base64": ...}` for bytes.
    pub value: serde_json::Value,
    /// Row left out, or value nulled.
    pub action: RejectAction,
}

/// A reject record and its position, for insertion.
#[derive(Debug, Clone)]
pub struct PendingReject {
    /// Position of the row in its chunk's read order.
    pub ordinal: i64,
    /// The record.
    pub reject: Reject,
}

/// Inserts reject records for a batch of chunk `chunk`; call inside the batch's transaction.
pub async fn insert_rejects(
    client: &impl GenericClient,
    run: i64,
    chunk: i32,
    rejects: &[PendingReject],
) -> Result<(), Error> {
    if rejects.is_empty() {
        return Ok(());
    }
    // One statement for the whole batch: arrays unnested server-side.
    let mut tables = Vec::with_capacity(rejects.len());
    let mut ordinals = Vec::with_capacity(rejects.len());
    let mut rowids = Vec::with_capacity(rejects.len());
    let mut pks = Vec::with_capacity(rejects.len());
    let mut columns = Vec::with_capacity(rejects.len());
    let mut reasons = Vec::with_capacity(rejects.len());
    let mut values = Vec::with_capacity(rejects.len());
    let mut actions = Vec::with_capacity(rejects.len());
    for p in rejects {
        let r = &p.reject;
        tables.push(r.table.as_str());
        ordinals.push(p.ordinal);
        rowids.push(r.rowid);
        pks.push(r.pk.as_ref().map(Json));
        columns.push(r.column.as_str());
        reasons.push(r.reason.as_str());
        values.push(Json(&r.value));
        actions.push(r.action.as_str());
    }
    client
        .execute(
            "INSERT INTO dbtool.rejects
                    (run_id, chunk, table_name, ordinal, rowid, pk, column_name, reason, value, action)
             SELECT $1, $2, * FROM unnest($3::text[], $4::int8[], $5::int8[], $6::jsonb[], $7::text[],
                                          $8::text[], $9::jsonb[], $10::text[])",
            &[
                &run, &chunk, &tables, &ordinals, &rowids, &pks, &columns, &reasons, &values, &actions,
            ],
        )
        .await?;
    Ok(())
}

/// Every reject record of a run, in table, chunk and row order: the reject file's contents.
pub async fn rejects(client: &impl GenericClient, run: i64) -> Result<Vec<Reject>, Error> {
    let rows = client
        .query(
            "SELECT table_name, rowid, pk, column_name, reason, value, action
               FROM dbtool.rejects WHERE run_id = $1
              ORDER BY table_name, chunk, ordinal, column_name",
            &[&run],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let pk: Option<Json<serde_json::Value>> = r.get(2);
            let value: Option<Json<serde_json::Value>> = r.get(5);
            Reject {
                table: r.get(0),
                rowid: r.get(1),
                pk: pk.map(|j| j.0),
                column: r.get(3),
                reason: r.get(4),
                value: value.map_or(serde_json::Value::Null, |j| j.0),
                action: if r.get::<_, &str>(6) == "nulled" {
                    RejectAction::Nulled
                } else {
                    RejectAction::Rejected
                },
            }
        })
        .collect())
}
