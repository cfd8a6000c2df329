-- Turn conversation_events into a TimescaleDB hypertable when the extension can
-- be loaded; otherwise keep the plain table with its time index (001).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            EXECUTE $sql$SELECT create_hypertable('conversation_events', 'ts',
                                                  if_not_exists => TRUE,
                                                  migrate_data => TRUE)$sql$;
        EXCEPTION WHEN OTHERS THEN
            -- available but not loadable (not in shared_preload_libraries): plain table
            RAISE NOTICE 'timescaledb not usable (%), conversation_events stays a plain table', SQLERRM;
        END;
    END IF;
END
$$;
