//! Console's role catalogue as the database holds it (004 §3): which roles each group is given,
//! which role inherits which, which permissions each role carries. [`read`] loads it whole for
//! the access review (`cli/access.rs` folds it into its `Catalogue`); [`role_granting`] asks it
//! which of some roles grants a permission directly, for the reader API's `via`. Each is one
//! statement (or three, for [`read`]) in a transaction of its own through [`Db`], unnamed.

use crate::runtime::telemetry;
use crate::stores::db::Db;

/// The role catalogue, one pair a row, as [`read`] found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogueRows {
    /// (group, role it is given): every group, with None for a group given no role.
    pub group_roles: Vec<(String, Option<String>)>,
    /// (child role, parent role): the child holds everything the parent grants.
    pub inheritance: Vec<(String, String)>,
    /// (role, permission).
    pub role_permissions: Vec<(String, String)>,
}

/// The catalogue as the database holds it now.
pub async fn read(pool: &Db) -> Result<CatalogueRows, sqlx::Error> {
    let group_roles: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT g.name, r.name FROM rbac_groups g \
         LEFT JOIN rbac_group_roles gr ON gr.group_id = g.id \
         LEFT JOIN rbac_roles r ON r.id = gr.role_id",
    )
    .persistent(false)
    .fetch_all(pool)
    .await?;
    let inheritance: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.name, p.name FROM rbac_role_inheritance ri \
         JOIN rbac_roles c ON c.id = ri.child_role_id JOIN rbac_roles p ON p.id = ri.parent_role_id",
    ).persistent(false)
    .fetch_all(pool)
    .await?;
    let role_permissions: Vec<(String, String)> = sqlx::query_as(
        "SELECT r.name, p.name FROM rbac_role_permissions rp \
         JOIN rbac_roles r ON r.id = rp.role_id JOIN rbac_permissions p ON p.id = rp.permission_id",
    )
    .persistent(false)
    .fetch_all(pool)
    .await?;
    Ok(CatalogueRows {
        group_roles,
        inheritance,
        role_permissions,
    })
}

const ROLE_GRANTING_SQL: &str = r#"
SELECT r.name FROM rbac_role_permissions rp
JOIN rbac_roles r ON r.id = rp.role_id
JOIN rbac_permissions p ON p.id = rp.permission_id
WHERE p.name = $1 AND r.name = ANY($2)
ORDER BY r.name LIMIT 1
"#;

/// The first (by name) of `roles` that carries `permission` directly (no inheritance), if any;
/// a child span of the request's when traced.
pub async fn role_granting(
    pool: &Db,
    roles: &[String],
    permission: &str,
) -> Result<Option<String>, sqlx::Error> {
    let span = telemetry::db_span("SELECT role permissions");
    let found = sqlx::query_scalar(ROLE_GRANTING_SQL)
        .persistent(false)
        .bind(permission)
        .bind(roles)
        .fetch_optional(pool)
        .await;
    if let Some(span) = span {
        span.done(found.is_ok());
    }
    found
}
