-- When the status last told to the control-plane (reported, or answered to ApplyInstance) was
-- observed: an older observation never replaces a newer one. NULL: nothing told yet.
ALTER TABLE instances ADD COLUMN reported_at TIMESTAMP;
