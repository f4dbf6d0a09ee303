//! What Console's role may plant in a schema it may create in (`public` before PostgreSQL 15,
//! Heroku's default credential) beside the gateway's own objects, and may do to its triggers as
//! the owner of Console's tables (docs/design/security.md):
//!
//! - an overload of one of the gateway's functions, taking the type a call passes where the
//!   gateway's takes `text`, never runs in its place (migration 0032's casts), and `check` names
//!   it as an error;
//! - `migrate` refuses a schema holding a namesake of a built-in that another role owns: the
//!   migrations written before 0022 call built-ins by their bare names, and such a function would
//!   run with the migrating role's privileges;
//! - `check` names a trigger of the gateway's that was dropped, disabled or left to replicas.

use crate::helpers::*;

/// As Console's role, on `db`: CREATE on `public`, Console's privileges on the tables the
/// scenarios write, and `public.shadow_ran`, where a planted function records that it ran.
async fn as_console(db: &TestDb) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let mut conn = db.pool.acquire().await.unwrap();
    console_app_role(&mut conn).await;
    sqlx::raw_sql(
        "GRANT CREATE ON SCHEMA public TO console_app; \
         DO $$ BEGIN IF pg_catalog.to_regclass('admins') IS NOT NULL THEN \
             GRANT SELECT, INSERT, UPDATE, DELETE ON admins, admin_sessions, rbac_user_groups, rbac_groups TO console_app; \
         END IF; END $$; \
         SET ROLE console_app; \
         CREATE TABLE public.shadow_ran (what text, who text); \
         GRANT INSERT ON public.shadow_ran TO PUBLIC",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    conn
}

/// Whether Console's planted code ran as another role than its own: the scenarios' function
/// draws from `public.ran_as_another` when it does. A sequence, not a table: what ran in a
/// statement that then failed is still counted.
async fn ran_as_another(db: &TestDb) -> bool {
    sqlx::query_scalar("SELECT is_called FROM public.ran_as_another")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// As Console's role, owning `rbac_groups`: `public.console_k(text)`, an immutable function
/// an index or statistics object may call, which draws from `public.ran_as_another` whenever
/// it runs as another role than Console's ([`ran_as_another`]).
async fn plant_console_k(console: &mut sqlx::pool::PoolConnection<sqlx::Postgres>) {
    run(
        console,
        "RESET ROLE; \
         ALTER TABLE rbac_groups OWNER TO console_app; \
         SET ROLE console_app; \
         CREATE SEQUENCE public.ran_as_another; \
         GRANT USAGE ON SEQUENCE public.ran_as_another TO PUBLIC; \
         CREATE FUNCTION public.console_code() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN \
             IF current_user <> 'console_app' THEN PERFORM nextval('public.ran_as_another'); END IF; \
             RETURN true; END $$; \
         CREATE FUNCTION public.console_k(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN \
             PERFORM public.console_code(); RETURN t; END $$;",
    )
    .await;
}

/// Runs `sql` on Console's session (`as_console`).
async fn run(console: &mut sqlx::pool::PoolConnection<sqlx::Postgres>, sql: &str) {
    sqlx::raw_sql(sql).execute(&mut **console).await.unwrap();
}

/// `check --routes routes.toml --database-url` on `db`: its exit code and output.
pub(crate) fn check(db: &TestDb) -> (Option<i32>, String) {
    let out = crate::cli::bin()
        .args(["check", "--routes"])
        .arg(root().join("routes.toml"))
        .args(["--database-url", &db.url])
        .output()
        .unwrap();
    code_and_output(&out)
}

/// `migrate --database-url` on `db`: its exit code and output.
pub(crate) fn migrate(db: &TestDb) -> (Option<i32>, String) {
    let out = crate::cli::bin()
        .args(["migrate", "--database-url", &db.url])
        .output()
        .unwrap();
    code_and_output(&out)
}

async fn shadows_ran(db: &TestDb) -> Vec<(String, String)> {
    sqlx::query_as("SELECT what, who FROM public.shadow_ran")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// [`shadows_ran`] as another role than Console's own (`console_app`).
async fn ran_as_others(db: &TestDb) -> Vec<(String, String)> {
    shadows_ran(db)
        .await
        .into_iter()
        .filter(|(_, who)| who != "console_app")
        .collect()
}

/// Console's role plants, beside each function of the gateway's, an overload taking `name` or
/// `character varying` wherever the gateway's takes `text`: what a call passes where it does not
/// cast (a trigger's `TG_TABLE_NAME` is a `name`; Console may type a column `varchar`). Then a
/// break-glass membership (the trigger records it), the admin's erasure (the trigger rewrites
/// that line) and the session lookups (the procedure's with `admin_sessions.admin_id` typed
/// `varchar` too) never run one of them, answer and record as before, and `check` names every
/// overload as an error. Before migration 0032 the membership ran the `name` overload as the
/// owner of the gateway's tables, and the procedure the `varchar` one.
#[tokio::test]
async fn overloads_of_the_gateways_functions_planted_by_consoles_role_never_run() {
    let db = TestDb::new().await;
    let functions: Vec<(String, Vec<String>, String, bool)> = sqlx::query_as(
        "SELECT p.proname::text, \
                ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, i) ORDER BY i), \
                pg_get_function_result(p.oid), p.proretset \
           FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace AND p.prokind = 'f' \
            AND p.proname LIKE 'rbac\\_gateway\\_%' AND p.prorettype <> 'trigger'::regtype ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut console = as_console(&db).await;
    let mut planted = Vec::new();
    for (name, args, result, set) in &functions {
        for (i, arg) in args.iter().enumerate() {
            if arg != "text" {
                continue;
            }
            for other in ["name", "character varying"] {
                let mut types = args.clone();
                types[i] = other.to_string();
                let signature = format!("{name}({})", types.join(", "));
                let ret = if *set || result == "void" { "" } else { "NULL" };
                sqlx::raw_sql(&format!(
                    "CREATE FUNCTION public.{signature} RETURNS {result} LANGUAGE plpgsql AS $s$ \
                     BEGIN INSERT INTO public.shadow_ran VALUES ('{signature}', current_user); RETURN {ret}; END $s$; \
                     GRANT EXECUTE ON FUNCTION public.{signature} TO PUBLIC"
                ))
                .execute(&mut *console)
                .await
                .unwrap_or_else(|e| panic!("{signature}: {e}"));
                planted.push(signature);
            }
        }
    }
    for expected in [
        "rbac_gateway_record_group_change(text, name, text, text[])",
        "rbac_gateway_erase_named(text, character varying)",
        "rbac_gateway_principal(character varying, boolean)",
    ] {
        assert!(planted.iter().any(|p| p == expected), "{expected} planted");
    }

    // A break-glass membership and the admin's erasure, as Console writes them.
    let admin = db.admin("planted@corp.example").await;
    sqlx::query(
        "INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
         SELECT $1, id, 'ops' FROM rbac_groups WHERE name = 'break-glass'",
    )
    .bind(&admin)
    .execute(&mut *console)
    .await
    .expect("Console adds an admin to the break-glass group");
    let recorded: Vec<String> = sqlx::query_scalar("SELECT what FROM rbac_gateway_group_changes")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        recorded,
        vec![format!(
            "admin planted@corp.example ({admin}) made a permanent member of the break-glass group"
        )]
    );
    sqlx::query("DELETE FROM admins WHERE id = $1")
        .bind(&admin)
        .execute(&mut *console)
        .await
        .expect("Console erases the admin");
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT what FROM rbac_gateway_group_changes ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    // The membership's end is recorded too (the erasure's cascade), after the email is gone.
    assert_eq!(
        recorded,
        vec![
            format!("admin (erased) ({admin}) made a permanent member of the break-glass group"),
            format!("admin ? ({admin}) no longer a permanent member of the break-glass group"),
        ]
    );

    // The lookups; then the procedure's again with the session's admin typed `varchar` (the
    // set-returning functions refuse that type: their result columns are `text`).
    let looked_up = db.admin("looked-up@corp.example").await;
    let token = db.session(&looked_up).await;
    let hash = rbac_gateway::stores::identity::token_hash(&token);
    for sql in [
        "SELECT admin_id FROM rbac_gateway_session_principals(ARRAY[$1], false)",
        "SELECT admin_id FROM rbac_gateway_session_principal($1, false)",
        "CALL rbac_gateway_session_lookup($1, false)",
    ] {
        let found: Option<String> = sqlx::query_scalar(sql)
            .bind(&hash)
            .fetch_one(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(found.as_ref(), Some(&looked_up), "{sql}");
    }
    sqlx::raw_sql(
        "RESET ROLE; ALTER TABLE admin_sessions ALTER COLUMN admin_id TYPE character varying",
    )
    .execute(&mut *console)
    .await
    .unwrap();
    let found: Option<String> = sqlx::query_scalar("CALL rbac_gateway_session_lookup($1, false)")
        .bind(&hash)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(found, Some(looked_up));

    let ran = shadows_ran(&db).await;
    assert!(ran.is_empty(), "overloads ran: {ran:#?}");

    // `check` names each overload, as an error.
    let (code, text) = check(&db);
    assert_ne!(code, Some(0), "{text}");
    for signature in &planted {
        let named = format!(
            "database: function {} (owner console_app) has one of the gateway's names but not the owner of its tables",
            signature.replace(", ", ",")
        );
        assert!(text.contains(&named), "{named}\n{text}");
    }
}

/// `migrate` into a schema where Console's role made `format(text, text)`, which matches the
/// bare `format('... %I', <text>)` of migration 0004 better than the built-in's `VARIADIC "any"`,
/// made it a member of a trusted extension it created (its objects are the bootstrap
/// superuser's; the one it added stays its own), and made the table whose owner the gateway's
/// tables' owner would be taken for (`rbac_change_log`): it refuses, naming the function, migrates
/// nothing and runs nothing of it. A namesake with the built-in's own argument types (which
/// `pg_catalog`, searched first, wins) is no reason to refuse: once `format` is dropped, it
/// migrates beside Console's `gen_random_uuid()`.
#[tokio::test]
async fn migrate_refuses_a_schema_where_another_role_made_a_namesake_of_a_builtin() {
    let db = TestDb::at_version(0).await;
    let (_, name) = db.url.rsplit_once('/').unwrap();
    sqlx::raw_sql(&format!("GRANT CREATE ON DATABASE {name} TO console_app"))
        .execute(&db.pool)
        .await
        .unwrap();
    let mut console = as_console(&db).await;
    sqlx::raw_sql(
        "CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql AS $s$ \
         BEGIN INSERT INTO public.shadow_ran VALUES ('format', current_user); \
         RETURN pg_catalog.format($1, $2); END $s$; \
         CREATE EXTENSION citext SCHEMA public; \
         ALTER EXTENSION citext ADD FUNCTION public.format(text, text); \
         CREATE TABLE public.rbac_change_log (id bigint); \
         CREATE FUNCTION public.gen_random_uuid() RETURNS uuid LANGUAGE sql \
             AS $s$ SELECT pg_catalog.gen_random_uuid() $s$",
    )
    .execute(&mut *console)
    .await
    .unwrap();
    let (code, text) = migrate(&db);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains("nothing was migrated: schema public holds function format(text,text) (owner console_app)")
            && text.contains("relation rbac_change_log (owner console_app)"),
        "{text}"
    );
    let migrated: bool =
        sqlx::query_scalar("SELECT to_regclass('rbac_gateway_alerts') IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!migrated, "a migration ran");
    assert_eq!(shadows_ran(&db).await, vec![]);

    sqlx::raw_sql(
        "ALTER EXTENSION citext DROP FUNCTION public.format(text, text); \
         DROP FUNCTION public.format(text, text); DROP TABLE public.rbac_change_log",
    )
    .execute(&mut *console)
    .await
    .unwrap();
    let (code, text) = migrate(&db);
    assert_eq!(code, Some(0), "{text}");
}

/// The owner of Console's tables may drop, disable or re-create the gateway's triggers on them:
/// `check` names each trigger dropped, disabled, enabled for replicas only (which fires in no
/// ordinary session) or re-created with a `WHEN` that never holds or for an update of one column
/// only, and says nothing of those enabled again.
#[tokio::test]
async fn check_names_the_gateways_triggers_that_do_not_fire() {
    let db = TestDb::new().await;
    let (code, clean) = check(&db);
    assert_eq!(code, Some(0), "{clean}");
    assert!(!clean.contains("does not fire"), "{clean}");
    sqlx::raw_sql(
        "ALTER TABLE rbac_user_groups DISABLE TRIGGER rbac_gateway_break_glass; \
         ALTER TABLE admins ENABLE REPLICA TRIGGER rbac_gateway_erase_admin; \
         DROP TRIGGER access_audit_events_no_update ON access_audit_events; \
         ALTER TABLE admin_sessions DISABLE TRIGGER rbac_gateway_change_truncate; \
         DROP TRIGGER rbac_gateway_break_glass ON rbac_roles; \
         CREATE TRIGGER rbac_gateway_break_glass AFTER INSERT OR UPDATE OR DELETE ON rbac_roles \
             FOR EACH ROW WHEN (false) EXECUTE FUNCTION rbac_gateway_break_glass_change(); \
         DROP TRIGGER rbac_gateway_break_glass ON rbac_groups; \
         CREATE TRIGGER rbac_gateway_break_glass AFTER INSERT OR UPDATE OF id OR DELETE ON rbac_groups \
             FOR EACH ROW EXECUTE FUNCTION rbac_gateway_break_glass_change(); \
         DROP TRIGGER rbac_gateway_change ON rbac_permissions; \
         CREATE CONSTRAINT TRIGGER rbac_gateway_change AFTER INSERT OR UPDATE OR DELETE ON rbac_permissions \
             FOR EACH ROW EXECUTE FUNCTION rbac_gateway_log_change()",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, text) = check(&db);
    assert_ne!(code, Some(0), "{text}");
    let off =
        "does not fire (disabled, or for replicas only, on its table or one of its partitions): ";
    let altered = "is not as migrate made it (another function";
    for (trigger, how) in [
        ("rbac_gateway_break_glass on rbac_user_groups", off),
        ("rbac_gateway_erase_admin on admins", off),
        (
            "access_audit_events_no_update on access_audit_events",
            "is missing: ",
        ),
        ("rbac_gateway_change_truncate on admin_sessions", off),
        ("rbac_gateway_break_glass on rbac_roles", altered),
        ("rbac_gateway_break_glass on rbac_groups", altered),
        (
            "rbac_gateway_change on rbac_permissions",
            "is not as migrate made it (a constraint trigger under its name): ",
        ),
    ] {
        assert!(
            text.contains(&format!("database: trigger {trigger} {how}")),
            "{trigger}\n{text}"
        );
    }
    sqlx::raw_sql(
        "ALTER TABLE rbac_user_groups ENABLE TRIGGER rbac_gateway_break_glass; \
         ALTER TABLE admins ENABLE TRIGGER rbac_gateway_erase_admin",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (_, text) = check(&db);
    assert!(
        !text.contains("rbac_gateway_break_glass on rbac_user_groups")
            && !text.contains("rbac_gateway_erase_admin on admins")
            && text.contains("access_audit_events_no_update on access_audit_events is missing")
            && text.contains("rbac_gateway_break_glass on rbac_roles is not as migrate made it"),
        "{text}"
    );
}

/// Console's role, owning its tables (no CREATE needed beyond its own types), attaches code to
/// them that runs as whoever reads or writes them: a forced row-level security policy on
/// `admin_sessions`, a column of its own enum type there with a cast to `json` (which
/// `to_jsonb` of the whole row called, as the owner of the gateway's tables, in the change
/// feed's trigger before migration 0034), and a trigger on `rbac_ticket_grants`, which the
/// sweep writes. None of it runs as the gateway: a login's session write records its change,
/// `serve` as the gateway's login answers a session's request 503 (the policy would filter
/// its read: fail closed), `sweep` refuses to revoke through the trigger and says why, and
/// `check` names all three as errors.
#[tokio::test]
async fn consoles_code_on_its_own_tables_never_runs_as_the_gateway() {
    let (db, up, hook, login) = alert_setup().await;
    let gateway = TestDb::user_of(&login);
    let (admin, token) = db.admin_with_roles(&["console-manager"]).await;
    let expired = crate::grants::expired_grant(&db, &admin, "T-console-code").await;
    let mut console = as_console(&db).await;
    sqlx::raw_sql(
        "RESET ROLE; \
         ALTER TABLE admin_sessions OWNER TO console_app; \
         ALTER TABLE rbac_ticket_grants OWNER TO console_app; \
         SET ROLE console_app; \
         CREATE FUNCTION public.console_policy() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN \
             INSERT INTO public.shadow_ran VALUES ('policy', current_user); RETURN true; END $$; \
         ALTER TABLE admin_sessions ENABLE ROW LEVEL SECURITY; \
         ALTER TABLE admin_sessions FORCE ROW LEVEL SECURITY; \
         CREATE POLICY console_policy ON admin_sessions USING (public.console_policy()); \
         CREATE TYPE public.flavour AS ENUM ('plain'); \
         CREATE FUNCTION public.flavour_json(public.flavour) RETURNS json LANGUAGE plpgsql AS $$ BEGIN \
             INSERT INTO public.shadow_ran VALUES ('cast', current_user); RETURN '\"plain\"'::json; END $$; \
         CREATE CAST (public.flavour AS json) WITH FUNCTION public.flavour_json(public.flavour); \
         ALTER TABLE admin_sessions ADD COLUMN flavour public.flavour NOT NULL DEFAULT 'plain'; \
         CREATE FUNCTION public.console_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             INSERT INTO public.shadow_ran VALUES ('trigger', current_user); RETURN NEW; END $$; \
         CREATE TRIGGER console_trigger BEFORE UPDATE ON rbac_ticket_grants \
             FOR EACH ROW EXECUTE FUNCTION public.console_trigger()",
    )
    .execute(&mut *console)
    .await
    .unwrap();

    // A login, as Console writes it: the change is recorded, by the session's admin.
    let other = db.admin("console-code@corp.example").await;
    db.session(&other).await;
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rbac_change_log WHERE table_name = 'admin_sessions' AND admin_id = $1",
    )
    .bind(&other)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1);

    // `serve` as the gateway's login: the policy would filter its session lookup.
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr);
    opts.database_url = login.clone();
    let gw = Gateway::start(opts).await;
    let r = gw.get("/ops", Some(&token)).await;
    assert_eq!(r.status, 503, "{}\n{}", r.body_str(), gw.log());
    // The refusal is logged beside the answer, not before it.
    eventually(
        std::time::Duration::from_secs(10),
        "the gateway logs the policy's refusal",
        || async {
            gw.log()
                .contains("query would be affected by row-level security policy for table")
        },
    )
    .await;

    // `sweep` as the gateway's login: the expired grant is not revoked through the trigger.
    let (code, out) = crate::grants::sweep_once(&login, &hook).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("Console's tables: its rows could not be written")
            && out.contains(
                "trigger console_trigger on rbac_ticket_grants runs public.console_trigger()"
            ),
        "{out}"
    );
    assert_eq!(crate::lifecycle::revoked(&db, &expired).await, None);

    let ran = ran_as_others(&db).await;
    assert!(
        ran.is_empty(),
        "Console's code ran as another role than its own ({gateway} is the gateway's login): {ran:?}"
    );

    let (code, text) = check(&db);
    assert_ne!(code, Some(0), "{text}");
    for finding in [
        "database: admin_sessions has row-level security (enabled, forced, policies: 1)",
        "database: trigger console_trigger on rbac_ticket_grants runs public.console_trigger() as the role that writes rbac_ticket_grants",
    ] {
        assert!(text.contains(finding), "{finding}\n{text}");
    }
}

