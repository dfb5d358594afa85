-- The operators' console: an audit of every change an operator makes, bulk replays run by the service, and
-- the indexes behind the batch list.

-- One row per change (a replay of one batch, a bulk replay started or cancelled, an alarm acknowledged or
-- resolved), written in the transaction of the change itself, so a change never exists without its row.
-- target: what was changed ({"messageId": …}, {"bulkReplayId": …}, {"alarmId": …});
-- changes: exactly what changed, e.g. [{"domain": "a.example.com", "from": "failed", "to": "pending"}].
CREATE TABLE operator_audit (
  id      bigserial PRIMARY KEY,
  at      timestamptz NOT NULL DEFAULT now(),
  action  text NOT NULL CHECK (action IN ('replay', 'bulk_replay_start', 'bulk_replay_cancel', 'acknowledge', 'resolve')),
  actor   text NOT NULL,   -- the principal's name: a console user, an SSO user, admin-token, an OS user (CLI)
  role    text,            -- the role it acted with (operator), null when unknown
  via     text,            -- bearer, session, sso, cli, library
  reason  text,            -- why, in the operator's words (a replay's reason, an alarm's note)
  target  jsonb NOT NULL,
  changes jsonb NOT NULL DEFAULT '[]'
);
-- Newest first by id (the primary key), or by action: GET /api/audit?action=… pages through this one.
CREATE INDEX operator_audit_action ON operator_audit (action, id);

-- A bulk replay: the batches a filter matched when it started (message_ids, in the order they are replayed),
-- replayed one by one by the process that accepted it. heartbeat_at moves with every batch; a running row
-- whose heartbeat stopped belongs to a process that died and is marked failed (src/ops/bulk-replay.ts).
CREATE TABLE bulk_replay (
  id           bigserial PRIMARY KEY,
  status       text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'cancelled', 'failed')),
  filter       jsonb NOT NULL,
  reason       text NOT NULL,
  created_by   text NOT NULL,
  created_role text,
  created_via  text,
  created_at   timestamptz NOT NULL DEFAULT now(),
  message_ids  text[] NOT NULL,
  total        integer NOT NULL,
  done         integer NOT NULL DEFAULT 0,     -- batches replayed so far (message_ids[1:done])
  reopened     integer NOT NULL DEFAULT 0,     -- domains re-opened so far
  owner        text NOT NULL,                  -- INSTANCE_ID of the process running it
  heartbeat_at timestamptz NOT NULL DEFAULT now(),
  finished_at  timestamptz,
  cancelled_by text,
  error        text
);
CREATE INDEX bulk_replay_running ON bulk_replay (heartbeat_at) WHERE status = 'running';

-- The batch list (GET /api/batches): newest first, keyset pages on (created_at, message_id). A backward
-- scan of this index serves every page, whatever the ledger's size.
CREATE INDEX batch_created ON batch (created_at, message_id);

-- "Has failures" and "still open" are EXISTS probes per listed batch, each served by one of these partial
-- indexes. They hold only the rows in those statuses, so a probe is one index lookup. Flags on batch kept
-- up by a trigger were the other choice, but every claim and settle would then lock the batch row while
-- holding domain rows: the lock order that deadlocked with a merging callback (see claimDomains).
CREATE INDEX batch_domain_failing ON batch_domain (message_id) WHERE status IN ('failed', 'unknown_domain');
CREATE INDEX batch_domain_unfinished ON batch_domain (message_id) WHERE status IN ('pending', 'in_progress', 'retryable', 'awaiting_pipeline');
