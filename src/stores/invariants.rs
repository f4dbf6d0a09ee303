//! What the database holds of the seeds' invariants, for `check --database-url`, `rollout` and
//! the cockpit's board (which decide, in `cli/invariants.rs`, what is met): who holds a role of
//! the break-glass group outside a break-glass session (I-4), FLAG_RBAC_V2's
//! `console_flag_promotions` row (I-11), and the erasure cascade from `admins` (I-6). Each is one
//! statement through [`Db`], unnamed, with `pg_catalog` first on its path.

use crate::stores::db::{schema, Db};

/// One admin who holds a role of the break-glass group other than through a live break-glass
/// session: the admin (by id: reports that outlive an erasure carry no email), the role, and the
/// path that grants it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Holder {
    pub admin_id: String,
    pub role: String,
    pub path: String,
}

/// Every admin holding a role the break-glass group is given (004 §6: the superadmin roles) by a
/// permanent membership of the break-glass group, another group (directly or by inheritance) or
/// a live ticket grant: per admin and role, the shortest path (inheritance followed to any
/// depth, each role once per path, as the lookup follows it), by role, then path, then admin
/// (the same report for the same grants, whatever ids the admins have; ids told apart exactly,
/// under the database's default collation, whatever collation Console gives them). A live
/// break-glass session is the one path I-4 allows, and it is not a row of any of these tables.
pub async fn break_glass_roles_outside_sessions(pool: &Db) -> Result<Vec<Holder>, sqlx::Error> {
    sqlx::query_as(
        "WITH RECURSIVE bg AS ( \
             SELECT gr.role_id FROM rbac_group_roles gr JOIN rbac_groups g ON g.id = gr.group_id \
              WHERE g.name = 'break-glass'), \
         held(user_id, role_id, path, depth, visited) AS ( \
             SELECT ug.user_id COLLATE pg_catalog.\"default\", gr.role_id, \
                    CASE WHEN g.name = 'break-glass' \
                         THEN pg_catalog.format('a permanent membership of group break-glass (role %s)', r.name) \
                         ELSE pg_catalog.format('group %s grants role %s', g.name, r.name) END, 0, ARRAY[gr.role_id] \
               FROM rbac_user_groups ug JOIN rbac_groups g ON g.id = ug.group_id \
               JOIN rbac_group_roles gr ON gr.group_id = g.id JOIN rbac_roles r ON r.id = gr.role_id \
             UNION ALL \
             SELECT t.user_id COLLATE pg_catalog.\"default\", t.role_id, \
                    pg_catalog.format('ticket grant %s (customer %s, ticket %s) grants role %s', t.id, t.customer_id, t.ticket_id, r.name), 0, ARRAY[t.role_id] \
               FROM rbac_ticket_grants t JOIN rbac_roles r ON r.id = t.role_id \
              WHERE t.revoked_at_utc IS NULL AND (t.expires_at_utc IS NULL OR t.expires_at_utc > pg_catalog.now()) \
             UNION ALL \
             SELECT h.user_id, ri.parent_role_id, pg_catalog.format('%s, which inherits %s', h.path, p.name), h.depth + 1, \
                    pg_catalog.array_append(h.visited, ri.parent_role_id) \
               FROM held h JOIN rbac_role_inheritance ri ON ri.child_role_id = h.role_id \
               JOIN rbac_roles p ON p.id = ri.parent_role_id \
              WHERE ri.parent_role_id OPERATOR(pg_catalog.<>) ALL (h.visited)) \
         SELECT admin_id, role, path FROM ( \
             SELECT DISTINCT ON (h.user_id COLLATE pg_catalog.\"default\", r.name) h.user_id AS admin_id, r.name AS role, h.path \
               FROM held h JOIN bg ON bg.role_id = h.role_id JOIN rbac_roles r ON r.id = h.role_id \
              ORDER BY h.user_id COLLATE pg_catalog.\"default\", r.name, h.depth, h.path) shortest \
          ORDER BY role, path, admin_id COLLATE pg_catalog.\"default\"",
    )
    .persistent(false)
    .fetch_all(pool)
    .await
}

