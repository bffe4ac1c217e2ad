//! A checked-out connection and its transactions, with the client-side query
//! timeout on every statement.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::{CancelToken, Row, SimpleQueryMessage, Statement, ToStatement};

use crate::error::is_connection_lost;
use crate::metrics as m;
use crate::pool::Shared;
use crate::{Error, Token};

/// What a connection was checked out for; decides where a read may be retried.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Write,
    Read,
    ReadAfter(Token),
}

/// A statement: SQL text or a prepared [`Statement`].
///
/// Reads given as SQL text are retried once on another host when their
/// connection is lost before they complete (a prepared statement belongs to
/// its connection and cannot move).
pub trait Sql: ToStatement + Sync {
    /// The SQL text, when there is one.
    fn sql(&self) -> Option<&str>;
}

impl Sql for str {
    fn sql(&self) -> Option<&str> {
        Some(self)
    }
}

impl Sql for String {
    fn sql(&self) -> Option<&str> {
        Some(self)
    }
}

impl Sql for Statement {
    fn sql(&self) -> Option<&str> {
        None
    }
}

/// A connection from an [`RwPool`](crate::RwPool), returned to its pool on drop.
///
/// Its query methods apply the client-side `query_timeout` (cancelling the
/// query on the server when it fires) and record durations. Everything else
/// of [`deadpool_postgres::ClientWrapper`] (`prepare_cached`, ...) and of
/// [`tokio_postgres::Client`] is reachable through `Deref`; calls made that way
/// have only the server-side `statement_timeout`.
pub struct Conn {
    obj: Option<deadpool_postgres::Object>,
    shared: Arc<Shared>,
    idx: usize,
    kind: Kind,
    /// Set when a query timed out: a late cancel could hit the next query on
    /// this connection, so it is closed instead of returned to the pool.
    tainted: AtomicBool,
    /// For a read on the host that takes writes: one of its read slots,
    /// given back on drop.
    _read_slot: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("host", &self.host())
            .field("kind", &self.kind)
            .finish()
    }
}

impl Conn {
    pub(crate) fn new(
        obj: deadpool_postgres::Object,
        shared: Arc<Shared>,
        idx: usize,
        kind: Kind,
        read_slot: Option<OwnedSemaphorePermit>,
    ) -> Conn {
        Conn {
            obj: Some(obj),
            shared,
            idx,
            kind,
            tainted: AtomicBool::new(false),
            _read_slot: read_slot,
        }
    }

    fn wrapper(&self) -> &deadpool_postgres::ClientWrapper {
        self.obj.as_ref().expect("the object is present until drop")
    }

    /// `host:port` of the server this connection is to.
    pub fn host(&self) -> &str {
        &self.shared.hosts[self.idx].label
    }

    /// The driver's client.
    pub fn client(&self) -> &tokio_postgres::Client {
        self.wrapper()
    }

