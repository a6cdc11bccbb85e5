-- Added after V3 landed (a landed migration is never edited: refinery
-- refuses a database whose applied V3 differs): the ledger state for
-- messages the frequency cap stopped, limits shared by every worker, and
-- the per-provider delivery history.

ALTER TABLE ledger DROP CONSTRAINT IF EXISTS ledger_state_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_state_check
    CHECK (state IN ('claimed', 'delivered', 'failed', 'in_doubt', 'suppressed', 'cancelled', 'capped'));

-- Rate limits shared by every worker: a virtual-time token bucket per key
-- (GCRA), advanced atomically.
CREATE TABLE rate_limits (
    key TEXT PRIMARY KEY,
    tat_ms DOUBLE PRECISION NOT NULL
);

-- A provider's concurrency cap, shared by every worker of the deployment:
-- one row per slot taken, leased to a holder until `until_ms`.
CREATE TABLE provider_slots (
    key TEXT NOT NULL,
    slot INTEGER NOT NULL,
    holder TEXT NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (key, slot)
);

-- Each worker's cumulative deliveries per provider, per 5-second bucket:
-- the per-provider time series of the stats API.
CREATE TABLE provider_history (
    worker TEXT NOT NULL,
    provider TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    delivered BIGINT NOT NULL,
    PRIMARY KEY (worker, provider, bucket)
);
