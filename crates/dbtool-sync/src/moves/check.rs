//! The switch's check: counts and checksums per team and table on both
//! shards, and the differing keys of a mismatch, so the map never points
//! at a shard without the data.

use std::collections::BTreeMap;

use dbtool_shard::bucket_of;
use tokio_postgres::Client;

use super::tables::{quote, Table};
use super::{Ctx, Error};

impl Ctx<'_> {
    /// The primary keys of one team's rows that differ between the shards.
    pub(super) async fn differing_rows(
        &self,
        src: &Client,
        dst: &Client,
        t: &Table,
        team: &str,
    ) -> Result<String, Error> {
        let pk: Vec<String> = t.pk.iter().map(|k| format!("{}::text", quote(k))).collect();
        let sql = format!(
            "SELECT concat_ws(',', {}), hashtextextended(x::text, 0) FROM {} AS x WHERE {}::text = $1",
            pk.join(", "),
            t.qualified,
            quote(&t.key)
        );
        let mut sides = Vec::new();
        for (c, place) in [(src, &self.source), (dst, &self.target)] {
            let rows = c
                .query(&sql, &[&team])
                .await
                .map_err(Error::pg("cannot list differing rows", place))?;
            sides.push(
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect::<BTreeMap<String, i64>>(),
            );
        }
        let (a, b) = (&sides[0], &sides[1]);
        let only_a: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).take(5).collect();
        let only_b: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).take(5).collect();
        let changed: Vec<&String> = a
            .iter()
            .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
            .map(|(k, _)| k)
            .take(5)
            .collect();
        Ok(format!(
            " (team {team}: keys only on {}: {only_a:?}; only on {}: {only_b:?}; different: {changed:?})",
            self.source, self.target
        ))
    }

    /// Counts and checksums per team and table on both shards.
    pub(super) async fn check(&self, src: &Client, dst: &Client) -> Result<(), Error> {
        let mut teams = self.fenced_teams(src).await?;
        teams.dedup();
        for t in &self.tables {
            let sql = format!(
                "SELECT {k}::text, count(*), coalesce(sum(hashtextextended(x::text, 0)::numeric), 0)::text \
                 FROM {t} AS x WHERE {k} = ANY($1::text[]::{ty}[]) GROUP BY 1",
                k = quote(&t.key),
                t = t.qualified,
                ty = t.key_type
            );
            let (a, b) = futures::try_join!(
                async {
                    src.query(&sql, &[&teams]).await.map_err(Error::pg(
                        format!("cannot check {}", t.qualified),
                        &self.source,
                    ))
                },
                async {
                    dst.query(&sql, &[&teams]).await.map_err(Error::pg(
                        format!("cannot check {}", t.qualified),
                        &self.target,
                    ))
                }
            )?;
            let sums = |rows: Vec<tokio_postgres::Row>| -> BTreeMap<String, (i64, String)> {
                rows.iter()
                    .map(|r| (r.get(0), (r.get(1), r.get(2))))
                    .collect()
            };
            let (a, b) = (sums(a), sums(b));
            if a != b {
                let differ: Vec<String> = a
                    .keys()
                    .chain(b.keys())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .filter(|k| a.get(*k) != b.get(*k))
                    .map(|k| {
                        format!(
                            "team {k} (bucket {}): {} rows on {}, {} on {}",
                            bucket_of(k).unwrap_or(0),
                            a.get(k).map_or(0, |x| x.0),
                            self.source,
                            b.get(k).map_or(0, |x| x.0),
                            self.target
                        )
                    })
                    .take(3)
                    .collect();
                let mut detail = format!("{}: {}", t.qualified, differ.join("; "));
                if let Some(team) = a.keys().chain(b.keys()).find(|k| a.get(*k) != b.get(*k)) {
                    detail.push_str(&self.differing_rows(src, dst, t, team).await?);
                }
                return Err(Error::Mismatch {
                    source_shard: self.source.clone(),
                    target: self.target.clone(),
                    detail,
                });
            }
        }
        Ok(())
    }
}
