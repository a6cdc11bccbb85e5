-- A provider's concurrency cap, shared by every worker of the deployment:
-- one row per slot taken, leased to a holder until `until_ms`.
CREATE TABLE provider_slots (
    key TEXT NOT NULL,
    slot INTEGER NOT NULL,
    holder TEXT NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (key, slot)
);
