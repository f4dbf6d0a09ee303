//! The gateway's triggers on its and Console's tables ([`TRIGGERS`]): which do not fire as
//! `migrate` made them ([`silent_triggers`]), and how ([`Silence`]), and the statement that makes
//! each again by its state, with the lightest lock that does it ([`Fix`], [`remake_statements`]):
//! `check`'s fix, `migrate`'s last step (`stores::migrations::triggers`), the alert pass's
//! finding.

use crate::stores::db::schema;

/// SQL text: trigger `$t` (an alias with a `tgenabled` column) fires in an ordinary session.
/// `O` (origin, the default) and `A` (always); not `D` (disabled) nor `R`, which fires only
/// where `session_replication_role` is `replica`: both are what `ALTER TABLE ... DISABLE
/// TRIGGER` and `ENABLE REPLICA TRIGGER` make of it, which the owner of Console's tables may do.
macro_rules! fires {
    ($t:literal) => {
        concat!(
            $t,
            ".tgenabled OPERATOR(pg_catalog.=) ANY ('{O,A}'::\"char\"[])"
        )
    };
}

/// Every trigger of the gateway's, as migrate leaves it: `(table, trigger, function, tgtype,
/// arguments)`, `tgtype` as `pg_trigger` encodes when and on what it fires, the arguments as
/// `encode(tgargs, 'escape')` writes them. The change feed's (migration 0004: each row's admin,
/// and a `TRUNCATE`), the break-glass group's recorded changes (0007), the erasure (0019), the
/// audit table's append-only guard (0001), the mapping store's (0009) and the alerts' session
/// (0033).
#[rustfmt::skip]
pub const TRIGGERS: &[(&str, &str, &str, i16, &str)] = &[
    ("access_audit_events", "access_audit_events_no_truncate", "access_audit_events_append_only", 34, ""),
    ("access_audit_events", "access_audit_events_no_update", "access_audit_events_append_only", 27, ""),
    ("rbac_gateway_alerts", "rbac_gateway_alert_session", "rbac_gateway_alert_session", 7, ""),
    ("rbac_group_roles", "rbac_gateway_break_glass", "rbac_gateway_break_glass_change", 29, ""),
    ("rbac_groups", "rbac_gateway_break_glass", "rbac_gateway_break_glass_change", 29, ""),
    ("rbac_permissions", "rbac_gateway_break_glass", "rbac_gateway_break_glass_change", 29, ""),
    ("rbac_role_inheritance", "rbac_gateway_break_glass", "rbac_gateway_break_glass_change", 29, ""),
    ("rbac_role_permissions", "rbac_gateway_break_glass", "rbac_gateway_break_glass_change", 29, ""),
    ("rbac_roles", "rbac_gateway_break_glass", "rbac_gateway_break_glass_change", 29, ""),
    ("rbac_user_groups", "rbac_gateway_break_glass", "rbac_gateway_break_glass_change", 29, ""),
    ("rbac_group_roles", "rbac_gateway_break_glass_truncate", "rbac_gateway_break_glass_change", 32, ""),
    ("rbac_groups", "rbac_gateway_break_glass_truncate", "rbac_gateway_break_glass_change", 32, ""),
    ("rbac_permissions", "rbac_gateway_break_glass_truncate", "rbac_gateway_break_glass_change", 32, ""),
    ("rbac_role_inheritance", "rbac_gateway_break_glass_truncate", "rbac_gateway_break_glass_change", 32, ""),
    ("rbac_role_permissions", "rbac_gateway_break_glass_truncate", "rbac_gateway_break_glass_change", 32, ""),
    ("rbac_roles", "rbac_gateway_break_glass_truncate", "rbac_gateway_break_glass_change", 32, ""),
    ("rbac_user_groups", "rbac_gateway_break_glass_truncate", "rbac_gateway_break_glass_change", 32, ""),
    ("admins", "rbac_gateway_erase_admin", "rbac_gateway_erase_admin", 11, ""),
    ("admin_sessions", "rbac_gateway_change", "rbac_gateway_log_change", 29, "admin_id\\000"),
    ("admins", "rbac_gateway_change", "rbac_gateway_log_change", 29, "id\\000"),
    ("rbac_break_glass_sessions", "rbac_gateway_change", "rbac_gateway_log_change", 29, "user_id\\000"),
    ("rbac_group_roles", "rbac_gateway_change", "rbac_gateway_log_change", 28, ""),
    ("rbac_groups", "rbac_gateway_change", "rbac_gateway_log_change", 28, ""),
    ("rbac_permissions", "rbac_gateway_change", "rbac_gateway_log_change", 28, ""),
    ("rbac_role_inheritance", "rbac_gateway_change", "rbac_gateway_log_change", 28, ""),
    ("rbac_role_permissions", "rbac_gateway_change", "rbac_gateway_log_change", 28, ""),
    ("rbac_roles", "rbac_gateway_change", "rbac_gateway_log_change", 28, ""),
    ("rbac_ticket_grants", "rbac_gateway_change", "rbac_gateway_log_change", 29, "user_id\\000"),
    ("rbac_user_groups", "rbac_gateway_change", "rbac_gateway_log_change", 29, "user_id\\000"),
    ("admin_sessions", "rbac_gateway_change_truncate", "rbac_gateway_log_change", 32, ""),
    ("admins", "rbac_gateway_change_truncate", "rbac_gateway_log_change", 32, ""),
    ("rbac_break_glass_sessions", "rbac_gateway_change_truncate", "rbac_gateway_log_change", 32, ""),
    ("rbac_group_roles", "rbac_gateway_change_truncate", "rbac_gateway_log_change", 32, ""),
    ("rbac_groups", "rbac_gateway_change_truncate", "rbac_gateway_log_change", 32, ""),
    ("rbac_permissions", "rbac_gateway_change_truncate", "rbac_gateway_log_change", 32, ""),
    ("rbac_role_inheritance", "rbac_gateway_change_truncate", "rbac_gateway_log_change", 32, ""),
    ("rbac_role_permissions", "rbac_gateway_change_truncate", "rbac_gateway_log_change", 32, ""),
    ("rbac_roles", "rbac_gateway_change_truncate", "rbac_gateway_log_change", 32, ""),
    ("rbac_ticket_grants", "rbac_gateway_change_truncate", "rbac_gateway_log_change", 32, ""),
    ("rbac_user_groups", "rbac_gateway_change_truncate", "rbac_gateway_log_change", 32, ""),
    ("rbac_mapping_activations", "rbac_mapping_append_only", "rbac_mapping_append_only", 27, ""),
    ("rbac_mapping_store", "rbac_mapping_append_only", "rbac_mapping_append_only", 27, ""),
    ("rbac_mapping_activations", "rbac_mapping_notify", "rbac_mapping_notify", 4, ""),
];