/// What a review found the first list of refusals missed, each planted by Console's role on its
/// own tables and each refused before it runs as the gateway: on `rbac_grants_audit` (which the
/// sweep writes as the gateway's login) a trigger whose `WHEN` calls Console's function (the
/// trigger's own function a `SECURITY DEFINER` no-op), a statement-level trigger, a default that
/// runs SQL through a built-in (`query_to_xml`); under `rbac_ticket_grants` an inheritance child;
/// and `rbac_groups` swapped for a view that calls Console's function, which the break-glass
/// trigger (running as the owner of the gateway's tables) would read. The sweep refuses each,
/// naming it (and alerts it), as does the guard in the writing transaction; Console's write
/// through the view fails, the sweep and the alert pass read nothing of Console's meanwhile,
/// and Console's function never runs as another role: it counts such runs in a sequence, which
/// a rollback does not undo.
#[tokio::test]
async fn consoles_code_the_first_guard_missed_is_refused_too() {
    let db = TestDb::new().await;
    let hook = Upstream::start().await;
    let login = crate::grants::serve_login(&db).await;
    let gateway_pool = sqlx::PgPool::connect(&login).await.unwrap();
    let (admin, _) = db.admin_with_roles(&[]).await;
    let expired = crate::grants::expired_grant(&db, &admin, "T-missed").await;
    let mut console = as_console(&db).await;
    sqlx::raw_sql(
        "RESET ROLE; \
         ALTER TABLE rbac_grants_audit OWNER TO console_app; \
         ALTER TABLE rbac_ticket_grants OWNER TO console_app; \
         ALTER TABLE rbac_groups OWNER TO console_app; \
         SET ROLE console_app; \
         CREATE SEQUENCE public.ran_as_another; \
         GRANT USAGE ON SEQUENCE public.ran_as_another TO PUBLIC; \
         CREATE FUNCTION public.console_code() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN \
             IF current_user <> 'console_app' THEN PERFORM nextval('public.ran_as_another'); END IF; \
             RETURN true; END $$; \
         CREATE FUNCTION public.console_statement() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             PERFORM public.console_code(); RETURN NULL; END $$; \
         CREATE FUNCTION public.console_noop() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN \
             RETURN NEW; END $$",
    )
    .execute(&mut *console)
    .await
    .unwrap();
    for (plant, undo, named) in [
        (
            "CREATE TRIGGER console_when BEFORE INSERT ON rbac_grants_audit FOR EACH ROW \
             WHEN (public.console_code()) EXECUTE FUNCTION public.console_noop()",
            "DROP TRIGGER console_when ON rbac_grants_audit",
            "trigger console_when on rbac_grants_audit runs public.console_noop()",
        ),
        (
            "CREATE TRIGGER console_statement BEFORE INSERT ON rbac_grants_audit FOR EACH STATEMENT \
             EXECUTE FUNCTION public.console_statement()",
            "DROP TRIGGER console_statement ON rbac_grants_audit",
            "trigger console_statement on rbac_grants_audit runs public.console_statement()",
        ),
        (
            "ALTER TABLE rbac_grants_audit ADD COLUMN note text \
             DEFAULT pg_catalog.query_to_xml('SELECT public.console_code()', false, false, '')::text",
            "ALTER TABLE rbac_grants_audit DROP COLUMN note",
            "the default of rbac_grants_audit.note is",
        ),
        (
            // The operator prints as IS DISTINCT FROM, without its name.
            "CREATE FUNCTION public.console_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN \
                 PERFORM public.console_code(); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$; \
             CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.console_eq); \
             SET search_path = public, pg_catalog; \
             ALTER TABLE rbac_grants_audit ADD CONSTRAINT console_check CHECK (justification IS DISTINCT FROM 'zz'); \
             RESET search_path",
            "ALTER TABLE rbac_grants_audit DROP CONSTRAINT console_check; DROP OPERATOR public.= (text, text)",
            "constraint console_check of rbac_grants_audit refers to operator public.=(text,text)",
        ),
        (
            // Another built-in type than the interface's: `id = $1` then takes an operator.
            "ALTER TABLE rbac_ticket_grants ALTER COLUMN id TYPE varchar; \
             CREATE FUNCTION public.console_veq(varchar, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN \
                 PERFORM public.console_code(); RETURN $1::text OPERATOR(pg_catalog.=) $2; END $$; \
             CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = text, FUNCTION = public.console_veq)",
            "DROP OPERATOR public.= (varchar, text); ALTER TABLE rbac_ticket_grants ALTER COLUMN id TYPE text",
            "column rbac_ticket_grants.id is of type character varying where the interface gives it text",
        ),
        (
            "CREATE TABLE public.rbac_ticket_grants_legacy () INHERITS (rbac_ticket_grants); \
             CREATE TRIGGER console_child BEFORE UPDATE ON public.rbac_ticket_grants_legacy \
             FOR EACH ROW EXECUTE FUNCTION public.console_statement()",
            "DROP TABLE public.rbac_ticket_grants_legacy",
            "rbac_ticket_grants has public.rbac_ticket_grants_legacy under it",
        ),
    ] {
        sqlx::raw_sql(plant).execute(&mut *console).await.unwrap();
        // The sweep looks before it reads anything of Console's, and alerts it.
        let (code, out) = crate::grants::sweep_once(&login, &hook).await;
        assert_ne!(code, Some(0), "{plant}\n{out}");
        assert!(
            out.contains("Console's tables: its rows could not be written")
                && out.contains(named)
                && out.contains("alert delivered: console_code:"),
            "{named}\n{out}"
        );
        // The guard in the writing transaction (for what is planted after that look) refuses
        // it too, as the gateway's login.
        let mut tx = gateway_pool.begin().await.unwrap();
        let refused = sqlx::query(
            "SELECT rbac_gateway_guard_writes('{rbac_grants_audit,rbac_ticket_grants}'::text[])",
        )
        .execute(&mut *tx)
        .await
        .expect_err("the guard passes what Console planted");
        drop(tx);
        assert!(
            refused.to_string().contains(
                "the gateway does not write a table of Console's where code of another role would run as the gateway"
            ) && refused.to_string().contains(named),
            "{named}\n{refused}"
        );
        assert_eq!(crate::lifecycle::revoked(&db, &expired).await, None, "{plant}");
        assert!(!ran_as_another(&db).await, "{plant}: Console's code ran as another role");
        sqlx::raw_sql(undo).execute(&mut *console).await.unwrap();
    }
    // With all of them gone, the sweep revokes the grant.
    let (code, out) = crate::grants::sweep_once(&login, &hook).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        crate::lifecycle::revoked(&db, &expired).await.as_deref(),
        Some("expired")
    );

    // rbac_groups swapped for a view: Console's write that fires the break-glass trigger fails
    // before the trigger reads it, and `check` names the view.
    sqlx::raw_sql(
        "ALTER TABLE rbac_groups RENAME TO rbac_groups_data; \
         CREATE VIEW rbac_groups AS SELECT * FROM rbac_groups_data WHERE public.console_code()",
    )
    .execute(&mut *console)
    .await
    .unwrap();
    let refused = sqlx::query(
        "INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
         SELECT $1, id, 'ops' FROM rbac_groups_data WHERE name = 'break-glass'",
    )
    .bind(&admin)
    .execute(&db.pool)
    .await
    .expect_err("a group change read through a view of Console's");
    assert!(
        refused
            .to_string()
            .contains("the gateway does not read a table of Console's as its owner where code of another role would run: rbac_groups is a view"),
        "{refused}"
    );
    assert!(
        !ran_as_another(&db).await,
        "Console's view ran as another role"
    );
    // The sweep and the alert pass read none of Console's tables while it stands, and say so.
    let (code, out) = crate::grants::sweep_once(&login, &hook).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("rbac_groups is a view") && out.contains("alert delivered: console_code:"),
        "{out}"
    );
    assert!(
        !ran_as_another(&db).await,
        "Console's view ran as another role"
    );
    let (code, text) = check(&db);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains("database: rbac_groups is a view, not a table"),
        "{text}"
    );
}

