-- Alerts the control-plane has pushed to the operators' notifier as opened and not yet as
-- closed (issue 17): one row per (kind, subject). A replica that inserts the row sends the
-- "opened" notice and the one that deletes it sends "closed", so each is sent once however
-- many replicas evaluate the alerts.
CREATE TABLE pushed_alerts (
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    severity INTEGER NOT NULL,
    message TEXT NOT NULL,
    opened_at TIMESTAMP NOT NULL,
    PRIMARY KEY (kind, subject)
);