/// Those of [`TRIGGERS`] missing from the gateway's schema, or not as migrate made them (another
/// function, other events, other arguments, a `WHEN` condition, an `UPDATE OF` column list, a
/// constraint trigger), or not firing in an ordinary session (`fires!`), there or on one of its
/// table's partitions (a clone, [`SILENT_ROWS`]), as `trigger on table`: `check`'s error.
pub async fn silent_triggers<'e>(
    db: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<String>, sqlx::Error> {
    let silent = silent_rows(db).await?;
    Ok(silent.into_iter().map(|(trigger, ..)| trigger).collect())
}

/// A trigger of [`silent_triggers`], with how it does not fire as made and the statement that
/// makes it again: `check`'s and `migrate`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Silenced {
    /// `trigger on table`.
    pub trigger: String,
    pub silence: Silence,
    /// None for a clone of a parent's trigger ([`Silence::Clone`]): only the parent's
    /// statements change it.
    pub fix: Option<Fix>,
    /// For a clone, the table its parent trigger is on.
    pub parent: Option<String>,
}

impl Silenced {
    /// [`remake_trigger`] for it, by its fix (none for a clone).
    pub fn remake_trigger(&self) -> Option<String> {
        remake_trigger(&self.trigger, self.fix?)
    }

    /// [`remake_statements`] for it, by its fix (none for a clone).
    pub fn remake_statements(&self) -> Option<String> {
        remake_statements(&self.trigger, self.fix?)
    }
}

