-- The desired spec of every instance the provisioner has been asked to converge, so that a
-- restarted provisioner resumes where it left off, plus what it last observed and reported.
CREATE TABLE instances (
    instance_id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    namespace TEXT NOT NULL UNIQUE,
    -- kapal.v1.DesiredState
    desired_state INTEGER NOT NULL,
    restart_generation BIGINT NOT NULL,
    -- Whether the instance has been READY since it was last started (DEGRADED vs PROVISIONING).
    was_ready BOOLEAN NOT NULL DEFAULT FALSE,
    -- kapal.v1.InstanceStatus and reason last reported to the control-plane.
    reported_status INTEGER,
    reported_reason TEXT,
    created_at TIMESTAMP NOT NULL,
    -- When the desired spec last changed.
    updated_at TIMESTAMP NOT NULL
);
