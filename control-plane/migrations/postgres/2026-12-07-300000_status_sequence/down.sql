ALTER TABLE instances ADD COLUMN status_observed_at TIMESTAMP;
ALTER TABLE instances DROP COLUMN status_sequence;
