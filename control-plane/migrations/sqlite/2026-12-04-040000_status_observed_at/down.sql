ALTER TABLE instances DROP COLUMN status_observed_at;
