-- The move guard, cheap for teams that are not fenced (shard moves:
-- dbtool_sync::moves; docs/sharding.md, "What it costs the shards").
--
-- The first guard (dbtool.move_guard(), kept below for triggers installed
-- before this file) looked the team up in dbtool.move_fence on every row
-- write of a source shard, and stayed after the move: single-row inserts ran
-- at 0.61-0.82x of the rate without it. Now each team key column has its own
-- trigger functions (one per operation), compiled from the fence whenever
-- teams are added to or removed from it: each reads the key straight from
-- NEW/OLD and tests one bit
-- of a constant bitmap of the fenced teams' hashes. Only a set bit (a fenced
-- team, or about 1 in 64 others sharing its bit) runs the exact lookup,
-- dbtool.move_check(), which holds the write while the move's lock is taken
-- and refuses a moved team. A statement trigger on dbtool.move_fence
-- recompiles in the transaction that changes it, so no path that fences a
-- team can leave the bitmap behind it.

-- The exact check for one team: wait while its move switches (the mover
-- holds the move's advisory lock), refuse it once it has moved.
CREATE OR REPLACE FUNCTION dbtool.move_check(team text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    f dbtool.move_fence%ROWTYPE;
BEGIN
    -- The mover's own apply connections set this (and run as replicas).
    IF team IS NULL OR current_setting('dbtool.move_apply', true) = 'on' THEN
        RETURN;
    END IF;
    SELECT * INTO f FROM dbtool.move_fence WHERE team_id = team;
    IF FOUND AND f.state = 'moving' THEN
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
END
$$;

-- The name of the guard function of one key column for one operation
-- (`insert`, `update` or `delete`).
CREATE OR REPLACE FUNCTION dbtool.move_guard_name(key text, op text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'move_guard_' || op || '_' || CASE WHEN octet_length(key) <= 44 THEN key ELSE md5(key) END
$$;

-- (Re)writes the guard functions of every key column in use (the argument
-- of each dbtool_move_guard_insert trigger) and of `keys`, from the fence
-- as this transaction sees it. A function whose text is unchanged is left
-- alone, so sessions keep their compiled copy.
--
-- One function per operation, each one IF: every expression a PL/pgSQL
-- function evaluates is set up again in each transaction, and with
-- single-row transactions that setup is most of a guard's cost.
CREATE OR REPLACE FUNCTION dbtool.move_guard_compile(keys text[] DEFAULT '{}') RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    nbits integer := 8192;
    hit text;
    key text;
    op text;
    body text;
    fname text;
    old text;
BEGIN
    -- One compile at a time, each seeing the fence rows of the ones before.
    PERFORM pg_advisory_xact_lock(7233464240659496960);  -- 'dbmg' << 32
    SELECT count(*) INTO n FROM dbtool.move_fence;
    -- About 64 bits per fenced team (a false hit for 1 write in 64 of the
    -- other teams), at most 128 KiB.
    WHILE nbits < 64 * n AND nbits < 1048576 LOOP
        nbits := nbits * 2;
    END LOOP;
    IF n > 0 THEN
        SELECT format('get_bit(%L::bytea, hashtext(%%1$s.%%2$I::text COLLATE "C") & %s) = 1',
                      '\x' || string_agg(lpad(to_hex(coalesce(b.v, 0)), 2, '0'), '' ORDER BY i.i),
                      nbits - 1)
          INTO hit
          FROM generate_series(0, nbits / 8 - 1) AS i(i)
          LEFT JOIN (SELECT h >> 3 AS byte, bit_or(1 << (h & 7)) AS v
                       FROM (SELECT DISTINCT hashtext(team_id COLLATE "C") & (nbits - 1) AS h
                               FROM dbtool.move_fence) AS hs
                      GROUP BY 1) AS b ON b.byte = i.i;
    END IF;
    FOR key IN
        SELECT k FROM unnest(keys) AS k
        UNION
        SELECT convert_from(substring(t.tgargs FROM 1 FOR octet_length(t.tgargs) - 1),
                            current_setting('server_encoding'))
          FROM pg_trigger AS t
         WHERE t.tgname = 'dbtool_move_guard_insert' AND t.tgnargs = 1
    LOOP
        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
            body := CASE
                WHEN n = 0 AND op = 'delete' THEN E'\nBEGIN\n    RETURN OLD;\nEND\n'
                WHEN n = 0 THEN E'\nBEGIN\n    RETURN NEW;\nEND\n'
                WHEN op = 'insert' THEN format(
                    E'\nBEGIN\n    IF %s THEN\n        PERFORM dbtool.move_check(NEW.%I::text);\n'
                    '    END IF;\n    RETURN NEW;\nEND\n',
                    format(hit, 'NEW', key), key)
                WHEN op = 'delete' THEN format(
                    E'\nBEGIN\n    IF %s THEN\n        PERFORM dbtool.move_check(OLD.%I::text);\n'
                    '    END IF;\n    RETURN OLD;\nEND\n',
                    format(hit, 'OLD', key), key)
                ELSE format(
                    E'\nBEGIN\n    IF %s OR %s THEN\n        PERFORM dbtool.move_check(OLD.%I::text);\n'
                    '        PERFORM dbtool.move_check(NEW.%I::text);\n    END IF;\n    RETURN NEW;\nEND\n',
                    format(hit, 'OLD', key), format(hit, 'NEW', key), key, key)
            END;
            fname := dbtool.move_guard_name(key, op);
            SELECT p.prosrc INTO old FROM pg_proc AS p
             WHERE p.proname = fname AND p.pronamespace = 'dbtool'::regnamespace AND p.pronargs = 0;
            IF old IS DISTINCT FROM body THEN
                EXECUTE format('CREATE OR REPLACE FUNCTION dbtool.%I() RETURNS trigger LANGUAGE plpgsql AS %L',
                               fname, body);
            END IF;
        END LOOP;
    END LOOP;
END
$$;

-- Puts the guard on one table of a shard (the key: its team key column).
CREATE OR REPLACE FUNCTION dbtool.move_guard_install(tbl regclass, key text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    op text;
BEGIN
    PERFORM dbtool.move_guard_compile(ARRAY[key]);
    FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER %I BEFORE %s ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION dbtool.%I(%L)',
                       'dbtool_move_guard_' || op, op, tbl, dbtool.move_guard_name(key, op), key);
    END LOOP;
    -- The trigger of the first guard, if the table had it.
    IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'dbtool_move_guard') THEN
        EXECUTE format('DROP TRIGGER dbtool_move_guard ON %s', tbl);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION dbtool.move_fence_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dbtool.move_guard_compile();
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER move_fence_changed
    AFTER INSERT OR DELETE OR UPDATE OF team_id ON dbtool.move_fence
    FOR EACH STATEMENT EXECUTE FUNCTION dbtool.move_fence_changed();

-- Guards installed with the first function move to the compiled ones.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgrelid::regclass AS tbl,
               convert_from(substring(tg.tgargs FROM 1 FOR octet_length(tg.tgargs) - 1),
                            current_setting('server_encoding')) AS key
          FROM pg_trigger AS tg
         WHERE tg.tgname = 'dbtool_move_guard' AND tg.tgnargs = 1
           AND tg.tgfoid = 'dbtool.move_guard()'::regprocedure
    LOOP
        PERFORM dbtool.move_guard_install(t.tbl, t.key);
    END LOOP;
END
$$;
