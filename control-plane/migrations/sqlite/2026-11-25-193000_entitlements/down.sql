ALTER TABLE instances DROP COLUMN data_deleted_after;
ALTER TABLE instances DROP COLUMN entitlement_at;
ALTER TABLE instances DROP COLUMN entitlement_cause;
ALTER TABLE instances DROP COLUMN entitlement_sequence;
ALTER TABLE instances DROP COLUMN entitlement;
