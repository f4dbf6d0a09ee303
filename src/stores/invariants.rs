//! What the database holds of the seeds' invariants, for `check --database-url`, `rollout` and
//! the cockpit's board (which decide, in `cli/invariants.rs`, what is met): who holds a role of
//! the break-glass group outside a break-glass session (I-4), FLAG_RBAC_V2's
//! `console_flag_promotions` row (I-11), and the erasure cascade from `admins` (I-6). Each is one
//! statement through [`Db`], unnamed, with `pg_catalog` first on its path.

use crate::stores::db::{schema, Db};

/// One admin who holds a role of the break-glass group other than through a live break-glass
/// session: the admin, the role, and the path that grants it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Holder {
    pub admin_id: String,
    pub email: String,
    pub role: String,
    pub path: String,
}

/// Every admin holding a role the break-glass group is given (004 §6: the superadmin roles) by a
/// permanent membership of the break-glass group, another group (directly or by inheritance) or
/// a live ticket grant: per admin and role, the shortest path, in admin and role order. A live
/// break-glass session is the one path I-4 allows, and it is not a row of any of these tables.
pub async fn break_glass_roles_outside_sessions(pool: &Db) -> Result<Vec<Holder>, sqlx::Error> {
    sqlx::query_as(
        "WITH RECURSIVE bg AS ( \
             SELECT gr.role_id FROM rbac_group_roles gr JOIN rbac_groups g ON g.id = gr.group_id \
              WHERE g.name = 'break-glass'), \
         held(user_id, role_id, path, depth) AS ( \
             SELECT ug.user_id, gr.role_id, \
                    CASE WHEN g.name = 'break-glass' \
                         THEN pg_catalog.format('a permanent membership of group break-glass (role %s)', r.name) \
                         ELSE pg_catalog.format('group %s grants role %s', g.name, r.name) END, 0 \
               FROM rbac_user_groups ug JOIN rbac_groups g ON g.id = ug.group_id \
               JOIN rbac_group_roles gr ON gr.group_id = g.id JOIN rbac_roles r ON r.id = gr.role_id \
             UNION ALL \
             SELECT t.user_id, t.role_id, \
                    pg_catalog.format('ticket grant %s (customer %s, ticket %s) grants role %s', t.id, t.customer_id, t.ticket_id, r.name), 0 \
               FROM rbac_ticket_grants t JOIN rbac_roles r ON r.id = t.role_id \
              WHERE t.revoked_at_utc IS NULL AND (t.expires_at_utc IS NULL OR t.expires_at_utc > pg_catalog.now()) \
             UNION ALL \
             SELECT h.user_id, ri.parent_role_id, pg_catalog.format('%s, which inherits %s', h.path, p.name), h.depth + 1 \
               FROM held h JOIN rbac_role_inheritance ri ON ri.child_role_id = h.role_id \
               JOIN rbac_roles p ON p.id = ri.parent_role_id \
              WHERE h.depth < 16) \
         SELECT DISTINCT ON (h.user_id, r.name) h.user_id AS admin_id, coalesce(a.email, '') AS email, \
                r.name AS role, h.path \
           FROM held h JOIN bg ON bg.role_id = h.role_id JOIN rbac_roles r ON r.id = h.role_id \
           LEFT JOIN admins a ON a.id = h.user_id \
          ORDER BY h.user_id, r.name, h.depth, h.path",
    )
    .persistent(false)
    .fetch_all(pool)
    .await
}

/// The columns 002 Phase 2 gives `console_flag_promotions` besides the flag's name.
pub const PROMOTION_COLUMNS: [&str; 3] = ["risk", "current_env", "promoted_by"];
/// The names the flag's own column may have (002 does not name it), in the order tried.
pub const FLAG_NAME_COLUMNS: [&str; 5] = ["flag_name", "flag", "name", "flag_key", "key"];
/// The most rows of `console_flag_promotions` read (a table of flags: a handful).
const PROMOTION_ROWS: i64 = 10_000;

/// FLAG_RBAC_V2's promotion record, as `console_flag_promotions` holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Promotion {
    /// No such table in the gateway's schema.
    NoTable,
    /// The table exists and this role may not read it.
    Unreadable,
    /// The table's columns are not 002's: those it has, and those missing.
    Columns {
        found: Vec<String>,
        missing: Vec<String>,
    },
    /// The table is 002's and holds no FLAG_RBAC_V2 row.
    Absent,
    /// FLAG_RBAC_V2's row.
    Present {
        risk: String,
        current_env: String,
        promoted_by: String,
    },
}

