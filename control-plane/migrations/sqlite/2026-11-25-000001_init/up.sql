CREATE TABLE accounts (
    id TEXT PRIMARY KEY NOT NULL,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    customer_id TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP
);
CREATE INDEX tokens_account ON tokens(account_id, kind);

CREATE TABLE orders (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    idempotency_key TEXT NOT NULL,
    app_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    status TEXT NOT NULL,
    failure_reason TEXT NOT NULL,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    subscription_id TEXT,
    instance_id TEXT NOT NULL UNIQUE,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX orders_account ON orders(account_id, created_at);
CREATE INDEX orders_pending ON orders(status, updated_at);

CREATE TABLE instances (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    order_id TEXT NOT NULL UNIQUE REFERENCES orders(id),
    app_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    hostname TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL UNIQUE,
    subscription_id TEXT,
    desired_state TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT NOT NULL,
    restart_generation BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    ready_at TIMESTAMP
);
CREATE INDEX instances_account ON instances(account_id, created_at);

CREATE TABLE instance_events (
    id TEXT PRIMARY KEY NOT NULL,
    instance_id TEXT NOT NULL REFERENCES instances(id),
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TIMESTAMP NOT NULL
);
CREATE INDEX instance_events_instance ON instance_events(instance_id, at);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY NOT NULL,
    actor_account_id TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    at TIMESTAMP NOT NULL
);
CREATE INDEX audit_log_at ON audit_log(at);
