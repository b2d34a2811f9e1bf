-- After every migration run (deploy/compose.yaml's db-grants, as huiyue_owner): the application
-- role's rights on the tables and sequences the migrations made (docs/audit-log.md). Idempotent.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO huiyue_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO huiyue_app;
-- The audit log is append-only by trigger whatever the grants say; the grants say it too.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM huiyue_app;
-- audit_purge() (retention) stays with the owner: run it from the maintenance job as huiyue_owner.