/// [`silent_triggers`], each with how it does not fire as made and its fix. Read under the
/// table's `SHARE ROW EXCLUSIVE` lock (`migrate`: `LOCK TABLE` first), no other session changes
/// a trigger of the table or its partitions before the fix runs.
pub async fn silenced_triggers<'e>(
    db: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<Silenced>, sqlx::Error> {
    let silent = silent_rows(db).await?;
    Ok(silent
        .into_iter()
        .map(|(trigger, _, how, replaces, partitioned, parent)| {
            let silence = Silence::read(&how);
            let fix = match silence {
                // Also where a partition holds a trigger of the name (Console attached the
                // table it had under a new parent): `CREATE OR REPLACE` takes it as the clone.
                Silence::Missing if replaces => Some(Fix::Replace),
                Silence::Missing => Some(Fix::Create),
                Silence::Off => Some(Fix::Enable),
                Silence::Altered if replaces && !partitioned => Some(Fix::Replace),
                // A partition's own trigger of the name is taken as the clone.
                Silence::Altered | Silence::Constraint if replaces => Some(Fix::DropAndReplace),
                Silence::Altered | Silence::Constraint => Some(Fix::DropAndCreate),
                Silence::Clone => None,
            };
            Silenced {
                trigger,
                silence,
                fix,
                parent,
            }
        })
        .collect())
}

/// [`silenced_triggers`] in a transaction of its own with `jit` off (`check`'s; the alert pass
/// and `migrate` set it for their own): see [`SILENT_ROWS`]. Each step bounded by the
/// database timeout, as a statement on the pool is: a silent server holds `check` no longer.
pub async fn silenced_triggers_without_jit(
    pool: &crate::stores::db::Db,
) -> Result<Vec<Silenced>, sqlx::Error> {
    use crate::stores::db::Bounded as _;
    let limit = pool.limit();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_catalog.set_config('jit', 'off', true) AS jit_off")
        .persistent(false)
        .execute(&mut *tx)
        .bounded(limit)
        .await?;
    let silent = silenced_triggers(&mut *tx).bounded(limit).await?;
    tx.commit().bounded(limit).await?;
    Ok(silent)
}

/// [`silent_triggers`], each with its state: its table's oid and the version of its
/// `pg_trigger` row (`xmin`; empty where it is missing), then, where that row fires, those of
/// its clones that do not on the table's partitions (none, nothing: a state without clones
/// reads as before them, and a partition added later, whose clone fires, changes nothing),
/// which change when the table is made again or the trigger disabled, dropped or made again.
/// The alert pass's alert (`stores::alerts`, each second) is keyed by them, so a trigger
/// silenced again is alerted again.
pub async fn silent_trigger_states<'e>(
    db: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let silent = silent_rows(db).await?;
    Ok(silent
        .into_iter()
        .map(|(trigger, state, ..)| (trigger, state))
        .collect())
}

