-- Billing: subscriptions, their invoices, the payments that settle them, and the history of
-- every subscription status change. Money is whole rupiah (BIGINT) with an ISO currency code.
-- Times are UTC.

CREATE TABLE subscriptions (
    id                   TEXT PRIMARY KEY,
    account_id           TEXT NOT NULL,
    -- The order that created the subscription: CreateSubscription is idempotent on it.
    order_id             TEXT NOT NULL UNIQUE,
    instance_id          TEXT NOT NULL,
    app_id               TEXT NOT NULL,
    plan_id              TEXT NOT NULL,
    -- See billing/src/lifecycle.rs for the statuses and their transitions.
    status               TEXT NOT NULL,
    price_amount         BIGINT NOT NULL CHECK (price_amount >= 0),
    currency             TEXT NOT NULL,
    trial_end            TIMESTAMP,
    current_period_start TIMESTAMP NOT NULL,
    current_period_end   TIMESTAMP NOT NULL,
    auto_renew           BOOLEAN NOT NULL,
    cancel_at_period_end BOOLEAN NOT NULL,
    created_at           TIMESTAMP NOT NULL,
    updated_at           TIMESTAMP NOT NULL
);
CREATE INDEX subscriptions_by_account ON subscriptions (account_id, created_at);

-- The last invoice number handed out. One row; incremented inside the transaction that
-- creates the invoice, so numbers are sequential and never reused.
CREATE TABLE invoice_counter (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    last_number BIGINT NOT NULL
);
INSERT INTO invoice_counter (id, last_number) VALUES (1, 0);

CREATE TABLE invoices (
    id                TEXT PRIMARY KEY,
    number            BIGINT NOT NULL UNIQUE,
    subscription_id   TEXT NOT NULL REFERENCES subscriptions (id),
    account_id        TEXT NOT NULL,
    period_start      TIMESTAMP NOT NULL,
    period_end        TIMESTAMP NOT NULL,
    amount            BIGINT NOT NULL CHECK (amount >= 0),
    currency          TEXT NOT NULL,
    -- open | paid | failed | void
    status            TEXT NOT NULL,
    -- Every charge of an invoice carries the idempotency key 'kapal-invoice-<id>' (see the
    -- payments table), so the provider settles it at most once.
    -- While set and in the future, one request is charging this invoice; others wait.
    charging_until    TIMESTAMP,
    -- Why the last charge failed, in words fit for the customer.
    failure_reason    TEXT,
    created_at        TIMESTAMP NOT NULL,
    paid_at           TIMESTAMP,
    payment_provider  TEXT,
    payment_reference TEXT,
    -- One invoice per billed period.
    UNIQUE (subscription_id, period_start)
);
CREATE INDEX invoices_by_account ON invoices (account_id, number);

-- Every charge sent to a payment provider, successful or not.
CREATE TABLE payments (
    id              TEXT PRIMARY KEY,
    invoice_id      TEXT NOT NULL REFERENCES invoices (id),
    attempt         INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    provider        TEXT NOT NULL,
    amount          BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    -- pending | succeeded | failed | duplicate (see billing/src/lifecycle.rs)
    status          TEXT NOT NULL,
    reference       TEXT,
    error           TEXT,
    created_at      TIMESTAMP NOT NULL,
    finished_at     TIMESTAMP,
    UNIQUE (invoice_id, attempt)
);
-- An invoice is settled by at most one payment.
CREATE UNIQUE INDEX payments_one_success_per_invoice ON payments (invoice_id) WHERE status = 'succeeded';

-- Every status change of a subscription (from_status is NULL when it was created), and the
-- customer's changes to how it ends (cancel, auto-renew), which keep the status.
CREATE TABLE subscription_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id),
    at              TIMESTAMP NOT NULL,
    from_status     TEXT,
    to_status       TEXT NOT NULL,
    cause           TEXT NOT NULL
);
CREATE INDEX subscription_events_by_subscription ON subscription_events (subscription_id, id);
