//! The target database: connecting a migration session.
//!
//! DDL for the target is [`crate::ddl`], its identifiers [`crate::ident`].

use crate::Error;

/// Connects a migration session to `target` (with its TLS settings), with
/// the session settings every migration connection uses.
///
/// # Errors
/// [`Error::Other`] naming the host and the cause (never the password) when
/// the connection fails; [`Error::Postgres`] when the settings are refused.
pub async fn connect(target: &dbtool_pool::Target) -> Result<tokio_postgres::Client, Error> {
    // The message names the host and the cause chain (TLS, auth), never the password.
    let client = target
        .connect()
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    // Atomicity is what exactly-once needs, not durability of the last
    // commit: see the module docs.
    client
        .batch_execute("SET synchronous_commit = off; SET application_name = 'dbtool migrate'")
        .await?;
    Ok(client)
}