/// SQL text: the silent triggers, each as `(trigger on table, state, how, whether the server
/// has CREATE OR REPLACE TRIGGER (PostgreSQL 14), whether the table is partitioned, the table of
/// the trigger it is a clone of)`, of [`TRIGGERS`] given as five arrays (`$1`..`$5`: table,
/// trigger, function, `tgtype`, arguments) in the schema named `$6`.
///
/// Each of [`TRIGGERS`] is found once (`g`: its table, its trigger of the name, whether that is
/// as migrate made it), and the clones of those on partitioned tables in one recursive look
/// from there (`c`: a level of partitions at a time, each partition by `pg_inherits`' index on
/// the parent, its clone of the level above by `pg_trigger`'s on the table; `q`: those that do
/// not fire, by the trigger they come from). From the catalogue alone: no lock on a table
/// (`pg_partition_tree` takes one, and would wait behind Console's DDL).
///
/// # Architecture Invariant: the look reads the catalogue once a level of partitions
/// It runs each second in the alert pass (and in `check`, and in `migrate` under each table's
/// lock), in a database where Console may have thousands of tables, triggers and partitions
/// of its own. `g` is materialized (one row for each of [`TRIGGERS`], its trigger found by
/// table and name, by index; `OFFSET 0` keeps the planner from reading every trigger of the
/// table for the name), and the clones are reached through the partitions of the gateway's own
/// partitioned tables: `pg_inherits` and `pg_trigger` are read at most once a level of them
/// (a hash join), or by index where the planner finds that cheaper. Not down
/// `pg_trigger.tgparentid`, which has no index: the catalogue analyzed with many clones of
/// Console's, the estimate passed `jit_above_cost` (the server compiled for most of a second
/// a statement that runs in milliseconds), or, analyzed before they were made, every clone was
/// joined with every other. `tests/api/planted.rs`,
/// `the_trigger_look_reads_the_catalogue_once_a_level_of_partitions`, counts the rows its plan
/// reads and its cost. Without statistics (a new database, autovacuum behind Console's DDL),
/// the estimate of tens of thousands of partitions may still pass `jit_above_cost`: every
/// caller runs it with `jit` off (`the_trigger_look_is_never_compiled`).
///
/// A clone left on a partition Console detached (PostgreSQL keeps a constraint trigger's
/// clone there, with its parent) is not followed: the trigger above it is not as made, and is
/// named as such whatever its clones are (the look down `tgparentid` followed it: such a
/// finding's key changes once at the upgrade, and its alert is raised once more).
///
/// A clone is told apart before a constraint trigger (a clone of a parent's constraint trigger
/// is the parent's to change). One altered on a partitioned table is not replaced in place: a
/// row trigger made a statement trigger there would leave its clones on the partitions.
pub const SILENT_ROWS: &str = concat!(
    "WITH RECURSIVE s(oid) AS (SELECT pg_catalog.to_regnamespace(pg_catalog.quote_ident($6))::oid), \
     g AS MATERIALIZED ( \
       SELECT w.r, w.g, tc.oid AS rel, tc.relkind, t.oid, t.xmin, t.tgparentid, t.tgconstraint, \
              coalesce(",
    fires!("t"),
    ", false) AS fires, \
              coalesce(p.pronamespace OPERATOR(pg_catalog.=) s.oid AND p.proname::text OPERATOR(pg_catalog.=) w.f \
                   AND t.tgtype OPERATOR(pg_catalog.=) w.k AND pg_catalog.encode(t.tgargs, 'escape') OPERATOR(pg_catalog.=) w.a \
                   AND t.tgqual IS NULL AND t.tgattr OPERATOR(pg_catalog.=) ''::pg_catalog.int2vector \
                   AND t.tgconstraint OPERATOR(pg_catalog.=) 0, false) AS made \
         FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), \
                         pg_catalog.unnest($4::int2[]), pg_catalog.unnest($5::text[])) w(r, g, f, k, a) \
        CROSS JOIN s \
         LEFT JOIN pg_catalog.pg_class tc ON tc.relname OPERATOR(pg_catalog.=) w.r::pg_catalog.name \
              AND tc.relnamespace OPERATOR(pg_catalog.=) s.oid \
         LEFT JOIN LATERAL (SELECT t.oid, t.xmin, t.tgenabled, t.tgparentid, t.tgconstraint, t.tgfoid, t.tgtype, \
                                   t.tgargs, t.tgqual, t.tgattr FROM pg_catalog.pg_trigger t \
                             WHERE t.tgrelid OPERATOR(pg_catalog.=) tc.oid \
                               AND t.tgname OPERATOR(pg_catalog.=) w.g::pg_catalog.name OFFSET 0) t ON true \
         LEFT JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) t.tgfoid), \
     c(root, oid, xmin, tgenabled, rel) AS ( \
       SELECT g.oid, k.oid, k.xmin, k.tgenabled, k.tgrelid FROM g \
         JOIN pg_catalog.pg_inherits i ON i.inhparent OPERATOR(pg_catalog.=) g.rel \
         JOIN pg_catalog.pg_trigger k ON k.tgrelid OPERATOR(pg_catalog.=) i.inhrelid \
              AND k.tgparentid OPERATOR(pg_catalog.=) g.oid \
        WHERE g.relkind OPERATOR(pg_catalog.=) 'p' \
       UNION ALL \
       SELECT c.root, k.oid, k.xmin, k.tgenabled, k.tgrelid FROM c \
         JOIN pg_catalog.pg_inherits i ON i.inhparent OPERATOR(pg_catalog.=) c.rel \
         JOIN pg_catalog.pg_trigger k ON k.tgrelid OPERATOR(pg_catalog.=) i.inhrelid \
              AND k.tgparentid OPERATOR(pg_catalog.=) c.oid), \
     q(root, xmins) AS ( \
       SELECT c.root, pg_catalog.string_agg(c.xmin::text, ',' ORDER BY c.oid) FROM c WHERE NOT (",
    fires!("c"),
    ") GROUP BY c.root) \
     SELECT g.g OPERATOR(pg_catalog.||) ' on ' OPERATOR(pg_catalog.||) g.r, \
            pg_catalog.concat(g.rel, ':', g.xmin, CASE WHEN g.fires THEN ':' OPERATOR(pg_catalog.||) q.xmins END), \
            CASE WHEN g.oid IS NULL THEN 'missing' WHEN g.made THEN 'off' \
                 WHEN g.tgparentid OPERATOR(pg_catalog.<>) 0 THEN 'clone' \
                 WHEN g.tgconstraint OPERATOR(pg_catalog.<>) 0 THEN 'constraint' ELSE 'altered' END, \
            pg_catalog.current_setting('server_version_num')::int4 OPERATOR(pg_catalog.>=) 140000, \
            coalesce(g.relkind OPERATOR(pg_catalog.=) 'p', false), \
            (SELECT pt.tgrelid::pg_catalog.regclass::text FROM pg_catalog.pg_trigger pt \
              WHERE pt.oid OPERATOR(pg_catalog.=) g.tgparentid) \
       FROM g LEFT JOIN q ON q.root OPERATOR(pg_catalog.=) g.oid \
      WHERE NOT (g.made AND g.fires AND q.root IS NULL) ORDER BY 1"
);

