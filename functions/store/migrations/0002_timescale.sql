-- 0002: hypertables, only where the `timescaledb` extension is available.
--
-- On plain PostgreSQL this migration is recorded as applied and does nothing; the tables of
-- 0001 already carry their time column in every unique key, so becoming a hypertable later
-- needs no key change. To convert an existing plain database after installing TimescaleDB,
-- run the statements below by hand with `migrate_data => true`.
DO $$
BEGIN
    -- Installed is not enough: the library must also be preloaded, or CREATE EXTENSION fails.
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       OR (EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
           AND current_setting('shared_preload_libraries', true) LIKE '%timescaledb%') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('edge_export_segments', 'batch_time',
                                  if_not_exists => true, migrate_data => true);
        PERFORM create_hypertable('edge_staged_rows', 'stage_time',
                                  if_not_exists => true, migrate_data => true);
        PERFORM create_hypertable('telemetry_data_point_value', 'ts',
                                  if_not_exists => true, migrate_data => true);
    END IF;
END
$$;
