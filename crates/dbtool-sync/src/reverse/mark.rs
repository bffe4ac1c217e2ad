//! The marks that keep writes from landing on the wrong side.
//!
//! After a cutover the SQLite file carries the "moved" mark (triggers
//! `_dbtool_moved_*` that abort the app's writes and name the target, and the
//! row `_dbtool_meta('moved_to')`). A rollback lifts it and, in the same
//! freeze, puts the mirror mark on the Postgres tables: triggers
//! `_dbtool_moved_back` that refuse the app's writes with a message naming the
//! SQLite file, so a writer that was waiting on the freeze fails instead of
//! committing a row the file will never see. The forward stream writes
//! through the mark by setting `dbtool.apply = 'on'` in its transactions;
//! the next cutover removes it ([`lift_moved_back`]).

use tokio_postgres::GenericClient;

use super::slot::literal;
use crate::Error;

/// The name of the function and triggers of the Postgres "moved back" mark.
pub const MOVED_BACK: &str = "_dbtool_moved_back";

/// Puts the "moved back" mark on `tables` (qualified, quoted target names):
/// writes to them fail with a message naming `file`, except in transactions
/// that set `dbtool.apply = 'on'` (dbtool's own forward apply).
pub async fn mark_moved_back<C: GenericClient>(
    client: &C,
    tables: &[String],
    file: &str,
) -> Result<(), Error> {
    let msg = format!(
        "table % moved back to the SQLite file {} (dbtool rollback): write there, or run dbtool cutover again",
        file.replace('%', "%%")
    );
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS dbtool;
             CREATE OR REPLACE FUNCTION dbtool.{MOVED_BACK}() RETURNS trigger
             LANGUAGE plpgsql AS $fn$
             BEGIN
                 IF current_setting('dbtool.apply', true) = 'on' THEN
                     RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
                 END IF;
                 RAISE EXCEPTION {} , TG_TABLE_NAME
                     USING ERRCODE = 'read_only_sql_transaction';
             END
             $fn$;",
            literal(&msg)
        ))
        .await?;
    for t in tables {
        client
            .batch_execute(&format!(
                "DROP TRIGGER IF EXISTS {MOVED_BACK} ON {t};
                 CREATE TRIGGER {MOVED_BACK} BEFORE INSERT OR UPDATE OR DELETE ON {t}
                     FOR EACH ROW EXECUTE FUNCTION dbtool.{MOVED_BACK}();"
            ))
            .await?;
    }
    Ok(())
}

/// Removes the "moved back" mark from `tables` (and the function once no
/// table uses it). Called by [`super::start_at_cutover`].
pub async fn lift_moved_back<C: GenericClient>(client: &C, tables: &[String]) -> Result<(), Error> {
    let has_fn = client
        .query_opt(
            "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'dbtool' AND p.proname = $1",
            &[&MOVED_BACK],
        )
        .await?
        .is_some();
    if !has_fn {
        return Ok(());
    }
    for t in tables {
        client
            .batch_execute(&format!("DROP TRIGGER IF EXISTS {MOVED_BACK} ON {t}"))
            .await?;
    }
    let users: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname = $1",
            &[&MOVED_BACK],
        )
        .await?
        .get(0);
    if users == 0 {
        client
            .batch_execute(&format!("DROP FUNCTION IF EXISTS dbtool.{MOVED_BACK}()"))
            .await?;
    }
    Ok(())
}

/// Whether any table carries the "moved back" mark.
pub async fn is_moved_back<C: GenericClient>(client: &C) -> Result<bool, Error> {
    Ok(client
        .query_one(
            "SELECT count(*) > 0 FROM pg_trigger WHERE tgname = $1",
            &[&MOVED_BACK],
        )
        .await?
        .get(0))
}
