//! The bucket mover's error type.

/// What can go wrong moving buckets between shards. Messages name the move,
/// shard, table or setting at fault and say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid options or state for the requested move (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// A Postgres error on a shard or the catalog, with what was being done.
    #[error("{action} on {place}: {message}")]
    Postgres {
        /// What was being done.
        action: String,
        /// The shard or catalog (its name; never a password).
        place: String,
        /// The server's message (with its detail and hint), or the driver's.
        message: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A connection could not be opened.
    #[error("cannot connect: {0}")]
    Connect(#[from] dbtool_pool::ConnectError),
    /// The shard map or catalog refused something.
    #[error(transparent)]
    Shard(#[from] dbtool_shard::Error),
    /// A change stream message could not be decoded.
    #[error("cannot decode a change from the source shard: {0}")]
    Decode(String),
    /// The rows of the moving buckets differ between the two shards at the
    /// switch (the map was not changed).
    #[error("the moved rows differ between {source_shard} and {target} (map unchanged, the move can be rerun): {detail}")]
    Mismatch {
        /// The source shard.
        source_shard: String,
        /// The target shard.
        target: String,
        /// The first differing table and buckets.
        detail: String,
    },
    /// A row arriving on the target shard has the primary key of another
    /// team's row there: never overwritten, never renumbered.
    #[error("{0}")]
    Collision(String),
    /// Every freeze attempt ran past `--max-freeze`; the map is unchanged.
    #[error("the switch of buckets {buckets} could not finish within --max-freeze {max_ms} ms in {attempts} attempts (last: {reason}); writes were released and the map is unchanged: rerun to resume, or raise --max-freeze")]
    FreezeBudget {
        /// The buckets.
        buckets: String,
        /// The budget.
        max_ms: u64,
        /// How many freezes were tried.
        attempts: u32,
        /// Why the last one gave up.
        reason: String,
    },
}

impl Error {
    pub(crate) fn pg(
        action: impl Into<String>,
        place: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let (action, place) = (action.into(), place.into());
        move |source| Error::Postgres {
            action,
            place,
            message: pg_message(&source),
            source,
        }
    }
}

/// A Postgres error as one line: the server's message, detail and hint, or
/// the driver's error and its cause.
pub(crate) fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => match std::error::Error::source(e) {
            Some(c) => format!("{e}: {c}"),
            None => e.to_string(),
        },
    }
}
