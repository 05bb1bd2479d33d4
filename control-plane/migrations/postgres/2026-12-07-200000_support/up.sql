-- Support tickets (issue 17): a customer's ticket and its thread of messages.
-- response_due_at: when an operator's answer is due (first response: created_at + the SLA of
-- the severity; after a customer's follow-up on an answered ticket: its time + the SLA); NULL
-- when no answer is owed. The operators' queue pages by (response_due_at, id).
-- notified_level: the SLA notice already sent for the current response_due_at (0 none,
-- 1 at risk, 2 breached), so each is sent once.
CREATE TABLE support_tickets (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    subject TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    instance_id TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    first_response_due_at TIMESTAMP NOT NULL,
    first_response_at TIMESTAMP,
    response_due_at TIMESTAMP,
    resolved_at TIMESTAMP,
    notified_level INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX support_tickets_account_created ON support_tickets(account_id, created_at, id);
CREATE INDEX support_tickets_due ON support_tickets(response_due_at, id);
CREATE INDEX support_tickets_created ON support_tickets(created_at);

-- author: 'customer' or 'operator'; author_account_id is who wrote it.
CREATE TABLE support_messages (
    id TEXT PRIMARY KEY NOT NULL,
    ticket_id TEXT NOT NULL REFERENCES support_tickets(id),
    author TEXT NOT NULL,
    author_account_id TEXT NOT NULL,
    body TEXT NOT NULL,
    at TIMESTAMP NOT NULL
);
CREATE INDEX support_messages_ticket_at ON support_messages(ticket_id, at, id);
