ALTER TABLE instance_events DROP COLUMN actor;
