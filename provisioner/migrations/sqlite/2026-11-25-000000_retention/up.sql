-- Deleted instances whose data is kept for a while, and stops made by billing.
-- With desired_state DELETED: the data (volumes, secrets, namespace) is removed after this time;
-- NULL: at once.
ALTER TABLE instances ADD COLUMN delete_data_after TIMESTAMP;
-- With desired_state STOPPED: stopped because the subscription is unpaid or ended.
ALTER TABLE instances ADD COLUMN suspended_by_billing BOOLEAN NOT NULL DEFAULT FALSE;
