-- The vendor's own progress fields. Each callback item carries `percent` (0..1) and `process` (true while
-- the pipeline is still working on the domain); the latest values reported for each domain of a batch are
-- kept here (NULL = the vendor sent none, which means finished).
ALTER TABLE batch_domain
  ADD COLUMN percent real,
  ADD COLUMN process boolean;

-- awaiting_pipeline: the pipeline reported the domain unfinished (process true or percent < 1). Such a row is
-- never claimed nor sent; a later callback of the same messageId reporting it finished makes it pending.
-- The new list is a superset of the old one, so every existing row passes the check.
ALTER TABLE batch_domain DROP CONSTRAINT batch_domain_status_check;
ALTER TABLE batch_domain ADD CONSTRAINT batch_domain_status_check
  CHECK (status IN ('pending', 'in_progress', 'succeeded', 'failed', 'retryable', 'unsupported', 'unknown_domain', 'awaiting_pipeline'));

-- The relay checks for domains awaiting longer than AWAITING_PIPELINE_ALARM_MS every RELAY_INTERVAL_MS.
-- A row only ever enters this status when it is created, so created_at is when it started waiting. Awaiting
-- rows are few and short-lived; this index holds only them, so the check never grows with the ledger.
CREATE INDEX batch_domain_awaiting ON batch_domain (created_at) WHERE status = 'awaiting_pipeline';
