-- The IP address of the client that opened a session or API token, as the gateway saw it
-- (behind a trusted proxy, the address it forwarded); '' when unknown (tokens made before).
ALTER TABLE tokens ADD COLUMN client_address TEXT NOT NULL DEFAULT '';
-- Each control-plane's one change poller reads the instances changed since its cursor, for its
-- WatchInstance streams (changes made through another replica).
CREATE INDEX instances_updated_at ON instances(updated_at);
