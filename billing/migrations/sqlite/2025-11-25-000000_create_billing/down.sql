DROP TABLE subscription_events;
DROP TABLE payments;
DROP TABLE invoices;
DROP TABLE invoice_counter;
DROP TABLE subscriptions;
