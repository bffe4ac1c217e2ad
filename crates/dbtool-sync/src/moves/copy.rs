//! The copy: each table's rows of the moving teams with binary COPY, in one
//! target transaction with its `dbtool.move_copies` record, so a killed
//! copy resumes by table.

use std::collections::HashSet;

use dbtool_shard::bucket_of;
use futures::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::Client;

use super::tables::{quote, text_array_literal, Table};
use super::{connect, fault, Ctx, Error, Event};

impl Ctx<'_> {
    pub(super) async fn forget_copies(&self, src: &Client, dst: &Client) -> Result<(), Error> {
        let copied: Vec<String> = dst
            .query(
                "SELECT table_name FROM dbtool.move_copies WHERE move_id = $1",
                &[&self.move_id],
            )
            .await
            .map_err(Error::pg("cannot read the move's copies", &self.target))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if copied.is_empty() {
            return Ok(());
        }
        let teams = self.fenced_teams(src).await?;
        for t in self.tables.iter().filter(|t| copied.contains(&t.name)) {
            dst.execute(
                &format!(
                    "DELETE FROM {} WHERE {} = ANY($1::text[]::{}[])",
                    t.qualified,
                    quote(&t.key),
                    t.key_type
                ),
                &[&teams],
            )
            .await
            .map_err(Error::pg("cannot delete a stale copy", &self.target))?;
        }
        dst.execute(
            "DELETE FROM dbtool.move_copies WHERE move_id = $1",
            &[&self.move_id],
        )
        .await
        .map_err(Error::pg("cannot reset the move's copies", &self.target))?;
        dst.execute(
            "DELETE FROM dbtool.move_progress WHERE move_id = $1",
            &[&self.move_id],
        )
        .await
        .map_err(Error::pg(
            "cannot reset the move's stream position",
            &self.target,
        ))?;
        Ok(())
    }

    pub(super) async fn copy_all(&self, src: &Client) -> Result<u64, Error> {
        let done: HashSet<String> = {
            let dst = connect(&self.dst_t).await?;
            dst.query(
                "SELECT table_name FROM dbtool.move_copies WHERE move_id = $1",
                &[&self.move_id],
            )
            .await
            .map_err(Error::pg("cannot read the move's copies", &self.target))?
            .iter()
            .map(|r| r.get(0))
            .collect()
        };
        let todo: Vec<&Table> = self
            .tables
            .iter()
            .filter(|t| !done.contains(&t.name))
            .collect();
        let pace = Pace::new(self.opts.copy_rate);
        let results: Vec<Result<Copied, Error>> = futures::stream::iter(todo)
            .map(|t| self.copy_table(src, t, &pace))
            .buffer_unordered(self.opts.jobs.max(1))
            .collect()
            .await;
        let mut rows = 0;
        for r in results {
            let (table, n, _) = r?;
            (self.report)(&Event::Copied { table, rows: n });
            rows += n;
        }
        Ok(rows)
    }

    /// Copies one table's rows of the moving teams, in one target transaction
    /// with its `move_copies` record.
    /// Its teams are fenced on the source (through `fence_on`) before the
    /// copy commits: a rerun skips copied tables, so their teams must be in
    /// the fence by then, or the check and the fence would miss them.
    pub(super) async fn copy_table(
        &self,
        fence_on: &Client,
        t: &Table,
        pace: &Pace,
    ) -> Result<Copied, Error> {
        let mut src = connect(&self.src_t).await?;
        let mut dst = connect(&self.dst_t).await?;
        let s = src
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await
            .map_err(Error::pg("cannot start the copy's snapshot", &self.source))?;
        let snapshot: String = s
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .map_err(Error::pg("cannot read the copy's snapshot", &self.source))?
            .get(0);
        let teams: Vec<String> = s
            .query(
                &format!(
                    "SELECT DISTINCT {k}::text FROM {t} WHERE {k} IS NOT NULL",
                    k = quote(&t.key),
                    t = t.qualified
                ),
                &[],
            )
            .await
            .map_err(Error::pg(
                format!("cannot list the teams of {}", t.qualified),
                &self.source,
            ))?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|team| bucket_of(team).is_ok_and(|b| self.range.contains(b)))
            .collect();
        let cols = t.column_list();
        let out_sql = format!(
            "COPY (SELECT {cols} FROM {} WHERE {} = ANY({}::text[]::{}[])) TO STDOUT (FORMAT binary)",
            t.qualified,
            quote(&t.key),
            text_array_literal(&teams),
            t.key_type
        );
        let d = dst
            .transaction()
            .await
            .map_err(Error::pg("cannot start the copy", &self.target))?;
        d.batch_execute(
            "SET LOCAL session_replication_role = replica; SET LOCAL dbtool.move_apply = 'on'",
        )
        .await
        .map_err(Error::pg(
            "cannot set session_replication_role = replica for the copy (the mover's role must be allowed to)",
            &self.target,
        ))?;
        d.execute(
            &format!(
                "DELETE FROM {} WHERE {} = ANY($1::text[]::{}[])",
                t.qualified,
                quote(&t.key),
                t.key_type
            ),
            &[&teams],
        )
        .await
        .map_err(Error::pg(
            format!("cannot clear {} before the copy", t.qualified),
            &self.target,
        ))?;
        let reader = s.copy_out(&out_sql).await.map_err(Error::pg(
            format!("cannot copy {} out", t.qualified),
            &self.source,
        ))?;
        let sink = d
            .copy_in(&format!(
                "COPY {} ({cols}) FROM STDIN (FORMAT binary)",
                t.qualified
            ))
            .await
            .map_err(Error::pg(
                format!("cannot copy {} in", t.qualified),
                &self.target,
            ))?;
        futures::pin_mut!(sink);
        futures::pin_mut!(reader);
        let mut chunks = 0u64;
        while let Some(chunk) = reader.try_next().await.map_err(Error::pg(
            format!("cannot read {}", t.qualified),
            &self.source,
        ))? {
            chunks += 1;
            if chunks == 2 {
                fault::point("mid-copy");
            }
            // Binary COPY sends one message per row.
            pace.row().await;
            sink.send(chunk).await.map_err(Error::pg(
                format!("cannot write {} (a duplicate primary key is another team's row: see docs/sharding.md, identity ranges)", t.qualified),
                &self.target,
            ))?;
        }
        let rows = sink.as_mut().finish().await.map_err(Error::pg(
            format!("cannot write {} (a duplicate primary key is another team's row: see docs/sharding.md, identity ranges)", t.qualified),
            &self.target,
        ))?;
        d.execute(
            "INSERT INTO dbtool.move_copies (move_id, table_name, snapshot, rows) VALUES ($1, $2, $3, $4)",
            &[&self.move_id, &t.name, &snapshot, &(rows as i64)],
        )
        .await
        .map_err(Error::pg("cannot record the copy", &self.target))?;
        self.fence(fence_on, &teams).await?;
        d.commit().await.map_err(Error::pg(
            format!("cannot commit the copy of {}", t.qualified),
            &self.target,
        ))?;
        s.commit().await.ok();
        fault::point("copied-table");
        Ok((t.name.clone(), rows, teams))
    }
}

/// A copied table: its name, rows, and the moving teams it holds.
pub(super) type Copied = (String, u64, Vec<String>);

/// Holds the copy to `--copy-rate` rows per second, shared by the tables
/// copied at once: each row is due at `started + n / rate`.
pub(super) struct Pace {
    rate: u64,
    started: std::time::Instant,
    rows: std::sync::atomic::AtomicU64,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            rate,
            started: std::time::Instant::now(),
            rows: std::sync::atomic::AtomicU64::new(0),
        }
    }

    async fn row(&self) {
        if self.rate == 0 {
            return;
        }
        let n = self.rows.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        // Sleeping per row would cost more than the row: wait once per
        // hundred, long enough for the hundred.
        if n % 100 != 0 {
            return;
        }
        let due = self.started + std::time::Duration::from_secs_f64(n as f64 / self.rate as f64);
        tokio::time::sleep_until(due.into()).await;
    }
}
