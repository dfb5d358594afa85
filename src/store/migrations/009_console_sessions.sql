-- Console sessions (src/http/session.ts). The browser holds a random 32-byte token; the row is keyed by its
-- sha256, so a copy of this table (a backup, a replica, a stray SELECT in a log) signs nobody in.
-- via: 'session' = signed in with a CONSOLE_USERS password; 'sso' = a row that only carries the CSRF token
-- of a user the single sign-on proxy vouches for (it never signs anyone in without the proxy's header).
-- user_tag: a fingerprint of the CONSOLE_USERS entry the session was issued for; when the entry changes
-- (removed, other role, new password) the session no longer matches and ends.
CREATE TABLE console_session (
  id           text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{64}$'),
  name         text NOT NULL,
  role         text NOT NULL CHECK (role IN ('viewer', 'operator')),
  via          text NOT NULL CHECK (via IN ('session', 'sso')),
  user_tag     text NOT NULL,
  csrf_token   text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  last_seen_at timestamptz NOT NULL DEFAULT now(),
  expires_at   timestamptz NOT NULL
);
-- Expired rows are swept when a session is created; this keeps that sweep off a sequential scan.
CREATE INDEX console_session_expires_at ON console_session (expires_at);