    fn timed<'a, T: 'a, F>(&'a self, fut: F) -> impl Future<Output = Result<T, Error>> + 'a
    where
        F: Future<Output = Result<T, tokio_postgres::Error>> + 'a,
    {
        run_timed(
            &self.shared,
            self.idx,
            &self.tainted,
            || self.client().cancel_token(),
            fut,
        )
    }

    /// For a read whose connection was lost: another connection of the same
    /// kind, on another host. Callers box this rare retry (and the query
    /// they rerun), so its futures do not enlarge every query's future,
    /// which is written out on each call.
    async fn reroute(&self, e: &Error) -> Option<Conn> {
        let Error::Query { error, .. } = e else {
            return None;
        };
        if !is_connection_lost(error) {
            return None;
        }
        self.shared
            .note_failure(self.idx, format!("connection lost: {error}"));
        match self.kind {
            Kind::Write => None,
            Kind::Read => self.shared.read(Some(self.idx)).await.ok(),
            Kind::ReadAfter(t) => self.shared.read_after(t, Some(self.idx)).await.ok(),
        }
    }

    /// Like [`tokio_postgres::Client::query`], with the query timeout.
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + Sql,
    {
        let result = self.timed(self.client().query(statement, params)).await;
        match (result, statement.sql()) {
            (Err(e), Some(sql)) => match Box::pin(self.reroute(&e)).await {
                Some(other) => Box::pin(other.timed(other.client().query(sql, params))).await,
                None => Err(e),
            },
            (r, _) => r,
        }
    }

    /// Like [`tokio_postgres::Client::query_one`], with the query timeout.
    pub async fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error>
    where
        T: ?Sized + Sql,
    {
        let result = self.timed(self.client().query_one(statement, params)).await;
        match (result, statement.sql()) {
            (Err(e), Some(sql)) => match Box::pin(self.reroute(&e)).await {
                Some(other) => Box::pin(other.timed(other.client().query_one(sql, params))).await,
                None => Err(e),
            },
            (r, _) => r,
        }
    }

    /// Like [`tokio_postgres::Client::query_opt`], with the query timeout.
    pub async fn query_opt<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error>
    where
        T: ?Sized + Sql,
    {
        let result = self.timed(self.client().query_opt(statement, params)).await;
        match (result, statement.sql()) {
            (Err(e), Some(sql)) => match Box::pin(self.reroute(&e)).await {
                Some(other) => Box::pin(other.timed(other.client().query_opt(sql, params))).await,
                None => Err(e),
            },
            (r, _) => r,
        }
    }

    /// Like [`tokio_postgres::Client::execute`], with the query timeout.
    /// Never retried: it may have changed data before the connection was lost.
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error>
    where
        T: ?Sized + Sql,
    {
        self.timed(self.client().execute(statement, params)).await
    }

    /// Like [`tokio_postgres::Client::batch_execute`], with the query timeout.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        self.timed(self.client().batch_execute(sql)).await
    }

    /// Like [`tokio_postgres::Client::simple_query`], with the query timeout.
    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        self.timed(self.client().simple_query(sql)).await
    }

    /// Starts a transaction. On a connection from [`RwPool::write`](crate::RwPool::write)
    /// it runs on the primary; it rolls back unless committed.
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, Error> {
        let cancel = self.client().cancel_token();
        let shared: &Shared = &self.shared;
        let idx = self.idx;
        let tainted = &self.tainted;
        let obj = self.obj.as_mut().expect("the object is present until drop");
        let tx = run_timed(shared, idx, tainted, move || cancel, obj.transaction()).await?;
        Ok(Transaction {
            tx,
            shared,
            idx,
            tainted,
        })
    }

    /// `pg_last_wal_replay_lsn()` of this server (None on a primary).
    pub(crate) async fn replay_lsn(&self) -> Result<Option<u64>, Error> {
        let row = self
            .timed(
                self.client()
                    .query_one("SELECT pg_last_wal_replay_lsn()", &[]),
            )
            .await?;
        let lsn: Option<PgLsn> = row.get(0);
        Ok(lsn.map(u64::from))
    }
}

impl Deref for Conn {
    type Target = deadpool_postgres::ClientWrapper;

    fn deref(&self) -> &Self::Target {
        self.wrapper()
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.obj.as_mut().expect("the object is present until drop")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.hosts[self.idx]
            .outstanding
            .fetch_sub(1, Ordering::Relaxed);
        if *self.tainted.get_mut() {
            if let Some(obj) = self.obj.take() {
                // Detached from the pool, the connection closes here.
                drop(deadpool_postgres::Object::take(obj));
            }
        }
    }
}

/// A transaction on a [`Conn`], with the query timeout on every statement.
/// Rolls back when dropped without [`commit`](Self::commit).
pub struct Transaction<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    shared: &'a Shared,
    idx: usize,
    tainted: &'a AtomicBool,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("host", &self.shared.hosts[self.idx].label)
            .finish()
    }
}