impl Promotion {
    /// What `console_flag_promotions` says of `flag`, in a line.
    pub fn said(&self, flag: &str) -> String {
        match self {
            Promotion::NoTable => "console_flag_promotions does not exist (002 Phase 2 creates it)".into(),
            Promotion::Unreadable => "console_flag_promotions exists, and this role may not read it (GRANT SELECT ON console_flag_promotions)".into(),
            Promotion::Columns { found, missing } => format!(
                "console_flag_promotions differs from 002's description: it lacks {} (its columns: {})",
                missing.join(", "),
                found.join(", ")
            ),
            Promotion::Absent => format!("console_flag_promotions holds no {flag} row"),
            Promotion::Present { risk, current_env, promoted_by } => format!(
                "console_flag_promotions: {flag} risk={risk} current_env={current_env} promoted_by={promoted_by}"
            ),
        }
    }
}

/// FLAG_RBAC_V2's row of `console_flag_promotions` (I-11), read as JSON so that a table whose
/// columns differ from 002's is reported, never a failed statement.
pub async fn flag_promotion(pool: &Db, flag: &str) -> Result<Promotion, sqlx::Error> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema::text = $1 AND table_name::text = 'console_flag_promotions' ORDER BY ordinal_position",
    )
    .persistent(false)
    .bind(schema())
    .fetch_all(pool)
    .await?;
    if columns.is_empty() {
        let exists: bool = sqlx::query_scalar(
            "SELECT pg_catalog.to_regclass(pg_catalog.quote_ident($1) || '.console_flag_promotions') IS NOT NULL",
        )
        .persistent(false)
        .bind(schema())
        .fetch_one(pool)
        .await?;
        return Ok(if exists {
            Promotion::Unreadable
        } else {
            Promotion::NoTable
        });
    }
    let name_column = FLAG_NAME_COLUMNS
        .iter()
        .find(|c| columns.iter().any(|have| have == *c));
    let missing: Vec<String> = PROMOTION_COLUMNS
        .iter()
        .filter(|c| !columns.iter().any(|have| have == *c))
        .map(|c| c.to_string())
        .chain(
            name_column
                .is_none()
                .then(|| format!("a flag name column ({})", FLAG_NAME_COLUMNS.join(", "))),
        )
        .collect();
    let Some(name_column) = name_column.filter(|_| missing.is_empty()) else {
        return Ok(Promotion::Columns {
            found: columns,
            missing,
        });
    };
    let rows: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(
        "SELECT pg_catalog.row_to_json(p)::text FROM console_flag_promotions p LIMIT $1",
    )
    .persistent(false)
    .bind(PROMOTION_ROWS)
    .fetch_all(pool)
    .await;
    let rows = match rows {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
            return Ok(Promotion::Unreadable)
        }
        other => other?,
    };
    let text = |row: &serde_json::Value, key: &str| match &row[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        v => v.to_string(),
    };
    for row in rows {
        let Ok(row) = serde_json::from_str::<serde_json::Value>(&row) else {
            continue;
        };
        if text(&row, name_column) == flag {
            return Ok(Promotion::Present {
                risk: text(&row, "risk"),
                current_env: text(&row, "current_env"),
                promoted_by: text(&row, "promoted_by"),
            });
        }
    }
    Ok(Promotion::Absent)
}

/// I-6's erasure cascade: of the tables that name an admin (`admin_sessions`,
/// `rbac_user_groups`, `rbac_ticket_grants`, `rbac_break_glass_sessions`), those whose reference
/// to `admins` is missing or does not cascade on delete; and whether the gateway's own erasure
/// trigger (`rbac_gateway_erase_admin`, migration 0019) fires on `admins`.
pub async fn erasure(pool: &Db) -> Result<(Vec<String>, bool), sqlx::Error> {
    sqlx::query_as(
        "SELECT coalesce((SELECT pg_catalog.array_agg(t ORDER BY t) FROM pg_catalog.unnest($1::text[]) t \
                  WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_constraint c \
                                     WHERE c.contype = 'f' AND c.confdeltype = 'c' \
                                       AND c.conrelid = pg_catalog.to_regclass(t)::oid \
                                       AND c.confrelid = pg_catalog.to_regclass('admins')::oid)), '{}'), \
                EXISTS (SELECT FROM pg_catalog.pg_trigger g \
                         WHERE g.tgname = 'rbac_gateway_erase_admin' AND g.tgenabled <> 'D' \
                           AND g.tgrelid = pg_catalog.to_regclass('admins')::oid)",
    )
    .persistent(false)
    .bind(&[
        "admin_sessions",
        "rbac_user_groups",
        "rbac_ticket_grants",
        "rbac_break_glass_sessions",
    ][..])
    .fetch_one(pool)
    .await
}
