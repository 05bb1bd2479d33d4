-- What a token may do: 'full' (everything the account may) or 'read_only' (calls that change
-- nothing). Every token made before scopes existed keeps working as it did: 'full'. Sessions
-- are always 'full'.
ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'full';
-- When the token last authenticated a call, to within a few minutes (written at most once per
-- few minutes per token); NULL: not since it was made.
ALTER TABLE tokens ADD COLUMN last_used_at TIMESTAMP;
-- The user-agent of the client that opened a session (truncated), '' when it sent none.
ALTER TABLE tokens ADD COLUMN user_agent TEXT NOT NULL DEFAULT '';
-- ListSessions and ChangePassword look up an account's tokens of one kind.
CREATE INDEX tokens_account_kind ON tokens(account_id, kind, created_at);
