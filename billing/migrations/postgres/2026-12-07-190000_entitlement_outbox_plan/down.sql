ALTER TABLE entitlement_outbox DROP COLUMN plan_id;
