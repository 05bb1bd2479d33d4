DROP TABLE credit_notes;
ALTER TABLE invoices DROP COLUMN credited_amount;
ALTER TABLE subscription_events DROP COLUMN actor;
