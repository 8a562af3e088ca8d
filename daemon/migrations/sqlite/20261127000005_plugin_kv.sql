-- Persistent key-value storage of WebAssembly plugins (the `kv` capability), one namespace per
-- plugin name.
CREATE TABLE plugin_kv (
    plugin     TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (plugin, key)
);