/// Console's role swaps one of its tables for a view that calls its function. Nothing of the
/// gateway's, as the serve login, opens the view (`restrict_nonsystem_relation_kind`, set by
/// every transaction of the gateway's and by every function of its, migration 0036): not the
/// reader API nor `/readyz` (their statements read `rbac_permissions`), nor a cold lookup (its
/// function reads `admin_sessions`), which answers 503; before, each ran the view's function
/// as the serve login. `check` names a function that runs without the setting, and `migrate`
/// gives it back.
#[tokio::test]
async fn a_view_in_place_of_consoles_table_never_runs_on_the_request_path() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let login = crate::grants::serve_login(&db).await;
    let gateway = TestDb::user_of(&login);
    let (_, cached) = db
        .admin_with_roles(&["console-manager", "console-audit-user"])
        .await;
    let (cold_admin, cold) = db.admin_with_roles(&["console-manager"]).await;
    let mut console = as_console(&db).await;
    sqlx::raw_sql(
        "RESET ROLE; \
         ALTER TABLE admin_sessions OWNER TO console_app; \
         ALTER TABLE rbac_permissions OWNER TO console_app; \
         SET ROLE console_app; \
         CREATE FUNCTION public.console_view() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN \
             INSERT INTO public.shadow_ran VALUES ('view', current_user); RETURN true; END $$",
    )
    .execute(&mut *console)
    .await
    .unwrap();
    let swap = |table: &str| {
        format!(
            "ALTER TABLE {table} RENAME TO {table}_data; \
             CREATE VIEW {table} AS SELECT * FROM {table}_data WHERE public.console_view(); \
             GRANT SELECT ON {table} TO PUBLIC"
        )
    };

    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr);
    opts.database_url = login.clone();
    let gw = Gateway::start(opts).await;
    assert_eq!(gw.status("/ops", Some(&cached)).await, 200, "{}", gw.log());

    // The reader API and `/readyz` read the catalogue with statements of their own.
    sqlx::raw_sql(&swap("rbac_permissions"))
        .execute(&mut *console)
        .await
        .unwrap();
    let r = gw
        .get(
            "/api/rbac/permissions/check?permission=console:audit:read",
            Some(&cached),
        )
        .await;
    assert_eq!(r.status, 503, "{}\n{}", r.body_str(), gw.log());
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body_str());
    let ran = ran_as_others(&db).await;
    assert!(
        ran.is_empty(),
        "Console's view ran as another role than its own ({gateway} is the gateway's login): {ran:?}"
    );
    sqlx::raw_sql(
        "DROP VIEW rbac_permissions; ALTER TABLE rbac_permissions_data RENAME TO rbac_permissions",
    )
    .execute(&mut *console)
    .await
    .unwrap();

    // A cold lookup reads `admin_sessions` in the gateway's function.
    sqlx::raw_sql(&swap("admin_sessions"))
        .execute(&mut *console)
        .await
        .unwrap();
    let r = gw.get("/ops", Some(&cold)).await;
    assert_eq!(r.status, 503, "{}\n{}", r.body_str(), gw.log());
    eventually(
        std::time::Duration::from_secs(10),
        "the gateway logs the view's refusal",
        || async {
            gw.log()
                .contains(r#"access to non-system view \"admin_sessions\" is restricted"#)
        },
    )
    .await;
    let ran = ran_as_others(&db).await;
    assert!(
        ran.is_empty(),
        "Console's view ran as another role than its own ({gateway} is the gateway's login): {ran:?}"
    );
    // `explain` looks before it reads the session as the checking role, and refuses on the
    // view, naming it (it read the view before, and said PostgreSQL's refusal).
    let out = crate::cli::bin()
        .args(["explain", "--routes"])
        .arg(root().join("routes.toml"))
        .args([
            "--database-url",
            &db.url,
            "--admin",
            &cold_admin,
            "GET",
            "/ops",
        ])
        .output()
        .unwrap();
    let (code, text) = code_and_output(&out);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains("Console's tables are not read: code of another role's on them would run as this role: admin_sessions is a view, not a table"),
        "{text}"
    );
    assert!(ran_as_others(&db).await.is_empty(), "explain ran the view");
    // The alert pass (each second) names the view once while it stands, not at every pass,
    // and says once when it is gone.
    let found = "alert pass: Console's tables carry code that would run as the gateway";
    let gone = "alert pass: Console's tables carry no code that would run as the gateway any more";
    eventually(
        std::time::Duration::from_secs(10),
        "the alert pass names the view",
        || async { gw.log().contains(found) },
    )
    .await;
    let passes = || gw.metric("rbac_gateway_alert_passes_total{result=\"done\"}");
    let from = passes().await;
    eventually(
        std::time::Duration::from_secs(10),
        "three more alert passes",
        || async { passes().await >= from + 3.0 },
    )
    .await;
    let log = gw.log();
    let named: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(found) && l.contains("admin_sessions is a view"))
        .collect();
    assert_eq!(named.len(), 1, "{log}");
    let line: serde_json::Value = serde_json::from_str(named[0]).unwrap();
    let key = line["alert"].as_str().expect("the alert's key");
    let raised = log
        .lines()
        .filter(|l| l.contains("alert raised") && l.contains(key));
    assert_eq!(raised.count(), 1, "{log}");
    sqlx::raw_sql(
        "DROP VIEW admin_sessions; ALTER TABLE admin_sessions_data RENAME TO admin_sessions",
    )
    .execute(&mut *console)
    .await
    .unwrap();
    eventually(
        std::time::Duration::from_secs(10),
        "the alert pass says the view is gone",
        || async { gw.log().contains(gone) },
    )
    .await;
    assert_eq!(gw.status("/ops", Some(&cold)).await, 200, "{}", gw.log());
    drop(gw);

    // A function re-created without the setting (or migrated before it existed): `check` names
    // it, and `migrate` gives it back.
    sqlx::query(
        "ALTER FUNCTION rbac_gateway_session_principals(text[], boolean) \
         RESET restrict_nonsystem_relation_kind",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let named = "database: function rbac_gateway_session_principals(text[],boolean) would open a view or foreign table in place of a table it reads";
    let (code, text) = check(&db);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains(named), "{text}");
    let (code, text) = migrate(&db);
    assert_eq!(code, Some(0), "{text}");
    let (_, text) = check(&db);
    assert!(!text.contains("would open a view"), "{text}");
}

/// `migrate` reads Console's tables as the owner of the gateway's (the backfill of erasure keys
/// reads `rbac_break_glass_sessions`): a view Console's role put in that table's place is
/// refused before its function runs as the migrating role, and `migrate` fails naming it.
#[tokio::test]
async fn a_view_in_place_of_consoles_table_never_runs_in_migrate() {
    let db = TestDb::new().await;
    let admin = db.admin("view-in-migrate@corp.example").await;
    let session = db.break_glass(&admin, 600.0).await;
    // An alert written before migration 0025 (no erasure keys yet): `migrate` backfills them,
    // reading the session's admin.
    sqlx::raw_sql(&format!(
        "INSERT INTO rbac_gateway_alerts (key, text) VALUES ('break_glass:{session}', 'opened'); \
         UPDATE rbac_gateway_alerts SET erasure_keys = NULL"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut console = as_console(&db).await;
    sqlx::raw_sql(
        "RESET ROLE; \
         ALTER TABLE rbac_break_glass_sessions OWNER TO console_app; \
         SET ROLE console_app; \
         CREATE FUNCTION public.console_view() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN \
             INSERT INTO public.shadow_ran VALUES ('view', current_user); RETURN true; END $$; \
         ALTER TABLE rbac_break_glass_sessions RENAME TO rbac_break_glass_sessions_data; \
         CREATE VIEW rbac_break_glass_sessions AS \
             SELECT * FROM rbac_break_glass_sessions_data WHERE public.console_view(); \
         GRANT SELECT ON rbac_break_glass_sessions TO PUBLIC",
    )
    .execute(&mut *console)
    .await
    .unwrap();
    let (code, text) = migrate(&db);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains("access to non-system view \"rbac_break_glass_sessions\" is restricted"),
        "{text}"
    );
    let ran = ran_as_others(&db).await;
    assert!(
        ran.is_empty(),
        "Console's view ran as the migrating role: {ran:?}"
    );

    sqlx::raw_sql(
        "DROP VIEW rbac_break_glass_sessions; \
         ALTER TABLE rbac_break_glass_sessions_data RENAME TO rbac_break_glass_sessions",
    )
    .execute(&mut *console)
    .await
    .unwrap();
    let (code, text) = migrate(&db);
    assert_eq!(code, Some(0), "{text}");
    let keys: Option<Vec<String>> =
        sqlx::query_scalar("SELECT erasure_keys FROM rbac_gateway_alerts")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(keys.as_deref(), Some(&[admin][..]));
}

/// Console's role owns its tables, so it may disable the gateway's triggers on them, and a
/// migration of Console's that makes a table again drops them: changes to it then never reach
/// the change feed (a revoked session stays cached until its entry expires). `serve`'s alert
/// pass (each second, as the serve login) alerts such a trigger within a pass, delivers the
/// alert once and logs it once, and says when it fires again.
#[tokio::test]
async fn a_trigger_of_the_gateways_silenced_on_consoles_table_is_alerted() {
    let (db, up, hook, login) = alert_setup().await;
    let mut console = as_console(&db).await;
    run(
        &mut console,
        "RESET ROLE; ALTER TABLE admin_sessions OWNER TO console_app; \
         ALTER TABLE admins OWNER TO console_app; SET ROLE console_app",
    )
    .await;
    let gw = alerting(&db, &up, &hook, &login).await;
    let passes = || gw.metric(DONE);
    let delivered = |text: &str| delivered(&hook, text);
    let silenced = "rbac_gateway_change on admin_sessions";
    let within = std::time::Duration::from_secs(10);
    // Every trigger fires as migrate made it: a pass alerts nothing.
    assert!(hook.requests().is_empty(), "{:?}", hook.requests());

    run(
        &mut console,
        "ALTER TABLE admin_sessions DISABLE TRIGGER rbac_gateway_change",
    )
    .await;
    eventually(within, "the silenced trigger's alert delivered", || async {
        delivered(silenced) == 1
    })
    .await;
    let from = passes().await;
    eventually(within, "three more alert passes", || async {
        passes().await >= from + 3.0
    })
    .await;
    assert_eq!(delivered(silenced), 1, "{:?}", hook.requests());
    let found = "alert pass: triggers of the gateway's do not fire as migrate made them";
    let log = gw.log();
    assert_eq!(log.matches(found).count(), 1, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains(found) && l.contains(silenced)),
        "{log}"
    );

    run(
        &mut console,
        "ALTER TABLE admin_sessions ENABLE TRIGGER rbac_gateway_change",
    )
    .await;
    let again = "alert pass: the gateway's triggers fire as migrate made them again";
    eventually(
        within,
        "the alert pass says the triggers fire again",
        || async { gw.log().contains(again) },
    )
    .await;

    // Silenced again (Console's next release makes the table again): alerted again.
    run(
        &mut console,
        "ALTER TABLE admin_sessions DISABLE TRIGGER rbac_gateway_change",
    )
    .await;
    eventually(within, "the second silence's alert delivered", || async {
        delivered(silenced) == 2
    })
    .await;
    // Another trigger silenced beside it, given back, and silenced again: alerted each time,
    // though the first stays silent throughout.
    let beside = "rbac_gateway_change on admins";
    for (n, sql) in [
        (1, "ALTER TABLE admins DISABLE TRIGGER rbac_gateway_change"),
        (1, "ALTER TABLE admins ENABLE TRIGGER rbac_gateway_change"),
        (2, "ALTER TABLE admins DISABLE TRIGGER rbac_gateway_change"),
    ] {
        run(&mut console, sql).await;
        let from = passes().await;
        eventually(within, "two more alert passes", || async {
            passes().await >= from + 2.0
        })
        .await;
        assert_eq!(delivered(beside), n, "{sql}: {:?}", hook.requests());
    }
}

/// Console's role renames a table of its own the alert pass reads (as a migration that makes a
/// table again does, for a moment or for good): the database refuses the pass's read of it.
/// What the pass recorded before (its triggers, gone with the name, are alerted) and alerts
/// already due are still delivered, with an alert that names the refusal, said once in the log;
/// with the name given back, the log says the tables are read again. Renamed away again, the
/// refusal is alerted again, once, though two replicas saw it gone.
#[tokio::test]
async fn a_table_of_consoles_renamed_away_holds_back_no_alert() {
    let (db, up, hook, login) = alert_setup().await;
    let mut console = as_console(&db).await;
    run(
        &mut console,
        "RESET ROLE; ALTER TABLE rbac_break_glass_sessions OWNER TO console_app; SET ROLE console_app",
    )
    .await;
    let gw = alerting(&db, &up, &hook, &login).await;
    let replica = alerting(&db, &up, &hook, &login).await;
    let passes = || gw.metric(DONE);
    let delivered = |text: &str| delivered(&hook, text);
    let within = std::time::Duration::from_secs(10);
    assert!(hook.requests().is_empty(), "{:?}", hook.requests());

    run(
        &mut console,
        "ALTER TABLE rbac_break_glass_sessions RENAME TO rbac_break_glass_sessions_old",
    )
    .await;
    let unread = "The database refused the alert pass's read of Console's tables: relation \\\"public.rbac_break_glass_sessions\\\" does not exist";
    eventually(within, "the refusal's alert delivered", || async {
        delivered(unread) == 1
    })
    .await;
    assert_eq!(
        delivered("rbac_gateway_change on rbac_break_glass_sessions"),
        1,
        "the pass's earlier finding is delivered with it: {:?}",
        hook.requests()
    );
    let from = passes().await;
    eventually(within, "three more alert passes", || async {
        passes().await >= from + 3.0
    })
    .await;
    assert_eq!(delivered(unread), 1, "{:?}", hook.requests());
    let refused = "alert pass: the database refused a read of Console's tables";
    let log = gw.log();
    assert_eq!(log.matches(refused).count(), 1, "{log}");
    assert!(!log.contains("alert pass failed"), "{log}");
    // `sweep` fails on the table (it reads it), and runs the alert pass all the same (tried
    // again while a gateway's pass holds the alert job's lock: then it says it skipped).
    let sweep = || async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
            .args(["sweep", "--once", "--database-url", &db.url])
            .env_remove("GATEWAY_TICKET_VALIDATION_URL")
            .env_remove("GATEWAY_ALERT_WEBHOOK_URL")
            .output()
            .await
            .unwrap();
        let (code, said) = code_and_output(&out);
        assert_eq!(code, Some(1), "{said}");
        assert!(
            said.contains("sweep failed") && !said.contains("alert pass failed"),
            "{said}"
        );
        said
    };
    let mut said = sweep().await;
    let deadline = std::time::Instant::now() + within;
    while said.contains("alert pass: another replica's pass is running right now: skipped")
        && std::time::Instant::now() < deadline
    {
        said = sweep().await;
    }
    assert!(
        said.contains("the database refused the alert pass's read of Console's tables")
            && said.contains("rbac_break_glass_sessions"),
        "{said}"
    );

    run(
        &mut console,
        "ALTER TABLE rbac_break_glass_sessions_old RENAME TO rbac_break_glass_sessions",
    )
    .await;
    eventually(within, "the log says the tables are read again", || async {
        gw.log()
            .contains("alert pass: Console's tables are read again")
    })
    .await;
    assert_eq!(gw.log().matches(refused).count(), 1, "{}", gw.log());

    // Renamed away again the same day: the same refusal, and the same silent triggers, are
    // alerted again at once (their keys exist; the gateways saw them gone), once each.
    run(
        &mut console,
        "ALTER TABLE rbac_break_glass_sessions RENAME TO rbac_break_glass_sessions_old",
    )
    .await;
    let silent = "rbac_gateway_change on rbac_break_glass_sessions";
    eventually(within, "the refusal alerted again", || async {
        delivered(unread) == 2 && delivered(silent) == 2
    })
    .await;
    let from = (passes().await, replica.metric(DONE).await);
    eventually(within, "three more passes of each replica", || async {
        passes().await >= from.0 + 3.0 && replica.metric(DONE).await >= from.1 + 3.0
    })
    .await;
    assert_eq!(delivered(unread), 2, "{:?}", hook.requests());
    assert_eq!(delivered(silent), 2, "{:?}", hook.requests());
    assert_eq!(gw.log().matches(refused).count(), 2, "{}", gw.log());
}

/// A step of the alert pass's reads of Console's tables that the database refuses (the daily
/// snapshot, with a privilege of the serve login's taken) is undone on its own: a break-glass
/// session's alert, recorded by the step before, is still delivered, with the refusal's.
#[tokio::test]
async fn a_refused_step_of_the_alert_pass_holds_back_no_other() {
    let (db, up, hook, login) = alert_setup().await;
    run_sql(
        &db,
        "REVOKE SELECT ON rbac_user_groups FROM rbac_gateway_serve",
    )
    .await;
    let (admin, _) = db.admin_with_roles(&["console-user"]).await;
    db.break_glass(&admin, 600.0).await;
    let gw = alerting(&db, &up, &hook, &login).await;
    let delivered = |text: &str| delivered(&hook, text);
    let within = std::time::Duration::from_secs(10);
    eventually(within, "the session's and the refusal's alerts", || async {
        delivered("Break-glass session opened for") == 1
            && delivered("permission denied for table rbac_user_groups") == 1
    })
    .await;

    run_sql(
        &db,
        "GRANT SELECT ON rbac_user_groups TO rbac_gateway_serve",
    )
    .await;
    eventually(within, "the log says the tables are read again", || async {
        gw.log()
            .contains("alert pass: Console's tables are read again")
    })
    .await;
    assert!(!gw.log().contains("alert pass failed"), "{}", gw.log());
}

