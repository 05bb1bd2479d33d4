DROP INDEX instances_updated_at;
ALTER TABLE tokens DROP COLUMN client_address;
