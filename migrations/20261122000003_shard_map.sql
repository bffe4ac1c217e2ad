-- The versioned shard map (dbtool-shard). A version is written once, by
-- dbtool_shard::Catalog::publish (`dbtool shard map --set`), in one
-- transaction with its ranges, and never changed: triggers below refuse
-- UPDATE, DELETE and TRUNCATE. A change of map is a new, higher version;
-- routers pick it up by polling max(version) and by LISTEN dbtool_shard_map.

CREATE TABLE IF NOT EXISTS dbtool.shard_map (
    version     bigint PRIMARY KEY CHECK (version > 0),
    scheme      text NOT NULL CHECK (scheme IN ('buckets', 'hex8-modulo')),
    -- Shard names in map order (hex8-modulo index i = shards[i + 1]).
    shards      text[] NOT NULL CHECK (cardinality(shards) > 0),
    note        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Bucket ranges (inclusive) of a buckets-scheme version; every bucket
-- 0..4095 in exactly one range (checked by the router on load).
CREATE TABLE IF NOT EXISTS dbtool.shard_map_range (
    version      bigint NOT NULL REFERENCES dbtool.shard_map (version),
    first_bucket integer NOT NULL,
    last_bucket  integer NOT NULL,
    shard        text NOT NULL,
    PRIMARY KEY (version, first_bucket),
    CHECK (0 <= first_bucket AND first_bucket <= last_bucket AND last_bucket < 4096)
);

CREATE OR REPLACE FUNCTION dbtool.shard_map_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'shard map versions are immutable: publish a new version instead'
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER shard_map_immutable
    BEFORE UPDATE OR DELETE ON dbtool.shard_map
    FOR EACH ROW EXECUTE FUNCTION dbtool.shard_map_immutable();
CREATE TRIGGER shard_map_immutable_truncate
    BEFORE TRUNCATE ON dbtool.shard_map
    FOR EACH STATEMENT EXECUTE FUNCTION dbtool.shard_map_immutable();
CREATE TRIGGER shard_map_range_immutable
    BEFORE UPDATE OR DELETE ON dbtool.shard_map_range
    FOR EACH ROW EXECUTE FUNCTION dbtool.shard_map_immutable();
CREATE TRIGGER shard_map_range_immutable_truncate
    BEFORE TRUNCATE ON dbtool.shard_map_range
    FOR EACH STATEMENT EXECUTE FUNCTION dbtool.shard_map_immutable();
