-- Each replica remembers login-session lookups for a few seconds (services/login_cache.py).
-- A change to a person's row or to one of their login sessions tells every replica at once,
-- whichever process or tool made it: NOTIFY webedt_auth with the person's id. Notifications with
-- the same payload in one transaction arrive once, so a bulk delete costs one per person.
CREATE FUNCTION notify_login_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_TABLE_NAME = 'users' THEN
        PERFORM pg_notify('webedt_auth', OLD.id);
    ELSE
        PERFORM pg_notify('webedt_auth', OLD.user_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_notify_login_change AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION notify_login_change();

CREATE TRIGGER sessions_notify_login_change AFTER UPDATE OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION notify_login_change();
