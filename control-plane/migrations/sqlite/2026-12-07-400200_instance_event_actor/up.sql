-- Who acted on an instance (issue 17, operator actions): empty for status changes reported
-- from the cluster, 'operator' for an operator's restart, stop or start (its reason is the
-- event's reason; who exactly is in audit_log).
ALTER TABLE instance_events ADD COLUMN actor TEXT NOT NULL DEFAULT '';
