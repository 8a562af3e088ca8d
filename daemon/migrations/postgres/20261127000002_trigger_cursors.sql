-- Per trigger: when it was first seen and up to which instant its fires have been handled.
-- Fires after cursor_at and up to now are due; fires before registered_at never happen.
CREATE TABLE trigger_cursors (
    workflow_id   TEXT NOT NULL,
    trigger_key   TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    cursor_at     BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, trigger_key)
);