/// The columns 002 Phase 2 gives `console_flag_promotions` besides the flag's name.
pub const PROMOTION_COLUMNS: [&str; 3] = ["risk", "current_env", "promoted_by"];
/// The names the flag's own column may have (002 does not name it), in the order tried.
pub const FLAG_NAME_COLUMNS: [&str; 5] = ["flag_name", "flag", "name", "flag_key", "key"];

/// FLAG_RBAC_V2's promotion record, as `console_flag_promotions` holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Promotion {
    /// No such table in the gateway's schema.
    NoTable,
    /// The table exists and this role may not read it.
    Unreadable,
    /// The table is not one the gateway reads without running another role's code: a view, a
    /// table under row-level security, or a column of a type outside `pg_catalog` (a cast or
    /// output function its owner wrote would run as the gateway). Why.
    Unsafe(String),
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
            Promotion::Unreadable => "console_flag_promotions exists, and this role may not read it (GRANT SELECT ON console_flag_promotions: deploy/gateway-grants.sql)".into(),
            Promotion::Unsafe(why) => format!("console_flag_promotions is not read: {why}"),
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

/// The table as the catalogue describes it: (relkind, row-level security, readable, a partition
/// or tables under it, an index or statistics object referring to what neither initdb nor a
/// superuser made, [(column, type schema)]), or None when the gateway's schema has no such
/// relation.
type Described = Option<(String, bool, bool, bool, bool, Vec<String>, Vec<String>)>;

/// The read of the row when the flag's column is `$column`: the name never comes from the
/// database, and every value is read as `pg_catalog.text` of a `pg_catalog` type (checked first),
/// compared with `pg_catalog`'s operator.
macro_rules! row_read {
    ($column:literal) => {
        concat!(
            "SELECT risk::pg_catalog.text, current_env::pg_catalog.text, promoted_by::pg_catalog.text \
             FROM console_flag_promotions p WHERE p.",
            $column,
            "::pg_catalog.text OPERATOR(pg_catalog.=) $1::pg_catalog.text LIMIT 1"
        )
    };
}

/// [`FLAG_NAME_COLUMNS`]' reads, in its order.
const ROW_READS: [&str; 5] = [
    row_read!("flag_name"),
    row_read!("flag"),
    row_read!("name"),
    row_read!("flag_key"),
    row_read!("key"),
];

/// SQL text: `console_flag_promotions` as the catalogue describes it ([`Described`]), in the
/// gateway's schema `$1`.
const DESCRIBE_PROMOTIONS: &str = "SELECT c.relkind::pg_catalog.text, c.relrowsecurity, \
        pg_catalog.has_table_privilege(c.oid, 'SELECT'), \
        (c.relispartition OR EXISTS (SELECT FROM pg_catalog.pg_inherits h WHERE h.inhparent OPERATOR(pg_catalog.=) c.oid)), \
        EXISTS (SELECT FROM pg_catalog.pg_depend d \
                 WHERE ((d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                         AND d.objid OPERATOR(pg_catalog.=) ANY (SELECT i.indexrelid FROM pg_catalog.pg_index i WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid)) \
                     OR (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass \
                         AND d.objid OPERATOR(pg_catalog.=) ANY (SELECT s.oid FROM pg_catalog.pg_statistic_ext s WHERE s.stxrelid OPERATOR(pg_catalog.=) c.oid))) \
                   AND d.refclassid OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog.pg_proc'::pg_catalog.regclass, 'pg_catalog.pg_operator'::pg_catalog.regclass, \
                         'pg_catalog.pg_type'::pg_catalog.regclass, \
                         'pg_catalog.pg_opclass'::pg_catalog.regclass, 'pg_catalog.pg_opfamily'::pg_catalog.regclass]::pg_catalog.oid[]) \
                   AND d.refobjid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid \
                   AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolsuper AND r.oid OPERATOR(pg_catalog.=) CASE d.refclassid \
                         WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass THEN (SELECT o.proowner FROM pg_catalog.pg_proc o WHERE o.oid OPERATOR(pg_catalog.=) d.refobjid) \
                         WHEN 'pg_catalog.pg_operator'::pg_catalog.regclass THEN (SELECT o.oprowner FROM pg_catalog.pg_operator o WHERE o.oid OPERATOR(pg_catalog.=) d.refobjid) \
                         WHEN 'pg_catalog.pg_type'::pg_catalog.regclass THEN (SELECT o.typowner FROM pg_catalog.pg_type o WHERE o.oid OPERATOR(pg_catalog.=) d.refobjid) \
                         WHEN 'pg_catalog.pg_opclass'::pg_catalog.regclass THEN (SELECT o.opcowner FROM pg_catalog.pg_opclass o WHERE o.oid OPERATOR(pg_catalog.=) d.refobjid) \
                         WHEN 'pg_catalog.pg_opfamily'::pg_catalog.regclass THEN (SELECT o.opfowner FROM pg_catalog.pg_opfamily o WHERE o.oid OPERATOR(pg_catalog.=) d.refobjid) END)), \
        coalesce((SELECT pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a \
                   WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped), '{}'), \
        coalesce((SELECT pg_catalog.array_agg(t.typnamespace::pg_catalog.regnamespace::pg_catalog.text ORDER BY a.attnum) \
                    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid \
                   WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped), '{}') \
   FROM pg_catalog.pg_class c \
  WHERE c.relname OPERATOR(pg_catalog.=) 'console_flag_promotions' \
    AND c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.to_regnamespace(pg_catalog.quote_ident($1))::pg_catalog.oid";

