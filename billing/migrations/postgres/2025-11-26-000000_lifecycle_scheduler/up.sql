-- The lifecycle scheduler (billing/src/scheduler.rs): per subscription, what it does next and
-- when, the lease one scheduler replica holds while acting on it, the plan change taking effect
-- at the next renewal; and the entitlement outbox to the control-plane.

CREATE TABLE subscription_schedule (
    subscription_id   TEXT PRIMARY KEY REFERENCES subscriptions (id),
    -- A plan change the customer asked for (ChangePlan), applied at the next renewal.
    next_plan_id      TEXT,
    next_price_amount BIGINT,
    -- PAST_DUE: end of the grace period; SUSPENDED: when it expires; EXPIRED/CANCELED: clean-up.
    deadline          TIMESTAMP,
    -- PAST_DUE/SUSPENDED: when the unpaid invoice is charged again.
    next_charge_at    TIMESTAMP,
    ended_at          TIMESTAMP,
    cleaned_up_at     TIMESTAMP,
    -- When the scheduler next has something to do (NULL: nothing, ever).
    next_action_at    TIMESTAMP,
    -- Compare-and-set: every scheduler write is filtered on the version it read and bumps it.
    version           BIGINT NOT NULL DEFAULT 0,
    -- While set and in the future, one scheduler replica is acting on this subscription.
    lease_until       TIMESTAMP
);
CREATE INDEX subscription_schedule_by_next_action ON subscription_schedule (next_action_at);
INSERT INTO subscription_schedule (subscription_id, next_action_at)
    SELECT id, CASE WHEN status IN ('trialing', 'active') THEN current_period_end END
    FROM subscriptions;

-- What the control-plane must be told about an instance (active, suspended, expired), written
-- in the same transaction as the status change; delivered until acknowledged.
CREATE TABLE entitlement_outbox (
    id              BIGSERIAL PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id),
    instance_id     TEXT NOT NULL,
    entitlement     TEXT NOT NULL,
    at              TIMESTAMP NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    delivered_at    TIMESTAMP
);
CREATE INDEX entitlement_outbox_pending ON entitlement_outbox (delivered_at, id);
