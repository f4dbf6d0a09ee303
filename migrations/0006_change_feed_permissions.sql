-- The change feed (0004) also covers rbac_permissions: a principal's permission names are read
-- from it (004 §3.4), so renaming or removing a permission changes cached answers. A catalogue
-- change: everyone is affected.
DROP TRIGGER IF EXISTS rbac_gateway_change ON rbac_permissions;
DROP TRIGGER IF EXISTS rbac_gateway_change_truncate ON rbac_permissions;
CREATE TRIGGER rbac_gateway_change AFTER INSERT OR UPDATE OR DELETE ON rbac_permissions
    FOR EACH STATEMENT EXECUTE FUNCTION rbac_gateway_log_change();
CREATE TRIGGER rbac_gateway_change_truncate AFTER TRUNCATE ON rbac_permissions
    FOR EACH STATEMENT EXECUTE FUNCTION rbac_gateway_log_change();
