-- What a login session has just fetched of a chat session's history (GET /api/sessions/:id/events
-- without paging parameters): the last event id the answer held, for a few seconds. The chat page
-- fetches the whole history and then opens the session's event stream without a position; the
-- stream takes (reads and deletes) this row and starts after that id, with live frames, so an
-- event stored between the fetch and the stream is neither replayed (which the page drops) nor
-- sent twice. In PostgreSQL, so a stream on any replica finds what another replica recorded.
--
-- Keyed by the login session (`sessions.id`, the SHA-256 of the cookie's token), so it never
-- reaches another browser or person. UNLOGGED: losing it in a crash only means a stream replays
-- as before, and the hot history fetch writes no WAL for it. No foreign keys: rows live seconds,
-- and the orphan cleanup deletes the expired ones.
CREATE UNLOGGED TABLE fetched_histories (
    login_session_id  text NOT NULL,
    chat_session_id   text NOT NULL,
    last_event_id     bigint NOT NULL,
    expires_at        timestamptz NOT NULL,
    PRIMARY KEY (login_session_id, chat_session_id)
);
