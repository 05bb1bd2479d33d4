-- Failed log-ins per address tried (the normalized email, whether or not an account has it,
-- so the back-off does not tell which addresses have accounts). After a few failures in a row
-- log-ins of that address are refused until blocked_until, a wait that doubles with each
-- further failure up to a cap; a successful log-in deletes the row, and rows whose last failure
-- is a day old are deleted at the next failure. Kept in the database so every control-plane
-- replica applies the same back-off.
CREATE TABLE login_failures (
    email TEXT PRIMARY KEY NOT NULL,
    failures BIGINT NOT NULL DEFAULT 0,
    blocked_until TIMESTAMP,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX login_failures_updated_at ON login_failures(updated_at);