impl Transaction<'_> {
    fn timed<'b, T: 'b, F>(&'b self, fut: F) -> impl Future<Output = Result<T, Error>> + 'b
    where
        F: Future<Output = Result<T, tokio_postgres::Error>> + 'b,
    {
        run_timed(
            self.shared,
            self.idx,
            self.tainted,
            || self.tx.cancel_token(),
            fut,
        )
    }

    /// Like [`tokio_postgres::Transaction::query`], with the query timeout.
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + Sql,
    {
        self.timed(self.tx.query(statement, params)).await
    }

    /// Like [`tokio_postgres::Transaction::query_one`], with the query timeout.
    pub async fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error>
    where
        T: ?Sized + Sql,
    {
        self.timed(self.tx.query_one(statement, params)).await
    }

    /// Like [`tokio_postgres::Transaction::query_opt`], with the query timeout.
    pub async fn query_opt<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error>
    where
        T: ?Sized + Sql,
    {
        self.timed(self.tx.query_opt(statement, params)).await
    }

    /// Like [`tokio_postgres::Transaction::execute`], with the query timeout.
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error>
    where
        T: ?Sized + Sql,
    {
        self.timed(self.tx.execute(statement, params)).await
    }

    /// Like [`tokio_postgres::Transaction::batch_execute`], with the query timeout.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        self.timed(self.tx.batch_execute(sql)).await
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), Error> {
        let Transaction {
            tx,
            shared,
            idx,
            tainted,
        } = self;
        let cancel = tx.cancel_token();
        run_timed(shared, idx, tainted, move || cancel, tx.commit()).await
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), Error> {
        let Transaction {
            tx,
            shared,
            idx,
            tainted,
        } = self;
        let cancel = tx.cancel_token();
        run_timed(shared, idx, tainted, move || cancel, tx.rollback()).await
    }
}

impl<'a> Deref for Transaction<'a> {
    type Target = deadpool_postgres::Transaction<'a>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl DerefMut for Transaction<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// Runs one statement under the client-side query timeout. When it fires the
/// statement is cancelled on the server (a cancel request on a new
/// connection, in the background) and the connection is marked so it is
/// closed rather than reused.
fn run_timed<'a, T: 'a, F, C>(
    shared: &'a Shared,
    idx: usize,
    tainted: &'a AtomicBool,
    cancel: C,
    fut: F,
) -> impl Future<Output = Result<T, Error>> + 'a
where
    F: Future<Output = Result<T, tokio_postgres::Error>> + 'a,
    C: FnOnce() -> CancelToken + 'a,
{
    // A combinator, not an `async fn`: an async fn holds its future argument
    // twice (the argument and the awaited copy), which made every query's
    // future four times the driver's.
    use futures::future::{Either, FutureExt as _};
    let host = &shared.hosts[idx];
    let start = Instant::now();
    let limit = shared.settings.query_timeout;
    let cancel_limit = shared.settings.check_timeout();
    let raced = match limit {
        None => Either::Left(fut.map(Ok)),
        Some(limit) => Either::Right(tokio::time::timeout(limit, fut)),
    };
    raced.map(move |r| {
        let result = match r {
            Ok(r) => r,
            Err(_) => {
                let limit = limit.unwrap_or_default();
                tainted.store(true, Ordering::Relaxed);
                let token = cancel();
                let tls = host.tls.clone();
                // The cancel request opens a connection of its own: bounded
                // like every other, so a server that stopped answering
                // cannot keep this task alive.
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(cancel_limit, token.cancel_query(tls)).await;
                });
                metrics::counter!(m::TIMEOUTS, "host" => host.label.clone(), "kind" => "query")
                    .increment(1);
                return Err(Error::QueryTimeout {
                    host: host.label.clone(),
                    after: limit,
                });
            }
        };
        host.query_duration.record(start.elapsed().as_secs_f64());
        result.map_err(|error| Error::Query {
            host: host.label.clone(),
            error,
        })
    })
}

#[cfg(test)]
mod future_sizes {
    //! A future is written when it is created and moved: keep a query's
    //! future near the driver's own (it was four times its size when the
    //! timeout wrapper was a pair of nested `async fn`s).
    use super::*;

    fn ours<Fut>(_f: impl Fn(&'static Conn) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    fn driver<Fut>(_f: impl Fn(&'static tokio_postgres::Client) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn query_futures_are_about_the_size_of_the_drivers() {
        let pg = driver(|c| c.query("SELECT 1", &[]));
        for (what, size) in [
            ("query", ours(|c| c.query("SELECT 1", &[]))),
            ("query_one", ours(|c| c.query_one("SELECT 1", &[]))),
            ("execute", ours(|c| c.execute("SELECT 1", &[]))),
        ] {
            eprintln!("Conn::{what}: {size} bytes; tokio-postgres query {pg}");
            assert!(
                size <= pg + 1024,
                "Conn::{what}'s future is {size} bytes, the driver's query {pg}"
            );
        }
    }
}
