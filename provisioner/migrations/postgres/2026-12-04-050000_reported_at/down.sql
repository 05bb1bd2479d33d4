ALTER TABLE instances DROP COLUMN reported_at;
