-- 0014: the audit log becomes append-only, enforced by the database itself; its retention; the
-- auditor role (审计员) that reviews it (app/db/audit_repo.py, app/api/audit.py, docs/audit-log.md).
--
-- What the database refuses, whoever asks (the application's role, the table's owner, a superuser):
--   * UPDATE of any audit row;
--   * DELETE of any audit row, except through audit_purge() and then only of rows older than the
--     retention, which can never be set below six calendar months (等保三级: 审计记录保存不少于六个月);
--   * TRUNCATE;
--   * an INSERT that backdates its row: `at` is always the inserting transaction's time.
-- Triggers do that, not privileges, because privileges do not bind the table's owner or a superuser
-- (and here the application connects as one). Only a superuser can get past a trigger (ALTER TABLE
-- ... DISABLE TRIGGER needs the owner; session_replication_role = replica needs a superuser): in
-- production the application connects as a role that neither owns the tables nor is a superuser
-- (docs/audit-log.md has the SQL), so nothing it can be tricked into running changes the record.
--
-- PostgreSQL-only features used: PL/pgSQL trigger functions (BEFORE ... FOR EACH ROW and BEFORE
-- TRUNCATE), SECURITY DEFINER, set_config/current_setting for a transaction-local flag.
-- openGauss and KingbaseES have all of them.

INSERT INTO role (code, name_zh) VALUES ('auditor', '审计员');

-- "from where": the workstation or kiosk as well as the address.
ALTER TABLE audit_log ADD COLUMN terminal text NOT NULL DEFAULT '';

-- The auditor's queries: by time, by actor, by patient (audit_log_patient exists since 0001).
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor_id, at);

-- The legal floor: rows younger than this are never deleted, whatever audit_purge is asked.
CREATE FUNCTION audit_retention_floor() RETURNS timestamptz
LANGUAGE sql STABLE AS $$ SELECT pg_catalog.now() - interval '6 months' $$;

CREATE FUNCTION audit_log_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.at := pg_catalog.now();  -- "when" cannot be forged
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE'
       AND pg_catalog.current_setting('huiyue.audit_purge', true) = 'on'
       AND OLD.at < public.audit_retention_floor() THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows are kept; old ones go only through audit_purge()';
END $$;

CREATE TRIGGER audit_log_insert BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_guard();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_guard();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_guard();

-- Names in the trigger functions are schema-qualified: they run with the caller's search_path.

-- Privileges say the same for everyone but the owner (PUBLIC never had them; this is the record).
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;

-- Retention: the one way rows leave. Deletes the rows older than `keep_days` days, or than six
-- calendar months if that is longer ago, and records the purge itself in the log. SECURITY DEFINER:
-- it runs with its owner's rights, so the application's role needs EXECUTE on it and no DELETE on
-- the table at all. The flag is transaction-local and switched off again before returning.
CREATE FUNCTION audit_purge(keep_days integer DEFAULT 184) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    cutoff  timestamptz := least(now() - make_interval(days => greatest(keep_days, 0)), audit_retention_floor());
    removed bigint;
BEGIN
    PERFORM set_config('huiyue.audit_purge', 'on', true);
    DELETE FROM public.audit_log WHERE at < cutoff;
    GET DIAGNOSTICS removed = ROW_COUNT;
    PERFORM set_config('huiyue.audit_purge', 'off', true);
    INSERT INTO public.audit_log (actor_id, actor_role, action, object_type, object_id, detail)
    VALUES (NULL, 'system', 'purge', 'audit_log', '',
            jsonb_build_object('before', cutoff, 'keep_days', keep_days, 'deleted', removed));
    RETURN removed;
END $$;
REVOKE EXECUTE ON FUNCTION audit_purge(integer) FROM PUBLIC;

-- Separation of duties (三权分立): whoever reviews the log holds no other role, so no one both acts
-- and audits himself. Checked on every role granted; the account row is locked so that two grants
-- racing cannot both pass.
CREATE FUNCTION staff_role_auditor_alone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM public.staff_user WHERE id = NEW.user_id FOR UPDATE;
    IF EXISTS (SELECT 1 FROM public.staff_role r
                WHERE r.user_id = NEW.user_id AND r.role_code <> NEW.role_code
                  AND (r.role_code = 'auditor' OR NEW.role_code = 'auditor')) THEN
        RAISE EXCEPTION 'the auditor role is held alone (user %)', NEW.user_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER staff_role_auditor_alone BEFORE INSERT OR UPDATE ON staff_role
    FOR EACH ROW EXECUTE FUNCTION staff_role_auditor_alone();
