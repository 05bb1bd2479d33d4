-- Statuses reach the control-plane one way, by report; each report of an instance carries a
-- larger sequence than the one before (see Stored::next_sequence). 0: nothing reported yet.
ALTER TABLE instances ADD COLUMN report_sequence BIGINT NOT NULL DEFAULT 0;
-- Deleted with its data and reported so: nothing is left to converge (a flag, not a reading of
-- the reported reason).
ALTER TABLE instances ADD COLUMN finished BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE instances SET finished = TRUE
  WHERE reported_status = 7
    AND reported_reason IN ('Deleted with its data.', 'The instance and its data were removed.');
ALTER TABLE instances DROP COLUMN reported_at;