/// SQL text: `console_flag_promotions` held as it is described until the transaction ends: a
/// new column type, a policy, a rule or a view in its place waits for the read. It runs nothing
/// of the table's owner's.
const LOCK_PROMOTIONS: &str = "LOCK TABLE console_flag_promotions IN ACCESS SHARE MODE";

/// FLAG_RBAC_V2's row of `console_flag_promotions` (I-11). Console's role owns that table, so
/// it is described from the catalogue first and read only when reading it runs nothing of its
/// owner's: a plain table (no partitions, no children), no row-level security, every column the
/// read names of a built-in type, and no index or statistics object referring to what is not
/// built in (the planner evaluates their expressions as the reader). The description that decides is taken under a lock the read holds too, in one
/// transaction: between a description and a read apart, Console's role could give a column a
/// type of its own whose cast then ran as the gateway's login (a review forged a delivered
/// break-glass alert so). A table unlike 002's is reported, never a failed statement.
pub async fn flag_promotion(pool: &Db, flag: &str) -> Result<Promotion, sqlx::Error> {
    use crate::stores::db::Bounded;
    let limit = pool.limit();
    let mut tx = pool.begin().await?;
    // A table that may be read is locked, then described again: that description decides.
    if let Err(told) = judged(described(&mut tx, limit).await?) {
        tx.rollback().await?;
        return Ok(told);
    }
    sqlx::query(LOCK_PROMOTIONS)
        .persistent(false)
        .execute(&mut *tx)
        .bounded(limit)
        .await?;
    let name_column = match judged(described(&mut tx, limit).await?) {
        Ok(name_column) => name_column,
        Err(told) => {
            tx.rollback().await?;
            return Ok(told);
        }
    };
    let row: Option<(Option<String>, Option<String>, Option<String>)> =
        sqlx::query_as(ROW_READS[name_column])
            .persistent(false)
            .bind(flag)
            .fetch_optional(&mut *tx)
            .bounded(limit)
            .await?;
    tx.commit().await?;
    Ok(match row {
        None => Promotion::Absent,
        Some((risk, current_env, promoted_by)) => Promotion::Present {
            risk: risk.unwrap_or_default(),
            current_env: current_env.unwrap_or_default(),
            promoted_by: promoted_by.unwrap_or_default(),
        },
    })
}

/// `console_flag_promotions` as the catalogue describes it, in `tx`.
async fn described(
    tx: &mut crate::stores::db::Tx,
    limit: std::time::Duration,
) -> Result<Described, sqlx::Error> {
    use crate::stores::db::Bounded;
    sqlx::query_as(DESCRIBE_PROMOTIONS)
        .persistent(false)
        .bind(schema())
        .fetch_optional(&mut **tx)
        .bounded(limit)
        .await
}

