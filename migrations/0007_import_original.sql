-- `server.py db import-original`: what was carried over from the original server, so that a second
-- run brings only what is new and an interrupted run continues where it stopped.
-- One row per person, login session and chat session taken from the original: the fingerprint of
-- the original row as it was imported (a SHA-256 over its carried values) tells a later run
-- whether the row changed in the original, here, or both; the watermarks are the original's last
-- message and event ids already imported for a chat session. A login session is named by the
-- SHA-256 of its token (never the token). A row is written in the same transaction as what it
-- describes. No foreign key: a person, login session (logout) or chat session deleted here after
-- the import stays deleted.
CREATE TABLE import_original (
    kind             text NOT NULL CHECK (kind IN ('user', 'login_session', 'chat_session')),
    original_id      text NOT NULL,
    fingerprint      text NOT NULL,
    last_message_id  bigint NOT NULL DEFAULT 0,
    last_event_id    bigint NOT NULL DEFAULT 0,
    imported_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, original_id)
);
