-- Migration runs and their exactly-once load state (`dbtool migrate`).
--
-- A batch of rows, the reject records it produced and its chunk's checkpoint
-- commit in ONE transaction, so after a crash at any moment the target holds
-- exactly the rows the checkpoints say it holds: resume continues after the
-- checkpoint and never copies a row twice or skips one.

-- One row per `dbtool migrate` run of one source file into one target schema.
CREATE TABLE IF NOT EXISTS dbtool.runs (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The source file as given, canonicalized (absolute path).
    source_path        text        NOT NULL,
    -- Size, mtime, header change counter, schema cookie, schema hash: a
    -- resume refuses to continue when any of these differ.
    source_fingerprint jsonb       NOT NULL,
    target_schema      text        NOT NULL,
    -- The cast plan (dbtool_migrate::plan::Plan as JSON): a resume reuses it
    -- instead of re-profiling, so every batch of a run is cast the same way.
    plan               jsonb       NOT NULL,
    -- The load options the run started with (jobs, batch sizes, data/schema only, ...).
    options            jsonb       NOT NULL DEFAULT '{}',
    -- loading -> finishing -> done; abandoned when replaced by `--restart`.
    status             text        NOT NULL DEFAULT 'loading'
                       CHECK (status IN ('loading', 'finishing', 'done', 'abandoned')),
    started_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    -- How many times the run was resumed.
    resumes            integer     NOT NULL DEFAULT 0,
    -- The final report (dbtool_migrate::report::Report as JSON) once done.
    report             jsonb
);

-- At most one unfinished run per source and target schema.
CREATE UNIQUE INDEX IF NOT EXISTS runs_one_unfinished
    ON dbtool.runs (source_path, target_schema)
    WHERE status IN ('loading', 'finishing');

-- The load state of each chunk (a rowid range of one table, or a whole table
-- read in primary-key order) of a run.
CREATE TABLE IF NOT EXISTS dbtool.checkpoints (
    run_id        bigint      NOT NULL REFERENCES dbtool.runs (id) ON DELETE CASCADE,
    -- Source table name (the plan maps it to the target name).
    table_name    text        NOT NULL,
    chunk         integer     NOT NULL,
    -- Inclusive rowid bounds of the chunk; NULL for key-ordered tables.
    range_start   bigint,
    range_end     bigint,
    -- The last key read and committed: a rowid as a JSON number, or a JSON
    -- array of tagged primary-key values. NULL before the first batch.
    last_key      jsonb,
    rows_read     bigint      NOT NULL DEFAULT 0,
    rows_written  bigint      NOT NULL DEFAULT 0,
    rows_rejected bigint      NOT NULL DEFAULT 0,
    -- Rows written with a NULL in place of a value that could not be cast.
    rows_nulled   bigint      NOT NULL DEFAULT 0,
    -- Time spent loading this chunk, summed over resumes.
    elapsed_ms    bigint      NOT NULL DEFAULT 0,
    done          boolean     NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, table_name, chunk)
);

-- One record per value that could not be cast: the row was rejected, or the
-- value was stored as NULL (`action`). The reject file is written from here at
-- the end of the run, so it has no duplicates however often the run resumed.
CREATE TABLE IF NOT EXISTS dbtool.rejects (
    run_id      bigint      NOT NULL REFERENCES dbtool.runs (id) ON DELETE CASCADE,
    table_name  text        NOT NULL,
    chunk       integer     NOT NULL,
    -- Position of the row in its chunk's read order (for a stable file order).
    ordinal     bigint      NOT NULL,
    rowid       bigint,
    -- Primary-key columns of the row as a JSON object (source names).
    pk          jsonb,
    column_name text        NOT NULL,
    reason      text        NOT NULL,
    -- The original value as JSON (text, number, null, or {"base64": ...}).
    value       jsonb,
    -- 'rejected' (row not loaded) or 'nulled' (loaded with NULL here).
    action      text        NOT NULL CHECK (action IN ('rejected', 'nulled')),
    PRIMARY KEY (run_id, table_name, chunk, ordinal, column_name)
);

-- Per table of a run: the watermark (highest source key loaded) for
-- `dbtool verify` after cutover, when rows written since are not differences.
CREATE TABLE IF NOT EXISTS dbtool.run_tables (
    run_id      bigint NOT NULL REFERENCES dbtool.runs (id) ON DELETE CASCADE,
    table_name  text   NOT NULL,
    target_name text   NOT NULL,
    -- 'rowid', 'primary_key' or 'none' (read whole, in one transaction).
    key_kind    text   NOT NULL,
    -- Highest key read: a rowid (JSON number) or a tagged primary-key array.
    watermark   jsonb,
    PRIMARY KEY (run_id, table_name)
);
