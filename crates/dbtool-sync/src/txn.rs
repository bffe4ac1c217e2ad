//! dbtool's transactions on the source file.
//!
//! Every short write dbtool makes to the file (capture install, trim, the
//! VACUUM canary, schema follow, the cutover pre-check, `sync stop`) goes
//! through [`immediate`], so they share one lock policy: take the write lock
//! up front (`BEGIN IMMEDIATE`, never a deferred transaction that could fail
//! to upgrade halfway), poll for it (see [`crate::sync::write_polling`]), and
//! leave the file as it was on any error. The cutover's freeze takes the
//! same lock by hand: it holds it across awaits and gives up with its own
//! error when over its budget. Reads that must see one state of the file
//! (a batch of the log with its canary, the cutover's key checks) go
//! through [`snapshot`], with the same polling.

use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::Error;

/// Runs `f` in one write transaction on `conn` and commits it.
///
/// The write lock is taken with `BEGIN IMMEDIATE`, polled for up to `wait`
/// while SQLite answers "busy" (the app holds the lock, or in
/// rollback-journal mode a reader keeps the commit from finishing). Each
/// attempt that fails, in `f` or in the `COMMIT`, is rolled back, so the
/// file never keeps half of it and `conn` is never left inside a
/// transaction; a busy attempt is then repeated from the start (`f` may run
/// more than once). Past `wait` the busy error is returned: callers for
/// which the write can wait until later check it with [`Error::is_busy`].
pub(crate) fn immediate<T>(
    conn: &Connection,
    wait: Duration,
    mut f: impl FnMut(&Transaction<'_>) -> Result<T, Error>,
) -> Result<T, Error> {
    crate::sync::write_polling(conn, wait, || {
        // Dropping the transaction without a commit rolls it back, also
        // after a failed COMMIT.
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let v = f(&tx)?;
        tx.commit()?;
        Ok(v)
    })
}

/// Runs `f` in one read transaction on `conn`: everything it reads comes
/// from one snapshot of the file. Polled for up to `wait` like
/// [`immediate`]: in rollback-journal mode a reader needs a gap between the
/// app's writes, and SQLite's busy handler backs off past short gaps. The
/// transaction ends however `f` ends.
pub(crate) fn snapshot<T>(
    conn: &Connection,
    wait: Duration,
    mut f: impl FnMut(&Transaction<'_>) -> Result<T, Error>,
) -> Result<T, Error> {
    crate::sync::write_polling(conn, wait, || {
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Deferred)?;
        let r = f(&tx);
        let _ = tx.commit();
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode = DELETE; CREATE TABLE t (x INTEGER)")
            .unwrap();
        (dir, path)
    }

    fn count(c: &Connection) -> i64 {
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn an_error_in_the_body_rolls_back_and_is_returned() {
        let (_dir, path) = file();
        let c = Connection::open(&path).unwrap();
        let err = immediate(&c, Duration::from_millis(100), |tx| {
            tx.execute("INSERT INTO t VALUES (1)", [])?;
            Err::<(), _>(Error::Other("stop".into()))
        })
        .unwrap_err();
        assert!(matches!(&err, Error::Other(m) if m == "stop"), "{err}");
        assert!(c.is_autocommit());
        assert_eq!(count(&c), 0);
    }

    #[test]
    fn a_body_that_succeeds_is_committed_once() {
        let (_dir, path) = file();
        let c = Connection::open(&path).unwrap();
        let mut runs = 0;
        let v = immediate(&c, Duration::from_millis(100), |tx| {
            runs += 1;
            tx.execute("INSERT INTO t VALUES (1)", [])?;
            Ok(7)
        })
        .unwrap();
        assert_eq!((v, runs), (7, 1));
        assert!(c.is_autocommit());
        assert_eq!(count(&Connection::open(&path).unwrap()), 1);
    }

    // In rollback-journal mode a COMMIT waits for every reader to finish:
    // one held open past `wait` makes the COMMIT itself answer "busy". The
    // attempt must be rolled back (not left open, where the next BEGIN
    // would fail with "cannot start a transaction within a transaction").
    #[test]
    fn a_commit_kept_busy_by_a_reader_is_retried_then_rolled_back() {
        let (_dir, path) = file();
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        assert_eq!(count(&reader), 0);
        let c = Connection::open(&path).unwrap();
        let mut runs = 0;
        let err = immediate(&c, Duration::from_millis(100), |tx| {
            runs += 1;
            tx.execute("INSERT INTO t VALUES (1)", [])?;
            Ok(())
        })
        .unwrap_err();
        assert!(err.is_busy(), "{err}");
        assert!(runs > 1, "retried while busy: {runs} attempt(s)");
        assert!(c.is_autocommit());
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(count(&reader), 0);
        // The connection is usable for the next write.
        immediate(&c, Duration::from_millis(100), |tx| {
            Ok(tx.execute("INSERT INTO t VALUES (2)", [])?)
        })
        .unwrap();
        assert_eq!(count(&reader), 1);
    }
}
