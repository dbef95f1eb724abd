-- Initial schema: people, their login sessions, chat sessions with their messages and events.
-- Corrected from the original (CONTRACT.md 3 and 9.5): timestamptz everywhere, constrained
-- status values, case-insensitive unique e-mail, event uuids unique per chat session.

CREATE TABLE users (
    id                          text PRIMARY KEY,
    email                       text NOT NULL,
    display_name                text,
    password_hash               text NOT NULL,
    github_id                   text UNIQUE,
    -- Credentials hold encrypted values (services/secrets.py), never clear text.
    github_access_token         text,
    claude_auth                 text,
    preferred_provider          text NOT NULL DEFAULT 'claude',
    image_resize_max_dimension  integer NOT NULL DEFAULT 1024,
    voice_command_keywords      jsonb NOT NULL DEFAULT '[]'::jsonb,
    stop_listening_after_submit boolean NOT NULL DEFAULT false,
    default_landing_page        text NOT NULL DEFAULT 'store',
    preferred_model             text,
    chat_verbosity_level        text NOT NULL DEFAULT 'verbose',
    is_admin                    boolean NOT NULL DEFAULT false,
    created_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

-- Login sessions. `id` is the SHA-256 of the cookie token; the token itself is never stored.
CREATE TABLE sessions (
    id          text PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

-- Failed login counters, shared by every replica.
CREATE TABLE login_failures (
    key           text PRIMARY KEY,
    window_start  timestamptz NOT NULL,
    failures      integer NOT NULL
);

CREATE TABLE chat_sessions (
    id                    text PRIMARY KEY,
    user_id               text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_path          text UNIQUE,
    repository_owner      text,
    repository_name       text,
    user_request          text NOT NULL,
    status                text NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'running', 'completed', 'error')),
    repository_url        text,
    base_branch           text,
    branch                text,
    provider              text NOT NULL DEFAULT 'claude',
    provider_session_id   text,
    remote_session_id     text,
    remote_web_url        text,
    total_cost            text,
    issue_number          integer,
    auto_commit           boolean NOT NULL DEFAULT false,
    locked                boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL DEFAULT now(),
    completed_at          timestamptz,
    deleted_at            timestamptz,
    worker_last_activity  timestamptz
);
CREATE INDEX chat_sessions_user_created_idx ON chat_sessions (user_id, created_at DESC);
CREATE INDEX chat_sessions_user_deleted_idx ON chat_sessions (user_id, deleted_at DESC)
    WHERE deleted_at IS NOT NULL;
CREATE INDEX chat_sessions_remote_session_idx ON chat_sessions (remote_session_id);
CREATE INDEX chat_sessions_running_idx ON chat_sessions (status) WHERE status IN ('pending', 'running');

CREATE TABLE messages (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chat_session_id  text NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    type             text NOT NULL CHECK (type IN ('user', 'assistant', 'system', 'error')),
    content          text NOT NULL,
    images           jsonb,
    timestamp        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_chat_session_idx ON messages (chat_session_id, id);

-- The event log: `id` is the SSE id; `uuid` (from upstream events) is stored once per session.
CREATE TABLE events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chat_session_id  text NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    uuid             text,
    event_data       jsonb NOT NULL,
    timestamp        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_chat_session_id_idx ON events (chat_session_id, id);
CREATE UNIQUE INDEX events_chat_session_uuid_key ON events (chat_session_id, uuid) WHERE uuid IS NOT NULL;
