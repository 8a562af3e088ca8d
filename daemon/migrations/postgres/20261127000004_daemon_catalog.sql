-- What each daemon has loaded: the version of every workflow it runs (which may be the last good
-- version of a file that is now invalid) and the problems in its workflows directory.
CREATE TABLE daemon_catalog (
    node_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    item       TEXT NOT NULL,
    hash       TEXT,
    detail     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (node_id, kind, item)
);
