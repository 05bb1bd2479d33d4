-- Statuses reach the control-plane one way (the provisioner's reports), ordered by the
-- provisioner's own sequence per instance: a report whose sequence is not above the stored one
-- arrived late and is ignored. 0: nothing ordered recorded yet. The observation time that used
-- to order them (and the ApplyInstance answers it reconciled with reports) goes.
ALTER TABLE instances ADD COLUMN status_sequence BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances DROP COLUMN status_observed_at;
