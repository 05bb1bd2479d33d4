DROP TABLE support_messages;
DROP TABLE support_tickets;
