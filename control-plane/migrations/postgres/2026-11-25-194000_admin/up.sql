-- Listings page by (created_at, id) keys instead of OFFSET: covering indexes for the customer's
-- own listings and for operators' listings of everything.
DROP INDEX instances_account;
CREATE INDEX instances_account_created ON instances(account_id, created_at, id);
CREATE INDEX instances_created ON instances(created_at, id);
CREATE INDEX instances_status ON instances(status);
DROP INDEX orders_account;
CREATE INDEX orders_account_created ON orders(account_id, created_at, id);

-- Operators' reads of customer data: who (and their email then), what, whose, why.
-- target is the instance id, detail the reason the operator gave.
ALTER TABLE audit_log ADD COLUMN actor_email TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN subject_account_id TEXT NOT NULL DEFAULT '';
DROP INDEX audit_log_at;
CREATE INDEX audit_log_at_id ON audit_log(at, id);
