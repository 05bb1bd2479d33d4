-- Operators' actions on subscriptions and invoices (issue 17): who made a change that was not
-- billing's own lifecycle ("operator"; empty for every older event).
ALTER TABLE subscription_events ADD COLUMN actor TEXT NOT NULL DEFAULT '';

-- What is credited on an invoice: the sum of its credit notes that are refunded or being
-- refunded. Raised by a compare-and-set (credited_amount + x <= amount) before the refund, so
-- concurrent credit notes never credit more than the invoice; lowered again when a refund fails.
ALTER TABLE invoices ADD COLUMN credited_amount BIGINT NOT NULL DEFAULT 0;

-- Credit notes (refunds) issued by operators on paid invoices. Every refund of a note carries
-- the idempotency key 'kapal-credit-<id>'.
CREATE TABLE credit_notes (
    id               TEXT PRIMARY KEY,
    invoice_id       TEXT NOT NULL REFERENCES invoices (id),
    subscription_id  TEXT NOT NULL REFERENCES subscriptions (id),
    account_id       TEXT NOT NULL,
    amount           BIGINT NOT NULL CHECK (amount > 0),
    currency         TEXT NOT NULL,
    reason           TEXT NOT NULL,
    actor_account_id TEXT NOT NULL,
    -- pending | refunded | failed
    status           TEXT NOT NULL,
    provider         TEXT NOT NULL,
    reference        TEXT,
    error            TEXT,
    created_at       TIMESTAMP NOT NULL,
    finished_at      TIMESTAMP
);
CREATE INDEX credit_notes_by_invoice ON credit_notes (invoice_id, created_at);
