-- Bucket moves between shards (`dbtool shard move`, `dbtool shard add`;
-- dbtool_sync::moves). The same file is applied to the catalog database (the
-- move state and the per-bucket freezes routers follow) and to every shard a
-- move touches (the fence that holds or refuses writes of moving teams, and
-- the copy and stream positions, which commit with the data they describe).

-- Catalog: one row per move of a bucket range from one shard to another.
CREATE TABLE IF NOT EXISTS dbtool.shard_moves (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    first_bucket  integer NOT NULL,
    last_bucket   integer NOT NULL,
    source        text NOT NULL,
    target        text NOT NULL,
    -- copying -> catching_up -> switching -> switched -> finished;
    -- switching_back -> rolled_back when rolled back after the switch.
    phase         text NOT NULL DEFAULT 'copying'
                  CHECK (phase IN ('copying', 'catching_up', 'switching', 'switched',
                                   'finished', 'switching_back', 'rolled_back')),
    -- The map version the switch published (NULL before it).
    map_version   bigint,
    -- The target's WAL position at the switch: the reverse stream applies
    -- only what committed on the target after it.
    switch_lsn    pg_lsn,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (0 <= first_bucket AND first_bucket <= last_bucket AND last_bucket < 4096),
    CHECK (source <> target)
);

-- At most one unfinished move per bucket range start (a rerun resumes it).
CREATE UNIQUE INDEX IF NOT EXISTS shard_moves_one_open
    ON dbtool.shard_moves (first_bucket)
    WHERE phase NOT IN ('finished', 'rolled_back');

-- Catalog: buckets whose writes routers hold while a move switches them.
-- Routers read it on NOTIFY dbtool_shard_freeze (and when polling) and hold
-- writes to these buckets until the row goes or `until` passes.
CREATE TABLE IF NOT EXISTS dbtool.shard_freeze (
    move_id       bigint PRIMARY KEY,
    first_bucket  integer NOT NULL,
    last_bucket   integer NOT NULL,
    until         timestamptz NOT NULL
);

-- Shard: the teams of moving buckets. While `state` is 'moving' their writes
-- go through (and wait while the mover holds the move's advisory lock, during
-- the freeze); once 'moved', the trigger dbtool.move_guard refuses them with
-- SQLSTATE DBM01, naming the shard that owns them now.
CREATE TABLE IF NOT EXISTS dbtool.move_fence (
    team_id      text PRIMARY KEY,
    move_id      bigint NOT NULL,
    bucket       integer NOT NULL,
    lock_key     bigint NOT NULL,
    state        text NOT NULL CHECK (state IN ('moving', 'moved')),
    owner        text NOT NULL,
    map_version  bigint
);

-- Shard (the copy's target): each table copied for a move, committed in the
-- same transaction as its rows, with the source snapshot the copy read.
CREATE TABLE IF NOT EXISTS dbtool.move_copies (
    move_id     bigint NOT NULL,
    table_name  text NOT NULL,
    snapshot    text NOT NULL,
    rows        bigint NOT NULL,
    PRIMARY KEY (move_id, table_name)
);

-- Shard (where a stream applies): the commit position applied so far,
-- committed with each applied batch.
CREATE TABLE IF NOT EXISTS dbtool.move_progress (
    move_id    bigint NOT NULL,
    direction  text NOT NULL CHECK (direction IN ('forward', 'reverse')),
    lsn        pg_lsn NOT NULL,
    PRIMARY KEY (move_id, direction)
);

-- Shard (a stream's source): one row the mover updates with
-- synchronous_commit = on before draining. A commit flushes the WAL only if
-- its transaction wrote some; this write makes the flush cover every
-- transaction committed before it (also asynchronously committed ones,
-- visible before their WAL is flushed, and logical decoding reads only
-- flushed WAL).
CREATE TABLE IF NOT EXISTS dbtool.move_flush (
    id  integer PRIMARY KEY CHECK (id = 1),
    at  timestamptz NOT NULL
);

-- Row trigger installed on each moved table of a shard during a move
-- (argument: the table's team key column).
CREATE OR REPLACE FUNCTION dbtool.move_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    team text;
    f dbtool.move_fence%ROWTYPE;
BEGIN
    -- The mover's own apply connections set this (and run as replicas).
    IF current_setting('dbtool.move_apply', true) = 'on' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    FOR team IN
        SELECT DISTINCT k FROM (VALUES
            (CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) ->> TG_ARGV[0] END),
            (CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) ->> TG_ARGV[0] END)) AS v(k)
        WHERE k IS NOT NULL
    LOOP
        SELECT * INTO f FROM dbtool.move_fence WHERE team_id = team;
        IF FOUND THEN
            IF f.state = 'moving' THEN
                -- Waits while the mover holds the freeze; then look again.
                PERFORM pg_advisory_xact_lock_shared(f.lock_key);
                SELECT * INTO f FROM dbtool.move_fence WHERE team_id = team;
            END IF;
            IF FOUND AND f.state = 'moved' THEN
                RAISE EXCEPTION 'team % has moved to shard % (shard map version %): this shard no longer takes its writes',
                        team, f.owner, f.map_version
                    USING ERRCODE = 'DBM01',
                          HINT = 'route the write again with the current shard map (the router picks it up from the catalog)';
            END IF;
        END IF;
    END LOOP;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;
