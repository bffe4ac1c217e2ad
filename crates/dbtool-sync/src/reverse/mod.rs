//! Reverse sync: after a cutover, Postgres changes stream back into the
//! SQLite file so that a rollback loses nothing.

use crate::Error;

/// Starts the reverse stream at the cutover point: called by the cutover while
/// the app's writes are frozen, once per target (per shard with `--shards`),
/// after the forward stream has drained. `tables` are the migrated tables as
/// qualified, quoted target names. Returns the stream's start position (the
/// LSN at which the slot became consistent), which the cutover records.
///
/// Nothing committed in Postgres before this call is streamed back; everything
/// committed after it is.
pub async fn start_at_cutover(
    client: &tokio_postgres::Client,
    slot: &str,
    tables: &[String],
) -> Result<String, Error> {
    let _ = (client, slot, tables);
    Err(Error::Usage("reverse sync is not built yet".into()))
}
