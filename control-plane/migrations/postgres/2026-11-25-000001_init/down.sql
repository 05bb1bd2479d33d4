DROP TABLE audit_log;
DROP TABLE instance_events;
DROP TABLE instances;
DROP TABLE orders;
DROP TABLE tokens;
DROP TABLE accounts;
