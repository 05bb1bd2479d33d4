-- Accounts suspended by an operator (issue 17): their calls are refused at authentication and
-- the instances the suspension stopped (instance_ids, comma-separated) start again when it is
-- lifted. Who suspended and why is also in audit_log.
CREATE TABLE account_suspensions (
    account_id TEXT PRIMARY KEY NOT NULL,
    reason TEXT NOT NULL,
    actor_account_id TEXT NOT NULL,
    suspended_at TIMESTAMP NOT NULL,
    instance_ids TEXT NOT NULL DEFAULT ''
);
