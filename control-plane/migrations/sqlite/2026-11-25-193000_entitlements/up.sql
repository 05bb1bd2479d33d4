-- What billing entitles each instance to, kept apart from the customer's own desired_state.
-- entitlement: 'active' | 'suspended' | 'expired'; entitlement_sequence: billing's outbox id of
-- the change applied last (a change is applied only if its sequence is higher).
ALTER TABLE instances ADD COLUMN entitlement TEXT NOT NULL DEFAULT 'active';
ALTER TABLE instances ADD COLUMN entitlement_sequence BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN entitlement_cause TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN entitlement_at TIMESTAMP;
-- For a deleted instance: when its data (volumes, secrets, namespace) is removed for good.
ALTER TABLE instances ADD COLUMN data_deleted_after TIMESTAMP;
