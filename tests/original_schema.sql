-- The ORIGINAL server's schema as its start-up creates it (CONTRACT.md 3.1 and 3.2), for the
-- import tests and bench/import.py. Kept with its quirks: timestamps without time zone except
-- sessions.expires_at, free-text statuses and message types, clear-text credentials, jsonb
-- events with the uuid inside, no uniqueness of event uuids, serial ids.

CREATE TABLE users (
    id                          text PRIMARY KEY,
    email                       text NOT NULL UNIQUE,
    display_name                text,
    password_hash               text NOT NULL,
    github_id                   text UNIQUE,
    github_access_token         text,
    claude_auth                 jsonb,
    codex_auth                  jsonb,
    gemini_auth                 jsonb,
    openrouter_api_key          text,
    autocomplete_enabled        boolean NOT NULL DEFAULT true,
    autocomplete_model          text DEFAULT 'openai/gpt-oss-120b:cerebras',
    image_ai_keys               jsonb,
    image_ai_provider           text DEFAULT 'openrouter',
    image_ai_model              text DEFAULT 'google/gemini-2.5-flash-image',
    preferred_provider          text NOT NULL DEFAULT 'claude',
    image_resize_max_dimension  integer NOT NULL DEFAULT 1024,
    voice_command_keywords      jsonb DEFAULT '[]'::jsonb,
    stop_listening_after_submit boolean NOT NULL DEFAULT false,
    default_landing_page        text NOT NULL DEFAULT 'store',
    preferred_model             text,
    chat_verbosity_level        text NOT NULL DEFAULT 'verbose',
    is_admin                    boolean NOT NULL DEFAULT false,
    created_at                  timestamp NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    id          text PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at  timestamp with time zone NOT NULL
);
CREATE INDEX idx_sessions_user_id ON sessions (user_id);

CREATE TABLE chat_sessions (
    id                    text PRIMARY KEY,
    user_id               text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_path          text UNIQUE,
    repository_owner      text,
    repository_name       text,
    user_request          text NOT NULL,
    status                text NOT NULL DEFAULT 'pending',
    repository_url        text,
    base_branch           text,
    branch                text,
    provider              text DEFAULT 'claude',
    provider_session_id   text,
    remote_session_id     text,
    remote_web_url        text,
    total_cost            text,
    issue_number          integer,
    auto_commit           boolean NOT NULL DEFAULT false,
    locked                boolean NOT NULL DEFAULT false,
    created_at            timestamp NOT NULL DEFAULT now(),
    completed_at          timestamp,
    deleted_at            timestamp,
    worker_last_activity  timestamp
);
CREATE INDEX idx_chat_sessions_user_id ON chat_sessions (user_id);
CREATE INDEX idx_chat_sessions_status ON chat_sessions (status);
CREATE INDEX idx_chat_sessions_issue_number ON chat_sessions (issue_number);
CREATE INDEX idx_chat_sessions_issue_repo ON chat_sessions (issue_number, repository_owner, repository_name);

CREATE TABLE messages (
    id               serial PRIMARY KEY,
    chat_session_id  text NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    type             text NOT NULL,
    content          text NOT NULL,
    images           jsonb,
    timestamp        timestamp NOT NULL DEFAULT now()
);
CREATE INDEX idx_messages_chat_session_id ON messages (chat_session_id);

CREATE TABLE events (
    id               serial PRIMARY KEY,
    chat_session_id  text NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    event_data       jsonb NOT NULL,
    timestamp        timestamp NOT NULL DEFAULT now()
);
CREATE INDEX idx_events_chat_session_id ON events (chat_session_id);
CREATE INDEX idx_events_timestamp ON events (timestamp);

CREATE TABLE live_chat_messages (
    id          text PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    owner       text NOT NULL,
    repo        text NOT NULL,
    branch      text NOT NULL,
    role        text NOT NULL,
    content     text NOT NULL,
    tool_calls  jsonb,
    images      jsonb,
    created_at  timestamp NOT NULL DEFAULT now()
);

CREATE TABLE workspace_presence (
    id            text PRIMARY KEY,
    user_id       text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    owner         text NOT NULL,
    repo          text NOT NULL,
    branch        text NOT NULL,
    page          text,
    cursor_x      integer,
    cursor_y      integer,
    selection     jsonb,
    heartbeat_at  timestamp NOT NULL DEFAULT now(),
    updated_at    timestamp NOT NULL DEFAULT now()
);

CREATE TABLE workspace_events (
    id          text PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    owner       text NOT NULL,
    repo        text NOT NULL,
    branch      text NOT NULL,
    event_type  text NOT NULL,
    page        text,
    path        text,
    payload     jsonb,
    created_at  timestamp NOT NULL DEFAULT now()
);

CREATE TABLE orchestrator_jobs (
    id                  text PRIMARY KEY,
    user_id             text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    repository_owner    text NOT NULL,
    repository_name     text NOT NULL,
    base_branch         text NOT NULL,
    working_branch      text NOT NULL,
    session_path        text NOT NULL,
    request_document    text NOT NULL,
    task_list           text,
    status              text NOT NULL DEFAULT 'pending',
    current_cycle       integer NOT NULL DEFAULT 0,
    max_cycles          integer,
    time_limit_minutes  integer,
    max_parallel_tasks  integer NOT NULL DEFAULT 3,
    provider            text NOT NULL DEFAULT 'claude',
    started_at          timestamp,
    completed_at        timestamp,
    created_at          timestamp NOT NULL DEFAULT now(),
    updated_at          timestamp NOT NULL DEFAULT now(),
    last_error          text,
    error_count         integer NOT NULL DEFAULT 0
);

CREATE TABLE orchestrator_cycles (
    id                text PRIMARY KEY,
    job_id            text NOT NULL REFERENCES orchestrator_jobs (id) ON DELETE CASCADE,
    cycle_number      integer NOT NULL,
    phase             text NOT NULL DEFAULT 'discovery',
    tasks_discovered  integer NOT NULL DEFAULT 0,
    tasks_launched    integer NOT NULL DEFAULT 0,
    tasks_completed   integer NOT NULL DEFAULT 0,
    tasks_failed      integer NOT NULL DEFAULT 0,
    summary           text,
    learnings         text,
    started_at        timestamp NOT NULL DEFAULT now(),
    completed_at      timestamp,
    UNIQUE (job_id, cycle_number)
);

CREATE TABLE orchestrator_tasks (
    id                text PRIMARY KEY,
    cycle_id          text NOT NULL REFERENCES orchestrator_cycles (id) ON DELETE CASCADE,
    job_id            text NOT NULL REFERENCES orchestrator_jobs (id) ON DELETE CASCADE,
    task_number       integer NOT NULL,
    description       text NOT NULL,
    context           text,
    priority          text DEFAULT 'P1',
    can_run_parallel  boolean NOT NULL DEFAULT true,
    agent_session_id  text REFERENCES chat_sessions (id) ON DELETE SET NULL,
    task_branch       text,
    status            text NOT NULL DEFAULT 'pending',
    result_summary    text,
    files_modified    jsonb,
    commits_made      jsonb,
    started_at        timestamp,
    completed_at      timestamp,
    error_message     text,
    retry_count       integer NOT NULL DEFAULT 0
);
