-- Workflow versions: a run is pinned to the exact source it started with.
CREATE TABLE workflow_versions (
    workflow_id TEXT NOT NULL,
    hash        TEXT NOT NULL,
    path        TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, hash)
);

-- Runs. Times are milliseconds since the Unix epoch (UTC) on both backends.
-- wake_at is set while the run has work to do (NULL once terminal);
-- lease_owner/lease_until say which daemon is executing it.
CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    workflow_id      TEXT NOT NULL,
    version_hash     TEXT NOT NULL,
    status           TEXT NOT NULL,
    trigger_kind     TEXT NOT NULL,
    dedup_key        TEXT,
    inputs           TEXT NOT NULL,
    scheduled_at     BIGINT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    wake_at          BIGINT,
    lease_owner      TEXT,
    lease_until      BIGINT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    error            TEXT
);
CREATE INDEX runs_due ON runs (wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX runs_by_workflow ON runs (workflow_id, created_at);
CREATE INDEX runs_by_status ON runs (status, created_at);
CREATE INDEX runs_by_lease ON runs (lease_owner) WHERE lease_owner IS NOT NULL;
-- A fire (or any keyed trigger) can create at most one run.
CREATE UNIQUE INDEX runs_dedup ON runs (workflow_id, dedup_key) WHERE dedup_key IS NOT NULL;

-- One row per step (or per foreach item: step_key = 'id[3]').
CREATE TABLE steps (
    run_id      TEXT NOT NULL,
    step_key    TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    item_index  BIGINT,
    status      TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT,
    wake_at     BIGINT,
    output      TEXT,
    state       TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, step_key)
);

-- Notable events per run (attempt failures, retries, cancellation), for `show`.
CREATE TABLE run_events (
    run_id   TEXT NOT NULL,
    at       BIGINT NOT NULL,
    step_key TEXT,
    kind     TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX run_events_by_run ON run_events (run_id, at);
