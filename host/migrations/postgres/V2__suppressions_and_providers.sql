-- Delivery that survives bad days: the suppression list (checked before
-- every send), a ledger state for messages it stopped, and each worker's
-- provider figures for `squall status`.

ALTER TABLE ledger DROP CONSTRAINT IF EXISTS ledger_state_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_state_check
    CHECK (state IN ('claimed', 'delivered', 'failed', 'in_doubt', 'suppressed'));

CREATE TABLE suppressions (
    address TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    campaign TEXT,
    at BIGINT NOT NULL
);

CREATE TABLE provider_stats (
    worker TEXT NOT NULL,
    provider TEXT NOT NULL,
    stats JSONB NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (worker, provider)
);
