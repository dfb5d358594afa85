-- pcp_domains_retryable{,_oldest_seconds} are read at every Prometheus scrape: count and oldest created_at
-- of the retryable domains. batch_domain_open also holds every failed, unknown and unsupported row, which
-- stay forever, so the scrape would grow with the ledger; this index holds only the retryable rows and
-- answers both with an index-only scan. (The alarm and publish-pending reads already have theirs:
-- sys_task_process_alarm_state and batch_publish_pending.)
CREATE INDEX batch_domain_retryable ON batch_domain (created_at) WHERE status = 'retryable';
