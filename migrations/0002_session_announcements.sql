-- Session-list announcements (GET /api/sessions/updates): one row per change, kept for an hour.
-- A NOTIFY payload is limited to 8000 bytes and is lost while a replica's LISTEN connection is
-- down, so the announcement itself lives here and the NOTIFY only names the user; every replica
-- reads the new rows once per wake-up and catches up from this table after a reconnect. Rows
-- also let a reconnecting viewer (Last-Event-ID) receive the changes it missed.
CREATE TABLE session_announcements (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('created', 'updated', 'status_changed', 'deleted')),
    session     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX session_announcements_user_idx ON session_announcements (user_id, id);
CREATE INDEX session_announcements_created_idx ON session_announcements (created_at);
