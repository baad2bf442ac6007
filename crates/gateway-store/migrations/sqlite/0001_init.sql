-- Relay gateway schema (SQLite). Times are Unix milliseconds (BIGINT); money is
-- micro-USD (BIGINT); flags are 0/1 BIGINT, so the same queries run on SQLite.
CREATE TABLE channels (
    id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    credentials BLOB,
    owner TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE presets (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    owner TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    prefix TEXT UNIQUE,
    key_sha256 TEXT NOT NULL UNIQUE,
    allowed_presets TEXT NOT NULL DEFAULT '[]',
    allowed_models TEXT NOT NULL DEFAULT '[]',
    rpm BIGINT,
    tpm BIGINT,
    quota_kind TEXT,
    quota_limit BIGINT,
    quota_used BIGINT NOT NULL DEFAULT 0,
    quota_reserved BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT,
    revoked BIGINT NOT NULL DEFAULT 0,
    key_group TEXT,
    owner TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE usage (
    request_id TEXT PRIMARY KEY,
    key_id TEXT,
    requested_model TEXT NOT NULL,
    item BIGINT,
    channel TEXT,
    upstream_model TEXT,
    client_dialect TEXT NOT NULL,
    upstream_dialect TEXT,
    operation TEXT NOT NULL,
    stream BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    estimated BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    status BIGINT NOT NULL,
    error_kind TEXT,
    attempts BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    ttft_ms BIGINT,
    started_at BIGINT NOT NULL
);
CREATE INDEX usage_started_at ON usage (started_at);
CREATE INDEX usage_key_time ON usage (key_id, started_at);
CREATE TABLE quota_ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL,
    request_id TEXT UNIQUE,
    charged BIGINT NOT NULL,
    released BIGINT NOT NULL,
    note TEXT,
    at BIGINT NOT NULL
);
CREATE TABLE pricing (
    model TEXT PRIMARY KEY,
    input_per_mtok REAL NOT NULL,
    output_per_mtok REAL NOT NULL,
    cached_input_per_mtok REAL NOT NULL,
    owner TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE plugins (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    size BIGINT NOT NULL,
    artifact BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (name, version)
);
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT
);
CREATE TABLE config_version (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 1);
