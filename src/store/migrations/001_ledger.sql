-- The ledger: every callback as received, one batch per messageId, one row per (messageId, domain).

CREATE TABLE callback_audit (
  id           bigserial PRIMARY KEY,
  message_id   text NOT NULL,
  received_at  timestamptz NOT NULL DEFAULT now(),
  remote_addr  text,
  item_count   integer NOT NULL,
  body         jsonb NOT NULL
);
CREATE INDEX callback_audit_message_id ON callback_audit (message_id);

CREATE TABLE batch (
  message_id      text PRIMARY KEY,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  callbacks       integer NOT NULL DEFAULT 1,
  -- true while a job for this batch still has to reach RabbitMQ (set in the ingest transaction,
  -- cleared after the broker confirmed); the relay publishes whatever stays true.
  publish_pending boolean NOT NULL DEFAULT true,
  published_at    timestamptz,
  publish_error   text,
  last_run_at     timestamptz,   -- last time a worker claimed domains of this batch
  relayed_at      timestamptz    -- last time the relay re-published it as stalled
);
CREATE INDEX batch_publish_pending ON batch (updated_at) WHERE publish_pending;

CREATE TABLE batch_domain (
  message_id    text NOT NULL REFERENCES batch (message_id),
  domain        text NOT NULL,
  req_type      text NOT NULL,
  status        text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'in_progress', 'succeeded', 'failed', 'retryable', 'unsupported', 'unknown_domain')),
  attempts      integer NOT NULL DEFAULT 0,
  user_id_cdn   text,
  detail        text,           -- why it failed, or a note on how it succeeded
  claimed_by    text,
  claimed_until timestamptz,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  finished_at   timestamptz,
  PRIMARY KEY (message_id, domain)
);
CREATE INDEX batch_domain_open ON batch_domain (message_id) WHERE status NOT IN ('succeeded');

-- Domain inventory: how the security platform knows each domain.
CREATE TABLE cdn_domain (
  domain                text PRIMARY KEY,
  user_id_cdn           text NOT NULL,
  status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deleted')),
  deleted_at            timestamptz,
  deleted_by_message_id text,
  imported_at           timestamptz NOT NULL DEFAULT now()
);

-- The alarm table operators already query; its shape (tag JSON with taskId = messageId + '_exc') is kept,
-- message_id is added so they no longer need tag LIKE '%…%'.
CREATE TABLE sys_task_process_alarm (
  id          bigserial PRIMARY KEY,
  tag         text NOT NULL,
  message_id  text,
  alarm_type  text NOT NULL,
  content     text NOT NULL,
  details     jsonb,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sys_task_process_alarm_message_id ON sys_task_process_alarm (message_id, created_at);
CREATE INDEX sys_task_process_alarm_created_at ON sys_task_process_alarm (created_at);
