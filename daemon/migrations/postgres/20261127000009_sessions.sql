-- Browser sessions of the pages (login with an API token). The cookie holds a random id; only
-- its SHA-256 is stored.
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    token_name TEXT NOT NULL,
    role       TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