/// A lock Console holds on one of its tables past the database timeout (a migration, a session
/// idle in a transaction after DDL): the alert pass's step waits only for its `lock_timeout`,
/// is undone and said once in the log, and the pass delivers what is due meanwhile (a trigger
/// silenced on another table); released, the log says the tables are read again.
#[tokio::test]
async fn a_lock_console_holds_holds_back_no_alert() {
    let (db, up, hook, login) = alert_setup().await;
    let gw = alerting(&db, &up, &hook, &login).await;
    let passes = || gw.metric(DONE);
    let within = std::time::Duration::from_secs(10);

    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE rbac_groups IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    run_sql(
        &db,
        "ALTER TABLE admins DISABLE TRIGGER rbac_gateway_change",
    )
    .await;
    let silenced =
        |r: &Seen| String::from_utf8_lossy(&r.body).contains("rbac_gateway_change on admins");
    eventually(
        within,
        "the silenced trigger's alert, the lock held",
        || async { hook.requests().iter().any(silenced) },
    )
    .await;
    let from = passes().await;
    eventually(within, "three more alert passes, the lock held", || async {
        passes().await >= from + 3.0
    })
    .await;
    let waited = "alert pass: a read of Console's tables waited past the lock timeout";
    let log = gw.log();
    assert_eq!(log.matches(waited).count(), 1, "{log}");
    assert!(
        log.contains("canceling statement due to lock timeout"),
        "{log}"
    );

    sqlx::raw_sql("COMMIT").execute(&mut *holder).await.unwrap();
    eventually(within, "the log says the tables are read again", || async {
        gw.log()
            .contains("alert pass: Console's tables are read again after a wait")
    })
    .await;
}

/// A finding's first alert delivered late (the webhook failing while the finding stood, and
/// answering only after it was gone) does not hold back the alert of its return the same day.
#[tokio::test]
async fn a_finding_delivered_late_is_raised_again_when_it_comes_back() {
    let (db, up, hook, login) = alert_setup().await;
    let gw = alerting(&db, &up, &hook, &login).await;
    let silenced = "rbac_gateway_change on admins";
    let within = std::time::Duration::from_secs(15);
    // Dropped, a trigger has no row: dropped again, it is in the state it was (the same key).
    let drop = "DROP TRIGGER rbac_gateway_change ON admins";
    *hook.status.lock().unwrap() = 500;
    run_sql(&db, drop).await;
    eventually(within, "a failed delivery", || async {
        delivered(&hook, silenced) >= 1
    })
    .await;
    use rbac_gateway::stores::schema::{remake_trigger, Fix};
    let remake = remake_trigger(silenced, Fix::Create).unwrap();
    run_sql(&db, &remake).await;
    eventually(within, "the log says the trigger fires again", || async {
        gw.log()
            .contains("alert pass: the gateway's triggers fire as migrate made them again")
    })
    .await;
    // The webhook answers again: the first alert is delivered, after the finding was gone.
    let answered = hook.requests().len();
    *hook.status.lock().unwrap() = 200;
    let since = |n: usize| {
        let said = |r: &&Seen| String::from_utf8_lossy(&r.body).contains(silenced);
        hook.requests()[n..].iter().filter(said).count()
    };
    eventually(within, "the first alert delivered late", || async {
        since(answered) == 1
    })
    .await;
    let late = hook.requests().len();
    run_sql(&db, drop).await;
    eventually(within, "the return alerted", || async { since(late) == 1 }).await;
}

/// On a schema one migration behind the binary (0037, the stamp of an alert raised again, not
/// applied yet: a rolling deploy before `migrate`), Console's code that comes back is not
/// raised again, and the pass goes on delivering (it failed each second on the missing column,
/// and delivered nothing).
#[tokio::test]
async fn a_finding_back_on_a_schema_behind_the_binary_holds_back_no_alert() {
    let (db, up, hook, login) = alert_setup().await;
    run_sql(
        &db,
        "ALTER TABLE rbac_gateway_alerts DROP COLUMN raised_at_utc; \
         DELETE FROM _sqlx_migrations WHERE version = 37",
    )
    .await;
    let gw = alerting_ready(&db, &up, &hook, &login, false).await;
    let code = "rbac_groups has row-level security";
    let within = std::time::Duration::from_secs(10);
    for (n, sql) in [
        (1, "ALTER TABLE rbac_groups ENABLE ROW LEVEL SECURITY"),
        (1, "ALTER TABLE rbac_groups DISABLE ROW LEVEL SECURITY"),
        (1, "ALTER TABLE rbac_groups ENABLE ROW LEVEL SECURITY"),
    ] {
        run_sql(&db, sql).await;
        let from = gw.metric(DONE).await;
        eventually(within, "two more alert passes", || async {
            gw.metric(DONE).await >= from + 2.0
        })
        .await;
        assert_eq!(delivered(&hook, code), n, "{sql}: {}", gw.log());
    }
    run_sql(
        &db,
        "INSERT INTO rbac_gateway_alerts (key, text, erasure_keys) VALUES ('probe', 'a probe', '{}')",
    )
    .await;
    eventually(within, "the probe delivered", || async {
        delivered(&hook, "a probe") == 1
    })
    .await;
    assert!(!gw.log().contains("alert pass failed"), "{}", gw.log());
}

/// An alert due while another transaction holds its row (Console's erasure of its admin
/// rewriting its text, for longer than the pass's lock timeout): the pass leaves it for later
/// rather than call the webhook and then wait on the row (which failed the pass, and delivered
/// the alert again at each pass); delivered once, when the row is free.
#[tokio::test]
async fn an_alert_whose_row_is_held_is_delivered_once_when_free() {
    let (db, up, hook, login) = alert_setup().await;
    let gw = alerting(&db, &up, &hook, &login).await;
    run_sql(
        &db,
        "INSERT INTO rbac_gateway_alerts (key, text, erasure_keys, next_attempt_utc) \
         VALUES ('held', 'an alert whose row is held', '{}', now() + interval '2 seconds')",
    )
    .await;
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT FROM rbac_gateway_alerts WHERE key = 'held' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let from = gw.metric(DONE).await;
    let within = std::time::Duration::from_secs(10);
    // Due after 2 s; held past then, for five more passes.
    eventually(within, "seven more alert passes, the row held", || async {
        gw.metric(DONE).await >= from + 7.0
    })
    .await;
    assert_eq!(
        delivered(&hook, "an alert whose row is held"),
        0,
        "{}",
        gw.log()
    );
    sqlx::raw_sql("COMMIT").execute(&mut *holder).await.unwrap();
    eventually(within, "the alert delivered", || async {
        delivered(&hook, "an alert whose row is held") == 1
    })
    .await;
    let from = gw.metric(DONE).await;
    eventually(within, "three more alert passes", || async {
        gw.metric(DONE).await >= from + 3.0
    })
    .await;
    assert_eq!(
        delivered(&hook, "an alert whose row is held"),
        1,
        "{}",
        gw.log()
    );
}

/// What an alert test starts from: a database, Console (`up`), the alert webhook (`hook`) and
/// a login holding only `rbac_gateway_serve`.
async fn alert_setup() -> (TestDb, Upstream, Upstream, String) {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let hook = Upstream::start().await;
    let login = crate::grants::serve_login(&db).await;
    (db, up, hook, login)
}

/// The alert passes a gateway did (neither skipped nor failed).
const DONE: &str = "rbac_gateway_alert_passes_total{result=\"done\"}";

/// A gateway on `db` in front of `up`, as `login`, delivering its alerts to `hook`, once it
/// did a first alert pass.
async fn alerting(db: &TestDb, up: &Upstream, hook: &Upstream, login: &str) -> Gateway {
    alerting_ready(db, up, hook, login, true).await
}

/// [`alerting`], waiting for `/readyz` only where `ready` (not on a schema behind the binary).
async fn alerting_ready(
    db: &TestDb,
    up: &Upstream,
    hook: &Upstream,
    login: &str,
    ready: bool,
) -> Gateway {
    let mut opts = GatewayOpts::new(core_routes(), db, up.addr)
        .arg("--alert-webhook-url")
        .arg(&format!("http://{}/hook", hook.addr));
    opts.database_url = login.to_string();
    opts.wait_ready = ready;
    let gw = Gateway::start(opts).await;
    eventually(
        std::time::Duration::from_secs(10),
        "a first alert pass",
        || async { gw.metric(DONE).await >= 1.0 },
    )
    .await;
    gw
}

/// The alerts delivered to `hook` that say `text`.
fn delivered(hook: &Upstream, text: &str) -> usize {
    let said = |r: &&Seen| String::from_utf8_lossy(&r.body).contains(text);
    hook.requests().iter().filter(said).count()
}

/// `rbac-gateway migrate` as the owner login of [`TestDb::migrated_by_a_login`]: its exit code
/// and output.
fn migrate_as_owner(db: &TestDb) -> (Option<i32>, String) {
    let (_, name) = db.url.rsplit_once('/').unwrap();
    let owner_url = db.url_as(&format!("{}_owner", name.trim_start_matches("rbacgw_")));
    let out = crate::cli::bin()
        .args(["migrate", "--database-url", &owner_url])
        .output()
        .unwrap();
    code_and_output(&out)
}

/// The gateway's triggers on `db` that do not fire as `migrate` made them.
async fn silent_of(db: &TestDb) -> Vec<String> {
    rbac_gateway::stores::schema::silent_triggers(&db.pool)
        .await
        .unwrap()
}

/// The lines of `text` (a command's output, a log) that say `phrase`.
fn lines_with<'t>(text: &'t str, phrase: &str) -> Vec<&'t str> {
    text.lines().filter(|l| l.contains(phrase)).collect()
}

/// Runs `sql` on `db` as its owner.
async fn run_sql(db: &TestDb, sql: &str) {
    sqlx::raw_sql(sql).execute(&db.pool).await.unwrap();
}

/// `check`'s fix for a silent trigger makes it as `migrate` made it: every trigger of the
/// gateway's disabled, two of them dropped, and each made again from the statements `check`
/// gives, after which `check` names none.
#[tokio::test]
async fn checks_fix_makes_every_silent_trigger_again() {
    use rbac_gateway::stores::schema::{remake_trigger, Fix, TRIGGERS};
    let db = TestDb::new().await;
    let mut silence = String::new();
    for (table, name, ..) in TRIGGERS {
        silence.push_str(&format!("ALTER TABLE {table} DISABLE TRIGGER {name}; "));
    }
    silence.push_str(
        "DROP TRIGGER rbac_gateway_change ON admin_sessions; \
         DROP TRIGGER access_audit_events_no_update ON access_audit_events; \
         DROP TRIGGER rbac_gateway_break_glass ON rbac_roles; \
         CREATE TRIGGER rbac_gateway_break_glass AFTER INSERT OR UPDATE OR DELETE ON rbac_roles \
             FOR EACH ROW WHEN (false) EXECUTE FUNCTION rbac_gateway_break_glass_change(); \
         DROP TRIGGER rbac_gateway_change ON rbac_permissions; \
         CREATE CONSTRAINT TRIGGER rbac_gateway_change AFTER INSERT OR UPDATE OR DELETE ON rbac_permissions \
             FOR EACH ROW EXECUTE FUNCTION rbac_gateway_log_change()",
    );
    sqlx::raw_sql(&silence).execute(&db.pool).await.unwrap();
    let (code, text) = check(&db);
    assert_ne!(code, Some(0), "{text}");
    // Each by the lightest statement its state asks, every kind run against the server.
    for (table, name, ..) in TRIGGERS {
        let trigger = format!("{name} on {table}");
        let fix = match trigger.as_str() {
            "rbac_gateway_change on admin_sessions"
            | "access_audit_events_no_update on access_audit_events"
            | "rbac_gateway_break_glass on rbac_roles" => Fix::Replace,
            "rbac_gateway_change on rbac_permissions" => Fix::DropAndReplace,
            _ => Fix::Enable,
        };
        let fix = remake_trigger(&trigger, fix).unwrap();
        assert!(text.contains(&fix), "{fix}\n{text}");
        sqlx::raw_sql(&fix).execute(&db.pool).await.unwrap();
    }
    let (code, text) = check(&db);
    assert!(!text.contains("database: trigger"), "{text}");
    assert_eq!(code, Some(0), "{text}");
}

/// `migrate` makes the gateway's silent triggers again, as its migrations made them: every one
/// disabled, two dropped, and one lost with a table Console's migration made again. One whose
/// table the migrating role does not own is named with its fix and left, and `migrate` still
/// succeeds; as the table's owner, the next `migrate` makes it.
#[tokio::test]
async fn migrate_makes_the_gateways_silent_triggers_again() {
    use rbac_gateway::stores::schema::TRIGGERS;
    let (db, owner) = TestDb::migrated_by_a_login().await;
    let (_, name) = db.url.rsplit_once('/').unwrap();
    let short = name.trim_start_matches("rbacgw_");
    let owner_url = db.url_as(&format!("{short}_owner"));
    let mut silence = String::new();
    for (table, name, ..) in TRIGGERS {
        silence.push_str(&format!("ALTER TABLE {table} DISABLE TRIGGER {name}; "));
    }
    // Console's migration makes `rbac_role_inheritance` again: the gateway's triggers go with
    // the table it drops.
    silence.push_str(&format!(
        "DROP TRIGGER rbac_gateway_change ON admin_sessions; \
         DROP TRIGGER access_audit_events_no_update ON access_audit_events; \
         SET ROLE \"{short}_console\"; \
         CREATE TABLE rbac_role_inheritance_new (LIKE rbac_role_inheritance INCLUDING ALL); \
         DROP TABLE rbac_role_inheritance; \
         ALTER TABLE rbac_role_inheritance_new RENAME TO rbac_role_inheritance; RESET ROLE; \
         CREATE ROLE \"{short}_other\"; ALTER TABLE rbac_permissions OWNER TO \"{short}_other\""
    ));
    run_sql(&db, &silence).await;
    assert_eq!(
        silent_of(&db).await.len(),
        TRIGGERS.len(),
        "{:?}",
        silent_of(&db).await
    );

    let migrate_as = |url: &str| {
        let out = crate::cli::bin()
            .args(["migrate", "--database-url", url])
            .output()
            .unwrap();
        code_and_output(&out)
    };
    let (code, text) = migrate_as(&owner_url);
    assert_eq!(code, Some(0), "{text}");
    // The other role's table keeps its four silent, each named.
    let mut theirs: Vec<String> = TRIGGERS
        .iter()
        .filter(|t| t.0 == "rbac_permissions")
        .map(|t| format!("{} on {}", t.1, t.0))
        .collect();
    theirs.sort();
    assert_eq!(theirs.len(), 4);
    assert_eq!(silent_of(&db).await, theirs, "{text}");
    let left: Vec<&str> = lines_with(&text, "migrate: triggers of the gateway's do not fire as migrate made them, and were not made again");
    assert_eq!(left.len(), 1, "{text}");
    assert!(
        left[0].contains("table=\"rbac_permissions\"")
            && left[0].contains("permission denied for table rbac_permissions")
            && theirs.iter().all(|t| left[0].contains(&format!("{t:?}"))),
        "{text}"
    );
    // One line per table made again, each naming its triggers.
    let mut tables: Vec<&str> = TRIGGERS.iter().map(|t| t.0).collect();
    tables.sort();
    tables.dedup();
    assert_eq!(
        text.matches("are made again").count(),
        tables.len() - 1,
        "{text}"
    );
    assert!(!text.contains("does not exist, skipping"), "{text}");
    let (code, text) = check(&db);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains("database: trigger rbac_gateway_break_glass on rbac_permissions does not fire (disabled, or for replicas only, "),
        "{text}"
    );

    // As a role that acts as the table's owner, the next `migrate` makes it, and says nothing
    // of the others (they fire).
    run_sql(
        &db,
        &format!("GRANT \"{short}_other\" TO \"{short}_owner\""),
    )
    .await;
    let (code, text) = migrate_as(&owner_url);
    assert_eq!(code, Some(0), "{text}");
    assert!(silent_of(&db).await.is_empty(), "{text}");
    assert_eq!(text.matches("are made again").count(), 1, "{text}");
    let (code, text) = check(&db);
    assert!(!text.contains("database: trigger"), "{text}");
    assert_eq!(code, Some(0), "{text}");
    drop(owner);
}

