-- Every daemon process that has served this database: a unique instance id per process (the
-- owner of its leases), its label (node_id), where it runs, what it runs and its heartbeat.
-- A daemon that stops cleanly sets stopped_at; one whose heartbeat is older than the lease is
-- gone, and its leases are taken over. Migrations are expand-only: older daemons keep working.
CREATE TABLE daemons (
    instance_id    TEXT PRIMARY KEY,
    label          TEXT NOT NULL,
    host           TEXT NOT NULL,
    pid            BIGINT NOT NULL,
    version        TEXT NOT NULL,
    schema_version BIGINT NOT NULL,
    started_at     BIGINT NOT NULL,
    heartbeat_at   BIGINT NOT NULL,
    stopped_at     BIGINT
);

-- Singleton roles (the poller of one IMAP mailbox, the scheduler): one holder at a time, held
-- until `until` and renewed by the holder; an expired role is free for any daemon to take.
CREATE TABLE roles (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    since  BIGINT NOT NULL,
    until  BIGINT NOT NULL
);
