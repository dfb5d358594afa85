-- Operators start from a domain name ("www.example.com is still there"): every batch that carried it,
-- served by an index instead of a scan of the whole ledger (2 million rows took ~120 ms).
CREATE INDEX batch_domain_domain ON batch_domain (domain, created_at);