/// [`TRIGGERS`] as [`SILENT_ROWS`]' first five parameters: its tables, names, functions,
/// `tgtype`s and arguments, each an array.
#[allow(clippy::type_complexity)]
pub fn trigger_columns() -> (
    Vec<&'static str>,
    Vec<&'static str>,
    Vec<&'static str>,
    Vec<i16>,
    Vec<&'static str>,
) {
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &(table, name, function, tgtype, arguments) in TRIGGERS {
        columns.0.push(table);
        columns.1.push(name);
        columns.2.push(function);
        columns.3.push(tgtype);
        columns.4.push(arguments);
    }
    columns
}

/// [`SILENT_ROWS`], read: one statement.
#[allow(clippy::type_complexity)]
async fn silent_rows<'e>(
    db: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<(String, String, String, bool, bool, Option<String>)>, sqlx::Error> {
    let (tables, names, functions, types, args) = trigger_columns();
    sqlx::query_as(SILENT_ROWS)
        .persistent(false)
        .bind(tables)
        .bind(names)
        .bind(functions)
        .bind(types)
        .bind(args)
        .bind(schema())
        .fetch_all(db)
        .await
}

/// How a trigger of [`TRIGGERS`] does not fire as `migrate` made it: what `check` says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Silence {
    /// No trigger of its name on its table (dropped, or gone with the table Console made
    /// again).
    Missing,
    /// There as made, but disabled or made for replicas only, there or (a row trigger's clone)
    /// on one of its table's partitions.
    Off,
    /// Another trigger under its name (another function, events or arguments, a `WHEN`
    /// condition, an `UPDATE OF` list).
    Altered,
    /// A constraint trigger under its name, which only a `DROP TRIGGER` removes.
    Constraint,
    /// Altered, and a clone of a trigger of its table's parent (Console made the table a
    /// partition of its own partitioned table): only the parent's trigger changes it, which is
    /// not the gateway's to make.
    Clone,
}

