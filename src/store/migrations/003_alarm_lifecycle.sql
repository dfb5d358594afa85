-- Alarm lifecycle: open -> acknowledged -> resolved, who and when for each step, a note; repeats of an
-- active alarm (same batch and type) count occurrences instead of adding rows. The seed's columns and the
-- tag shape stay as they are.
ALTER TABLE sys_task_process_alarm
  ADD COLUMN state           text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'acknowledged', 'resolved')),
  ADD COLUMN occurrences     integer NOT NULL DEFAULT 1,
  ADD COLUMN last_seen_at    timestamptz NOT NULL DEFAULT now(),
  ADD COLUMN acknowledged_at timestamptz,
  ADD COLUMN acknowledged_by text,
  ADD COLUMN ack_note        text,
  ADD COLUMN resolved_at     timestamptz,
  ADD COLUMN resolved_by     text,
  ADD COLUMN resolve_note    text;

UPDATE sys_task_process_alarm SET last_seen_at = created_at;

-- Older duplicates of the same batch and type were repeats: keep the newest one active.
UPDATE sys_task_process_alarm a
SET state = 'resolved', resolved_at = now(), resolved_by = 'migration 003',
    resolve_note = 'superseded by a newer alarm of the same batch and type'
WHERE EXISTS (SELECT 1 FROM sys_task_process_alarm n
              WHERE coalesce(n.message_id, '') = coalesce(a.message_id, '') AND n.alarm_type = a.alarm_type AND n.id > a.id);

-- At most one active (open or acknowledged) alarm per batch and type: a repeat updates it.
CREATE UNIQUE INDEX sys_task_process_alarm_active ON sys_task_process_alarm (coalesce(message_id, ''), alarm_type)
  WHERE state <> 'resolved';
CREATE INDEX sys_task_process_alarm_state ON sys_task_process_alarm (state, created_at DESC, id DESC);

-- Notification outbox: written in the same transaction as the alarm change it announces, delivered by a
-- sender with backoff; delivered_at set only after the receiver confirmed.
CREATE TABLE alarm_notification (
  id              bigserial PRIMARY KEY,
  alarm_id        bigint NOT NULL REFERENCES sys_task_process_alarm (id),
  event           text NOT NULL CHECK (event IN ('opened', 'resolved')),
  alarm_type      text NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  -- the idempotency key of the message that carried (or is carrying) this row
  delivery_key    text,
  delivered_at    timestamptz,
  last_error      text
);
CREATE INDEX alarm_notification_due ON alarm_notification (alarm_type, next_attempt_at) WHERE delivered_at IS NULL;
