-- Attempt history: one row per domain per security-platform call that got a final answer (or was cut by a
-- timeout or the shutdown deadline). Written by the statement that settles the call's domains, one INSERT
-- per call, so an outcome never exists without its attempt nor the other way round. Domains settled without
-- a call (unknown_domain, already deleted, unsupported, failed by a parked job) have no rows here.
-- No foreign key to batch_domain on purpose: its KEY SHARE lock would make a claim's FOR UPDATE SKIP LOCKED
-- skip (or a settle wait on) rows a worker is about to claim; rows are only ever written next to their
-- batch_domain row, in the same statement.
CREATE TABLE domain_attempt (
  id               bigserial PRIMARY KEY,
  message_id       text NOT NULL,
  domain           text NOT NULL,
  attempted_at     timestamptz NOT NULL,   -- when the call was sent (the sending process's clock)
  duration_ms      integer NOT NULL,       -- until the answer, the timeout or the cut
  instance_id      text NOT NULL,          -- INSTANCE_ID of the process that sent it (default host:pid)
  trigger          text NOT NULL CHECK (trigger IN ('first_run', 'retry', 'stalled_sweep', 'replay')),
  token_generation integer NOT NULL,       -- generation of the shared token the call carried
  http_status      integer,                -- NULL: no answer (timeout, network failure, cut at shutdown)
  outcome          text NOT NULL,          -- the status the call left the domain in, or lease_lost
  reason           text                    -- chk_fail reason, or "<error class>: <message>"; NULL on success
);
-- Serves listAttempts (one batch, optionally one domain, in time order).
CREATE INDEX domain_attempt_lookup ON domain_attempt (message_id, domain, attempted_at);

-- What caused a batch's pending publish, so the relay publishes an unconfirmed job with the same trigger:
-- a callback (first_run) or a replay. NOT VALID: checked for every new or updated row without scanning
-- the existing ones, which all hold the default.
ALTER TABLE batch ADD COLUMN publish_trigger text NOT NULL DEFAULT 'first_run';
ALTER TABLE batch ADD CONSTRAINT batch_publish_trigger_check
  CHECK (publish_trigger IN ('first_run', 'retry', 'stalled_sweep', 'replay')) NOT VALID;
