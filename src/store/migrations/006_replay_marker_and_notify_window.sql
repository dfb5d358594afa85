-- Replay marker: when a batch's failure alarms resolve by themselves, the note says whether a replay or
-- a plain retry did it. A replay is the only thing that moves a domain from failed, retryable or
-- unknown_domain back to pending (claims go to in_progress, settles leave in_progress), so that transition
-- stamps the row. A BEFORE trigger that only sets a column of the row being updated: no extra statement,
-- no extra row lock, and the WHEN clause keeps it off the hot claim/settle path.
ALTER TABLE batch_domain ADD COLUMN reopened_at timestamptz;

CREATE FUNCTION batch_domain_mark_reopened() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.reopened_at := now();
  RETURN NEW;
END
$$;

CREATE TRIGGER batch_domain_reopened BEFORE UPDATE OF status ON batch_domain
  FOR EACH ROW WHEN (NEW.status = 'pending' AND OLD.status IN ('failed', 'retryable', 'unknown_domain'))
  EXECUTE FUNCTION batch_domain_mark_reopened();

-- Notification grouping: at most one webhook message per alarm type per ALARM_NOTIFY_GROUP_MS. One row per
-- alarm type; a sender locks it (FOR UPDATE SKIP LOCKED) while it forms or sends that type's message, so
-- two senders never work on the same type at once, and last_message_at says when the window reopens.
CREATE TABLE alarm_notification_window (
  alarm_type      text PRIMARY KEY,
  last_message_at timestamptz
);
