-- Live sync state (`dbtool sync`, `dbtool cutover`; dbtool-sync, docs/sync.md).
--
-- One row per source file and target: in each target database (each shard
-- with --shards, `shard` naming it; '' for a plain target). The position is
-- updated in the same transaction as the rows it covers, so after a crash at
-- any moment the target holds exactly the changes up to `position`.
CREATE TABLE IF NOT EXISTS dbtool.syncs (
    -- The source file, canonicalized (absolute path).
    source_path     text        NOT NULL,
    -- The shard this database is ('' for a plain target).
    shard           text        NOT NULL DEFAULT '',
    -- The id dbtool wrote into the file's _dbtool_meta: a file replaced by
    -- another one under the same path is refused.
    source_id       text        NOT NULL,
    target_schema   text        NOT NULL,
    -- copying -> streaming -> cut_over (-> rolled_back, by dbtool rollback).
    phase           text        NOT NULL
                    CHECK (phase IN ('copying', 'streaming', 'cut_over', 'rolled_back')),
    -- The consistent copy the initial load reads (deleted once loaded).
    copy_path       text,
    -- The migration run of the initial copy (dbtool.runs.id) and its plan,
    -- extended by the schema changes sync followed.
    run_id          bigint,
    plan            jsonb,
    -- Highest change-log sequence inside the initial copy: changes above it
    -- are streamed, changes at or below it are in the copy.
    seam            bigint      NOT NULL,
    -- Highest change-log sequence applied to this database.
    position        bigint      NOT NULL,
    applied         bigint      NOT NULL DEFAULT 0,
    rejected        bigint      NOT NULL DEFAULT 0,
    -- Last measured apply rate (changes/s) and backlog, for `dbtool sync status`.
    rate            double precision NOT NULL DEFAULT 0,
    backlog         bigint      NOT NULL DEFAULT 0,
    head            bigint      NOT NULL DEFAULT 0,
    -- The cutover: its position, the reverse stream's slot and start LSN.
    cutover_position bigint,
    cutover_lsn     text,
    reverse_slot    text,
    -- Generic extra state (e.g. a shard move's buckets) as JSON.
    extra           jsonb       NOT NULL DEFAULT '{}',
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    cut_over_at     timestamptz,
    PRIMARY KEY (source_path, shard)
);

-- One record per value of a streamed change that could not be cast (as
-- dbtool.rejects for migrate). Written in the batch's transaction, keyed by
-- the change's sequence, so a replayed batch adds no duplicate.
CREATE TABLE IF NOT EXISTS dbtool.sync_rejects (
    source_path text        NOT NULL,
    shard       text        NOT NULL DEFAULT '',
    seq         bigint      NOT NULL,
    table_name  text        NOT NULL,
    pk          jsonb,
    column_name text        NOT NULL,
    reason      text        NOT NULL,
    value       jsonb,
    action      text        NOT NULL CHECK (action IN ('rejected', 'nulled')),
    PRIMARY KEY (source_path, shard, seq, column_name)
);
