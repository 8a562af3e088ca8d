-- Values every daemon on this database shares, created by the first one that needs them (the key
-- that signs answer-form nonces).
CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
