-- Credit notes whose refund got no answer from the provider (issue 17): billing's scheduler
-- asks again, with the same idempotency key ('kapal-credit-<id>'), with back-off, a bounded
-- number of times; then the note is FAILED and its amount released.
-- attempts: refund calls started so far (every existing note had one). A replica takes an
-- attempt with a compare-and-set on it, so two replicas never make the same attempt.
ALTER TABLE credit_notes ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
-- PENDING notes: when the provider is next asked (while an attempt runs: when it is taken
-- over, should its replica have died). NULL once the note is REFUNDED or FAILED.
ALTER TABLE credit_notes ADD COLUMN next_attempt_at TIMESTAMP;
-- Notes left PENDING before this migration are retried at once.
UPDATE credit_notes SET next_attempt_at = created_at WHERE status = 'pending';
CREATE INDEX credit_notes_pending ON credit_notes (status, next_attempt_at);
