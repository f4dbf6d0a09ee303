//! Console's role catalogue as the database holds it (004 §3): which roles each group is given,
//! which role inherits which, which permissions each role carries. [`read`] loads it whole for
//! the access review (`cli/access.rs` folds it into its `Catalogue`); [`role_granting`] asks it
//! which of some roles grants a permission directly, for the reader API's `via`. Each is one
//! statement (or three, for [`read`]) in a transaction of its own through [`Db`], unnamed.
//! [`unknown_names`] holds a mapping's role and permission names against it.

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

/// A role or permission a rule of the mapping names that the database does not have: the rule
/// can never be satisfied by it (a typo makes the route 403 for everyone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    /// "role" or "permission".
    pub kind: &'static str,
    pub name: String,
    /// The rule, as [`crate::policy::mapping::Route::label`] names it.
    pub rule: String,
    pub line: usize,
    pub col: usize,
}

impl std::fmt::Display for UnknownName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = if self.kind == "role" {
            "rbac_roles"
        } else {
            "rbac_permissions"
        };
        write!(
            f,
            "unknown {} {:?} in {} (not in {table})",
            self.kind, self.name, self.rule
        )
    }
}

/// The role and permission names of `mapping` that `rbac_roles` / `rbac_permissions` lack, in
/// the mapping's order. Used by `check --database-url` (errors) and by `serve` at load and on
/// every reload (warnings: the role may be created after the mapping ships).
pub async fn unknown_names(
    pool: &Db,
    mapping: &crate::policy::mapping::Mapping,
) -> Result<Vec<UnknownName>, sqlx::Error> {
    let names = |sql: &'static str| async move {
        let all: Vec<String> = sqlx::query_scalar(sql)
            .persistent(false)
            .fetch_all(pool)
            .await?;
        Ok::<_, sqlx::Error>(
            all.into_iter()
                .collect::<std::collections::HashSet<String>>(),
        )
    };
    let roles = names("SELECT name FROM rbac_roles").await?;
    let perms = names("SELECT name FROM rbac_permissions").await?;
    let mut out = Vec::new();
    for route in &mapping.routes {
        let unknown =
            |kind, known: &std::collections::HashSet<String>, names: &[std::sync::Arc<str>]| {
                names
                    .iter()
                    .filter(|n| !known.contains(&n[..]))
                    .map(|n| UnknownName {
                        kind,
                        name: n.to_string(),
                        rule: route.label().to_string(),
                        line: route.line,
                        col: route.col,
                    })
                    .collect::<Vec<_>>()
            };
        out.extend(unknown("role", &roles, &route.roles));
        out.extend(unknown("permission", &perms, &route.permissions));
    }
    Ok(out)
}

/// An admin of Console, with the groups they are a member of (by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminGroups {
    pub id: String,
    pub email: String,
    pub groups: Vec<String>,
}

/// Every admin of the database with their groups, by email then id (`matrix`'s rows).
pub async fn admins(pool: &Db) -> Result<Vec<AdminGroups>, sqlx::Error> {
    let admins: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT a.id, a.email, COALESCE(pg_catalog.array_agg(g.name ORDER BY g.name) FILTER (WHERE g.name IS NOT NULL), '{}') \
         FROM admins a LEFT JOIN rbac_user_groups ug ON ug.user_id = a.id COLLATE pg_catalog.\"default\" \
         LEFT JOIN rbac_groups g ON g.id = ug.group_id GROUP BY a.id, a.email ORDER BY a.email, a.id",
    ).persistent(false)
    .fetch_all(pool)
    .await?;
    Ok(admins
        .into_iter()
        .map(|(id, email, groups)| AdminGroups { id, email, groups })
        .collect())
}
