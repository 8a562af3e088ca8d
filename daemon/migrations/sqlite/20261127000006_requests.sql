-- Replies by email (and answer forms): what was asked of whom, what came back, and every inbound
-- message as it arrived.

-- A run that something happened to while it was executing: the next park wakes it at once
-- instead of at its computed wake time (an answer arrived meanwhile).
ALTER TABLE runs ADD COLUMN nudged_at BIGINT;

-- One row per addressee of a request (or acknowledgement) step. The token is the single-use
-- random key in the reply address, the Message-ID and the answer link; `lookup` (its first 8
-- characters) finds the row, and the whole token is then compared in constant time.
CREATE TABLE requests (
    token       TEXT PRIMARY KEY,
    lookup      TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    step_key    TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    allowed     TEXT NOT NULL,
    tag         BIGINT NOT NULL,
    message_id  TEXT NOT NULL,
    subject     TEXT NOT NULL,
    fields      TEXT NOT NULL,
    required    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    deadline    BIGINT,
    expires_at  BIGINT NOT NULL,
    status      TEXT NOT NULL,
    answered_at BIGINT,
    answer_id   TEXT,
    bounced_at  BIGINT,
    bounce      TEXT,
    UNIQUE (run_id, step_key, recipient)
);
CREATE INDEX requests_by_tag ON requests (tag);
CREATE INDEX requests_by_lookup ON requests (lookup);
CREATE INDEX requests_by_step ON requests (run_id, step_key);
CREATE INDEX requests_open ON requests (status, deadline);

-- Every answer (the latest per request wins; earlier ones stay as history).
CREATE TABLE answers (
    id          TEXT PRIMARY KEY,
    token       TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    via         TEXT NOT NULL,
    from_addr   TEXT,
    message_id  TEXT,
    fields      TEXT NOT NULL,
    free_text   TEXT NOT NULL,
    attachments TEXT NOT NULL,
    late        BIGINT NOT NULL DEFAULT 0,
    inbound_id  TEXT
);
CREATE INDEX answers_by_token ON answers (token, received_at);

-- Inbound messages, stored raw before anything is done with them. source_key makes intake
-- idempotent: 'imap:<mailbox>:<uidvalidity>:<uid>', or 'msgid:<sha256 of Message-ID>'.
CREATE TABLE inbound (
    id           TEXT PRIMARY KEY,
    source_key   TEXT NOT NULL UNIQUE,
    via          TEXT NOT NULL,
    received_at  BIGINT NOT NULL,
    size         BIGINT NOT NULL,
    raw          BLOB NOT NULL,
    status       TEXT NOT NULL,
    outcome      TEXT,
    detail       TEXT,
    from_addr    TEXT,
    subject      TEXT,
    token        TEXT,
    processed_at BIGINT
);
CREATE INDEX inbound_pending ON inbound (received_at) WHERE status = 'pending';

-- IMAP mailboxes: where polling stands. Messages older than registered_at are never processed.
CREATE TABLE imap_mailboxes (
    mailbox       TEXT PRIMARY KEY,
    uidvalidity   BIGINT NOT NULL,
    last_uid      BIGINT NOT NULL,
    registered_at BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
