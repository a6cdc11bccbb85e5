-- See it live and steer it: tracking events and conversions, the tracking
-- link key, pause/resume/cancel controls with the batches a pause holds,
-- and a ledger state for messages a cancel stopped.

ALTER TABLE ledger DROP CONSTRAINT IF EXISTS ledger_state_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_state_check
    CHECK (state IN ('claimed', 'delivered', 'failed', 'in_doubt', 'suppressed', 'cancelled'));
-- Bounces name a Message-ID; conversions look up a recipient's last message.
CREATE INDEX ledger_by_message ON ledger (message_id);
CREATE INDEX ledger_by_recipient ON ledger (recipient_id, updated_at) WHERE state = 'delivered';

CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE engagement (
    campaign TEXT NOT NULL,
    message_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    machine BOOLEAN NOT NULL,
    recipient_id TEXT NOT NULL,
    segment TEXT NOT NULL,
    variant TEXT NOT NULL,
    wave INTEGER NOT NULL,
    first_at BIGINT NOT NULL,
    hits BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (campaign, message_id, kind, detail, machine)
);

CREATE TABLE conversions (
    event_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    properties JSONB NOT NULL,
    at BIGINT NOT NULL,
    campaign TEXT,
    message_id TEXT,
    segment TEXT,
    variant TEXT,
    wave INTEGER
);
CREATE INDEX conversions_by_campaign ON conversions (campaign) WHERE campaign IS NOT NULL;

CREATE TABLE controls (
    campaign TEXT NOT NULL,
    segment TEXT NOT NULL,
    variant TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (campaign, segment, variant)
);

CREATE TABLE parked (
    id TEXT PRIMARY KEY,
    campaign TEXT NOT NULL,
    queue TEXT NOT NULL,
    keys JSONB NOT NULL,
    payload BYTEA NOT NULL,
    -- Campaign time before which it stays parked (send windows); 0: none.
    due_at BIGINT NOT NULL DEFAULT 0,
    taken_until BIGINT NOT NULL DEFAULT 0,
    at BIGINT NOT NULL
);
CREATE INDEX parked_by_campaign ON parked (campaign);
CREATE INDEX parked_by_due ON parked (due_at, at);

-- Each worker's stage figures (batches, failures by cause, latency), for
-- /metrics.
CREATE TABLE stage_stats (
    worker TEXT NOT NULL,
    stage TEXT NOT NULL,
    stats JSONB NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (worker, stage)
);
