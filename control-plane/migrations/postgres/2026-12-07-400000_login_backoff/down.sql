DROP INDEX login_failures_updated_at;
DROP TABLE login_failures;
