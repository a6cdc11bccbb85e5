-- The delivery ledger keyed by message id alone (see ids::message_id in
-- squall-pipeline-core): the id names (campaign, recipient, message) one to
-- one, and its layout (campaign tag, then audience line) puts a batch's
-- claims on neighbouring index pages and a campaign's rows in one key
-- range, where the older key and its random message-id index scattered
-- every claim over the whole index. COLLATE "C": ranges compare bytes.
--
-- The older table's rows are converted by the store at start-up (their new
-- ids need each recipient's audience line and a hash SQL does not have);
-- until then they wait in ledger_keyed_by_recipient.

ALTER TABLE ledger RENAME TO ledger_keyed_by_recipient;
ALTER INDEX ledger_pkey RENAME TO ledger_keyed_by_recipient_pkey;
DROP INDEX IF EXISTS ledger_by_message;
DROP INDEX IF EXISTS ledger_by_recipient;
DROP INDEX IF EXISTS ledger_open_claims;

CREATE TABLE ledger (
    message_id TEXT COLLATE "C" PRIMARY KEY,
    campaign TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    message_key TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('claimed', 'delivered', 'failed', 'in_doubt', 'suppressed', 'cancelled', 'capped')),
    owner TEXT NOT NULL,
    detail TEXT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX ledger_by_recipient ON ledger (recipient_id, updated_at) WHERE state = 'delivered';