/// A table whose lock Console holds (a write left open): `migrate`, run as the tables' owner (not
/// a superuser), tries its silent trigger again a bounded number of times, each wait cut at
/// `lock_timeout`, then leaves it, naming the session that holds the lock, and succeeds; once
/// the write ends, the next `migrate` makes it.
#[tokio::test]
async fn migrate_leaves_a_trigger_whose_table_console_holds_and_says_who() {
    let (db, owner) = TestDb::migrated_by_a_login().await;
    drop(owner);
    let migrate_as = || migrate_as_owner(&db);
    run_sql(
        &db,
        "ALTER TABLE rbac_groups DISABLE TRIGGER rbac_gateway_change",
    )
    .await;
    let mut holder = db.pool.acquire().await.unwrap();
    let (pid, user): (i32, String) = sqlx::query_as("SELECT pg_backend_pid(), current_user::text")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE rbac_groups IN ROW EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (code, text) = migrate_as();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        text.matches("a lock on the table was not granted within 200 ms")
            .count(),
        1,
        "{text}"
    );
    let left: Vec<&str> = lines_with(&text, "were not made again");
    assert_eq!(left.len(), 1, "{text}");
    assert!(
        left[0].contains("table=\"rbac_groups\"")
            && left[0].contains("lock timeout")
            && left[0].contains(&format!("held_by=pid {pid} (user {user}, ")),
        "{text}"
    );
    let silent = silent_of(&db).await;
    assert_eq!(silent, ["rbac_gateway_change on rbac_groups"]);

    sqlx::raw_sql("COMMIT").execute(&mut *holder).await.unwrap();
    let (code, text) = migrate_as();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.matches("are made again").count(), 1, "{text}");
    let silent = silent_of(&db).await;
    assert!(silent.is_empty(), "{silent:?}");
}

/// Console's readers do not wait for `migrate`'s trigger fixes: a disabled trigger (or one for
/// replicas only), a dropped one and one altered in place are each made with `CREATE OR REPLACE
/// TRIGGER` under `SHARE ROW EXCLUSIVE`, which an open read's `ACCESS SHARE` (or a `FOR
/// UPDATE`'s `ROW SHARE`) does not hold back. Only a constraint trigger under the name is
/// dropped first (`ACCESS EXCLUSIVE`): behind the same read it is left, naming the reader.
/// Before, each was dropped and made again, and every one waited.
#[tokio::test]
async fn migrate_makes_a_silent_trigger_again_while_console_reads_the_table() {
    let (db, owner) = TestDb::migrated_by_a_login().await;
    drop(owner);
    let migrate_as = || migrate_as_owner(&db);
    run_sql(
        &db,
        "ALTER TABLE rbac_groups DISABLE TRIGGER rbac_gateway_change; \
         DROP TRIGGER rbac_gateway_change_truncate ON rbac_groups; \
         ALTER TABLE rbac_roles ENABLE REPLICA TRIGGER rbac_gateway_break_glass; \
         DROP TRIGGER rbac_gateway_change ON rbac_role_permissions; \
         CREATE TRIGGER rbac_gateway_change AFTER INSERT OR UPDATE OR DELETE ON rbac_role_permissions \
             FOR EACH ROW WHEN (false) EXECUTE FUNCTION rbac_gateway_log_change(); \
         ALTER TABLE rbac_role_permissions DISABLE TRIGGER rbac_gateway_change; \
         DROP TRIGGER rbac_gateway_change ON rbac_permissions; \
         CREATE CONSTRAINT TRIGGER rbac_gateway_change AFTER INSERT OR UPDATE OR DELETE ON rbac_permissions \
             FOR EACH ROW EXECUTE FUNCTION rbac_gateway_log_change()",
    )
    .await;
    let mut reader = db.pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *reader)
        .await
        .unwrap();
    sqlx::raw_sql(
        "BEGIN; SELECT count(*) FROM rbac_groups; SELECT count(*) FROM rbac_permissions; \
         SELECT count(*) FROM rbac_role_permissions; SELECT id FROM rbac_roles FOR UPDATE",
    )
    .execute(&mut *reader)
    .await
    .unwrap();
    let (code, text) = migrate_as();
    assert_eq!(code, Some(0), "{text}");
    let made: Vec<&str> = lines_with(&text, "are made again");
    assert_eq!(made.len(), 3, "{text}");
    for table in ["rbac_groups", "rbac_roles", "rbac_role_permissions"] {
        let table = format!("table=\"{table}\"");
        assert!(made.iter().any(|l| l.contains(&table)), "{table}\n{text}");
    }
    let waited: Vec<&str> = lines_with(&text, "a lock on the table was not granted within 200 ms");
    assert_eq!(waited.len(), 1, "{text}");
    assert!(waited[0].contains("table=\"rbac_permissions\""), "{text}");
    let left: Vec<&str> = lines_with(&text, "were not made again");
    assert_eq!(left.len(), 1, "{text}");
    assert!(
        left[0].contains("table=\"rbac_permissions\"")
            && left[0].contains(&format!("held_by=pid {pid} (")),
        "{text}"
    );
    let silent = silent_of(&db).await;
    assert_eq!(silent, ["rbac_gateway_change on rbac_permissions"]);
    // The reader's transaction went on beside it.
    sqlx::raw_sql("SELECT count(*) FROM rbac_groups; COMMIT")
        .execute(&mut *reader)
        .await
        .unwrap();
    let (code, text) = migrate_as();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.matches("are made again").count(), 1, "{text}");
    let silent = silent_of(&db).await;
    assert!(silent.is_empty(), "{silent:?}");
}

/// A trigger changed while `migrate` waits for its table: seen disabled, then made a constraint
/// trigger by a transaction that held the table and committed during the waits. `migrate`
/// looks again once it holds the table, and drops and makes it (before, the fix chosen from the
/// first look, enabling it, ran on the constraint trigger: "made again", still silent).
#[tokio::test]
async fn migrate_looks_at_a_trigger_again_once_it_holds_the_table() {
    let db = TestDb::new().await;
    run_sql(
        &db,
        "ALTER TABLE rbac_groups DISABLE TRIGGER rbac_gateway_change",
    )
    .await;
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(
        "BEGIN; DROP TRIGGER rbac_gateway_change ON rbac_groups; \
         CREATE CONSTRAINT TRIGGER rbac_gateway_change AFTER INSERT OR UPDATE OR DELETE ON rbac_groups \
             FOR EACH ROW EXECUTE FUNCTION rbac_gateway_log_change()",
    )
    .execute(&mut *holder)
    .await
    .unwrap();
    // Committed once `migrate` has looked (the trigger disabled) and its lock has timed out.
    let mut migrate = Migrating::start(&db.url);
    migrate
        .said("a lock on the table was not granted within 200 ms")
        .await;
    // Committed while a later try waits for the lock, its state read before: the look that
    // counts is the one taken after the lock.
    eventually(
        std::time::Duration::from_secs(30),
        "migrate waiting for the table's lock again",
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'rbac-gateway' \
                   AND datname = current_database() AND wait_event_type = 'Lock' \
                   AND query LIKE '%LOCK TABLE%')",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    sqlx::raw_sql("COMMIT").execute(&mut *holder).await.unwrap();
    let (code, text) = migrate.end().await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("table=\"rbac_groups\"") && text.contains("are made again"),
        "{text}"
    );
    let silent = silent_of(&db).await;
    assert!(silent.is_empty(), "{silent:?}\n{text}");
}

/// A trigger of the gateway's on a table Console partitioned is cloned to each partition, and
/// a clone disabled there alone leaves the partition's rows unrecorded while the parent's
/// trigger still reads as firing. `check` names it, `migrate` makes it fire again (`ALTER TABLE
/// ... ENABLE TRIGGER` on the parent reaches its clones), and `check` then passes on it.
#[tokio::test]
async fn a_trigger_disabled_on_one_partition_is_named_and_made_again() {
    let db = TestDb::new().await;
    run_sql(
        &db,
        "ALTER TABLE rbac_ticket_grants RENAME TO rbac_ticket_grants_before; \
         CREATE TABLE rbac_ticket_grants (LIKE rbac_ticket_grants_before INCLUDING DEFAULTS) \
             PARTITION BY LIST (customer_id); \
         CREATE TABLE rbac_ticket_grants_c1 PARTITION OF rbac_ticket_grants FOR VALUES IN (1); \
         ALTER TABLE rbac_ticket_grants ATTACH PARTITION rbac_ticket_grants_before DEFAULT",
    )
    .await;
    // The new parent's triggers are missing, the table attached under it keeps its own:
    // `CREATE OR REPLACE` takes those as the parent's clones (a `CREATE TRIGGER` fails there).
    let (_, text) = check(&db);
    assert!(
        text.contains("database: trigger rbac_gateway_change on rbac_ticket_grants is missing: ")
            && text.contains("CREATE OR REPLACE TRIGGER rbac_gateway_change AFTER"),
        "{text}"
    );
    let (code, text) = migrate(&db);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("were not made again"), "{text}");
    let silent = silent_of(&db).await;
    assert!(silent.is_empty(), "{silent:?}");
    let cloned: bool = sqlx::query_scalar(
        "SELECT tgparentid <> 0 FROM pg_trigger \
          WHERE tgname = 'rbac_gateway_change' AND tgrelid = 'rbac_ticket_grants_before'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(cloned);
    run_sql(
        &db,
        "ALTER TABLE rbac_ticket_grants_c1 DISABLE TRIGGER rbac_gateway_change",
    )
    .await;
    let silent = silent_of(&db).await;
    assert_eq!(silent, ["rbac_gateway_change on rbac_ticket_grants"]);
    let (_, text) = check(&db);
    assert!(
        text.contains("database: trigger rbac_gateway_change on rbac_ticket_grants does not fire (disabled, or for replicas only, on its table or one of its partitions)"),
        "{text}"
    );
    let (code, text) = migrate(&db);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.matches("are made again").count(), 1, "{text}");
    let enabled: Vec<String> = sqlx::query_scalar(
        "SELECT tgenabled::text FROM pg_trigger \
          WHERE tgname = 'rbac_gateway_change' AND tgrelid::regclass::text LIKE 'rbac_ticket_grants%' \
          ORDER BY tgrelid::regclass::text",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(enabled, ["O", "O", "O"]);
    let (_, text) = check(&db);
    assert!(!text.contains("on rbac_ticket_grants "), "{text}");
}

/// A trigger of the gateway's altered as a clone: Console made the table a partition of its own
/// partitioned table, whose trigger of the name stands in for the gateway's. No statement on
/// the table changes a clone, so `check` and `migrate` say to change the parent's, and print
/// no fix that fails.
#[tokio::test]
async fn a_trigger_that_is_a_clone_of_consoles_parent_is_named_with_the_parent() {
    let db = TestDb::new().await;
    run_sql(
        &db,
        "CREATE TABLE console_all_groups (LIKE rbac_groups) PARTITION BY LIST (id); \
         CREATE FUNCTION console_noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'; \
         CREATE CONSTRAINT TRIGGER rbac_gateway_change AFTER INSERT OR UPDATE OR DELETE ON console_all_groups \
             FOR EACH ROW EXECUTE FUNCTION console_noop(); \
         DROP TRIGGER rbac_gateway_change ON rbac_groups; \
         ALTER TABLE console_all_groups ATTACH PARTITION rbac_groups DEFAULT; \
         ALTER TABLE rbac_groups DISABLE TRIGGER rbac_gateway_break_glass",
    )
    .await;
    // A clone of a constraint trigger too: the parent's to change, not dropped here.
    let clone = "is not as migrate made it, and is a clone of the trigger of its name on console_all_groups";
    let (code, text) = check(&db);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "database: trigger rbac_gateway_change on rbac_groups {clone}"
        )) && !text
            .contains("DROP TRIGGER IF EXISTS rbac_gateway_change ON \"public\".rbac_groups"),
        "{text}"
    );
    let (code, text) = migrate(&db);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(clone) && !text.contains("were not made again"),
        "{text}"
    );
    // The table's other trigger is made beside it.
    assert!(
        text.contains("are made again table=\"rbac_groups\" triggers=[\"rbac_gateway_break_glass on rbac_groups\"]"),
        "{text}"
    );
    assert_eq!(silent_of(&db).await, ["rbac_gateway_change on rbac_groups"]);
}

/// A table Console attached under a new parent, its own trigger of the gateway's name made a
/// constraint trigger: the parent's missing trigger cannot take it as its clone. That one is
/// named with the server's reason and left; the table's other trigger is made beside it (a
/// savepoint each); once Console's trigger is gone, the next `migrate` makes it.
#[tokio::test]
async fn a_trigger_refused_on_a_partition_is_named_and_the_tables_others_made() {
    let db = TestDb::new().await;
    run_sql(
        &db,
        "ALTER TABLE rbac_ticket_grants RENAME TO rbac_ticket_grants_before; \
         DROP TRIGGER rbac_gateway_change ON rbac_ticket_grants_before; \
         CREATE CONSTRAINT TRIGGER rbac_gateway_change AFTER INSERT OR UPDATE OR DELETE ON rbac_ticket_grants_before \
             FOR EACH ROW EXECUTE FUNCTION rbac_gateway_log_change('user_id'); \
         CREATE TABLE rbac_ticket_grants (LIKE rbac_ticket_grants_before INCLUDING DEFAULTS) \
             PARTITION BY LIST (customer_id); \
         ALTER TABLE rbac_ticket_grants ATTACH PARTITION rbac_ticket_grants_before DEFAULT",
    )
    .await;
    let (code, text) = migrate(&db);
    assert_eq!(code, Some(0), "{text}");
    let refused: Vec<&str> = lines_with(&text, "was not made again: the error says why");
    assert_eq!(refused.len(), 1, "{text}");
    assert!(
        refused[0].contains("trigger=rbac_gateway_change on rbac_ticket_grants")
            && refused[0].contains("is a constraint trigger"),
        "{text}"
    );
    assert!(
        text.contains("are made again table=\"rbac_ticket_grants\" triggers=[\"rbac_gateway_change_truncate on rbac_ticket_grants\"]"),
        "{text}"
    );
    assert_eq!(
        silent_of(&db).await,
        ["rbac_gateway_change on rbac_ticket_grants"]
    );
    run_sql(
        &db,
        "DROP TRIGGER rbac_gateway_change ON rbac_ticket_grants_before",
    )
    .await;
    let (code, text) = migrate(&db);
    assert_eq!(code, Some(0), "{text}");
    assert!(silent_of(&db).await.is_empty(), "{text}");
}

