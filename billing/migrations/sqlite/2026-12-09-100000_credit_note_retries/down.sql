DROP INDEX credit_notes_pending;
ALTER TABLE credit_notes DROP COLUMN next_attempt_at;
ALTER TABLE credit_notes DROP COLUMN attempts;
