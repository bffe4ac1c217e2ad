-- dbtool's own bookkeeping. Everything lives in the `dbtool` schema so the
-- migrated application schema stays exactly what the source held.
-- Applied by dbtool_shard::catalog::migrate (sqlx's migrator, under an
-- advisory lock, recorded in dbtool._sqlx_migrations).
CREATE SCHEMA IF NOT EXISTS dbtool;