/// The connection lost while `migrate` makes a trigger again (its session ended while it waits
/// for the table's lock): `migrate` fails, saying the migrations are applied and which step
/// failed, not sqlx's "while executing migrations"; run again, it makes the trigger.
#[tokio::test]
async fn migrate_says_the_migrations_are_applied_when_the_trigger_step_fails() {
    let db = TestDb::new().await;
    run_sql(
        &db,
        "ALTER TABLE rbac_groups DISABLE TRIGGER rbac_gateway_change",
    )
    .await;
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE rbac_groups IN ROW EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let migrating = Migrating::start(&db.url);
    let pid: i32 = eventually_some(
        std::time::Duration::from_secs(30),
        || "migrate waiting for the table's lock".to_string(),
        || async {
            sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'rbac-gateway' \
                   AND datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_optional(&db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, text) = migrating.end().await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(
            "the migrations are applied, but making the gateway's triggers again failed: "
        ) && text.contains("(run `rbac-gateway migrate` again)")
            && !text.contains("while executing migrations"),
        "{text}"
    );
    sqlx::raw_sql("COMMIT").execute(&mut *holder).await.unwrap();
    let (code, text) = migrate(&db);
    assert_eq!(code, Some(0), "{text}");
    let silent = silent_of(&db).await;
    assert!(silent.is_empty(), "{silent:?}");
}

/// A table of Console's replaced by a view, or dropped: `check` names the view once (as
/// Console's code), its triggers as waiting for the table to be back (not as `migrate`'s to
/// make now), and a dropped table's columns as Console's to make.
#[tokio::test]
async fn check_names_a_table_of_consoles_gone_once_and_its_triggers_with_it() {
    let db = TestDb::new().await;
    run_sql(
        &db,
        "ALTER TABLE rbac_roles RENAME TO rbac_roles_away; \
         CREATE VIEW rbac_roles AS SELECT * FROM rbac_roles_away; \
         DROP TABLE admin_sessions CASCADE",
    )
    .await;
    let (code, text) = check(&db);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(text.matches("rbac_roles is a view").count(), 1, "{text}");
    let triggers: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("database: trigger ") && l.contains(" on rbac_roles "))
        .collect();
    assert!(!triggers.is_empty(), "{text}");
    for line in triggers {
        assert!(
            line.contains("is missing: its table is not a table (a view)")
                && line.contains("once the table is back in its place"),
            "{line}"
        );
    }
    assert!(
        text.lines()
            .filter(|l| l.contains(" on admin_sessions "))
            .all(|l| l.contains("is missing: its table is missing")),
        "{text}"
    );
    assert!(
        text.contains("database: column admin_sessions.token_sha256 of Console's is missing (004 §3 gives it; Console's migrations make it, `migrate` does not)"),
        "{text}"
    );
    assert!(
        !text.contains("admin_sessions.token_sha256 is missing (run"),
        "{text}"
    );
}

/// The sessions `migrate` names as holding a table's lock are this database's only: a copy of
/// it (`CREATE DATABASE ... TEMPLATE`) has its tables under the same oids, and a session there
/// holding its `rbac_groups` is not named.
#[tokio::test]
async fn migrate_names_only_this_databases_lock_holders() {
    let mut db = TestDb::new().await;
    let (_, name) = db.url.rsplit_once('/').unwrap();
    let name = name.to_string();
    db.pool.close().await;
    let copy = TestDb::created_with(&format!("TEMPLATE {name}")).await;
    db.pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    run_sql(
        &db,
        "ALTER TABLE rbac_groups DISABLE TRIGGER rbac_gateway_change",
    )
    .await;
    let hold = |pool: &sqlx::PgPool| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            sqlx::raw_sql("BEGIN; LOCK TABLE rbac_groups IN ROW EXCLUSIVE MODE")
                .execute(&mut *conn)
                .await
                .unwrap();
            (conn, pid)
        }
    };
    let (_here, here) = hold(&db.pool).await;
    let (_there, there) = hold(&copy.pool).await;
    let (code, text) = migrate(&db);
    assert_eq!(code, Some(0), "{text}");
    let left: Vec<&str> = lines_with(&text, "were not made again");
    assert_eq!(left.len(), 1, "{text}");
    assert!(left[0].contains(&format!("held_by=pid {here} (")), "{text}");
    assert!(!left[0].contains(&format!("pid {there} ")), "{text}");
}

/// The trigger look (`schema::SILENT_ROWS`: `check`, `migrate`, and the alert pass each second)
/// reads only the gateway's triggers and their clones, however many tables, triggers and
/// partitions Console has: 400 more tables of Console's, each with a trigger of its own and a
/// foreign key to `admins` (two more triggers there, two on the table), and a partitioned
/// table of Console's whose row trigger has a clone on each of 1,000 partitions; and
/// `rbac_user_groups` made a partitioned table by Console (10 partitions of 5 each), whose
/// row triggers `migrate` makes with a clone on each, one of them disabled. The catalogue is
/// analyzed as autovacuum leaves it. The plan reads the gateway's triggers by table and name,
/// and `pg_trigger` and `pg_inherits` at most once a level of the gateway's partitions (by
/// index where the planner finds that cheaper); its cost stays below `jit_above_cost`. Before, the look asked for each trigger's clones in a
/// subquery the planner ran once for every trigger of the database that the gateway's
/// functions run, each a scan of `pg_trigger` (over two seconds a pass at 1,500 tables of
/// Console's, past the alert pass's statement timeout); then, following `tgparentid` (no
/// index) from all of them at once, a scan of `pg_trigger` a level, and, with Console's
/// clones, an estimate the server spent most of a second compiling (JIT). Counts, not
/// seconds; and `check` names the disabled clone.
#[tokio::test]
async fn the_trigger_look_reads_the_catalogue_once_a_level_of_partitions() {
    use rbac_gateway::stores::schema::{trigger_columns, SILENT_ROWS, TRIGGERS};
    let db = TestDb::new().await;
    run_sql(
        &db,
        "CREATE FUNCTION public.consoles_own() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$; \
         DO $$ BEGIN FOR i IN 1..400 LOOP \
             EXECUTE format('CREATE TABLE console_extra_%s (id int PRIMARY KEY, admin_id text REFERENCES admins (id))', i); \
             EXECUTE format('CREATE TRIGGER consoles_own BEFORE INSERT ON console_extra_%s FOR EACH ROW EXECUTE FUNCTION public.consoles_own()', i); \
         END LOOP; END $$; \
         CREATE TABLE console_parted (id int) PARTITION BY RANGE (id); \
         CREATE TRIGGER consoles_own AFTER INSERT ON console_parted FOR EACH ROW EXECUTE FUNCTION public.consoles_own(); \
         DO $$ BEGIN FOR i IN 1..1000 LOOP \
             EXECUTE format('CREATE TABLE console_parted_%s PARTITION OF console_parted FOR VALUES FROM (%s) TO (%s)', i, i * 10, i * 10 + 10); \
         END LOOP; END $$; \
         ALTER TABLE rbac_user_groups RENAME TO rbac_user_groups_before; \
         CREATE TABLE rbac_user_groups (LIKE rbac_user_groups_before INCLUDING DEFAULTS) PARTITION BY HASH (user_id); \
         DO $$ BEGIN FOR i IN 0..9 LOOP \
             EXECUTE format('CREATE TABLE rbac_user_groups_%s PARTITION OF rbac_user_groups FOR VALUES WITH (MODULUS 10, REMAINDER %s) PARTITION BY HASH (group_id)', i, i); \
             FOR j IN 0..4 LOOP \
                 EXECUTE format('CREATE TABLE rbac_user_groups_%s_%s PARTITION OF rbac_user_groups_%s FOR VALUES WITH (MODULUS 5, REMAINDER %s)', i, j, i, j); \
             END LOOP; \
         END LOOP; END $$",
    )
    .await;
    let (code, text) = migrate(&db);
    assert_eq!(code, Some(0), "{text}");
    run_sql(
        &db,
        "ALTER TABLE rbac_user_groups_3_2 DISABLE TRIGGER rbac_gateway_change; \
         ANALYZE pg_catalog.pg_trigger; ANALYZE pg_catalog.pg_class; ANALYZE pg_catalog.pg_proc; \
         ANALYZE pg_catalog.pg_inherits",
    )
    .await;
    // The gateway's partitions, their levels, and the triggers on them.
    let (partitions, levels, on_partitions): (i64, i32, i64) = sqlx::query_as(
        "SELECT count(DISTINCT p.relid), max(p.level), count(t.oid) \
           FROM pg_catalog.pg_partition_tree('rbac_user_groups') p \
           LEFT JOIN pg_catalog.pg_trigger t ON t.tgrelid = p.relid WHERE p.level > 0",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((partitions, levels), (60, 2));
    let (triggers, clones, inherits): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE tgparentid <> 0), \
                (SELECT count(*) FROM pg_catalog.pg_inherits) FROM pg_catalog.pg_trigger",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(triggers > 3_000 && clones > 1_000, "{triggers} {clones}");
    let jit_above: f64 =
        sqlx::query_scalar("SELECT pg_catalog.current_setting('jit_above_cost')::float8")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    // -1: JIT off on this server; PostgreSQL's default is the bar then.
    let jit_above = if jit_above < 0.0 {
        100_000.0
    } else {
        jit_above
    };
    let (tables, names, functions, types, args) = trigger_columns();
    let explained: serde_json::Value =
        sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {SILENT_ROWS}"))
            .bind(tables)
            .bind(names)
            .bind(functions)
            .bind(types)
            .bind(args)
            .bind("public")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let plan = &explained[0]["Plan"];
    // The gateway's triggers by table and name; for each of the table's triggers (and each
    // clone of its row triggers), the triggers of the partitions below it by index, or a read
    // of all, once a level (the levels of partitions and the last, which finds none).
    let row_triggers = TRIGGERS
        .iter()
        .filter(|t| t.0 == "rbac_user_groups")
        .count() as f64;
    let once_a_level = f64::from(levels + 1);
    let bound = 2.0 * TRIGGERS.len() as f64
        + row_triggers * on_partitions as f64
        + once_a_level * triggers as f64;
    let trigger_rows = rows_read(plan, "pg_trigger");
    assert!(
        trigger_rows <= bound,
        "{trigger_rows} rows of pg_trigger read ({triggers} in all, bound {bound}): {explained:#}"
    );
    let inherits_rows = rows_read(plan, "pg_inherits");
    let bound = row_triggers * partitions as f64 + once_a_level * inherits as f64;
    assert!(
        inherits_rows <= bound,
        "{inherits_rows} rows of pg_inherits read (bound {bound}): {explained:#}"
    );
    let cost = plan["Total Cost"].as_f64().unwrap();
    assert!(
        cost < jit_above,
        "{cost} >= jit_above_cost {jit_above}: {explained:#}"
    );
    assert!(explained[0].get("JIT").is_none(), "{explained:#}");
    let (code, text) = check(&db);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains(
            "database: trigger rbac_gateway_change on rbac_user_groups does not fire (disabled"
        ),
        "{text}"
    );
}

/// Console's role gives a table the gateway reads (`rbac_groups`), or `console_flag_promotions`,
/// an index or a statistics object whose expression calls an immutable function of its own:
/// the planner evaluates such a call (constant arguments) as whoever plans a statement on the
/// table, a reader too. `check` names it; the break-glass trigger, which reads `rbac_groups` as
/// the owner of the gateway's functions, refuses it before its read (`rbac_gateway_plain`), so
/// Console's write that fired it fails; I-11's read reports the table as unsafe, unread. Nothing
/// of Console's runs as another role. Before migration 0038 only the indexes of the tables the
/// gateway writes were looked at, and the trigger's read ran the function as the owner (a
/// review). The request path's lookups, as the serve login, still plan Console's tables: see
/// docs/design/security.md.
#[tokio::test]
async fn consoles_code_the_planner_runs_is_named_and_refused() {
    use rbac_gateway::stores::invariants::{flag_promotion, Promotion};
    let db = TestDb::new().await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let break_glass: String =
        sqlx::query_scalar("SELECT id FROM rbac_groups WHERE name = 'break-glass'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let mut console = as_console(&db).await;
    plant_console_k(&mut console).await;
    run(
        &mut console,
        "CREATE TABLE console_flag_promotions (flag_name text PRIMARY KEY, risk text, current_env text, promoted_by text); \
         INSERT INTO console_flag_promotions VALUES ('FLAG_RBAC_V2', 'high', 'production', 'migration'); \
         GRANT SELECT ON console_flag_promotions TO PUBLIC",
    )
    .await;
    let reader =
        rbac_gateway::stores::db::Db::connect(&db.url, None, 1, std::time::Duration::from_secs(10))
            .unwrap();
    for (plant, undo, named) in [
        (
            "CREATE INDEX console_expr ON rbac_groups ((name || public.console_k(''))); \
             CREATE INDEX console_flag_expr ON console_flag_promotions ((flag_name || public.console_k('')))",
            "DROP INDEX console_expr; DROP INDEX console_flag_expr",
            "index public.console_expr of rbac_groups refers to function public.console_k(text), which is not built in",
        ),
        (
            "CREATE STATISTICS console_stats ON (name || public.console_k('')) FROM rbac_groups; \
             CREATE STATISTICS console_flag_stats ON (flag_name || public.console_k('')) FROM console_flag_promotions",
            "DROP STATISTICS console_stats; DROP STATISTICS console_flag_stats",
            "statistics object console_stats of rbac_groups refers to function public.console_k(text), which is not built in",
        ),
    ] {
        run(&mut console, plant).await;
        let (code, text) = check(&db);
        assert_ne!(code, Some(0), "{plant}\n{text}");
        assert!(text.contains(named), "{named}\n{text}");
        assert!(
            text.contains("Console's tables are not read here: code of another role's on them would run as this role"),
            "{text}"
        );
        assert!(!ran_as_another(&db).await, "check: {plant}");
        // `migrate` says it at once, before Console's write fails on it.
        let (code, text) = migrate(&db);
        assert_eq!(code, Some(0), "{text}");
        assert!(
            text.contains(&format!("warning: {named}"))
                && text.contains("Console's writes that fire its triggers"),
            "{text}"
        );
        assert!(!ran_as_another(&db).await, "migrate: {plant}");
        // Console's own change of a membership fires the break-glass trigger, which refuses
        // to read rbac_groups as the owner; the change fails.
        let refused = sqlx::query(
            "INSERT INTO rbac_user_groups (user_id, group_id, granted_by) VALUES ($1, $2, 'ops')",
        )
        .bind(&admin)
        .bind(&break_glass)
        .execute(&mut *console)
        .await
        .expect_err("a group change read rbac_groups with Console's code on it");
        assert!(
            refused.to_string().contains("the gateway does not read a table of Console's as its owner where code of another role would run")
                && refused.to_string().contains(named),
            "{named}\n{refused}"
        );
        assert!(!ran_as_another(&db).await, "the trigger: {plant}");
        // I-11's read: not read, and said why.
        let promotion = flag_promotion(&reader, "FLAG_RBAC_V2").await.unwrap();
        assert!(
            matches!(&promotion, Promotion::Unsafe(why) if why.contains("an index or statistics object of it refers to")),
            "{plant}\n{promotion:?}"
        );
        assert!(!ran_as_another(&db).await, "I-11: {plant}");
        run(&mut console, undo).await;
    }

    // The erasure trigger reads admins as the owner: since 0038 only after the look (its first
    // read of admins was in its DECLARE, before the look, and a statistics object there ran as
    // the owner and dropped itself unseen).
    run(
        &mut console,
        "RESET ROLE; ALTER TABLE admins OWNER TO console_app; SET ROLE console_app; \
         CREATE STATISTICS console_admin_stats ON (email || public.console_k('')) FROM admins",
    )
    .await;
    let refused = sqlx::query("DELETE FROM admins WHERE id = $1")
        .bind(&admin)
        .execute(&mut *console)
        .await
        .expect_err("an admin erased with Console's code on admins");
    assert!(
        refused.to_string().contains(
            "statistics object console_admin_stats of admins refers to function public.console_k(text)"
        ),
        "{refused}"
    );
    assert!(
        !ran_as_another(&db).await,
        "the erasure ran Console's code as the owner"
    );
    run(&mut console, "DROP STATISTICS console_admin_stats").await;

    // An extension's operator class (a superuser's) is no code of Console's: an index of pg_trgm
    // on rbac_groups is no finding, and Console's writes go on.
    sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        .execute(&db.pool)
        .await
        .unwrap();
    run(
        &mut console,
        "CREATE INDEX console_trgm ON rbac_groups USING gin (name gin_trgm_ops)",
    )
    .await;
    let (_, text) = check(&db);
    assert!(!text.contains("console_trgm"), "{text}");
    sqlx::query(
        "INSERT INTO rbac_user_groups (user_id, group_id, granted_by) VALUES ($1, $2, 'ops')",
    )
    .bind(&admin)
    .bind(&break_glass)
    .execute(&mut *console)
    .await
    .expect("Console's write beside an extension's index");

    // A collation of Console's is no code either (ICU's rules; migration 0041): a case-blind
    // index on rbac_groups is no finding, and Console's writes go on.
    run(
        &mut console,
        "CREATE COLLATION public.console_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
         CREATE INDEX console_ci_name ON rbac_groups (name COLLATE public.console_ci)",
    )
    .await;
    let (_, text) = check(&db);
    assert!(!text.contains("console_ci"), "{text}");
    sqlx::query("DELETE FROM rbac_user_groups WHERE user_id = $1 AND group_id = $2")
        .bind(&admin)
        .bind(&break_glass)
        .execute(&mut *console)
        .await
        .expect("Console's write beside its own collation's index");
    run(
        &mut console,
        "CREATE INDEX console_ci_flag ON console_flag_promotions (flag_name COLLATE public.console_ci)",
    )
    .await;
    let promotion = flag_promotion(&reader, "FLAG_RBAC_V2").await.unwrap();
    assert!(
        !matches!(&promotion, Promotion::Unsafe(_)),
        "I-11 beside Console's collation: {promotion:?}"
    );

    // A table the gateway writes made a partition: its parent's key runs as the writer.
    run(
        &mut console,
        "RESET ROLE; ALTER TABLE rbac_grants_audit OWNER TO console_app; SET ROLE console_app; \
         CREATE TABLE public.console_audit_parts (LIKE rbac_grants_audit) PARTITION BY RANGE (id); \
         ALTER TABLE public.console_audit_parts ATTACH PARTITION rbac_grants_audit FOR VALUES FROM (MINVALUE) TO (MAXVALUE)",
    )
    .await;
    let (code, text) = check(&db);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains("rbac_grants_audit is a partition of public.console_audit_parts"),
        "{text}"
    );
    assert!(
        !ran_as_another(&db).await,
        "Console's code ran as another role"
    );
}

