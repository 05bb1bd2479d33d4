ALTER TABLE instances DROP COLUMN suspended_by_billing;
ALTER TABLE instances DROP COLUMN delete_data_after;
