DROP INDEX audit_log_at_id;
CREATE INDEX audit_log_at ON audit_log(at);
ALTER TABLE audit_log DROP COLUMN subject_account_id;
ALTER TABLE audit_log DROP COLUMN actor_email;

DROP INDEX orders_account_created;
CREATE INDEX orders_account ON orders(account_id, created_at);
DROP INDEX instances_status;
DROP INDEX instances_created;
DROP INDEX instances_account_created;
CREATE INDEX instances_account ON instances(account_id, created_at);
