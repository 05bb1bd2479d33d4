-- Delivery of the entitlement outbox to the control-plane (billing/src/delivery.rs), the
-- "renewal upcoming" notice (once per period), and indexes for the operators' analytics.

-- A failed delivery is retried from then on (exponential back-off per row).
ALTER TABLE entitlement_outbox ADD COLUMN next_attempt_at TIMESTAMP;
-- While set and in the future, one billing replica is delivering this row.
ALTER TABLE entitlement_outbox ADD COLUMN lease_until TIMESTAMP;
-- Why the change was made, in words (sent along).
ALTER TABLE entitlement_outbox ADD COLUMN cause TEXT;
-- Why the last attempt failed (for operators).
ALTER TABLE entitlement_outbox ADD COLUMN last_error TEXT;
-- The undelivered changes of one instance, in order.
CREATE INDEX entitlement_outbox_by_instance ON entitlement_outbox (instance_id, id);

-- The end of the period whose renewal the customer was told about (one notice per period).
ALTER TABLE subscription_schedule ADD COLUMN renewal_notice_for TIMESTAMP;

CREATE INDEX subscriptions_by_created ON subscriptions (created_at, id);
CREATE INDEX subscriptions_by_period_end ON subscriptions (current_period_end);
CREATE INDEX invoices_by_period_start ON invoices (period_start);
CREATE INDEX invoices_by_period_end ON invoices (period_end);
CREATE INDEX subscription_events_by_at ON subscription_events (at);
