-- When the account proved it reads mail at its address (a code sent to it came back); NULL: not
-- yet. Only verified accounts may check out when the server sends email.
ALTER TABLE accounts ADD COLUMN email_verified_at TIMESTAMP;

-- One-time codes sent by email: to verify the address ('verify') or to reset the password
-- ('reset'). Only a SHA-256 of the code is stored. A code is good until expires_at, for
-- at most a few attempts, and once.
CREATE TABLE email_codes (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    purpose TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    used_at TIMESTAMP
);
CREATE INDEX email_codes_account ON email_codes(account_id, purpose, created_at);