impl Silence {
    /// The query's word for it; one it does not know is [`Silence::Altered`].
    fn read(how: &str) -> Silence {
        match how {
            "missing" => Silence::Missing,
            "off" => Silence::Off,
            "constraint" => Silence::Constraint,
            "clone" => Silence::Clone,
            _ => Silence::Altered,
        }
    }
}

/// The statement that makes a silent trigger again, the lightest that does it. All but the
/// drops take the table's `SHARE ROW EXCLUSIVE` lock: Console's writes of it
/// wait for them, its reads and `SELECT ... FOR UPDATE` do not. `migrate` takes that lock first
/// (`LOCK TABLE`), which asks `UPDATE`, `DELETE` or `TRUNCATE` on the table, as its owner holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fix {
    /// `CREATE TRIGGER`, for one missing before PostgreSQL 14 (`TRIGGER` on the table, which
    /// its owner holds).
    Create,
    /// `ALTER TABLE ... ENABLE TRIGGER`, for one there as made (its clones on the table's
    /// partitions with it; a clone itself on its partition), as the table's owner.
    Enable,
    /// `CREATE OR REPLACE TRIGGER`, for one missing (a partition's trigger of the name taken as
    /// its clone) or altered in place (`TRIGGER` on the table).
    Replace,
    /// `DROP TRIGGER IF EXISTS` then `CREATE OR REPLACE TRIGGER` (a partition's own trigger of
    /// the name taken as the clone), as the table's owner, under `ACCESS EXCLUSIVE` (Console's
    /// reads wait too): a constraint trigger under the name, or one altered where it may not be
    /// replaced in place (`silent_rows`).
    DropAndReplace,
    /// [`Fix::DropAndReplace`] before PostgreSQL 14: `CREATE TRIGGER` after the drop.
    DropAndCreate,
}

/// The statements that make `trigger` (`name on table`, as [`silent_triggers`] names it) as
/// `migrate` made it, by its [`Fix`], to run in one transaction ([`remake_trigger`]: a write
/// between a drop and a creation would go unrecorded). Chosen from the trigger's state: where
/// that may change before they run, the table is locked first (`migrate`) or a failure says to
/// look again (`check`'s statements, run by hand). Run as the role that ran `migrate`: it owns
/// the trigger's function (its table's owner alone may not execute it) and acts as the table's
/// owner. `tests/api/planted.rs` runs `check`'s for every trigger and holds
/// [`silent_triggers`] empty.
pub fn remake_statements(trigger: &str, fix: Fix) -> Option<String> {
    let (name, table) = trigger.split_once(" on ")?;
    let &(_, _, function, tgtype, arguments) = TRIGGERS
        .iter()
        .find(|(t, g, ..)| *t == table && *g == name)?;
    let schema = crate::stores::db::quoted_schema();
    let create = match fix {
        Fix::Enable => {
            return Some(format!(
                "ALTER TABLE {schema}.{table} ENABLE TRIGGER {name};"
            ))
        }
        Fix::Create => "CREATE TRIGGER".to_string(),
        Fix::Replace => "CREATE OR REPLACE TRIGGER".to_string(),
        Fix::DropAndReplace => {
            format!("DROP TRIGGER IF EXISTS {name} ON {schema}.{table}; CREATE OR REPLACE TRIGGER")
        }
        Fix::DropAndCreate => {
            format!("DROP TRIGGER IF EXISTS {name} ON {schema}.{table}; CREATE TRIGGER")
        }
    };
    // pg_trigger.tgtype's bits (PostgreSQL's `TRIGGER_TYPE_*`).
    let when = if tgtype & 2 != 0 { "BEFORE" } else { "AFTER" };
    let events: Vec<&str> = [
        (4, "INSERT"),
        (8, "DELETE"),
        (16, "UPDATE"),
        (32, "TRUNCATE"),
    ]
    .into_iter()
    .filter(|(bit, _)| tgtype & bit != 0)
    .map(|(_, event)| event)
    .collect();
    let each = if tgtype & 1 != 0 { "ROW" } else { "STATEMENT" };
    // tgargs as `encode(tgargs, 'escape')` writes it: each argument ends in `\000`.
    let arguments: Vec<String> = arguments
        .split_terminator("\\000")
        .map(|a| format!("'{}'", a.replace('\'', "''")))
        .collect();
    Some(format!(
        "{create} {name} {when} {} ON {schema}.{table} FOR EACH {each} EXECUTE FUNCTION {schema}.{function}({});",
        events.join(" OR "),
        arguments.join(", ")
    ))
}

