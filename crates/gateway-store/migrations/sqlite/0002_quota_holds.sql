-- Migration 2 (SQLite): quota holds and replica heartbeats. Every reservation made in
-- the database has a row in quota_holds naming the gateway process (replica) that made
-- it; settlement and release delete the row and take exactly its amount off
-- api_keys.quota_reserved. Holds of replicas that stopped heartbeating are released by
-- the reconciler of another replica. Never edit a migration once deployed: add one.
CREATE TABLE quota_holds (
    request_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    replica TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX quota_holds_replica ON quota_holds (replica);
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);
