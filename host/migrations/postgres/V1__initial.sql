-- Squall's shared state for distributed workers. The same tables as the
-- embedded SQLite store (host/src/store/sqlite.rs), in one database.

CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    definition_hash TEXT NOT NULL,
    intake_batches_done BIGINT NOT NULL DEFAULT 0,
    rows_read BIGINT NOT NULL DEFAULT 0,
    intake_finished BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);

CREATE TABLE bundles (
    campaign TEXT NOT NULL,
    hash TEXT NOT NULL,
    bundle BYTEA NOT NULL,
    saved_at BIGINT NOT NULL,
    seq BIGSERIAL,
    PRIMARY KEY (campaign, hash)
);

CREATE TABLE rejects (
    campaign TEXT NOT NULL,
    line BIGINT NOT NULL,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL,
    PRIMARY KEY (campaign, line)
);

CREATE TABLE batch_stats (
    campaign TEXT NOT NULL,
    stage TEXT NOT NULL,
    batch TEXT NOT NULL,
    stats JSONB NOT NULL,
    PRIMARY KEY (campaign, stage, batch)
);

CREATE TABLE dead_letter_records (
    campaign TEXT NOT NULL,
    stage TEXT NOT NULL,
    item TEXT NOT NULL,
    recipients BIGINT NOT NULL,
    reason TEXT NOT NULL,
    payload TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (campaign, stage, item)
);

CREATE TABLE audience_ids (
    campaign TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    line BIGINT NOT NULL,
    PRIMARY KEY (campaign, recipient_id)
);

-- The delivery ledger: the primary key makes a claim atomic across every
-- worker on every machine.
CREATE TABLE ledger (
    campaign TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    message_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('claimed', 'delivered', 'failed', 'in_doubt')),
    owner TEXT NOT NULL,
    detail TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (campaign, recipient_id, message_key)
);
CREATE INDEX ledger_open_claims ON ledger (campaign, owner) WHERE state = 'claimed';

CREATE TABLE owners (
    owner TEXT PRIMARY KEY,
    lease_until BIGINT NOT NULL
);
