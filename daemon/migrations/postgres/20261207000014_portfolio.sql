-- The portfolio: typed answers kept per (workflow, subject, period, field).

-- What each field of a request takes (workbook::FieldTypes as JSON; NULL: nothing declared),
-- and whom and which period its answers are about (`record`: subject, period, name, owner as
-- JSON; NULL: not recorded).
ALTER TABLE requests ADD COLUMN types TEXT;
ALTER TABLE requests ADD COLUMN record TEXT;

-- A subject (a project): its display name and owner, as the latest request said them.
CREATE TABLE portfolio_subjects (
    workflow_id TEXT NOT NULL,
    subject     TEXT NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    owner       TEXT NOT NULL DEFAULT '',
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, subject)
);

-- One row per subject and period: answered (with the accepted answer it came from) or
-- unanswered (the request closed without an answer). An answer never turns back into
-- unanswered.
CREATE TABLE portfolio_entries (
    workflow_id TEXT NOT NULL,
    subject     TEXT NOT NULL,
    period      TEXT NOT NULL,
    status      TEXT NOT NULL,
    via         TEXT,
    answer_id   TEXT,
    late        BIGINT NOT NULL DEFAULT 0,
    run_id      TEXT NOT NULL,
    token       TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, subject, period)
);
CREATE INDEX portfolio_entries_by_period ON portfolio_entries (workflow_id, period);

-- Every typed value of every accepted answer; the current one has no superseded_at, earlier
-- ones are the history. `unit` is what a number counts in (万円, 日), from the request's
-- types; `position` is the field's place in the request's `fields` (the order pages show). Keyed by the answer, so applying one answer twice writes nothing.
CREATE TABLE portfolio_values (
    workflow_id   TEXT NOT NULL,
    subject       TEXT NOT NULL,
    period        TEXT NOT NULL,
    field         TEXT NOT NULL,
    answer_id     TEXT NOT NULL,
    value         TEXT NOT NULL,
    unit          TEXT,
    position      BIGINT NOT NULL DEFAULT 0,
    source        TEXT NOT NULL,
    late          BIGINT NOT NULL DEFAULT 0,
    recorded_at   BIGINT NOT NULL,
    superseded_at BIGINT,
    PRIMARY KEY (workflow_id, subject, period, field, answer_id)
);
CREATE INDEX portfolio_values_current ON portfolio_values (workflow_id, subject, period)
    WHERE superseded_at IS NULL;