/// The erasure trigger reads the deleted row's columns only after its look, as it reads the
/// tables: `admins.id` made a type of Console's whose cast to text is Console's function, the
/// erasure refuses the type, and the cast never runs as the trigger's owner. Before (a review; in
/// migration 0038's body too), the id was read in the function's DECLARE, which ran the cast as
/// the owner before the look: what it read of the gateway's tables reached Console in a notice.
#[tokio::test]
async fn the_erasure_reads_the_deleted_row_only_after_its_look() {
    let db = TestDb::new().await;
    let admin = db.admin("leaving@example.test").await;
    let mut console = console_owning(&db, "admins").await;
    run(
        &mut console,
        "RESET ROLE; ALTER TABLE admins DROP CONSTRAINT admins_pkey CASCADE; SET ROLE console_app; \
         DO $$ BEGIN EXECUTE (SELECT format('CREATE TYPE public.console_id AS ENUM (%s)', \
             string_agg(quote_literal(id), ', ')) FROM admins); END $$; \
         CREATE FUNCTION public.console_id_text(public.console_id) RETURNS text LANGUAGE plpgsql AS $$ BEGIN \
             PERFORM public.console_code(); RETURN textin(enum_out($1)); END $$; \
         CREATE CAST (public.console_id AS text) WITH FUNCTION public.console_id_text(public.console_id) AS ASSIGNMENT; \
         ALTER TABLE admins ALTER COLUMN id TYPE public.console_id USING id::public.console_id",
    )
    .await;
    let refused = sqlx::query(&format!("DELETE FROM admins WHERE id = '{admin}'"))
        .execute(&mut *console)
        .await
        .expect_err("an admin erased with a column of Console's type");
    assert!(refused.to_string().contains("admins.id"), "{refused}");
    assert!(
        !ran_as_another(&db).await,
        "the erasure ran Console's cast as the owner before its look"
    );
}

/// The erasure reads Console's tables only right after its look, before any statement that may
/// wait: Console holds a row lock on a recorded line the erasure rewrites (its own erasure of
/// the line's actor, left open), makes a statistics object calling its function on
/// `rbac_break_glass_sessions` while the erasure waits (ACCESS SHARE does not hold it back), then
/// lets go. The erasure ends, and the function never ran as its owner. Before (a third review of
/// migration 0042), its read of the sessions was planned after the wait and ran the function.
#[tokio::test]
async fn the_erasure_reads_consoles_tables_before_it_may_wait() {
    let db = TestDb::new().await;
    let mut console = console_owning(&db, "rbac_break_glass_sessions").await;
    let member = db.admin("member@example.test").await;
    let actor = db.admin("actor@example.test").await;
    sqlx::raw_sql(&format!(
        "BEGIN; SET LOCAL rbac_gateway.actor = '{actor}'; \
         INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
         SELECT '{member}', id, 'test' FROM rbac_groups WHERE name = 'break-glass'; COMMIT;"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    // Console erases the actor and holds the transaction open: the line is locked.
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(&format!(
        "SET ROLE console_app; BEGIN; DELETE FROM admins WHERE id = '{actor}'"
    ))
    .execute(&mut *holder)
    .await
    .unwrap();
    // The member's erasure waits for the line; Console makes a statistics object meanwhile,
    // then lets go.
    let erased = erase_while_it_waits(&db, &member, async {
        run(
            &mut console,
            "CREATE STATISTICS public.console_late ON (user_id || public.console_k('x')) \
             FROM rbac_break_glass_sessions",
        )
        .await;
        run(&mut holder, "ROLLBACK").await;
    })
    .await;
    erased.expect("the erasure ends once the line is free");
    assert!(
        !ran_as_another(&db).await,
        "the erasure planned Console's table after its wait and ran its function as the owner"
    );
}

/// Console's session ([`as_console`]) with [`plant_console_k`] planted, owning `table` as well.
async fn console_owning(db: &TestDb, table: &str) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let mut console = as_console(db).await;
    plant_console_k(&mut console).await;
    run(
        &mut console,
        &format!("RESET ROLE; ALTER TABLE {table} OWNER TO console_app; SET ROLE console_app"),
    )
    .await;
    console
}

/// Console's role erases `admin` on a connection of its own and, once the erasure waits for a
/// lock (`pg_stat_activity`), `meanwhile` runs: the erasure's result.
async fn erase_while_it_waits(
    db: &TestDb,
    admin: &str,
    meanwhile: impl std::future::Future<Output = ()>,
) -> Result<(), sqlx::Error> {
    let mut eraser = db.pool.acquire().await.unwrap();
    let erase = format!("SET ROLE console_app; DELETE FROM admins WHERE id = '{admin}'");
    let erasing = async { sqlx::raw_sql(&erase).execute(&mut *eraser).await.map(drop) };
    let then = async {
        eventually(
            std::time::Duration::from_secs(10),
            "the erasure waits for a lock",
            || async {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND query LIKE '%DELETE FROM admins%'",
                )
                .fetch_one(&db.pool)
                .await
                .unwrap()
                    > 0
            },
        )
        .await;
        meanwhile.await;
    };
    let (erased, ()) = tokio::join!(erasing, then);
    erased
}

/// The erasure locks the gateway's alerts before its look: where another holds them (a
/// migration's ACCESS EXCLUSIVE), it waits before it looks, not between its look and its reads
/// of Console's tables. Console makes a statistics object calling its function on `admins`
/// while the erasure waits: the look, after the wait, names it and the erasure is refused, and
/// the function never ran as the owner. Before (a fourth review of migration 0042), the read of
/// the alerts after the look waited, and the read of `admins` planned with it ran the function.
#[tokio::test]
async fn the_erasure_waits_for_the_alerts_before_its_look() {
    let db = TestDb::new().await;
    let mut console = console_owning(&db, "admins").await;
    let leaving = db.admin("leaving@example.test").await;
    let mut holder = db.pool.acquire().await.unwrap();
    run(
        &mut holder,
        "BEGIN; LOCK TABLE rbac_gateway_alerts IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    let erased = erase_while_it_waits(&db, &leaving, async {
        run(
            &mut console,
            "CREATE STATISTICS public.console_late ON (id || public.console_k('x')) FROM admins",
        )
        .await;
        run(&mut holder, "COMMIT").await;
    })
    .await;
    let refused = erased.expect_err("the erasure looked after its wait");
    assert!(refused.to_string().contains("console_late"), "{refused}");
    assert!(
        !ran_as_another(&db).await,
        "the erasure planned Console's table after its wait and ran its function as the owner"
    );
}

/// The rows of `relation` the plan `node` (EXPLAIN ANALYZE's JSON) read: those each node returned
/// and those its filter removed, each an average over its loops.
fn rows_read(node: &serde_json::Value, relation: &str) -> f64 {
    let own = if node["Relation Name"] == relation {
        let n = |k: &str| node[k].as_f64().unwrap_or(0.0);
        (n("Actual Rows") + n("Rows Removed by Filter") + n("Rows Removed by Index Recheck"))
            * n("Actual Loops")
    } else {
        0.0
    };
    let below: f64 = node["Plans"]
        .as_array()
        .map(|plans| plans.iter().map(|p| rows_read(p, relation)).sum())
        .unwrap_or(0.0);
    own + below
}

/// `rbac_gateway_console_code` (the alert pass's look each second, and `rbac_gateway_plain`'s
/// and `rbac_gateway_guard_writes`'s under their locks) reads the catalogue by index from the
/// tables it looks at, on a database where Console has 400 more tables, as made and once
/// analyzed: a row of `pg_class` a table it looks for (and one for the gateway's change log),
/// and the dependencies of the written tables' defaults, constraints and indexes, not every
/// dependency on an object of Console's. Before (migration 0034's), it compared each row's name
/// as text, which no index serves, and read all of `pg_class` at every call (9.5 ms a call at
/// 1,500 tables analyzed); and with statistics taken before Console's tables were made, the
/// planner went from each dependency on them to the written tables' objects (140 ms). Its plan,
/// with the rows each node read, is said by `auto_explain` (nested statements, at `notice`) to
/// `psql`. Counts, not seconds.
#[tokio::test]
async fn console_code_reads_the_catalogue_by_index() {
    use rbac_gateway::stores::schema::{console_columns, CONSOLE_TABLES, CONSOLE_WRITTEN};
    let db = TestDb::new().await;
    run_sql(
        &db,
        "DO $$ BEGIN FOR i IN 1..400 LOOP \
             EXECUTE format('CREATE TABLE console_extra_%s (id int PRIMARY KEY, admin_id text REFERENCES admins (id))', i); \
         END LOOP; END $$",
    )
    .await;
    let tables: Vec<&str> = CONSOLE_TABLES.iter().map(|(t, _)| *t).collect();
    let array = |items: &[&str]| {
        format!(
            "ARRAY[{}]::text[]",
            items
                .iter()
                .map(|i| format!("'{i}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let call = format!(
        "SELECT count(*) FROM rbac_gateway_console_code('public'::regnamespace::oid, {}, {}, {})",
        array(&tables),
        array(&console_columns(&tables)),
        array(CONSOLE_WRITTEN),
    );
    // The plan of the function's statement, said by `auto_explain` to `psql`.
    let plan_of_call = || {
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &db.url])
            .args(["-c", "LOAD 'auto_explain'"])
            .args(["-c", "SET auto_explain.log_min_duration = 0"])
            .args(["-c", "SET auto_explain.log_nested_statements = on"])
            .args(["-c", "SET auto_explain.log_analyze = on"])
            .args(["-c", "SET auto_explain.log_format = json"])
            .args(["-c", "SET auto_explain.log_level = notice"])
            .args(["-c", &call])
            .output()
            .expect("psql runs");
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{said}");
        let (_, body) = said
            .split("NOTICE:")
            .find_map(|n| {
                n.split_once("plan:")
                    .filter(|(_, p)| p.contains("WITH t AS"))
            })
            .unwrap_or_else(|| panic!("no plan of the function's statement: {said}"));
        let plan: serde_json::Value = serde_json::Deserializer::from_str(body.trim_start())
            .into_iter()
            .next()
            .expect("a plan")
            .expect("the plan is JSON");
        plan
    };
    let relations: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_catalog.pg_class")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(relations > 1_600, "{relations}");
    let looked_for = (tables.len() + CONSOLE_WRITTEN.len() + 1) as f64;
    // The dependencies of the objects the look starts from: each index and statistics object of
    // the tables, each default and constraint of the written ones.
    let (own, all): (i64, i64) = sqlx::query_as(
        "WITH c AS (SELECT c.oid, c.relname::text = ANY ($2) AS written FROM pg_catalog.pg_class c \
                     WHERE c.relnamespace = 'public'::regnamespace AND c.relname::text = ANY ($1)), \
              x(classid, objid) AS ( \
                SELECT 'pg_class'::regclass::oid, i.indexrelid FROM pg_index i JOIN c ON c.oid = i.indrelid \
                UNION ALL SELECT 'pg_statistic_ext'::regclass::oid, s.oid FROM pg_statistic_ext s JOIN c ON c.oid = s.stxrelid \
                UNION ALL SELECT 'pg_attrdef'::regclass::oid, a.oid FROM pg_attrdef a JOIN c ON c.oid = a.adrelid WHERE c.written \
                UNION ALL SELECT 'pg_constraint'::regclass::oid, k.oid FROM pg_constraint k JOIN c ON c.oid = k.conrelid WHERE c.written) \
         SELECT (SELECT count(*) FROM pg_depend d JOIN x ON d.classid = x.classid AND d.objid = x.objid), \
                (SELECT count(*) FROM pg_depend)",
    )
    .bind(&tables)
    .bind(CONSOLE_WRITTEN)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(all > 20 * own, "{own} {all}");
    for analyzed in [false, true] {
        if analyzed {
            run_sql(&db, "ANALYZE pg_catalog.pg_class").await;
        }
        let plan = plan_of_call();
        let read = rows_read(&plan["Plan"], "pg_class");
        assert!(
            read > 0.0 && read <= 2.0 * looked_for,
            "analyzed: {analyzed}: {read} rows of pg_class read ({relations} in all, {looked_for} looked for): {plan:#}"
        );
        // Those objects' dependencies, each by index; not a read of all of pg_depend (400
        // tables of Console's hold thousands), once or once a table.
        let read = rows_read(&plan["Plan"], "pg_depend");
        assert!(
            read > 0.0 && read <= 2.0 * own as f64,
            "analyzed: {analyzed}: {read} rows of pg_depend read ({own} are the look's, {all} in all): {plan:#}"
        );
    }
}

/// `check`'s look at the gateway's triggers (a transaction of its own, with `jit` off) is
/// bounded by the database timeout as its other statements are: a server that stops answering
/// it (here, its `jit` setting's answer held back) holds `check` no longer; it says so and
/// exits 1.
#[tokio::test]
async fn check_gives_up_on_a_trigger_look_the_server_does_not_answer() {
    let db = TestDb::new().await;
    let link = PgLink::new(&db.url).await;
    link.hold_next(b"jit_off");
    let mut cmd = crate::cli::bin();
    cmd.args(["check", "--routes"])
        .arg(root().join("routes.toml"))
        .args(["--database-url", &link.url]);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), rx)
        .await
        .expect("check still waits on the held answer after 60 s")
        .unwrap()
        .unwrap();
    link.held().await;
    let (code, text) = code_and_output(&out);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot read the triggers"), "{text}");
    assert!(text.contains("did not answer within"), "{text}");
}