/// [`remake_statements`] in a transaction of its own, whose lock is not waited for past 200 ms
/// (Console's writes of the table, and its reads where the trigger is dropped first, would
/// queue behind the wait; it fails instead, to be run again).
pub fn remake_trigger(trigger: &str, fix: Fix) -> Option<String> {
    remake_statements(trigger, fix)
        .map(|s| format!("BEGIN; SET LOCAL lock_timeout = '200ms'; {s} COMMIT;"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statements `check` gives for a silent trigger: its events, timing, level and
    /// arguments from `pg_trigger.tgtype`'s bits and `tgargs` (`tests/api/planted.rs` runs them
    /// all against PostgreSQL), by its fix.
    #[test]
    fn a_silent_trigger_is_made_again_as_migrate_made_it() {
        let schema = crate::stores::db::quoted_schema();
        let lock = "BEGIN; SET LOCAL lock_timeout = '200ms';";
        let change = "rbac_gateway_change on admin_sessions";
        let made = format!("rbac_gateway_change AFTER INSERT OR DELETE OR UPDATE ON {schema}.admin_sessions FOR EACH ROW EXECUTE FUNCTION {schema}.rbac_gateway_log_change('admin_id'); COMMIT;");
        assert_eq!(
            remake_trigger(change, Fix::DropAndCreate).unwrap(),
            format!("{lock} DROP TRIGGER IF EXISTS rbac_gateway_change ON {schema}.admin_sessions; CREATE TRIGGER {made}")
        );
        assert_eq!(
            remake_trigger(change, Fix::DropAndReplace).unwrap(),
            format!("{lock} DROP TRIGGER IF EXISTS rbac_gateway_change ON {schema}.admin_sessions; CREATE OR REPLACE TRIGGER {made}")
        );
        assert_eq!(
            remake_trigger(change, Fix::Replace).unwrap(),
            format!("{lock} CREATE OR REPLACE TRIGGER {made}")
        );
        assert_eq!(
            remake_trigger(change, Fix::Enable).unwrap(),
            format!("{lock} ALTER TABLE {schema}.admin_sessions ENABLE TRIGGER rbac_gateway_change; COMMIT;")
        );
        assert_eq!(
            remake_trigger("access_audit_events_no_truncate on access_audit_events", Fix::Create).unwrap(),
            format!("{lock} CREATE TRIGGER access_audit_events_no_truncate BEFORE TRUNCATE ON {schema}.access_audit_events FOR EACH STATEMENT EXECUTE FUNCTION {schema}.access_audit_events_append_only(); COMMIT;")
        );
        assert_eq!(
            remake_trigger("rbac_gateway_change on nothing", Fix::Create),
            None
        );
        assert_eq!(Silence::read("missing"), Silence::Missing);
        assert_eq!(Silence::read("off"), Silence::Off);
        assert_eq!(Silence::read("constraint"), Silence::Constraint);
        assert_eq!(Silence::read("altered"), Silence::Altered);
        assert_eq!(Silence::read("clone"), Silence::Clone);
        // No trigger of the gateway's is INSTEAD OF (64), which the statements do not say.
        assert!(TRIGGERS.iter().all(|t| t.3 & 64 == 0));
    }
}
