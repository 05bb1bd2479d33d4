ALTER TABLE instances ADD COLUMN reported_at TIMESTAMP;
ALTER TABLE instances DROP COLUMN finished;
ALTER TABLE instances DROP COLUMN report_sequence;