/// What a description of `console_flag_promotions` allows: the index in [`FLAG_NAME_COLUMNS`]
/// (and [`ROW_READS`]) of the flag's column where the row may be read, or what to report.
fn judged(described: Described) -> Result<usize, Promotion> {
    let Some((kind, rls, readable, children, planned_code, columns, type_schemas)) = described
    else {
        return Err(Promotion::NoTable);
    };
    if !readable {
        return Err(Promotion::Unreadable);
    }
    if kind != "r" {
        return Err(Promotion::Unsafe(format!(
            "it is not a plain table (relkind {kind}): a view would run its owner's code, and a partitioned table's key is evaluated by the planner as the role that reads it"
        )));
    }
    if children {
        return Err(Promotion::Unsafe(
            "it is a partition or has tables under it, whose key or checks are evaluated as the role that reads it".into(),
        ));
    }
    if planned_code {
        return Err(Promotion::Unsafe(
            "an index or statistics object of it refers to a function, operator or type neither built in nor a superuser's (a collation is no code), which the planner runs as the role that reads it".into(),
        ));
    }
    if rls {
        return Err(Promotion::Unsafe(
            "it has row-level security, whose policies would run as the gateway".into(),
        ));
    }
    let name_column = FLAG_NAME_COLUMNS
        .iter()
        .position(|c| columns.iter().any(|have| have == c));
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
        return Err(Promotion::Columns {
            found: columns,
            missing,
        });
    };
    let read = [FLAG_NAME_COLUMNS[name_column]]
        .into_iter()
        .chain(PROMOTION_COLUMNS);
    for column in read {
        let at = columns.iter().position(|c| c == column);
        let schema_of = at.and_then(|i| type_schemas.get(i));
        if schema_of.map(String::as_str) != Some("pg_catalog") {
            return Err(Promotion::Unsafe(format!(
                "column {column} is of a type outside pg_catalog (its owner's cast or output function would run as the gateway)"
            )));
        }
    }
    Ok(name_column)
}

/// I-6's erasure cascade: the tables that name an admin (`admin_sessions`, `rbac_user_groups`,
/// `rbac_ticket_grants`, `rbac_break_glass_sessions`, `rbac_grants_audit`) without an `ON DELETE
/// CASCADE` reference to `admins`; every reference to `admins` that blocks the delete (`NO
/// ACTION`, `RESTRICT`), as `table (constraint)`; and whether the gateway's own erasure trigger
/// (`rbac_gateway_erase_admin`) fires on `admins`.
pub async fn erasure(pool: &Db) -> Result<(Vec<String>, Vec<String>, bool), sqlx::Error> {
    sqlx::query_as(
        "SELECT coalesce((SELECT pg_catalog.array_agg(t ORDER BY t) FROM pg_catalog.unnest($1::text[]) t \
                  WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_constraint c \
                                     WHERE c.contype = 'f' AND c.confdeltype = 'c' \
                                       AND c.conrelid = pg_catalog.to_regclass(t)::oid \
                                       AND c.confrelid = pg_catalog.to_regclass('admins')::oid)), '{}'), \
                coalesce((SELECT pg_catalog.array_agg(pg_catalog.format('%s (%s)', c.conrelid::regclass, c.conname) ORDER BY c.conname) \
                            FROM pg_catalog.pg_constraint c \
                           WHERE c.contype = 'f' AND c.confrelid = pg_catalog.to_regclass('admins')::oid \
                             AND c.confdeltype NOT IN ('c', 'n', 'd')), '{}'), \
                EXISTS (SELECT FROM pg_catalog.pg_trigger g \
                         WHERE g.tgname = 'rbac_gateway_erase_admin' AND g.tgenabled IN ('O', 'A') \
                           AND g.tgrelid = pg_catalog.to_regclass('admins')::oid)",
    )
    .persistent(false)
    .bind(&[
        "admin_sessions",
        "rbac_user_groups",
        "rbac_ticket_grants",
        "rbac_break_glass_sessions",
        "rbac_grants_audit",
    ][..])
    .fetch_one(pool)
    .await
}

/// The kill switch of the fleet's latest recorded load (`rbac_gateway_mapping_versions`), if a
/// gateway recorded one.
pub async fn fleet_kill_switch(pool: &Db) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT kill_switch FROM rbac_gateway_mapping_versions ORDER BY id DESC LIMIT 1",
    )
    .persistent(false)
    .fetch_optional(pool)
    .await
}
