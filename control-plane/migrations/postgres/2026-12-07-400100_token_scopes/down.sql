DROP INDEX tokens_account_kind;
ALTER TABLE tokens DROP COLUMN user_agent;
ALTER TABLE tokens DROP COLUMN last_used_at;
ALTER TABLE tokens DROP COLUMN scope;
