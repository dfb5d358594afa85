-- The relay's stalled sweep runs every RELAY_INTERVAL_MS in every process. It used to walk every batch
-- (an EXISTS probe each), so its cost grew with the finished history. These two indexes hold only rows a
-- worker still has to act on, keyed by the moment they count as stalled, so the sweep reads by range just
-- the rows that are stalled: pending or retryable ones by when they were last touched, in-progress ones by
-- when their lease ends. A row version lands in at most one of them (by status), so ingest, claim and
-- settle each write one index entry here, never two.
CREATE INDEX batch_domain_idle ON batch_domain (updated_at) WHERE status IN ('pending', 'retryable');
CREATE INDEX batch_domain_leased ON batch_domain (claimed_until) WHERE status = 'in_progress';
