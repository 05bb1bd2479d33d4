DROP TABLE pushed_alerts;