/// The trigger look is never compiled (JIT), in `migrate` nor in the alert pass: each runs it
/// with `jit` off. Its plan is estimated from the catalogue's statistics, which a new
/// database's partitions, or autovacuum behind Console's DDL, have not reached: with thousands
/// of partitions the estimate passed `jit_above_cost`, and the server compiled, each pass, a
/// statement that runs in milliseconds. Here every statement is planned for JIT
/// (`jit_above_cost = 0`) and its plan said to the client (`auto_explain` at `warning`, which
/// the gateway logs; `migrate`'s session receives no notices): the look's plans carry no
/// `JIT:`, where other statements' do.
#[tokio::test]
async fn the_trigger_look_is_never_compiled() {
    let (db, up, hook, login) = alert_setup().await;
    let available: bool = sqlx::query_scalar("SELECT pg_catalog.pg_jit_available()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(available, "this server cannot JIT-compile (llvmjit is not installed): the test cannot see a compiled plan");
    let (_, name) = db.url.rsplit_once('/').unwrap();
    run_sql(
        &db,
        &format!(
            "ALTER DATABASE {name} SET session_preload_libraries = 'auto_explain'; \
             ALTER DATABASE {name} SET auto_explain.log_min_duration = 0; \
             ALTER DATABASE {name} SET auto_explain.log_level = 'warning'; \
             ALTER DATABASE {name} SET jit_above_cost = 0"
        ),
    )
    .await;
    // Each notice's text, and the look's among them (the pieces between the notices' target,
    // which a text line says before its message and a JSON line after it).
    fn plans(log: &str) -> (usize, Vec<&str>) {
        let pieces: Vec<&str> = log.split("sqlx::postgres::notice").collect();
        let compiled = pieces.iter().filter(|p| p.contains("JIT:")).count();
        let looks = pieces
            .into_iter()
            .filter(|p| p.contains("Query Text: WITH RECURSIVE s(oid)"))
            .collect();
        (compiled, looks)
    }
    let (code, text) = migrate(&db);
    assert_eq!(code, Some(0), "{text}");
    let (compiled, looks) = plans(&text);
    assert!(compiled > 0, "no statement was compiled: {text}");
    assert!(!looks.is_empty(), "{text}");
    for look in looks {
        assert!(!look.contains("JIT:"), "{look}");
    }
    let gw = alerting(&db, &up, &hook, &login).await;
    let log = gw.log();
    let (compiled, looks) = plans(&log);
    assert!(compiled > 0, "no statement was compiled: {log}");
    assert!(!looks.is_empty(), "{log}");
    for look in looks {
        assert!(!look.contains("JIT:"), "{look}");
    }
}

/// The commands that read Console's tables as their own role (`matrix`, `test`, `explain
/// --admin`, `mapping push` and `history`) look first, and refuse to read where Console's code
/// is on them: an index whose expression calls Console's function runs it as whoever plans the
/// read, and a pusher stores and activates mappings. A role that may not look does not read
/// either (`check` says so as an error). Before, each read ran Console's function as the
/// command's role.
#[tokio::test]
async fn commands_refuse_to_read_consoles_tables_with_its_code_on_them() {
    let db = TestDb::new().await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let grants = std::fs::read_to_string(root().join("deploy/mapping-grants.sql")).unwrap();
    sqlx::raw_sql(&grants).execute(&db.pool).await.unwrap();
    let pusher = db.login_in_role("rbac_mapping_pusher", "").await;
    let mut console = as_console(&db).await;
    plant_console_k(&mut console).await;
    run(
        &mut console,
        "CREATE INDEX console_expr ON rbac_groups ((name || public.console_k('')))",
    )
    .await;
    let routes = root().join("routes.toml");
    let routes = routes.to_str().unwrap();
    let command = |args: &[&str]| code_and_output(&crate::cli::bin().args(args).output().unwrap());
    let named = "index public.console_expr of rbac_groups refers to function public.console_k(text), which is not built in";
    for (what, args, exit) in [
        (
            "matrix",
            vec!["matrix", "--routes", routes, "--database-url", &db.url],
            1,
        ),
        (
            "test",
            vec!["test", "--routes", routes, "--database-url", &db.url],
            69,
        ),
        (
            "explain --admin",
            vec![
                "explain",
                "--routes",
                routes,
                "--database-url",
                &db.url,
                "--admin",
                &admin,
                "GET",
                "/ops",
            ],
            1,
        ),
        (
            "mapping push",
            vec!["mapping", "push", routes, "--database-url", &pusher],
            1,
        ),
        (
            "mapping history",
            vec!["mapping", "history", "--database-url", &pusher],
            1,
        ),
    ] {
        let (code, said) = command(&args);
        assert_eq!(code, Some(exit), "{what}: {said}");
        assert!(said.contains(named), "{what}: {said}");
        assert!(
            !ran_as_another(&db).await,
            "{what} ran Console's code: {said}"
        );
    }
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rbac_mapping_store")
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        0,
        "nothing was stored"
    );
    // An index made in a transaction that holds a stronger lock, committed once the command
    // waits: the look waits too (the tables are held from the look to the read), sees it and
    // refuses. Before, the look ran before the commit and the read after it, running Console's
    // function as the pusher (a review).
    run(&mut console, "DROP INDEX console_expr").await;
    run(
        &mut console,
        "BEGIN; LOCK TABLE rbac_groups IN ACCESS EXCLUSIVE MODE; \
         CREATE INDEX console_expr ON rbac_groups ((name || public.console_k('')))",
    )
    .await;
    let waiting = crate::cli::bin()
        .args(["mapping", "history", "--database-url", &pusher])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(
        std::time::Duration::from_secs(20),
        "the command waits for Console's lock",
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT FROM pg_locks WHERE relation = 'rbac_groups'::regclass AND NOT granted)",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    run(&mut console, "COMMIT").await;
    let (code, said) = code_and_output(&waiting.wait_with_output().unwrap());
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(named), "{said}");
    assert!(
        !ran_as_another(&db).await,
        "a read after the look ran Console's code: {said}"
    );

    // A role that may not look reads nothing: `check` says so, as an error.
    run(&mut console, "RESET ROLE; DROP INDEX console_expr").await;
    let stranger = db
        .login_in_role(
            "rbac_gateway_reader",
            "REVOKE rbac_gateway_reader FROM USER",
        )
        .await;
    let (code, said) = command(&["check", "--routes", routes, "--database-url", &stranger]);
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains(
            "Console's tables are not read here: this role may not run rbac_gateway_console_code"
        ),
        "{said}"
    );
    let (code, said) = command(&["matrix", "--routes", routes, "--database-url", &stranger]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(
            "Console's tables are not read: this role may not run rbac_gateway_console_code"
        ),
        "{said}"
    );
}

/// Waits, within a deadline, for Console's code to say `what` on `said`'s channel; what else it
/// said is passed over (the start-up names check reads the same table, on one backend or
/// another, and an earlier round's may still be queued): the rows counted say the rest.
async fn until_said(said: &mut sqlx::postgres::PgListener, what: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = tokio::time::timeout_at(deadline, said.recv())
            .await
            .unwrap_or_else(|_| panic!("Console's code did not say {what:?} within 10 s"));
        if got.unwrap().payload() == what {
            return;
        }
    }
}

/// Console's code on the request path (docs/design/security.md, "The request path's own
/// login"): an index on `rbac_groups`, a table Console's role owns, whose expression calls
/// Console's immutable function, which writes `rbac_gateway_alerts` (a delivered alert counts a
/// break-glass session alerted, I-4) and says by a notification (which a read-only transaction
/// may send) what became of the write. The planner runs it as whoever plans a read of the
/// table: a cold lookup's. As `serve`'s own login it forges the row. With `--lookup-database-url`
/// each lookup is a read-only transaction: the write is refused on a login holding
/// `rbac_gateway_lookup` alone (deploy/lookup-grants.sql), and on one that may write the table
/// (serve's own login, given again) too, while every request is answered as before. `serve`
/// says at start-up which of the two its lookup login is, and `/readyz` names a lookup login
/// that cannot connect.
#[tokio::test]
async fn consoles_code_on_a_cold_lookup_forges_nothing_as_the_lookup_login() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let login = crate::grants::serve_login(&db).await;
    let grants = std::fs::read_to_string(root().join("deploy/lookup-grants.sql")).unwrap();
    for _ in 0..2 {
        sqlx::raw_sql(&grants)
            .execute(&db.pool)
            .await
            .expect("deploy/lookup-grants.sql runs as the tables' owner, and again");
    }
    let lookup = db.login_in_role("rbac_gateway_lookup", "").await;
    let (serve_user, lookup_user) = (TestDb::user_of(&login), TestDb::user_of(&lookup));
    let mut said = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    said.listen("console_forge").await.unwrap();
    // Each session seen by one gateway, cold; made before Console's code (the break-glass
    // trigger refuses to read a table that has it).
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(db.admin_with_roles(&["console-manager"]).await.1);
    }
    let mut console = as_console(&db).await;
    run(
        &mut console,
        "RESET ROLE; \
         ALTER TABLE rbac_groups OWNER TO console_app; \
         ALTER TABLE admins OWNER TO console_app; \
         SET ROLE console_app; \
         CREATE FUNCTION public.forge() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN \
             IF current_user <> 'console_app' THEN \
                 BEGIN \
                     INSERT INTO public.rbac_gateway_alerts (key, text, delivered_at_utc) \
                         VALUES ('forged:' || current_user || ':' || pg_backend_pid(), 'forged', now()) \
                         ON CONFLICT DO NOTHING; \
                     PERFORM pg_notify('console_forge', 'forged ' || current_user); \
                 EXCEPTION WHEN insufficient_privilege OR read_only_sql_transaction THEN \
                     PERFORM pg_notify('console_forge', 'refused ' || current_user || ' ' || SQLSTATE); \
                 END; \
             END IF; \
             RETURN true; END $$; \
         CREATE FUNCTION public.console_f(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN \
             PERFORM public.forge(); RETURN t; END $$; \
         CREATE INDEX console_expr ON rbac_groups ((name || public.console_f('')))",
    )
    .await;
    let forged_by = |user: String| {
        let db = &db;
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM rbac_gateway_alerts WHERE key LIKE 'forged:' || $1 || ':%'",
            )
            .bind(user)
            .fetch_one(&db.pool)
            .await
            .unwrap()
        }
    };
    // As serve's own login (the default), a cold lookup forges a delivered alert.
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr);
    opts.database_url = login.clone();
    let gw = Gateway::start(opts).await;
    assert_eq!(
        gw.status("/ops", Some(&tokens[0])).await,
        200,
        "{}",
        gw.log()
    );
    until_said(&mut said, &format!("forged {serve_user}")).await;
    assert!(forged_by(serve_user.clone()).await >= 1, "{}", gw.log());
    drop(gw);
    let before = forged_by(serve_user.clone()).await;

    // With the lookups on a login of their own, the same code is refused, the answer the same.
    // Then on serve's own login given again as the lookup login: the transaction is read-only.
    for (url, user, says) in [
        (
            &lookup,
            &lookup_user,
            "that login may do nothing of the gateway's beyond Console's role",
        ),
        (
            &login,
            &serve_user,
            "--lookup-database-url's login may do what Console's role may not",
        ),
    ] {
        let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
            .arg("--lookup-database-url")
            .arg(url);
        opts.database_url = login.clone();
        let gw = Gateway::start(opts).await;
        let cold = if *user == serve_user {
            &tokens[2]
        } else {
            &tokens[1]
        };
        assert_eq!(gw.status("/ops", Some(cold)).await, 200, "{}", gw.log());
        until_said(&mut said, &format!("refused {user} 25006")).await;
        assert_eq!(
            forged_by(user.clone()).await,
            if *user == serve_user { before } else { 0 }
        );
        eventually(
            std::time::Duration::from_secs(10),
            "serve says what its lookup login may write",
            || async { gw.log().contains(says) },
        )
        .await;
        if *user == serve_user {
            let log = gw.log();
            assert!(
                log.contains("write table rbac_gateway_alerts")
                    && log.contains("write table rbac_gateway_audit_outbox"),
                "{log}"
            );
        }
    }
    assert_eq!(forged_by(serve_user).await, before);

    // A lookup login that cannot connect: /readyz says so (every cold lookup would fail).
    let late = format!(
        "{}_late_lookup",
        db.url
            .rsplit_once('/')
            .unwrap()
            .1
            .trim_start_matches("rbacgw_")
    );
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--lookup-database-url")
        .arg(&db.url_as(&late));
    opts.database_url = login.clone();
    let gw = Gateway::start_unready(opts).await;
    eventually(
        std::time::Duration::from_secs(10),
        "/readyz names the lookup login",
        || async {
            matches!(gw.readyz().await, Some((503, b)) if b.contains("--lookup-database-url unavailable (every cold lookup fails)"))
        },
    )
    .await;
    eventually_explained(
        std::time::Duration::from_secs(20),
        "the start-up check says it cannot ask the lookup login yet",
        || async { gw.log().contains("cannot ask what --lookup-database-url's login may do: asked again until it answers") },
        || async { gw.log() },
    )
    .await;
    // Once it exists, the gateway is ready and the start-up check, asked again until it
    // answers, says what that login may do.
    sqlx::raw_sql(&format!(
        "CREATE ROLE \"{late}\" LOGIN IN ROLE rbac_gateway_lookup"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let gw = gw.ready().await;
    eventually_explained(
        std::time::Duration::from_secs(30),
        "the lookup login is asked again once it can connect",
        || async {
            let log = gw.log();
            log.contains("asked again until it answers")
                && log.contains("that login may do nothing of the gateway's beyond Console's role")
        },
        || async { gw.log() },
    )
    .await;
}
