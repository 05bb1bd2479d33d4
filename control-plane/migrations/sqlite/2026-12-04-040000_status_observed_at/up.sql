-- When the provisioner observed the status stored on the instance (its own clock). A status
-- observed earlier than the stored one arrives late (an ApplyInstance answer overtaken by a
-- report) and is ignored. NULL: not known (nothing recorded yet, or a status without a time).
ALTER TABLE instances ADD COLUMN status_observed_at TIMESTAMP;
