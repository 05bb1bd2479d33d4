DROP TABLE entitlement_outbox;
DROP TABLE subscription_schedule;
